//! The backward pass (variants.md section 12): analytic `dQ`, `dK`, `dV` and the gradients
//! of learnable score parameters, for every variant of sections 1-5 and 11 (element masks,
//! block-sparse lists, score modifications, LM-Infinite), with GQA and `Sq != Sk` where the
//! forward defines them.
//!
//! [`attention_backward`] recomputes the forward (`out`, `lse`) with the forward reference in
//! the same [`Precision`](crate::Precision), then applies the section 12 formulas:
//!
//! - `P[i,j] = exp(s'[i,j] - lse_i)` on allowed entries (0 elsewhere);
//! - `dV_j = sum_i P[i,j] dO_i`, `dP[i,j] = dot(dO_i, v_j)`, `Delta_i = dot(dO_i, out_i)`;
//! - `dS'[i,j] = P[i,j] (dP[i,j] - Delta_i + dlse_i)`;
//! - `dS = dS' * ds'/ds` through the score modification (chains by the chain rule);
//! - `dQ_i = scale sum_j dS[i,j] k_j`, `dK_j = scale sum_i dS[i,j] q_i`;
//! - `dtheta = sum dS' * ds'/dtheta` for learnable score parameters.
//!
//! GQA sums `dK`/`dV` over the query heads of a kv head's group; empty rows contribute
//! nothing (zero `dQ`, never NaN). Everything runs in one fixed loop order, so two calls give
//! bit-identical results.
//!
//! [`Precision::Naive`](crate::Precision::Naive) is the same backward in the kernel's
//! precision (FlashAttention-2's backward): f32 arithmetic, `P` rounded to the input dtype
//! before the `P^T dO` product, `dS` rounded to the input dtype before the `dS K` and
//! `dS^T Q` products, gradients rounded to the input dtype at the end (parameter gradients
//! stay f32). Its distance to the f64 result is the error scale of the tolerance rule.
//!
//! User score functions carry their derivatives ([`DiffScoreFn`], derived by the DSL): the
//! reference does not differentiate code. The backward kernels are not built yet.
//!
//! ```
//! use attnforge_reference::*;
//! let q = Tensor4::from_fn(Shape4::new(1, 2, 3, 4), |_, h, s, d| (h + s * d) as f64 * 0.1);
//! let k = Tensor4::from_fn(Shape4::new(1, 1, 5, 4), |_, _, s, d| (s + d) as f64 * 0.1);
//! let v = Tensor4::from_fn(Shape4::new(1, 1, 5, 2), |_, _, s, d| (s * 2 + d) as f64);
//! let dout = Tensor4::from_fn(Shape4::new(1, 2, 3, 2), |_, _, s, d| (s + d) as f64);
//! let sm = DiffScoreMod::Softcap(20.0);
//! let variant = BackwardVariant::Masked { mask: &Mask::Causal, score_mod: &sm };
//! let g = attention_backward(&q, &k, &v, &dout, None, &variant, &AttnOptions::reference())?;
//! assert_eq!(g.dk.shape, k.shape);
//! assert!(matches!(g.score_params, ScoreParamGrads::Softcap(_)));
//! # Ok::<(), RefError>(())
//! ```

use std::fmt;
use std::sync::Arc;

