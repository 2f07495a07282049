//! Validation: every error carries its field path, message and fix; all errors at once.

use attnforge_codegen::prelude::*;

fn user(name: &str, body: &str, params: &[(&str, UserParamKind)]) -> UserFunction {
    UserFunction {
        name: name.into(),
        source: UserSource::Body(body.into()),
        params: params
            .iter()
            .map(|(n, k)| UserParam {
                name: (*n).into(),
                kind: *k,
            })
            .collect(),
        grad: None,
    }
}

fn paths(e: &[SpecError]) -> Vec<&str> {
    e.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn catalog_specs_are_valid() {
    for s in catalog() {
        validate_spec(&s).unwrap_or_else(|e| panic!("{}: {e:?}", s.canonical_name()));
    }
}

#[test]
fn several_spec_errors_at_once_with_paths() {
    let mut s = KernelSpec::new(
        DType::F16,
        HeadDim::D64,
        Mask::Predicate(user(
            "Bad-Name",
            "  ",
            &[
                ("b", UserParamKind::I32),
                ("w", UserParamKind::F32),
                ("w", UserParamKind::Bool),
            ],
        )),
        ScoreMod::User(user(
            "for",
            "return score;",
            &[("af_x", UserParamKind::ArrayF32)],
        )),
    );
    s.scale = Some(f32::NAN);
    s.sparse_block = BlockSize { q: 48, k: 4096 };
    let e = validate_spec(&s).unwrap_err();
    let p = paths(&e);
    for want in [
        "scale",
        "sparse_block.q",
        "sparse_block.k",
        "mask.predicate.name",
        "mask.predicate.source.body",
        "mask.predicate.params[0].name",
        "mask.predicate.params[2].name",
        "score.user.name",
        "score.user.params[0].name",
    ] {
        assert!(p.contains(&want), "missing {want} in {p:?}");
    }
    for err in &e {
        assert!(!err.message.is_empty() && !err.fix.is_empty(), "{err:?}");
        assert!(err.to_string().starts_with(&err.path), "{err}");
    }
}

#[test]
fn same_mask_and_score_function_names_rejected() {
    let f = user("foo", "return true;", &[]);
    let g = user("foo", "return score;", &[]);
    let s = KernelSpec::new(
        DType::F32,
        HeadDim::D64,
        Mask::Predicate(f),
        ScoreMod::User(g),
    );
    assert_eq!(paths(&validate_spec(&s).unwrap_err()), ["score.user.name"]);
}

#[test]
fn function_source_must_define_the_name() {
    let mut f = user("mine", "", &[]);
    f.source = UserSource::Function(
        "__device__ bool other(int b, int h, long long q_pos, long long kv_pos) { return true; }"
            .into(),
    );
    let s = KernelSpec::new(
        DType::F32,
        HeadDim::D64,
        Mask::BlockSparse { mask: Some(f) },
        ScoreMod::None,
    );
    assert_eq!(
        paths(&validate_spec(&s).unwrap_err()),
        ["mask.block_sparse.mask.source.function"]
    );
}

#[test]
fn user_names_may_match_kernel_locals_and_args() {
    // user device functions are emitted in namespace `afu` (called as `afu::<name>`), so a
    // name like a kernel argument or a main-loop local is valid (the simulator test
    // `user_functions_named_like_kernel_locals` runs such kernels)
    for name in ["lane", "q", "seq_k", "acc", "scale", "p_lo"] {
        let s = KernelSpec::new(
            DType::F32,
            HeadDim::D64,
            Mask::Predicate(user(name, "return true;", &[])),
            ScoreMod::None,
        );
        assert!(validate_spec(&s).is_ok(), "{name}");
    }
}

fn problem(mask: MaskParams) -> Problem {
    Problem {
        batch: 2,
        heads_q: 8,
        heads_kv: 8,
        seq_q: 100,
        seq_k: 100,
        mask,
        softcap: None,
    }
}

#[test]
fn problem_errors_name_the_field() {
    let s = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Softcap);
    let mut p = problem(
        MaskParams::new()
            .with("window_left", 1i64 << 40)
            .with("window_right", -(1i64 << 40)),
    );
    p.seq_q = 200;
    p.heads_kv = 3;
    p.softcap = Some(-1.0);
    let e = validate_problem(&s, &p).unwrap_err();
    let ps = paths(&e);
    for want in [
        "heads_kv",
        "seq_q",
        "mask.local.window_left",
        "mask.local.window_right",
        "softcap",
    ] {
        assert!(ps.contains(&want), "missing {want} in {ps:?}");
    }
    p = problem(
        MaskParams::new()
            .with("window_left", 3)
            .with("window_right", -1),
    );
    p.softcap = Some(30.0);
    validate_problem(&s, &p).unwrap();
}

#[test]
fn sq_gt_sk_only_for_full_and_causal() {
    for (mask, params, ok) in [
        (Mask::Full, MaskParams::None, true),
        (Mask::Causal, MaskParams::None, true),
        (
            Mask::PrefixLm,
            MaskParams::new().with("prefix_len", 3),
            false,
        ),
        (Mask::Document, MaskParams::None, false),
    ] {
        let s = KernelSpec::new(DType::F32, HeadDim::D64, mask, ScoreMod::None);
        let mut p = problem(params);
        p.seq_q = 101;
        assert_eq!(validate_problem(&s, &p).is_ok(), ok, "{s:?}");
    }
}

