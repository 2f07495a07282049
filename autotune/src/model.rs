//! The static cost models: a predicted kernel time used to rank candidates when no GPU can
//! time them, and to choose which candidates the correctness gate checks first. Their numbers
//! are *predictions*, never measurements; reports label them so. See `docs/tuning.md`.
//!
//! - [`predict_main_loop`] (tensor-core kernels): fed by the SASS of each candidate's main
//!   loop ([`LoopCounts`]), the ptxas occupancy and the key tiles the mask makes each query
//!   block visit ([`crate::workload::work_profile`]); blocks are list-scheduled on the SMs.
//! - [`predict`] (the f32 FMA kernels, and any candidate without SASS counts): FMA lanes,
//!   shared-memory reads and DRAM from the tile shape.

use serde::{Deserialize, Serialize};

use crate::occupancy::{ArchLimits, Occupancy};
use crate::sass_counts::LoopCounts;
use crate::workload::Shape;
use crate::Arch;

/// Inputs of the model for one candidate.
#[derive(Clone, Copy, Debug)]
pub struct ModelInput {
    /// Rows per block.
    pub block_m: usize,
    /// Key columns per tile.
    pub block_n: usize,
    /// Warps per block.
    pub warps: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Bytes per q/k/v element.
    pub elem_bytes: usize,
}

/// A predicted time and its parts (microseconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Predicted kernel time, microseconds.
    pub time_us: f64,
    /// Compute (FMA issue) part.
    pub compute_us: f64,
    /// Shared-memory read part.
    pub smem_us: f64,
    /// DRAM part.
    pub dram_us: f64,
    /// Waves of blocks over the GPU.
    pub waves: usize,
    /// FMA-pipe efficiency assumed from the resident warps (0..=1).
    pub latency_hiding: f64,
    /// Key splits per sequence the prediction assumes (decode kernels, [`crate::decode`]:
    /// the tuned `num_splits`); `None` for kernels without splits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<usize>,
}

/// Fixed launch overhead, microseconds.
const LAUNCH_US: f64 = 3.0;
/// Warps per SM needed to hide FMA and shared-memory latency (two per scheduler).
const WARPS_TO_HIDE_LATENCY: f64 = 8.0;
/// Shared-memory bandwidth per SM, bytes per clock.
const SMEM_BYTES_PER_CLK: f64 = 128.0;

/// Predicted time of a forward kernel at `shape` (dense work: every key tile visited).
///
/// - blocks = `B * Hq * ceil(Sq / block_m)`, each visiting `ceil(Sk / block_n)` tiles;
/// - per tile: `4 * block_m * block_n * D` flops (QK^T and PV, padded tiles included) on
///   the SM's FMA lanes shared by the resident blocks, at an efficiency of
///   `min(1, resident warps / 8)`; and `warps * 2 * block_n * D * 4` bytes of shared-memory
///   reads (every warp reads the whole K and V tile) at 128 B/clk; the larger of the two;
/// - waves = `ceil(blocks / (SMs * blocks_per_sm))`, each lasting one block's time;
/// - DRAM: every block streams K and V once plus its Q and O rows; the kernel takes the
///   larger of the compute and DRAM times, plus 3 us launch overhead.
pub fn predict(l: &ArchLimits, occ: &Occupancy, m: &ModelInput, s: &Shape) -> Prediction {
    let concurrent = occ.blocks_per_sm.max(1) as f64;
    let blocks = s.batch * s.heads_q * s.seq_q.div_ceil(m.block_m);
    let tiles = s.seq_k.div_ceil(m.block_n) as f64;
    let clock = l.clock_ghz * 1e9;
    let resident_warps = (occ.blocks_per_sm * m.warps) as f64;
    let hiding = (resident_warps / WARPS_TO_HIDE_LATENCY).min(1.0);
    let sm_flops = 2.0 * l.fma_lanes as f64 * clock * hiding.max(1e-3);
    let tile_flops = 4.0 * (m.block_m * m.block_n * m.head_dim) as f64;
    let tile_smem = (m.warps * 2 * m.block_n * m.head_dim * 4) as f64;
    let compute_tile = tile_flops / (sm_flops / concurrent);
    let smem_tile = tile_smem / (SMEM_BYTES_PER_CLK * clock / concurrent);
    let waves = blocks.div_ceil(l.sms * occ.blocks_per_sm.max(1));
    let block_s = tiles * compute_tile.max(smem_tile);
    let compute_s = waves as f64 * block_s;
    let dram_bytes = blocks as f64
        * (tiles * (2 * m.block_n * m.head_dim * m.elem_bytes) as f64
            + (2 * m.block_m * m.head_dim * m.elem_bytes) as f64);
    let dram_s = dram_bytes / (l.dram_gbps * 1e9);
    Prediction {
        time_us: compute_s.max(dram_s) * 1e6 + LAUNCH_US,
        compute_us: waves as f64 * tiles * compute_tile * 1e6,
        smem_us: waves as f64 * tiles * smem_tile * 1e6,
        dram_us: dram_s * 1e6,
        waves,
        latency_hiding: hiding,
        splits: None,
    }
}