use crate::block_sparse::{block_sparse_attention, BlockLists};
use crate::core::{attention, check_qkv, dispatch, dot, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::lm_infinite::{
    lm_branch, lm_infinite_attention, rope_acc, rotate_rows, LmBranch, LmInfiniteParams,
};
use crate::mask::{Mask, ScoreMod};
use crate::tensor::{AttnOptions, AttnOutput, Shape4, Tensor4};

/// A user score function or one of its derivatives with learnable parameters:
/// `(score, batch, query head, query position, key position, params) -> value`.
pub type ParamScoreFn = Arc<dyn Fn(f64, usize, usize, i64, i64, &[f64]) -> f64 + Send + Sync>;

/// The parameter derivatives of a user score function at one entry: push `(index, ds'/dtheta)`
/// for every parameter the entry depends on (the vector arrives cleared). Arguments as
/// [`ParamScoreFn`], then the output vector.
pub type ParamGradFn =
    Arc<dyn Fn(f64, usize, usize, i64, i64, &[f64], &mut Vec<(usize, f64)>) + Send + Sync>;

/// A user score function `s' = value(s, b, h, i, j, params)` together with its derivatives,
/// as the DSL derives them symbolically (section 12; `#[attnforge::score(backward)]` gives
/// `<fn>::host_score_diff(&params)`). At a kink the derivative must take the branch the
/// forward took.
#[derive(Clone)]
pub struct DiffScoreFn {
    /// `s'` itself (the forward).
    pub value: ParamScoreFn,
    /// `ds'/ds`.
    pub d_score: ParamScoreFn,
    /// `ds'/dparams[k]`, or `None` when the function has no learnable parameters.
    pub d_params: Option<ParamGradFn>,
    /// The learnable float parameters (e.g. a per-head table), finite.
    pub params: Vec<f64>,
}

impl fmt::Debug for DiffScoreFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiffScoreFn(<fn>, params = {:?})", self.params)
    }
}

impl DiffScoreFn {
    /// A parameter-free function from `value` and its derivative `d_score` in `s`.
    pub fn new(
        value: impl Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync + 'static,
        d_score: impl Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            value: Arc::new(move |s, b, h, i, j, _| value(s, b, h, i, j)),
            d_score: Arc::new(move |s, b, h, i, j, _| d_score(s, b, h, i, j)),
            d_params: None,
            params: Vec::new(),
        }
    }

    /// The same function with other parameter values (for finite differences, or a training step).
    pub fn with_params(&self, params: Vec<f64>) -> Self {
        Self {
            params,
            ..self.clone()
        }
    }
}

/// A differentiable score modification: the section 3 built-ins and user functions with
/// their derivatives. Mirrors [`ScoreMod`]; [`DiffScoreMod::to_score_mod`] is its forward.
#[derive(Clone, Debug, Default)]
pub enum DiffScoreMod {
    /// No modification.
    #[default]
    None,
    /// `softcap(c)`: `s' = c tanh(s / c)`, `c > 0`; `c` is learnable.
    Softcap(f64),
    /// `alibi(slopes)`: `s' = s - slope[h] |p(i) - j|`; the per-query-head slopes are learnable.
    Alibi(Vec<f64>),
    /// A user function with its derivatives.
    Function(DiffScoreFn),
    /// Several modifications applied in order (`s' = m_n(... m_1(s))`).
    Chain(Vec<DiffScoreMod>),
}

impl DiffScoreMod {
    /// The forward [`ScoreMod`] (user functions capture a copy of their parameters).
    pub fn to_score_mod(&self) -> ScoreMod {
        match self {
            DiffScoreMod::None => ScoreMod::None,
            DiffScoreMod::Softcap(c) => ScoreMod::Softcap(*c),
            DiffScoreMod::Alibi(s) => ScoreMod::Alibi(s.clone()),
            DiffScoreMod::Function(f) => {
                let (value, params) = (f.value.clone(), f.params.clone());
                ScoreMod::function(move |s, b, h, i, j| value(s, b, h, i, j, &params))
            }
            DiffScoreMod::Chain(c) => ScoreMod::Chain(c.iter().map(Self::to_score_mod).collect()),
        }
    }