/// variants.md section 0: `Sq > Sk` is defined for full and causal only without a score
/// modification; with one it is an input error on `seq_q` whose fix names the modification.
#[test]
fn sq_gt_sk_rejected_with_a_score_modification() {
    for (mask, score) in [
        (Mask::Full, ScoreMod::Alibi),
        (Mask::Causal, ScoreMod::Softcap),
        (
            Mask::Causal,
            ScoreMod::User(user("bias", "return score + 1.0f;", &[])),
        ),
    ] {
        let s = KernelSpec::new(DType::F16, HeadDim::D64, mask, score.clone());
        let mut p = problem(MaskParams::None);
        if score == ScoreMod::Softcap {
            p.softcap = Some(30.0);
        }
        p.seq_k = 100;
        p.seq_q = 100;
        validate_problem(&s, &p).unwrap_or_else(|e| panic!("{s:?} Sq == Sk: {e:?}"));
        p.seq_q = 101;
        let e = validate_problem(&s, &p).expect_err("Sq > Sk with a score modification");
        assert_eq!(paths(&e), ["seq_q"], "{e:?}");
        let name = score.short().expect("a modification has a name");
        assert!(
            e[0].to_string().contains(&name) && e[0].to_string().contains("seq_q <= seq_k"),
            "{e:?}"
        );
    }
}

#[test]
fn mismatched_and_bad_mask_params() {
    let s = KernelSpec::new(DType::F32, HeadDim::D64, Mask::LmInfinite, ScoreMod::None);
    let e = validate_problem(&s, &problem(MaskParams::None)).unwrap_err();
    assert_eq!(paths(&e), ["mask"]);
    let p = problem(
        MaskParams::new()
            .with("global_tokens", -1)
            .with("local_window", 4)
            .with("dist_limit", -5)
            .with("rope_theta", 0.5),
    );
    let e = validate_problem(&s, &p).unwrap_err();
    assert_eq!(
        paths(&e),
        [
            "mask.lm_infinite.global_tokens",
            "mask.lm_infinite.dist_limit",
            "mask.lm_infinite.rope_theta"
        ]
    );
    let s = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let mut p = problem(MaskParams::None);
    p.heads_kv = 4;
    p.batch = 0;
    assert_eq!(
        paths(&validate_problem(&s, &p).unwrap_err()),
        ["batch", "heads_kv"]
    );
}

#[test]
fn spec_round_trips_through_serde() {
    for s in catalog() {
        let j = serde_json::to_string(&s).unwrap();
        let back: KernelSpec = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
    }
    let s: KernelSpec =
        serde_json::from_str(r#"{"dtype":"bf16","head_dim":"128","mask":"causal"}"#).unwrap();
    assert_eq!(s.canonical_name(), "flash_fwd_causal_d128_bf16");
    assert!(serde_json::from_str::<KernelSpec>(
        r#"{"dtype":"bf16","head_dim":"96","mask":"causal"}"#
    )
    .is_err());
}

#[test]
fn doc_ids_are_checked() {
    use attnforge_codegen::check::validate_doc_ids;
    let sq = KernelSpec::new(
        DType::F32,
        HeadDim::D64,
        Mask::ShareQuestion,
        ScoreMod::None,
    );
    validate_doc_ids(&sq, &[0, 0, 1, 1, 2], 3, 5).unwrap();
    validate_doc_ids(&sq, &[0, 1, 1, 0, 2, 0, 0, 3, 3, 3], 2, 5)
        .map(|_| ())
        .unwrap_err();
    let e = validate_doc_ids(&sq, &[0, 1, 1, 0, 2, 0, 0, 3, 3, 3], 2, 5).unwrap_err();
    assert_eq!(paths(&e), ["doc[0][3]"]);
    let e = validate_doc_ids(&sq, &[0, 0, 1], 2, 5).unwrap_err();
    assert_eq!(paths(&e), ["doc"]);
    // plain document masks accept any ids
    let d = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Document, ScoreMod::None);
    validate_doc_ids(&d, &[3, 0, 3, 0, 1], 1, 5).unwrap();
}

/// LM-Infinite brings its own scoring: every score modification is refused on `score`,
/// with the fix, by `validate_spec` itself (not only when exec needs the reference).
#[test]
fn lm_infinite_refuses_every_score_modification() {
    let scores = [
        ScoreMod::Softcap,
        ScoreMod::Alibi,
        ScoreMod::User(user("bias", "return score;", &[])),
    ];
    for score in scores {
        let s = KernelSpec::new(DType::F32, HeadDim::D64, Mask::LmInfinite, score.clone());
        let e = validate_spec(&s).expect_err(&format!("lm_infinite with {score:?} accepted"));
        assert_eq!(paths(&e), vec!["score"], "{e:?}");
        assert!(e[0].message.contains("lm_infinite"), "{}", e[0].message);
        assert!(e[0].fix.contains("remove `score`"), "{}", e[0].fix);
    }
    let plain = KernelSpec::new(DType::F32, HeadDim::D64, Mask::LmInfinite, ScoreMod::None);
    validate_spec(&plain).unwrap();
    let lambda = KernelSpec::new(DType::F32, HeadDim::D64, Mask::LambdaMask, ScoreMod::Alibi);
    validate_spec(&lambda).unwrap();
}
