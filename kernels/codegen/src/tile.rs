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
use crate::spec::{KernelSpec, Mask, ScoreMod};

/// Target architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// Ampere (A100).
    #[serde(rename = "sm_80")]
    Sm80,
    /// Hopper (H100/H200).
    #[serde(rename = "sm_90")]
    Sm90,
}

impl Arch {
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
    /// `sm_XX` name for ptxas.
    pub fn sm_name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
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
    /// Pipeline stages of K/V tiles (the FMA mainloop supports 1).
    pub stages: usize,
}

/// Shared-memory layout of the FMA mainloop, in `float` elements. The emitter computes the
/// offsets from this struct, so estimate and kernel cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmemLayout {
    /// Row stride of K tiles (`D + 1`: the pad makes lanes reading different key rows at
    /// the same column hit distinct banks).
    pub k_stride: usize,
    /// Floats of the Q tile (`block_m * D`, doubled for LM-Infinite's second rotation).
    pub q: usize,
    /// Floats of the K tile (`block_n * k_stride`, doubled for LM-Infinite raw + rotated).
    pub k: usize,
    /// Floats of the V tile (`block_n * D`; lanes read consecutive columns, no pad).
    pub v: usize,
    /// Floats of the probability tile (`block_m * block_n`).
    pub p: usize,
}

impl SmemLayout {
    /// Layout for a spec and tile.
    pub fn new(spec: &KernelSpec, t: &TileConfig) -> Self {
        let d = spec.head_dim.get();
        let two = if matches!(spec.mask, Mask::LmInfinite) {
            2
        } else {
            1
        };
        let k_stride = d + 1;
        SmemLayout {
            k_stride,
            q: two * t.block_m * d,
            k: two * t.block_n * k_stride,
            v: t.block_n * d,
            p: t.block_m * t.block_n,
        }
    }
    /// Total bytes of dynamic shared memory.
    pub fn bytes(&self) -> usize {
        4 * (self.q + self.k + self.v + self.p)
    }
}

/// Registers needed beyond the arrays: 64-bit base pointers and strides of q/k/v/o
/// (2 registers each), block/row/position indices, loop counters and the temporaries of
/// the load and epilogue loops. An estimate, not a measurement: ptxas under
/// `__launch_bounds__(threads, 1)` spends whatever the limit allows (a config estimated at
/// 105 used 145 on sm_80 and 162 on sm_90), so only spills and stack frames are evidence.
const REG_OVERHEAD: usize = 48;

/// Fraction (in percent) of the per-thread register limit the estimate may reach. The
/// estimate counts live arrays only; ptxas needs slack for the temporaries of the unrolled
/// FMA chains and the per-element mask/score code. With 80% every config of the default
/// space of the catalog compiled without spills or stack frame on sm_80 and sm_90
/// (ptxas 12.9; `ATTNFORGE_FULL_SPACE=1 cargo test -p attnforge-codegen --test nvrtc`).
const REG_BUDGET_PERCENT: usize = 80;

impl TileConfig {
    /// Construct.
    pub fn new(block_m: usize, block_n: usize, warps: usize, stages: usize) -> Self {
        TileConfig {
            block_m,
            block_n,
            warps,
            stages,
        }
    }

    /// `m<bm>n<bn>w<warps>s<stages>`.
    pub fn suffix(&self) -> String {
        format!(
            "m{}n{}w{}s{}",
            self.block_m, self.block_n, self.warps, self.stages
        )
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
    /// [`REG_OVERHEAD`].
    pub fn estimated_registers(&self, spec: &KernelSpec) -> usize {
        let rows = (self.block_m / self.warps.max(1)).max(1);
        let dpl = spec.head_dim.get() / 32;
        let cpl = (self.block_n / 32).max(1);
        let branches = if matches!(spec.mask, Mask::LmInfinite) {
            2
        } else {
            1
        };
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
        rows * dpl + branches * rows * cpl + user_score + 2 * rows + cpl + REG_OVERHEAD
    }

    /// Per-thread register limit under `__launch_bounds__(threads, 1)`: the register file
    /// divided by the threads, capped at 255 (ISA limit).
    pub fn register_limit(&self, arch: Arch) -> usize {
        (arch.registers_per_sm() / self.threads().max(1)).min(255)
    }

    /// Check the config against the spec and the architecture. Returns every error.
    pub fn valid(&self, spec: &KernelSpec, arch: Arch) -> Result<(), Vec<SpecError>> {
        let mut e = Errors::default();
        // 16..128: a block below 16 rows cannot feed the m16n8k16 mainloop of the next issue;
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
        if !(self.warps.is_power_of_two() && (1..=8).contains(&self.warps)) {
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
        if self.stages != 1 {
            e.push(
                "tile.stages",
                format!(
                    "the FMA mainloop is single-stage: got stages = {}",
                    self.stages
                ),
                "use stages = 1 (multi-stage needs the cp.async mainloop)",
            );
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
        e.finish()
    }
}

/// Every valid config of the default grid: block_m in {16, 32, 64, 128}, block_n in
/// {32, 64, 128}, warps in {1, 2, 4, 8}, stages = 1. Ordered by (block_m, block_n, warps).
pub fn default_search_space(spec: &KernelSpec, arch: Arch) -> Vec<TileConfig> {
    let mut v = Vec::new();
    for bm in [16, 32, 64, 128] {
        for bn in [32, 64, 128] {
            for w in [1, 2, 4, 8] {
                let t = TileConfig::new(bm, bn, w, 1);
                if t.valid(spec, arch).is_ok() {
                    v.push(t);
                }
            }
        }
    }
    v
}

/// A sensible default config (the first valid of 64x64x4, 32x64x4, 16x32x2).
pub fn default_tile(spec: &KernelSpec, arch: Arch) -> Option<TileConfig> {
    [
        TileConfig::new(64, 64, 4, 1),
        TileConfig::new(32, 64, 4, 1),
        TileConfig::new(16, 32, 2, 1),
    ]
    .into_iter()
    .find(|t| t.valid(spec, arch).is_ok())
}
