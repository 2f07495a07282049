//! LongHeads (variants.md section 15): chunk summaries with in-chunk RoPE, per-query chunk
//! selection (forced chunks `0, c-1, c`, ties by lower index) and attention over the selected
//! chunks at compressed RoPE positions, for prefill rows and for decoding rows.
//!
//! ```
//! use attnforge_reference::*;
//! let sh = Shape4::new(1, 1, 11, 4);
//! let x = Tensor4::from_fn(sh, |_, _, s, d| ((s * 3 + d) % 7) as f32 * 0.2 - 0.5);
//! let p = LongHeadsParams { chunk: 2, chunks_per_query: 3, begin: 4, theta: 100.0 };
//! let r = longheads_summaries(&x, &x, &x, &p, Precision::F64)?;
//! assert_eq!(r.shape, Shape4::new(1, 1, 5, 4)); // five complete chunks of 2
//! let sel = longheads_chunks(&x, &r, 11, &p, Precision::F64)?;
//! assert_eq!(sel[10], vec![0, 4, 5]); // t = 10: own chunk 5 (token 10 only), 4 and 0; M - 3 = 0 more
//! let out = longheads_prefill(&x, &x, &x, &p, &AttnOptions::reference())?;
//! assert!(out.lse.iter().all(|l| l.is_finite()));
//! # Ok::<(), RefError>(())
//! ```

use crate::core::{check_qkv, collect_rows, dispatch, dot, softmax_row, Dims};
use crate::element::{Acc, Element};
use crate::error::RefError;
use crate::landmark::top_k_by;
use crate::lm_infinite::rope_acc;
use crate::tensor::{AttnOptions, AttnOutput, Dense, Precision, Shape4, Tensor4};

/// Parameters of LongHeads (section 15), with the official defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LongHeadsParams {
    /// Chunk size `w` (>= 1; default 256): chunk `c` is tokens `[c w, (c + 1) w)`.
    pub chunk: usize,
    /// Chunks per query `M` (>= 3; default 16), the forced chunks `0, c-1, c` included.
    pub chunks_per_query: usize,
    /// Begin length `B` (a positive multiple of `w`; default 4096): queries at `t < B` use
    /// plain causal attention at true positions.
    pub begin: usize,
    /// RoPE base theta (default 10000).
    pub theta: f64,
}

impl Default for LongHeadsParams {
    /// `w = 256`, `M = 16`, `B = 4096`, `theta = 10000`.
    fn default() -> Self {
        Self {
            chunk: 256,
            chunks_per_query: 16,
            begin: 4096,
            theta: 10000.0,
        }
    }
}

fn check_params(p: &LongHeadsParams, d: usize) -> Result<(), RefError> {
    let bad = |field, value: String, fix| Err(RefError::InvalidParam { field, value, fix });
    if p.chunk == 0 {
        return bad(
            "LongHeadsParams::chunk",
            "0".into(),
            "the chunk size w must be >= 1 (default 256)",
        );
    }
    if p.chunks_per_query < 3 {
        return bad(
            "LongHeadsParams::chunks_per_query",
            p.chunks_per_query.to_string(),
            "M must be >= 3: chunks 0, c-1 and c are always selected (default 16)",
        );
    }
    if p.begin == 0 || !p.begin.is_multiple_of(p.chunk) {
        return bad(
            "LongHeadsParams::begin",
            p.begin.to_string(),
            "the begin length B must be a positive multiple of the chunk size w (default 4096)",
        );
    }
    if !(p.theta.is_finite() && p.theta > 0.0) {
        return bad(
            "LongHeadsParams::theta",
            p.theta.to_string(),
            "the RoPE base must be finite and > 0 (default 10000)",
        );
    }
    if d % 2 == 1 {
        return bad(
            "q.dim",
            d.to_string(),
            "half-split RoPE needs an even head dimension D",
        );
    }
    Ok(())
}

/// `rope(x, t)` rounded to the input dtype `T`, the rotated-operand contract of section 5
/// (identity rounding in f64 mode).
fn rope_elem<A: Acc, T: Element>(x: &[A], t: usize, theta: A) -> Vec<A> {
    rope_acc(x, t as i64, theta)
        .into_iter()
        .map(|y| y.round_elem::<T>())
        .collect()
}

