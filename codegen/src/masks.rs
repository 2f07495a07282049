//! The mask table: one [`MaskDef`] per built-in mask, and everything derived from it.
//!
//! A built-in mask is one entry of [`MASKS`]: its tag (the one spelling used by spec files,
//! the `kernel!` macro, the CLI, canonical kernel names and docs), its runtime parameters
//! ([`ParamDef`]: name, type, valid range, default, fix text), the names of its CUDA element
//! predicate and closed-form tile classifier (defined in `cuda/af_attn.cuh`), its key range,
//! schedule kind, flags, and its host-side predicate and classifier (used for block lists
//! and tile-classification tests). Spec parsing, kernel arguments, lowering, validation,
//! exec, spec files, the macro, the catalog and the tuner's workloads all read this table;
//! only the reference (`attnforge-reference`, the oracle) keeps its own definitions.
//!
//! Adding a mask: one entry here, its CUDA predicate (and classifier) in `af_attn.cuh`, its
//! definition in the reference (`Mask::builtin`), and a catalog entry.
//!
//! ```
//! use attnforge_codegen::masks::{BuiltinMask, MaskParams};
//! use attnforge_codegen::spec::Mask;
//! let m = BuiltinMask::from_tag("prefix_lm").unwrap();
//! assert_eq!(m.def().params[0].name, "prefix_len");
//! assert_eq!(Mask::Builtin(m), Mask::PrefixLm);
//! assert_eq!(MaskParams::defaults(m, 80).get("prefix_len"), Some(20.0));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::blocks::TileKind;
use crate::spec::Mask;

/// Type of a mask parameter (its kernel argument is `int` or `float`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// `int` kernel argument (values are integers).
    Int,
    /// `float` kernel argument.
    Float,
}

/// Valid values of a mask parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamRange {
    /// Any 32-bit int (negative values have a meaning, e.g. "unbounded").
    AnyI32,
    /// `0..2^31`.
    NonNegI32,
    /// `1..2^31`.
    PositiveI32,
    /// A finite float above the bound.
    FloatAbove(f64),
}

/// A parameter value as a function of the key length `Sk` (defaults and check problems).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRule {
    /// A fixed value.
    Fixed(f64),
    /// `max(1, round(fraction * Sk))`.
    KeyFraction(f64),
    /// `Sk + offset`.
    KeyOffset(i64),
}

impl ValueRule {
    /// The value at key length `seq_k`.
    pub fn at(self, seq_k: usize) -> f64 {
        match self {
            ValueRule::Fixed(v) => v,
            ValueRule::KeyFraction(f) => (f * seq_k as f64).round().max(1.0),
            ValueRule::KeyOffset(o) => (seq_k as i64 + o) as f64,
        }
    }
}

/// One runtime parameter of a built-in mask: a kernel argument of the same name, a key of
/// a spec file's `[params]`, a positional argument of the `kernel!` macro's mask call.
#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    /// Name (kernel argument, spec-file key, error path `mask.<tag>.<name>`).
    pub name: &'static str,
    /// Type.
    pub ty: ParamType,
    /// Valid values.
    pub range: ParamRange,
    /// What it is, in error messages ("prefix length").
    pub what: &'static str,
    /// Meaning.
    pub doc: &'static str,
    /// Fix text of an out-of-range error.
    pub fix: &'static str,
    /// Default used by catalog runs, spec-file export and tuner workloads; also the value
    /// of an omitted optional parameter.
    pub default: ValueRule,
    /// A non-default value for check problems (cuts through tiles).
    pub stress: ValueRule,
    /// May be omitted (spec files, macro); the default is used.
    pub optional: bool,
    /// Passed to the element predicate and the tile classifier (after the positions).
    pub in_predicate: bool,
}

impl ParamDef {
    /// Range check; `Err((message, fix))` when `v` is outside the valid values.
    pub fn check(&self, v: f64) -> Result<(), (String, String)> {
        let i32r = |v: f64| v.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(&v);
        let show = |v: f64| match self.ty {
            ParamType::Int if v.is_finite() => format!("{}", v as i64),
            _ => format!("{v}"),
        };
        let (ok, msg) = match self.range {
            ParamRange::AnyI32 => (
                i32r(v),
                format!("{} = {} does not fit in a 32-bit int", self.name, show(v)),
            ),
            ParamRange::NonNegI32 => (
                i32r(v) && v >= 0.0,
                format!("{} must be in 0..2^31: got {}", self.what, show(v)),
            ),
            ParamRange::PositiveI32 => (
                i32r(v) && v >= 1.0,
                format!("{} must be >= 1: got {}", self.what, show(v)),
            ),
            ParamRange::FloatAbove(lo) => (
                v.is_finite() && v > lo,
                format!("{} must be finite and > {lo}: got {}", self.what, show(v)),
            ),
        };
        if ok {
            Ok(())
        } else {
            Err((msg, self.fix.to_string()))
        }
    }
}

/// How the kernel finds the key tiles of a query tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Analytic key range plus closed-form tile classifier.
    Analytic,
    /// Runtime block lists (built on the host from the mask when not given).
    BlockLists,
}

/// Whether a mask only lets queries see earlier keys (the macro's `causal:` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Always causal.
    Causal,
    /// Not causal; `causal: true` turns it into the named mask when there is one.
    NotCausal(Option<&'static str>),
    /// Causal exactly when the named parameter is 0.
    CausalWhenZero(&'static str),
}

/// Extra conditions on the document ids of a doc-reading mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocRule {
    /// Any ids.
    Any,
    /// Id 0 (the question) is a prefix of every row.
    QuestionPrefix,
}

