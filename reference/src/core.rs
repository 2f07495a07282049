//! The central masked-attention routine (sections 1-5 all go through it), attention over
//! explicit key sets, and the shared shape checks.
//!
//! ```
//! use attnforge_reference::{attention, AttnOptions, Mask, ScoreMod, Shape4, Tensor4};
//! let q = Tensor4::from_fn(Shape4::new(1, 2, 3, 4), |_, h, s, d| (h + s * d) as f32 * 0.1);
//! let k = Tensor4::from_fn(Shape4::new(1, 1, 5, 4), |_, _, s, d| (s + d) as f32 * 0.1);
//! let v = Tensor4::from_fn(Shape4::new(1, 1, 5, 2), |_, _, s, d| (s * 2 + d) as f32);
//! let r = attention(&q, &k, &v, &Mask::Causal, &ScoreMod::None, &AttnOptions::reference())?;
//! assert_eq!(r.out.len(), 1 * 2 * 3 * 2);
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::mask::{Mask, ScoreMod};
use crate::tensor::{AttnOptions, AttnOutput, Dense, Shape4, Tensor4};

/// Checked problem dimensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
}

impl Dims {
    /// kv head read by query head `h`.
    pub fn kv_head(&self, h: usize) -> usize {
        h / (self.hq / self.hkv)
    }

    /// Absolute position of query row `i`: `i + (Sk - Sq)`.
    pub fn qpos(&self, i: usize) -> i64 {
        i as i64 + self.sk as i64 - self.sq as i64
    }

    pub fn out_shape(&self) -> Shape4 {
        Shape4::new(self.b, self.hq, self.sq, self.dv)
    }

    pub fn default_scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }

    pub fn require_sq_le_sk(&self, variant: &'static str) -> Result<(), RefError> {
        if self.sq > self.sk {
            return Err(RefError::QueryLongerThanKeys {
                variant,
                sq: self.sq,
                sk: self.sk,
            });
        }
        Ok(())
    }

    pub fn require_sq_eq_sk(&self, variant: &'static str) -> Result<(), RefError> {
        if self.sq != self.sk {
            return Err(RefError::LengthsDiffer {
                variant,
                sq: self.sq,
                sk: self.sk,
            });
        }
        Ok(())
    }
}

fn nonzero(x: usize, field: &'static str, fix: &'static str) -> Result<(), RefError> {
    if x == 0 {
        return Err(RefError::ZeroSize { field, fix });
    }
    Ok(())
}

fn same(
    got: usize,
    expected: usize,
    field: &'static str,
    fix: &'static str,
) -> Result<(), RefError> {
    if got != expected {
        return Err(RefError::ShapeMismatch {
            field,
            expected: expected.to_string(),
            got,
            fix,
        });
    }
    Ok(())
}

/// Check `q: [B, Hq, Sq, D]`, `k: [B, Hkv, Sk, D]`, `v: [B, Hkv, Sk, Dv]`.
///
/// Zero sizes: `Sq == 0` is allowed (the result has no rows); `B`, `Hq`, `Hkv`, `D`, `Dv`
/// and `Sk` must be >= 1.
pub(crate) fn check_qkv<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
) -> Result<Dims, RefError> {
    q.check_len("q")?;
    k.check_len("k")?;
    v.check_len("v")?;
    let (qs, ks, vs) = (q.shape, k.shape, v.shape);
    nonzero(qs.batch, "q.batch", "pass at least one batch")?;
    nonzero(qs.heads, "q.heads", "pass at least one query head")?;
    nonzero(ks.heads, "k.heads", "pass at least one kv head")?;
    nonzero(qs.dim, "q.dim", "the head dimension D must be >= 1")?;
    nonzero(vs.dim, "v.dim", "the value dimension Dv must be >= 1")?;
    nonzero(
        ks.seq,
        "k.seq",
        "attention needs at least one key (Sk >= 1); Sq = 0 is allowed",
    )?;
    same(
        ks.batch,
        qs.batch,
        "k.batch",
        "k must have the batch size of q",
    )?;
    same(
        vs.batch,
        qs.batch,
        "v.batch",
        "v must have the batch size of q",
    )?;
    same(
        vs.heads,
        ks.heads,
        "v.heads",
        "v must have as many heads as k",
    )?;
    same(
        vs.seq,
        ks.seq,
        "v.seq",
        "v must have as many positions as k",
    )?;
    same(
        ks.dim,
        qs.dim,
        "k.dim",
        "k must have the head dimension of q",
    )?;
    if qs.heads % ks.heads != 0 {
        return Err(RefError::HeadsNotDivisible {
            hq: qs.heads,
            hkv: ks.heads,
        });
    }
    Ok(Dims {
        b: qs.batch,
        hq: qs.heads,
        hkv: ks.heads,
        sq: qs.seq,
        sk: ks.seq,
        d: qs.dim,
        dv: vs.dim,
    })
}

