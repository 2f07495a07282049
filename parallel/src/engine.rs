//! The per-step attention engine: `(out, lse)` of a query chunk against a key chunk with
//! absolute positions and the mask, and its backward. [`ReferenceEngine`] implements it with
//! `attnforge-reference` (f64, or the naive same-precision path); a simulator or GPU kernel
//! engine implements the same trait.

use std::sync::Arc;

use attnforge_reference::{
    attention, attention_backward, AttnOptions, AttnOutput, BackwardVariant, DiffScoreMod, Element,
    Mask, Precision, ScoreMod, Shape4, Tensor4,
};

use crate::error::CpError;

/// A padding position: the row or key is not part of the sequence (never allowed).
pub const PAD: i64 = i64::MIN;

/// What every step of one context-parallel problem shares.
#[derive(Debug, Clone)]
pub struct StepProblem {
    /// The mask over global positions.
    pub mask: Arc<Mask>,
    /// Global key count `Sk` (doc arrays are indexed with it).
    pub sk: usize,
    /// Score scale.
    pub scale: f64,
}

/// One step's operands: a query chunk and a key chunk (`[B, H, n, D]` contiguous), their
/// global positions (`PAD` for padding), and the global index of the chunk's first query head.
#[derive(Debug, Clone, Copy)]
pub struct StepBlock<'a, T> {
    /// Queries `[B, Hq_local, nq, D]`.
    pub q: &'a Tensor4<T>,
    /// Keys `[B, Hkv_local, nk, D]`.
    pub k: &'a Tensor4<T>,
    /// Values `[B, Hkv_local, nk, Dv]`.
    pub v: &'a Tensor4<T>,
    /// Global position of each query row.
    pub q_pos: &'a [i64],
    /// Global position of each key.
    pub k_pos: &'a [i64],
    /// Global index of local query head 0.
    pub head_offset: usize,
}

/// The upstream gradients of a step's query rows and the rows' final (merged) forward.
#[derive(Debug, Clone, Copy)]
pub struct StepGrad<'a, T> {
    /// `dL/dout` of the query chunk `[B, Hq_local, nq, Dv]`.
    pub dout: &'a Tensor4<T>,
    /// The query chunk's final `out` and `lse` over all keys.
    pub out: &'a AttnOutput,
    /// `dL/dlse` of the query chunk (`[B, Hq_local, nq]`), if any.
    pub dlse: Option<&'a [f64]>,
}

/// A step's gradient contributions, f64, contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct StepGrads {
    /// `[B, Hq_local, nq, D]`.
    pub dq: Tensor4<f64>,
    /// `[B, Hkv_local, nk, D]`.
    pub dk: Tensor4<f64>,
    /// `[B, Hkv_local, nk, Dv]`.
    pub dv: Tensor4<f64>,
}

/// Computes one step of ring or Ulysses attention.
pub trait StepEngine<T: Element>: Sync {
    /// `(out, lse)` of the chunk's query rows over the chunk's keys only (rows with no allowed
    /// key: out 0, lse -inf).
    fn forward(
        &self,
        problem: &StepProblem,
        block: &StepBlock<'_, T>,
    ) -> Result<AttnOutput, CpError>;

    /// The chunk's contribution to `dq`, `dk`, `dv` of the full attention whose final forward
    /// is `grad.out`: with `P = exp(s - lse_final)` and `Delta = dot(dout, out_final)`,
    /// FlashAttention-2's backward restricted to the chunk's keys.
    fn backward(
        &self,
        problem: &StepProblem,
        block: &StepBlock<'_, T>,
        grad: &StepGrad<'_, T>,
    ) -> Result<StepGrads, CpError>;
}

/// The step engine of `attnforge-reference`: [`Precision::F64`] (the oracle) or
/// [`Precision::Naive`] (the kernel's precision).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceEngine {
    /// Arithmetic of every step.
    pub precision: Precision,
}

/// Keys padded so the chunk has at least as many keys as queries (the reference aligns rows
/// bottom-right and accepts `Sq > Sk` only for full/causal); padding keys are never allowed.
struct Padded<T> {
    k: Tensor4<T>,
    v: Tensor4<T>,
    k_pos: Arc<Vec<i64>>,
}

fn pad_keys<T: Element>(block: &StepBlock<'_, T>) -> Padded<T> {
    let nq = block.q.shape.seq;
    let nk = block.k.shape.seq;
    let n = nk.max(nq).max(1);
    let grow = |t: &Tensor4<T>| {
        let sh = Shape4::new(t.shape.batch, t.shape.heads, n, t.shape.dim);
        Tensor4::from_fn(sh, |b, h, s, d| {
            if s < nk {
                T::from_f64(t.get(b, h, s, d))
            } else {
                T::from_f64(0.0)
            }
        })
    };
    let mut k_pos = block.k_pos.to_vec();
    k_pos.resize(n, PAD);
    Padded {
        k: grow(block.k),
        v: grow(block.v),
        k_pos: Arc::new(k_pos),
    }
}

