//! LM-Infinite Lambda attention with a distance limit (variants.md section 5) and the
//! half-split RoPE it uses.
//!
//! ```
//! use attnforge_reference::rope;
//! let x = [1.0, 0.0, 0.0, 1.0];
//! let y = rope(&x, 0, 10000.0);
//! assert_eq!(y, x.to_vec());
//! ```

use crate::core::{check_qkv, dispatch, dot, masked_attention, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::tensor::{AttnOptions, AttnOutput, Dense, Shape4, Tensor4};

/// Parameters of LM-Infinite (section 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmInfiniteParams {
    /// Global (starting) tokens G.
    pub global: usize,
    /// Local window L (keys with `p - j < L` use their true distance).
    pub local: usize,
    /// Distance limit `Dlim`; global keys outside the window use `min(Dlim, Sk - 1)`.
    pub dist_limit: usize,
    /// RoPE base theta (default 10000).
    pub theta: f64,
}

impl LmInfiniteParams {
    /// From named runtime parameters (`global_tokens`, `local_window`, `dist_limit`,
    /// `rope_theta`; negative counts clamp to 0, an absent `rope_theta` is 10000).
    pub fn from_values(params: &[(&str, f64)]) -> Self {
        let get = |n: &str| params.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let count = |n: &str| get(n).unwrap_or(0.0).max(0.0) as usize;
        LmInfiniteParams {
            global: count("global_tokens"),
            local: count("local_window"),
            dist_limit: count("dist_limit"),
            theta: get("rope_theta").unwrap_or(10000.0),
        }
    }
}

impl Default for LmInfiniteParams {
    /// The official code's defaults: `G = 10`, `L = Dlim = 4096`, `theta = 10000`.
    fn default() -> Self {
        Self {
            global: 10,
            local: 4096,
            dist_limit: 4096,
            theta: 10000.0,
        }
    }
}

/// Half-split RoPE in accumulator precision: `(x_m, x_{m+D/2})` rotated by `t * theta^(-2m/D)`.
pub(crate) fn rope_acc<A: Acc>(x: &[A], t: i64, theta: A) -> Vec<A> {
    let d = x.len();
    let half = d / 2;
    let mut out = x.to_vec();
    for m in 0..half {
        let f = theta.powf(A::of(-2.0 * m as f64 / d as f64));
        let ang = A::of(t as f64) * f;
        let (c, s) = (ang.cos(), ang.sin());
        out[m] = x[m] * c - x[m + half] * s;
        out[m + half] = x[m + half] * c + x[m] * s;
    }
    out
}

/// Half-split (LLaMA `rotate_half`) RoPE of `x` (even length D) at position `t`, in f64:
/// `(x_m, x_{m+D/2}) -> (x_m cos(t f_m) - x_{m+D/2} sin(t f_m), x_{m+D/2} cos(t f_m) + x_m sin(t f_m))`
/// with `f_m = theta^(-2m/D)`.
pub fn rope(x: &[f64], t: i64, theta: f64) -> Vec<f64> {
    rope_acc::<f64>(x, t, theta)
}

/// Rotate every row `s` of `x` at position `s + offset` (in f64). Pass
/// `offset = Sk - Sq` for queries so that row `i` sits at `p(i)`.
pub fn rope_tensor<T: Element>(
    x: &Tensor4<T>,
    offset: i64,
    theta: f64,
) -> Result<Tensor4<f64>, RefError> {
    x.check_len("x")?;
    if x.shape.dim & 1 == 1 {
        return Err(RefError::InvalidParam {
            field: "x.dim",
            value: x.shape.dim.to_string(),
            fix: "half-split RoPE needs an even head dimension D",
        });
    }
    let sh: Shape4 = x.shape;
    let mut data = Vec::with_capacity(sh.numel());
    for b in 0..sh.batch {
        for h in 0..sh.heads {
            for s in 0..sh.seq {
                let row: Vec<f64> = (0..sh.dim).map(|d| x.get(b, h, s, d)).collect();
                data.extend(rope(&row, s as i64 + offset, theta));
            }
        }
    }
    Tensor4::from_vec(sh, data)
}

