//! Element masks (variants.md sections 1, 2 and 11) and score modifications (section 3).
//!
//! Masks and score functions see *positions*: query row `i` is at `p(i) = i + (Sk - Sq)`.
//!
//! ```
//! use attnforge_reference::{alibi_slopes, Mask, ScoreMod};
//! let m = Mask::All(vec![Mask::Causal, Mask::predicate(|_b, _h, q, k| (q - k) % 2 == 0)]);
//! let s = ScoreMod::Chain(vec![ScoreMod::Softcap(30.0), ScoreMod::Alibi(alibi_slopes(6))]);
//! assert_eq!(alibi_slopes(6)[4], 0.5);
//! # let _ = (m, s);
//! ```

use std::fmt;
use std::sync::Arc;

use crate::element::Acc;
use crate::error::RefError;

/// A user mask predicate `(batch, query head, query position, key position) -> allowed`.
pub type MaskFn = Arc<dyn Fn(usize, usize, i64, i64) -> bool + Send + Sync>;

/// A user score function `(score, batch, query head, query position, key position) -> score`.
pub type ScoreFn = Arc<dyn Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync>;

/// An element mask `allowed(i, j)` (variants.md sections 1 and 2). `i` below is the
/// query position `p(i)`.
///
/// Per-token `doc` arrays hold either `Sk` ids (shared by every batch) or `B * Sk` ids
/// (batch-major); the query reads `doc[p(i)]`.
#[derive(Clone)]
pub enum Mask {
    /// Section 1 `full`: every key. Supports `Sq > Sk`.
    Full,
    /// Section 1 `causal`: `j <= p(i)`, bottom-right aligned. Supports `Sq > Sk` (rows with
    /// `p(i) < 0` are empty).
    Causal,
    /// Section 2 `local(left, right)`: `p(i) - left <= j <= p(i) + right`; a negative bound is
    /// unbounded on that side. `local(w, 0)` is the causal sliding window of `w + 1` keys.
    Local {
        /// Keys allowed to the left (negative: unbounded).
        left: i64,
        /// Keys allowed to the right (negative: unbounded).
        right: i64,
    },
    /// Section 2 `prefix_lm(P)`: `j <= p(i) or j < P`.
    PrefixLm {
        /// Bidirectional prefix length P.
        prefix: usize,
    },
    /// Section 2 `document(doc)`: `doc[i] == doc[j]`.
    Document {
        /// Per-token ids (`Sk` or `B * Sk`).
        doc: Vec<i32>,
    },
    /// Section 2 `causal_document(doc)`: `doc[i] == doc[j] and j <= i`.
    CausalDocument {
        /// Per-token ids (`Sk` or `B * Sk`).
        doc: Vec<i32>,
    },
    /// Section 2 `share_question(doc)`: `(doc[i] != 0 and doc[j] == 0) or (doc[i] == doc[j] and j <= i)`.
    /// Doc id 0 (the question) must be a prefix (possibly empty) of each batch's ids.
    ShareQuestion {
        /// Per-token ids (`Sk` or `B * Sk`).
        doc: Vec<i32>,
    },
    /// Section 2 `global_local(w, G)`: `|i - j| <= w or i < G or j < G`.
    GlobalLocal {
        /// Half window w.
        window: usize,
        /// Number of global tokens G.
        global: usize,
    },
    /// Section 2 `block_causal_document(doc, Bc)`: `doc[i] == doc[j] and j / Bc <= i / Bc`.
    BlockCausalDocument {
        /// Per-token ids (`Sk` or `B * Sk`).
        doc: Vec<i32>,
        /// Block size Bc (>= 1), counted from position 0.
        block: usize,
    },
    /// Section 2 `lambda_mask(G, L)`: `j <= i and (j < G or i - j < L)`.
    Lambda {
        /// Starting (global) tokens G.
        global: usize,
        /// Local window L.
        local: usize,
    },
    /// Section 11 `chunked_causal(C)` (Llama 4's chunked attention): `j <= p(i)` and
    /// `floor(j / C) == floor(p(i) / C)`, chunks counted from position 0.
    ChunkedCausal {
        /// Chunk length C (>= 1).
        chunk: usize,
    },
    /// Section 11 `dilated_causal(w, d)` (Longformer's dilated sliding window, causal form):
    /// `j <= p(i)`, `(p(i) - j) mod d == 0` and `(p(i) - j) / d <= w`, i.e. the `w + 1` keys at
    /// distances `0, d, ..., w d` (those at positions >= 0).
    DilatedCausal {
        /// Window w (>= 0): keys at up to `w` dilated steps back.
        window: usize,
        /// Dilation d (>= 1): the distance between two allowed keys.
        dilation: usize,
    },
    /// Section 2 user predicate `mask(b, h, i, j)`.
    Predicate(MaskFn),
    /// Intersection of masks (an empty list allows everything).
    All(Vec<Mask>),
    /// Union of masks (an empty list allows nothing).
    Any(Vec<Mask>),
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Full => write!(f, "Full"),
            Mask::Causal => write!(f, "Causal"),
            Mask::Local { left, right } => write!(f, "Local({left}, {right})"),
            Mask::PrefixLm { prefix } => write!(f, "PrefixLm({prefix})"),
            Mask::Document { doc } => write!(f, "Document({doc:?})"),
            Mask::CausalDocument { doc } => write!(f, "CausalDocument({doc:?})"),
            Mask::ShareQuestion { doc } => write!(f, "ShareQuestion({doc:?})"),
            Mask::GlobalLocal { window, global } => write!(f, "GlobalLocal({window}, {global})"),
            Mask::BlockCausalDocument { doc, block } => {
                write!(f, "BlockCausalDocument({doc:?}, {block})")
            }
            Mask::Lambda { global, local } => write!(f, "Lambda({global}, {local})"),
            Mask::ChunkedCausal { chunk } => write!(f, "ChunkedCausal({chunk})"),
            Mask::DilatedCausal { window, dilation } => {
                write!(f, "DilatedCausal({window}, {dilation})")
            }
            Mask::Predicate(_) => write!(f, "Predicate(<fn>)"),
            Mask::All(ms) => f.debug_tuple("All").field(ms).finish(),
            Mask::Any(ms) => f.debug_tuple("Any").field(ms).finish(),
        }
    }
}

