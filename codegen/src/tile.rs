//! Tile configurations (*how* a kernel runs), their resource estimates per architecture
//! and the default search space. No correctness requirement lives here: any config that
//! passes [`TileConfig::valid`] computes the same result.
//!
//! ```
//! use attnforge_codegen::spec::*;
//! use attnforge_codegen::tile::{default_search_space, Arch};
//! let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
//! let space = default_search_space(&spec, Arch::Sm80);
//! assert!(space.iter().all(|t| t.valid(&spec, Arch::Sm80).is_ok()));
//! ```

use serde::{Deserialize, Serialize};

use crate::check::{Errors, SpecError};
use crate::spec::{DType, HeadDim, KernelSpec, Layout, ScoreMod};

/// Target architecture: the one `Arch` of the workspace (tiles, NVRTC, ptxas, the tuner).
/// Hopper's arch-specific features (`sm_90a`: `wgmma`, `setmaxnreg`) are a compile-target
/// flag on top of [`Arch::Sm90`] (the runtime's `CompileOptions::arch_specific`), not an
/// architecture of their own: tiles and resource limits are those of `sm_90`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    /// Ampere (A100).
    #[serde(rename = "sm_80")]
    Sm80,
    /// Hopper (H100/H200).
    #[serde(rename = "sm_90")]
    Sm90,
}

impl Arch {
    /// Every architecture, in order.
    pub const ALL: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

    /// Parses `sm_80`, `sm_90` (also without the `sm_` prefix).
    pub fn parse(s: &str) -> Option<Arch> {
        match s.trim().trim_start_matches("sm_") {
            "80" => Some(Arch::Sm80),
            "90" => Some(Arch::Sm90),
            _ => None,
        }
    }
    /// Compute capability `(major, minor)`.
    pub fn compute_capability(self) -> (i32, i32) {
        match self {
            Arch::Sm80 => (8, 0),
            Arch::Sm90 => (9, 0),
        }
    }
    /// The newest architecture a device of compute capability `major.x` runs: `sm_90` from
    /// 9.0 on, else `sm_80`.
    pub fn for_capability(major: i32) -> Arch {
        if major >= 9 {
            Arch::Sm90
        } else {
            Arch::Sm80
        }
    }
    /// Maximum dynamic shared memory per block with the opt-in attribute
    /// (`cudaFuncAttributeMaxDynamicSharedMemorySize`): 163 KiB on sm_80, 227 KiB on sm_90
    /// (CUDA programming guide, compute capability table).
    pub fn max_dynamic_smem(self) -> usize {
        match self {
            Arch::Sm80 => 163 * 1024,
            Arch::Sm90 => 227 * 1024,
        }
    }
    /// Shared memory a block may use without the opt-in attribute (48 KiB, all arches).
    pub fn smem_without_opt_in(self) -> usize {
        48 * 1024
    }
    /// Registers per SM (64 K 32-bit registers on sm_80 and sm_90).
    pub fn registers_per_sm(self) -> usize {
        65536
    }
    /// `compute_XX` name for NVRTC.
    pub fn compute_name(self) -> &'static str {
        match self {
            Arch::Sm80 => "compute_80",
            Arch::Sm90 => "compute_90",
        }
    }
    /// `sm_XX` name for NVRTC, ptxas and reports.
    pub fn sm_name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sm_name())
    }
}

/// Tile shape of the forward kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileConfig {
    /// Query rows per thread block.
    pub block_m: usize,
    /// Key columns per tile of the main loop.
    pub block_n: usize,
    /// Warps per block (each warp owns `block_m / warps` query rows).
    pub warps: usize,
    /// Pipeline stages of K/V tiles: `cp.async` buffers of the tensor-core mainloop
    /// (1..=3); the FMA mainloop supports 1.
    pub stages: usize,
    /// Hopper warpgroup MMA ([`Mainloop::Wgmma`], compiled for `sm_90a`): one warpgroup per
    /// 64 query rows. Absent from serialized configs when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wgmma: bool,
    /// Backward tuning only: the candidate stands for a backward tile with the atomic dQ
    /// (`backward::BackwardTile::atomic_dq`); the forward never sets it. Absent from
    /// serialized configs when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub atomic_dq: bool,
}

