//! Serving layouts (variants.md section 13): packed variable-length batches
//! (`cu_seqlens`), a paged KV cache (`block_table` + `seqlens_k`) and split-KV decoding.
//!
//! None of this changes the attention math: every function here gathers each sequence
//! into a one-batch dense problem and calls [`attention`], so every mask and score
//! modification of the dense reference works unchanged, in f64 and in the naive
//! same-precision path. Sequence `b` has `Sq_b` query rows and `Sk_b` keys; its query row
//! `i` sits at position `p(i) = i + Sk_b - Sq_b`.
//!
//! **Per-sequence arguments.** A user predicate or score function receives the sequence
//! index `b` as its batch argument. Per-token doc-id arrays (`Mask::Document` and the
//! other doc masks) are laid out like the keys: packed `[Tk]` for [`VarlenKv`] (sequence
//! `b` owns `doc[cu_seqlens_k[b] .. cu_seqlens_k[b + 1]]`), and paged
//! `[num_pages * page_size]` for [`PagedKv`] (the id of key `j` of sequence `b` is
//! `doc[block_table[b, j / page_size] * page_size + j % page_size]`, so a shared prefix
//! page shares its ids). The query at position `p(i)` reads the id of key `p(i)`.
//!
//! **Zero lengths.** `Sq_b = 0` gives no rows. `Sk_b = 0` is allowed: with `Sq_b = 0` it
//! gives nothing, with `Sq_b > 0` it is `Sq_b > Sk_b`, defined only for `full`/`causal`
//! without a score modification, and every row is empty (`out = 0`, `lse = -inf`).
//!
//! ```
//! use attnforge_reference::*;
//! // two sequences: 2 queries over 3 keys, then 1 query over 4 keys
//! let q = Packed::from_fn(3, 2, 4, |t, h, d| ((t + h + d) % 5) as f32 * 0.25);
//! let k = Packed::from_fn(7, 1, 4, |t, _, d| ((2 * t + d) % 3) as f32 * 0.5);
//! let v = Packed::from_fn(7, 1, 2, |t, _, d| (t + d) as f32);
//! let kv = VarlenKv { k: &k, v: &v, cu_seqlens_k: &[0, 3, 7] };
//! let r = varlen_attention(&q, &[0, 2, 3], &kv, &Mask::Causal, &ScoreMod::None, &AttnOptions::reference())?;
//! assert_eq!((r.tokens, r.heads, r.dim), (3, 2, 2));
//! # Ok::<(), ServingError>(())
//! ```

use std::ops::Range;

use thiserror::Error;

use crate::core::{attention, lse_merge};
use crate::element::Element;
use crate::error::RefError;
use crate::mask::{Mask, ScoreMod};
use crate::tensor::{AttnOptions, AttnOutput, Shape4, Tensor4};

/// An invalid serving input. Array errors name the array and the index (`block_table[1][3]`)
/// and say how to fix it; errors of one sequence's dense problem carry the sequence.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ServingError {
    /// A layout array (`cu_seqlens_q`, `block_table`, a tensor's shape, ...) is invalid.
    #[error("`{path}`: {message}; fix: {fix}")]
    Input {
        /// The array and index, e.g. `cu_seqlens_k[2]` or `block_table[0][5]`.
        path: String,
        /// What is wrong, with the offending values.
        message: String,
        /// What to do instead.
        fix: String,
    },
    /// Sequence `seq`'s dense problem was rejected by the dense reference (positions and
    /// batch in `source` are those of the one-sequence problem).
    #[error("sequence {seq}: {source}")]
    Sequence {
        /// The sequence index `b`.
        seq: usize,
        /// The dense reference's error.
        source: RefError,
    },
}

impl ServingError {
    fn input(path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        ServingError::Input {
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// The array path of an [`ServingError::Input`] error (`None` for a sequence error).
    pub fn path(&self) -> Option<&str> {
        match self {
            ServingError::Input { path, .. } => Some(path),
            ServingError::Sequence { .. } => None,
        }
    }
}

/// A packed `[tokens, heads, dim]` tensor, contiguous (FlashAttention's varlen layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Packed<T> {
    /// Total rows `T` (the sum of the sequence lengths).
    pub tokens: usize,
    /// Heads.
    pub heads: usize,
    /// Head (or value) dimension.
    pub dim: usize,
    /// `tokens * heads * dim` elements, row-major.
    pub data: Vec<T>,
}

impl<T: Element> Packed<T> {
    /// A packed tensor; errors when `data.len() != tokens * heads * dim`.
    pub fn from_vec(
        tokens: usize,
        heads: usize,
        dim: usize,
        data: Vec<T>,
    ) -> Result<Self, ServingError> {
        let p = Self {
            tokens,
            heads,
            dim,
            data,
        };
        p.check_len("Packed::data")?;
        Ok(p)
    }

    /// A packed tensor filled from `f(token, head, d)`.
    pub fn from_fn(
        tokens: usize,
        heads: usize,
        dim: usize,
        mut f: impl FnMut(usize, usize, usize) -> T,
    ) -> Self {
        let mut data = Vec::with_capacity(tokens * heads * dim);
        for t in 0..tokens {
            for h in 0..heads {
                for d in 0..dim {
                    data.push(f(t, h, d));
                }
            }
        }
        Self {
            tokens,
            heads,
            dim,
            data,
        }
    }

    /// Element `(token, head, d)` widened to f64. Panics out of range (like slice indexing).
    pub fn get(&self, t: usize, h: usize, d: usize) -> f64 {
        self.data[(t * self.heads + h) * self.dim + d].to_f64()
    }

