//! Recycled Attention (variants.md section 16): a decode driver over `T` steps that
//! alternates full steps (exact attention over every key, then the section 14 statistics pick
//! the recycled key set) with partial steps (exact attention over the recycled set plus the
//! keys appended since the last full step), on a cosine/periodic schedule.
//!
//! ```
//! use attnforge_reference::*;
//! let q = Tensor4::from_fn(Shape4::new(1, 2, 4, 4), |_, h, s, d| ((h + s + d) % 3) as f32 * 0.5);
//! let k = Tensor4::from_fn(Shape4::new(1, 1, 40, 4), |_, _, s, d| ((s * d) % 5) as f32 * 0.3);
//! let p = RecycledParams { stride: 2, ..RecycledParams::default() };
//! let steps = recycled_attention(&q, &q, &k, &k, &p, &AttnOptions::reference())?;
//! assert_eq!(steps[0].kinds, vec![StepKind::Full]);
//! assert_eq!(steps[0].keys_read, 37); // step 0 sits at position 40 - 4 + 0 = 36
//! assert_eq!(steps[1].kinds, vec![StepKind::Partial]);
//! assert_eq!(steps[1].keys_read, 37 / 8); // K keys: K - 1 recycled ones plus the new key
//! # Ok::<(), RefError>(())
//! ```

use std::ops::Range;

use crate::core::{attention_over_keys, check_qkv, KeySets};
use crate::element::Element;
use crate::error::RefError;
use crate::mask::{Mask, ScoreMod};
use crate::stats::{attention_stats, StatReduce, StatsParams};
use crate::tensor::{AttnOptions, AttnOutput, Shape4, Tensor4};

/// Parameters of Recycled Attention, with the defaults of section 16.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecycledParams {
    /// Recycled-set size `K` per kv head; `None`: 1/8 of the cache length at step 0
    /// (`max(1, (p_0 + 1) / 8)`).
    pub recycle_size: Option<usize>,
    /// Check stride `S` (>= 1): a step `t > 0` with `t mod S == 0` runs the similarity test.
    pub stride: usize,
    /// Similarity threshold `s`: strictly above it the step stays partial.
    pub threshold: f64,
    /// Max-pool width of the full step's statistics (odd).
    pub pool: usize,
}

impl Default for RecycledParams {
    /// `K = None` (1/8 of the cache), `S = 10`, `s = 0.85`, pooling width 7.
    fn default() -> Self {
        Self {
            recycle_size: None,
            stride: 10,
            threshold: 0.85,
            pool: 7,
        }
    }
}

/// What one step of one batch element ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Exact attention over every key `j <= p_t`, then a new recycled set.
    Full,
    /// Exact attention over the recycled set plus the keys appended since the last full step.
    Partial,
}

/// The result of one decode step for every batch element.
#[derive(Debug, Clone, PartialEq)]
pub struct RecycledStep {
    /// Step kind per batch element.
    pub kinds: Vec<StepKind>,
    /// Key set used per `(b, kv head)`, indexed `[b * Hkv + g]`, ascending; every query head
    /// of the group attends exactly this set.
    pub keys: Vec<Vec<usize>>,
    /// Keys read by the step: the sum of the key-set sizes over `(b, kv head)`.
    pub keys_read: usize,
    /// The recycled set per `(b, kv head)` after this step (index `b * Hkv + g`), in
    /// descending score order (ties: lower index first): the `top_keys` of the last full step,
    /// -1 entries removed. Partial steps draw from its front.
    pub recycled: Vec<Vec<usize>>,
    /// `out: [B, Hq, 1, Dv]` and `lse: [B, Hq, 1]` of the step's query.
    pub out: AttnOutput,
}

/// `t[b, :, seq, :]` as a `[1, H, len, D]` tensor (exact: every element round-trips f64).
fn slice_batch<T: Element>(t: &Tensor4<T>, b: usize, seq: Range<usize>) -> Tensor4<T> {
    let sh = Shape4::new(1, t.shape.heads, seq.len(), t.shape.dim);
    Tensor4::from_fn(sh, |_, h, s, d| T::from_f64(t.get(b, h, seq.start + s, d)))
}

