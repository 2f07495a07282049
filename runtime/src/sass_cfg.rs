//! Main-loop analysis of SASS: the control-flow graph of each function, its natural loops
//! (by dominators), the main loop (the loop with the most tensor-core work), and that loop's
//! instruction mix per m16n8k16-equivalent MMA per warp, nested loops weighted by their trip
//! counts. This is the machine-code evidence of `cargo xtask anchors` (docs/anchors.md), run
//! the same way on attnforge's kernels, FlashAttention-2's and Triton's.
//!
//! Why dominators rather than "a backward branch closes a loop" ([`crate::sass_loops`]):
//! compilers place blocks of a loop before its header (FA2's prefetch of the next K tile) and
//! let a skip-tile scan share the header; only the dominator definition (a back edge goes to a
//! block that dominates its source) gives the loop body as the set of blocks that can reach
//! the back edge without leaving through the header.
//!
//! Counts are per warp: one SASS instruction is one warp instruction. MMA work is counted in
//! m16n8k16 equivalents ([`mma_equivalents`]): `HMMA.16816` = 1, `HMMA.1688` = 0.5,
//! `HGMMA.64xNxK` (a warpgroup instruction, one quarter per warp) = N·K/128.
//!
//! ```
//! use attnforge_runtime::{main_loops, InstrClass, MainLoopHints};
//! let text = "
//!   /*0000*/       MOV R2, RZ ;
//!   /*0010*/       LDSM.16.M88.4 R12, [R3] ;
//!   /*0020*/       HMMA.16816.F32.BF16 R4, R12, R16, R4 ;
//!   /*0030*/       HMMA.16816.F32.BF16 R8, R12, R18, R8 ;
//!   /*0040*/       FFMA R20, R4, R21, -R22 ;
//!   /*0050*/       IADD3 R2, R2, 0x1, RZ ;
//!   /*0060*/       ISETP.GE.AND P0, PT, R2, 0x8, PT ;
//!   /*0070*/  @!P0 BRA 0x10 ;
//!   /*0080*/       EXIT ;
//! ";
//! let m = &main_loops(text, &MainLoopHints::default())?[0];
//! assert_eq!((m.header, m.mma), (0x10, 2.0));
//! assert_eq!(m.instructions, 7.0);
//! assert_eq!(m.per_mma(InstrClass::Fp), 0.5);
//! assert_eq!(m.ldmatrix_bytes_per_mma(), 256.0);
//! # Ok::<(), attnforge_runtime::SassError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::sass::{parse_functions, Func, Ins, SassError};

/// What an instruction does, for the per-class breakdown of a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstrClass {
    /// Tensor-core MMA: `HMMA`, `HGMMA`, `IMMA`, `DMMA`, `QMMA`, `OMMA`.
    Mma,
    /// Integer, address, predicate and move work on the regular and the uniform datapath
    /// (`IADD3`, `IMAD`, `LEA`, `SHF`, `LOP3`, `ISETP`, `MOV`, `SEL`, `S2R`, `U*`, ...).
    IntAddress,
    /// Floating-point arithmetic, compares and conversions (`FFMA`, `FMUL`, `FADD`, `FMNMX`,
    /// `FSEL`, `FSETP`, `HFMA2`, `F2FP`, `F2F`, `I2F`, ...).
    Fp,
    /// The special-function unit (`MUFU.EX2`, `MUFU.RCP`, ...).
    Mufu,
    /// `ldmatrix` (`LDSM`).
    Ldmatrix,
    /// Other shared-memory loads and stores (`LDS`, `STS`, `STSM`, `ATOMS`).
    Shared,
    /// Global / generic loads and stores (`LDG`, `STG`, `LD`, `ST`, `RED`, `ATOMG`).
    Global,
    /// Local memory (`LDL`, `STL`): register spills or stack arrays.
    Local,
    /// Asynchronous copies and their waits (`LDGSTS`, `LDGDEPBAR`, `DEPBAR`, TMA `UTMA*`,
    /// `UBLKCP`, `SYNCS`).
    CpAsync,
    /// Warp shuffles and votes (`SHFL`, `VOTE`, `MATCH`, `REDUX`).
    Shuffle,
    /// Branches, barriers and warp synchronisation (`BRA`, `BAR`, `BSSY`, `BSYNC`,
    /// `WARPSYNC`, `WARPGROUP`, `EXIT`, ...).
    BranchSync,
    /// Anything else (`NOP`, `CCTL`, unknown opcodes).
    Other,
}

impl InstrClass {
    /// Every class, in report order.
    pub const ALL: [InstrClass; 12] = [
        InstrClass::Mma,
        InstrClass::IntAddress,
        InstrClass::Fp,
        InstrClass::Mufu,
        InstrClass::Ldmatrix,
        InstrClass::Shared,
        InstrClass::Global,
        InstrClass::Local,
        InstrClass::CpAsync,
        InstrClass::Shuffle,
        InstrClass::BranchSync,
        InstrClass::Other,
    ];

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            InstrClass::Mma => "MMA",
            InstrClass::IntAddress => "int+address",
            InstrClass::Fp => "FP",
            InstrClass::Mufu => "MUFU",
            InstrClass::Ldmatrix => "ldmatrix",
            InstrClass::Shared => "shared ld/st",
            InstrClass::Global => "global ld/st",
            InstrClass::Local => "local (spill)",
            InstrClass::CpAsync => "cp.async/TMA",
            InstrClass::Shuffle => "shuffle/vote",
            InstrClass::BranchSync => "branch/sync",
            InstrClass::Other => "other",
        }
    }
}

impl fmt::Display for InstrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The class of a full SASS mnemonic (`FFMA.FTZ`, `HMMA.16816.F32.BF16`, predicate removed).
pub fn classify(opcode: &str) -> InstrClass {
    let base = opcode.split('.').next().unwrap_or(opcode);
    match base {
        "HMMA" | "HGMMA" | "IMMA" | "DMMA" | "QMMA" | "OMMA" | "IGMMA" | "QGMMA" => InstrClass::Mma,
        "MUFU" => InstrClass::Mufu,
        "LDSM" => InstrClass::Ldmatrix,
        "LDS" | "STS" | "STSM" | "ATOMS" | "LDSU" => InstrClass::Shared,
        // constant-bank loads fetch kernel parameters and constants, not tensor data
        "LDC" | "ULDC" => InstrClass::IntAddress,
        "LDG" | "STG" | "LD" | "ST" | "RED" | "ATOM" | "ATOMG" | "REDG" => InstrClass::Global,
        "LDL" | "STL" => InstrClass::Local,
        "LDGSTS" | "LDGDEPBAR" | "DEPBAR" | "ARRIVES" | "SYNCS" | "UBLKCP" => InstrClass::CpAsync,
        b if b.starts_with("UTMA") || b.starts_with("UBLK") => InstrClass::CpAsync,
        "SHFL" | "VOTE" | "VOTEU" | "MATCH" | "REDUX" => InstrClass::Shuffle,
        "BRA" | "BRX" | "JMP" | "JMX" | "CALL" | "RET" | "EXIT" | "BAR" | "BSSY" | "BSYNC"
        | "BREAK" | "BMOV" | "WARPSYNC" | "WARPGROUP" | "YIELD" | "KILL" | "BPT" | "MEMBAR"
        | "ERRBAR" | "FENCE" | "NANOSLEEP" | "ACQBULK" | "ELECT" | "ENDCOLLECTIVE" => {
            InstrClass::BranchSync
        }
        "FADD" | "FMUL" | "FFMA" | "FMNMX" | "FSEL" | "FSET" | "FSETP" | "FCHK" | "FSWZADD"
        | "FRND" | "HADD2" | "HMUL2" | "HFMA2" | "HMNMX2" | "HSET2" | "HSETP2" | "F2F" | "F2FP"
        | "F2I" | "I2F" | "I2FP" | "F2IP" | "DADD" | "DMUL" | "DFMA" | "DSETP" | "FMNMX3"
        | "FADD2" | "FMUL2" | "FFMA2" => InstrClass::Fp,
        "NOP" | "CCTL" | "CCTLL" | "ERRBAR2" => InstrClass::Other,
        b if b.starts_with('I')
            || b.starts_with('U')
            || b.starts_with('P')
            || b.starts_with('R')
            || b.starts_with('S')
            || matches!(
                b,
                "MOV"
                    | "LEA"
                    | "LOP3"
                    | "LOP"
                    | "SHF"
                    | "SEL"
                    | "CS2R"
                    | "FLO"
                    | "POPC"
                    | "BREV"
                    | "BMSK"
                    | "LDC"
                    | "VIADD"
                    | "VIMNMX"
                    | "VIMNMX3"
                    | "VIADDMNMX"
                    | "MOVM"
            ) =>
        {
            InstrClass::IntAddress
        }
        _ => InstrClass::Other,
    }
}