    fn check_len(&self, field: &str) -> Result<(), ServingError> {
        let want = self
            .tokens
            .checked_mul(self.heads)
            .and_then(|x| x.checked_mul(self.dim));
        if want != Some(self.data.len()) {
            return Err(ServingError::input(
                field,
                format!(
                    "holds {} elements but [tokens {}, heads {}, dim {}] needs {}",
                    self.data.len(),
                    self.tokens,
                    self.heads,
                    self.dim,
                    want.map_or("more than usize::MAX".into(), |w| w.to_string())
                ),
                "pass a contiguous [tokens, heads, dim] buffer of that length",
            ));
        }
        Ok(())
    }
}

/// A paged cache `[num_pages, page_size, heads, dim]`, contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct PagedCache<T> {
    /// Number of pages.
    pub num_pages: usize,
    /// Keys per page: a power of two from 1 to 1024.
    pub page_size: usize,
    /// kv heads `Hkv`.
    pub heads: usize,
    /// Head (or value) dimension.
    pub dim: usize,
    /// `num_pages * page_size * heads * dim` elements, row-major.
    pub data: Vec<T>,
}

impl<T: Element> PagedCache<T> {
    /// A cache; errors when `data.len()` does not match the shape.
    pub fn from_vec(
        num_pages: usize,
        page_size: usize,
        heads: usize,
        dim: usize,
        data: Vec<T>,
    ) -> Result<Self, ServingError> {
        let c = Self {
            num_pages,
            page_size,
            heads,
            dim,
            data,
        };
        c.check_len("PagedCache::data")?;
        Ok(c)
    }

    /// A cache filled from `f(page, slot, head, d)`.
    pub fn from_fn(
        num_pages: usize,
        page_size: usize,
        heads: usize,
        dim: usize,
        mut f: impl FnMut(usize, usize, usize, usize) -> T,
    ) -> Self {
        let mut data = Vec::with_capacity(num_pages * page_size * heads * dim);
        for p in 0..num_pages {
            for s in 0..page_size {
                for h in 0..heads {
                    for d in 0..dim {
                        data.push(f(p, s, h, d));
                    }
                }
            }
        }
        Self {
            num_pages,
            page_size,
            heads,
            dim,
            data,
        }
    }

    /// Element `(page, slot, head, d)` widened to f64. Panics out of range.
    pub fn get(&self, page: usize, slot: usize, h: usize, d: usize) -> f64 {
        self.data[self.offset(page, slot, h, d)].to_f64()
    }

    fn offset(&self, page: usize, slot: usize, h: usize, d: usize) -> usize {
        ((page * self.page_size + slot) * self.heads + h) * self.dim + d
    }

    fn check_len(&self, field: &str) -> Result<(), ServingError> {
        let want = self
            .num_pages
            .checked_mul(self.page_size)
            .and_then(|x| x.checked_mul(self.heads))
            .and_then(|x| x.checked_mul(self.dim));
        if want != Some(self.data.len()) {
            return Err(ServingError::input(
                field,
                format!(
                    "holds {} elements but [num_pages {}, page_size {}, heads {}, dim {}] needs {}",
                    self.data.len(),
                    self.num_pages,
                    self.page_size,
                    self.heads,
                    self.dim,
                    want.map_or("more than usize::MAX".into(), |w| w.to_string())
                ),
                "pass a contiguous [num_pages, page_size, heads, dim] buffer of that length",
            ));
        }
        Ok(())
    }
}

/// Packed keys and values: sequence `b` owns key rows `cu_seqlens_k[b] .. cu_seqlens_k[b + 1]`.
#[derive(Debug, Clone, Copy)]
pub struct VarlenKv<'a, T> {
    /// `[Tk, Hkv, D]`.
    pub k: &'a Packed<T>,
    /// `[Tk, Hkv, Dv]`.
    pub v: &'a Packed<T>,
    /// `[B + 1]`: 0, non-decreasing, last entry `Tk`.
    pub cu_seqlens_k: &'a [i32],
}

/// A paged KV cache: key `j` of sequence `b` is slot `j % page_size` of page
/// `block_table[b * max_pages + j / page_size]`. Entries past `ceil(Sk_b / page_size)` in a
/// row are never read (they may be -1).
#[derive(Debug, Clone, Copy)]
pub struct PagedKv<'a, T> {
    /// `[num_pages, page_size, Hkv, D]`.
    pub k_cache: &'a PagedCache<T>,
    /// `[num_pages, page_size, Hkv, Dv]` (same pages and page size as `k_cache`).
    pub v_cache: &'a PagedCache<T>,
    /// `[B, max_pages]`, row-major.
    pub block_table: &'a [i32],
    /// Row width of `block_table`.
    pub max_pages: usize,
    /// `[B]`: keys of each sequence.
    pub seqlens_k: &'a [i32],
}

/// Where the keys of a serving call live.
#[derive(Debug, Clone, Copy)]
pub enum KvLayout<'a, T> {
    /// Packed keys with `cu_seqlens_k`.
    Varlen(VarlenKv<'a, T>),
    /// A paged cache with a block table.
    Paged(PagedKv<'a, T>),
}

/// The packed result of a serving call: `out: [Tq, Hq, Dv]`, `lse: [Hq, Tq]`
/// (FlashAttention's varlen layout), in f64. Empty rows have `out = 0`, `lse = -inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct VarlenOutput {
    /// `[tokens, heads, dim]` values.
    pub out: Vec<f64>,
    /// `[heads, tokens]` log-sum-exp of the allowed (modified) scores.
    pub lse: Vec<f64>,
    /// Query rows `Tq`.
    pub tokens: usize,
    /// Query heads `Hq`.
    pub heads: usize,
    /// Value dimension `Dv`.
    pub dim: usize,
}

