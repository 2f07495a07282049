//! The context-parallel planner: for a mask, lengths and a world size, compare partitions
//! (contiguous, zigzag, mask-aware greedy) and methods (ring, Ulysses) by exact per-rank work
//! and communication volume, and predict times with a link-bandwidth cost model.
//!
//! Cost model (every time it reports is a *prediction*, not a measurement):
//! - work: allowed (query, key) pairs per rank, exact ([`MaskGeometry`]); forward FLOPs
//!   `2 (D + Dv)` per pair (the `QK^T` and `PV` products), at `peak * efficiency` of [`Gpu`];
//! - ring: per step, the K/V block received (bytes) over the link, overlapped with the step's
//!   compute: `step = max(compute, latency + bytes / bandwidth)`; a rank's time is the sum of
//!   its steps (skipped blocks cost nothing); the plan's time is the slowest rank's;
//! - Ulysses: all-to-all of q, k, v and back of out/lse, not overlapped:
//!   `(W - 1) latency + bytes_sent / bandwidth + compute` per rank.
//!
//! ```
//! use std::sync::Arc;
//! use attnforge_reference::Mask;
//! use attnforge_parallel::*;
//! let problem = CpProblem { mask: Arc::new(Mask::Causal), batch: 1, heads_q: 8, heads_kv: 8,
//!     sq: 1024, sk: 1024, dim: 64, dim_v: 64, scale: None };
//! let p = plan(&PlanRequest { problem: &problem, world: 4, link: NVLINK4, gpu: GPU_H100_SXM, elem_bytes: 2 }).unwrap();
//! let ring = |k| p.candidates.iter().find(|c| c.method == Method::Ring && c.partition == k).unwrap();
//! assert!(ring(PartitionKind::Contiguous).imbalance > 1.7); // the last rank sees every key
//! assert!(ring(PartitionKind::Zigzag).imbalance < 1.01);
//! println!("chosen: {:?}, predicted {:.3} ms", p.candidates[p.best].method, p.candidates[p.best].predicted_s * 1e3);
//! ```

use std::ops::Range;

use crate::error::{invalid, CpError};
use crate::layout::{CpProblem, Layout};
use crate::partition::{equal_chunks, Partition};
use attnforge_reference::MaskGeometry;

/// A point-to-point link between two GPUs (one direction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Name.
    pub name: &'static str,
    /// Bandwidth per direction, bytes/s.
    pub bytes_per_s: f64,
    /// Per-message latency, seconds.
    pub latency_s: f64,
}

/// NVLink 4 between H100 SXM GPUs: 900 GB/s total bidirectional per GPU (NVIDIA H100 Tensor
/// Core GPU datasheet, "NVLink: 900GB/s"; <https://www.nvidia.com/en-us/data-center/h100/>),
/// i.e. 450 GB/s per direction. Latency: a few microseconds per NCCL message (assumed 5 us).
pub const NVLINK4: Link = Link {
    name: "NVLink 4 (H100 SXM, 450 GB/s per direction)",
    bytes_per_s: 450e9,
    latency_s: 5e-6,
};

/// InfiniBand NDR: 400 Gb/s per port = 50 GB/s per direction (NVIDIA ConnectX-7 / Quantum-2
/// NDR product pages, <https://www.nvidia.com/en-us/networking/infiniband-adapters/>; a DGX
/// H100 has one 400 Gb/s ConnectX-7 port per GPU). Latency assumed 10 us per message.
pub const IB_NDR: Link = Link {
    name: "InfiniBand NDR (400 Gb/s = 50 GB/s per direction)",
    bytes_per_s: 50e9,
    latency_s: 10e-6,
};

/// A GPU's attention throughput for the cost model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gpu {
    /// Name.
    pub name: &'static str,
    /// Dense 16-bit tensor-core peak, FLOP/s.
    pub peak_flops: f64,
    /// Fraction of peak an attention kernel reaches (an assumption of the model).
    pub efficiency: f64,
}