/// How S = Q K^T and O += P V are computed (selected by [`Mainloop::select`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mainloop {
    /// Scalar FMA, f32 accumulation: lanes split key columns for S and output columns for O.
    /// Tiles are staged in shared memory as f32. Single-stage. `S = dot(q, k) * scale` (the
    /// naive path's summation order, scale after the dot product) and the online softmax in
    /// score units, so the error at scores of ~1e3 tracks a naive f32 matmul.
    Fma,
    /// Tensor cores (sm_80+): `mma.sync.m16n8k16` with f32 accumulation for both products,
    /// fragments from XOR-swizzled shared memory with `ldmatrix`, K/V tiles staged by
    /// `cp.async` in `stages` buffers, P kept in registers (the C fragment of S is the A
    /// fragment of P). Each warp owns `block_m / warps` = 16 or 32 query rows (one or two
    /// 16-row slabs: with two, every `ldmatrix`'d K/V fragment feeds two `mma`).
    TensorCore,
    /// Hopper warpgroup MMA (`sm_90a`, [`TileConfig::wgmma`]): each warpgroup (4 warps) owns
    /// 64 query rows; `wgmma.mma_async` m64nNk16 computes S = Q K^T from shared memory (Q
    /// and K through matrix descriptors) and O += P V with P from registers, V MN-major from
    /// shared memory. Q, K, V staged by `cp.async` in wgmma's 128-byte-swizzled layout. The
    /// mask, score and schedule policies are the tensor-core mainloop's; one scoring branch
    /// (not LM-Infinite).
    Wgmma,
}

impl Mainloop {
    /// The mainloop of a spec and tile: tensor cores for f16/bf16 when each warp owns one or
    /// two 16-row slabs (`block_m == 16 * warps` or `32 * warps`), FMA otherwise (f32, or
    /// other shapes).
    pub fn select(spec: &KernelSpec, t: &TileConfig) -> Self {
        if t.wgmma {
            return Mainloop::Wgmma;
        }
        if spec.dtype != DType::F32
            && t.warps > 0
            && (t.block_m == 16 * t.warps || t.block_m == 32 * t.warps)
        {
            Mainloop::TensorCore
        } else {
            Mainloop::Fma
        }
    }
}

/// Key columns per thread of the statistics sweep (`af_key_mass_stats::CB`, cuda/af_fwd.cuh).
pub const STATS_COLS_PER_THREAD: usize = 4;

/// Shared-memory layout of a kernel, in elements of `elem_bytes` bytes (f32 staging for the
/// FMA mainloop, the 16-bit input type for the tensor-core mainloop). The emitter computes
/// the offsets from this struct, so estimate and kernel cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmemLayout {
    /// The mainloop this layout serves.
    pub mainloop: Mainloop,
    /// Bytes per element (4 for FMA, 2 for tensor cores).
    pub elem_bytes: usize,
    /// K/V stage buffers (1 for FMA).
    pub stages: usize,
    /// Row stride of K tiles: FMA `D + 1` (the pad makes lanes reading different key rows
    /// at the same column hit distinct banks); tensor cores `D` (16-byte chunks are
    /// XOR-swizzled by row instead, `af_swz`, so `ldmatrix` rows hit distinct banks).
    pub k_stride: usize,
    /// Elements of the Q tile (`block_m * D`, doubled for LM-Infinite's second rotation).
    pub q: usize,
    /// Elements of all K stages (`stages * block_n * k_stride`, doubled for LM-Infinite
    /// raw + rotated).
    pub k: usize,
    /// Elements of all V stages (`stages * block_n * D`).
    pub v: usize,
    /// Elements of the probability tile (`block_m * block_n` for FMA; 0 for tensor cores,
    /// which keep P in registers).
    pub p: usize,
    /// Bytes of mbarriers after the tiles (a warp-specialized wgmma tile: Q full, then full
    /// and empty per stage, 8 bytes each).
    #[serde(default)]
    pub barrier_bytes: usize,
}

impl SmemLayout {
    /// Layout for a spec and tile.
    pub fn new(spec: &KernelSpec, t: &TileConfig) -> Self {
        let d = spec.head_dim.get();
        let two = spec.mask.scoring_branches();
        match Mainloop::select(spec, t) {
            Mainloop::Fma => {
                let k_stride = d + 1;
                SmemLayout {
                    mainloop: Mainloop::Fma,
                    elem_bytes: 4,
                    stages: 1,
                    k_stride,
                    q: two * t.block_m * d,
                    k: two * t.block_n * k_stride,
                    v: t.block_n * d,
                    p: t.block_m * t.block_n,
                    barrier_bytes: 0,
                }
            }
            m @ (Mainloop::TensorCore | Mainloop::Wgmma) => {
                let st = t.stages.max(1);
                SmemLayout {
                    mainloop: m,
                    elem_bytes: 2,
                    stages: st,
                    k_stride: d,
                    q: two * t.block_m * d,
                    k: two * st * t.block_n * d,
                    v: st * t.block_n * d,
                    p: 0,
                    barrier_bytes: if t.warp_specialized() {
                        8 * (1 + 2 * st)
                    } else {
                        0
                    },
                }
            }
        }
    }
    /// Total bytes of dynamic shared memory.
    pub fn bytes(&self) -> usize {
        self.elem_bytes * (self.q + self.k + self.v + self.p) + self.barrier_bytes
    }
}

