//! Core Context Aware attention, CCA (variants.md section 8): pooled core tokens for the
//! distant past plus raw tokens for the local window, in one joint softmax.
//!
//! ```
//! use attnforge_reference::{cca_attention, AttnOptions, CcaParams, Shape4, Tensor4};
//! let x = Tensor4::from_fn(Shape4::new(1, 1, 9, 2), |_, _, s, d| ((s + 2 * d) % 5) as f32 * 0.3);
//! let r = cca_attention(&x, &x, &x, &CcaParams { group: 2, window: 3 }, &AttnOptions::reference())?;
//! assert!(r.lse.iter().all(|l| l.is_finite()));
//! # Ok::<(), attnforge_reference::RefError>(())
//! ```

use crate::core::{check_qkv, collect_rows, dispatch, dot, softmax_row, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::tensor::{AttnOptions, AttnOutput, Tensor4};

/// CCA parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcaParams {
    /// Group size g (>= 1; default 16).
    pub group: usize,
    /// Local window w (default 1024; 0 is allowed).
    pub window: usize,
}

impl Default for CcaParams {
    /// `g = 16`, `w = 1024`.
    fn default() -> Self {
        Self {
            group: 16,
            window: 1024,
        }
    }
}

/// Number of core tokens visible to 0-indexed query `i`: `floor((i + 1 - w) / g)` when
/// `i + 1 > w`, else 0.
pub fn cca_core_count(i: usize, params: &CcaParams) -> usize {
    if i + 1 > params.window {
        (i + 1 - params.window) / params.group
    } else {
        0
    }
}

fn cca_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    params: &CcaParams,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let (scale, pool_scale) = (A::of(scale), A::of(dims.default_scale()));
    let (s, g) = (dims.sq, params.group);
    let groups = s.saturating_sub(params.window) / g;
    // kbar/vbar per (b, h) for every pooled group.
    let mut pooled: Vec<Vec<(Vec<A>, Vec<A>)>> = Vec::with_capacity(dims.b * dims.hq);
    for b in 0..dims.b {
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            let per_head = (0..groups)
                .map(|p| {
                    let ql = qa.row(b, h, (p + 1) * g - 1);
                    let sc: Vec<A> = (0..g)
                        .map(|t| pool_scale * dot(ql, ka.row(b, kh, p * g + t)))
                        .collect();
                    let m = sc.iter().fold(A::NEG_INF, |a, x| a.max(*x));
                    let z = sc.iter().fold(A::ZERO, |a, x| a + (*x - m).exp());
                    let (mut kbar, mut vbar) = (vec![A::ZERO; dims.d], vec![A::ZERO; dims.dv]);
                    for (t, st) in sc.iter().enumerate() {
                        let alpha = (*st - m).exp() / z;
                        for (o, x) in kbar.iter_mut().zip(ka.row(b, kh, p * g + t)) {
                            *o += alpha * *x;
                        }
                        for (o, x) in vbar.iter_mut().zip(va.row(b, kh, p * g + t)) {
                            *o += alpha * *x;
                        }
                    }
                    (kbar, vbar)
                })
                .collect();
            pooled.push(per_head);
        }
    }
    collect_rows::<A, T>(dims.out_shape(), |b, h, i| {
        let kh = dims.kv_head(h);
        let qr = qa.row(b, h, i);
        let n = cca_core_count(i, params);
        let core = &pooled[b * dims.hq + h];
        let mut entries: Vec<(A, &[A])> = core[..n]
            .iter()
            .map(|(kb, vb)| (scale * dot(qr, kb), vb.as_slice()))
            .collect();
        entries.extend((n * g..=i).map(|c| (scale * dot(qr, ka.row(b, kh, c)), va.row(b, kh, c))));
        softmax_row::<A, T>(&entries, dims.dv)
    })
}

/// CCA attention (section 8), per query head after the GQA repeat, causal, `Sq == Sk`.
/// `P = max(0, floor((S - w) / g))` groups are pooled by the group's last query with the
/// fixed scale `1/sqrt(D)`; query `i` attends jointly to core tokens `p < n_i` and raw
/// tokens `n_i * g <= c <= i` ([`cca_core_count`]). Scores use `opts.scale`
/// (default `1/sqrt(D)`). No row is empty.
pub fn cca_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &CcaParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_eq_sk("cca")?;
    if params.group == 0 {
        return Err(RefError::InvalidParam {
            field: "CcaParams::group",
            value: "0".into(),
            fix: "the group size g must be >= 1 (default 16)",
        });
    }
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(
        opts,
        cca_impl::<T>(q, k, v, &dims, params, scale)
    ))
}