/// A problem whose tile boundaries fall on the mask's edges (the classifier's comparisons
/// at equality), for `attnforge check`'s problem suite.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeCase {
    /// Label in reports.
    pub label: &'static str,
    /// Query length.
    pub seq_q: usize,
    /// Key length.
    pub seq_k: usize,
    /// Parameter values, in table order.
    pub values: Vec<f64>,
}

/// Host-side element predicate: `(values in table order, doc ids of the batch row, p, j)`.
pub type HostPredicate = fn(&[f64], &[i32], i64, i64) -> bool;
/// Host-side closed-form classifier of the tile `p_lo..=p_hi x c0..=c1`.
pub type HostClassifier = fn(&[f64], i64, i64, i64, i64) -> TileKind;

/// One built-in mask.
#[derive(Clone, Copy, Debug)]
pub struct MaskDef {
    /// The one spelling (spec files, macro, CLI, canonical names).
    pub tag: &'static str,
    /// Definition (variants.md).
    pub summary: &'static str,
    /// Runtime parameters, in kernel-argument order.
    pub params: &'static [ParamDef],
    /// CUDA element predicate in `af_attn.cuh`, called as `f([doc_b,] q_pos, kv_pos,
    /// predicate params...)`; `None`: every element is allowed.
    pub element_fn: Option<&'static str>,
    /// CUDA tile classifier, called as `f(p_lo, p_hi, c0, c1, predicate params...)`.
    pub tile_fn: Option<&'static str>,
    /// Analytic key range `[lo, hi)` as C expressions over `p_lo`, `p_hi`, `seq_k` and the
    /// parameters.
    pub key_range: (&'static str, &'static str),
    /// Query positions `[lo, hi)` that may see a key of the key tile `[c0, c1]`: the
    /// backward's transposed schedule (a key tile walks these query tiles), as C expressions
    /// over `c0`, `c1`, `seq_q`, `seq_k` and the parameters. Sound for every mask (a query
    /// allowed some key of the tile lies inside), exact at both ends where each key's rows
    /// form one interval. Positions run over `[seq_k - seq_q, seq_k)`: that range is the
    /// "every query" answer (the list-driven masks transpose their block lists instead).
    pub query_range: (&'static str, &'static str),
    /// Schedule kind.
    pub schedule: ScheduleKind,
    /// Reads per-token document ids (`doc`, `doc_batch_stride` kernel arguments).
    pub reads_doc: bool,
    /// Conditions on the document ids.
    pub doc_rule: DocRule,
    /// Defined for `Sq > Sk`.
    pub allows_sq_gt_sk: bool,
    /// LM-Infinite scoring (RoPE near/far branches; no score modification).
    pub lm_infinite_scoring: bool,
    /// Causality (macro `causal:`).
    pub causality: Causality,
    /// Macro shorthands: `(name, parameter fixed to 0)` (e.g. `sliding_window(w)`).
    pub shorthands: &'static [(&'static str, &'static str)],
    /// Host predicate.
    pub host_allowed: HostPredicate,
    /// Host closed-form classifier (analytic masks).
    pub host_classify: Option<HostClassifier>,
    /// Tile-edge check problems for a `block_m x block_n` tile.
    pub tile_edges: fn(usize, usize) -> Vec<EdgeCase>,
}