impl VarlenOutput {
    /// All rows empty.
    pub fn empty(tokens: usize, heads: usize, dim: usize) -> Self {
        Self {
            out: vec![0.0; tokens * heads * dim],
            lse: vec![f64::NEG_INFINITY; tokens * heads],
            tokens,
            heads,
            dim,
        }
    }

    /// Output row of token `t`, head `h` (length `Dv`).
    pub fn row(&self, t: usize, h: usize) -> &[f64] {
        let start = (t * self.heads + h) * self.dim;
        &self.out[start..start + self.dim]
    }

    /// Log-sum-exp of token `t`, head `h`.
    pub fn lse_at(&self, t: usize, h: usize) -> f64 {
        self.lse[h * self.tokens + t]
    }

    /// The same values as an [`AttnOutput`] of shape `[1, Hq, Tq, Dv]` (for
    /// [`crate::assert_close`] and [`lse_merge`]).
    pub fn to_attn_output(&self) -> AttnOutput {
        let shape = Shape4::new(1, self.heads, self.tokens, self.dim);
        let mut r = AttnOutput::empty(shape);
        self.copy_rows(0..self.tokens, &mut r, 0);
        r
    }

    /// The rows `rows` (one sequence's `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]`) as an
    /// [`AttnOutput`] of shape `[1, Hq, rows.len(), Dv]`, the layout of the dense reference.
    pub fn rows_as_dense(&self, rows: Range<usize>) -> Result<AttnOutput, ServingError> {
        if rows.start > rows.end || rows.end > self.tokens {
            return Err(ServingError::input(
                "rows",
                format!("{rows:?} is not inside 0..{}", self.tokens),
                "pass a row range inside the output",
            ));
        }
        let mut r = AttnOutput::empty(Shape4::new(1, self.heads, rows.len(), self.dim));
        self.copy_rows(rows, &mut r, 0);
        Ok(r)
    }

    /// Inverse of [`VarlenOutput::to_attn_output`] for a `[1, Hq, Tq, Dv]` result.
    pub fn from_attn_output(r: &AttnOutput) -> Result<Self, ServingError> {
        let s = r.shape;
        if s.batch != 1 || r.out.len() != s.numel() || r.lse.len() != s.heads * s.seq {
            return Err(ServingError::input(
                "AttnOutput::shape",
                format!(
                    "{s:?} with {} out and {} lse values is not a consistent [1, Hq, Tq, Dv] result",
                    r.out.len(),
                    r.lse.len()
                ),
                "pass a one-batch result",
            ));
        }
        let mut v = Self::empty(s.seq, s.heads, s.dim);
        v.paste(0, r);
        Ok(v)
    }

    fn copy_rows(&self, rows: Range<usize>, r: &mut AttnOutput, batch: usize) {
        let n = rows.len();
        for (i, t) in rows.enumerate() {
            for h in 0..self.heads {
                let dst = ((batch * self.heads + h) * n + i) * self.dim;
                r.out[dst..dst + self.dim].copy_from_slice(self.row(t, h));
                r.lse[(batch * self.heads + h) * n + i] = self.lse_at(t, h);
            }
        }
    }

    /// Write a `[1, Hq, Sq_b, Dv]` result at token rows `start ..`.
    fn paste(&mut self, start: usize, r: &AttnOutput) {
        let (hq, sq, dv) = (r.shape.heads, r.shape.seq, r.shape.dim);
        for h in 0..hq {
            for i in 0..sq {
                let t = start + i;
                let src = (h * sq + i) * dv;
                let dst = (t * self.heads + h) * self.dim;
                self.out[dst..dst + dv].copy_from_slice(&r.out[src..src + dv]);
                self.lse[h * self.tokens + t] = r.lse[h * sq + i];
            }
        }
    }

    /// The dense `[B, Hq, Sq, Dv]` result of a call whose `B` sequences all have `seq` query
    /// rows (a dense q packed by [`pack_dense`]).
    pub fn to_batched(&self, batch: usize, seq: usize) -> Result<AttnOutput, ServingError> {
        if batch.checked_mul(seq) != Some(self.tokens) {
            return Err(ServingError::input(
                "VarlenOutput::tokens",
                format!("{} rows are not batch {batch} x seq {seq}", self.tokens),
                "pass the batch and query length the dense q had",
            ));
        }
        let mut r = AttnOutput::empty(Shape4::new(batch, self.heads, seq, self.dim));
        for b in 0..batch {
            self.copy_rows(b * seq..(b + 1) * seq, &mut r, b);
        }
        Ok(r)
    }
}

