//! Attention statistics outputs (variants.md section 14): `key_mass` per query head,
//! `key_score` per kv head (sum or max over the GQA group, optional max-pool) and `top_keys`.
//!
//! The statistics are a function of the post-softmax weights `P` only. [`attention_stats`]
//! computes `P[i, j] = exp(s'[i, j] - lse_i)` from the same mask and score modification as
//! [`attention`] (sections 1-3 and 11) and the lse that [`attention`] returns; any other
//! variant (block-sparse, LM-Infinite) gets its weights by running it on
//! [`one_hot_values`] and passes them to [`key_stats_from_weights`].
//!
//! ```
//! use attnforge_reference::*;
//! let q = Tensor4::from_fn(Shape4::new(1, 2, 3, 4), |_, h, s, d| (h + s * d) as f32 * 0.1);
//! let k = Tensor4::from_fn(Shape4::new(1, 1, 5, 4), |_, _, s, d| (s + d) as f32 * 0.1);
//! let v = Tensor4::from_fn(Shape4::new(1, 1, 5, 2), |_, _, s, d| (s * 2 + d) as f32);
//! let p = StatsParams { reduce: StatReduce::Max, pool: Some(3), top_k: 2 };
//! let (out, st) = attention_stats(&q, &k, &v, &Mask::Causal, &ScoreMod::None, &p, &AttnOptions::reference())?;
//! assert_eq!(out, attention(&q, &k, &v, &Mask::Causal, &ScoreMod::None, &AttnOptions::reference())?);
//! assert_eq!(st.top_keys.len(), 2);
//! # Ok::<(), RefError>(())
//! ```

use crate::core::{attention, check_qkv, dot, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::mask::{Mask, ScoreMod};
use crate::tensor::{AttnOptions, AttnOutput, Precision, Shape4, Tensor4};

/// How `key_score` combines the `key_mass` of the query heads of one GQA group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatReduce {
    /// Sum over the group (H2O / LazyLLM style).
    #[default]
    Sum,
    /// Maximum over the group (SnapKV / Recycled Attention style).
    Max,
}

/// Which statistics to compute and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsParams {
    /// Reduction of `key_mass` over the query heads of a kv head.
    pub reduce: StatReduce,
    /// Max-pool width `kp` along the keys (odd, >= 1; stride 1, window clipped at both
    /// ends); `None` leaves `key_score` unpooled (the same as `Some(1)`).
    pub pool: Option<usize>,
    /// `K`: entries of `top_keys` per kv head (0: no `top_keys`).
    pub top_k: usize,
}

/// The statistics of one call over its query rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnStats {
    /// Batch size B.
    pub batch: usize,
    /// Query heads Hq.
    pub heads_q: usize,
    /// Kv heads Hkv.
    pub heads_kv: usize,
    /// Keys Sk.
    pub seq_k: usize,
    /// `K` (entries of `top_keys` per kv head).
    pub top_k: usize,
    /// `key_mass[b, h, j] = sum_i P[b, h, i, j]`, `[B, Hq, Sk]`.
    pub key_mass: Vec<f64>,
    /// `key_score[b, g, j]`: reduce of `key_mass` over group `g`, then the max-pool, `[B, Hkv, Sk]`.
    pub key_score: Vec<f64>,
    /// `[B, Hkv, K]`: indices of the `K` largest `key_score` with score > 0, descending
    /// (ties: lower index first), -1 where fewer keys are eligible.
    pub top_keys: Vec<i64>,
}

impl AttnStats {
    /// `key_mass[b, h, :]`.
    pub fn mass(&self, b: usize, h: usize) -> &[f64] {
        let s = (b * self.heads_q + h) * self.seq_k;
        &self.key_mass[s..s + self.seq_k]
    }

    /// `key_score[b, g, :]`.
    pub fn score(&self, b: usize, g: usize) -> &[f64] {
        let s = (b * self.heads_kv + g) * self.seq_k;
        &self.key_score[s..s + self.seq_k]
    }

    /// `top_keys[b, g, :]`.
    pub fn top(&self, b: usize, g: usize) -> &[i64] {
        let s = (b * self.heads_kv + g) * self.top_k;
        &self.top_keys[s..s + self.top_k]
    }
}