/// Tensor-core work of one warp instruction in m16n8k16 equivalents (16·8·16 MACs):
/// `HMMA.16816` 1, `HMMA.1688` 0.5, `HMMA.16832` 2 (and the same shapes of `IMMA`/`QMMA`);
/// `HGMMA.64xNxK` is issued by a warpgroup of 4 warps for 64·N·K MACs, so per warp
/// 16·N·K / 2048 = N·K/128. 0 for anything else.
pub fn mma_equivalents(opcode: &str) -> f64 {
    let mut parts = opcode.split('.');
    let base = parts.next().unwrap_or_default();
    let Some(shape) = parts.next() else {
        return 0.0;
    };
    match base {
        "HMMA" | "IMMA" | "QMMA" | "OMMA" | "DMMA" => {
            // `16816` = m16 n8 k16, `1688` = m16 n8 k8, `884` = m8 n8 k4
            let (m, n, k) = match shape {
                "16816" => (16.0, 8.0, 16.0),
                "1688" => (16.0, 8.0, 8.0),
                "16832" => (16.0, 8.0, 32.0),
                "16864" => (16.0, 8.0, 64.0),
                "884" => (8.0, 8.0, 4.0),
                "8816" => (8.0, 8.0, 16.0),
                "8832" => (8.0, 8.0, 32.0),
                _ => return 0.0,
            };
            m * n * k / 2048.0
        }
        "HGMMA" | "IGMMA" | "QGMMA" => {
            let dims: Vec<f64> = shape.split('x').filter_map(|d| d.parse().ok()).collect();
            match dims.as_slice() {
                [64.0, n, k] => n * k / 128.0,
                _ => 0.0,
            }
        }
        _ => 0.0,
    }
}

/// Bytes one warp's `ldmatrix` reads from shared memory: 128 per 8x8 b16 matrix, times the
/// `.2` / `.4` count (`LDSM.16.M88.4` = 512 B, `LDSM.16.MT88.2` = 256 B, `LDSM.16.M88` =
/// 128 B). 0 for other opcodes.
pub fn ldmatrix_bytes(opcode: &str) -> u64 {
    let mut parts = opcode.split('.');
    if parts.next() != Some("LDSM") {
        return 0;
    }
    let count = match opcode.rsplit('.').next() {
        Some("4") => 4,
        Some("2") => 2,
        _ => 1,
    };
    128 * count
}

/// Where a loop's trip count comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TripSource {
    /// Read from the code: a counter set to `init` before the loop, stepped by `step` once
    /// per iteration and compared with the constant `bound` by the back edge's predicate.
    Static {
        /// The counter's value on entry.
        init: i64,
        /// Added once per iteration.
        step: i64,
        /// The constant it is compared with.
        bound: i64,
    },
    /// Solved from [`MainLoopHints`]: the trip count that makes the main loop's weighted MMA
    /// (or cp.async) count equal the expected one; the text says which.
    FromExpected(String),
    /// Not derivable: 1 trip assumed (the text says why).
    Assumed(String),
}

/// A loop nested in the main loop and the weight its body got.
#[derive(Debug, Clone, PartialEq)]
pub struct InnerLoop {
    /// Offset of its header (first instruction).
    pub header: u64,
    /// Instructions of its body (nested loops included, each counted once).
    pub instructions: usize,
    /// Instructions of one trip along its steady-state path (nested loops weighted).
    pub path_instructions: f64,
    /// It lies on the main loop's steady-state path (else its trips do not matter).
    pub on_path: bool,
    /// Trips per trip of its parent loop.
    pub trips: f64,
    /// Where `trips` comes from.
    pub source: TripSource,
}

/// What the caller knows about one iteration of the main loop (one key tile), to solve trip
/// counts that the code does not show (a rolled copy loop whose bound is a register).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MainLoopHints {
    /// m16n8k16-equivalent MMAs per warp per main-loop iteration (for an attention forward:
    /// 2·block_m·block_n·d / (warps·2048)).
    pub mma_per_iteration: Option<f64>,
    /// `cp.async` (`LDGSTS`) instructions per warp per main-loop iteration.
    pub cp_async_per_iteration: Option<f64>,
}

impl MainLoopHints {
    /// The hints of a generated forward kernel of `spec` at `tile` (docs/anchors.md): per
    /// computing warp, 2·block_m·block_n·d / (warps·2048) MMAs, and 2·block_n·d·2 bytes of
    /// K and V copied 16 bytes per `cp.async` by all warps; a producer warpgroup's copies are
    /// not in the consumers' main loop (none counted).
    pub fn for_kernel(
        spec: &attnforge_codegen::spec::KernelSpec,
        tile: &attnforge_codegen::tile::TileConfig,
    ) -> Self {
        let d = spec.head_dim.get();
        let warps = tile.compute_warps() as f64;
        MainLoopHints {
            mma_per_iteration: Some(
                (2 * tile.block_m * tile.block_n * d) as f64 / (warps * 2048.0),
            ),
            cp_async_per_iteration: (!tile.warp_specialized())
                .then(|| (2 * tile.block_n * d * 2) as f64 / (512.0 * tile.warps as f64)),
        }
    }
}

/// The main loop of one SASS function and its instruction mix, all counts per warp per
/// main-loop iteration with nested loops weighted by their trips.
#[derive(Debug, Clone, PartialEq)]
pub struct MainLoopReport {
    /// The function.
    pub function: String,
    /// Offset of the loop header.
    pub header: u64,
    /// Offsets of the back-edge branches (latches) of the loop.
    pub latches: Vec<u64>,
    /// Instructions of the body, each once (unweighted).
    pub static_instructions: usize,
    /// Instructions of one iteration along the steady-state path (see [`main_loops`]).
    pub instructions: f64,
    /// Weighted m16n8k16-equivalent MMAs per iteration.
    pub mma: f64,
    /// Weighted instructions per iteration by class.
    pub by_class: BTreeMap<InstrClass, f64>,
    /// Weighted instructions per iteration by full mnemonic.
    pub by_opcode: BTreeMap<String, f64>,
    /// Weighted `ldmatrix` bytes per iteration.
    pub ldmatrix_bytes: f64,
    /// The partial-tile path of the iteration: the same MMA work and tile copies as the
    /// steady-state (interior-tile) path above, with the optional per-element work taken
    /// (the element mask, scale and select per score of a partial or edge key tile): the
    /// costliest such path (see [`main_loops`]).
    pub partial: PathCounts,
    /// The loops nested in this one, outermost first.
    pub inner_loops: Vec<InnerLoop>,
    /// Natural loops of the function (all depths).
    pub loops_in_function: usize,
}

/// Counts of one main-loop iteration along one path, per warp, nested loops weighted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathCounts {
    /// Instructions.
    pub instructions: f64,
    /// m16n8k16-equivalent MMAs.
    pub mma: f64,
    /// Instructions by class.
    pub by_class: BTreeMap<InstrClass, f64>,
    /// `ldmatrix` bytes.
    pub ldmatrix_bytes: f64,
}

impl PathCounts {
    /// Instructions per m16n8k16-equivalent MMA.
    pub fn instr_per_mma(&self) -> f64 {
        ratio(self.instructions, self.mma)
    }

    fn of(cost: &Cost) -> Self {
        let mut by_class = BTreeMap::new();
        for (op, n) in &cost.by_opcode {
            *by_class.entry(classify(op)).or_insert(0.0) += n;
        }
        PathCounts {
            instructions: cost.instructions,
            mma: cost.mma,
            by_class,
            ldmatrix_bytes: cost
                .by_opcode
                .iter()
                .map(|(op, n)| ldmatrix_bytes(op) as f64 * n)
                .sum(),
        }
    }
}

impl MainLoopReport {
    /// Instructions per m16n8k16-equivalent MMA.
    pub fn instr_per_mma(&self) -> f64 {
        ratio(self.instructions, self.mma)
    }

    /// Instructions of `class` per m16n8k16-equivalent MMA.
    pub fn per_mma(&self, class: InstrClass) -> f64 {
        ratio(self.by_class.get(&class).copied().unwrap_or(0.0), self.mma)
    }

    /// `ldmatrix` bytes per m16n8k16-equivalent MMA.
    pub fn ldmatrix_bytes_per_mma(&self) -> f64 {
        ratio(self.ldmatrix_bytes, self.mma)
    }