    /// The differentiable form of a built-in [`ScoreMod`]; a [`ScoreMod::Function`] has no
    /// derivative and is an error (wrap it in a [`DiffScoreFn`] instead).
    pub fn from_builtin(score_mod: &ScoreMod) -> Result<Self, RefError> {
        Ok(match score_mod {
            ScoreMod::None => DiffScoreMod::None,
            ScoreMod::Softcap(c) => DiffScoreMod::Softcap(*c),
            ScoreMod::Alibi(s) => DiffScoreMod::Alibi(s.clone()),
            ScoreMod::Function(_) => {
                return Err(RefError::InvalidParam {
                    field: "score_mod",
                    value: "ScoreMod::Function".into(),
                    fix: "the backward needs the derivative of a user score function: pass a DiffScoreMod::Function(DiffScoreFn { value, d_score, .. })",
                })
            }
            ScoreMod::Chain(c) => DiffScoreMod::Chain(
                c.iter()
                    .map(Self::from_builtin)
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Number of learnable parameters (a flat layout in chain order).
    fn n_params(&self, hq: usize) -> usize {
        match self {
            DiffScoreMod::None => 0,
            DiffScoreMod::Softcap(_) => 1,
            DiffScoreMod::Alibi(_) => hq,
            DiffScoreMod::Function(f) => f.params.len(),
            DiffScoreMod::Chain(c) => c.iter().map(|m| m.n_params(hq)).sum(),
        }
    }

    fn validate_params(&self) -> Result<(), RefError> {
        match self {
            DiffScoreMod::Function(f) if f.params.iter().any(|x| !x.is_finite()) => {
                Err(RefError::InvalidParam {
                    field: "DiffScoreFn::params",
                    value: format!("{:?}", f.params),
                    fix: "every learnable parameter must be finite",
                })
            }
            DiffScoreMod::Chain(c) => c.iter().try_for_each(Self::validate_params),
            _ => Ok(()),
        }
    }

    /// The flat parameter gradients as a tree mirroring `self`.
    fn unflatten(&self, flat: &[f64], off: &mut usize) -> ScoreParamGrads {
        let mut take = |n: usize| {
            let v = flat[*off..*off + n].to_vec();
            *off += n;
            v
        };
        match self {
            DiffScoreMod::None => ScoreParamGrads::None,
            DiffScoreMod::Softcap(_) => ScoreParamGrads::Softcap(take(1)[0]),
            DiffScoreMod::Alibi(s) => ScoreParamGrads::Alibi(take(s.len())),
            DiffScoreMod::Function(f) => ScoreParamGrads::Function(take(f.params.len())),
            DiffScoreMod::Chain(c) => {
                ScoreParamGrads::Chain(c.iter().map(|m| m.unflatten(flat, off)).collect())
            }
        }
    }
}

/// Gradients of the learnable score parameters, mirroring the [`DiffScoreMod`] they belong
/// to, summed over batch, heads and entries that share them.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreParamGrads {
    /// No parameters.
    None,
    /// `dL/dc` of a softcap.
    Softcap(f64),
    /// `dL/dslope[h]` per query head.
    Alibi(Vec<f64>),
    /// `dL/dparams[k]` of a user function.
    Function(Vec<f64>),
    /// One entry per chain element.
    Chain(Vec<ScoreParamGrads>),
}

/// What the backward differentiates: the forward variants of sections 1-5 and 11.
#[derive(Debug, Clone, Copy)]
pub enum BackwardVariant<'a> {
    /// [`attention`](crate::attention): any element mask with a score modification.
    Masked {
        /// The mask.
        mask: &'a Mask,
        /// The differentiable score modification.
        score_mod: &'a DiffScoreMod,
    },
    /// [`block_sparse_attention`](crate::block_sparse_attention).
    BlockSparse {
        /// The authoritative block lists.
        lists: &'a BlockLists,
        /// The mask of the partial blocks.
        mask: &'a Mask,
        /// The differentiable score modification.
        score_mod: &'a DiffScoreMod,
    },
    /// [`lm_infinite_attention`](crate::lm_infinite_attention) (gradients flow through RoPE).
    LmInfinite(&'a LmInfiniteParams),
}

impl<'a> From<&'a LmInfiniteParams> for BackwardVariant<'a> {
    /// The LM-Infinite backward of `p` (section 5's scoring through RoPE).
    fn from(p: &'a LmInfiniteParams) -> Self {
        BackwardVariant::LmInfinite(p)
    }
}

/// The result of [`attention_backward`], contiguous, in f64 (naive results hold values
/// rounded to the input dtype; parameter gradients f32 values).
#[derive(Debug, Clone, PartialEq)]
pub struct AttnGrads {
    /// `dL/dq`: `[B, Hq, Sq, D]`.
    pub dq: Tensor4<f64>,
    /// `dL/dk`: `[B, Hkv, Sk, D]` (summed over the query heads of each group).
    pub dk: Tensor4<f64>,
    /// `dL/dv`: `[B, Hkv, Sk, Dv]` (summed over the query heads of each group).
    pub dv: Tensor4<f64>,
    /// Gradients of the learnable score parameters (`None` for LM-Infinite).
    pub score_params: ScoreParamGrads,
    /// The recomputed forward whose `out`/`lse` the backward used.
    pub forward: AttnOutput,
}

/// Which q and k rows a score uses (LM-Infinite's branches; everything else is `Plain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Near,
    Far,
}

fn check_finite<T: Element>(
    data: impl Iterator<Item = T>,
    field: &'static str,
) -> Result<(), RefError> {
    if let Some((n, x)) = data.enumerate().find(|(_, x)| !x.to_f64().is_finite()) {
        return Err(RefError::InvalidParam {
            field,
            value: format!("{} at flat index {n}", x.to_f64()),
            fix: "upstream gradients must be finite; find where the NaN/inf comes from",
        });
    }
    Ok(())
}

fn check_grads<T: Element>(
    dims: &Dims,
    dout: &Tensor4<T>,
    dlse: Option<&[f64]>,
) -> Result<(), RefError> {
    dout.check_len("dout")?;
    let want = dims.out_shape();
    if dout.shape != want {
        let (field, got, expected) = [
            ("dout.batch", dout.shape.batch, want.batch),
            ("dout.heads", dout.shape.heads, want.heads),
            ("dout.seq", dout.shape.seq, want.seq),
            ("dout.dim", dout.shape.dim, want.dim),
        ]
        .into_iter()
        .find(|(_, g, e)| g != e)
        .unwrap_or(("dout", dout.shape.numel(), want.numel()));
        return Err(RefError::ShapeMismatch {
            field,
            expected: expected.to_string(),
            got,
            fix: "dout must have the shape of out: [B, Hq, Sq, Dv]",
        });
    }
    let dd = dout.to_acc::<f64>();
    check_finite(dd.data.into_iter(), "dout")?;
    if let Some(dl) = dlse {
        let rows = dims.b * dims.hq * dims.sq;
        if dl.len() != rows {
            return Err(RefError::DataLength {
                field: "dlse",
                expected: rows,
                got: dl.len(),
            });
        }
        check_finite(dl.iter().copied(), "dlse")?;
    }
    Ok(())
}

/// The parameter-gradient layout and the first out-of-range index a user `d_params` produced.
struct ParamSink<'a, A> {
    grads: &'a mut [A],
    scratch: Vec<(usize, f64)>,
    bad_index: Option<usize>,
}