/// Pack a dense `q: [B, Hq, Sq, D]` (any strides) as `[B * Sq, Hq, D]` with
/// `cu_seqlens_q = [0, Sq, 2 Sq, ..., B Sq]` (section 13: paged q may be dense).
pub fn pack_dense<T: Element>(q: &Tensor4<T>) -> Result<(Packed<T>, Vec<i32>), ServingError> {
    let s = q.shape;
    let total = s
        .batch
        .checked_mul(s.seq)
        .filter(|&t| t <= i32::MAX as usize);
    let Some(total) = total else {
        return Err(ServingError::input(
            "q.shape",
            format!("B * Sq = {} * {} does not fit in int32", s.batch, s.seq),
            "split the batch",
        ));
    };
    if s.numel() > 0 {
        let last = (s.batch - 1) * q.strides[0]
            + (s.heads - 1) * q.strides[1]
            + (s.seq - 1) * q.strides[2]
            + (s.dim - 1) * q.strides[3];
        if last >= q.data.len() {
            return Err(ServingError::input(
                "q.data",
                format!(
                    "holds {} elements but the shape and strides read index {last}",
                    q.data.len()
                ),
                "fix the strides or pass a buffer of the right length",
            ));
        }
    }
    let packed = Packed::from_fn(total, s.heads, s.dim, |t, h, d| {
        let (b, i) = (t / s.seq, t % s.seq);
        q.data[b * q.strides[0] + h * q.strides[1] + i * q.strides[2] + d * q.strides[3]]
    });
    let cu = (0..=s.batch).map(|b| (b * s.seq) as i32).collect();
    Ok((packed, cu))
}

/// How split-KV decoding cuts each sequence's keys: `num_splits` consecutive ranges of
/// `chunk = ceil(ceil(Sk_b / num_splits) / align) * align` keys (the last ones shorter or
/// empty). `align` is the kernel's key tile or page size; the split is never semantic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitKv {
    /// Number of key ranges per sequence (>= 1).
    pub num_splits: usize,
    /// Each range but the last starts and ends on a multiple of this (>= 1).
    pub align: usize,
}

/// The key ranges of a sequence with `sk` keys under `split` (always `num_splits` ranges,
/// covering `0..sk` in order; trailing ones may be empty).
pub fn split_kv_ranges(sk: usize, split: SplitKv) -> Result<Vec<Range<usize>>, ServingError> {
    if split.num_splits == 0 {
        return Err(ServingError::input(
            "SplitKv::num_splits",
            "is 0",
            "use at least one split (1 = unsplit)",
        ));
    }
    if split.align == 0 {
        return Err(ServingError::input(
            "SplitKv::align",
            "is 0",
            "align splits to at least 1 key",
        ));
    }
    let chunk = sk.div_ceil(split.num_splits).div_ceil(split.align) * split.align;
    Ok((0..split.num_splits)
        .map(|s| {
            let lo = s.saturating_mul(chunk).min(sk);
            lo..(lo.saturating_add(chunk)).min(sk)
        })
        .collect())
}

/// Varlen (packed) attention, section 13: sequence `b` is query rows
/// `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]` against key rows
/// `cu_seqlens_k[b] .. cu_seqlens_k[b + 1]`, each computed by [`attention`].
pub fn varlen_attention<T: Element>(
    q: &Packed<T>,
    cu_seqlens_q: &[i32],
    kv: &VarlenKv<'_, T>,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<VarlenOutput, ServingError> {
    serving_attention(
        q,
        cu_seqlens_q,
        &KvLayout::Varlen(*kv),
        mask,
        score_mod,
        opts,
    )
}

/// Paged attention, section 13: prefill, chunked prefill (the `Sq_b` new tokens are the
/// last of the `Sk_b` cached keys, at positions `Sk_b - Sq_b ..`) and decoding
/// (`Sq_b = 1`) against a paged cache. Equal to [`varlen_attention`] on the gathered keys.
pub fn paged_attention<T: Element>(
    q: &Packed<T>,
    cu_seqlens_q: &[i32],
    kv: &PagedKv<'_, T>,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<VarlenOutput, ServingError> {
    serving_attention(
        q,
        cu_seqlens_q,
        &KvLayout::Paged(*kv),
        mask,
        score_mod,
        opts,
    )
}

/// Attention over either key layout (the one implementation behind [`varlen_attention`]
/// and [`paged_attention`]).
pub fn serving_attention<T: Element>(
    q: &Packed<T>,
    cu_seqlens_q: &[i32],
    kv: &KvLayout<'_, T>,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<VarlenOutput, ServingError> {
    let layout = Layout::check(q, cu_seqlens_q, kv)?;
    let mut res = VarlenOutput::empty(q.tokens, q.heads, layout.dv);
    for b in 0..layout.batch {
        let seq = layout.sequence(q, kv, b, mask, score_mod)?;
        let r = seq.attend(opts, None)?;
        res.paste(layout.q_rows(b).start, &r);
    }
    Ok(res)
}

/// A per-row variant over a serving layout (section 13): each sequence `b` with queries
/// gathered into a one-batch dense problem, `q [1, Hq, Sq_b, D]`, `k, v [1, Hkv, Sk_b, D]`,
/// handed to `dense` (the variant's dense reference), the results packed like q. The
/// reference of the data-dependent families on a paged cache or packed keys. A sequence
/// with queries but no keys is an error at `cu_seqlens_q[b + 1]`.
pub fn serving_per_sequence<T: Element, E: From<ServingError>>(
    q: &Packed<T>,
    cu_seqlens_q: &[i32],
    kv: &KvLayout<'_, T>,
    mut dense: impl FnMut(usize, &Tensor4<T>, &Tensor4<T>, &Tensor4<T>) -> Result<AttnOutput, E>,
) -> Result<VarlenOutput, E> {
    let layout = Layout::check(q, cu_seqlens_q, kv)?;
    let mut res = VarlenOutput::empty(q.tokens, q.heads, layout.dv);
    for b in 0..layout.batch {
        let seq = layout.sequence(q, kv, b, &Mask::Full, &ScoreMod::None)?;
        if seq.sq == 0 {
            continue;
        }
        let (Some(k), Some(v)) = (&seq.k, &seq.v) else {
            return Err(ServingError::input(
                format!("cu_seqlens_q[{}]", b + 1),
                format!("sequence {b} has {} queries and no keys", seq.sq),
                "the data-dependent families need Sq_b <= Sk_b: write the tokens' keys first",
            )
            .into());
        };
        res.paste(layout.q_rows(b).start, &dense(b, &seq.q, k, v)?);
    }
    Ok(res)
}

