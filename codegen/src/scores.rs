//! The score-modification table: one [`ScoreDef`] per built-in score modification (`none`,
//! `softcap`, `alibi`; variants.md section 3). Kernel arguments, lowering, validation, spec
//! files and the `kernel!` macro read it; user score functions are [`ScoreMod::User`].
//!
//! ```
//! use attnforge_codegen::scores::SCORES;
//! use attnforge_codegen::spec::ScoreMod;
//! let d = ScoreMod::Softcap.def().unwrap();
//! assert_eq!(d.tag, "softcap");
//! assert_eq!(d.param.unwrap().name, "softcap");
//! assert_eq!(SCORES.len(), 3);
//! ```

use crate::spec::{DType, ScoreMod};

/// How a score parameter travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreParamKind {
    /// A `float` kernel argument given with the kernel (`softcap = 30.0`); required.
    Scalar,
    /// A `const float*` with one value per query head; optional (a default exists).
    PerHead,
}

/// The runtime parameter of a built-in score modification.
#[derive(Clone, Copy, Debug)]
pub struct ScoreParam {
    /// Name (kernel argument, spec-file key, error path).
    pub name: &'static str,
    /// Kind.
    pub kind: ScoreParamKind,
    /// Meaning.
    pub doc: &'static str,
    /// Fix text when the value is missing (scalars) or invalid.
    pub fix: &'static str,
    /// Default used by catalog runs and spec-file export (scalars).
    pub default: f32,
}

/// One built-in score modification.
#[derive(Clone, Copy, Debug)]
pub struct ScoreDef {
    /// The one spelling (spec files, macro, canonical names).
    pub tag: &'static str,
    /// Definition.
    pub summary: &'static str,
    /// Its runtime parameter.
    pub param: Option<ScoreParam>,
    /// CUDA expression over `x` (the score), `b`, `h`, `q_pos`, `kv_pos`, the parameter and
    /// the prologue's locals (functions in `cuda/af_attn.cuh`); `None`: scores unchanged.
    pub cuda: Option<&'static str>,
    /// Per-block prologue statements of `cuda`.
    pub prologue: &'static [&'static str],
    /// A faster form for 16-bit element types (expression, prologue), when there is one.
    pub cuda_16bit: Option<(&'static str, &'static [&'static str])>,
    /// Its derivatives for the backward kernels (`cuda/af_bwd.cuh`), `None` for the identity.
    pub grad: Option<ScoreGrad>,
}

/// The derivatives of a built-in score modification (variants.md section 12), as CUDA
/// expressions over the same names as [`ScoreDef::cuda`] (`x` the raw scaled score).
#[derive(Clone, Copy, Debug)]
pub struct ScoreGrad {
    /// `ds'/ds`.
    pub d_score: &'static str,
    /// `ds'/dtheta` of the one parameter (the cap; the slope of the entry's query head).
    pub d_param: &'static str,
}

impl ScoreDef {
    /// The CUDA expression and prologue for element type `dtype`.
    pub fn lowering(&self, dtype: DType) -> Option<(&'static str, &'static [&'static str])> {
        match (self.cuda_16bit, dtype) {
            (Some(fast), DType::F16 | DType::Bf16) => Some(fast),
            _ => self.cuda.map(|c| (c, self.prologue)),
        }
    }
}

/// Every built-in score modification.
pub static SCORES: &[ScoreDef] = &[
    ScoreDef {
        tag: "none",
        summary: "scores unchanged",
        param: None,
        cuda: None,
        prologue: &[],
        cuda_16bit: None,
        grad: None,
    },
    ScoreDef {
        tag: "softcap",
        summary: "c * tanh(s / c)",
        param: Some(ScoreParam {
            name: "softcap",
            kind: ScoreParamKind::Scalar,
            doc: "the cap c > 0",
            fix: "pass softcap = c > 0 (e.g. 30 or 50)",
            default: 20.0,
        }),
        cuda: Some("af_score_softcap(x, softcap)"),
        prologue: &[],
        cuda_16bit: Some((
            "af_score_softcap_fast(x, softcap, softcap_k)",
            &["const float softcap_k = 2.f * AF_LOG2E / softcap;  // exp2 scale of the fast softcap"],
        )),
        grad: Some(ScoreGrad {
            d_score: "af_softcap_dscore(x, softcap)",
            d_param: "af_softcap_dcap(x, softcap)",
        }),
    },
    ScoreDef {
        tag: "alibi",
        summary: "s - slope[h] * |p - j|",
        param: Some(ScoreParam {
            name: "alibi_slopes",
            kind: ScoreParamKind::PerHead,
            doc: "one slope per query head (default: the standard ALiBi slopes)",
            fix: "pass one slope per query head, or none for the standard slopes",
            default: 0.0,
        }),
        cuda: Some("af_score_alibi(x, slope, q_pos, kv_pos)"),
        prologue: &["const float slope = alibi_slopes[h];  // ALiBi slope of query head h"],
        cuda_16bit: None,
        grad: Some(ScoreGrad {
            d_score: "1.f",
            d_param: "af_alibi_dslope(q_pos, kv_pos)",
        }),
    },
];

impl ScoreMod {
    /// The built-in score modification with this tag.
    pub fn builtin(tag: &str) -> Option<ScoreMod> {
        Some(match tag {
            "none" => ScoreMod::None,
            "softcap" => ScoreMod::Softcap,
            "alibi" => ScoreMod::Alibi,
            _ => return None,
        })
    }

    /// Its table entry (`None` for a user score function).
    pub fn def(&self) -> Option<&'static ScoreDef> {
        let tag = match self {
            ScoreMod::None => "none",
            ScoreMod::Softcap => "softcap",
            ScoreMod::Alibi => "alibi",
            ScoreMod::User(_) => return None,
        };
        SCORES.iter().find(|d| d.tag == tag)
    }

    /// The table parameter of this kind, if the modification has one.
    pub fn param_of(&self, kind: ScoreParamKind) -> Option<ScoreParam> {
        self.def().and_then(|d| d.param).filter(|p| p.kind == kind)
    }
}

/// Every built-in tag, comma-separated (error messages).
pub fn tag_list() -> String {
    SCORES.iter().map(|d| d.tag).collect::<Vec<_>>().join(", ")
}
