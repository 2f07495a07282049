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
        "HMMA" | "HGMMA" | "IMMA" | "DMMA" | "QMMA" | "OMMA" | "IGMMA" | "QGMMA" => {
            InstrClass::Mma
        }
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
                "MOV" | "LEA" | "LOP3" | "LOP" | "SHF" | "SEL" | "CS2R" | "FLO" | "POPC" | "BREV"
                    | "BMSK" | "LDC" | "VIADD" | "VIMNMX" | "VIMNMX3" | "VIADDMNMX" | "MOVM"
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
    let count = match parts.last() {
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
    /// Weighted instructions per iteration.
    pub instructions: f64,
    /// Weighted m16n8k16-equivalent MMAs per iteration.
    pub mma: f64,
    /// Weighted instructions per iteration by class.
    pub by_class: BTreeMap<InstrClass, f64>,
    /// Weighted instructions per iteration by full mnemonic.
    pub by_opcode: BTreeMap<String, f64>,
    /// Weighted `ldmatrix` bytes per iteration.
    pub ldmatrix_bytes: f64,
    /// The loops nested in this one, outermost first.
    pub inner_loops: Vec<InnerLoop>,
    /// Natural loops of the function (all depths).
    pub loops_in_function: usize,
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
                TripSource::Assumed(why) => Some(format!("loop at {:#x}: {why}", l.header)),
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

    fn mma_of(&self, body: &BTreeSet<usize>) -> f64 {
        self.instructions(body)
            .map(|i| mma_equivalents(&i.opcode))
            .sum()
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

    /// Block weights of loop `l`'s body given trips of its descendants.
    fn weights(&self, l: usize, trips: &BTreeMap<usize, f64>) -> BTreeMap<usize, f64> {
        let desc = self.descendants(l);
        self.loops[l]
            .body
            .iter()
            .map(|&b| {
                let w: f64 = desc
                    .iter()
                    .filter(|&&d| self.loops[d].body.contains(&b))
                    .map(|d| trips.get(d).copied().unwrap_or(1.0))
                    .product();
                (b, w)
            })
            .collect()
    }

    fn weighted(&self, weights: &BTreeMap<usize, f64>, per_ins: impl Fn(&Ins) -> f64) -> f64 {
        weights
            .iter()
            .map(|(&b, &w)| {
                w * self.f.ins[self.blocks[b].first..=self.blocks[b].last]
                    .iter()
                    .map(&per_ins)
                    .sum::<f64>()
            })
            .sum()
    }
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
                *o == reg || register_number(o).map(|n| format!("R{}", n + 1)).as_deref() == Some(reg)
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

/// `reg += step` as `IADD3 R, R, imm, RZ` / `IADD3 R, imm, R, RZ` / `VIADD R, R, imm` /
/// `IMAD.IADD R, R, 0x1, imm`-free forms: returns the step.
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
        "VIADD" => {
            (ops.get(1) == Some(&reg)).then(|| immediate(ops.get(2)?)).flatten()
        }
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
    let defs: Vec<&(usize, &Ins)> = body_ins.iter().filter(|(_, i)| writes(i, counter)).collect();
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
        let (a, b) = if swapped { (bound, seen) } else { (seen, bound) };
        let p = compare(cmp, a, b)?;
        if p == negated {
            break;
        }
    }
    Some((
        trips as f64,
        TripSource::Static {
            init,
            step,
            bound,
        },
    ))
}

// ---- the main loop ----

/// Solves the unknown trips of `unknown` loops (inside `main`) so that the weighted count of
/// `per_ins` equals `expected`, all unknown loops getting the same trips. Returns the trips
/// when the solution is a positive number.
fn solve_trips(
    cfg: &Cfg<'_>,
    main: usize,
    trips: &BTreeMap<usize, f64>,
    unknown: &[usize],
    expected: f64,
    per_ins: impl Fn(&Ins) -> f64 + Copy,
) -> Option<f64> {
    // weighted count is affine in the common trip t when the unknown loops are not nested in
    // each other: f(t) = a + b·t; evaluate at t = 0 and t = 1
    let at = |t: f64| {
        let mut tr = trips.clone();
        for &u in unknown {
            tr.insert(u, t);
        }
        cfg.weighted(&cfg.weights(main, &tr), per_ins)
    };
    let (a, b) = (at(0.0), at(1.0) - at(0.0));
    if b <= 0.0 {
        return None;
    }
    let t = (expected - a) / b;
    (t >= 1.0 - 1e-9 && t.is_finite()).then_some(t)
}