/// Constants of the main-loop model for one architecture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MainLoopConstants {
    /// Tensor-pipe cycles of one m16n8k16 MMA on a sub-partition. From the dense f16/bf16
    /// peak: A100 312 TFLOP/s = 1024 FLOP/clk/SM at 1.41 GHz x 108 SMs, so 4096 FLOP / 256
    /// per sub-partition = 8 (NVIDIA A100 whitepaper); H100 SXM 989 TFLOP/s = 4096
    /// FLOP/clk/SM at 1.83 GHz x 132 SMs, so 4 (NVIDIA H100 whitepaper). The fit to the H200
    /// measurements gave 3.7 for `mma.sync` on sm_90.
    pub mma_cycles: f64,
    /// The same for the Hopper warpgroup MMA (per m16n8k16 equivalent of an `HGMMA`, per
    /// warp). Fitted on the H200 (2026-12-04, docs/gpu-results/2026-12-04-NVIDIA-H200-run5.md):
    /// 3.1 brings the warp-specialized `m128n128w12s3wg` of full d128 bf16 to its measured
    /// time (one point, in sample); sm_80 has none (its value is unused).
    pub wgmma_cycles: f64,
    /// Scheduler cycles per other instruction: one issue slot plus the dependent stalls the
    /// other resident warps do not hide. Fitted on the H200 (2026-12-04): 1.22.
    pub other_cycles: f64,
    /// Exposed latency, in warp-iterations per scheduler: one iteration of the `w` warps a
    /// scheduler holds takes `(w + exposed) x` one warp's cycles. Fitted on the H200: 1.3.
    pub exposed_latency_warps: f64,
}

impl MainLoopConstants {
    /// The constants of `arch`. sm_90: fitted to the measured tuning of 30 candidates of
    /// three kernels on an H200 (docs/gpu-results/2026-12-04-tuning.csv; `tests/model_h200.rs`
    /// states the fit's error). sm_80: the A100's tensor-pipe rate with sm_90's fitted
    /// issue and latency terms (no A100 was measured: an assumption).
    pub fn of(arch: Arch) -> Self {
        match arch {
            Arch::Sm80 => MainLoopConstants {
                mma_cycles: 8.0,
                wgmma_cycles: 8.0,
                other_cycles: 1.22,
                exposed_latency_warps: 1.3,
            },
            Arch::Sm90 => MainLoopConstants {
                mma_cycles: 3.7,
                wgmma_cycles: 3.1,
                other_cycles: 1.22,
                exposed_latency_warps: 1.3,
            },
        }
    }
}

/// One candidate for [`predict_main_loop`].
#[derive(Clone, Copy, Debug)]
pub struct MainLoopInput<'a> {
    /// Computing warps per block (a producer warpgroup's are not counted).
    pub warps: usize,
    /// Whether the MMAs are Hopper warpgroup MMAs ([`MainLoopConstants::wgmma_cycles`]).
    pub wgmma: bool,
    /// Main-loop counts per warp per key tile (from the SASS, or [`estimate_counts`]).
    pub counts: LoopCounts,
    /// Key tiles visited by each query block of one (batch, head), in launch order.
    pub profile: &'a [u32],
    /// Of those, the partial tiles of each query block (charged with the partial-tile path's
    /// counts, [`LoopCounts::partial`]); empty: none.
    pub partial: &'a [u32],
    /// Query blocks launched per profile entry: batch x query heads.
    pub heads_times_batch: usize,
    /// Bytes per q/k/v element (for the DRAM bound).
    pub elem_bytes: usize,
    /// Key tile width and head dimension (for the DRAM bound).
    pub block_n: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// Predicted time of a tensor-core forward kernel from its main loop's machine code.
