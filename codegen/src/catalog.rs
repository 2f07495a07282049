//! The built-in catalog of static variants, each with a unique canonical name. Tests, the
//! CLI and the benches iterate over it.
//!
//! ```
//! let names: Vec<String> = attnforge_codegen::catalog().iter().map(|s| s.canonical_name()).collect();
//! assert!(names.contains(&"flash_fwd_lm_infinite_d128_bf16".to_string()));
//! ```

use crate::spec::{
    DType, HeadDim, KernelSpec, Mask, ScoreMod, UserFunction, UserParam, UserParamGrad,
    UserParamKind, UserScoreGrad, UserSource,
};

/// Example user predicate: causal, dilated by `stride` (keys at distance multiple of it).
pub fn example_mask_fn() -> UserFunction {
    UserFunction {
        name: "dilated".into(),
        source: UserSource::Body(
            "    return kv_pos <= q_pos && (q_pos - kv_pos) % stride == 0;".into(),
        ),
        params: vec![UserParam {
            name: "stride".into(),
            kind: UserParamKind::I32,
        }],
        grad: None,
    }
}

/// Example user score function: per-head bias table plus a linear distance decay,
/// `score + bias[h] - decay * |q_pos - kv_pos|`.
pub fn example_score_fn() -> UserFunction {
    UserFunction {
        name: "headbias".into(),
        source: UserSource::Body(
            "    const float dist = (float)(q_pos > kv_pos ? q_pos - kv_pos : kv_pos - q_pos);\n    return score + bias[h] - decay * dist;".into(),
        ),
        params: vec![
            UserParam { name: "bias".into(), kind: UserParamKind::ArrayF32 },
            UserParam { name: "decay".into(), kind: UserParamKind::F32 },
        ],
        grad: Some(example_score_grad()),
    }
}

/// The derivatives of [`example_score_fn`], written by hand in the form the DSL's
/// `#[score(backward)]` emits: `ds'/ds = 1`, `ds'/dbias[h] = 1` (index `h`),
/// `ds'/ddecay = -|q_pos - kv_pos|`.
pub fn example_score_grad() -> UserScoreGrad {
    const SIG: &str = "(float score, int b, int h, long long q_pos, long long kv_pos, const float* bias, float decay)";
    let f = |ret: &str, name: &str, body: &str| {
        format!("__device__ __forceinline__ {ret} {name}{SIG} {{ {body} }}\n")
    };
    UserScoreGrad {
        cuda: [
            f("float", "headbias_grad_score", "return 1.f;"),
            f("float", "headbias_grad_bias_0", "return 1.f;"),
            f("long long", "headbias_grad_bias_0_index", "return h;"),
            f(
                "float",
                "headbias_grad_decay",
                "return -(float)(q_pos > kv_pos ? q_pos - kv_pos : kv_pos - q_pos);",
            ),
        ]
        .concat(),
        d_score: "headbias_grad_score".into(),
        params: vec![
            UserParamGrad {
                param: 0,
                partial: "headbias_grad_bias_0".into(),
                index: Some("headbias_grad_bias_0_index".into()),
            },
            UserParamGrad {
                param: 1,
                partial: "headbias_grad_decay".into(),
                index: None,
            },
        ],
    }
}

/// The catalog (dense, GQA, every static mask of variants.md sections 2 and 11, block-sparse,
/// softcap, ALiBi, user examples, LM-Infinite; a spread of dtypes and head dims).
pub fn catalog() -> Vec<KernelSpec> {
    use DType::*;
    use HeadDim::*;
    let s = KernelSpec::new;
    vec![
        s(Bf16, D128, Mask::Full, ScoreMod::None),
        s(F16, D256, Mask::Full, ScoreMod::None),
        s(F32, D64, Mask::Full, ScoreMod::None),
        s(Bf16, D128, Mask::Causal, ScoreMod::None),
        s(F16, D64, Mask::Causal, ScoreMod::None),
        s(Bf16, D128, Mask::Causal, ScoreMod::None).with_gqa(),
        s(Bf16, D128, Mask::Local, ScoreMod::None),
        s(F16, D64, Mask::Local, ScoreMod::Softcap),
        s(Bf16, D128, Mask::PrefixLm, ScoreMod::None),
        s(Bf16, D128, Mask::Document, ScoreMod::None),
        s(Bf16, D128, Mask::CausalDocument, ScoreMod::None),
        s(F16, D128, Mask::ShareQuestion, ScoreMod::None),
        s(Bf16, D128, Mask::GlobalLocal, ScoreMod::None),
        s(Bf16, D128, Mask::BlockCausalDocument, ScoreMod::None),
        s(Bf16, D128, Mask::LambdaMask, ScoreMod::None),
        s(Bf16, D128, Mask::BlockSparse { mask: None }, ScoreMod::None),
        s(Bf16, D128, Mask::Full, ScoreMod::Softcap),
        s(F16, D128, Mask::Causal, ScoreMod::Alibi),
        s(F16, D64, Mask::Predicate(example_mask_fn()), ScoreMod::None),
        s(F32, D64, Mask::Causal, ScoreMod::User(example_score_fn())),
        s(Bf16, D128, Mask::LmInfinite, ScoreMod::None),
        s(Bf16, D128, Mask::ChunkedCausal, ScoreMod::None),
        s(F16, D64, Mask::DilatedCausal, ScoreMod::None),
    ]
}