/// Registers needed beyond the arrays: 64-bit base pointers and strides of q/k/v/o
/// (2 registers each), block/row/position indices, loop counters and the temporaries of
/// the load and epilogue loops. An estimate, not a measurement: ptxas under
/// `__launch_bounds__(threads, 1)` spends whatever the limit allows (a config estimated at
/// 105 used 145 on sm_80 and 162 on sm_90), so only spills and stack frames are evidence.
const REG_OVERHEAD: usize = 48;

/// [`REG_OVERHEAD`] of the tensor-core mainloop: fewer temporaries (no cached K column, no
/// per-row loops; the fragment loads are 32-bit shared addresses). Checked by the NVRTC
/// evidence test: every default-space config compiles without spills or stack frame.
const TC_REG_OVERHEAD: usize = 40;

/// Registers per thread of a consumer warpgroup of a warp-specialized warpgroup-MMA tile with
/// two consumers (`af_setmaxnreg_inc<232>` in `cuda/af_fwd_wg.cuh`).
const WGMMA_CONSUMER_REGISTERS: usize = 232;

/// Fraction (in percent) of the per-thread register limit the estimate may reach. The
/// estimate counts live arrays only; ptxas needs slack for the temporaries of the unrolled
/// FMA chains and the per-element mask/score code. With 80% every config of the default
/// space of every catalog variant x dtype x head dim compiles without spills or stack frame
/// on sm_80 and sm_90 (ptxas 12.9; `cargo test -p attnforge-codegen --test nvrtc_space`).
const REG_BUDGET_PERCENT: usize = 80;

impl TileConfig {
    /// Construct.
    pub fn new(block_m: usize, block_n: usize, warps: usize, stages: usize) -> Self {
        TileConfig {
            block_m,
            block_n,
            warps,
            stages,
            wgmma: false,
            atomic_dq: false,
        }
    }

    /// A Hopper warpgroup-MMA tile ([`Mainloop::Wgmma`]): `block_m / 64` warpgroups, each
    /// staging K and V with `cp.async` and computing.
    pub fn wgmma(block_m: usize, block_n: usize, stages: usize) -> Self {
        TileConfig {
            block_m,
            block_n,
            warps: block_m / 16,
            stages,
            wgmma: true,
            atomic_dq: false,
        }
    }

    /// A warp-specialized warpgroup-MMA tile: `block_m / 64` consumer warpgroups and one
    /// producer warpgroup that stages Q, K and V (`warps = block_m / 16 + 4`).
    pub fn wgmma_specialized(block_m: usize, block_n: usize, stages: usize) -> Self {
        TileConfig {
            warps: block_m / 16 + 4,
            ..TileConfig::wgmma(block_m, block_n, stages)
        }
    }

    /// Warps that compute (own query rows): all of them but a producer warpgroup's.
    pub fn compute_warps(&self) -> usize {
        if self.warp_specialized() {
            self.block_m / 16
        } else {
            self.warps
        }
    }

    /// Whether a warpgroup-MMA tile has a producer warpgroup.
    pub fn warp_specialized(&self) -> bool {
        self.wgmma && self.warps == self.block_m / 16 + 4
    }

    /// `m<bm>n<bn>w<warps>s<stages>`, with `wg` appended for a warpgroup-MMA tile and `a` for
    /// a backward candidate with the atomic dQ.
    pub fn suffix(&self) -> String {
        format!(
            "m{}n{}w{}s{}{}{}",
            self.block_m,
            self.block_n,
            self.warps,
            self.stages,
            if self.wgmma { "wg" } else { "" },
            if self.atomic_dq { "a" } else { "" }
        )
    }

    /// Parses [`TileConfig::suffix`]'s form (`m64n64w4s2`, `m128n128w8s2wg`, `m64n64w4s1a`).
    pub fn parse_suffix(s: &str) -> Option<Self> {
        let (s, atomic_dq) = match s.strip_suffix('a') {
            Some(b) => (b, true),
            None => (s, false),
        };
        let (body, wgmma) = match s.strip_suffix("wg") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let rest = body.strip_prefix('m')?;
        let (m, rest) = rest.split_once('n')?;
        let (n, rest) = rest.split_once('w')?;
        let (w, st) = rest.split_once('s')?;
        Some(TileConfig {
            block_m: m.parse().ok()?,
            block_n: n.parse().ok()?,
            warps: w.parse().ok()?,
            stages: st.parse().ok()?,
            wgmma,
            atomic_dq,
        })
    }