///
/// - One key tile of one warp costs `c = mma_cycles x MMA + other_cycles x (instructions -
///   MMA)` scheduler cycles, with the instructions of the interior-tile path for a full tile
///   and those of the partial-tile path for a partial or edge one ([`MainLoopInput::partial`]); a scheduler holding `w = blocks_per_sm x warps / 4` warps runs
///   one iteration of all of them in `(w + exposed_latency_warps) x c` cycles, which is one
///   key tile's time for each resident block (`latency_hiding = w / (w + exposed)`).
/// - Blocks (every query block of every batch and head, in launch order) go to the first
///   free of `SMs x blocks_per_sm` slots and take the sum of their tiles' times: the makespan
///   is the kernel's time (waves and the causal tail included).
/// - The kernel takes at least the DRAM time of its K/V tile reads; plus 3 us launch.
///
/// `smem_us` reports the `ldmatrix` bandwidth bound (128 B/clk/SM), which the makespan does
/// not add: the SASS counts already carry the ldmatrix issue.
pub fn predict_main_loop(
    l: &ArchLimits,
    k: &MainLoopConstants,
    occ: &Occupancy,
    m: &MainLoopInput<'_>,
) -> Prediction {
    let bps = occ.blocks_per_sm.max(1);
    let w = (bps * m.warps) as f64 / 4.0;
    let mma_cycles = if m.wgmma {
        k.wgmma_cycles
    } else {
        k.mma_cycles
    };
    let cycles = |instructions: f64| {
        let c = mma_cycles * m.counts.mma + k.other_cycles * (instructions - m.counts.mma).max(0.0);
        (w + k.exposed_latency_warps) * c
    };
    let interior_cycles = cycles(m.counts.instructions);
    let partial_cycles = cycles(
        m.counts
            .partial
            .map_or(m.counts.instructions, |p| p.instructions),
    );
    let clock = l.clock_ghz * 1e9;
    let slots = l.sms * bps;
    // slot times in scheduler cycles (whole cycles: far finer than a key tile)
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<u64>> =
        std::iter::repeat_n(std::cmp::Reverse(0u64), slots).collect();
    let mut tiles_total = 0u64;
    for _ in 0..m.heads_times_batch {
        for (i, &t) in m.profile.iter().enumerate() {
            let part = m.partial.get(i).copied().unwrap_or(0).min(t);
            let block = f64::from(t - part) * interior_cycles + f64::from(part) * partial_cycles;
            let std::cmp::Reverse(start) = heap.pop().unwrap_or(std::cmp::Reverse(0));
            heap.push(std::cmp::Reverse(start + block.round() as u64));
            tiles_total += u64::from(t);
        }
    }
    let makespan_cycles = heap.into_iter().map(|r| r.0).max().unwrap_or(0) as f64;
    let compute_s = makespan_cycles / clock;
    let blocks = (m.heads_times_batch * m.profile.len()) as f64;
    let dram_bytes = tiles_total as f64 * (2 * m.block_n * m.head_dim * m.elem_bytes) as f64;
    let dram_s = dram_bytes / (l.dram_gbps * 1e9);
    let smem_s = tiles_total as f64 * m.warps as f64 * m.counts.ldmatrix_bytes
        / (SMEM_BYTES_PER_CLK * clock * l.sms as f64);
    Prediction {
        time_us: compute_s.max(dram_s) * 1e6 + LAUNCH_US,
        compute_us: compute_s * 1e6,
        smem_us: smem_s * 1e6,
        dram_us: dram_s * 1e6,
        waves: (blocks / slots as f64).ceil() as usize,
        latency_hiding: w / (w + k.exposed_latency_warps),
        splits: None,
    }
}

/// Main-loop counts of a candidate that was not compiled (the pre-ranking that decides which
/// candidates are compiled): the MMA work of the tile and the other instructions of the
/// measured candidates' SASS, about `160 + (1.55 + 175 / d) x MMA` per warp and key tile
/// (sm_90, 2026-12-04: within 5% for 16 rows per warp; 32 rows per warp do about 10% fewer).
pub fn estimate_counts(
    block_m: usize,
    block_n: usize,
    warps: usize,
    head_dim: usize,
) -> LoopCounts {
    let mma = (2 * block_m * block_n * head_dim) as f64 / (warps as f64 * 2048.0);
    let other = 160.0 + (1.55 + 175.0 / head_dim as f64) * mma;
    LoopCounts {
        instructions: mma + other,
        mma,
        mufu: (block_m * block_n) as f64 / (warps as f64 * 32.0),
        ldmatrix_bytes: 0.0,
        partial: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::occupancy::occupancy;
    use crate::Arch;

    fn p(bm: usize, bn: usize, w: usize, regs: usize, smem: usize) -> f64 {
        let l = ArchLimits::of(Arch::Sm90);
        let o = occupancy(&l, w * 32, regs, smem);
        let s = Shape {
            batch: 2,
            heads_q: 16,
            heads_kv: 16,
            seq_q: 2048,
            seq_k: 2048,
        };
        let m = ModelInput {
            block_m: bm,
            block_n: bn,
            warps: w,
            head_dim: 128,
            elem_bytes: 2,
        };
        predict(&l, &o, &m, &s).time_us
    }

    #[test]
    fn more_occupancy_is_faster_and_padding_costs() {
        // one-warp blocks: shared memory limiting residency to one block per SM leaves one
        // warp to hide latency -> slower than five resident blocks.
        assert!(p(64, 64, 1, 64, 40_000) < p(64, 64, 1, 64, 150_000));
        // one warp cannot hide latency: slower than four warps on the same tile.
        assert!(p(64, 64, 1, 128, 40_000) > p(64, 64, 4, 128, 40_000));
        // predictions are finite and positive.
        let t = p(128, 128, 8, 200, 150_000);
        assert!(t.is_finite() && t > 3.0);
    }
}