/// Back-propagate `g = dL/ds'` through `diff` (whose forward is `fwd`) at raw score `s`:
/// add the parameter gradients at `off..` and return `dL/ds`.
#[allow(clippy::too_many_arguments)] // the entry coordinates plus the gradient sink
fn backprop<A: Acc>(
    diff: &DiffScoreMod,
    fwd: &ScoreMod,
    s: A,
    (b, h, i, j): (usize, usize, i64, i64),
    g: A,
    off: usize,
    hq: usize,
    sink: &mut ParamSink<'_, A>,
) -> A {
    match (diff, fwd) {
        (DiffScoreMod::Softcap(c), _) => {
            let c = A::of(*c);
            let x = s / c;
            let t = x.tanh();
            let sech2 = A::of(1.0) - t * t;
            sink.grads[off] += g * (t - x * sech2);
            g * sech2
        }
        (DiffScoreMod::Alibi(_), _) => {
            sink.grads[off + h] += -g * A::of((i - j).abs() as f64);
            g
        }
        (DiffScoreMod::Function(f), _) => {
            if let Some(dp) = &f.d_params {
                sink.scratch.clear();
                dp(s.f64(), b, h, i, j, &f.params, &mut sink.scratch);
                for &(n, d) in &sink.scratch {
                    if n < f.params.len() {
                        sink.grads[off + n] += g * A::of(d);
                    } else {
                        sink.bad_index.get_or_insert(n);
                    }
                }
            }
            g * A::of((f.d_score)(s.f64(), b, h, i, j, &f.params))
        }
        (DiffScoreMod::Chain(ds), ScoreMod::Chain(fs)) => {
            // Inputs of each link, from the forward's own arithmetic; then the chain rule backwards.
            let mut inputs = Vec::with_capacity(ds.len());
            let mut offs = Vec::with_capacity(ds.len());
            let (mut x, mut o) = (s, off);
            for (d, f) in ds.iter().zip(fs) {
                inputs.push(x);
                offs.push(o);
                x = f.apply(x, b, h, i, j);
                o += d.n_params(hq);
            }
            let mut g = g;
            for n in (0..ds.len()).rev() {
                g = backprop(
                    &ds[n],
                    &fs[n],
                    inputs[n],
                    (b, h, i, j),
                    g,
                    offs[n],
                    hq,
                    sink,
                );
            }
            g
        }
        _ => g,
    }
}