    /// Threads per block.
    pub fn threads(&self) -> usize {
        self.warps * 32
    }

    /// Dynamic shared memory in bytes for `spec`.
    pub fn smem_bytes(&self, spec: &KernelSpec) -> usize {
        SmemLayout::new(spec, self).bytes()
    }

    /// Estimated registers per thread: the per-thread arrays (output accumulators
    /// `rows * D/32`, scores `rows * block_n/32` (twice for LM-Infinite and for user score
    /// functions), running max and sum `2 * rows`, the cached K column `block_n/32`) plus
    /// `REG_OVERHEAD` (48; 40 on the tensor-core path).
    pub fn estimated_registers(&self, spec: &KernelSpec) -> usize {
        let rows = (self.block_m / self.warps.max(1)).max(1);
        let dpl = spec.head_dim.get() / 32;
        let cpl = (self.block_n / 32).max(1);
        let branches = spec.mask.scoring_branches();
        // A user score function runs per score element with its own temporaries (64-bit
        // positions, array loads) live across the unrolled row loop: count the score array
        // twice. Calibration (ptxas 12.9): the catalog's `headbias` score at 16 rows x 4
        // columns per lane (estimate 180 without this term) spilled 324 bytes on sm_80,
        // while built-in softcap at the same shape stayed spill-free (195 registers).
        let user_score = if matches!(spec.score, ScoreMod::User(_)) {
            rows * cpl
        } else {
            0
        };
        if Mainloop::select(spec, self) != Mainloop::Fma {
            // Per thread: O accumulators D/8 n8-tiles x 4 floats, S fragments block_n/8 x 4
            // (per branch, plus the user-score term), m and l for its 2 rows, A/B fragments
            // (4 + 4 + 4 registers) and the pipeline cursors. A warpgroup-MMA warp owns one
            // 16-row slab (a producer warp none).
            let slabs = if self.wgmma {
                1
            } else {
                self.block_m / (16 * self.warps)
            };
            let s = slabs * spec.head_dim.get() / 2;
            let sc = slabs * self.block_n / 2;
            let user = if matches!(spec.score, ScoreMod::User(_)) {
                sc
            } else {
                0
            };
            return s + branches * sc + user + 4 + 12 + TC_REG_OVERHEAD;
        }
        rows * dpl + branches * rows * cpl + user_score + 2 * rows + cpl + REG_OVERHEAD
    }

    /// Per-thread register limit under `__launch_bounds__(threads, 1)`: the register file
    /// divided by the threads, capped at 255 (ISA limit).
    pub fn register_limit(&self, arch: Arch) -> usize {
        if self.warp_specialized() && self.block_m == 128 {
            // the producer warpgroup gives its registers to the two consumer warpgroups
            // (setmaxnreg: 40 for the producer, 232 for the consumers, 128 x (40 + 2 x 232)
            // <= 64 K): the compute code runs under 232
            return WGMMA_CONSUMER_REGISTERS;
        }
        (arch.registers_per_sm() / self.threads().max(1)).min(255)
    }

    /// Check the config against the spec and the architecture. Returns every error.
    pub fn valid(&self, spec: &KernelSpec, arch: Arch) -> Result<(), Vec<SpecError>> {
        if self.atomic_dq {
            // only the backward tuner's candidates carry it (BackwardTile::atomic_dq)
            return Err(vec![SpecError::new(
                "tile.atomic_dq",
                "atomic_dq is a backward option; the forward kernel has no dQ",
                "remove atomic_dq from the forward tile",
            )]);
        }
        self.valid_shape(spec, arch)
    }