/// The main loop of every function of SASS `text` that has a loop with MMA work: the natural
/// loop whose weighted MMA work per iteration is largest; on a tie (a peeled first key tile
/// with masking, or separate edge- and interior-tile loops) the one with fewer weighted
/// instructions, i.e. the steady-state loop.
///
/// Inner loops are weighted by their trips: read from the code where a constant-bound
/// counter shows them ([`TripSource::Static`]), else solved from `hints` (loops with MMA from
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
    let work = |l: usize| {
        let w = cfg.weights(l, &trips);
        (
            cfg.weighted(&w, |i| mma_equivalents(&i.opcode)),
            cfg.weighted(&w, |_| 1.0),
        )
    };
    let main = (0..cfg.loops.len())
        .map(|l| (l, work(l)))
        .filter(|(_, (mma, _))| *mma > 0.0)
        .min_by(|(_, (ma, ia)), (_, (mb, ib))| {
            mb.total_cmp(ma).then(ia.total_cmp(ib))
        })?
        .0;
    let desc = cfg.descendants(main);
    let unknown: Vec<usize> = desc.iter().copied().filter(|d| !trips.contains_key(d)).collect();
    let mma_loops: Vec<usize> = unknown
        .iter()
        .copied()
        .filter(|&d| cfg.mma_of(&cfg.loops[d].body) > 0.0)
        .collect();
    if let (Some(expected), false) = (hints.mma_per_iteration, mma_loops.is_empty()) {
        if let Some(t) = solve_trips(cfg, main, &trips, &mma_loops, expected, |i| {
            mma_equivalents(&i.opcode)
        }) {
            for &d in &mma_loops {
                trips.insert(d, t);
                sources.insert(
                    d,
                    TripSource::FromExpected(format!(
                        "{t:.3} trips give the expected {expected} MMA per iteration"
                    )),
                );
            }
        }
    }
    let is_copy = |i: &Ins| f64::from(u8::from(base(&i.opcode) == "LDGSTS"));
    let copy_loops: Vec<usize> = desc
        .iter()
        .copied()
        .filter(|d| !trips.contains_key(d))
        .filter(|&d| cfg.weighted(&cfg.weights(d, &BTreeMap::new()), is_copy) > 0.0)
        .collect();
    if let (Some(expected), false) = (hints.cp_async_per_iteration, copy_loops.is_empty()) {
        if let Some(t) = solve_trips(cfg, main, &trips, &copy_loops, expected, is_copy) {
            for &d in &copy_loops {
                trips.insert(d, t);
                sources.insert(
                    d,
                    TripSource::FromExpected(format!(
                        "{t:.3} trips give the expected {expected} LDGSTS per iteration{}",
                        if copy_loops.len() > 1 {
                            " (the same for each of the copy loops)"
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
                "trip count neither constant in the code nor solvable from the hints".to_owned(),
            )
        });
    }
    let weights = cfg.weights(main, &trips);
    let mut by_class = BTreeMap::new();
    let mut by_opcode = BTreeMap::new();
    for (&b, &w) in &weights {
        for i in &cfg.f.ins[cfg.blocks[b].first..=cfg.blocks[b].last] {
            *by_class.entry(classify(&i.opcode)).or_insert(0.0) += w;
            *by_opcode.entry(i.opcode.clone()).or_insert(0.0) += w;
        }
    }
    let lp = &cfg.loops[main];
    let mut inner: Vec<InnerLoop> = desc
        .iter()
        .map(|&d| InnerLoop {
            header: cfg.f.ins[cfg.blocks[cfg.loops[d].header].first].offset,
            instructions: cfg.instructions(&cfg.loops[d].body).count(),
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
        instructions: cfg.weighted(&weights, |_| 1.0),
        mma: cfg.weighted(&weights, |i| mma_equivalents(&i.opcode)),
        by_class,
        by_opcode,
        ldmatrix_bytes: cfg.weighted(&weights, |i| ldmatrix_bytes(&i.opcode) as f64),
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
