//! Pure-Rust f64 oracles for every attention variant attnforge generates, a naive
//! same-precision path, and the tolerance oracle that compares kernel outputs to both.
//!
//! The ground truth is `shared/docs/variants.md`; section numbers below refer to it.
//!
//! | variants.md | variant | function |
//! |---|---|---|
//! | 1 | `full`, `causal` (bottom-right aligned, `Sq > Sk` allowed), GQA/MQA | [`attention`] with [`Mask::Full`] / [`Mask::Causal`], or [`dense_attention`] |
//! | 2 | `local`, `prefix_lm`, `document`, `causal_document`, `share_question`, `global_local`, `block_causal_document`, `lambda_mask`, user predicates | [`attention`] with the [`Mask`] variant of that name, [`Mask::predicate`]; [`Mask::All`]/[`Mask::Any`] combine masks |
//! | 3 | `softcap`, `alibi` (+ [`alibi_slopes`]), user score functions | [`attention`] with [`ScoreMod`] (any mask, any score mod) |
//! | 4 | block-sparse (FlexAttention BlockMask) | [`block_sparse_attention`] with [`BlockLists`]; builders [`block_lists_from_mask`], [`random_block_lists`], [`bigbird_block_lists`], [`BlockLists::from_flex_arrays`] |
//! | 5 | LM-Infinite (RoPE half-split, distance limit) | [`lm_infinite_attention`]; [`rope`], [`rope_tensor`] |
//! | 6 | landmark, training and retrieval modes | [`landmark_attention`] with [`LandmarkMode`] |
//! | 7 | HAX (hash preprocessing, LSH set, key-selection set, union) | [`hax_attention`]; [`hax_codes`], [`hax_key_sets`] |
//! | 8 | CCA | [`cca_attention`]; [`cca_core_count`] |
//! | 9 | top-k retrieval, log-sum-exp merge | [`topk_attention`], [`topk_key_sets`], [`lse_merge`], [`attention_over_keys`] |
//! | 11 | `chunked_causal(C)`, `dilated_causal(w, d)` | [`attention`] with [`Mask::ChunkedCausal`] / [`Mask::DilatedCausal`] |
//! | 12 | backward (dQ, dK, dV, dlse, score-parameter gradients) of sections 1-5 and 11, naive path | [`attention_backward`] with [`BackwardVariant`], [`DiffScoreMod`] |
//! | 0 | tolerance oracle | [`assert_close`], [`Tolerance::for_dtype`] |
//!
//! Every function returns an [`AttnOutput`]: `out: [B, Hq, Sq, Dv]` and `lse: [B, Hq, Sq]`
//! (contiguous, f64). Inputs are [`Tensor4`]s (`[B, H, S, D]`, explicit strides) of any
//! [`Element`] (`f32`, `half::f16`, `half::bf16`, `f64`).
//!
//! **Precision.** [`AttnOptions::precision`] selects [`Precision::F64`] (the reference:
//! everything in f64) or [`Precision::Naive`] (the same math in the kernel's precision:
//! f32 scores/softmax/accumulation, probabilities rounded to the input dtype before the
//! value product, output rounded to the input dtype; LM-Infinite's rotated q and k rounded
//! to the input dtype before the dot product, the contract of [`lm_infinite_attention`]).
//! The naive result is the error scale of [`assert_close`].
//!
//! **Positions.** Query row `i` sits at `p(i) = i + (Sk - Sq)`; masks, score functions
//! and per-token arrays see positions. `Sq > Sk` is accepted only by `full` and `causal`
//! without a score modification.
//!
//! **Empty rows** (no allowed key) give `out = 0`, `lse = -inf`, never NaN.
//!
//! **Zero sizes.** `Sq = 0` is allowed and gives an output with no rows. `B`, `Hq`, `Hkv`,
//! `D`, `Dv` and `Sk` must be at least 1; a zero is [`RefError::ZeroSize`] naming the field.
//! No function panics on bad input: every check returns a [`RefError`] whose message names
//! the field and the fix.
//!
//! ```
//! use attnforge_reference::*;
//! let q = Tensor4::from_fn(Shape4::new(1, 4, 5, 8), |_, h, s, d| ((h + 3 * s + d) % 7) as f32 * 0.2);
//! let k = Tensor4::from_fn(Shape4::new(1, 2, 9, 8), |_, h, s, d| ((2 * h + s * d) % 5) as f32 * 0.3);
//! let v = Tensor4::from_fn(Shape4::new(1, 2, 9, 3), |_, _, s, d| (s + d) as f32);
//! let mask = Mask::Local { left: 3, right: 0 };
//! let sm = ScoreMod::Alibi(alibi_slopes(4));
//! let r = attention(&q, &k, &v, &mask, &sm, &AttnOptions::reference())?;
//! let n = attention(&q, &k, &v, &mask, &sm, &AttnOptions::naive())?;
//! let tol = Tolerance::for_dtype(DType::F32);
//! assert!(assert_close(&n, &r, &n, tol.rtol, tol.atol).is_ok());
//! # Ok::<(), RefError>(())
//! ```

mod backward;
mod block_sparse;
mod cca;
mod core;
mod element;
mod error;
mod geometry;
mod hax;
mod landmark;
mod lm_infinite;
mod longheads;
mod mask;
mod oracle;
mod recycled;
mod serving;
mod stats;
mod tensor;
mod topk;

pub use crate::backward::{
    attention_backward, AttnGrads, BackwardVariant, DiffScoreFn, DiffScoreMod, ParamGradFn,
    ParamScoreFn, ScoreParamGrads,
};
pub use crate::block_sparse::{
    bigbird_block_lists, block_lists_from_mask, block_sparse_attention, random_block_lists,
    BlockGeometry, BlockLists, SplitMix64,
};
pub use crate::cca::{cca_attention, cca_core_count, CcaParams};
pub use crate::core::{attention, attention_over_keys, dense_attention, lse_merge, KeySets};
pub use crate::element::{DType, Element};
pub use crate::error::RefError;
pub use crate::geometry::MaskGeometry;
pub use crate::hax::{
    hax_attention, hax_codes, hax_key_sets, HaxCodes, HaxInputs, HaxParams, Sharing,
};
pub use crate::landmark::{landmark_attention, LandmarkMode, LandmarkParams};
pub use crate::lm_infinite::{lm_infinite_attention, rope, rope_tensor, LmInfiniteParams};
pub use crate::longheads::{
    longheads_attention, longheads_chunks, longheads_prefill, longheads_summaries, LongHeadsParams,
};
pub use crate::mask::{alibi_slopes, Mask, MaskFn, ScoreFn, ScoreMod};
pub use crate::oracle::{assert_close, CloseError, CloseReport, ErrorStat, Location, Tolerance};
pub use crate::recycled::{
    recycled_attention, recycled_schedule, RecycledParams, RecycledStep, StepKind,
};
pub use crate::serving::{
    gather_paged_kv, merge_partials, pack_dense, paged_attention, serving_attention,
    serving_per_sequence, split_kv_attention, split_kv_partials, split_kv_ranges, varlen_attention,
    KvLayout, Packed, PagedCache, PagedKv, ServingError, SplitKv, VarlenKeys, VarlenKv,
    VarlenOutput,
};
pub use crate::stats::{
    attention_stats, key_stats_from_weights, max_pool_1d, one_hot_values, top_keys, AttnStats,
    StatReduce, StatsParams,
};
pub use crate::tensor::{AttnOptions, AttnOutput, OutShape, Precision, Shape4, Tensor4};
pub use crate::topk::{topk_attention, topk_key_sets, TopkParams, TopkSets};