/// Dot product in accumulator precision (sequential sum).
pub(crate) fn dot<A: Acc>(a: &[A], b: &[A]) -> A {
    let mut s = A::ZERO;
    for (x, y) in a.iter().zip(b) {
        s += *x * *y;
    }
    s
}

/// Softmax-weighted sum of `entries = (score, value row)`: returns `(out, lse)`.
///
/// Max-subtracted; an empty row, or one whose scores are all `-inf`, gives `(0, -inf)`.
/// The unnormalised probabilities are rounded to `T` before the value product (identity
/// in f64 mode), as an mma kernel feeds them in the input dtype.
pub(crate) fn softmax_row<A: Acc, T: Element>(entries: &[(A, &[A])], dv: usize) -> (Vec<A>, A) {
    let mut out = vec![A::ZERO; dv];
    let m = entries.iter().fold(A::NEG_INF, |m, (s, _)| m.max(*s));
    if entries.is_empty() || m == A::NEG_INF {
        return (out, A::NEG_INF);
    }
    let mut l = A::ZERO;
    for (s, v) in entries {
        let p = (*s - m).exp();
        l += p;
        let p = p.round_elem::<T>();
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o += p * *x;
        }
    }
    for o in &mut out {
        *o = *o / l;
    }
    (out, m + l.ln())
}

/// Assemble per-row results into an [`AttnOutput`], rounding `out` to `T` in naive mode.
pub(crate) fn collect_rows<A: Acc, T: Element>(
    shape: Shape4,
    mut row: impl FnMut(usize, usize, usize) -> (Vec<A>, A),
) -> AttnOutput {
    let mut res = AttnOutput::empty(shape);
    let mut r = 0;
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for i in 0..shape.seq {
                let (o, lse) = row(b, h, i);
                for (d, x) in o.iter().enumerate() {
                    res.out[r * shape.dim + d] = x.round_elem::<T>().f64();
                }
                res.lse[r] = lse.f64();
                r += 1;
            }
        }
    }
    res
}

/// Run `f::<f64>` or `f::<f32>` according to the precision.
macro_rules! dispatch {
    ($opts:expr, $f:ident :: <$($t:ty),*> ($($arg:expr),* $(,)?)) => {
        match $opts.precision {
            $crate::tensor::Precision::F64 => $f::<$($t,)* f64>($($arg),*),
            $crate::tensor::Precision::Naive => $f::<$($t,)* f32>($($arg),*),
        }
    };
}
pub(crate) use dispatch;

/// Generic masked attention: `score(b, h, qpos, j, q_row, k_row)` gives the (modified)
/// score of an allowed key, or `None` for a masked one.
pub(crate) fn masked_attention<A: Acc, T: Element>(
    dims: &Dims,
    q: &Dense<A>,
    k: &Dense<A>,
    v: &Dense<A>,
    score: impl Fn(usize, usize, i64, usize, &[A], &[A]) -> Option<A>,
) -> AttnOutput {
    let mut entries = Vec::with_capacity(dims.sk);
    collect_rows::<A, T>(dims.out_shape(), |b, h, i| {
        let kh = dims.kv_head(h);
        let p = dims.qpos(i);
        let qr = q.row(b, h, i);
        entries.clear();
        for j in 0..dims.sk {
            if let Some(s) = score(b, h, p, j, qr, k.row(b, kh, j)) {
                entries.push((s, v.row(b, kh, j)));
            }
        }
        softmax_row::<A, T>(&entries, dims.dv)
    })
}

fn attention_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    mask: &Mask,
    score_mod: &ScoreMod,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let scale = A::of(scale);
    masked_attention::<A, T>(dims, &qa, &ka, &va, |b, h, p, j, qr, kr| {
        let j = j as i64;
        if !mask.allowed(b, h, p, j, dims.sk) {
            return None;
        }
        Some(score_mod.apply(scale * dot(qr, kr), b, h, p, j))
    })
}