fn doc_at(doc: &[i32], b: usize, pos: i64, sk: usize) -> i32 {
    let pos = pos as usize;
    if doc.len() == sk {
        doc[pos]
    } else {
        doc[b * sk + pos]
    }
}

fn check_doc(doc: &[i32], field: &'static str, batch: usize, sk: usize) -> Result<(), RefError> {
    if doc.len() != sk && doc.len() != batch * sk {
        return Err(RefError::ShapeMismatch {
            field,
            expected: format!("Sk = {sk} or B * Sk = {}", batch * sk),
            got: doc.len(),
            fix:
                "pass one id per key position (shared by all batches) or one per (batch, position)",
        });
    }
    Ok(())
}

impl Mask {
    /// A user predicate mask from a closure `(b, h, qpos, kpos) -> bool`.
    pub fn predicate(f: impl Fn(usize, usize, i64, i64) -> bool + Send + Sync + 'static) -> Self {
        Mask::Predicate(Arc::new(f))
    }

    /// A built-in mask by its tag (the spelling of spec files and canonical kernel names)
    /// and its runtime parameters by name; `doc` holds the per-token ids of the
    /// document masks (ignored by the others). This is the reference's own reading of the
    /// parameters, independent of the kernel generator. `lm_infinite` gives its allowed set
    /// (the lambda mask; the scoring is [`crate::lm_infinite_attention`]).
    pub fn builtin(tag: &str, params: &[(&str, f64)], doc: &[i32]) -> Result<Mask, RefError> {
        let get = |name: &'static str| -> Result<f64, RefError> {
            params
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or(RefError::InvalidParam {
                    field: name,
                    value: "missing".into(),
                    fix: "pass every parameter of the mask by its name",
                })
        };
        let count = |name: &'static str| get(name).map(|v| v.max(0.0) as usize);
        let doc = || doc.to_vec();
        Ok(match tag {
            "full" => Mask::Full,
            "causal" => Mask::Causal,
            "local" => Mask::Local {
                left: get("window_left")? as i64,
                right: get("window_right")? as i64,
            },
            "prefix_lm" => Mask::PrefixLm {
                prefix: count("prefix_len")?,
            },
            "document" => Mask::Document { doc: doc() },
            "causal_document" => Mask::CausalDocument { doc: doc() },
            "share_question" => Mask::ShareQuestion { doc: doc() },
            "global_local" => Mask::GlobalLocal {
                window: count("window")?,
                global: count("global_tokens")?,
            },
            "block_causal_document" => Mask::BlockCausalDocument {
                doc: doc(),
                block: count("doc_block")?.max(1),
            },
            "lambda_mask" | "lm_infinite" => Mask::Lambda {
                global: count("global_tokens")?,
                local: count("local_window")?,
            },
            "chunked_causal" => Mask::ChunkedCausal {
                chunk: count("chunk_size")?,
            },
            "dilated_causal" => Mask::DilatedCausal {
                window: count("window")?,
                dilation: count("dilation")?,
            },
            _ => {
                return Err(RefError::InvalidParam {
                    field: "Mask::builtin tag",
                    value: tag.to_string(),
                    fix: "use the tag of a built-in mask (variants.md sections 1, 2 and 5)",
                })
            }
        })
    }

    /// Short name used in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Mask::Full => "full",
            Mask::Causal => "causal",
            Mask::Local { .. } => "local",
            Mask::PrefixLm { .. } => "prefix_lm",
            Mask::Document { .. } => "document",
            Mask::CausalDocument { .. } => "causal_document",
            Mask::ShareQuestion { .. } => "share_question",
            Mask::GlobalLocal { .. } => "global_local",
            Mask::BlockCausalDocument { .. } => "block_causal_document",
            Mask::Lambda { .. } => "lambda_mask",
            Mask::ChunkedCausal { .. } => "chunked_causal",
            Mask::DilatedCausal { .. } => "dilated_causal",
            Mask::Predicate(_) => "predicate",
            Mask::All(_) => "all",
            Mask::Any(_) => "any",
        }
    }

    /// True when the mask is defined for `Sq > Sk` (only full and causal, and their combinations).
    pub fn supports_sq_gt_sk(&self) -> bool {
        match self {
            Mask::Full | Mask::Causal => true,
            Mask::All(ms) | Mask::Any(ms) => ms.iter().all(Mask::supports_sq_gt_sk),
            _ => false,
        }
    }

    /// Validate parameters against `(B, Sq, Sk)`.
    pub fn validate(&self, batch: usize, sq: usize, sk: usize) -> Result<(), RefError> {
        if sq > sk && !self.supports_sq_gt_sk() {
            return Err(RefError::QueryLongerThanKeys {
                variant: self.name(),
                sq,
                sk,
            });
        }
        match self {
            Mask::Document { doc } => check_doc(doc, "Mask::Document::doc", batch, sk),
            Mask::CausalDocument { doc } => check_doc(doc, "Mask::CausalDocument::doc", batch, sk),
            Mask::ShareQuestion { doc } => {
                check_doc(doc, "Mask::ShareQuestion::doc", batch, sk)?;
                for (bi, ids) in doc.chunks(sk.max(1)).enumerate() {
                    let prefix = ids.iter().take_while(|&&d| d == 0).count();
                    if let Some(off) = ids[prefix..].iter().position(|&d| d == 0) {
                        return Err(RefError::QuestionNotPrefix {
                            batch: bi,
                            pos: prefix + off,
                        });
                    }
                }
                Ok(())
            }
            Mask::BlockCausalDocument { doc, block } => {
                if *block == 0 {
                    return Err(RefError::InvalidParam {
                        field: "Mask::BlockCausalDocument::block",
                        value: "0".into(),
                        fix: "the block size Bc must be >= 1",
                    });
                }
                check_doc(doc, "Mask::BlockCausalDocument::doc", batch, sk)
            }
            Mask::ChunkedCausal { chunk: 0 } => Err(RefError::InvalidParam {
                field: "Mask::ChunkedCausal::chunk",
                value: "0".into(),
                fix: "the chunk length C must be >= 1",
            }),
            Mask::DilatedCausal { dilation: 0, .. } => Err(RefError::InvalidParam {
                field: "Mask::DilatedCausal::dilation",
                value: "0".into(),
                fix:
                    "the dilation d must be >= 1 (d = 1 is the causal sliding window of w + 1 keys)",
            }),
            Mask::All(ms) | Mask::Any(ms) => ms.iter().try_for_each(|m| m.validate(batch, sq, sk)),
            _ => Ok(()),
        }
    }

    /// `allowed(qpos, kpos)` for batch `b`, query head `h`. Call [`Mask::validate`] first.
    pub fn allowed(&self, b: usize, h: usize, i: i64, j: i64, sk: usize) -> bool {
        match self {
            Mask::Full => true,
            Mask::Causal => j <= i,
            Mask::Local { left, right } => {
                (*left < 0 || j >= i - left) && (*right < 0 || j <= i + right)
            }
            Mask::PrefixLm { prefix } => j <= i || j < *prefix as i64,
            Mask::Document { doc } => doc_at(doc, b, i, sk) == doc_at(doc, b, j, sk),
            Mask::CausalDocument { doc } => {
                j <= i && doc_at(doc, b, i, sk) == doc_at(doc, b, j, sk)
            }
            Mask::ShareQuestion { doc } => {
                let (di, dj) = (doc_at(doc, b, i, sk), doc_at(doc, b, j, sk));
                (di != 0 && dj == 0) || (di == dj && j <= i)
            }
            Mask::GlobalLocal { window, global } => {
                (i - j).abs() <= *window as i64 || i < *global as i64 || j < *global as i64
            }
            Mask::BlockCausalDocument { doc, block } => {
                let bc = *block as i64;
                doc_at(doc, b, i, sk) == doc_at(doc, b, j, sk) && j / bc <= i / bc
            }
            Mask::Lambda { global, local } => {
                j <= i && (j < *global as i64 || i - j < *local as i64)
            }
            Mask::ChunkedCausal { chunk } => {
                // i128: a chunk length above i64::MAX stays one chunk, never a negative divisor
                let c = *chunk as i128;
                j <= i && (j as i128).div_euclid(c) == (i as i128).div_euclid(c)
            }
            Mask::DilatedCausal { window, dilation } => {
                let dist = i as i128 - j as i128;
                let d = *dilation as i128;
                dist >= 0 && dist % d == 0 && dist / d <= *window as i128
            }
            Mask::Predicate(f) => f(b, h, i, j),
            Mask::All(ms) => ms.iter().all(|m| m.allowed(b, h, i, j, sk)),
            Mask::Any(ms) => ms.iter().any(|m| m.allowed(b, h, i, j, sk)),
        }
    }
}