/// The first `len` positions of a `[1, H, S, D]` tensor (a view: same strides, shorter S).
fn prefix<T: Element>(t: &Tensor4<T>, len: usize) -> Result<Tensor4<T>, RefError> {
    let sh = Shape4::new(1, t.shape.heads, len, t.shape.dim);
    Tensor4::with_strides(sh, t.strides, t.data.clone())
}

/// `mean_h q[b, h, t, :]` in f64.
fn mean_query<T: Element>(q: &Tensor4<T>, b: usize, t: usize) -> Vec<f64> {
    let (hq, d) = (q.shape.heads, q.shape.dim);
    (0..d)
        .map(|x| (0..hq).map(|h| q.get(b, h, t, x)).sum::<f64>() / hq as f64)
        .collect()
}

/// Cosine similarity in f64; `None` when a vector is zero (the similarity is undefined and
/// the schedule falls back to a full step, whatever the threshold).
fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    (na > 0.0 && nb > 0.0).then(|| dot / (na * nb))
}

fn check_params(p: &RecycledParams) -> Result<(), RefError> {
    if p.stride == 0 {
        return Err(RefError::InvalidParam {
            field: "RecycledParams::stride",
            value: "0".into(),
            fix: "the check stride S must be >= 1 (default 10)",
        });
    }
    if p.threshold.is_nan() {
        return Err(RefError::InvalidParam {
            field: "RecycledParams::threshold",
            value: "NaN".into(),
            fix: "pass a similarity threshold, e.g. 0.85",
        });
    }
    if p.pool.is_multiple_of(2) {
        return Err(RefError::InvalidParam {
            field: "RecycledParams::pool",
            value: p.pool.to_string(),
            fix: "the pooling width must be odd (default 7)",
        });
    }
    if p.recycle_size == Some(0) {
        return Err(RefError::InvalidParam {
            field: "RecycledParams::recycle_size",
            value: "0".into(),
            fix: "recycle at least one key (K >= 1), or None for 1/8 of the cache",
        });
    }
    Ok(())
}

/// The schedule of section 16, per step and batch element (`[t][b]`), from the un-rotated
/// queries `q_raw: [B, Hq, T, D]`: step 0 is full; a step with `t mod S == 0` is partial when
/// `cos(mean_h q_t, mean_h q_full)` is strictly above the threshold (else full, and it becomes
/// the new `q_full`); every other step is partial. The cosine is computed in f64; a zero mean
/// query makes it undefined and the step full.
pub fn recycled_schedule<T: Element>(
    q_raw: &Tensor4<T>,
    params: &RecycledParams,
) -> Result<Vec<Vec<StepKind>>, RefError> {
    check_params(params)?;
    q_raw.check_len("q_raw")?;
    let (bn, steps) = (q_raw.shape.batch, q_raw.shape.seq);
    let mut kinds = vec![vec![StepKind::Partial; bn]; steps];
    for b in 0..bn {
        let mut q_full = Vec::new();
        for (t, row) in kinds.iter_mut().enumerate() {
            let full = t == 0
                || (t % params.stride == 0
                    && !cosine(&mean_query(q_raw, b, t), &q_full)
                        .is_some_and(|c| c > params.threshold));
            if full {
                q_full = mean_query(q_raw, b, t);
                row[b] = StepKind::Full;
            }
        }
    }
    Ok(kinds)
}