/// The per-split partial results of split-KV decoding: element `s` holds, for every
/// sequence, the attention of its queries over key range `s` of [`split_kv_ranges`] (same
/// positions, mask and score modification as the unsplit call; an empty range gives empty
/// rows). Split-KV needs `Sq_b <= Sk_b` (the decoded tokens' keys are in the cache).
///
/// In [`crate::Precision::Naive`] each partial `out` is rounded to the input dtype, like
/// every naive result.
pub fn split_kv_partials<T: Element>(
    q: &Packed<T>,
    cu_seqlens_q: &[i32],
    kv: &KvLayout<'_, T>,
    split: SplitKv,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<Vec<VarlenOutput>, ServingError> {
    split_kv_ranges(0, split)?;
    let layout = Layout::check(q, cu_seqlens_q, kv)?;
    let mut parts = vec![VarlenOutput::empty(q.tokens, q.heads, layout.dv); split.num_splits];
    for b in 0..layout.batch {
        let seq = layout.sequence(q, kv, b, mask, score_mod)?;
        if seq.sq > seq.sk {
            return Err(ServingError::input(
                format!("cu_seqlens_q[{}]", b + 1),
                format!(
                    "sequence {b} has Sq_b = {} query rows but only Sk_b = {} keys",
                    seq.sq, seq.sk
                ),
                "split-KV decoding needs Sq_b <= Sk_b (append the new tokens' keys to the cache first), or use the unsplit call",
            ));
        }
        let start = layout.q_rows(b).start;
        for (s, range) in split_kv_ranges(seq.sk, split)?.into_iter().enumerate() {
            let r = seq.attend(opts, Some(range))?;
            parts[s].paste(start, &r);
        }
    }
    Ok(parts)
}

/// Merge partial results over disjoint key sets by log-sum-exp ([`lse_merge`], section 9's
/// formula), in order.
pub fn merge_partials(parts: &[VarlenOutput]) -> Result<VarlenOutput, ServingError> {
    let Some(first) = parts.first() else {
        return Err(ServingError::input(
            "parts",
            "is empty",
            "pass at least one partial result",
        ));
    };
    let mut acc = first.to_attn_output();
    for (s, p) in parts.iter().enumerate().skip(1) {
        acc = lse_merge(&acc, &p.to_attn_output()).map_err(|_| {
            ServingError::input(
                format!("parts[{s}]"),
                format!(
                    "has shape [{}, {}, {}] but parts[0] has [{}, {}, {}]",
                    p.tokens, p.heads, p.dim, first.tokens, first.heads, first.dim
                ),
                "merge partials of one call",
            )
        })?;
    }
    VarlenOutput::from_attn_output(&acc)
}

/// Split-KV decoding (section 13): [`split_kv_partials`] merged by [`merge_partials`].
/// Equal to [`serving_attention`] up to the rounding of the merge.
pub fn split_kv_attention<T: Element>(
    q: &Packed<T>,
    cu_seqlens_q: &[i32],
    kv: &KvLayout<'_, T>,
    split: SplitKv,
    mask: &Mask,
    score_mod: &ScoreMod,
    opts: &AttnOptions,
) -> Result<VarlenOutput, ServingError> {
    let parts = split_kv_partials(q, cu_seqlens_q, kv, split, mask, score_mod, opts)?;
    merge_partials(&parts)
}

/// Owned packed keys and values with their offsets (what [`gather_paged_kv`] returns).
#[derive(Debug, Clone, PartialEq)]
pub struct VarlenKeys<T> {
    /// `[Tk, Hkv, D]`.
    pub k: Packed<T>,
    /// `[Tk, Hkv, Dv]`.
    pub v: Packed<T>,
    /// `[B + 1]`.
    pub cu_seqlens_k: Vec<i32>,
}

impl<T> VarlenKeys<T> {
    /// Borrow as a [`VarlenKv`].
    pub fn as_kv(&self) -> VarlenKv<'_, T> {
        VarlenKv {
            k: &self.k,
            v: &self.v,
            cu_seqlens_k: &self.cu_seqlens_k,
        }
    }
}

/// The logical keys of a paged cache as packed varlen keys: sequence `b`'s `seqlens_k[b]`
/// keys in order, `cu_seqlens_k` their offsets.
pub fn gather_paged_kv<T: Element>(kv: &PagedKv<'_, T>) -> Result<VarlenKeys<T>, ServingError> {
    let batch = kv.seqlens_k.len();
    check_paged(kv, batch)?;
    let mut cu = vec![0i32];
    let (mut kd, mut vd) = (Vec::new(), Vec::new());
    let (kc, vc) = (kv.k_cache, kv.v_cache);
    for b in 0..batch {
        let sk = kv.seqlens_k[b] as usize;
        for j in 0..sk {
            let (page, slot) = page_slot(kv, b, j);
            let ko = kc.offset(page, slot, 0, 0);
            kd.extend_from_slice(&kc.data[ko..ko + kc.heads * kc.dim]);
            let vo = vc.offset(page, slot, 0, 0);
            vd.extend_from_slice(&vc.data[vo..vo + vc.heads * vc.dim]);
        }
        let last = *cu.last().unwrap_or(&0) as usize;
        cu.push(i32::try_from(last + sk).map_err(|_| {
            ServingError::input(
                format!("seqlens_k[{b}]"),
                "the total number of keys passes 2^31 - 1",
                "gather fewer sequences at once",
            )
        })?);
    }
    let tk = *cu.last().unwrap_or(&0) as usize;
    Ok(VarlenKeys {
        k: Packed::from_vec(tk, kc.heads, kc.dim, kd)?,
        v: Packed::from_vec(tk, vc.heads, vc.dim, vd)?,
        cu_seqlens_k: cu,
    })
}