    /// The assumptions made for trip counts (empty when all were derived or solved).
    pub fn assumptions(&self) -> Vec<String> {
        self.inner_loops
            .iter()
            .filter_map(|l| match &l.source {
                TripSource::Assumed(why) if l.on_path => {
                    Some(format!("loop at {:#x}: 1 trip assumed, {why}", l.header))
                }
                _ => None,
            })
            .collect()
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

// ---- control-flow graph ----

/// A basic block: instructions `first..=last` of the function.
#[derive(Debug, Clone)]
struct Block {
    first: usize,
    last: usize,
    succs: Vec<usize>,
    preds: Vec<usize>,
}

/// A natural loop: its header block, its body blocks and the blocks holding back edges.
#[derive(Debug, Clone)]
struct Loop {
    header: usize,
    body: BTreeSet<usize>,
    latches: Vec<usize>,
    parent: Option<usize>,
}

struct Cfg<'f> {
    f: &'f Func,
    blocks: Vec<Block>,
    loops: Vec<Loop>,
}

fn base(op: &str) -> &str {
    op.split('.').next().unwrap_or(op)
}

/// Ends a block: control may not fall through to the next instruction unconditionally.
fn ends_block(i: &Ins) -> bool {
    matches!(
        base(&i.opcode),
        "BRA" | "JMP" | "BRX" | "JMX" | "EXIT" | "RET" | "KILL" | "BPT"
    )
}

fn falls_through(i: &Ins) -> bool {
    match base(&i.opcode) {
        "BRA" | "JMP" | "EXIT" | "RET" | "KILL" => i.predicated,
        // `BPT.TRAP` stops the kernel; an indirect branch's targets are unknown, so it is
        // treated as falling through (never seen in attention kernels)
        "BPT" => i.predicated || !i.opcode.contains("TRAP"),
        _ => true,
    }
}

fn build_cfg(f: &Func) -> Result<Cfg<'_>, SassError> {
    let n = f.ins.len();
    let index_of = |off: u64, i: &Ins| -> Result<Option<usize>, SassError> {
        match f.ins.binary_search_by_key(&off, |x| x.offset) {
            Ok(k) => Ok(Some(k)),
            // a label after the last instruction names the end of the function
            Err(k) if k == n => Ok(None),
            Err(_) => Err(SassError::Malformed {
                line: i.line,
                reason: format!(
                    "branch to {off:#x}, which is not an instruction offset of `{}`",
                    f.name
                ),
                text: format!("{} {off:#x}", i.opcode),
            }),
        }
    };
    let mut leader = vec![false; n];
    leader[0] = true;
    for (k, i) in f.ins.iter().enumerate() {
        if let Some(t) = i.target {
            if let Some(j) = index_of(t, i)? {
                leader[j] = true;
            }
        }
        if ends_block(i) && k + 1 < n {
            leader[k + 1] = true;
        }
    }
    let mut block_of = vec![0; n];
    let mut blocks: Vec<Block> = Vec::new();
    for k in 0..n {
        if leader[k] {
            blocks.push(Block {
                first: k,
                last: k,
                succs: vec![],
                preds: vec![],
            });
        }
        let b = blocks.len() - 1;
        blocks[b].last = k;
        block_of[k] = b;
    }
    for b in 0..blocks.len() {
        let last = &f.ins[blocks[b].last];
        let mut succs = Vec::new();
        if let Some(t) = last.target {
            if let Some(j) = index_of(t, last)? {
                succs.push(block_of[j]);
            }
        }
        if falls_through(last) && b + 1 < blocks.len() {
            succs.push(b + 1);
        }
        succs.dedup();
        for &s in &succs {
            blocks[s].preds.push(b);
        }
        blocks[b].succs = succs;
    }
    let loops = natural_loops(&blocks);
    Ok(Cfg { f, blocks, loops })
}

/// Immediate dominators (Cooper, Harvey, Kennedy), entry = block 0; `None` for unreachable.
fn dominators(blocks: &[Block]) -> Vec<Option<usize>> {
    // reverse postorder by an explicit-stack DFS
    let n = blocks.len();
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut stack = vec![(0usize, 0usize)];
    seen[0] = true;
    while let Some((b, next)) = stack.pop() {
        if let Some(&s) = blocks[b].succs.get(next) {
            stack.push((b, next + 1));
            if !seen[s] {
                seen[s] = true;
                stack.push((s, 0));
            }
        } else {
            order.push(b);
        }
    }
    order.reverse();
    let mut rpo = vec![usize::MAX; n];
    for (k, &b) in order.iter().enumerate() {
        rpo[b] = k;
    }
    let mut idom: Vec<Option<usize>> = vec![None; n];
    idom[0] = Some(0);
    let mut changed = true;
    while changed {
        changed = false;
        for &b in order.iter().skip(1) {
            let mut new: Option<usize> = None;
            for &p in &blocks[b].preds {
                if idom[p].is_none() {
                    continue;
                }
                new = Some(match new {
                    None => p,
                    Some(mut x) => {
                        let mut y = p;
                        while x != y {
                            while rpo[x] > rpo[y] {
                                x = idom[x].unwrap_or(0);
                            }
                            while rpo[y] > rpo[x] {
                                y = idom[y].unwrap_or(0);
                            }
                        }
                        x
                    }
                });
            }
            if new.is_some() && idom[b] != new {
                idom[b] = new;
                changed = true;
            }
        }
    }
    idom
}

fn dominates(idom: &[Option<usize>], a: usize, mut b: usize) -> bool {
    loop {
        if a == b {
            return true;
        }
        match idom[b] {
            Some(p) if p != b => b = p,
            _ => return false,
        }
    }
}

/// Natural loops, one per header (back edges to the same header merged), with parents.
fn natural_loops(blocks: &[Block]) -> Vec<Loop> {
    let idom = dominators(blocks);
    let mut by_header: BTreeMap<usize, Loop> = BTreeMap::new();
    for (u, b) in blocks.iter().enumerate() {
        if idom[u].is_none() {
            continue;
        }
        for &h in &b.succs {
            if !dominates(&idom, h, u) {
                continue;
            }
            let l = by_header.entry(h).or_insert_with(|| Loop {
                header: h,
                body: BTreeSet::from([h]),
                latches: vec![],
                parent: None,
            });
            l.latches.push(u);
            let mut work = vec![u];
            while let Some(x) = work.pop() {
                if l.body.insert(x) {
                    work.extend(blocks[x].preds.iter().filter(|p| idom[**p].is_some()));
                }
            }
        }
    }
    let mut loops: Vec<Loop> = by_header.into_values().collect();
    for k in 0..loops.len() {
        let parent = (0..loops.len())
            .filter(|&j| {
                j != k
                    && loops[j].body.contains(&loops[k].header)
                    && loops[j].body.len() > loops[k].body.len()
            })
            .min_by_key(|&j| loops[j].body.len());
        loops[k].parent = parent;
    }
    loops
}

impl Cfg<'_> {
    fn instructions(&self, body: &BTreeSet<usize>) -> impl Iterator<Item = &Ins> + '_ {
        let blocks: Vec<usize> = body.iter().copied().collect();
        blocks
            .into_iter()
            .flat_map(move |b| &self.f.ins[self.blocks[b].first..=self.blocks[b].last])
    }

    /// Loops strictly inside loop `l` (any depth).
    fn descendants(&self, l: usize) -> Vec<usize> {
        (0..self.loops.len())
            .filter(|&k| {
                let mut p = self.loops[k].parent;
                while let Some(x) = p {
                    if x == l {
                        return true;
                    }
                    p = self.loops[x].parent;
                }
                false
            })
            .collect()
    }

    fn block_cost(&self, b: usize) -> Cost {
        let mut c = Cost::default();
        for i in &self.f.ins[self.blocks[b].first..=self.blocks[b].last] {
            c.add_ins(i);
        }
        c
    }
}

/// Instructions of a path, weighted.
#[derive(Debug, Clone, Default, PartialEq)]
struct Cost {
    mma: f64,
    /// Bytes per lane read from global memory by tile copies ([`tile_load_bytes`]).
    loaded: f64,
    /// Instructions that read tile bytes from global memory.
    copies: f64,
    instructions: f64,
    by_opcode: BTreeMap<String, f64>,
}

impl Cost {
    fn add_ins(&mut self, i: &Ins) {
        self.mma += mma_equivalents(&i.opcode);
        let bytes = tile_load_bytes(&i.opcode);
        self.loaded += bytes as f64;
        self.copies += if bytes > 0 { 1.0 } else { 0.0 };
        self.instructions += 1.0;
        *self.by_opcode.entry(i.opcode.clone()).or_insert(0.0) += 1.0;
    }