    /// [`TileConfig::valid`] of a forward tile: the template's and the architecture's limits.
    fn valid_shape(&self, spec: &KernelSpec, arch: Arch) -> Result<(), Vec<SpecError>> {
        let mut e = Errors::default();
        // 16..128: a block below 16 rows cannot feed the m16n8k16 tensor-core mainloop;
        // above 128 rows the accumulators of one warp no longer fit (rows x D/32 registers).
        if !(self.block_m.is_power_of_two() && (16..=128).contains(&self.block_m)) {
            e.push(
                "tile.block_m",
                format!(
                    "block_m must be a power of two in 16..=128: got {}",
                    self.block_m
                ),
                "use 16, 32, 64 or 128",
            );
        }
        // Lanes split the key columns of a tile: block_n must be a multiple of the warp width.
        if !(self.block_n.is_power_of_two() && (32..=128).contains(&self.block_n)) {
            e.push(
                "tile.block_n",
                format!(
                    "block_n must be a power of two in 32..=128: got {}",
                    self.block_n
                ),
                "use 32, 64 or 128",
            );
        }
        if self.wgmma {
            // checked by wgmma_errors: block_m / 16 warps, plus 4 with a producer warpgroup
        } else if !(self.warps.is_power_of_two() && (1..=8).contains(&self.warps)) {
            e.push(
                "tile.warps",
                format!("warps must be 1, 2, 4 or 8: got {}", self.warps),
                "use 4 (128 threads) unless tuning says otherwise",
            );
        } else if self.block_m % self.warps != 0 || self.warps > self.block_m {
            e.push(
                "tile.warps",
                format!(
                    "each warp owns block_m / warps rows: {} rows do not split over {} warps",
                    self.block_m, self.warps
                ),
                "use a warp count that divides block_m",
            );
        }
        match Mainloop::select(spec, self) {
            Mainloop::TensorCore => {
                // The allowed-element bits of a thread's share of the score tile are one 64-bit
                // word: (block_m / warps / 16) slabs x block_n / 8 n8 tiles x 4 elements.
                let per_thread = self.block_m / (16 * self.warps) * self.block_n / 2;
                if per_thread > 64 {
                    e.push(
                        "tile.block_n",
                        format!(
                            "with two 16-row slabs per warp (block_m = 32 * warps) each thread of the tensor-core mainloop owns {per_thread} score elements; at most 64 are supported"
                        ),
                        "use block_n <= 64, or block_m = 16 * warps",
                    );
                }
                if !(1..=3).contains(&self.stages) {
                    e.push(
                        "tile.stages",
                        format!(
                            "the tensor-core mainloop pipelines 1..=3 K/V stages: got stages = {}",
                            self.stages
                        ),
                        "use stages = 2 (double buffering) or 3",
                    );
                }
            }
            Mainloop::Wgmma => self.wgmma_errors(spec, arch, &mut e),
            Mainloop::Fma => {
                // The allowed-element bits of a thread's share of the score tile are one 64-bit word.
                let per_thread = (self.block_m / self.warps.max(1)) * (self.block_n / 32);
                if self.warps > 0 && per_thread > 64 {
                    e.push(
                        "tile.warps",
                        format!(
                            "each thread of the FMA mainloop owns (block_m / warps) x (block_n / 32) = {per_thread} score elements; at most 64 are supported"
                        ),
                        "use more warps, a smaller block_m or a smaller block_n",
                    );
                }
                if self.stages != 1 {
                    e.push(
                        "tile.stages",
                        format!(
                            "the FMA mainloop (f32, or warps not owning 16-row slabs) is single-stage: got stages = {}",
                            self.stages
                        ),
                        "use stages = 1, or for f16/bf16 block_m = 16 * warps or 32 * warps (tensor cores, stages 1..=3)",
                    );
                }
            }
        }
        if spec.mask.uses_block_lists() {
            if self.block_m > 0 && spec.sparse_block.q % self.block_m.max(1) != 0 {
                e.push(
                    "tile.block_m",
                    format!(
                        "block_m ({}) must divide the block-list block size sparse_block.q ({})",
                        self.block_m, spec.sparse_block.q
                    ),
                    "pick block_m <= sparse_block.q, a power of two",
                );
            }
            if self.block_n > 0 && spec.sparse_block.k % self.block_n.max(1) != 0 {
                e.push(
                    "tile.block_n",
                    format!(
                        "block_n ({}) must divide the block-list block size sparse_block.k ({})",
                        self.block_n, spec.sparse_block.k
                    ),
                    "pick block_n <= sparse_block.k, a power of two",
                );
            }
        }
        if e.0.is_empty() {
            self.resource_errors(spec, arch, &mut e);
        }
        e.finish()
    }

    /// Shared memory of the statistics sweep (`af_key_mass_stats`, cuda/af_fwd.cuh): Q and a
    /// K tile as the element type per scoring branch (LM-Infinite has two: near and far),
    /// then one float per (row group, key column), i.e. `threads * 4` floats (4 key columns
    /// per thread).
    pub fn stats_sweep_smem_bytes(&self, spec: &KernelSpec) -> usize {
        let branches = spec.mask.scoring_branches();
        branches * (self.block_m + self.block_n) * spec.head_dim.get() * spec.dtype.bytes()
            + self.threads() * STATS_COLS_PER_THREAD * 4
    }