/// A score modification `s'` (variants.md section 3). The mask is applied after it:
/// masked entries are excluded, never modified.
#[derive(Clone, Default)]
pub enum ScoreMod {
    /// No modification.
    #[default]
    None,
    /// `softcap(c)`: `s' = c * tanh(s / c)`, `c > 0`.
    Softcap(f64),
    /// `alibi(slopes)`: `s' = s - slope[h] * |p(i) - j|`; one slope per query head
    /// (see [`alibi_slopes`] for the standard ones).
    Alibi(Vec<f64>),
    /// User function `score(s, b, h, i, j)` (positions). Its result is not rounded to f32
    /// in the reference.
    Function(ScoreFn),
    /// Apply several modifications in order.
    Chain(Vec<ScoreMod>),
}

impl fmt::Debug for ScoreMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScoreMod::None => write!(f, "None"),
            ScoreMod::Softcap(c) => write!(f, "Softcap({c})"),
            ScoreMod::Alibi(s) => write!(f, "Alibi({s:?})"),
            ScoreMod::Function(_) => write!(f, "Function(<fn>)"),
            ScoreMod::Chain(c) => f.debug_tuple("Chain").field(c).finish(),
        }
    }
}

impl ScoreMod {
    /// A user score function from a closure `(score, b, h, qpos, kpos) -> score`.
    pub fn function(
        f: impl Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync + 'static,
    ) -> Self {
        ScoreMod::Function(Arc::new(f))
    }