fn page_slot<T>(kv: &PagedKv<'_, T>, b: usize, j: usize) -> (usize, usize) {
    let ps = kv.k_cache.page_size;
    (kv.block_table[b * kv.max_pages + j / ps] as usize, j % ps)
}

/// Check a `[B + 1]` cu_seqlens array against the packed length.
fn check_cu(name: &str, cu: &[i32], total: usize) -> Result<(), ServingError> {
    let Some(&first) = cu.first() else {
        return Err(ServingError::input(
            name,
            "is empty",
            "pass B + 1 offsets starting with 0 ([0] for no sequences)",
        ));
    };
    if first != 0 {
        return Err(ServingError::input(
            format!("{name}[0]"),
            format!("is {first}"),
            "the first offset must be 0",
        ));
    }
    for (i, w) in cu.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(ServingError::input(
                format!("{name}[{}]", i + 1),
                format!("is {} but the entry before it is {}", w[1], w[0]),
                "offsets must be non-decreasing (sequence lengths are differences of neighbours)",
            ));
        }
    }
    let last = cu[cu.len() - 1] as usize;
    if last != total {
        return Err(ServingError::input(
            format!("{name}[{}]", cu.len() - 1),
            format!("is {last} but the packed tensor has {total} rows"),
            "the last offset must equal the packed length",
        ));
    }
    Ok(())
}

fn check_paged<T: Element>(kv: &PagedKv<'_, T>, batch: usize) -> Result<(), ServingError> {
    let (kc, vc) = (kv.k_cache, kv.v_cache);
    kc.check_len("k_cache.data")?;
    vc.check_len("v_cache.data")?;
    let ps = kc.page_size;
    if !(1..=1024).contains(&ps) || !ps.is_power_of_two() {
        return Err(ServingError::input(
            "k_cache.page_size",
            format!("is {ps}"),
            "use a power of two from 1 to 1024",
        ));
    }
    for (field, got, want) in [
        ("v_cache.num_pages", vc.num_pages, kc.num_pages),
        ("v_cache.page_size", vc.page_size, ps),
        ("v_cache.heads", vc.heads, kc.heads),
    ] {
        if got != want {
            return Err(ServingError::input(
                field,
                format!("is {got} but k_cache has {want}"),
                "store keys and values in caches of the same pages",
            ));
        }
    }
    if kv.seqlens_k.len() != batch {
        return Err(ServingError::input(
            "seqlens_k",
            format!("has {} entries for {batch} sequences", kv.seqlens_k.len()),
            "pass one key length per sequence (B = cu_seqlens_q.len() - 1)",
        ));
    }
    if batch.checked_mul(kv.max_pages) != Some(kv.block_table.len()) {
        return Err(ServingError::input(
            "block_table",
            format!(
                "has {} entries but [B {batch}, max_pages {}] needs {}",
                kv.block_table.len(),
                kv.max_pages,
                batch.saturating_mul(kv.max_pages)
            ),
            "pass a row-major [B, max_pages] table",
        ));
    }
    for (b, &sk) in kv.seqlens_k.iter().enumerate() {
        if sk < 0 {
            return Err(ServingError::input(
                format!("seqlens_k[{b}]"),
                format!("is {sk}"),
                "key lengths must be >= 0",
            ));
        }
        let pages = (sk as usize).div_ceil(ps);
        if pages > kv.max_pages {
            return Err(ServingError::input(
                format!("seqlens_k[{b}]"),
                format!(
                    "is {sk}: {pages} pages of {ps} but block_table rows hold only {}",
                    kv.max_pages
                ),
                "widen block_table to ceil(Sk_b / page_size) pages or shorten the sequence",
            ));
        }
        for i in 0..pages {
            let page = kv.block_table[b * kv.max_pages + i];
            if page < 0 || page as usize >= kc.num_pages {
                return Err(ServingError::input(
                    format!("block_table[{b}][{i}]"),
                    format!(
                        "is page {page}, read for keys {}..{}, but the cache has {} pages",
                        i * ps,
                        ((i + 1) * ps).min(sk as usize),
                        kc.num_pages
                    ),
                    "point every page a sequence reads at a page in [0, num_pages)",
                ));
            }
        }
    }
    Ok(())
}

/// The checked geometry of a serving call.
struct Layout<'c> {
    batch: usize,
    dv: usize,
    cu_q: &'c [i32],
}

/// One sequence's dense problem.
struct Sequence<T> {
    seq: usize,
    sq: usize,
    sk: usize,
    hq: usize,
    dv: usize,
    q: Tensor4<T>,
    k: Option<Tensor4<T>>,
    v: Option<Tensor4<T>>,
    mask: Mask,
    score_mod: ScoreMod,
}