/// Masked attention with a score modification: variants.md sections 1 (`Mask::Full`,
/// `Mask::Causal`), 2 and 11 (every static mask and user predicates) and 3 (`ScoreMod`), in any
/// combination, with GQA/MQA (`k.heads` dividing `q.heads`).
///
/// `o_i = sum_{j allowed} softmax_j(s'[i, j]) v_j`, `lse_i = ln sum_{j allowed} exp(s'[i, j])`
/// with `s = scale * dot(q_i, k_j)` (`scale = 1/sqrt(D)` unless `opts.scale`). Only
/// `Full`/`Causal` (and `All`/`Any` of them) accept `Sq > Sk`.
pub fn attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    mask.validate(dims.b, dims.sq, dims.sk)?;
    score_mod.validate(dims.hq)?;
    if dims.sq > dims.sk && score_mod.modifies() {
        return Err(RefError::QueryLongerThanKeys {
            variant: score_mod.name(),
            sq: dims.sq,
            sk: dims.sk,
        });
    }
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(
        opts,
        attention_impl::<T>(q, k, v, &dims, mask, score_mod, scale)
    ))
}

/// Section 1 convenience: `full` (`causal == false`) or bottom-right `causal` attention.
pub fn dense_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    causal: bool,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let mask = if causal { Mask::Causal } else { Mask::Full };
    attention(q, k, v, &mask, &ScoreMod::None, opts)
}

/// Explicit per-row key sets, indexed `[(b * Hq + h) * Sq + i]`; each set lists distinct
/// key indices `< Sk` in any order.
pub type KeySets = Vec<Vec<usize>>;

pub(crate) fn check_key_sets(dims: &Dims, keys: &KeySets) -> Result<(), RefError> {
    let rows = dims.b * dims.hq * dims.sq;
    if keys.len() != rows {
        return Err(RefError::ShapeMismatch {
            field: "keys",
            expected: format!("B * Hq * Sq = {rows}"),
            got: keys.len(),
            fix: "pass one key set per (batch, query head, query row)",
        });
    }
    let mut seen = vec![false; dims.sk];
    for (r, set) in keys.iter().enumerate() {
        let (b, h, i) = (
            r / (dims.hq * dims.sq),
            (r / dims.sq) % dims.hq,
            r % dims.sq,
        );
        for &j in set {
            let problem = if j >= dims.sk {
                "is out of range"
            } else if seen[j] {
                "is listed twice"
            } else {
                seen[j] = true;
                continue;
            };
            return Err(RefError::BadKeySet {
                b,
                h,
                i,
                key: j,
                problem,
            });
        }
        for &j in set {
            seen[j] = false;
        }
    }
    Ok(())
}

pub(crate) fn keys_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    keys: &KeySets,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let scale = A::of(scale);
    let mut sorted = Vec::new();
    collect_rows::<A, T>(dims.out_shape(), |b, h, i| {
        let kh = dims.kv_head(h);
        let qr = qa.row(b, h, i);
        sorted.clear();
        sorted.extend_from_slice(&keys[(b * dims.hq + h) * dims.sq + i]);
        sorted.sort_unstable();
        let entries: Vec<(A, &[A])> = sorted
            .iter()
            .map(|&j| (scale * dot(qr, ka.row(b, kh, j)), va.row(b, kh, j)))
            .collect();
        softmax_row::<A, T>(&entries, dims.dv)
    })
}

/// Exact attention of each query row over an explicit key set (no mask, no score
/// modification): the building block of sections 7 and 9 and of the log-sum-exp merge
/// property. An empty set gives an empty row. Keys are summed in ascending order.
pub fn attention_over_keys<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    keys: &KeySets,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    check_key_sets(&dims, keys)?;
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(opts, keys_impl::<T>(q, k, v, &dims, keys, scale)))
}

/// Merge two partial results over disjoint key sets by log-sum-exp (section 9):
/// `o = (e^{lse_a} o_a + e^{lse_b} o_b) / (e^{lse_a} + e^{lse_b})`, `lse = ln(e^{lse_a} + e^{lse_b})`,
/// computed stably; empty parts contribute nothing.
pub fn lse_merge(a: &AttnOutput, b: &AttnOutput) -> Result<AttnOutput, RefError> {
    if a.shape != b.shape || a.out.len() != a.shape.numel() || b.out.len() != b.shape.numel() {
        return Err(RefError::ShapeMismatch {
            field: "lse_merge b.shape",
            expected: format!("{:?}", a.shape),
            got: b.shape.numel(),
            fix: "merge two results of the same [B, Hq, Sq, Dv] shape",
        });
    }
    let mut res = AttnOutput::empty(a.shape);
    let dv = a.shape.dim;
    for r in 0..a.lse.len() {
        let (la, lb) = (a.lse[r], b.lse[r]);
        let m = la.max(lb);
        if m == f64::NEG_INFINITY {
            continue;
        }
        let (wa, wb) = ((la - m).exp(), (lb - m).exp());
        let z = wa + wb;
        for d in 0..dv {
            let idx = r * dv + d;
            res.out[idx] = (wa * a.out[idx] + wb * b.out[idx]) / z;
        }
        res.lse[r] = m + z.ln();
    }
    Ok(res)
}
