//! A context-parallel problem, its layout (query and key partitions), and sharding helpers.

use std::sync::Arc;

use attnforge_reference::{AttnOutput, Element, Mask, Shape4, Tensor4};

use crate::engine::StepProblem;
use crate::error::{invalid, CpError};
use crate::partition::Partition;
use attnforge_reference::MaskGeometry;

/// The global attention problem split across ranks.
#[derive(Debug, Clone)]
pub struct CpProblem {
    /// Mask over global positions (every static mask of the reference, doc ids global).
    pub mask: Arc<Mask>,
    /// Batch B.
    pub batch: usize,
    /// Query heads Hq.
    pub heads_q: usize,
    /// Key/value heads Hkv (divides Hq).
    pub heads_kv: usize,
    /// Query length Sq (rows sit at `i + Sk - Sq`).
    pub sq: usize,
    /// Key length Sk.
    pub sk: usize,
    /// Head dimension D.
    pub dim: usize,
    /// Value dimension Dv.
    pub dim_v: usize,
    /// Score scale; `None` is `1/sqrt(D)`.
    pub scale: Option<f64>,
}

impl CpProblem {
    /// The shared step description.
    pub fn step_problem(&self) -> StepProblem {
        StepProblem {
            mask: self.mask.clone(),
            sk: self.sk,
            scale: self.scale.unwrap_or(1.0 / (self.dim as f64).sqrt()),
        }
    }

    /// The mask's exact pair counter for this problem (validates the mask).
    pub fn geometry(&self) -> Result<MaskGeometry<'_>, CpError> {
        Ok(MaskGeometry::new(
            &self.mask,
            self.batch,
            self.heads_q,
            self.sq,
            self.sk,
        )?)
    }
}

/// Which query rows and which keys each rank owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Partition of the query rows `0..Sq`.
    pub q: Partition,
    /// Partition of the keys `0..Sk`.
    pub k: Partition,
}

impl Layout {
    /// Check the layout against the problem and the world size.
    pub fn check(&self, problem: &CpProblem, world: usize) -> Result<(), CpError> {
        if self.q.world() != world || self.k.world() != world {
            return Err(invalid(
                "layout world",
                format!(
                    "q {} / k {} ranks for a world of {world}",
                    self.q.world(),
                    self.k.world()
                ),
                "build the partitions for the communicator's world size",
            ));
        }
        if self.q.len() != problem.sq || self.k.len() != problem.sk {
            return Err(invalid(
                "layout lengths",
                format!(
                    "q {} / k {} for Sq {} / Sk {}",
                    self.q.len(),
                    self.k.len(),
                    problem.sq,
                    problem.sk
                ),
                "partition 0..Sq for the queries and 0..Sk for the keys",
            ));
        }
        Ok(())
    }

    /// Global positions of rank `r`'s query rows (`row + Sk - Sq`).
    pub fn q_positions(&self, problem: &CpProblem, r: usize) -> Vec<i64> {
        let off = problem.sk as i64 - problem.sq as i64;
        self.q
            .indices(r)
            .into_iter()
            .map(|i| i as i64 + off)
            .collect()
    }

    /// Global positions of rank `r`'s keys.
    pub fn k_positions(&self, r: usize) -> Vec<i64> {
        self.k.indices(r).into_iter().map(|i| i as i64).collect()
    }

    /// `needs[qr][kr]`: whether rank `qr`'s query rows have any allowed key among rank `kr`'s
    /// keys (exact, from the mask's pair counts). An unneeded block is never sent nor computed.
    pub fn block_needs(&self, problem: &CpProblem) -> Result<Vec<Vec<bool>>, CpError> {
        let g = problem.geometry()?;
        let w = self.q.world();
        Ok((0..w)
            .map(|qr| {
                (0..w)
                    .map(|kr| g.any_sets(self.q.ranges(qr), self.k.ranges(kr)))
                    .collect()
            })
            .collect())
    }
}

/// Rank `r`'s shard of a `[B, H, S, D]` tensor along S (contiguous, in shard order).
pub fn shard<T: Element>(t: &Tensor4<T>, part: &Partition, r: usize) -> Tensor4<T> {
    let idx = part.indices(r);
    let sh = Shape4::new(t.shape.batch, t.shape.heads, idx.len(), t.shape.dim);
    Tensor4::from_fn(sh, |b, h, s, d| T::from_f64(t.get(b, h, idx[s], d)))
}

/// Rank `r`'s rows of a flat `[B, H, S]` array (e.g. `dlse`).
pub fn shard_rows(x: &[f64], heads: usize, part: &Partition, r: usize) -> Vec<f64> {
    let idx = part.indices(r);
    let s = part.len();
    let batch = x.len().checked_div(heads * s).unwrap_or(0);
    let mut out = Vec::with_capacity(batch * heads * idx.len());
    for bh in 0..batch * heads {
        out.extend(idx.iter().map(|&i| x[bh * s + i]));
    }
    out
}

/// Reassemble per-rank f64 tensor shards (shard order of `part`) into the global tensor.
pub fn unshard(parts: &[Tensor4<f64>], part: &Partition) -> Tensor4<f64> {
    let s0 = parts[0].shape;
    let sh = Shape4::new(s0.batch, s0.heads, part.len(), s0.dim);
    let mut data = vec![0.0; sh.numel()];
    for (r, t) in parts.iter().enumerate() {
        for (s, i) in part.indices(r).into_iter().enumerate() {
            for b in 0..sh.batch {
                for h in 0..sh.heads {
                    for d in 0..sh.dim {
                        data[((b * sh.heads + h) * sh.seq + i) * sh.dim + d] = t.get(b, h, s, d);
                    }
                }
            }
        }
    }
    Tensor4 {
        shape: sh,
        strides: sh.contiguous_strides(),
        data,
    }
}

/// Reassemble per-rank outputs (shard order of `part`) into the global output.
pub fn unshard_output(parts: &[AttnOutput], part: &Partition) -> AttnOutput {
    let s0 = parts[0].shape;
    let sh = Shape4::new(s0.batch, s0.heads, part.len(), s0.dim);
    let mut res = AttnOutput::empty(sh);
    for (r, o) in parts.iter().enumerate() {
        for (s, i) in part.indices(r).into_iter().enumerate() {
            for b in 0..sh.batch {
                for h in 0..sh.heads {
                    let dst = (b * sh.heads + h) * sh.seq + i;
                    let src = (b * sh.heads + h) * o.shape.seq + s;
                    res.lse[dst] = o.lse[src];
                    res.out[dst * sh.dim..(dst + 1) * sh.dim]
                        .copy_from_slice(&o.out[src * sh.dim..(src + 1) * sh.dim]);
                }
            }
        }
    }
    res
}

/// A contiguous copy (communication sends the raw storage).
pub(crate) fn contiguous<T: Element>(t: &Tensor4<T>) -> Tensor4<T> {
    if t.strides == t.shape.contiguous_strides() && t.data.len() == t.shape.numel() {
        return t.clone();
    }
    Tensor4::from_fn(t.shape, |b, h, s, d| T::from_f64(t.get(b, h, s, d)))
}

/// Check a rank's shard shape.
pub(crate) fn check_shard<T>(
    t: &Tensor4<T>,
    field: &'static str,
    want: Shape4,
) -> Result<(), CpError> {
    if t.shape != want {
        return Err(invalid(
            field,
            format!("{:?}", t.shape),
            "pass the rank's shard: [B, H, rows of this rank, D] (see shard())",
        ));
    }
    Ok(())
}