fn check_pool(pool: Option<usize>) -> Result<(), RefError> {
    match pool {
        Some(kp) if kp % 2 == 0 => Err(RefError::InvalidParam {
            field: "StatsParams::pool",
            value: kp.to_string(),
            fix: "the max-pool width kp must be odd (a window centred on the key), e.g. 7; None for no pooling",
        }),
        _ => Ok(()),
    }
}

/// 1-D max-pool of odd width `kp` (stride 1, same length, the window clipped at both ends):
/// `y[j] = max_{|j' - j| <= kp / 2, 0 <= j' < len} x[j']`. An even width is an input error.
pub fn max_pool_1d(x: &[f64], kp: usize) -> Result<Vec<f64>, RefError> {
    check_pool(Some(kp))?;
    Ok(pool_impl(x, kp))
}

fn pool_impl<A: Acc>(x: &[A], kp: usize) -> Vec<A> {
    let r = kp / 2;
    (0..x.len())
        .map(|j| {
            let lo = j.saturating_sub(r);
            let hi = (j + r).min(x.len() - 1);
            x[lo..=hi].iter().fold(A::NEG_INF, |m, &y| m.max(y))
        })
        .collect()
}

/// The `k` indices with the largest `scores` among those `> 0`, in descending score (ties:
/// lower index first), padded with -1 to length `k`.
pub fn top_keys(scores: &[f64], k: usize) -> Vec<i64> {
    top_keys_impl(scores, k)
}

fn top_keys_impl<A: Acc>(scores: &[A], k: usize) -> Vec<i64> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&j| scores[j] > A::ZERO).collect();
    // A stable sort by descending score keeps the lower index first among equal scores.
    idx.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out: Vec<i64> = idx.into_iter().take(k).map(|j| j as i64).collect();
    out.resize(k, -1);
    out
}

/// `key_score` and `top_keys` from `key_mass` (`[B, Hq, Sk]`, in accumulator precision).
fn finish<A: Acc>(dims: &Dims, mass: Vec<A>, params: &StatsParams) -> AttnStats {
    let (sk, group) = (dims.sk, dims.hq / dims.hkv);
    let mut key_score = Vec::with_capacity(dims.b * dims.hkv * sk);
    let mut top = Vec::with_capacity(dims.b * dims.hkv * params.top_k);
    for b in 0..dims.b {
        for g in 0..dims.hkv {
            let heads = g * group..(g + 1) * group;
            let row = |h: usize| &mass[(b * dims.hq + h) * sk..(b * dims.hq + h + 1) * sk];
            let reduced: Vec<A> = (0..sk)
                .map(|j| {
                    let vals = heads.clone().map(|h| row(h)[j]);
                    match params.reduce {
                        StatReduce::Sum => vals.fold(A::ZERO, |a, x| a + x),
                        StatReduce::Max => vals.fold(A::NEG_INF, |a, x| a.max(x)),
                    }
                })
                .collect();
            let pooled = match params.pool {
                Some(kp) if kp > 1 => pool_impl(&reduced, kp),
                _ => reduced,
            };
            top.extend(top_keys_impl(&pooled, params.top_k));
            key_score.extend(pooled.iter().map(|x| x.f64()));
        }
    }
    AttnStats {
        batch: dims.b,
        heads_q: dims.hq,
        heads_kv: dims.hkv,
        seq_k: sk,
        top_k: params.top_k,
        key_mass: mass.iter().map(|x| x.f64()).collect(),
        key_score,
        top_keys: top,
    }
}