    /// A spec with statistics: the sweep reuses the main loop's shared memory and splits the
    /// tile into blocks of 4 key columns by block_m * block_n / (threads * 4) rows.
    fn stats_errors(&self, spec: &KernelSpec, e: &mut Errors) {
        if spec.stats.is_none() || self.wgmma {
            return;
        }
        let (need, have) = (self.stats_sweep_smem_bytes(spec), self.smem_bytes(spec));
        if need > have {
            e.push(
                "tile",
                format!("the statistics sweep needs {need} bytes of shared memory, the main loop has {have}"),
                "use more pipeline stages or a smaller block_m (default_tile picks a tile that fits)",
            );
        }
        if self.block_m * self.block_n < self.threads() * STATS_COLS_PER_THREAD {
            e.push(
                "tile.warps",
                "the statistics sweep gives each thread at least one row of 4 key columns",
                "use fewer warps for this block_m x block_n",
            );
        }
    }

    /// What a warpgroup-MMA tile needs beyond the common rules.
    fn wgmma_errors(&self, spec: &KernelSpec, arch: Arch, e: &mut Errors) {
        if spec.stats.is_some() {
            // the producer warpgroup leaves early: the statistics sweep's block barriers
            // are only built into the mma.sync and FMA main loops
            e.push(
                "tile.wgmma",
                "statistics outputs are produced by the mma.sync and FMA main loops, not the wgmma one",
                "use a tile without wgmma for a spec with `stats`",
            );
        }
        if arch != Arch::Sm90 {
            e.push(
                "tile.wgmma",
                format!("warpgroup MMA is Hopper's (sm_90a): not available on {arch}"),
                "target sm_90, or use a tile without wgmma",
            );
        }
        if spec.dtype == DType::F32 {
            e.push(
                "tile.wgmma",
                "warpgroup MMA multiplies f16/bf16 inputs: the spec's dtype is f32",
                "use dtype f16 or bf16, or a tile without wgmma (FMA mainloop)",
            );
        }
        if spec.mask.lm_infinite_scoring() {
            e.push(
                "tile.wgmma",
                "LM-Infinite scores two rotations per tile; the wgmma mainloop has one scoring branch",
                "use a tile without wgmma for LM-Infinite",
            );
        }
        if !(self.block_m == 64 || self.block_m == 128)
            || !(self.warps == self.block_m / 16 || self.warps == self.block_m / 16 + 4)
        {
            e.push(
                "tile.block_m",
                format!(
                    "a wgmma tile has one warpgroup (4 warps) per 64 query rows, plus 4 warps with a producer warpgroup: got block_m = {}, warps = {}",
                    self.block_m, self.warps
                ),
                "use block_m = 64 (4 or 8 warps) or 128 (8 or 12 warps)",
            );
        }
        if self.warp_specialized() && self.stages < 2 {
            e.push(
                "tile.stages",
                "a producer warpgroup hands stages to the consumers: it needs 2 or 3 stages",
                "use stages = 2 or 3",
            );
        }
        if !(self.block_n == 64 || self.block_n == 128) {
            e.push(
                "tile.block_n",
                format!(
                    "a wgmma tile's key tile is the instruction's N: 64 or 128, got {}",
                    self.block_n
                ),
                "use block_n = 64 or 128",
            );
        }
        if !(1..=3).contains(&self.stages) {
            e.push(
                "tile.stages",
                format!(
                    "the wgmma mainloop pipelines 1..=3 K/V stages: got stages = {}",
                    self.stages
                ),
                "use stages = 2 or 3",
            );
        }
    }

    /// Shared memory and the register estimate against `arch`'s limits (for a tile whose
    /// shape is otherwise valid).
    fn resource_errors(&self, spec: &KernelSpec, arch: Arch, e: &mut Errors) {
        self.stats_errors(spec, e);
        let smem = self.smem_bytes(spec);
        if smem > arch.max_dynamic_smem() {
            e.push(
                "tile",
                format!(
                    "needs {smem} bytes of shared memory, over the {} limit of {} bytes",
                    arch.sm_name(),
                    arch.max_dynamic_smem()
                ),
                "reduce block_m or block_n",
            );
        }
        let regs = self.estimated_registers(spec);
        let budget = self.register_limit(arch) * REG_BUDGET_PERCENT / 100;
        if regs > budget {
            e.push("tile", format!("estimated {regs} registers per thread, over the spill-free budget of {budget} for {} threads", self.threads()), "use more warps or a smaller block_m / block_n");
        }
    }
}