    fn add(&mut self, other: &Cost, times: f64) {
        self.mma += other.mma * times;
        self.loaded += other.loaded * times;
        self.copies += other.copies * times;
        self.instructions += other.instructions * times;
        for (op, n) in &other.by_opcode {
            *self.by_opcode.entry(op.clone()).or_insert(0.0) += n * times;
        }
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.by_opcode
            .iter()
            .filter(|(op, _)| pred(op))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The ordering key of a path: MMA work, global bytes loaded, copy instructions,
/// instructions.
type Key = (f64, f64, f64, f64);

fn key(c: &Cost) -> Key {
    (c.mma, c.loaded, c.copies, c.instructions)
}

fn plus(a: Key, c: &Cost) -> Key {
    (
        a.0 + c.mma,
        a.1 + c.loaded,
        a.2 + c.copies,
        a.3 + c.instructions,
    )
}

/// `a` is a better steady-state path than `b`: more MMA work, then more bytes loaded from
/// global memory (the next tile's prefetch happens), then fewer instructions.
fn better(a: Key, b: Key) -> bool {
    better_for(Prefer::Interior, a, b)
}

/// Which of the paths with the most MMA work and the most tile bytes loaded a loop is costed
/// along: an interior key tile takes none of the optional work; a partial (or edge) tile
/// takes the per-element work (the allowed-element bits with the element mask, scale and
/// select per score): among the paths that copy the tile in the fewest instructions (the
/// fast copy, not a misaligned-copy fallback loading the same bytes), the costliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefer {
    /// The fewest instructions.
    Interior,
    /// The most instructions.
    Partial,
}

fn better_for(prefer: Prefer, a: Key, b: Key) -> bool {
    const EPS: f64 = 1e-9;
    if (a.0 - b.0).abs() > EPS {
        return a.0 > b.0;
    }
    if (a.1 - b.1).abs() > EPS {
        return a.1 > b.1;
    }
    match prefer {
        Prefer::Interior => a.3 < b.3 - EPS,
        Prefer::Partial if (a.2 - b.2).abs() > EPS => a.2 < b.2,
        Prefer::Partial => a.3 > b.3 + EPS,
    }
}

/// Bytes one lane reads from global memory with this instruction: `LDG`/`LDGSTS`/`LD` by
/// their width modifier (`.128` 16, `.64` 8, `.U16`/`.S16` 2, `.U8`/`.S8` 1, else 4); a TMA
/// load (`UTMALDG`) counts 16. 0 for other opcodes.
pub fn global_load_bytes(opcode: &str) -> u64 {
    let mut parts = opcode.split('.');
    let b = parts.next().unwrap_or_default();
    if b == "UTMALDG" {
        return 16;
    }
    if !matches!(b, "LDG" | "LDGSTS" | "LD") {
        return 0;
    }
    let mut bytes = 4;
    for m in parts {
        bytes = match m {
            "128" => 16,
            "64" => 8,
            "U16" | "S16" => 2,
            "U8" | "S8" => 1,
            _ => continue,
        };
    }
    bytes
}

/// [`global_load_bytes`] without the read-only-cache loads (`LDG.*.CONSTANT`): the bytes that
/// tell the path that copies the next tile from the one that does not. A mask's per-element
/// reads (document ids through `const int* __restrict__`) go through the read-only cache and
/// would otherwise make the partial-tile path look like the prefetching one (they did for the
/// document kernels: 1393 instructions per warp on the partial path against 688 interior).
pub fn tile_load_bytes(opcode: &str) -> u64 {
    if opcode.split('.').any(|m| m == "CONSTANT") {
        0
    } else {
        global_load_bytes(opcode)
    }
}

/// The steady-state path of every loop: from the header to a back edge, through the loop's
/// blocks with each directly nested loop taken as one node costing `trips` times its own
/// steady-state path; among all such paths the one with the most MMA work, then the most
/// bytes loaded from global memory, then the fewest instructions (an interior tile: all of
/// the tile's MMAs and the next tile's copy, none of the optional work such as edge-tile
/// masking or a misaligned-copy fallback). Returns per loop the path's cost and
/// the nested loops on it. A loop whose body is not acyclic once its nested loops are
/// collapsed (irreducible flow) costs its whole body.
fn hot_paths(cfg: &Cfg<'_>, trips: &BTreeMap<usize, f64>) -> Vec<(Cost, Vec<usize>)> {
    paths_by(cfg, trips, Prefer::Interior)
}

/// [`hot_paths`] with the choice among equal MMA work and tile bytes given by `prefer`.
fn paths_by(
    cfg: &Cfg<'_>,
    trips: &BTreeMap<usize, f64>,
    prefer: Prefer,
) -> Vec<(Cost, Vec<usize>)> {
    let n = cfg.loops.len();
    let mut out: Vec<Option<(Cost, Vec<usize>)>> = vec![None; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&l| cfg.loops[l].body.len());
    for l in order {
        let lp = &cfg.loops[l];
        let children: Vec<usize> = (0..n).filter(|&c| cfg.loops[c].parent == Some(l)).collect();
        // node of a block: the child loop holding it, or the block itself
        let node_of = |b: usize| -> Node {
            children
                .iter()
                .find(|&&c| cfg.loops[c].body.contains(&b))
                .map_or(Node::Block(b), |&c| Node::Loop(c))
        };
        let cost_of = |nd: Node| -> Cost {
            match nd {
                Node::Block(b) => cfg.block_cost(b),
                Node::Loop(c) => {
                    let mut k = Cost::default();
                    if let Some((hc, _)) = &out[c] {
                        k.add(hc, trips.get(&c).copied().unwrap_or(1.0));
                    }
                    k
                }
            }
        };
        let mut succs: BTreeMap<Node, BTreeSet<Node>> = BTreeMap::new();
        let mut ends: BTreeSet<Node> = BTreeSet::new();
        for &b in &lp.body {
            let from = node_of(b);
            succs.entry(from).or_default();
            for &s in &cfg.blocks[b].succs {
                if s == lp.header {
                    ends.insert(from);
                } else if lp.body.contains(&s) {
                    let to = node_of(s);
                    if to != from {
                        succs.entry(from).or_default().insert(to);
                    }
                }
            }
        }
        let entry = Node::Block(lp.header);
        let result = topological(&succs, entry).and_then(|topo| {
            let mut best: BTreeMap<Node, (Key, Option<Node>)> = BTreeMap::new();
            best.insert(entry, (key(&cost_of(entry)), None));
            for &u in &topo {
                let Some(&(ku, _)) = best.get(&u) else {
                    continue;
                };
                for &v in &succs[&u] {
                    let k = plus(ku, &cost_of(v));
                    if best
                        .get(&v)
                        .is_none_or(|(kv, _)| better_for(prefer, k, *kv))
                    {
                        best.insert(v, (k, Some(u)));
                    }
                }
            }
            let end = ends
                .iter()
                .filter_map(|e| best.get(e).map(|(k, _)| (*e, *k)))
                .reduce(|a, b| if better_for(prefer, b.1, a.1) { b } else { a })?
                .0;
            let mut path = vec![end];
            while let Some(&(_, Some(p))) = best.get(path.last()?) {
                path.push(p);
            }
            let mut cost = Cost::default();
            let mut on_path = Vec::new();
            for nd in path {
                cost.add(&cost_of(nd), 1.0);
                if let Node::Loop(c) = nd {
                    on_path.push(c);
                    on_path.extend(out[c].as_ref().map_or(vec![], |x| x.1.clone()));
                }
            }
            Some((cost, on_path))
        });
        let result = result.unwrap_or_else(|| {
            // whole body, nested loops weighted by their trips
            let mut cost = Cost::default();
            let mut seen = BTreeSet::new();
            for &b in &lp.body {
                let nd = node_of(b);
                if seen.insert(nd) {
                    cost.add(&cost_of(nd), 1.0);
                }
            }
            (cost, cfg.descendants(l))
        });
        out[l] = Some(result);
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Block(usize),
    Loop(usize),
}

/// Topological order of the nodes reachable from `entry`; `None` on a cycle.
fn topological(succs: &BTreeMap<Node, BTreeSet<Node>>, entry: Node) -> Option<Vec<Node>> {
    // 0 = unseen, 1 = on stack, 2 = done
    let mut state: BTreeMap<Node, u8> = BTreeMap::new();
    let mut post = Vec::new();
    let mut stack: Vec<(Node, Vec<Node>)> = vec![(
        entry,
        succs
            .get(&entry)
            .map_or(vec![], |s| s.iter().copied().collect()),
    )];
    state.insert(entry, 1);
    while let Some((u, rest)) = stack.last_mut() {
        let u = *u;
        if let Some(v) = rest.pop() {
            match state.get(&v).copied().unwrap_or(0) {
                0 => {
                    state.insert(v, 1);
                    let next = succs
                        .get(&v)
                        .map_or(vec![], |s| s.iter().copied().collect());
                    stack.push((v, next));
                }
                1 => return None,
                _ => {}
            }
        } else {
            state.insert(u, 2);
            post.push(u);
            stack.pop();
        }
    }
    post.reverse();
    Some(post)
}

// ---- static trip counts ----

/// A register or immediate operand's constant value: `RZ`, `0x10`, `-0x1`, `16`.
fn immediate(op: &str) -> Option<i64> {
    let op = op.trim();
    if op == "RZ" || op == "SRZ" || op == "URZ" {
        return Some(0);
    }
    let (neg, mag) = match op.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, op),
    };
    let v = match mag.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16).ok()?,
        None => mag.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