/// H100 SXM: 989 TFLOP/s dense BF16 (NVIDIA H100 datasheet: 1,979 TFLOPS with sparsity);
/// efficiency 0.5 assumed (FlashAttention-2/3 report 35-75% of peak on H100 forward).
pub const GPU_H100_SXM: Gpu = Gpu {
    name: "H100 SXM (989 TFLOP/s BF16 dense, 50% assumed)",
    peak_flops: 989e12,
    efficiency: 0.5,
};

/// How the sequence is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    /// Rank `r` owns the `r`-th contiguous piece.
    Contiguous,
    /// Pieces `r` and `2W - 1 - r` of `2W`.
    Zigzag,
    /// `8W` pieces weighted by their exact work under the mask, assigned greedily and refined
    /// by swaps; every rank gets `8` pieces (equal memory).
    MaskAware,
}

/// The parallel attention method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Ring attention (point-to-point K/V).
    Ring,
    /// Ulysses (all-to-all over heads).
    Ulysses,
}

/// What the planner asks about.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The problem (mask, sizes).
    pub problem: &'a CpProblem,
    /// Number of ranks.
    pub world: usize,
    /// The link between ranks.
    pub link: Link,
    /// The GPU.
    pub gpu: Gpu,
    /// Bytes per element of q, k, v (2 for bf16/f16).
    pub elem_bytes: usize,
}

/// One rank's load under a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RankLoad {
    /// Allowed (query, key) pairs it computes (over batch and heads).
    pub pairs: u64,
    /// Blocks it computes (ring) or 1 (Ulysses).
    pub blocks: usize,
    /// Blocks skipped because the mask leaves them empty.
    pub skipped: usize,
    /// Bytes it sends.
    pub bytes_sent: u64,
    /// Predicted time (seconds, forward).
    pub predicted_s: f64,
}

/// A (method, partition) candidate and its predicted cost.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCandidate {
    /// Method.
    pub method: Method,
    /// Partition kind.
    pub partition: PartitionKind,
    /// The layout it uses.
    pub layout: Layout,
    /// Per-rank load.
    pub ranks: Vec<RankLoad>,
    /// max / mean of the per-rank pairs (1 = perfectly balanced).
    pub imbalance: f64,
    /// Predicted forward time: the slowest rank's.
    pub predicted_s: f64,
}

/// The planner's answer: every feasible candidate and the one predicted fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Index of the chosen candidate in `candidates`.
    pub best: usize,
    /// All feasible candidates.
    pub candidates: Vec<PlanCandidate>,
    /// Why Ulysses was not considered, if it was not.
    pub ulysses_infeasible: Option<String>,
}