/// The serving entries (variants.md section 13, docs/serving.md): representative static
/// variants in the serving layouts, named `<dense name>_<layout>`: causal GQA in every
/// layout, a sliding window and a softcap on the paged cache and in decoding, the document
/// mask over packed keys (its ids travel packed like the keys, so not paged). Every catalog
/// variant runs in every layout it supports through `check --layout ... --all`; these are the
/// ones `attnforge list`, `emit`, `run` and `tune` know by name.
pub fn serving_catalog() -> Vec<KernelSpec> {
    use crate::spec::Layout::*;
    use DType::*;
    use HeadDim::*;
    let s = KernelSpec::new;
    let causal_gqa = s(Bf16, D128, Mask::Causal, ScoreMod::None).with_gqa();
    let mut v: Vec<KernelSpec> = [Varlen, Paged, Decode, DecodeVarlen]
        .into_iter()
        .map(|l| causal_gqa.clone().with_layout(l))
        .collect();
    for l in [Paged, Decode] {
        v.push(s(Bf16, D128, Mask::Local, ScoreMod::None).with_layout(l));
        v.push(
            s(F16, D64, Mask::Causal, ScoreMod::Softcap)
                .with_gqa()
                .with_layout(l),
        );
    }
    for l in [Varlen, DecodeVarlen] {
        v.push(s(Bf16, D128, Mask::CausalDocument, ScoreMod::None).with_layout(l));
    }
    v
}

/// The catalog entry with this canonical name (the dense catalog, then the serving entries).
pub fn find(name: &str) -> Option<KernelSpec> {
    catalog()
        .into_iter()
        .chain(serving_catalog())
        .find(|s| s.canonical_name() == name)
}

/// Every catalog variant (mask, score, GQA, block size) re-instantiated at each of `dtypes`
/// and `head_dims`, deduplicated by canonical name (the catalog already fixes some of these
/// combinations). The compile tests sweep it.
///
/// ```
/// use attnforge_codegen::catalog::instantiate;
/// use attnforge_codegen::spec::{DType, HeadDim};
/// let v = instantiate(&[DType::F16], &[HeadDim::D64]);
/// assert!(v.iter().all(|s| s.dtype == DType::F16 && s.head_dim == HeadDim::D64));
/// ```
pub fn instantiate(dtypes: &[DType], head_dims: &[HeadDim]) -> Vec<KernelSpec> {
    let mut out: Vec<KernelSpec> = Vec::new();
    for s in catalog() {
        for &dtype in dtypes {
            for &d in head_dims {
                let mut x = s.clone();
                x.dtype = dtype;
                x.head_dim = d;
                if !out.iter().any(|y| y.canonical_name() == x.canonical_name()) {
                    out.push(x);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Layout;

    #[test]
    fn serving_entries_are_valid_unique_and_found_by_name() {
        let mut names: Vec<String> = catalog().iter().map(|s| s.canonical_name()).collect();
        for s in serving_catalog() {
            assert!(!s.layout.is_dense());
            crate::check::validate_spec(&s).unwrap_or_else(|e| panic!("{e:?}"));
            let n = s.canonical_name();
            assert!(n.ends_with(s.layout.tag()), "{n}");
            assert_eq!(find(&n).as_ref(), Some(&s));
            names.push(n);
        }
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for l in [
            Layout::Varlen,
            Layout::Paged,
            Layout::Decode,
            Layout::DecodeVarlen,
        ] {
            assert!(serving_catalog().iter().any(|s| s.layout == l), "{l:?}");
        }
    }
}