/// Row-major accumulator `[batch, heads, seq, dim]`.
struct Grad<A> {
    shape: Shape4,
    data: Vec<A>,
}

impl<A: Acc> Grad<A> {
    fn new(shape: Shape4) -> Self {
        Self {
            shape,
            data: vec![A::ZERO; shape.numel()],
        }
    }

    fn row_mut(&mut self, b: usize, h: usize, s: usize) -> &mut [A] {
        let sh = self.shape;
        let start = ((b * sh.heads + h) * sh.seq + s) * sh.dim;
        &mut self.data[start..start + sh.dim]
    }

    fn axpy(&mut self, (b, h, s): (usize, usize, usize), a: A, x: &[A]) {
        for (y, x) in self.row_mut(b, h, s).iter_mut().zip(x) {
            *y += a * *x;
        }
    }

    /// `self += R(pos)^T other` row by row: the transpose of RoPE is the rotation at `-pos`.
    fn add_unrotated(&mut self, other: &Grad<A>, pos: &dyn Fn(usize) -> i64, theta: A) {
        let d = self.shape.dim;
        for (n, (y, x)) in self
            .data
            .chunks_mut(d)
            .zip(other.data.chunks(d))
            .enumerate()
        {
            let back = rope_acc(x, -pos(n % self.shape.seq), theta);
            for (y, x) in y.iter_mut().zip(back) {
                *y += x;
            }
        }
    }

    /// Scale by `scale`, round to `T` (naive mode) and widen to f64.
    fn finish<T: Element>(self, scale: A) -> Tensor4<f64> {
        let data = self
            .data
            .into_iter()
            .map(|x| (scale * x).round_elem::<T>().f64())
            .collect();
        Tensor4 {
            shape: self.shape,
            strides: self.shape.contiguous_strides(),
            data,
        }
    }
}

/// Everything the inner loop reads.
struct Inputs<'a, T: Element> {
    q: &'a Tensor4<T>,
    k: &'a Tensor4<T>,
    v: &'a Tensor4<T>,
    dout: &'a Tensor4<T>,
    dlse: Option<&'a [f64]>,
    fwd: &'a AttnOutput,
    scale: f64,
}

/// `dq`, `dk`, `dv` and the flat score-parameter gradients (chain order).
struct RawGrads {
    dq: Tensor4<f64>,
    dk: Tensor4<f64>,
    dv: Tensor4<f64>,
    params: Vec<f64>,
}

/// The variant's differentiable score modification and its forward, if it has one.
type ScoreParts<'a> = Option<(&'a DiffScoreMod, ScoreMod)>;