    /// Short name used in error messages (`none`, `softcap`, `alibi`, `score_function`, `chain`).
    pub fn name(&self) -> &'static str {
        match self {
            ScoreMod::None => "none",
            ScoreMod::Softcap(_) => "softcap",
            ScoreMod::Alibi(_) => "alibi",
            ScoreMod::Function(_) => "score_function",
            ScoreMod::Chain(_) => "chain",
        }
    }

    /// Whether the scores are modified at all (`None`, or a chain of only `None`s, is not).
    pub fn modifies(&self) -> bool {
        match self {
            ScoreMod::None => false,
            ScoreMod::Chain(c) => c.iter().any(ScoreMod::modifies),
            _ => true,
        }
    }

    /// Validate parameters against the number of query heads.
    pub fn validate(&self, hq: usize) -> Result<(), RefError> {
        match self {
            ScoreMod::Softcap(c) if !(c.is_finite() && *c > 0.0) => Err(RefError::InvalidParam {
                field: "ScoreMod::Softcap",
                value: c.to_string(),
                fix: "the softcap c must be finite and > 0",
            }),
            ScoreMod::Alibi(s) if s.len() != hq => Err(RefError::ShapeMismatch {
                field: "ScoreMod::Alibi slopes",
                expected: format!("Hq = {hq}"),
                got: s.len(),
                fix: "pass one slope per query head, e.g. alibi_slopes(Hq)",
            }),
            ScoreMod::Alibi(s) if s.iter().any(|x| !x.is_finite()) => Err(RefError::InvalidParam {
                field: "ScoreMod::Alibi slopes",
                value: format!("{s:?}"),
                fix: "every slope must be finite",
            }),
            ScoreMod::Chain(c) => c.iter().try_for_each(|m| m.validate(hq)),
            _ => Ok(()),
        }
    }

    /// Apply to score `s` at `(b, h, qpos, kpos)`.
    pub(crate) fn apply<A: Acc>(&self, s: A, b: usize, h: usize, i: i64, j: i64) -> A {
        match self {
            ScoreMod::None => s,
            ScoreMod::Softcap(c) => {
                let c = A::of(*c);
                c * (s / c).tanh()
            }
            ScoreMod::Alibi(slopes) => s - A::of(slopes[h]) * A::of((i - j).abs() as f64),
            ScoreMod::Function(f) => A::of(f(s.f64(), b, h, i, j)),
            ScoreMod::Chain(c) => c.iter().fold(s, |acc, m| m.apply(acc, b, h, i, j)),
        }
    }
}

/// Standard ALiBi slopes for `hq` heads (ALiBi paper, variants.md section 3): for `hq` a
/// power of two, `2^(-8(h+1)/hq)`; otherwise the `n` slopes of the largest power of two
/// `n < hq`, then `2^(-8(2m+1)/(2n))` for `m = 0, 1, ...` until there are `hq`.
/// For `hq = 6`: `2^-2, 2^-4, 2^-6, 2^-8, 2^-1, 2^-3`.
pub fn alibi_slopes(hq: usize) -> Vec<f64> {
    if hq == 0 {
        return Vec::new();
    }
    let pow2 = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|h| 2f64.powf(-8.0 * (h as f64 + 1.0) / n as f64))
            .collect()
    };
    if hq.is_power_of_two() {
        return pow2(hq);
    }
    let n = 1usize << (usize::BITS - 1 - hq.leading_zeros());
    let mut slopes = pow2(n);
    let mut m = 0usize;
    while slopes.len() < hq {
        slopes.push(2f64.powf(-8.0 * (2 * m + 1) as f64 / (2 * n) as f64));
        m += 1;
    }
    slopes
}