impl<'c> Layout<'c> {
    fn check<T: Element>(
        q: &Packed<T>,
        cu_q: &'c [i32],
        kv: &KvLayout<'_, T>,
    ) -> Result<Self, ServingError> {
        q.check_len("q.data")?;
        let (hkv, dk, dv) = match kv {
            KvLayout::Varlen(v) => {
                v.k.check_len("k.data")?;
                v.v.check_len("v.data")?;
                for (field, got, want) in [
                    ("v.tokens", v.v.tokens, v.k.tokens),
                    ("v.heads", v.v.heads, v.k.heads),
                ] {
                    if got != want {
                        return Err(ServingError::input(
                            field,
                            format!("is {got} but k has {want}"),
                            "pass values with the rows and heads of the keys",
                        ));
                    }
                }
                (v.k.heads, v.k.dim, v.v.dim)
            }
            KvLayout::Paged(p) => (p.k_cache.heads, p.k_cache.dim, p.v_cache.dim),
        };
        for (field, x) in [
            ("q.heads", q.heads),
            ("q.dim", q.dim),
            ("k.heads", hkv),
            ("v.dim", dv),
        ] {
            if x == 0 {
                return Err(ServingError::input(field, "is 0", "sizes must be >= 1"));
            }
        }
        if dk != q.dim {
            return Err(ServingError::input(
                "k.dim",
                format!("is {dk} but q.dim is {}", q.dim),
                "keys must have the head dimension of q",
            ));
        }
        if !q.heads.is_multiple_of(hkv) {
            return Err(ServingError::input(
                "k.heads",
                format!("Hkv = {hkv} does not divide Hq = {}", q.heads),
                "pick Hkv dividing Hq (query head h reads kv head h / (Hq / Hkv))",
            ));
        }
        check_cu("cu_seqlens_q", cu_q, q.tokens)?;
        let batch = cu_q.len() - 1;
        match kv {
            KvLayout::Varlen(v) => {
                check_cu("cu_seqlens_k", v.cu_seqlens_k, v.k.tokens)?;
                if v.cu_seqlens_k.len() != cu_q.len() {
                    return Err(ServingError::input(
                        "cu_seqlens_k",
                        format!(
                            "has {} entries but cu_seqlens_q has {}",
                            v.cu_seqlens_k.len(),
                            cu_q.len()
                        ),
                        "pass B + 1 offsets in both",
                    ));
                }
            }
            KvLayout::Paged(p) => check_paged(p, batch)?,
        }
        Ok(Self { batch, dv, cu_q })
    }

    fn q_rows(&self, b: usize) -> Range<usize> {
        self.cu_q[b] as usize..self.cu_q[b + 1] as usize
    }

    /// Gather sequence `b` (checked geometry) into a dense one-batch problem.
    fn sequence<T: Element>(
        &self,
        q: &Packed<T>,
        kv: &KvLayout<'_, T>,
        b: usize,
        mask: &Mask,
        score_mod: &ScoreMod,
    ) -> Result<Sequence<T>, ServingError> {
        let rows = self.q_rows(b);
        let (sq, hq, d) = (rows.len(), q.heads, q.dim);
        let qb = Tensor4::from_fn(Shape4::new(1, hq, sq, d), |_, h, i, x| {
            q.data[((rows.start + i) * hq + h) * d + x]
        });
        let (sk, k, v, doc_of): (usize, _, _, DocGather<'_>) = match kv {
            KvLayout::Varlen(vk) => {
                let ks = vk.cu_seqlens_k[b] as usize..vk.cu_seqlens_k[b + 1] as usize;
                let gather = |p: &Packed<T>| {
                    Tensor4::from_fn(Shape4::new(1, p.heads, ks.len(), p.dim), |_, h, j, x| {
                        p.data[((ks.start + j) * p.heads + h) * p.dim + x]
                    })
                };
                let (k, v) = (gather(vk.k), gather(vk.v));
                let ks2 = ks.clone();
                (
                    ks.len(),
                    k,
                    v,
                    Box::new(move |doc: &[i32]| doc[ks2.clone()].to_vec()),
                )
            }
            KvLayout::Paged(pk) => {
                let sk = pk.seqlens_k[b] as usize;
                let gather = |c: &PagedCache<T>| {
                    Tensor4::from_fn(Shape4::new(1, c.heads, sk, c.dim), |_, h, j, x| {
                        let (page, slot) = page_slot(pk, b, j);
                        c.data[c.offset(page, slot, h, x)]
                    })
                };
                let (k, v) = (gather(pk.k_cache), gather(pk.v_cache));
                let ps = pk.k_cache.page_size;
                (
                    sk,
                    k,
                    v,
                    Box::new(move |doc: &[i32]| {
                        (0..sk)
                            .map(|j| {
                                let (page, slot) = page_slot(pk, b, j);
                                doc[page * ps + slot]
                            })
                            .collect()
                    }),
                )
            }
        };
        let doc_len = match kv {
            KvLayout::Varlen(vk) => vk.k.tokens,
            KvLayout::Paged(pk) => pk.k_cache.num_pages * pk.k_cache.page_size,
        };
        let doc_layout = match kv {
            KvLayout::Varlen(_) => "packed like the keys: [Tk]",
            KvLayout::Paged(_) => "paged like the keys: [num_pages * page_size]",
        };
        let mask = rebase_mask(mask, b, &|doc, field| {
            if doc.len() != doc_len {
                return Err(ServingError::input(
                    field,
                    format!("has {} ids but {doc_len} are needed", doc.len()),
                    format!("serving layouts take one id per key slot, {doc_layout}"),
                ));
            }
            Ok(doc_of(doc))
        })?;
        Ok(Sequence {
            seq: b,
            sq,
            sk,
            hq,
            dv: self.dv,
            q: qb,
            k: (sk > 0).then_some(k),
            v: (sk > 0).then_some(v),
            mask,
            score_mod: rebase_score_mod(score_mod, b),
        })
    }
}