fn lm_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    p: &LmInfiniteParams,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let (scale, theta) = (A::of(scale), A::of(p.theta));
    let deff = p.dist_limit.min(dims.sk - 1) as i64;
    let (g, l) = (p.global as i64, p.local as i64);
    let off = dims.sk as i64 - dims.sq as i64;
    let q_rot = rotate_rows::<A, T>(&qa, &|i| i as i64 + off, theta);
    let q_far = rotate_rows::<A, T>(&qa, &|_| deff, theta);
    let k_rot = rotate_rows::<A, T>(&ka, &|j| j as i64, theta);
    masked_attention::<A, T>(dims, &qa, &ka, &va, |b, h, pos, j, _qr, kr| {
        let i = (pos - off) as usize;
        let kh = dims.kv_head(h);
        match lm_branch(pos, j as i64, g, l)? {
            LmBranch::Near => Some(scale * dot(q_rot.row(b, h, i), k_rot.row(b, kh, j))),
            LmBranch::Far => Some(scale * dot(q_far.row(b, h, i), kr)),
        }
    })
}

/// Which score formula of section 5 an allowed (query position, key) pair uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LmBranch {
    /// `dist < L`: rotated q at `p` against rotated k at `j`.
    Near,
    /// `dist >= L`, global key: q rotated at `Deff` against the un-rotated k.
    Far,
}

/// Section 5's branch for query position `pos` and key `j` with `G = global`, `L = local`;
/// `None` when the key is masked. Shared by the forward and the backward reference.
pub(crate) fn lm_branch(pos: i64, j: i64, global: i64, local: i64) -> Option<LmBranch> {
    if j > pos {
        None
    } else if pos - j < local {
        Some(LmBranch::Near)
    } else if j < global {
        Some(LmBranch::Far)
    } else {
        None
    }
}

/// Every row `n` of `x` rotated at position `pos(n % seq)`. The contract (as FlashAttention's
/// rotary path and HF models): the rotated vectors are rounded to the input dtype `T` before
/// the dot product, as a kernel feeding them to tensor cores does (identity in f64 mode).
pub(crate) fn rotate_rows<A: Acc, T: Element>(
    x: &Dense<A>,
    pos: &dyn Fn(usize) -> i64,
    theta: A,
) -> Dense<A> {
    let mut r = x.clone();
    let sh = x.shape;
    for (n, row) in r.data.chunks_mut(sh.dim).enumerate() {
        let rot = rope_acc(row, pos(n % sh.seq), theta);
        for (y, x) in row.iter_mut().zip(rot) {
            *y = x.round_elem::<T>();
        }
    }
    r
}

/// LM-Infinite (section 5) on **un-rotated** q and k: for query position `p` and key
/// `j <= p`, `dist < L` uses `scale * dot(rope(q, p), rope(k, j))`; else a global key
/// (`j < G`) uses `scale * dot(rope(q, Deff), k_j)` with `Deff = min(Dlim, Sk - 1)`; else
/// the key is masked. Needs an even `D`, `theta > 0` and `Sq <= Sk`.
///
/// Precision contract: the rotated q and k are rounded to the input dtype before the dot
/// product (what FlashAttention's rotary path and HF models do, and what a kernel feeding
/// them to tensor cores does). [`Precision::Naive`](crate::Precision::Naive) rounds the same
/// way (rotation in f32, then to `T`); [`Precision::F64`](crate::Precision::F64) stays exact.
pub fn lm_infinite_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &LmInfiniteParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_le_sk("lm_infinite")?;
    if dims.d & 1 == 1 {
        return Err(RefError::InvalidParam {
            field: "q.dim",
            value: dims.d.to_string(),
            fix: "half-split RoPE needs an even head dimension D",
        });
    }
    if !(params.theta.is_finite() && params.theta > 0.0) {
        return Err(RefError::InvalidParam {
            field: "LmInfiniteParams::theta",
            value: params.theta.to_string(),
            fix: "the RoPE base must be finite and > 0 (default 10000)",
        });
    }
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(opts, lm_impl::<T>(q, k, v, &dims, params, scale)))
}