fn operands(i: &Ins) -> Vec<&str> {
    i.operands.split(',').map(str::trim).collect()
}

/// The first operand names the register written (`R2`, `P0`, `UR4`).
fn writes(i: &Ins, reg: &str) -> bool {
    let ops = operands(i);
    match base(&i.opcode) {
        // ISETP/FSETP/PLOP3 write two predicates
        "ISETP" | "FSETP" | "PLOP3" | "DSETP" | "HSETP2" => ops.iter().take(2).any(|o| *o == reg),
        // CS2R / 64-bit moves write a register pair
        "CS2R" | "IMAD" if i.opcode.contains("WIDE") || base(&i.opcode) == "CS2R" => {
            ops.first().is_some_and(|o| {
                *o == reg
                    || register_number(o).map(|n| format!("R{}", n + 1)).as_deref() == Some(reg)
            })
        }
        _ => ops.first() == Some(&reg),
    }
}

fn register_number(r: &str) -> Option<u32> {
    r.strip_prefix('R')?.parse().ok()
}

/// The constant a move-like instruction writes to its destination, if it is one.
fn constant_written(i: &Ins) -> Option<i64> {
    if i.predicated {
        return None;
    }
    let ops = operands(i);
    match i.opcode.as_str() {
        "MOV" | "UMOV" => immediate(ops.get(1)?),
        "CS2R" => (ops.get(1) == Some(&"SRZ")).then_some(0),
        "IMAD.MOV.U32" | "IMAD.MOV" => {
            // IMAD.MOV.U32 Rd, RZ, RZ, imm
            (ops.get(1) == Some(&"RZ") && ops.get(2) == Some(&"RZ"))
                .then(|| immediate(ops.get(3)?))
                .flatten()
        }
        _ => None,
    }
}

/// `reg += step` as `IADD3 R, R, imm, RZ` / `IADD3 R, imm, R, RZ` / `VIADD R, R, imm`:
/// returns the step.
fn increment_of(i: &Ins, reg: &str) -> Option<i64> {
    if i.predicated {
        return None;
    }
    let ops = operands(i);
    if ops.first() != Some(&reg) {
        return None;
    }
    match i.opcode.as_str() {
        "IADD3" | "UIADD3" => {
            let srcs = &ops[1..];
            if srcs.len() != 3 {
                return None;
            }
            let regs: Vec<&&str> = srcs.iter().filter(|o| **o == reg).collect();
            if regs.len() != 1 {
                return None;
            }
            let mut step = 0;
            for o in srcs.iter().filter(|o| **o != reg) {
                step += immediate(o)?;
            }
            Some(step)
        }
        "VIADD" => (ops.get(1) == Some(&reg))
            .then(|| immediate(ops.get(2)?))
            .flatten(),
        _ => None,
    }
}

fn compare(cmp: &str, a: i64, b: i64) -> Option<bool> {
    Some(match cmp {
        "LT" => a < b,
        "LE" => a <= b,
        "GT" => a > b,
        "GE" => a >= b,
        "EQ" => a == b,
        "NE" => a != b,
        _ => return None,
    })
}

/// The static trip count of loop `l` (trips per entry), when its single latch ends in
/// `@[!]P BRA header`, `P` is set in the latch block by `ISETP.<cmp>.AND P, PT, R, <imm>, PT`,
/// `R` is stepped once in the loop by a constant and set to a constant before the loop.
fn static_trips(cfg: &Cfg<'_>, l: usize) -> Option<(f64, TripSource)> {
    let lp = &cfg.loops[l];
    let [latch] = lp.latches.as_slice() else {
        return None;
    };
    let blk = &cfg.blocks[*latch];
    let br = &cfg.f.ins[blk.last];
    if base(&br.opcode) != "BRA" || br.operands.contains(',') {
        return None;
    }
    let guard = br.guard.as_deref()?;
    let (negated, pred) = match guard.strip_prefix('!') {
        Some(p) => (true, p),
        None => (false, guard),
    };
    // the compare that sets the predicate, last in the latch block before the branch
    let (cmp_idx, setp) = (blk.first..blk.last)
        .rev()
        .map(|k| (k, &cfg.f.ins[k]))
        .find(|(_, i)| writes(i, pred))?;
    let mods: Vec<&str> = setp.opcode.split('.').collect();
    if mods.first() != Some(&"ISETP") || setp.predicated || !mods.contains(&"AND") {
        return None;
    }
    let cmp = mods.get(1)?;
    let ops = operands(setp);
    if ops.len() != 5 || ops[0] != pred || ops[1] != "PT" || ops[4] != "PT" {
        return None;
    }
    let (counter, bound, swapped) = match (immediate(ops[2]), immediate(ops[3])) {
        (None, Some(b)) => (ops[2], b, false),
        (Some(b), None) => (ops[3], b, true),
        _ => return None,
    };
    // exactly one write of the counter in the loop: its step
    let body_ins: Vec<(usize, &Ins)> = lp
        .body
        .iter()
        .flat_map(|&b| (cfg.blocks[b].first..=cfg.blocks[b].last).map(|k| (k, &cfg.f.ins[k])))
        .collect();
    let defs: Vec<&(usize, &Ins)> = body_ins
        .iter()
        .filter(|(_, i)| writes(i, counter))
        .collect();
    let [(step_idx, step_ins)] = defs.as_slice() else {
        return None;
    };
    let step = increment_of(step_ins, counter)?;
    // the step must be in the latch block (runs once per trip)
    if !(blk.first..=blk.last).contains(step_idx) || step == 0 {
        return None;
    }
    // the counter's entry value: the last write before the header in straight-line code of
    // the block that enters the loop (a single predecessor outside the loop)
    let outside: Vec<usize> = cfg.blocks[lp.header]
        .preds
        .iter()
        .copied()
        .filter(|p| !lp.body.contains(p))
        .collect();
    let [pre] = outside.as_slice() else {
        return None;
    };
    let init = (cfg.blocks[*pre].first..=cfg.blocks[*pre].last)
        .rev()
        .map(|k| &cfg.f.ins[k])
        .find(|i| writes(i, counter))
        .and_then(constant_written)?;
    let stepped_before_compare = step_idx < &cmp_idx;
    let mut value = init;
    let mut trips = 0i64;
    loop {
        trips += 1;
        if trips > 65_536 {
            return None;
        }
        let seen = if stepped_before_compare {
            value + step
        } else {
            value
        };
        value += step;
        let (a, b) = if swapped {
            (bound, seen)
        } else {
            (seen, bound)
        };
        let p = compare(cmp, a, b)?;
        if p == negated {
            break;
        }
    }
    Some((trips as f64, TripSource::Static { init, step, bound }))
}

// ---- the main loop ----

/// The main loop's steady-state cost with every loop of `unknown` at `t` trips.
fn main_cost_at(
    cfg: &Cfg<'_>,
    main: usize,
    trips: &BTreeMap<usize, f64>,
    unknown: &[usize],
    t: f64,
) -> Cost {
    let mut tr = trips.clone();
    for &u in unknown {
        tr.insert(u, t);
    }
    hot_paths(cfg, &tr).swap_remove(main).0
}

/// Solves the common trip count `t` of the `unknown` loops (inside `main`) at which the
/// steady-state count `measure` equals `expected`. The count is affine in `t` while the path
/// does not change; the solution is checked by recomputing.
fn solve_trips(
    cfg: &Cfg<'_>,
    main: usize,
    trips: &BTreeMap<usize, f64>,
    unknown: &[usize],
    expected: f64,
    measure: impl Fn(&Cost) -> f64,
) -> Option<f64> {
    let f1 = measure(&main_cost_at(cfg, main, trips, unknown, 1.0));
    let f2 = measure(&main_cost_at(cfg, main, trips, unknown, 2.0));
    let slope = f2 - f1;
    if slope <= 0.0 {
        return None;
    }
    let t = 1.0 + (expected - f1) / slope;
    let check = measure(&main_cost_at(cfg, main, trips, unknown, t));
    (t >= 1.0 - 1e-9 && t.is_finite() && (check - expected).abs() <= 1e-6 * expected.max(1.0))
        .then_some(t)
}