fn summaries_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    dims: &Dims,
    p: &LongHeadsParams,
) -> Tensor4<f64> {
    let (qa, ka, va) = (q.to_acc::<A>(), k.to_acc::<A>(), v.to_acc::<A>());
    let (w, theta) = (p.chunk, A::of(p.theta));
    let n_chunks = dims.sk / w;
    let inv = A::of(dims.default_scale());
    let mut data = Vec::with_capacity(dims.b * dims.hq * n_chunks * dims.d);
    for b in 0..dims.b {
        for h in 0..dims.hq {
            let kh = dims.kv_head(h);
            for c in 0..n_chunks {
                let tokens = c * w..(c + 1) * w;
                let qt: Vec<Vec<A>> = tokens
                    .clone()
                    .map(|i| rope_elem::<A, T>(qa.row(b, h, i), i - c * w, theta))
                    .collect();
                let kt: Vec<Vec<A>> = tokens
                    .clone()
                    .map(|i| rope_elem::<A, T>(ka.row(b, kh, i), i - c * w, theta))
                    .collect();
                // o_i: non-causal attention inside the chunk; cbar: their mean.
                let mut cbar = vec![A::ZERO; dims.d];
                for qi in &qt {
                    let entries: Vec<(A, &[A])> = tokens
                        .clone()
                        .zip(&kt)
                        .map(|(i, kr)| (inv * dot(qi, kr), va.row(b, kh, i)))
                        .collect();
                    let (o, _) = softmax_row::<A, T>(&entries, dims.d);
                    for (m, x) in cbar.iter_mut().zip(o) {
                        *m += x;
                    }
                }
                let len = A::of(w as f64);
                for m in &mut cbar {
                    *m = *m / len;
                }
                // r_c: the softmax(cbar . kt_i / sqrt(D))-weighted sum of the rotated keys.
                let entries: Vec<(A, &[A])> = kt
                    .iter()
                    .map(|kr| (inv * dot(&cbar, kr), kr.as_slice()))
                    .collect();
                let (r, _) = softmax_row::<A, T>(&entries, dims.d);
                data.extend(r.into_iter().map(|x| x.f64()));
            }
        }
    }
    Tensor4 {
        shape: Shape4::new(dims.b, dims.hq, n_chunks, dims.d),
        strides: Shape4::new(dims.b, dims.hq, n_chunks, dims.d).contiguous_strides(),
        data,
    }
}

/// The chunk summaries `r: [B, Hq, n_chunks, D]` of section 15 (`n_chunks = floor(Sk / w)`,
/// every complete chunk), from the prefill queries (`Sq == Sk`) and un-rotated k, v
/// (`Dv == D`). `r_c = sum_{i in c} softmax_i(cbar . kt_i / sqrt(D)) kt_i` with `kt_i` the key
/// rotated at `i mod w` and `cbar` the mean over the chunk of the non-causal in-chunk attention
/// outputs of the queries rotated at `i mod w`; always scale `1/sqrt(D)`.
///
/// [`Precision::Naive`] computes in f32, rounds the rotated q and k to the input dtype (as
/// section 5) and the probabilities to it before the value product, and keeps `r` in f32.
pub fn longheads_summaries<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &LongHeadsParams,
    precision: Precision,
) -> Result<Tensor4<f64>, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_eq_sk("longheads summaries (pass the prefill queries of every position)")?;
    check_params(params, dims.d)?;
    if dims.dv != dims.d {
        return Err(RefError::ShapeMismatch {
            field: "v.dim",
            expected: format!("D = {}", dims.d),
            got: dims.dv,
            fix: "LongHeads chunk summaries need Dv == D",
        });
    }
    Ok(match precision {
        Precision::F64 => summaries_impl::<T, f64>(q, k, v, &dims, params),
        Precision::Naive => summaries_impl::<T, f32>(q, k, v, &dims, params),
    })
}

/// Selected chunks of the query at position `t` (ascending).
fn select<A: Acc>(
    qr: &[A],
    r: &Dense<A>,
    b: usize,
    h: usize,
    t: usize,
    p: &LongHeadsParams,
) -> Vec<usize> {
    let c = t / p.chunk;
    if t < p.begin {
        return (0..=c).collect();
    }
    let cands: Vec<usize> = (1..c.saturating_sub(1)).collect();
    let mut sel = top_k_by(&cands, p.chunks_per_query - 3, |j| dot(qr, r.row(b, h, j)));
    sel.extend([0, c - 1, c]);
    sel.sort_unstable();
    sel.dedup();
    sel
}

fn check_summaries(dims: &Dims, r: &Tensor4<f64>, p: &LongHeadsParams) -> Result<(), RefError> {
    r.check_len("r")?;
    let want = Shape4::new(dims.b, dims.hq, r.shape.seq, dims.d);
    if r.shape != want {
        return Err(RefError::ShapeMismatch {
            field: "r.shape",
            expected: format!("{want:?}"),
            got: r.shape.numel(),
            fix: "pass the summaries [B, Hq, n_chunks, D] of longheads_summaries",
        });
    }
    let last = dims.qpos(dims.sq.saturating_sub(1)).max(0) as usize;
    if dims.sq > 0 && last >= p.begin && last / p.chunk >= 3 && r.shape.seq < last / p.chunk - 1 {
        return Err(RefError::ShapeMismatch {
            field: "r.seq",
            expected: format!(">= {} (chunks 1..=c-2 of the query at position {last})", last / p.chunk - 1),
            got: r.shape.seq,
            fix: "compute the summaries over a prefix that covers every chunk before the query's previous one",
        });
    }
    Ok(())
}

