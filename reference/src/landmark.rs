//! Landmark attention (variants.md section 6): grouped softmax (training mode) and
//! top-k block retrieval (inference mode).
//!
//! ```
//! use attnforge_reference::{landmark_attention, AttnOptions, LandmarkMode, LandmarkParams, Shape4, Tensor4};
//! let sh = Shape4::new(1, 1, 7, 2);
//! let q = Tensor4::from_fn(sh, |_, _, s, d| (s + d) as f32 * 0.1);
//! let p = LandmarkParams { mem_freq: 2, mode: LandmarkMode::Training };
//! let r = landmark_attention(&q, &q, &q, &p, &AttnOptions::reference())?;
//! assert!(r.lse.iter().all(|x| x.is_finite()));
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use crate::core::{check_qkv, collect_rows, dispatch, dot, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::tensor::{AttnOptions, AttnOutput, Tensor4};

/// Training (all earlier blocks) or retrieval (the `top_k` best earlier blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandmarkMode {
    /// Grouped softmax over every earlier block.
    Training,
    /// Only the `top_k >= 1` earlier blocks with the largest landmark scores (ties: lower
    /// block index; every earlier block when there are fewer).
    Retrieval {
        /// Blocks retrieved per query token and head.
        top_k: usize,
    },
}

/// Parameters of landmark attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandmarkParams {
    /// Tokens per block before its landmark (`Bl = mem_freq + 1`), >= 1.
    pub mem_freq: usize,
    /// Training or retrieval.
    pub mode: LandmarkMode,
}

/// Indices of the `k` largest `score(x)` over `items` (ties: earlier item), in ascending order.
pub(crate) fn top_k_by<A: Acc>(
    items: &[usize],
    k: usize,
    score: impl Fn(usize) -> A,
) -> Vec<usize> {
    let mut idx: Vec<usize> = items.to_vec();
    // Stable sort by descending score keeps lower indices first among ties.
    idx.sort_by(|&a, &b| {
        score(b)
            .partial_cmp(&score(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

fn landmark_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    p: &LandmarkParams,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let scale = A::of(scale);
    let bl = p.mem_freq + 1;
    collect_rows::<A, T>(dims.out_shape(), |b, h, i| {
        let kh = dims.kv_head(h);
        let pos = dims.qpos(i) as usize;
        let qr = qa.row(b, h, i);
        let s: Vec<A> = (0..=pos)
            .map(|j| scale * dot(qr, ka.row(b, kh, j)))
            .collect();
        let c = pos / bl;
        let lmk = |blk: usize| blk * bl + bl - 1;
        let earlier: Vec<usize> = (0..c).collect();
        let blocks = match p.mode {
            LandmarkMode::Training => earlier,
            LandmarkMode::Retrieval { top_k } => top_k_by(&earlier, top_k, |blk| s[lmk(blk)]),
        };
        let own: Vec<usize> = (c * bl..=pos).filter(|&j| j % bl != bl - 1).collect();
        // Top-level softmax over Main = chosen landmarks + own-block tokens.
        let m = blocks
            .iter()
            .map(|&blk| s[lmk(blk)])
            .chain(own.iter().map(|&j| s[j]))
            .fold(A::NEG_INF, |a, x| a.max(x));
        let mut z = A::ZERO;
        let mut out = vec![A::ZERO; dims.dv];
        let add = |u: A, j: usize, out: &mut [A]| {
            let u = u.round_elem::<T>();
            for (o, x) in out.iter_mut().zip(va.row(b, kh, j)) {
                *o += u * *x;
            }
        };
        for &j in &own {
            let e = (s[j] - m).exp();
            z += e;
            add(e, j, &mut out);
        }
        for &blk in &blocks {
            let top = (s[lmk(blk)] - m).exp();
            z += top;
            let members = blk * bl..blk * bl + bl - 1;
            let mb = members.clone().fold(A::NEG_INF, |a, j| a.max(s[j]));
            let zb = members.clone().fold(A::ZERO, |a, j| a + (s[j] - mb).exp());
            for j in members {
                add(top * (s[j] - mb).exp() / zb, j, &mut out);
            }
        }
        for o in &mut out {
            *o = *o / z;
        }
        (out, m + z.ln())
    })
}

/// Landmark attention (section 6). Block size `Bl = mem_freq + 1`, the last token of each
/// block is its landmark; causal; the query's block comes from `p(i)`, so `Sq <= Sk` is
/// allowed in both modes. `lse_i = ln Z` (the top-level sum). Landmark values are never read.
pub fn landmark_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &LandmarkParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_le_sk("landmark")?;
    if params.mem_freq == 0 {
        return Err(RefError::InvalidParam {
            field: "LandmarkParams::mem_freq",
            value: "0".into(),
            fix: "mem_freq must be >= 1 (block size mem_freq + 1)",
        });
    }
    if params.mode == (LandmarkMode::Retrieval { top_k: 0 }) {
        return Err(RefError::InvalidParam {
            field: "LandmarkMode::Retrieval::top_k",
            value: "0".into(),
            fix: "retrieve at least one block (top_k >= 1), or use Training mode",
        });
    }
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(
        opts,
        landmark_impl::<T>(q, k, v, &dims, params, scale)
    ))
}
