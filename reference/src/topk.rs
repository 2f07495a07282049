//! Top-k retrieval attention for decoding (variants.md section 9): a static window `W`
//! (sink and recent keys) plus the `k` best-scoring other keys `R`.
//!
//! ```
//! use attnforge_reference::{topk_attention, AttnOptions, Shape4, Tensor4, TopkParams};
//! let q = Tensor4::from_fn(Shape4::new(1, 1, 1, 2), |_, _, _, d| d as f32);
//! let k = Tensor4::from_fn(Shape4::new(1, 1, 10, 2), |_, _, s, d| (s * (d + 1)) as f32 * 0.1);
//! let p = TopkParams { start: 1, end: 2, k: 3 };
//! let r = topk_attention(&q, &k, &k, &p, &AttnOptions::reference())?;
//! assert!(r.lse[0].is_finite());
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use crate::core::{check_key_sets, check_qkv, dispatch, dot, keys_impl, Dims, KeySets};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::landmark::top_k_by;
use crate::tensor::{AttnOptions, AttnOutput, Precision, Tensor4};

/// Top-k retrieval parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopkParams {
    /// `S_start`: the first keys always attended.
    pub start: usize,
    /// `S_end`: the keys ending at `p(i)` always attended.
    pub end: usize,
    /// Retrieved keys per query head and row (>= 1).
    pub k: usize,
}

/// The static set `W` and the retrieved set `R` per row (indexed `[(b * Hq + h) * Sq + i]`,
/// ascending, disjoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopkSets {
    /// `W`: keys `j <= p(i)` with `j < S_start` or `j > p(i) - S_end`.
    pub static_keys: KeySets,
    /// `R`: the `k` keys with the largest `dot(q, k_j)` among the other `j <= p(i)`
    /// (ties: lower index).
    pub retrieved: KeySets,
}

fn sets_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    dims: &Dims,
    p: &TopkParams,
) -> TopkSets {
    let (qa, ka) = (q.to_acc::<A>(), k.to_acc::<A>());
    let rows = dims.b * dims.hq * dims.sq;
    let mut sets = TopkSets {
        static_keys: Vec::with_capacity(rows),
        retrieved: Vec::with_capacity(rows),
    };
    for b in 0..dims.b {
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            for i in 0..dims.sq {
                let pos = dims.qpos(i) as usize;
                let in_w = |j: usize| j < p.start || j + p.end > pos;
                let w: Vec<usize> = (0..=pos).filter(|&j| in_w(j)).collect();
                let others: Vec<usize> = (0..=pos).filter(|&j| !in_w(j)).collect();
                let qr = qa.row(b, h, i);
                let r = top_k_by(&others, p.k, |j| dot(qr, ka.row(b, kh, j)));
                sets.static_keys.push(w);
                sets.retrieved.push(r);
            }
        }
    }
    sets
}

fn topk_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    p: &TopkParams,
    scale: f64,
) -> Result<AttnOutput, RefError> {
    let sets = sets_impl::<T, A>(q, k, dims, p);
    let union: KeySets = sets
        .static_keys
        .into_iter()
        .zip(sets.retrieved)
        .map(|(mut w, r)| {
            w.extend(r);
            w.sort_unstable();
            w
        })
        .collect();
    check_key_sets(dims, &union)?;
    Ok(keys_impl::<T, A>(q, k, v, dims, &union, scale))
}

fn check_topk<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    p: &TopkParams,
) -> Result<Dims, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_le_sk("topk")?;
    if p.k == 0 {
        return Err(RefError::InvalidParam {
            field: "TopkParams::k",
            value: "0".into(),
            fix: "retrieve at least one key (k >= 1); for the static window alone use attention_over_keys",
        });
    }
    Ok(dims)
}

/// The sets `W` and `R` of section 9, ranked in `precision`.
pub fn topk_key_sets<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &TopkParams,
    precision: Precision,
) -> Result<TopkSets, RefError> {
    let dims = check_topk(q, k, v, params)?;
    Ok(match precision {
        Precision::F64 => sets_impl::<T, f64>(q, k, &dims, params),
        Precision::Naive => sets_impl::<T, f32>(q, k, &dims, params),
    })
}

/// Top-k retrieval attention (section 9): exact attention (scale `1/sqrt(D)` by default)
/// over `W U R`, bottom-right aligned (`Sq <= Sk`; query row `i` uses keys `j <= p(i)`).
/// Merging separate results over `W` and `R` with [`crate::lse_merge`] gives the same output.
pub fn topk_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &TopkParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_topk(q, k, v, params)?;
    let scale = opts.scale_or(dims.default_scale())?;
    dispatch!(opts, topk_impl::<T>(q, k, v, &dims, params, scale))
}