fn chunks_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    r: &Tensor4<f64>,
    dims: &Dims,
    p: &LongHeadsParams,
) -> Vec<Vec<usize>> {
    let qa = q.to_acc::<A>();
    let ra = r.to_acc::<A>();
    let mut sets = Vec::with_capacity(dims.b * dims.hq * dims.sq);
    for b in 0..dims.b {
        for h in 0..dims.hq {
            for i in 0..dims.sq {
                sets.push(select(qa.row(b, h, i), &ra, b, h, dims.qpos(i) as usize, p));
            }
        }
    }
    sets
}

/// The selected chunks (ascending) per query row, indexed `[(b * Hq + h) * Sq + i]`, for
/// rows at positions `t = i + Sk - Sq`: every chunk `0..=floor(t / w)` when `t < B` (plain
/// causal attention); otherwise `{0, c-1, c}` plus the `M - 3` chunks of `[1, c-2]` with the
/// largest `dot(q_t, r_j)` (un-rotated q, no scale; ties: lower index), ranked in `precision`.
pub fn longheads_chunks<T: Element>(
    q: &Tensor4<T>,
    r: &Tensor4<f64>,
    seq_k: usize,
    params: &LongHeadsParams,
    precision: Precision,
) -> Result<Vec<Vec<usize>>, RefError> {
    q.check_len("q")?;
    if q.shape.seq > seq_k {
        return Err(RefError::QueryLongerThanKeys {
            variant: "longheads",
            sq: q.shape.seq,
            sk: seq_k,
        });
    }
    let dims = Dims {
        b: q.shape.batch,
        hq: q.shape.heads,
        hkv: q.shape.heads,
        sq: q.shape.seq,
        sk: seq_k,
        d: q.shape.dim,
        dv: q.shape.dim,
    };
    check_params(params, dims.d)?;
    check_summaries(&dims, r, params)?;
    Ok(match precision {
        Precision::F64 => chunks_impl::<T, f64>(q, r, &dims, params),
        Precision::Naive => chunks_impl::<T, f32>(q, r, &dims, params),
    })
}

fn attention_impl<T: Element, A: Acc>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    r: &Tensor4<f64>,
    dims: &Dims,
    p: &LongHeadsParams,
    scale: f64,
) -> AttnOutput {
    let (qa, ka, va, ra) = (
        q.to_acc::<A>(),
        k.to_acc::<A>(),
        v.to_acc::<A>(),
        r.to_acc::<A>(),
    );
    let (scale, theta, w) = (A::of(scale), A::of(p.theta), p.chunk);
    collect_rows::<A, T>(dims.out_shape(), |b, h, i| {
        let kh = dims.kv_head(h);
        let t = dims.qpos(i) as usize;
        let qr = qa.row(b, h, i);
        let keys: Vec<usize> = select(qr, &ra, b, h, t, p)
            .into_iter()
            .flat_map(|c| c * w..((c + 1) * w).min(t + 1))
            .collect();
        let qt = rope_elem::<A, T>(qr, keys.len() - 1, theta);
        let entries: Vec<(A, &[A])> = keys
            .iter()
            .enumerate()
            .map(|(m, &j)| {
                let kt = rope_elem::<A, T>(ka.row(b, kh, j), m, theta);
                (scale * dot(&qt, &kt), va.row(b, kh, j))
            })
            .collect();
        softmax_row::<A, T>(&entries, dims.dv)
    })
}

/// LongHeads attention (section 15) of query rows at positions `t = i + Sk - Sq` (prefill
/// rows when `Sq == Sk`, decoding rows when `Sq` is small) on **un-rotated** q, k, v, with the
/// summaries `r` of [`longheads_summaries`] (they must cover chunks `1..=c-2` of every row at
/// `t >= B`). The keys are the tokens of the [`longheads_chunks`] selection in ascending
/// order, the own chunk up to `t` inclusive (`n` keys); key number `m` is rotated at position
/// `m`, the query at `n - 1`; exact attention with `opts.scale` (default `1/sqrt(D)`). Rows at
/// `t < B` are plain causal attention at true positions. Needs an even `D`.
///
/// [`Precision::Naive`] rounds the rotated q and k to the input dtype (section 5's contract).
pub fn longheads_attention<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    r: &Tensor4<f64>,
    params: &LongHeadsParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let dims = check_qkv(q, k, v)?;
    dims.require_sq_le_sk("longheads")?;
    check_params(params, dims.d)?;
    check_summaries(&dims, r, params)?;
    let scale = opts.scale_or(dims.default_scale())?;
    Ok(dispatch!(
        opts,
        attention_impl::<T>(q, k, v, r, &dims, params, scale)
    ))
}

/// Prefill (`Sq == Sk`, `Dv == D`): [`longheads_summaries`] in `opts.precision`, then
/// [`longheads_attention`] of every row.
pub fn longheads_prefill<T: Element>(
    q: &Tensor4<T>,
    k: &Tensor4<T>,
    v: &Tensor4<T>,
    params: &LongHeadsParams,
    opts: &AttnOptions,
) -> Result<AttnOutput, RefError> {
    let r = longheads_summaries(q, k, v, params, opts.precision)?;
    longheads_attention(q, k, v, &r, params, opts)
}