/// The Hopper warpgroup-MMA tiles (`sm_90a`) the tuner adds to sm_90's space with `--arch
/// sm_90a`: block_m 64 / 128 x block_n 64 / 128, 2 or 3 stages, with and without a producer
/// warpgroup, each valid for `spec` on sm_90 (none for f32, LM-Infinite or d = 256).
pub fn wgmma_search_space(spec: &KernelSpec) -> Vec<TileConfig> {
    let mut v = Vec::new();
    for bm in [64, 128] {
        for bn in [64, 128] {
            for st in [2, 3] {
                v.push(TileConfig::wgmma(bm, bn, st));
                v.push(TileConfig::wgmma_specialized(bm, bn, st));
            }
        }
    }
    v.retain(|t| t.valid(spec, Arch::Sm90).is_ok());
    v
}

/// The default search space: the configs that can win, every one of them compiled by
/// `cargo test -p attnforge-codegen --test nvrtc_space` for every catalog variant x dtype x
/// head dim on sm_80 and sm_90 with zero spills and zero stack frame. Ordered by
/// (block_m, block_n, warps, stages), always containing [`default_tile`].
///
/// - f16/bf16 (tensor cores, `warps = block_m / 16`): block_m in {64, 128} (4 or 8 warps:
///   fewer cannot hide the latency of the two products), block_n in {32, 64, 128}, stages
///   in {2, 3} (double and triple buffering); a single stage only for a shape where no
///   pipelined config fits the shared memory (head dim 256); and 32 query rows per warp
///   (two 16-row slabs: each K/V fragment feeds two MMAs, FA2's shape): 128 x {32, 64}
///   with 4 warps, 2 stages, where the register estimate allows it. Head dim 256 (not
///   LM-Infinite): 128 x 32 with 8 warps and 2 stages only (the others spill with some masks).
/// - f32 (FMA mainloop, one stage): block_m in {64, 128}, block_n in {32, 64}, warps in
///   {4, 8}.
///
/// Smaller tiles stay available through [`exhaustive_search_space`] and explicit lists
/// (`kernel! { .. tune: { .. } }`); the tuner prunes any that spill with the ptxas report.
pub fn default_search_space(spec: &KernelSpec, arch: Arch) -> Vec<TileConfig> {
    let mut v = Vec::new();
    let ok = |t: &TileConfig| t.valid(spec, arch).is_ok();
    if spec.dtype == DType::F32 {
        for bm in [64, 128] {
            for bn in [32, 64] {
                for w in [4, 8] {
                    v.push(TileConfig::new(bm, bn, w, 1));
                }
            }
        }
        v.retain(ok);
    } else {
        for bm in [64, 128] {
            for bn in [32, 64, 128] {
                let piped: Vec<TileConfig> = (2..=3)
                    .map(|st| TileConfig::new(bm, bn, bm / 16, st))
                    .filter(ok)
                    .collect();
                if piped.is_empty() {
                    v.extend(Some(TileConfig::new(bm, bn, bm / 16, 1)).filter(ok));
                }
                v.extend(piped);
            }
        }
        for bn in [32, 64] {
            v.extend(Some(TileConfig::new(128, bn, 4, 2)).filter(ok));
        }
        if spec.head_dim == HeadDim::D256 && !spec.mask.lm_infinite_scoring() {
            // at d = 256 the O accumulators take 128 registers per thread: 4-warp blocks and
            // triple buffering reach ptxas's 255 and spill with some masks (ptxas 12.9, the
            // element masks of global_local, lambda_mask, dilated_causal and the catalog's
            // `dilated` predicate); 128 x 32 with 8 warps and 2 stages compiles spill-free
            // for every catalog mask on sm_80 and sm_90
            v.retain(|t| t.warps == 8 && t.stages == 2);
        }
    }
    if let Some(t) = default_tile(spec, arch) {
        if !v.contains(&t) {
            v.push(t);
        }
    }
    v.sort_by_key(|t| (t.block_m, t.block_n, t.warps, t.stages));
    v
}

/// Every valid config of the full grid, ordered by (block_m, block_n, warps, stages), for
/// exploration beyond [`default_search_space`]. f32 (FMA mainloop): block_m in
/// {16, 32, 64, 128}, block_n in {32, 64, 128}, warps in {1, 2, 4, 8}, stages = 1.
/// f16/bf16 (tensor cores): block_m in {16, 32, 64, 128} with warps = block_m / 16 or
/// block_m / 32 (one or two 16-row slabs per warp), block_n in {32, 64, 128}, stages 1..=3. `valid()` keeps the register estimate inside
/// the spill-free budget, but only the default space is compiled in CI: tune this space
/// with the ptxas pruning on (the tuner rejects spilling candidates with the reason).
pub fn exhaustive_search_space(spec: &KernelSpec, arch: Arch) -> Vec<TileConfig> {
    let mut v = Vec::new();
    for bm in [16, 32, 64, 128] {
        for bn in [32, 64, 128] {
            if spec.dtype == DType::F32 {
                for w in [1, 2, 4, 8] {
                    v.push(TileConfig::new(bm, bn, w, 1));
                }
            } else {
                for st in 1..=3 {
                    v.push(TileConfig::new(bm, bn, bm / 16, st));
                    if bm >= 32 {
                        v.push(TileConfig::new(bm, bn, bm / 32, st));
                    }
                }
            }
        }
    }
    v.retain(|t| t.valid(spec, arch).is_ok());
    v
}