fn backward_impl<T: Element, A: Acc>(
    inp: &Inputs<'_, T>,
    dims: &Dims,
    variant: &BackwardVariant<'_>,
) -> Result<RawGrads, RefError> {
    let (qa, ka, va) = (
        inp.q.to_acc::<A>(),
        inp.k.to_acc::<A>(),
        inp.v.to_acc::<A>(),
    );
    let doa = inp.dout.to_acc::<A>();
    let scale = A::of(inp.scale);
    let off = dims.sk as i64 - dims.sq as i64;
    let score: ScoreParts<'_> = match variant {
        BackwardVariant::Masked { score_mod, .. }
        | BackwardVariant::BlockSparse { score_mod, .. } => {
            Some((*score_mod, score_mod.to_score_mod()))
        }
        BackwardVariant::LmInfinite(_) => None,
    };
    let n_params = score.as_ref().map_or(0, |(d, _)| d.n_params(dims.hq));
    let mut pgrads = vec![A::ZERO; n_params];
    let mut sink = ParamSink {
        grads: &mut pgrads,
        scratch: Vec::new(),
        bad_index: None,
    };
    // LM-Infinite's rotated copies, as its forward builds them (rounded to T in naive mode).
    let lm = match variant {
        BackwardVariant::LmInfinite(p) => {
            let theta = A::of(p.theta);
            let deff = p.dist_limit.min(dims.sk - 1) as i64;
            Some((
                rotate_rows::<A, T>(&qa, &|i| i as i64 + off, theta),
                rotate_rows::<A, T>(&qa, &|_| deff, theta),
                rotate_rows::<A, T>(&ka, &|j| j as i64, theta),
                (deff, theta),
            ))
        }
        _ => None,
    };
    let kind = |b: usize, h: usize, row: usize, pos: i64, j: usize| -> Option<Kind> {
        match variant {
            BackwardVariant::Masked { mask, .. } => mask
                .allowed(b, h, pos, j as i64, dims.sk)
                .then_some(Kind::Plain),
            BackwardVariant::BlockSparse { lists, mask, .. } => lists
                .allows(mask, b, h, row, pos, j, dims.sk)
                .then_some(Kind::Plain),
            BackwardVariant::LmInfinite(p) => {
                match lm_branch(pos, j as i64, p.global as i64, p.local as i64)? {
                    LmBranch::Near => Some(Kind::Near),
                    LmBranch::Far => Some(Kind::Far),
                }
            }
        }
    };
    let qshape = Shape4::new(dims.b, dims.hq, dims.sq, dims.d);
    let kshape = Shape4::new(dims.b, dims.hkv, dims.sk, dims.d);
    let (mut dq, mut dq_rot, mut dq_far) =
        (Grad::new(qshape), Grad::new(qshape), Grad::new(qshape));
    let (mut dk, mut dk_rot) = (Grad::new(kshape), Grad::new(kshape));
    let mut dv = Grad::new(Shape4::new(dims.b, dims.hkv, dims.sk, dims.dv));
    for b in 0..dims.b {
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            for i in 0..dims.sq {
                let lse = inp.fwd.lse_at(b, h, i);
                if lse == f64::NEG_INFINITY {
                    continue; // empty row: no entry, zero contribution
                }
                let lse = A::of(lse);
                let pos = dims.qpos(i);
                let do_i = doa.row(b, h, i);
                let o_i: Vec<A> = inp.fwd.row(b, h, i).iter().map(|&x| A::of(x)).collect();
                let delta = dot(do_i, &o_i);
                let dl = inp
                    .dlse
                    .map_or(A::ZERO, |d| A::of(d[(b * dims.hq + h) * dims.sq + i]));
                for j in 0..dims.sk {
                    let Some(kd) = kind(b, h, i, pos, j) else {
                        continue;
                    };
                    let (qr, kr): (&[A], &[A]) = match (kd, &lm) {
                        (Kind::Near, Some((q_rot, _, k_rot, _))) => {
                            (q_rot.row(b, h, i), k_rot.row(b, kh, j))
                        }
                        (Kind::Far, Some((_, q_far, _, _))) => {
                            (q_far.row(b, h, i), ka.row(b, kh, j))
                        }
                        _ => (qa.row(b, h, i), ka.row(b, kh, j)),
                    };
                    let s = scale * dot(qr, kr);
                    let s_mod = match &score {
                        Some((_, f)) => f.apply(s, b, h, pos, j as i64),
                        None => s,
                    };
                    let p = (s_mod - lse).exp();
                    if p == A::ZERO {
                        // dS' = 0 exactly; skipping also keeps 0 * inf (a saturated score
                        // function's derivative) from producing NaN.
                        continue;
                    }
                    dv.axpy((b, kh, j), p.round_elem::<T>(), do_i);
                    let dp = dot(do_i, va.row(b, kh, j));
                    let ds_mod = p * (dp - delta + dl);
                    let ds = match &score {
                        Some((d, f)) => backprop(
                            d,
                            f,
                            s,
                            (b, h, pos, j as i64),
                            ds_mod,
                            0,
                            dims.hq,
                            &mut sink,
                        ),
                        None => ds_mod,
                    };
                    let ds = ds.round_elem::<T>();
                    let (dq_acc, dk_acc) = match kd {
                        Kind::Plain => (&mut dq, &mut dk),
                        Kind::Near => (&mut dq_rot, &mut dk_rot),
                        Kind::Far => (&mut dq_far, &mut dk),
                    };
                    dq_acc.axpy((b, h, i), ds, kr);
                    dk_acc.axpy((b, kh, j), ds, qr);
                }
            }
        }
    }
    if let Some(n) = sink.bad_index {
        return Err(RefError::InvalidParam {
            field: "DiffScoreFn::d_params",
            value: format!("index {n}"),
            fix: "d_params must push only indices below params.len() of its own DiffScoreFn",
        });
    }
    if let Some((_, _, _, (deff, theta))) = lm {
        // The rotations are orthogonal: the gradient w.r.t. the un-rotated vector is the
        // transpose (inverse) rotation of the gradient w.r.t. the rotated one.
        dq.add_unrotated(&dq_rot, &|i| i as i64 + off, theta);
        dq.add_unrotated(&dq_far, &|_| deff, theta);
        dk.add_unrotated(&dk_rot, &|j| j as i64, theta);
    }
    let pg = pgrads.iter().map(|x| x.f64()).collect();
    Ok(RawGrads {
        dq: dq.finish::<T>(scale),
        dk: dk.finish::<T>(scale),
        dv: dv.finish::<T>(A::of(1.0)),
        params: pg,
    })
}