fn merge_ranges(mut rs: Vec<Range<usize>>) -> Vec<Range<usize>> {
    rs.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::new();
    for r in rs {
        match out.last_mut() {
            Some(l) if l.end == r.start => l.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// The mask-aware partition of the query rows: `8 W` equal pieces weighted by their exact
/// work; three assignments with 8 pieces per rank (equal memory) are refined by pairwise
/// swaps that lower the busier rank's load, and the one with the smallest maximum load wins.
/// Seeds: longest-processing-time first (heaviest piece to the least-loaded rank with room),
/// contiguous and zigzag over the pieces, so when `8 W` divides the length the result is
/// never worse than the contiguous or zigzag partitions.
pub(crate) fn mask_aware(
    g: &MaskGeometry<'_>,
    sq: usize,
    sk: usize,
    world: usize,
) -> Result<Partition, CpError> {
    let per = 8;
    let n = per * world;
    let pieces = equal_chunks(sq, n);
    let work: Vec<u64> = pieces.iter().map(|p| g.pairs(p.clone(), 0..sk)).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| work[b].cmp(&work[a]).then(a.cmp(&b)));
    let mut lpt: Vec<Vec<usize>> = vec![Vec::new(); world];
    let mut load = vec![0u64; world];
    for i in order {
        let r = (0..world)
            .filter(|&r| lpt[r].len() < per)
            .min_by_key(|&r| (load[r], r))
            .expect("a rank has room: per * world pieces");
        load[r] += work[i];
        lpt[r].push(i);
    }
    let contiguous: Vec<Vec<usize>> = (0..world)
        .map(|r| (r * per..(r + 1) * per).collect())
        .collect();
    let half = per / 2;
    let zigzag: Vec<Vec<usize>> = (0..world)
        .map(|r| {
            (r * half..(r + 1) * half)
                .chain((2 * world - 1 - r) * half..(2 * world - r) * half)
                .collect()
        })
        .collect();
    let best = [lpt, contiguous, zigzag]
        .into_iter()
        .map(|a| refine(a, &work))
        .min_by_key(|a| {
            a.iter()
                .map(|rs| rs.iter().map(|&i| work[i]).sum::<u64>())
                .max()
        })
        .expect("three seeds");
    let ranges = best
        .into_iter()
        .map(|rs| merge_ranges(rs.into_iter().map(|i| pieces[i].clone()).collect()))
        .collect();
    Partition::from_ranges(sq, ranges)
}

/// Swap pieces between the busiest rank and another while that lowers the pair's maximum.
fn refine(mut a: Vec<Vec<usize>>, work: &[u64]) -> Vec<Vec<usize>> {
    let load = |rs: &Vec<usize>| rs.iter().map(|&i| work[i]).sum::<u64>();
    for _ in 0..10_000 {
        let loads: Vec<u64> = a.iter().map(load).collect();
        let top = (0..a.len())
            .max_by_key(|&r| (loads[r], std::cmp::Reverse(r)))
            .unwrap_or(0);
        let mut best: Option<(u64, usize, usize, usize)> = None;
        for other in (0..a.len()).filter(|&r| r != top) {
            for (x, &px) in a[top].iter().enumerate() {
                for (y, &py) in a[other].iter().enumerate() {
                    if work[px] <= work[py] {
                        continue;
                    }
                    let d = work[px] - work[py];
                    let new_max = (loads[top] - d).max(loads[other] + d);
                    if new_max < loads[top] && best.is_none_or(|b| new_max < b.0) {
                        best = Some((new_max, other, x, y));
                    }
                }
            }
        }
        let Some((_, other, x, y)) = best else { break };
        let (px, py) = (a[top][x], a[other][y]);
        a[top][x] = py;
        a[other][y] = px;
    }
    a
}

fn layout_for(
    kind: PartitionKind,
    g: &MaskGeometry<'_>,
    p: &CpProblem,
    world: usize,
) -> Result<Layout, CpError> {
    let q = match kind {
        PartitionKind::Contiguous => Partition::contiguous(p.sq, world)?,
        PartitionKind::Zigzag => Partition::zigzag(p.sq, world)?,
        PartitionKind::MaskAware => mask_aware(g, p.sq, p.sk, world)?,
    };
    let k = if p.sq == p.sk {
        q.clone()
    } else if kind == PartitionKind::Zigzag {
        Partition::zigzag(p.sk, world)?
    } else {
        Partition::contiguous(p.sk, world)?
    };
    Ok(Layout { q, k })
}

fn imbalance(ranks: &[RankLoad]) -> f64 {
    let max = ranks.iter().map(|r| r.pairs).max().unwrap_or(0) as f64;
    let mean = ranks.iter().map(|r| r.pairs as f64).sum::<f64>() / ranks.len().max(1) as f64;
    if mean == 0.0 {
        1.0
    } else {
        max / mean
    }
}

fn ulysses_check(p: &CpProblem, world: usize) -> Result<(), String> {
    if !p.heads_q.is_multiple_of(world) {
        return Err(format!(
            "Hq = {} is not divisible by W = {world}",
            p.heads_q
        ));
    }
    let (per, group) = (p.heads_q / world, p.heads_q / p.heads_kv.max(1));
    if !per.is_multiple_of(group) && !group.is_multiple_of(per) {
        return Err(format!(
            "Hq/W = {per} and the GQA group {group} do not divide one another"
        ));
    }
    Ok(())
}

/// Plan a forward pass: every feasible (method, partition) candidate with its per-rank work,
/// communication and predicted time; `best` is the fastest predicted.
pub fn plan(req: &PlanRequest<'_>) -> Result<Plan, CpError> {
    let p = req.problem;
    let w = req.world;
    if w == 0 {
        return Err(invalid("world", 0, "pass at least one rank"));
    }
    if p.heads_kv == 0 || !p.heads_q.is_multiple_of(p.heads_kv) {
        return Err(invalid("heads_kv", p.heads_kv, "Hkv must divide Hq"));
    }
    let g = p.geometry()?;
    let flops_per_pair = 2.0 * (p.dim + p.dim_v) as f64;
    let rate = req.gpu.peak_flops * req.gpu.efficiency;
    let kv_bytes_per_key = (p.batch * p.heads_kv * (p.dim + p.dim_v) * req.elem_bytes) as u64;
    let mut candidates = Vec::new();
    let kinds = [
        PartitionKind::Contiguous,
        PartitionKind::Zigzag,
        PartitionKind::MaskAware,
    ];
    for kind in kinds {
        let layout = layout_for(kind, &g, p, w)?;
        let mut ranks = Vec::with_capacity(w);
        for r in 0..w {
            let mut load = RankLoad::default();
            for s in 0..w {
                let src = (r + w - s) % w;
                let dst = (r + s) % w;
                let pairs = g.pairs_sets(layout.q.ranges(r), layout.k.ranges(src));
                let compute = pairs as f64 * flops_per_pair / rate;
                if s > 0 && g.any_sets(layout.q.ranges(dst), layout.k.ranges(r)) {
                    load.bytes_sent += layout.k.count(r) as u64 * kv_bytes_per_key;
                }
                if pairs == 0 {
                    load.skipped += 1;
                    continue;
                }
                load.blocks += 1;
                load.pairs += pairs;
                let comm = if s == 0 {
                    0.0
                } else {
                    req.link.latency_s
                        + (layout.k.count(src) as u64 * kv_bytes_per_key) as f64
                            / req.link.bytes_per_s
                };
                load.predicted_s += compute.max(comm);
            }
            ranks.push(load);
        }
        candidates.push(PlanCandidate {
            method: Method::Ring,
            partition: kind,
            imbalance: imbalance(&ranks),
            predicted_s: ranks.iter().map(|r| r.predicted_s).fold(0.0, f64::max),
            ranks,
            layout,
        });
    }
    let ulysses_infeasible = ulysses_check(p, w).err();
    if ulysses_infeasible.is_none() {
        // Every rank computes all positions of Hq/W heads: the total work over W (exact for
        // masks that do not depend on the head; user predicates may vary per head).
        let total = g.pairs(0..p.sq, 0..p.sk);
        let layout = layout_for(PartitionKind::Contiguous, &g, p, w)?;
        let eb = req.elem_bytes as u64;
        let ranks: Vec<RankLoad> = (0..w)
            .map(|r| {
                let (nq, nk) = (layout.q.count(r) as u64, layout.k.count(r) as u64);
                let b = p.batch as u64;
                let own = b * nq * (p.heads_q * p.dim) as u64 * eb
                    + nk * kv_bytes_per_key
                    + b * nq * p.heads_q as u64 * (p.dim_v as u64 * eb + 4);
                let bytes = own / w as u64 * (w as u64 - 1);
                let pairs = total / w as u64;
                let t = (w - 1) as f64 * req.link.latency_s * 2.0
                    + bytes as f64 / req.link.bytes_per_s
                    + pairs as f64 * flops_per_pair / rate;
                RankLoad {
                    pairs,
                    blocks: 1,
                    skipped: 0,
                    bytes_sent: bytes,
                    predicted_s: t,
                }
            })
            .collect();
        candidates.push(PlanCandidate {
            method: Method::Ulysses,
            partition: PartitionKind::Contiguous,
            imbalance: imbalance(&ranks),
            predicted_s: ranks.iter().map(|r| r.predicted_s).fold(0.0, f64::max),
            ranks,
            layout,
        });
    }
    let best = (0..candidates.len())
        .min_by(|&a, &b| {
            candidates[a]
                .predicted_s
                .total_cmp(&candidates[b].predicted_s)
                .then(a.cmp(&b))
        })
        .unwrap_or(0);
    Ok(Plan {
        best,
        candidates,
        ulysses_infeasible,
    })
}