/// The decode kernels' 128-key tile: 64 rows, 4 warps, 2 stages (FA2's split-KV tile at
/// d 128). A decode block holds one GQA group's few tokens, so most of its 64 rows are
/// padding and the per-tile costs (online-softmax rescale, row-max shuffles, the page
/// lookup and copy bookkeeping) are paid per key tile: 128 keys halve them per key against
/// 64 (static SASS, docs/serving.md "128-key decode tile").
pub const DECODE_WIDE_TILE: TileConfig = TileConfig {
    block_m: 64,
    block_n: 128,
    warps: 4,
    stages: 2,
    wgmma: false,
    atomic_dq: false,
};

/// [`DECODE_WIDE_TILE`] for a decode spec where it fits: tensor cores (f16/bf16), one score
/// tile (LM-Infinite holds two: 128 keys would double its scores' registers), head dim up to
/// 128 on the paged cache and up to 64 over packed keys (`decode_varlen` keeps more
/// addresses live in its contiguous copy path: at d 128 ALiBi and the sliding window spill
/// 8-64 bytes), and `valid` (registers, shared memory, block-list block sizes). ptxas
/// confirms no spill and no stack frame for every decode-capable catalog variant on sm_80
/// and sm_90 (`ATTNFORGE_HEAVY=1 cargo test -p attnforge-runtime --test decode_tile`).
/// `None` for every other spec.
fn decode_wide_tile(spec: &KernelSpec, arch: Arch) -> Option<TileConfig> {
    let max_d = match spec.layout {
        Layout::Decode => 128,
        Layout::DecodeVarlen => 64,
        _ => 0,
    };
    let fits = spec.dtype != DType::F32
        && spec.head_dim.get() <= max_d
        && !spec.mask.lm_infinite_scoring();
    Some(DECODE_WIDE_TILE).filter(|t| fits && t.valid(spec, arch).is_ok())
}

/// A sensible default config. f32: the first valid of 64x64x8, 64x64x4, 32x64x4, 16x32x2
/// (one stage; 8 warps own 8 rows each, half the unrolled per-thread work of 4 warps, which
/// halves the NVRTC + ptxas compile time of the FMA kernels). f16/bf16: the first valid of 64x64 (4 warps, 2 stages), 64x32 (2 stages),
/// 32x32 (2 warps, 2 stages), 16x32 (1 warp, 1 stage), LM-Infinite from 64x32 on (it holds
/// two score tiles): double buffering hides the
/// global-load latency of the next K/V tile behind the two products of the current one.
///
/// The decode layouts ([`crate::spec::Layout::is_decode`]) try [`DECODE_WIDE_TILE`] first.
pub fn default_tile(spec: &KernelSpec, arch: Arch) -> Option<TileConfig> {
    if let Some(t) = decode_wide_tile(spec, arch) {
        return Some(t);
    }
    let cands: &[TileConfig] = if spec.dtype == DType::F32 {
        &[
            TileConfig::new(64, 64, 8, 1),
            TileConfig::new(64, 64, 4, 1),
            TileConfig::new(32, 64, 4, 1),
            TileConfig::new(16, 32, 2, 1),
        ]
    } else if spec.mask.lm_infinite_scoring() {
        // two score tiles (near and far branch): block_n 32 keeps the registers and the
        // unrolled code (hence the compile time) of one 64-wide tile
        &[
            TileConfig::new(64, 32, 4, 2),
            TileConfig::new(32, 32, 2, 2),
            TileConfig::new(16, 32, 1, 1),
        ]
    } else if spec.head_dim == HeadDim::D256 {
        // see default_search_space: the one d = 256 shape that is spill-free for every mask
        &[
            TileConfig::new(128, 32, 8, 2),
            TileConfig::new(64, 32, 4, 2),
        ]
    } else {
        &[
            TileConfig::new(64, 64, 4, 2),
            TileConfig::new(64, 32, 4, 2),
            TileConfig::new(32, 32, 2, 2),
            TileConfig::new(16, 32, 1, 1),
        ]
    };
    cands.iter().copied().find(|t| t.valid(spec, arch).is_ok())
}