/// The global mask seen through the chunk's local, bottom-right aligned coordinates.
fn local_mask(problem: &StepProblem, block: &StepBlock<'_, impl Element>, nk: usize) -> Mask {
    let mask = problem.mask.clone();
    let q_pos: Arc<Vec<i64>> = Arc::new(block.q_pos.to_vec());
    let k_pos: Arc<Vec<i64>> = Arc::new(block.k_pos.to_vec());
    let offset = nk as i64 - block.q.shape.seq as i64;
    let (sk, head_offset) = (problem.sk, block.head_offset);
    Mask::predicate(move |b, h, p, j| {
        let i = (p - offset) as usize;
        let (qp, kp) = (q_pos[i], k_pos.get(j as usize).copied().unwrap_or(PAD));
        qp != PAD && kp != PAD && mask.allowed(b, h + head_offset, qp, kp, sk)
    })
}

fn check_block<T: Element>(block: &StepBlock<'_, T>) -> Result<(), CpError> {
    if block.q_pos.len() != block.q.shape.seq {
        return Err(crate::error::invalid(
            "StepBlock::q_pos",
            format!(
                "{} positions for {} rows",
                block.q_pos.len(),
                block.q.shape.seq
            ),
            "pass one position per query row",
        ));
    }
    if block.k_pos.len() != block.k.shape.seq {
        return Err(crate::error::invalid(
            "StepBlock::k_pos",
            format!(
                "{} positions for {} keys",
                block.k_pos.len(),
                block.k.shape.seq
            ),
            "pass one position per key",
        ));
    }
    Ok(())
}

impl ReferenceEngine {
    fn opts(&self, problem: &StepProblem) -> AttnOptions {
        AttnOptions {
            scale: Some(problem.scale),
            precision: self.precision,
        }
    }
}

impl<T: Element> StepEngine<T> for ReferenceEngine {
    fn forward(
        &self,
        problem: &StepProblem,
        block: &StepBlock<'_, T>,
    ) -> Result<AttnOutput, CpError> {
        check_block(block)?;
        let padded = pad_keys(block);
        let padded_block = StepBlock {
            k_pos: &padded.k_pos,
            ..*block
        };
        let mask = local_mask(problem, &padded_block, padded.k.shape.seq);
        Ok(attention(
            block.q,
            &padded.k,
            &padded.v,
            &mask,
            &ScoreMod::None,
            &self.opts(problem),
        )?)
    }

    fn backward(
        &self,
        problem: &StepProblem,
        block: &StepBlock<'_, T>,
        grad: &StepGrad<'_, T>,
    ) -> Result<StepGrads, CpError> {
        // The reference backward normalises by the chunk's own lse; rescaling the upstream
        // gradients by w = exp(lse_chunk - lse_final) turns its P into the final P, and
        // dlse_chunk = w (dot(dO, out_chunk) - dot(dO, out_final) + dlse) its Delta into the
        // final Delta (section 12: dS = P (dP - Delta + dlse)).
        let local = StepEngine::<T>::forward(self, problem, block)?;
        let sh = grad.dout.shape;
        let rows = sh.batch * sh.heads * sh.seq;
        if grad.out.lse.len() != rows || local.lse.len() != rows {
            return Err(crate::error::invalid(
                "StepGrad::out",
                format!("{} rows", grad.out.lse.len()),
                "pass the final forward of the step's query rows",
            ));
        }
        let mut w = vec![0.0; rows];
        let mut dlse = vec![0.0; rows];
        for r in 0..rows {
            let (lc, lg) = (local.lse[r], grad.out.lse[r]);
            if lc == f64::NEG_INFINITY || lg == f64::NEG_INFINITY {
                continue;
            }
            w[r] = (lc - lg).exp();
            let (b, h, i) = (r / (sh.heads * sh.seq), (r / sh.seq) % sh.heads, r % sh.seq);
            let (mut dc, mut dg) = (0.0, 0.0);
            for d in 0..sh.dim {
                let g = grad.dout.get(b, h, i, d);
                dc += g * local.out[r * sh.dim + d];
                dg += g * grad.out.out[r * sh.dim + d];
            }
            let up = grad.dlse.map_or(0.0, |x| x[r]);
            dlse[r] = w[r] * (dc - dg + up);
        }
        let dout = Tensor4::from_fn(sh, |b, h, i, d| {
            T::from_f64(w[(b * sh.heads + h) * sh.seq + i] * grad.dout.get(b, h, i, d))
        });
        let padded = pad_keys(block);
        let padded_block = StepBlock {
            k_pos: &padded.k_pos,
            ..*block
        };
        let mask = local_mask(problem, &padded_block, padded.k.shape.seq);
        let sm = DiffScoreMod::None;
        let g = attention_backward(
            block.q,
            &padded.k,
            &padded.v,
            &dout,
            Some(&dlse),
            &BackwardVariant::Masked {
                mask: &mask,
                score_mod: &sm,
            },
            &self.opts(problem),
        )?;
        let nk = block.k.shape.seq;
        let trim = |t: &Tensor4<f64>| {
            let s = Shape4::new(t.shape.batch, t.shape.heads, nk, t.shape.dim);
            Tensor4::from_fn(s, |b, h, j, d| t.get(b, h, j, d))
        };
        Ok(StepGrads {
            dq: g.dq,
            dk: trim(&g.dk),
            dv: trim(&g.dv),
        })
    }
}