/// The section 12 backward of `variant` for the upstream gradients `dout: [B, Hq, Sq, Dv]`
/// and, optionally, `dlse: [B, Hq, Sq]` (row-major); the loss differentiated is
/// `L = sum(dout * out) + sum(dlse * lse)` over non-empty rows.
///
/// The forward (`out`, `lse`) is recomputed with the forward reference in `opts.precision`,
/// which also validates q, k, v and the variant's parameters exactly as the forward does
/// (e.g. `Sq > Sk` only for `full`/`causal` without a score modification). `dout` must match
/// `out`'s shape and be finite; `dlse` must have `B * Hq * Sq` finite entries.
pub fn attention_backward<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dout: &Tensor4<T>,
    dlse: Option<&[f64]>,
    variant: &BackwardVariant<'_>,
    opts: &AttnOptions,
) -> Result<AttnGrads, RefError> {
    let dims = check_qkv(q, k, v)?;
    let forward = match variant {
        BackwardVariant::Masked { mask, score_mod } => {
            score_mod.validate_params()?;
            attention(q, k, v, mask, &score_mod.to_score_mod(), opts)?
        }
        BackwardVariant::BlockSparse {
            lists,
            mask,
            score_mod,
        } => {
            score_mod.validate_params()?;
            block_sparse_attention(q, k, v, lists, mask, &score_mod.to_score_mod(), opts)?
        }
        BackwardVariant::LmInfinite(p) => lm_infinite_attention(q, k, v, p, opts)?,
    };
    check_grads(&dims, dout, dlse)?;
    let scale = opts.scale_or(dims.default_scale())?;
    let RawGrads { dq, dk, dv, params } = {
        let inputs = Inputs {
            q,
            k,
            v,
            dout,
            dlse,
            fwd: &forward,
            scale,
        };
        dispatch!(opts, backward_impl::<T>(&inputs, &dims, variant))?
    };
    let score_params = match variant {
        BackwardVariant::Masked { score_mod, .. }
        | BackwardVariant::BlockSparse { score_mod, .. } => score_mod.unflatten(&params, &mut 0),
        BackwardVariant::LmInfinite(_) => ScoreParamGrads::None,
    };
    Ok(AttnGrads {
        dq,
        dk,
        dv,
        score_params,
        forward,
    })
}