/// The main loop of every function of SASS `text` that has a loop with MMA work.
///
/// Each loop is costed along its steady-state path (see below); the main loop is the loop
/// whose path has the most MMA work, and on a tie (a peeled first key tile with masking, or
/// separate edge- and interior-tile loops) the most global bytes loaded, then the fewest
/// instructions.
///
/// The steady-state path of a loop runs from its header to a back edge; each nested loop on
/// it counts as its own steady-state path times its trips; among all paths it is the one with
/// the most MMA work, then the most bytes loaded from global memory
/// ([`tile_load_bytes`]), then the fewest instructions. For an attention kernel this is
/// an interior key tile that is not the last: every MMA of the tile and the prefetch of the
/// next one, none of the optional work (edge-tile masking, a misaligned-copy fallback that
/// loads the same bytes in more instructions). Counting every block of the body instead
/// would add both sides of every branch.
///
/// The partial-tile path ([`MainLoopReport::partial`]) is costed the same way with the other
/// choice among the paths of equal MMA work and tile bytes: the fewest copy instructions,
/// then the most instructions (a partial or edge key tile: the allowed-element bits with
/// the element mask, the scale and select per score; the classifier's longest branch).
///
/// Trips of nested loops: read from the code where a constant-bound counter shows them
/// ([`TripSource::Static`]), else solved from `hints` (loops with MMA on their path from
/// `mma_per_iteration`, then loops with `LDGSTS` from `cp_async_per_iteration`), else 1
/// ([`TripSource::Assumed`], listed by [`MainLoopReport::assumptions`]).
///
/// Errors as [`crate::sass_loops`]; a function without MMA in a loop gives no report.
pub fn main_loops(text: &str, hints: &MainLoopHints) -> Result<Vec<MainLoopReport>, SassError> {
    let mut out = Vec::new();
    for f in parse_functions(text)? {
        let cfg = build_cfg(&f)?;
        if let Some(r) = main_loop_of(&cfg, hints) {
            out.push(r);
        }
    }
    Ok(out)
}

fn is_copy(op: &str) -> bool {
    base(op) == "LDGSTS"
}