impl<T: Element> Sequence<T> {
    /// The dense result `[1, Hq, Sq_b, Dv]`, over every key or only `keys`.
    fn attend(
        &self,
        opts: &AttnOptions,
        keys: Option<Range<usize>>,
    ) -> Result<AttnOutput, ServingError> {
        let err = |source| ServingError::Sequence {
            seq: self.seq,
            source,
        };
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            // No keys: the dense reference needs Sk >= 1, so its input checks run here.
            self.mask.validate(1, self.sq, 0).map_err(err)?;
            self.score_mod.validate(self.hq).map_err(err)?;
            if self.sq > 0 && self.score_mod.modifies() {
                return Err(err(RefError::QueryLongerThanKeys {
                    variant: self.score_mod.name(),
                    sq: self.sq,
                    sk: 0,
                }));
            }
            opts.scale_or(1.0).map_err(err)?;
            return Ok(AttnOutput::empty(Shape4::new(1, self.hq, self.sq, self.dv)));
        };
        match keys {
            None => attention(&self.q, k, v, &self.mask, &self.score_mod, opts).map_err(err),
            Some(r) => {
                // Validate the unrestricted problem first so a split reports the same errors.
                self.mask.validate(1, self.sq, self.sk).map_err(err)?;
                if r.is_empty() {
                    self.score_mod.validate(self.hq).map_err(err)?;
                    opts.scale_or(1.0).map_err(err)?;
                    return Ok(AttnOutput::empty(Shape4::new(1, self.hq, self.sq, self.dv)));
                }
                let restricted = Mask::All(vec![
                    self.mask.clone(),
                    Mask::predicate(move |_, _, _, j| r.start as i64 <= j && j < r.end as i64),
                ]);
                attention(&self.q, k, v, &restricted, &self.score_mod, opts).map_err(err)
            }
        }
    }
}

/// Gathers one sequence's doc ids from a layout-wide doc array of checked length.
type DocGather<'a> = Box<dyn Fn(&[i32]) -> Vec<i32> + 'a>;

type DocOf<'a> = dyn Fn(&[i32], &'static str) -> Result<Vec<i32>, ServingError> + 'a;

/// The mask of sequence `seq` as a one-batch dense mask: doc arrays gathered to the
/// sequence's `Sk_b` ids, user predicates called with `b = seq`.
fn rebase_mask(mask: &Mask, seq: usize, doc_of: &DocOf<'_>) -> Result<Mask, ServingError> {
    Ok(match mask {
        Mask::Full => Mask::Full,
        Mask::Causal => Mask::Causal,
        Mask::Local { left, right } => Mask::Local {
            left: *left,
            right: *right,
        },
        Mask::PrefixLm { prefix } => Mask::PrefixLm { prefix: *prefix },
        Mask::Document { doc } => Mask::Document {
            doc: doc_of(doc, "Mask::Document::doc")?,
        },
        Mask::CausalDocument { doc } => Mask::CausalDocument {
            doc: doc_of(doc, "Mask::CausalDocument::doc")?,
        },
        Mask::ShareQuestion { doc } => Mask::ShareQuestion {
            doc: doc_of(doc, "Mask::ShareQuestion::doc")?,
        },
        Mask::GlobalLocal { window, global } => Mask::GlobalLocal {
            window: *window,
            global: *global,
        },
        Mask::BlockCausalDocument { doc, block } => Mask::BlockCausalDocument {
            doc: doc_of(doc, "Mask::BlockCausalDocument::doc")?,
            block: *block,
        },
        Mask::Lambda { global, local } => Mask::Lambda {
            global: *global,
            local: *local,
        },
        Mask::ChunkedCausal { chunk } => Mask::ChunkedCausal { chunk: *chunk },
        Mask::DilatedCausal { window, dilation } => Mask::DilatedCausal {
            window: *window,
            dilation: *dilation,
        },
        Mask::Predicate(f) => {
            let f = f.clone();
            Mask::predicate(move |_, h, i, j| f(seq, h, i, j))
        }
        Mask::All(ms) => Mask::All(
            ms.iter()
                .map(|m| rebase_mask(m, seq, doc_of))
                .collect::<Result<_, _>>()?,
        ),
        Mask::Any(ms) => Mask::Any(
            ms.iter()
                .map(|m| rebase_mask(m, seq, doc_of))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The score modification of sequence `seq`: user functions called with `b = seq`.
fn rebase_score_mod(sm: &ScoreMod, seq: usize) -> ScoreMod {
    match sm {
        ScoreMod::Function(f) => {
            let f = f.clone();
            ScoreMod::function(move |s, _, h, i, j| f(s, seq, h, i, j))
        }
        ScoreMod::Chain(c) => ScoreMod::Chain(c.iter().map(|m| rebase_score_mod(m, seq)).collect()),
        ScoreMod::None => ScoreMod::None,
        ScoreMod::Softcap(c) => ScoreMod::Softcap(*c),
        ScoreMod::Alibi(s) => ScoreMod::Alibi(s.clone()),
    }
}