#[allow(clippy::too_many_arguments)]
fn stats_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    dims: &Dims,
    mask: &Mask,
    score_mod: &ScoreMod,
    scale: f64,
    res: &AttnOutput,
    params: &StatsParams,
) -> AttnStats {
    let (qa, ka) = (q.to_acc::<A>(), k.to_acc::<A>());
    let scale = A::of(scale);
    let mut mass = vec![A::ZERO; dims.b * dims.hq * dims.sk];
    for b in 0..dims.b {
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            let col = &mut mass[(b * dims.hq + h) * dims.sk..(b * dims.hq + h + 1) * dims.sk];
            for i in 0..dims.sq {
                let lse = res.lse_at(b, h, i);
                if lse == f64::NEG_INFINITY {
                    continue;
                }
                let (lse, p, qr) = (A::of(lse), dims.qpos(i), qa.row(b, h, i));
                for (j, m) in col.iter_mut().enumerate() {
                    if mask.allowed(b, h, p, j as i64, dims.sk) {
                        let s =
                            score_mod.apply(scale * dot(qr, ka.row(b, kh, j)), b, h, p, j as i64);
                        *m += (s - lse).exp();
                    }
                }
            }
        }
    }
    finish(dims, mass, params)
}

/// [`attention`] plus the section 14 statistics of its weights, for every mask and score
/// modification [`attention`] supports (sections 1-3 and 11), GQA included.
///
/// `P[i, j] = exp(s'[i, j] - lse_i)` with the lse of the returned output (empty rows
/// contribute nothing). [`Precision::Naive`] computes `P`, the sums and the ranking in f32
/// (as a kernel does), [`Precision::F64`] in f64. The returned output is exactly what
/// [`attention`] returns: asking for statistics never changes `out` or `lse`.
pub fn attention_stats<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    mask: &Mask,
    score_mod: &ScoreMod,
    params: &StatsParams,
    opts: &AttnOptions,
) -> Result<(AttnOutput, AttnStats), RefError> {
    check_pool(params.pool)?;
    let res = attention(q, k, v, mask, score_mod, opts)?;
    let dims = check_qkv(q, k, v)?;
    let scale = opts.scale_or(dims.default_scale())?;
    let st = match opts.precision {
        Precision::F64 => stats_impl::<T, f64>(q, k, &dims, mask, score_mod, scale, &res, params),
        Precision::Naive => stats_impl::<T, f32>(q, k, &dims, mask, score_mod, scale, &res, params),
    };
    Ok((res, st))
}

/// `v[b, g, j, d] = (j == d)` with `Dv = Sk`: run any variant on these values and its `out`
/// is its weight tensor `P: [B, Hq, Sq, Sk]`, ready for [`key_stats_from_weights`].
pub fn one_hot_values<T: Element>(batch: usize, heads_kv: usize, seq_k: usize) -> Tensor4<T> {
    Tensor4::from_fn(Shape4::new(batch, heads_kv, seq_k, seq_k), |_, _, s, d| {
        T::from_f64(if s == d { 1.0 } else { 0.0 })
    })
}

/// The section 14 statistics (in f64) of explicit weights `P: [B, Hq, Sq, Sk]` (the `out`
/// of a variant run on [`one_hot_values`]), for the variants [`attention_stats`] does not
/// cover (block-sparse, LM-Infinite). `heads_kv` must divide `weights.heads`.
pub fn key_stats_from_weights(
    weights: &AttnOutput,
    heads_kv: usize,
    params: &StatsParams,
) -> Result<AttnStats, RefError> {
    check_pool(params.pool)?;
    let sh = weights.shape;
    if heads_kv == 0 || !sh.heads.is_multiple_of(heads_kv) {
        return Err(RefError::HeadsNotDivisible {
            hq: sh.heads,
            hkv: heads_kv,
        });
    }
    if weights.out.len() != sh.numel() {
        return Err(RefError::DataLength {
            field: "weights.out",
            expected: sh.numel(),
            got: weights.out.len(),
        });
    }
    let dims = Dims {
        b: sh.batch,
        hq: sh.heads,
        hkv: heads_kv,
        sq: sh.seq,
        sk: sh.dim,
        d: 1,
        dv: sh.dim,
    };
    let mut mass = vec![0.0f64; dims.b * dims.hq * dims.sk];
    for b in 0..dims.b {
        for h in 0..dims.hq {
            for i in 0..dims.sq {
                for (j, w) in weights.row(b, h, i).iter().enumerate() {
                    mass[(b * dims.hq + h) * dims.sk + j] += w;
                }
            }
        }
    }
    Ok(finish(&dims, mass, params))
}