fn main_loop_of(cfg: &Cfg<'_>, hints: &MainLoopHints) -> Option<MainLoopReport> {
    let mut trips: BTreeMap<usize, f64> = BTreeMap::new();
    let mut sources: BTreeMap<usize, TripSource> = BTreeMap::new();
    for l in 0..cfg.loops.len() {
        if let Some((t, s)) = static_trips(cfg, l) {
            trips.insert(l, t);
            sources.insert(l, s);
        }
    }
    // pick the main loop with unknown trips taken as 1
    let hot = hot_paths(cfg, &trips);
    let main = (0..cfg.loops.len())
        .filter(|&l| hot[l].0.mma > 0.0)
        .reduce(|a, b| {
            if better(key(&hot[b].0), key(&hot[a].0)) {
                b
            } else {
                a
            }
        })?;
    let desc = cfg.descendants(main);
    let on_path = |trips: &BTreeMap<usize, f64>| -> BTreeSet<usize> {
        hot_paths(cfg, trips)
            .swap_remove(main)
            .1
            .into_iter()
            .collect()
    };
    let hot_of = |l: usize, trips: &BTreeMap<usize, f64>| hot_paths(cfg, trips).swap_remove(l).0;
    let path = on_path(&trips);
    let unknown_with = |trips: &BTreeMap<usize, f64>, pred: &dyn Fn(&Cost) -> bool| -> Vec<usize> {
        desc.iter()
            .copied()
            .filter(|d| !trips.contains_key(d) && path.contains(d))
            .filter(|&d| pred(&hot_of(d, trips)))
            .collect()
    };
    type Measure<'a> = &'a dyn Fn(&Cost) -> f64;
    let hinted: [(Option<f64>, &str, Measure<'_>); 2] = [
        (hints.mma_per_iteration, "MMA", &|c: &Cost| c.mma),
        (hints.cp_async_per_iteration, "LDGSTS", &|c: &Cost| {
            c.count(is_copy)
        }),
    ];
    for (expected, what, measure) in hinted {
        let Some(expected) = expected else { continue };
        let unknown = unknown_with(&trips, &|c| measure(c) > 0.0);
        if unknown.is_empty() {
            continue;
        }
        if let Some(t) = solve_trips(cfg, main, &trips, &unknown, expected, measure) {
            for &d in &unknown {
                trips.insert(d, t);
                sources.insert(
                    d,
                    TripSource::FromExpected(format!(
                        "{t:.3} trips give the expected {expected} {what} per iteration{}",
                        if unknown.len() > 1 {
                            " (the same for each such loop)"
                        } else {
                            ""
                        }
                    )),
                );
            }
        }
    }
    for &d in &desc {
        sources.entry(d).or_insert_with(|| {
            TripSource::Assumed(
                "its bound is not a constant and no hint covers it (no MMA, no LDGSTS on its path); 1 trip is right for a scan that finds the next visited tile at once".to_owned(),
            )
        });
    }
    let (cost, path) = hot_paths(cfg, &trips).swap_remove(main);
    let partial = PathCounts::of(&paths_by(cfg, &trips, Prefer::Partial).swap_remove(main).0);
    let path: BTreeSet<usize> = path.into_iter().collect();
    let interior = PathCounts::of(&cost);
    let hot = hot_paths(cfg, &trips);
    let lp = &cfg.loops[main];
    let mut inner: Vec<InnerLoop> = desc
        .iter()
        .map(|&d| InnerLoop {
            header: cfg.f.ins[cfg.blocks[cfg.loops[d].header].first].offset,
            instructions: cfg.instructions(&cfg.loops[d].body).count(),
            path_instructions: hot[d].0.instructions,
            on_path: path.contains(&d),
            trips: trips.get(&d).copied().unwrap_or(1.0),
            source: sources[&d].clone(),
        })
        .collect();
    inner.sort_by_key(|l| l.header);
    Some(MainLoopReport {
        function: cfg.f.name.clone(),
        header: cfg.f.ins[cfg.blocks[lp.header].first].offset,
        latches: lp
            .latches
            .iter()
            .map(|&b| cfg.f.ins[cfg.blocks[b].last].offset)
            .collect(),
        static_instructions: cfg.instructions(&lp.body).count(),
        instructions: interior.instructions,
        mma: interior.mma,
        ldmatrix_bytes: interior.ldmatrix_bytes,
        by_class: interior.by_class,
        by_opcode: cost.by_opcode,
        partial,
        inner_loops: inner,
        loops_in_function: cfg.loops.len(),
    })
}

/// The natural loops of each function as `(function, header offset, body instruction
/// count, nesting depth)`, outer loops first; for inspection and tests.
pub fn natural_loop_summary(text: &str) -> Result<Vec<(String, u64, usize, usize)>, SassError> {
    let mut out = Vec::new();
    for f in parse_functions(text)? {
        let cfg = build_cfg(&f)?;
        let mut rows: Vec<_> = (0..cfg.loops.len())
            .map(|l| {
                let mut depth = 0;
                let mut p = cfg.loops[l].parent;
                while let Some(x) = p {
                    depth += 1;
                    p = cfg.loops[x].parent;
                }
                (
                    f.name.clone(),
                    f.ins[cfg.blocks[cfg.loops[l].header].first].offset,
                    cfg.instructions(&cfg.loops[l].body).count(),
                    depth,
                )
            })
            .collect();
        rows.sort_by_key(|r| (r.3, r.1));
        out.extend(rows);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SASS in cuobjdump layout from `(offset, instruction)` pairs.
    fn sass(lines: &[(u64, &str)]) -> String {
        let mut s = String::from("\tcode for sm_80\n\t\tFunction : k\n");
        for (off, ins) in lines {
            s.push_str(&format!(
                "        /*{off:04x}*/                   {ins} ;   /* 0x000fe20000000800 */\n"
            ));
        }
        s
    }

    fn only(text: &str, hints: &MainLoopHints) -> MainLoopReport {
        let mut v = main_loops(text, hints).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    const MMA: &str = "HMMA.16816.F32.BF16 R8, R12, R16, R8";

    #[test]
    fn opcode_tables() {
        assert_eq!(mma_equivalents("HMMA.16816.F32.BF16"), 1.0);
        assert_eq!(mma_equivalents("HMMA.1688.F32"), 0.5);
        assert_eq!(mma_equivalents("HGMMA.64x128x16.F32.BF16"), 16.0);
        assert_eq!(mma_equivalents("HGMMA.64x64x16.F32.BF16"), 8.0);
        assert_eq!(mma_equivalents("HMMA"), 0.0);
        assert_eq!(mma_equivalents("FFMA"), 0.0);
        assert_eq!(ldmatrix_bytes("LDSM.16.M88.4"), 512);
        assert_eq!(ldmatrix_bytes("LDSM.16.MT88.2"), 256);
        assert_eq!(ldmatrix_bytes("LDSM.16.M88"), 128);
        assert_eq!(ldmatrix_bytes("LDS.128"), 0);
        assert_eq!(global_load_bytes("LDGSTS.E.BYPASS.128"), 16);
        assert_eq!(global_load_bytes("LDG.E.U16"), 2);
        assert_eq!(global_load_bytes("LDG.E"), 4);
        assert_eq!(global_load_bytes("STG.E.128"), 0);
        assert_eq!(tile_load_bytes("LDGSTS.E.BYPASS.128"), 16);
        assert_eq!(tile_load_bytes("LDG.E.CONSTANT"), 0);
        assert_eq!(global_load_bytes("LDG.E.CONSTANT"), 4);
        let c = |op| classify(op);
        assert_eq!(c("HGMMA.64x64x16.F32.BF16"), InstrClass::Mma);
        assert_eq!(c("IMAD.WIDE.U32"), InstrClass::IntAddress);
        assert_eq!(c("ULDC.64"), InstrClass::IntAddress);
        assert_eq!(c("LDC"), InstrClass::IntAddress);
        assert_eq!(c("FFMA.FTZ"), InstrClass::Fp);
        assert_eq!(c("F2FP.BF16.F32.PACK_AB"), InstrClass::Fp);
        assert_eq!(c("MUFU.EX2"), InstrClass::Mufu);
        assert_eq!(c("LDSM.16.M88.4"), InstrClass::Ldmatrix);
        assert_eq!(c("STS.128"), InstrClass::Shared);
        assert_eq!(c("LDG.E.128"), InstrClass::Global);
        assert_eq!(c("STL.64"), InstrClass::Local);
        assert_eq!(c("LDGSTS.E.BYPASS.128"), InstrClass::CpAsync);
        assert_eq!(c("DEPBAR.LE"), InstrClass::CpAsync);
        assert_eq!(c("SHFL.BFLY"), InstrClass::Shuffle);
        assert_eq!(c("BAR.SYNC.DEFER_BLOCKING"), InstrClass::BranchSync);
        assert_eq!(c("RET.REL.NODEC"), InstrClass::BranchSync);
        assert_eq!(c("NOP"), InstrClass::Other);
    }

    /// FA2 places the next tile's prefetch before the loop header and its epilogue between;
    /// the backward-branch rule takes 0x20..=0xa0 (epilogue included) as a loop, dominators
    /// take exactly the blocks that return to the header.
    #[test]
    fn block_before_the_header_belongs_to_the_loop_the_epilogue_does_not() {
        let t = sass(&[
            (0x00, "MOV R2, RZ"),
            (0x10, "BRA 0x60"),
            (0x20, "LDGSTS.E.BYPASS.128 [R1], [R4.64]"),
            (0x30, "BRA 0x60"),
            (0x40, "MUFU.EX2 R5, R5"),
            (0x50, "EXIT"),
            (0x60, MMA),
            (0x70, "IADD3 R2, R2, 0x1, RZ"),
            (0x80, "ISETP.GE.AND P0, PT, R2, R7, PT"),
            (0x90, "@P0 BRA 0x40"),
            (0xa0, "BRA 0x20"),
        ]);
        let m = only(&t, &MainLoopHints::default());
        assert_eq!(m.header, 0x60);
        assert_eq!(m.latches, vec![0x30]);
        assert_eq!(
            (m.static_instructions, m.instructions, m.mma),
            (7, 7.0, 1.0)
        );
        assert_eq!(m.by_class.get(&InstrClass::Mufu), None);
        assert_eq!(m.by_class[&InstrClass::CpAsync], 1.0);
        assert_eq!(m.by_class[&InstrClass::BranchSync], 3.0);
        assert_eq!(m.per_mma(InstrClass::IntAddress), 2.0);
        // the plain rule sees two "loops", one holding the epilogue's MUFU
        assert!(crate::sass_loops(&t)
            .unwrap()
            .iter()
            .any(|l| l.count("MUFU") == 1));
    }

    #[test]
    fn nested_loop_weighted_by_its_static_trip_count() {
        for (init, step, cmp, guard, bound, trips) in [
            ("RZ", "0x1", "GE", "!P1", "0x4", 4.0),
            ("0x8", "-0x2", "NE", "P1", "RZ", 4.0),
            ("0x1", "0x1", "LT", "P1", "0x20", 31.0),
        ] {
            let t = sass(&[
                (0x00, "MOV R2, RZ"),
                (0x10, "LDSM.16.M88.4 R12, [R3]"), // outer header
                (0x20, &format!("MOV R4, {init}")),
                (0x30, MMA), // inner header
                (0x40, &format!("IADD3 R4, R4, {step}, RZ")),
                (0x50, &format!("ISETP.{cmp}.AND P1, PT, R4, {bound}, PT")),
                (0x60, &format!("@{guard} BRA 0x30")),
                (0x70, "FFMA R20, R8, R21, -R22"),
                (0x80, "ISETP.GE.AND P0, PT, R2, R7, PT"),
                (0x90, "@!P0 BRA 0x10"),
                (0xa0, "EXIT"),
            ]);
            let m = only(&t, &MainLoopHints::default());
            assert_eq!(m.header, 0x10, "{init} {step}");
            assert_eq!(m.mma, trips, "{init} {step}");
            assert_eq!(m.instructions, 5.0 + 4.0 * trips, "{init} {step}");
            assert_eq!(m.ldmatrix_bytes_per_mma(), 512.0 / trips);
            let inner = &m.inner_loops[..];
            assert_eq!(inner.len(), 1);
            assert_eq!((inner[0].header, inner[0].trips), (0x30, trips));
            assert!(
                matches!(inner[0].source, TripSource::Static { .. }),
                "{:?}",
                inner[0].source
            );
            assert!(m.assumptions().is_empty());
        }
    }

    /// A copy loop whose bound is a register: its trips come from the expected cp.async count;
    /// without the hint, 1 trip is assumed and said.
    #[test]
    fn trip_count_solved_from_hints_or_stated_as_assumed() {
        let t = sass(&[
            (0x00, "MOV R2, RZ"),
            (0x10, "MOV R4, RZ"),                          // outer header
            (0x20, "LDGSTS.E.BYPASS.128 [R13], [R18.64]"), // copy loop header
            (0x30, "LDGSTS.E.BYPASS.128 [R17], [R24.64]"),
            (0x40, "IADD3 R4, R4, 0x80, RZ"),
            (0x50, "ISETP.GE.AND P1, PT, R4, R9, PT"),
            (0x60, "@!P1 BRA 0x20"),
            (0x70, MMA),
            (0x80, MMA),
            (0x90, "ISETP.GE.AND P0, PT, R2, R7, PT"),
            (0xa0, "@!P0 BRA 0x10"),
            (0xb0, "EXIT"),
        ]);
        let hinted = only(
            &t,
            &MainLoopHints {
                mma_per_iteration: Some(2.0),
                cp_async_per_iteration: Some(16.0),
            },
        );
        assert_eq!(hinted.inner_loops[0].trips, 8.0);
        assert!(matches!(
            hinted.inner_loops[0].source,
            TripSource::FromExpected(_)
        ));
        assert_eq!(hinted.instructions, 5.0 + 5.0 * 8.0);
        assert_eq!(hinted.by_class[&InstrClass::CpAsync], 16.0);
        let bare = only(&t, &MainLoopHints::default());
        assert_eq!(bare.inner_loops[0].trips, 1.0);
        assert_eq!(bare.instructions, 10.0);
        assert_eq!(bare.assumptions().len(), 1, "{:?}", bare.assumptions());
        assert!(bare.assumptions()[0].contains("0x20"));
        // an impossible hint (fewer copies than one trip makes) is not forced
        let wrong = only(
            &t,
            &MainLoopHints {
                mma_per_iteration: None,
                cp_async_per_iteration: Some(1.0),
            },
        );
        assert!(matches!(
            wrong.inner_loops[0].source,
            TripSource::Assumed(_)
        ));
    }

    /// The steady-state path: the prefetch of the next tile is taken (it is skipped only on
    /// the last tile), the fast copy rather than the element-wise fallback that loads the
    /// same bytes, and the edge-tile mask is skipped.
    #[test]
    fn steady_state_path_takes_prefetch_fast_copy_and_no_mask() {
        let t = sass(&[
            (0x000, "MOV R2, RZ"),
            (0x010, "ISETP.GE.AND P3, PT, R2, R8, PT"), // header: last tile?
            (0x020, "@P3 BRA 0x0c0"),                   // skip the prefetch
            (0x030, "@P4 BRA 0x060"),                   // misaligned: fallback
            (0x040, "LDGSTS.E.BYPASS.128 [R13], [R18.64]"),
            (0x050, "BRA 0x0c0"),
            (0x060, "LDG.E.U16 R13, [R16.64]"), // fallback: 8 x 2 B = 16 B too
            (0x070, "LDG.E.U16 R14, [R16.64+0x2]"),
            (0x080, "LDG.E.U16 R15, [R16.64+0x4]"),
            (0x090, "LDG.E.U16 R19, [R16.64+0x6]"),
            (0x0a0, "LDG.E.64 R20, [R16.64+0x8]"),
            (0x0b0, "STS.128 [R22], R12"),
            (0x0c0, MMA),
            (0x0d0, "@!P5 BRA 0x110"), // interior tile: no mask
            (0x0e0, "FSEL R8, R8, -INF , P6"),
            (0x0f0, "FSEL R9, R9, -INF , P6"),
            (0x100, "FSEL R10, R10, -INF , P6"),
            (0x110, "FMUL R8, R8, R30"),
            (0x120, "IADD3 R2, R2, 0x1, RZ"),
            (0x130, "ISETP.GE.AND P0, PT, R2, R7, PT"),
            (0x140, "@!P0 BRA 0x010"),
            (0x150, "EXIT"),
        ]);
        let m = only(&t, &MainLoopHints::default());
        assert_eq!(m.static_instructions, 20);
        // 0x10 0x20 0x30 0x40 0x50 | 0xc0 0xd0 | 0x110..0x140
        assert_eq!(m.instructions, 11.0);
        assert_eq!(m.by_opcode.get("LDGSTS.E.BYPASS.128"), Some(&1.0));
        assert_eq!(m.by_opcode.get("LDG.E.U16"), None);
        assert_eq!(m.by_opcode.get("FSEL"), None);
        assert_eq!(m.by_class[&InstrClass::Fp], 1.0);
        // the partial-tile path: the same fast copy, and the mask
        // 0x10 0x20 0x30 0x40 0x50 | 0xc0 0xd0 0xe0 0xf0 0x100 | 0x110..0x140
        assert_eq!(m.partial.instructions, 14.0);
        assert_eq!(m.partial.mma, m.mma);
        assert_eq!(m.partial.by_class[&InstrClass::Fp], 4.0);
    }

    /// Two loops with the same MMA work (a peeled masked first tile, then the rest): the
    /// steady-state one is the one with fewer instructions; loops without MMA never win.
    #[test]
    fn main_loop_is_the_one_with_most_mma_work_then_fewest_instructions() {
        let t = sass(&[
            (0x00, "MOV R2, RZ"),
            (0x10, "IADD3 R5, R5, 0x1, RZ"), // scalar loop, no MMA, long
            (0x20, "IADD3 R6, R6, 0x1, RZ"),
            (0x30, "IADD3 R7, R7, 0x1, RZ"),
            (0x40, "IADD3 R8, R8, 0x1, RZ"),
            (0x50, "@P0 BRA 0x10"),
            (0x60, MMA), // masked loop
            (0x70, "FSEL R8, R8, -INF , P6"),
            (0x80, "FSEL R9, R9, -INF , P6"),
            (0x90, "@P1 BRA 0x60"),
            (0xa0, MMA), // steady loop
            (0xb0, "@P2 BRA 0xa0"),
            (0xc0, "HMMA.1688.F32 R8, R12, R16, R8"), // half an MMA, but loops
            (0xd0, "@P3 BRA 0xc0"),
            (0xe0, "EXIT"),
            (0xf0, "BRA 0xf0"), // trap padding: unreachable, not a loop
        ]);
        let m = only(&t, &MainLoopHints::default());
        assert_eq!((m.header, m.instructions, m.mma), (0xa0, 2.0, 1.0));
        assert_eq!(m.loops_in_function, 4);
        assert_eq!(natural_loop_summary(&t).unwrap().len(), 4);
        // no MMA in any loop: no report
        let none = sass(&[(0x0, MMA), (0x10, "@P0 BRA 0x10"), (0x20, "EXIT")]);
        assert_eq!(
            main_loops(&none, &MainLoopHints::default()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn hgmma_counts_per_warp_and_functions_are_separate() {
        let mut t = sass(&[
            (0x00, "WARPGROUP.ARRIVE"),
            (0x10, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT"),
            (0x20, "HGMMA.64x128x16.F32.BF16 R88, R152, gdesc[UR12], R88"),
            (0x30, "WARPGROUP.DEPBAR.LE gsb0, 0x0"),
            (0x40, "@P0 BRA 0x0"),
            (0x50, "EXIT"),
        ]);
        t.push_str("\t\tFunction : j\n        /*0000*/  HMMA.16816.F32 R4, R8, R12, R4 ;\n        /*0010*/  @P1 BRA 0x0 ;\n        /*0020*/  EXIT ;\n");
        let v = main_loops(&t, &MainLoopHints::default()).unwrap();
        let got: Vec<_> = v.iter().map(|m| (m.function.as_str(), m.mma)).collect();
        assert_eq!(got, vec![("k", 24.0), ("j", 1.0)]);
        assert_eq!(v[0].ldmatrix_bytes_per_mma(), 0.0);
        assert!((v[0].instr_per_mma() - 5.0 / 24.0).abs() < 1e-12);
    }

    /// A cycle entered at two places has no header that dominates it: not a natural loop.
    #[test]
    fn irreducible_cycle_is_not_a_natural_loop() {
        let t = sass(&[
            (0x00, "@P0 BRA 0x30"),
            (0x10, MMA),
            (0x20, "@P1 BRA 0x50"),
            (0x30, MMA),
            (0x40, "@P2 BRA 0x10"),
            (0x50, "EXIT"),
        ]);
        assert_eq!(natural_loop_summary(&t).unwrap(), vec![]);
        assert_eq!(main_loops(&t, &MainLoopHints::default()).unwrap(), vec![]);
        // the plain rule does call it a loop
        assert_eq!(crate::sass_loops(&t).unwrap().len(), 1);
    }

    #[test]
    fn bad_text_is_an_error() {
        assert_eq!(
            main_loops("", &MainLoopHints::default()).unwrap_err(),
            SassError::NoInstructions
        );
        let e = main_loops(
            "/*0000*/ NOP ;\n/*0010*/ @P0 BRA 0x8 ;",
            &MainLoopHints::default(),
        )
        .unwrap_err();
        assert!(matches!(e, SassError::Malformed { line: 2, .. }), "{e:?}");
    }

    proptest::proptest! {
        /// Random SASS-like text: a report or an error, never a panic or a hang; a report's
        /// path never has more MMA than the function.
        #[test]
        fn never_panics(
            lines in proptest::collection::vec(
                (0u64..0x40, proptest::sample::select(vec![
                    "NOP ;", "@P0 BRA 0x10 ;", "BRA 0x40 ;", "@!P1 BRA 0x0 ;", "EXIT ;",
                    "@P2 EXIT ;", "HMMA.16816.F32 R0, R2, R4, R0 ;", "LDGSTS.E.128 [R1], [R2.64] ;",
                    "MOV R4, RZ ;", "IADD3 R4, R4, 0x1, RZ ;", "ISETP.GE.AND P0, PT, R4, 0x4, PT ;",
                    "ISETP.NE.AND P1, PT, R4, RZ, PT ;", "@P0 BRA 0x80 ;", "BRA 0x0 ;",
                ])),
                0..24,
            ),
        ) {
            let t: String = lines
                .iter()
                .map(|(o, l)| format!("/*{:04x}*/ {l}\n", o * 16))
                .collect();
            let hints = MainLoopHints { mma_per_iteration: Some(3.0), cp_async_per_iteration: Some(4.0) };
            if let Ok(v) = main_loops(&t, &hints) {
                for m in v {
                    proptest::prop_assert!(m.mma > 0.0);
                    proptest::prop_assert!(m.instructions >= m.mma);
                    proptest::prop_assert!(m.static_instructions <= lines.len());
                    proptest::prop_assert!(m.by_class.values().sum::<f64>() == m.instructions);
                }
            }
        }
    }
}