impl MaskDef {
    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }
    /// Its parameters' names, comma-separated.
    pub fn param_list(&self) -> String {
        self.params
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const FULL_RANGE: (&str, &str) = ("0", "(long long)seq_k");
const CAUSAL_RANGE: (&str, &str) = ("0", "min((long long)seq_k, p_hi + 1)");
/// Every query position.
const ALL_QUERIES: (&str, &str) = ("(long long)seq_k - seq_q", "(long long)seq_k");
/// Queries at or after the tile's first key (a causal key is seen by every later row).
const QUERIES_FROM_C0: (&str, &str) = ("max((long long)seq_k - seq_q, c0)", "(long long)seq_k");
const COUNT_FIX: &str = "pass a non-negative count";

const fn count(
    name: &'static str,
    doc: &'static str,
    default: ValueRule,
    stress: ValueRule,
) -> ParamDef {
    ParamDef {
        name,
        ty: ParamType::Int,
        range: ParamRange::NonNegI32,
        what: name,
        doc,
        fix: COUNT_FIX,
        default,
        stress,
        optional: false,
        in_predicate: true,
    }
}

fn no_edges(_: usize, _: usize) -> Vec<EdgeCase> {
    Vec::new()
}

fn doc_eq(doc: &[i32], p: i64, j: i64) -> bool {
    p >= 0 && doc[p as usize] == doc[j as usize]
}

fn kind(skip: bool, full: bool) -> TileKind {
    if skip {
        TileKind::Skip
    } else if full {
        TileKind::Full
    } else {
        TileKind::Partial
    }
}

const LOCAL_PARAMS: &[ParamDef] = &[
    ParamDef {
        name: "window_left",
        ty: ParamType::Int,
        range: ParamRange::AnyI32,
        what: "window_left",
        doc: "keys allowed left of the query position (negative: unbounded)",
        fix: "use a negative value for an unbounded side",
        default: ValueRule::KeyFraction(0.3),
        stress: ValueRule::Fixed(150.0),
        optional: false,
        in_predicate: true,
    },
    ParamDef {
        name: "window_right",
        ty: ParamType::Int,
        range: ParamRange::AnyI32,
        what: "window_right",
        doc: "keys allowed right of the query position (negative: unbounded)",
        fix: "use a negative value for an unbounded side",
        default: ValueRule::KeyFraction(0.1),
        stress: ValueRule::Fixed(17.0),
        optional: false,
        in_predicate: true,
    },
];

const PREFIX_PARAMS: &[ParamDef] = &[ParamDef {
    name: "prefix_len",
    ty: ParamType::Int,
    range: ParamRange::NonNegI32,
    what: "prefix length",
    doc: "bidirectional prefix length P",
    fix: "pass the number of bidirectional prefix tokens",
    default: ValueRule::KeyFraction(0.25),
    stress: ValueRule::KeyOffset(-10),
    optional: false,
    in_predicate: true,
}];

const GLOBAL_LOCAL_PARAMS: &[ParamDef] = &[
    count(
        "window",
        "half window w",
        ValueRule::KeyFraction(0.15),
        ValueRule::Fixed(20.0),
    ),
    count(
        "global_tokens",
        "global tokens G",
        ValueRule::KeyFraction(0.075),
        ValueRule::Fixed(9.0),
    ),
];

const BLOCK_CAUSAL_DOC_PARAMS: &[ParamDef] = &[ParamDef {
    name: "doc_block",
    ty: ParamType::Int,
    range: ParamRange::PositiveI32,
    what: "block length",
    doc: "block length Bc, counted from position 0",
    fix: "pass the block length Bc (e.g. 64)",
    default: ValueRule::Fixed(16.0),
    stress: ValueRule::Fixed(24.0),
    optional: false,
    in_predicate: true,
}];

const LAMBDA_PARAMS: &[ParamDef] = &[
    count(
        "global_tokens",
        "starting (global) tokens G",
        ValueRule::Fixed(4.0),
        ValueRule::Fixed(5.0),
    ),
    count(
        "local_window",
        "local window L",
        ValueRule::KeyFraction(0.3),
        ValueRule::Fixed(50.0),
    ),
];

const LM_INFINITE_PARAMS: &[ParamDef] = &[
    LAMBDA_PARAMS[0],
    LAMBDA_PARAMS[1],
    ParamDef {
        in_predicate: false,
        ..count(
            "dist_limit",
            "distance limit Dlim (far keys use min(Dlim, Sk - 1))",
            ValueRule::KeyFraction(0.5),
            ValueRule::KeyOffset(100),
        )
    },
    ParamDef {
        name: "rope_theta",
        ty: ParamType::Float,
        range: ParamRange::FloatAbove(1.0),
        what: "RoPE base",
        doc: "RoPE base theta",
        fix: "use 10000 (the default)",
        default: ValueRule::Fixed(10000.0),
        stress: ValueRule::Fixed(500.0),
        optional: true,
        in_predicate: false,
    },
];

const CHUNKED_CAUSAL_PARAMS: &[ParamDef] = &[ParamDef {
    name: "chunk_size",
    ty: ParamType::Int,
    range: ParamRange::PositiveI32,
    what: "chunk length",
    doc: "chunk length C (chunks counted from position 0)",
    fix: "pass the chunk length C (e.g. 8192, Llama 4's)",
    default: ValueRule::KeyFraction(0.25),
    stress: ValueRule::Fixed(40.0),
    optional: false,
    in_predicate: true,
}];

const DILATED_CAUSAL_PARAMS: &[ParamDef] = &[
    count(
        "window",
        "window w: keys at up to w dilated steps back",
        ValueRule::KeyFraction(0.05),
        ValueRule::Fixed(13.0),
    ),
    ParamDef {
        name: "dilation",
        ty: ParamType::Int,
        range: ParamRange::PositiveI32,
        what: "dilation",
        doc: "dilation d: the distance between two allowed keys (1: a causal sliding window)",
        fix: "pass d >= 1 (d = 1 is the causal sliding window of w + 1 keys)",
        default: ValueRule::Fixed(2.0),
        stress: ValueRule::Fixed(3.0),
        optional: false,
        in_predicate: true,
    },
];

fn causal_edges(bm: usize, bn: usize) -> Vec<EdgeCase> {
    vec![
        // One query at position bn: the last key tile starts at the diagonal.
        EdgeCase {
            label: "edge: decode",
            seq_q: 1,
            seq_k: bn + 1,
            values: vec![],
        },
        // Query tile 1 starts at position 2 bn - 1, the last key of key tile 1: full.
        EdgeCase {
            label: "edge: diagonal on a tile corner",
            seq_q: bm + 5,
            seq_k: 2 * bn + 4,
            values: vec![],
        },
    ]
}

fn local_edges(bm: usize, bn: usize) -> Vec<EdgeCase> {
    // Query tile 0 ends right of a key tile start by exactly `right`; query tile 1 starts
    // left of a key tile end by exactly `left`.
    let (bmi, bni) = (bm as i64, bn as i64);
    let s = bni - 7;
    let p_hi0 = bmi - 1 + s;
    let right = (p_hi0 / bni + 1) * bni - p_hi0;
    let p_lo1 = bmi + s;
    let left = p_lo1 - ((p_lo1 / bni) * bni - 1);
    vec![
        // Decode with a causal sliding window: key tile 1 starts at p_hi + right.
        EdgeCase {
            label: "edge: decode, sliding window",
            seq_q: 1,
            seq_k: bn + 1,
            values: vec![(bn / 2) as f64, 0.0],
        },
        EdgeCase {
            label: "edge: window edges on tile edges",
            seq_q: bm + 36,
            seq_k: bm + 36 + s as usize,
            values: vec![left as f64, right as f64],
        },
    ]
}

fn prefix_edges(_bm: usize, bn: usize) -> Vec<EdgeCase> {
    // The prefix ends exactly where key tile 2 starts.
    vec![EdgeCase {
        label: "edge: prefix end on a tile start",
        seq_q: 2 * bn + 30,
        seq_k: 2 * bn + 30,
        values: vec![(2 * bn) as f64],
    }]
}

fn global_local_edges(bm: usize, bn: usize) -> Vec<EdgeCase> {
    // Key tile after the diagonal one starts exactly `window` past query tile 0.
    let (s, g) = (10i64, 5.0);
    let p_hi0 = bm as i64 - 1 + s;
    let window = (p_hi0 / bn as i64 + 1) * bn as i64 - p_hi0;
    vec![EdgeCase {
        label: "edge: window edge on a tile start",
        seq_q: 2 * bm + 22,
        seq_k: 2 * bm + 32,
        values: vec![window as f64, g],
    }]
}

/// Query tile 1 starts exactly `local_window - 1` past the last key of key tile 1 (which
/// holds no global token). A short window next to 12 global tokens gives LM-Infinite's far
/// branch (rotated at Deff) a large share of each row; its distance limit is `Sk`, so the
/// clamp `Deff = min(dist_limit, Sk - 1)` decides.
fn lambda_edges(bm: usize, bn: usize) -> Vec<EdgeCase> {
    let (global, local) = (12.0, 8.0);
    let Some(shift) = (2 * bn + 6).checked_sub(bm) else {
        return Vec::new();
    };
    let sq = 2 * bm + 5;
    vec![EdgeCase {
        label: "edge: window end on a tile end",
        seq_q: sq,
        seq_k: sq + shift,
        values: vec![global, local, (sq + shift) as f64, 10000.0],
    }]
}

/// Chunk starts on a key-tile start and one key past it, on a rectangular problem.
fn chunked_causal_edges(bm: usize, bn: usize) -> Vec<EdgeCase> {
    let (sq, shift) = (2 * bm + 7, bn + 3);
    vec![
        EdgeCase {
            label: "edge: chunk start on a tile start",
            seq_q: sq,
            seq_k: sq + shift,
            values: vec![bn as f64],
        },
        EdgeCase {
            label: "edge: chunk start one past a tile start",
            seq_q: sq,
            seq_k: sq + shift,
            values: vec![(bn + 1) as f64],
        },
    ]
}

/// Decoding with the reach `w d` ending exactly on a key-tile start, and `d = 1` (the causal
/// sliding window, the one case with full tiles) with the window edge on a tile edge.
fn dilated_causal_edges(bm: usize, bn: usize) -> Vec<EdgeCase> {
    let (bmi, bni) = (bm as i64, bn as i64);
    let s = bni - 7;
    let p_lo1 = bmi + s;
    let left = p_lo1 - ((p_lo1 / bni) * bni - 1);
    vec![
        EdgeCase {
            label: "edge: decode, reach on a tile start",
            seq_q: 1,
            seq_k: 2 * bn + 1,
            values: vec![(bn / 2) as f64, 2.0],
        },
        EdgeCase {
            label: "edge: d = 1, window edge on a tile edge",
            seq_q: bm + 36,
            seq_k: bm + 36 + s as usize,
            values: vec![left as f64, 1.0],
        },
    ]
}

fn classify_causal(_: &[f64], plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
    kind(c0 > phi, c1 <= plo)
}

fn classify_local(v: &[f64], plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
    let (left, right) = (v[0] as i64, v[1] as i64);
    let skip = (right >= 0 && c0 > phi + right) || (left >= 0 && c1 < plo - left);
    let full = (left < 0 || c0 >= phi - left) && (right < 0 || c1 <= plo + right);
    kind(skip, full)
}

fn classify_prefix(v: &[f64], plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
    let prefix = v[0] as i64;
    kind(c0 > phi && c0 >= prefix, c1 <= plo || c1 < prefix)
}

fn classify_global_local(v: &[f64], plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
    let (window, g) = (v[0] as i64, v[1] as i64);
    let gap = (c0 - phi).max(plo - c1).max(0);
    let skip = plo >= g && c0 >= g && gap > window;
    let (rp, rc) = (plo.max(g), c0.max(g));
    kind(
        skip,
        rp > phi || rc > c1 || (phi - rc).max(c1 - rp) <= window,
    )
}

fn classify_lambda(v: &[f64], plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
    let (g, l) = (v[0] as i64, v[1] as i64);
    let any_global = c0 < g && c0 <= phi;
    let any_window = l > 0 && phi - c0 >= 0 && plo - c1 < l;
    let rc = c0.max(g);
    kind(
        !(any_global || any_window),
        c1 <= plo && (rc > c1 || phi - rc < l),
    )
}

/// LM-Infinite tile classification (mirrors `af_tile_lminf`): the allowed set of the lambda
/// mask, but `Full` only when every element takes the same score branch (all near:
/// `p - j < L`, or all far: `j < G` and `p - j >= L`), since choosing the branch per element
/// is mask work.
pub fn classify_lminf_tile(
    plo: i64,
    phi: i64,
    c0: i64,
    c1: i64,
    global_tokens: i64,
    local_window: i64,
) -> TileKind {
    let (g, l) = (global_tokens, local_window);
    let near = l > 0 && phi - c0 >= 0 && plo - c1 < l;
    let far = c0 < g && phi - c0 >= l;
    kind(
        !(near || far),
        (c1 <= plo && phi - c0 < l) || (c1 < g && plo - c1 >= l),
    )
}

fn lambda_allowed(v: &[f64], _: &[i32], p: i64, j: i64) -> bool {
    j <= p && (j < v[0] as i64 || p - j < v[1] as i64)
}

/// Every built-in mask (variants.md sections 1, 2, 5 and 11).
pub static MASKS: &[MaskDef] = &[
    MaskDef {
        tag: "full",
        summary: "every key",
        params: &[],
        element_fn: None,
        tile_fn: None,
        key_range: FULL_RANGE,
        query_range: ALL_QUERIES,
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: true,
        lm_infinite_scoring: false,
        causality: Causality::NotCausal(Some("causal")),
        shorthands: &[],
        host_allowed: |_, _, _, _| true,
        host_classify: Some(|_, _, _, _, _| TileKind::Full),
        tile_edges: no_edges,
    },
    MaskDef {
        tag: "causal",
        summary: "j <= p (bottom-right aligned)",
        params: &[],
        element_fn: Some("af_mask_causal"),
        tile_fn: Some("af_tile_causal"),
        key_range: CAUSAL_RANGE,
        query_range: QUERIES_FROM_C0,
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: true,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: |_, _, p, j| j <= p,
        host_classify: Some(classify_causal),
        tile_edges: causal_edges,
    },
    MaskDef {
        tag: "local",
        summary: "p - window_left <= j <= p + window_right (negative: unbounded)",
        params: LOCAL_PARAMS,
        element_fn: Some("af_mask_local"),
        tile_fn: Some("af_tile_local"),
        key_range: (
            "window_left < 0 ? 0LL : max(0LL, p_lo - window_left)",
            "window_right < 0 ? (long long)seq_k : min((long long)seq_k, p_hi + window_right + 1)",
        ),
        query_range: (
            "window_right < 0 ? (long long)seq_k - seq_q : max((long long)seq_k - seq_q, c0 - window_right)",
            "window_left < 0 ? (long long)seq_k : min((long long)seq_k, c1 + window_left + 1)",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::CausalWhenZero("window_right"),
        shorthands: &[("sliding_window", "window_right")],
        host_allowed: |v, _, p, j| {
            let (left, right) = (v[0] as i64, v[1] as i64);
            (left < 0 || j >= p - left) && (right < 0 || j <= p + right)
        },
        host_classify: Some(classify_local),
        tile_edges: local_edges,
    },
    MaskDef {
        tag: "prefix_lm",
        summary: "j <= p or j < prefix_len",
        params: PREFIX_PARAMS,
        element_fn: Some("af_mask_prefix_lm"),
        tile_fn: Some("af_tile_prefix_lm"),
        key_range: FULL_RANGE,
        query_range: (
            "c0 < prefix_len ? (long long)seq_k - seq_q : max((long long)seq_k - seq_q, c0)",
            "(long long)seq_k",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::NotCausal(None),
        shorthands: &[],
        host_allowed: |v, _, p, j| j <= p || j < v[0] as i64,
        host_classify: Some(classify_prefix),
        tile_edges: prefix_edges,
    },
    MaskDef {
        tag: "document",
        summary: "doc[p] == doc[j]",
        params: &[],
        element_fn: Some("af_mask_document"),
        tile_fn: None,
        key_range: FULL_RANGE,
        query_range: ALL_QUERIES,
        schedule: ScheduleKind::BlockLists,
        reads_doc: true,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::NotCausal(Some("causal_document")),
        shorthands: &[],
        host_allowed: |_, doc, p, j| doc_eq(doc, p, j),
        host_classify: None,
        tile_edges: no_edges,
    },
    MaskDef {
        tag: "causal_document",
        summary: "doc[p] == doc[j] and j <= p",
        params: &[],
        element_fn: Some("af_mask_causal_document"),
        tile_fn: None,
        key_range: FULL_RANGE,
        query_range: ALL_QUERIES,
        schedule: ScheduleKind::BlockLists,
        reads_doc: true,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: |_, doc, p, j| j <= p && doc_eq(doc, p, j),
        host_classify: None,
        tile_edges: no_edges,
    },
    MaskDef {
        tag: "share_question",
        summary: "(doc[p] != 0 and doc[j] == 0) or (doc[p] == doc[j] and j <= p); id 0 is the question",
        params: &[],
        element_fn: Some("af_mask_share_question"),
        tile_fn: None,
        key_range: FULL_RANGE,
        query_range: ALL_QUERIES,
        schedule: ScheduleKind::BlockLists,
        reads_doc: true,
        doc_rule: DocRule::QuestionPrefix,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: |_, doc, p, j| {
            if p < 0 {
                return false;
            }
            let (di, dj) = (doc[p as usize], doc[j as usize]);
            (di != 0 && dj == 0) || (di == dj && j <= p)
        },
        host_classify: None,
        tile_edges: no_edges,
    },
    MaskDef {
        tag: "global_local",
        summary: "|p - j| <= window or p < global_tokens or j < global_tokens",
        params: GLOBAL_LOCAL_PARAMS,
        element_fn: Some("af_mask_global_local"),
        tile_fn: Some("af_tile_global_local"),
        key_range: FULL_RANGE,
        query_range: (
            "(global_tokens > 0 || c0 < global_tokens) ? (long long)seq_k - seq_q : max((long long)seq_k - seq_q, c0 - window)",
            "c0 < global_tokens ? (long long)seq_k : min((long long)seq_k, c1 + window + 1)",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::NotCausal(None),
        shorthands: &[],
        host_allowed: |v, _, p, j| {
            let g = v[1] as i64;
            (p - j).abs() <= v[0] as i64 || p < g || j < g
        },
        host_classify: Some(classify_global_local),
        tile_edges: global_local_edges,
    },
    MaskDef {
        tag: "block_causal_document",
        summary: "doc[p] == doc[j] and j / doc_block <= p / doc_block",
        params: BLOCK_CAUSAL_DOC_PARAMS,
        element_fn: Some("af_mask_block_causal_document"),
        tile_fn: None,
        key_range: FULL_RANGE,
        query_range: ALL_QUERIES,
        schedule: ScheduleKind::BlockLists,
        reads_doc: true,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: |v, doc, p, j| {
            let bc = v[0] as i64;
            doc_eq(doc, p, j) && j.div_euclid(bc) <= p.div_euclid(bc)
        },
        host_classify: None,
        tile_edges: no_edges,
    },
    MaskDef {
        tag: "lambda_mask",
        summary: "j <= p and (j < global_tokens or p - j < local_window)",
        params: LAMBDA_PARAMS,
        element_fn: Some("af_mask_lambda"),
        tile_fn: Some("af_tile_lambda"),
        key_range: CAUSAL_RANGE,
        query_range: (
            "max((long long)seq_k - seq_q, c0)",
            "c0 < global_tokens ? (long long)seq_k : min((long long)seq_k, c1 + local_window)",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: lambda_allowed,
        host_classify: Some(classify_lambda),
        tile_edges: lambda_edges,
    },
    MaskDef {
        tag: "lm_infinite",
        summary: "LM-Infinite: the lambda mask's keys, RoPE near branch, far branch at min(dist_limit, Sk - 1) (inputs un-rotated)",
        params: LM_INFINITE_PARAMS,
        element_fn: Some("af_mask_lambda"),
        tile_fn: Some("af_tile_lminf"),
        key_range: CAUSAL_RANGE,
        query_range: (
            "max((long long)seq_k - seq_q, c0)",
            "c0 < global_tokens ? (long long)seq_k : min((long long)seq_k, c1 + local_window)",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: true,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: lambda_allowed,
        host_classify: Some(|v, plo, phi, c0, c1| {
            classify_lminf_tile(plo, phi, c0, c1, v[0] as i64, v[1] as i64)
        }),
        tile_edges: lambda_edges,
    },
    MaskDef {
        tag: "chunked_causal",
        summary: "j <= p and floor(j / chunk_size) == floor(p / chunk_size) (Llama 4 chunked attention)",
        params: CHUNKED_CAUSAL_PARAMS,
        element_fn: Some("af_mask_chunked_causal"),
        tile_fn: Some("af_tile_chunked_causal"),
        key_range: (
            "af_keys_lo_chunked_causal(p_lo, p_hi, seq_k, chunk_size)",
            "af_keys_hi_chunked_causal(p_lo, p_hi, seq_k, chunk_size)",
        ),
        query_range: (
            "max((long long)seq_k - seq_q, c0)",
            "min((long long)seq_k, (long long)((int)c1 / chunk_size + 1) * chunk_size)",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: |v, _, p, j| chunked_causal_allowed(p, j, v[0] as i64),
        host_classify: Some(|v, plo, phi, c0, c1| chunked_causal_tile(plo, phi, c0, c1, v[0] as i64)),
        tile_edges: chunked_causal_edges,
    },
    MaskDef {
        tag: "dilated_causal",
        summary: "p - j in {0, dilation, ..., window * dilation} (Longformer dilated window, causal)",
        params: DILATED_CAUSAL_PARAMS,
        element_fn: Some("af_mask_dilated_causal"),
        tile_fn: Some("af_tile_dilated_causal"),
        key_range: (
            "af_keys_lo_dilated_causal(p_lo, p_hi, seq_k, window, dilation)",
            "af_keys_hi_dilated_causal(p_lo, p_hi, seq_k, window, dilation)",
        ),
        query_range: (
            "max((long long)seq_k - seq_q, c0)",
            "min((long long)seq_k, c1 + (long long)window * dilation + 1)",
        ),
        schedule: ScheduleKind::Analytic,
        reads_doc: false,
        doc_rule: DocRule::Any,
        allows_sq_gt_sk: false,
        lm_infinite_scoring: false,
        causality: Causality::Causal,
        shorthands: &[],
        host_allowed: |v, _, p, j| dilated_causal_allowed(p, j, v[0] as i64, v[1] as i64),
        host_classify: Some(|v, plo, phi, c0, c1| {
            dilated_causal_tile(plo, phi, c0, c1, v[0] as i64, v[1] as i64)
        }),
        tile_edges: dilated_causal_edges,
    },
];

/// A built-in mask: a handle to its [`MaskDef`] in [`MASKS`] (compared, hashed and
/// serialized by tag).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BuiltinMask(&'static str);

impl BuiltinMask {
    /// The mask with this tag.
    pub fn from_tag(tag: &str) -> Option<BuiltinMask> {
        MASKS
            .iter()
            .find(|d| d.tag == tag)
            .map(|d| BuiltinMask(d.tag))
    }
    /// Every built-in mask, in table order.
    pub fn all() -> impl Iterator<Item = BuiltinMask> {
        MASKS.iter().map(|d| BuiltinMask(d.tag))
    }
    /// Its definition.
    pub fn def(self) -> &'static MaskDef {
        MASKS
            .iter()
            .find(|d| d.tag == self.0)
            .expect("a BuiltinMask is only built from a table tag")
    }
    /// Its tag.
    pub fn tag(self) -> &'static str {
        self.0
    }
    /// Every tag, comma-separated (for error messages).
    pub fn tag_list() -> String {
        MASKS.iter().map(|d| d.tag).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Debug for BuiltinMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for BuiltinMask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for BuiltinMask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BuiltinMask::from_tag(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown mask `{s}`, expected one of: {}",
                BuiltinMask::tag_list()
            ))
        })
    }
}

/// The built-in masks as [`Mask`] values (`Mask::Causal`, ...), so that Rust code names a
/// built-in mask the way it names the other variants.
#[allow(non_upper_case_globals)]
impl Mask {
    /// `full`.
    pub const Full: Mask = Mask::Builtin(BuiltinMask("full"));
    /// `causal`.
    pub const Causal: Mask = Mask::Builtin(BuiltinMask("causal"));
    /// `local(window_left, window_right)`.
    pub const Local: Mask = Mask::Builtin(BuiltinMask("local"));
    /// `prefix_lm(prefix_len)`.
    pub const PrefixLm: Mask = Mask::Builtin(BuiltinMask("prefix_lm"));
    /// `document` (doc ids).
    pub const Document: Mask = Mask::Builtin(BuiltinMask("document"));
    /// `causal_document` (doc ids).
    pub const CausalDocument: Mask = Mask::Builtin(BuiltinMask("causal_document"));
    /// `share_question` (doc ids).
    pub const ShareQuestion: Mask = Mask::Builtin(BuiltinMask("share_question"));
    /// `global_local(window, global_tokens)`.
    pub const GlobalLocal: Mask = Mask::Builtin(BuiltinMask("global_local"));
    /// `block_causal_document(doc_block)` (doc ids).
    pub const BlockCausalDocument: Mask = Mask::Builtin(BuiltinMask("block_causal_document"));
    /// `lambda_mask(global_tokens, local_window)`.
    pub const LambdaMask: Mask = Mask::Builtin(BuiltinMask("lambda_mask"));
    /// `lm_infinite(global_tokens, local_window, dist_limit[, rope_theta])`.
    pub const LmInfinite: Mask = Mask::Builtin(BuiltinMask("lm_infinite"));
    /// `chunked_causal(chunk_size)`.
    pub const ChunkedCausal: Mask = Mask::Builtin(BuiltinMask("chunked_causal"));
    /// `dilated_causal(window, dilation)`.
    pub const DilatedCausal: Mask = Mask::Builtin(BuiltinMask("dilated_causal"));
}

/// The mask of a declaration (macro, spec) that names none: every key.
pub const DEFAULT_MASK: Mask = Mask::Full;

/// Runtime values of a built-in mask's parameters, keyed by the table's parameter names
/// (empty for masks without parameters, predicates and block-sparse masks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaskParams(BTreeMap<String, f64>);

#[allow(non_upper_case_globals)]
impl MaskParams {
    /// No parameters.
    pub const None: MaskParams = MaskParams(BTreeMap::new());

    /// No parameters (add them with [`MaskParams::with`]).
    pub fn new() -> Self {
        MaskParams::None
    }
    /// Builder: set parameter `name`.
    pub fn with(mut self, name: &str, value: impl Into<ParamNum>) -> Self {
        self.0.insert(name.to_string(), value.into().0);
        self
    }
    /// Set parameter `name`.
    pub fn set(&mut self, name: &str, value: impl Into<ParamNum>) {
        self.0.insert(name.to_string(), value.into().0);
    }
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }
    /// Every `(name, value)`, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
    /// No values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The values of `mask`'s parameters in table order (an absent one: its default at
    /// `seq_k`).
    pub fn ordered(&self, mask: BuiltinMask, seq_k: usize) -> Vec<f64> {
        mask.def()
            .params
            .iter()
            .map(|p| self.get(p.name).unwrap_or_else(|| p.default.at(seq_k)))
            .collect()
    }
    /// From values in table order.
    pub fn from_ordered(mask: BuiltinMask, values: &[f64]) -> Self {
        MaskParams(
            mask.def()
                .params
                .iter()
                .zip(values)
                .map(|(p, v)| (p.name.to_string(), *v))
                .collect(),
        )
    }
    /// The table's defaults at key length `seq_k` (catalog runs, spec-file export, tuner
    /// workloads).
    pub fn defaults(mask: BuiltinMask, seq_k: usize) -> Self {
        let v: Vec<f64> = mask
            .def()
            .params
            .iter()
            .map(|p| p.default.at(seq_k))
            .collect();
        Self::from_ordered(mask, &v)
    }
    /// The table's non-default values at `seq_k` (check problems).
    pub fn stress(mask: BuiltinMask, seq_k: usize) -> Self {
        let v: Vec<f64> = mask
            .def()
            .params
            .iter()
            .map(|p| p.stress.at(seq_k))
            .collect();
        Self::from_ordered(mask, &v)
    }
    /// [`MaskParams::defaults`] of the spec's mask (empty for non-built-in masks).
    pub fn defaults_for(mask: &Mask, seq_k: usize) -> Self {
        match mask {
            Mask::Builtin(m) => Self::defaults(*m, seq_k),
            _ => MaskParams::None,
        }
    }
}

/// A number accepted as a parameter value (integers and floats; stored as `f64`, exact for
/// every valid value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamNum(pub f64);

macro_rules! param_num {
    ($($t:ty),*) => {$(
        impl From<$t> for ParamNum {
            fn from(v: $t) -> Self {
                ParamNum(v as f64)
            }
        }
    )*};
}
param_num!(i32, i64, u32, usize, f32, f64);

/// Every parameter name of every built-in mask (kernel arguments, spec-file keys).
pub fn all_param_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = MASKS
        .iter()
        .flat_map(|d| d.params.iter().map(|p| p.name))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

// ---- host closed forms of chunked_causal and dilated_causal (mirrors of af_attn.cuh) ----

/// `chunked_causal(C)`: `j <= p` and `floor(j / C) == floor(p / C)` (chunks counted from
/// position 0), written as `p - j <= p mod C` (one remainder). Mirrors `af_mask_chunked_causal`.
pub fn chunked_causal_allowed(p: i64, j: i64, chunk: i64) -> bool {
    j <= p && p - j <= p.rem_euclid(chunk)
}

/// `dilated_causal(w, d)`: `p - j` is one of `0, d, ..., w d`. Mirrors `af_mask_dilated_causal`.
pub fn dilated_causal_allowed(p: i64, j: i64, window: i64, dilation: i64) -> bool {
    let dist = p - j;
    dist >= 0 && dist <= window.saturating_mul(dilation) && dist % dilation == 0
}

/// Exact classification of the tile of query positions `plo..=phi` and key positions
/// `c0..=c1` (non-empty, `0 <= plo`, `0 <= c0`). Row `p` sees the keys
/// `[C floor(p / C), p]`, both ends nondecreasing in `p`: some element is allowed iff the
/// first row at or right of `c0` exists and its chunk starts by `c1`; every element is iff
/// `c1 <= plo` and the last row's chunk starts by `c0`. Mirrors `af_tile_chunked_causal`.
pub fn chunked_causal_tile(plo: i64, phi: i64, c0: i64, c1: i64, chunk: i64) -> TileKind {
    let first_row = c0.max(plo);
    if first_row > phi || first_row / chunk > c1 / chunk {
        TileKind::Skip
    } else if c1 <= plo && phi / chunk == c0 / chunk {
        TileKind::Full
    } else {
        TileKind::Partial
    }
}

/// Exact classification of a tile (as [`chunked_causal_tile`]). The distances `p - j` over
/// the tile are every integer of `[plo - c1, phi - c0]`: some element is allowed iff a
/// multiple of `d` lies in that range clipped to `[0, w d]`. With `d >= 2` two neighbouring
/// distances are never both allowed, so a tile is `Full` only when it is one element, or
/// with `d = 1` when all its distances lie in `[0, w]`. Mirrors `af_tile_dilated_causal`.
pub fn dilated_causal_tile(
    plo: i64,
    phi: i64,
    c0: i64,
    c1: i64,
    window: i64,
    dilation: i64,
) -> TileKind {
    let reach = window.saturating_mul(dilation);
    let near = (plo - c1).max(0);
    let far = (phi - c0).min(reach);
    if far < near || far / dilation * dilation < near {
        TileKind::Skip
    } else if (plo == phi && c0 == c1) || (dilation == 1 && plo - c1 >= 0 && phi - c0 <= reach) {
        TileKind::Full
    } else {
        TileKind::Partial
    }
}

/// Exact key range `[lo, hi)` of the query positions `plo..=phi` (`0 <= plo <= phi < seq_k`):
/// `lo` = the chunk start of `plo` (row `plo` sees it, no row sees an earlier key), `hi` =
/// `phi + 1`. Mirrors `af_keys_lo_chunked_causal` / `af_keys_hi_chunked_causal`.
pub fn chunked_causal_key_range(plo: i64, phi: i64, seq_k: i64, chunk: i64) -> (i64, i64) {
    let lo = if plo <= 0 { 0 } else { plo / chunk * chunk };
    (lo, (phi + 1).min(seq_k))
}

/// Exact key range `[lo, hi)` of the query positions `plo..=phi` (`0 <= plo <= phi < seq_k`).
/// Row `p` first sees `p - w d` once `p >= w d`, else `p mod d`; below `w d` the minimum over
/// the block is 0 exactly when a multiple of `d` lies in `[plo, phi]` (`w d` itself is one).
/// `hi = phi + 1`. Mirrors `af_keys_lo_dilated_causal` / `af_keys_hi_dilated_causal`.
pub fn dilated_causal_key_range(
    plo: i64,
    phi: i64,
    seq_k: i64,
    window: i64,
    dilation: i64,
) -> (i64, i64) {
    let reach = window.saturating_mul(dilation);
    let lo = if plo >= reach {
        plo - reach
    } else if plo <= 0 {
        0
    } else {
        let r = plo % dilation;
        if r == 0 || phi - plo >= dilation - r {
            0
        } else {
            r
        }
    };
    (lo, (phi + 1).min(seq_k))
}
