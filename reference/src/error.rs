//! Typed input errors. Every message names the offending field and says how to fix it.
//!
//! ```
//! use attnforge_reference::RefError;
//! let e = RefError::HeadsNotDivisible { hq: 6, hkv: 4 };
//! assert!(e.to_string().contains("Hq"));
//! ```

use thiserror::Error;

/// An invalid input to a reference function. No reference function panics on bad input;
/// it returns one of these instead.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RefError {
    /// A tensor's data length does not match its shape and strides.
    #[error("`{field}`: data has {got} elements but shape/strides need at least {expected}; fix the shape or pass a buffer of the right length")]
    DataLength {
        /// The tensor argument.
        field: &'static str,
        /// Elements required by the shape and strides.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A dimension disagrees with another tensor or parameter.
    #[error("`{field}` is {got} but must be {expected}: {fix}")]
    ShapeMismatch {
        /// The dimension, e.g. `k.batch`.
        field: &'static str,
        /// The required value.
        expected: String,
        /// The given value.
        got: usize,
        /// How to fix it.
        fix: &'static str,
    },
    /// The number of query heads is not a multiple of the number of kv heads.
    #[error("`q.heads` (Hq = {hq}) must be a multiple of `k.heads` (Hkv = {hkv}): query head h reads kv head h / (Hq / Hkv); pick Hkv dividing Hq")]
    HeadsNotDivisible {
        /// Query heads.
        hq: usize,
        /// Key/value heads.
        hkv: usize,
    },
    /// A dimension that must be at least 1 is 0.
    #[error("`{field}` is 0: {fix}")]
    ZeroSize {
        /// The dimension.
        field: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// `Sq > Sk` for a variant (mask or score modification) that only supports `Sq <= Sk`.
    #[error("`q.seq` (Sq = {sq}) > `k.seq` (Sk = {sk}) is only defined for the full and causal masks without a score modification; `{variant}` needs Sq <= Sk (pass Sq <= Sk: queries are bottom-right aligned)")]
    QueryLongerThanKeys {
        /// The variant that rejects it.
        variant: &'static str,
        /// Query length.
        sq: usize,
        /// Key length.
        sk: usize,
    },
    /// `Sq != Sk` for a variant that requires equal lengths.
    #[error("`q.seq` (Sq = {sq}) must equal `k.seq` (Sk = {sk}) for `{variant}`")]
    LengthsDiffer {
        /// The variant.
        variant: &'static str,
        /// Query length.
        sq: usize,
        /// Key length.
        sk: usize,
    },
    /// A scalar parameter out of its range.
    #[error("`{field}` = {value} is out of range: {fix}")]
    InvalidParam {
        /// The parameter, e.g. `LandmarkParams::mem_freq`.
        field: &'static str,
        /// The given value, formatted.
        value: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// `share_question`: doc id 0 (the question) does not form a prefix.
    #[error("`ShareQuestion::doc` (batch {batch}): doc id 0 is the question and must be a prefix, but position {pos} has id 0 after a non-zero id; put the question tokens first")]
    QuestionNotPrefix {
        /// Batch of the doc array.
        batch: usize,
        /// First position violating the rule.
        pos: usize,
    },
    /// A block index >= the number of key blocks.
    #[error("`BlockLists::{list}[b={b}, h={h}, r={r}]` holds key block {index} but there are only {n_blocks} key blocks (ceil(Sk / block_k)); remove it")]
    BlockOutOfRange {
        /// `full` or `partial`.
        list: &'static str,
        /// Batch (list extent).
        b: usize,
        /// Head (list extent).
        h: usize,
        /// Query block.
        r: usize,
        /// The bad index.
        index: usize,
        /// Number of key blocks.
        n_blocks: usize,
    },
    /// A block list is not strictly ascending.
    #[error("`BlockLists::{list}[b={b}, h={h}, r={r}]` is not strictly ascending ({prev} then {next}); sort it and remove duplicates")]
    BlockListUnsorted {
        /// `full` or `partial`.
        list: &'static str,
        /// Batch.
        b: usize,
        /// Head.
        h: usize,
        /// Query block.
        r: usize,
        /// Earlier entry.
        prev: usize,
        /// Following entry.
        next: usize,
    },
    /// A key block is in both the full and the partial list.
    #[error("key block {c} is in both `BlockLists::full` and `BlockLists::partial` at [b={b}, h={h}, r={r}]; keep it in one list")]
    BlockInBothLists {
        /// Batch.
        b: usize,
        /// Head.
        h: usize,
        /// Query block.
        r: usize,
        /// The key block.
        c: usize,
    },
    /// An explicit key set holds an index out of range or twice.
    #[error("`keys[b={b}, h={h}, i={i}]`: key {key} {problem}; keys must be distinct and < Sk")]
    BadKeySet {
        /// Batch.
        b: usize,
        /// Head.
        h: usize,
        /// Query row.
        i: usize,
        /// The key.
        key: usize,
        /// `is out of range` or `is listed twice`.
        problem: &'static str,
    },
}