/// Recycled Attention (section 16) over `T` decode steps.
///
/// `q: [B, Hq, T, D]` are the rotated queries (attention), `q_raw` the same queries
/// un-rotated (the similarity test), `k: [B, Hkv, Sk, D]` the rotated key cache and
/// `v: [B, Hkv, Sk, Dv]`; step `t` is query row `t` at position `p_t = Sk - T + t` and sees
/// keys `j <= p_t` (its own included), as in section 0.
///
/// - Full step: exact attention over `j <= p_t`; the recycled set of each kv head is
///   `top_keys` of section 14 (`reduce = max`, max-pool `params.pool`, `K` keys) of that
///   step's weights over `j <= p_t`, kept in descending score order.
/// - Partial step: exact attention over the recycled set plus every key appended since the
///   last full step; when both together exceed `K`, the recycled keys with the lowest score
///   are dropped first (ties: the higher index first, the reverse of the `top_keys` order);
///   new keys are never dropped, even past `K`.
///
/// Every step's attention (and the statistics of full steps) use `opts`; the schedule is
/// [`recycled_schedule`]. Returns one [`RecycledStep`] per step.
pub fn recycled_attention<T: Element>(
    q: &Tensor4<T>,
    q_raw: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &RecycledParams,
    opts: &AttnOptions,
) -> Result<Vec<RecycledStep>, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_le_sk("recycled")?;
    q_raw.check_len("q_raw")?;
    if q_raw.shape != q.shape {
        return Err(RefError::ShapeMismatch {
            field: "q_raw.shape",
            expected: format!("{:?} (the shape of q)", q.shape),
            got: q_raw.shape.numel(),
            fix: "pass the un-rotated queries of the same steps, [B, Hq, T, D]",
        });
    }
    let kinds = recycled_schedule(q_raw, params)?;
    let steps = dims.sq;
    let first_pos = dims.sk - steps;
    let k_size = params.recycle_size.unwrap_or(((first_pos + 1) / 8).max(1));
    let stats = StatsParams {
        reduce: StatReduce::Max,
        pool: Some(params.pool),
        top_k: k_size,
    };
    let (hq, hkv, group) = (dims.hq, dims.hkv, dims.hq / dims.hkv);
    let mut results: Vec<RecycledStep> = (0..steps)
        .map(|t| RecycledStep {
            kinds: kinds[t].clone(),
            keys: vec![Vec::new(); dims.b * hkv],
            keys_read: 0,
            recycled: vec![Vec::new(); dims.b * hkv],
            out: AttnOutput::empty(Shape4::new(dims.b, hq, 1, dims.dv)),
        })
        .collect();
    for b in 0..dims.b {
        let (kb, vb) = (slice_batch(k, b, 0..dims.sk), slice_batch(v, b, 0..dims.sk));
        // Per kv head: the recycled keys in descending score order, and the last full position.
        let mut recycled: Vec<Vec<usize>> = vec![Vec::new(); hkv];
        let mut last_full = 0;
        for (t, res) in results.iter_mut().enumerate() {
            let pos = first_pos + t;
            let qt = slice_batch(q, b, t..t + 1);
            let (out, sets) = match res.kinds[b] {
                StepKind::Full => {
                    let (kp, vp) = (prefix(&kb, pos + 1)?, prefix(&vb, pos + 1)?);
                    let (out, st) =
                        attention_stats(&qt, &kp, &vp, &Mask::Full, &ScoreMod::None, &stats, opts)?;
                    for (g, set) in recycled.iter_mut().enumerate() {
                        *set = st
                            .top(0, g)
                            .iter()
                            .filter_map(|&j| usize::try_from(j).ok())
                            .collect();
                    }
                    last_full = pos;
                    (out, vec![(0..=pos).collect::<Vec<usize>>(); hkv])
                }
                StepKind::Partial => {
                    let new = last_full + 1..pos + 1;
                    let keep = k_size.saturating_sub(new.len());
                    let sets: Vec<Vec<usize>> = recycled
                        .iter()
                        .map(|r| {
                            let mut s: Vec<usize> = r.iter().take(keep).copied().collect();
                            s.extend(new.clone());
                            s.sort_unstable();
                            s
                        })
                        .collect();
                    let per_head: KeySets = (0..hq).map(|h| sets[h / group].clone()).collect();
                    let out = attention_over_keys(&qt, &kb, &vb, &per_head, opts)?;
                    (out, sets)
                }
            };
            for h in 0..hq {
                let r = b * hq + h;
                res.out.out[r * dims.dv..(r + 1) * dims.dv].copy_from_slice(out.row(0, h, 0));
                res.out.lse[r] = out.lse_at(0, h, 0);
            }
            for (g, set) in sets.into_iter().enumerate() {
                res.keys_read += set.len();
                res.keys[b * hkv + g] = set;
                res.recycled[b * hkv + g].clone_from(&recycled[g]);
            }
        }
    }
    Ok(results)
}
