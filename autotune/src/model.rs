//! The static cost model: a predicted kernel time from the tile shape, the ptxas-derived
//! occupancy and the architecture's limits. Used to rank candidates when no GPU can time
//! them, and to choose which candidates the correctness gate checks first. Its numbers are
//! *predictions*, never measurements; reports label them so. See `docs/tuning.md`.

use serde::{Deserialize, Serialize};

use crate::occupancy::{ArchLimits, Occupancy};
use crate::workload::Shape;

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
