//! Part 5: every bad input is a typed error naming the field (never a panic), and the
//! tolerance oracle accepts good kernels and rejects bad ones.
// Brute forces index arrays exactly as the formulas of variants.md do.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::*;

fn t(b: usize, h: usize, s: usize, d: usize) -> Tensor4<f32> {
    let mut r = rng((b * 1000 + h * 100 + s * 10 + d) as u64);
    rand_tensor(&mut r, Shape4::new(b, h, s, d), 1.0)
}

fn err_text(e: RefError, needle: &str) {
    let m = e.to_string();
    assert!(
        m.contains(needle),
        "message {m:?} should mention {needle:?}"
    );
}

#[test]
fn shape_errors() {
    let o = AttnOptions::reference();
    let (q, k, v) = (t(1, 4, 3, 2), t(1, 2, 5, 2), t(1, 2, 5, 3));
    let e = dense_attention(&q, &t(2, 2, 5, 2), &v, false, &o).unwrap_err();
    err_text(e, "k.batch");
    err_text(
        dense_attention(&q, &k, &t(1, 2, 4, 3), false, &o).unwrap_err(),
        "v.seq",
    );
    err_text(
        dense_attention(&q, &t(1, 2, 5, 3), &v, false, &o).unwrap_err(),
        "k.dim",
    );
    err_text(
        dense_attention(&q, &t(1, 3, 5, 2), &t(1, 3, 5, 3), false, &o).unwrap_err(),
        "Hkv",
    );
    err_text(
        dense_attention(&q, &t(1, 2, 0, 2), &t(1, 2, 0, 3), false, &o).unwrap_err(),
        "k.seq",
    );
    err_text(
        dense_attention(&t(1, 4, 3, 0), &t(1, 2, 5, 0), &v, false, &o).unwrap_err(),
        "q.dim",
    );
    let short = Tensor4 {
        shape: Shape4::new(1, 4, 3, 2),
        strides: [24, 6, 2, 1],
        data: vec![0f32; 5],
    };
    err_text(
        dense_attention(&short, &k, &v, false, &o).unwrap_err(),
        "`q`",
    );
    assert!(Tensor4::from_vec(Shape4::new(1, 1, 2, 2), vec![0f32; 3]).is_err());
    let bad_scale = AttnOptions::reference().with_scale(f64::NAN);
    err_text(
        dense_attention(&q, &k, &v, false, &bad_scale).unwrap_err(),
        "scale",
    );
}

#[test]
fn mask_and_score_errors() {
    let o = AttnOptions::reference();
    let (q, k, v) = (t(1, 2, 4, 2), t(1, 1, 4, 2), t(1, 1, 4, 2));
    let none = ScoreMod::None;
    let doc = |m: Mask| attention(&q, &k, &v, &m, &none, &o).unwrap_err();
    err_text(
        doc(Mask::Document { doc: vec![0; 3] }),
        "Mask::Document::doc",
    );
    err_text(
        doc(Mask::ShareQuestion {
            doc: vec![1, 0, 1, 1],
        }),
        "prefix",
    );
    err_text(
        doc(Mask::BlockCausalDocument {
            doc: vec![0; 4],
            block: 0,
        }),
        "block",
    );
    err_text(
        doc(Mask::All(vec![
            Mask::Causal,
            Mask::CausalDocument { doc: vec![] },
        ])),
        "CausalDocument",
    );
    // Sq > Sk only for full/causal.
    let (q6, v2) = (t(1, 2, 6, 2), t(1, 1, 4, 2));
    assert!(attention(&q6, &k, &v2, &Mask::Causal, &none, &o).is_ok());
    let e = attention(&q6, &k, &v2, &Mask::Local { left: 1, right: 0 }, &none, &o).unwrap_err();
    assert!(matches!(
        e,
        RefError::QueryLongerThanKeys {
            variant: "local",
            ..
        }
    ));
    // ... and only without a score modification (variants.md section 0).
    let slopes = ScoreMod::Alibi(vec![0.5, 0.25]);
    for (mask, sm, name) in [
        (Mask::Full, slopes.clone(), "alibi"),
        (Mask::Causal, ScoreMod::Softcap(5.0), "softcap"),
        (
            Mask::Causal,
            ScoreMod::function(|s, _, _, _, _| s),
            "score_function",
        ),
        (
            Mask::Full,
            ScoreMod::Chain(vec![ScoreMod::None, ScoreMod::Softcap(5.0)]),
            "chain",
        ),
    ] {
        assert!(
            attention(&q, &k, &v, &mask, &sm, &o).is_ok(),
            "{sm:?} Sq < Sk"
        );
        let e = attention(&q6, &k, &v2, &mask, &sm, &o).unwrap_err();
        assert!(
            matches!(e, RefError::QueryLongerThanKeys { variant, .. } if variant == name),
            "{sm:?}: {e}"
        );
        assert!(e.to_string().contains("Sq <= Sk"), "{e}");
    }
    let no_op = ScoreMod::Chain(vec![ScoreMod::None]);
    assert!(attention(&q6, &k, &v2, &Mask::Causal, &no_op, &o).is_ok());
    err_text(
        attention(&q, &k, &v, &Mask::Full, &ScoreMod::Softcap(0.0), &o).unwrap_err(),
        "Softcap",
    );
    err_text(
        attention(&q, &k, &v, &Mask::Full, &ScoreMod::Alibi(vec![1.0]), &o).unwrap_err(),
        "Alibi",
    );
}

#[test]
fn block_list_errors() {
    let o = AttnOptions::reference();
    let (q, k, v) = (t(1, 2, 4, 2), t(1, 1, 6, 2), t(1, 1, 6, 2));
    let base = BlockLists {
        batch: 1,
        heads: 1,
        q_blocks: 2,
        block_q: 2,
        block_k: 2,
        full: vec![vec![0], vec![1]],
        partial: vec![vec![], vec![2]],
    };
    let run =
        |l: &BlockLists| block_sparse_attention(&q, &k, &v, l, &Mask::Causal, &ScoreMod::None, &o);
    assert!(run(&base).is_ok());
    let with = |f: &dyn Fn(&mut BlockLists)| {
        let mut l = base.clone();
        f(&mut l);
        run(&l).unwrap_err()
    };
    assert!(matches!(
        with(&|l| l.full[0] = vec![3]),
        RefError::BlockOutOfRange {
            index: 3,
            n_blocks: 3,
            ..
        }
    ));
    assert!(matches!(
        with(&|l| l.full[0] = vec![1, 0]),
        RefError::BlockListUnsorted { .. }
    ));
    assert!(matches!(
        with(&|l| l.partial[1] = vec![2, 2]),
        RefError::BlockListUnsorted { .. }
    ));
    assert!(matches!(
        with(&|l| l.partial[1] = vec![1]),
        RefError::BlockInBothLists { c: 1, .. }
    ));
    err_text(with(&|l| l.q_blocks = 3), "q_blocks");
    err_text(with(&|l| l.heads = 3), "BlockLists::heads");
    err_text(with(&|l| l.block_k = 0), "block_k");
    err_text(
        with(&|l| l.full.pop().map(|_| ()).unwrap_or(())),
        "BlockLists::full",
    );
    let g = BlockGeometry {
        batch: 1,
        q_heads: 2,
        q_len: 4,
        k_len: 6,
        block_q: 2,
        block_k: 2,
    };
    err_text(random_block_lists(&g, 2, 1.5, 0).unwrap_err(), "rho");
    assert!(matches!(
        random_block_lists(&g, 3, 0.5, 0).unwrap_err(),
        RefError::HeadsNotDivisible { .. }
    ));
    err_text(bigbird_block_lists(&g, &[0, 5], 1).unwrap_err(), "bigbird");
    err_text(
        bigbird_block_lists(&g, &[0], 1).unwrap_err(),
        "bigbird random",
    );
    err_text(
        block_lists_from_mask(&Mask::Causal, &BlockGeometry { block_q: 0, ..g }).unwrap_err(),
        "block_q",
    );
    assert!(BlockLists::from_flex_arrays((1, 1, 1), (2, 2), (&[-1], &[0]), (&[0], &[0])).is_err());
    assert!(BlockLists::from_flex_arrays((1, 1, 1), (2, 2), (&[1], &[-3]), (&[0], &[0])).is_err());
    assert!(block_sparse_attention(
        &t(1, 2, 7, 2),
        &k,
        &v,
        &base,
        &Mask::Full,
        &ScoreMod::None,
        &o
    )
    .is_err());
}

#[test]
fn variant_parameter_errors() {
    let o = AttnOptions::reference();
    let (q, k, v) = (t(1, 2, 4, 2), t(1, 1, 4, 2), t(1, 1, 4, 2));
    let lm = |p: LandmarkParams| landmark_attention(&q, &k, &v, &p, &o).unwrap_err();
    err_text(
        lm(LandmarkParams {
            mem_freq: 0,
            mode: LandmarkMode::Training,
        }),
        "mem_freq",
    );
    err_text(
        lm(LandmarkParams {
            mem_freq: 2,
            mode: LandmarkMode::Retrieval { top_k: 0 },
        }),
        "top_k",
    );
    err_text(
        cca_attention(
            &q,
            &k,
            &v,
            &CcaParams {
                group: 0,
                window: 2,
            },
            &o,
        )
        .unwrap_err(),
        "group",
    );
    let (k5, v5) = (t(1, 1, 5, 2), t(1, 1, 5, 2));
    assert!(matches!(
        cca_attention(&q, &k5, &v5, &CcaParams::default(), &o).unwrap_err(),
        RefError::LengthsDiffer { .. }
    ));
    err_text(
        topk_attention(
            &q,
            &k,
            &v,
            &TopkParams {
                start: 1,
                end: 1,
                k: 0,
            },
            &o,
        )
        .unwrap_err(),
        "TopkParams::k",
    );
    assert!(topk_attention(
        &t(1, 2, 6, 2),
        &k,
        &v,
        &TopkParams {
            start: 1,
            end: 1,
            k: 1
        },
        &o
    )
    .is_err());
    let lp = LmInfiniteParams {
        theta: -1.0,
        ..LmInfiniteParams::default()
    };
    err_text(
        lm_infinite_attention(&q, &k, &v, &lp, &o).unwrap_err(),
        "theta",
    );
    let odd = (t(1, 2, 4, 3), t(1, 1, 4, 3));
    err_text(
        lm_infinite_attention(&odd.0, &odd.1, &v, &LmInfiniteParams::default(), &o).unwrap_err(),
        "even",
    );
    let keys: KeySets = vec![vec![0, 0]; 8];
    err_text(
        attention_over_keys(&q, &k, &v, &keys, &o).unwrap_err(),
        "twice",
    );
    let keys: KeySets = vec![vec![9]; 8];
    err_text(
        attention_over_keys(&q, &k, &v, &keys, &o).unwrap_err(),
        "out of range",
    );
    err_text(
        attention_over_keys(&q, &k, &v, &vec![vec![]; 3], &o).unwrap_err(),
        "keys",
    );
    // HAX.
    let hp = t(1, 1, 2, 3);
    let ks = t(1, 1, 4, 1);
    let inp = HaxInputs {
        q2: &q,
        k2: &k,
        x: &v,
        hyperplanes: &hp,
        ks: &ks,
    };
    let hx = |i: &HaxInputs<'_, f32, f32>, p: HaxParams| hax_attention(i, &p, &o).unwrap_err();
    err_text(
        hx(
            &inp,
            HaxParams {
                k_lsh: 0,
                k_ks: 0,
                ..HaxParams::default()
            },
        ),
        "k_lsh",
    );
    err_text(
        hx(
            &inp,
            HaxParams {
                hyperplane_sharing: Sharing::PerQueryHead,
                ..HaxParams::default()
            },
        ),
        "hyperplanes",
    );
    let hp_bad = t(1, 1, 3, 3);
    err_text(
        hx(
            &HaxInputs {
                hyperplanes: &hp_bad,
                ..inp
            },
            HaxParams::default(),
        ),
        "hyperplanes",
    );
    let hp0 = t(1, 1, 2, 0);
    err_text(
        hx(
            &HaxInputs {
                hyperplanes: &hp0,
                ..inp
            },
            HaxParams::default(),
        ),
        "nb",
    );
    let ks_bad = t(1, 1, 4, 2);
    err_text(
        hx(&HaxInputs { ks: &ks_bad, ..inp }, HaxParams::default()),
        "ks.dim",
    );
    let (k5, x5) = (t(1, 1, 5, 2), t(1, 1, 5, 2));
    assert!(matches!(
        hx(
            &HaxInputs {
                k2: &k5,
                x: &x5,
                ..inp
            },
            HaxParams::default()
        ),
        RefError::LengthsDiffer { .. }
    ));
}

#[test]
fn oracle_accepts_good_and_rejects_bad() {
    let mut r = rng(11);
    let cv = |x: &Tensor4<f32>| {
        Tensor4::from_fn(x.shape, |a, b, c, d| half::f16::from_f64(x.get(a, b, c, d)))
    };
    let q = cv(&rand_tensor(&mut r, Shape4::new(1, 2, 6, 8), 1.0));
    let k = cv(&rand_tensor(&mut r, Shape4::new(1, 1, 4, 8), 1.0));
    let v = cv(&rand_tensor(&mut r, Shape4::new(1, 1, 4, 8), 1.0));
    let rf = dense_attention(&q, &k, &v, true, &AttnOptions::reference()).unwrap();
    let nv = dense_attention(&q, &k, &v, true, &AttnOptions::naive()).unwrap();
    let tol = Tolerance::for_dtype(DType::F16);
    let rep = assert_close(&nv, &rf, &nv, tol.rtol, tol.atol).unwrap();
    assert_eq!(rep.empty_rows, 2 * 2); // Sq - Sk = 2 rows per head have p(i) < 0
    assert_eq!(rep.checked_rows, 2 * 4);
    assert!(rep.out.naive_err > 0.0 && rep.out.ratio <= 1.0);
    // A kernel result as written by a kernel (f16 out, f32 lse) passes.
    let out16: Vec<half::f16> = nv.out.iter().map(|x| half::f16::from_f64(*x)).collect();
    let lse32: Vec<f32> = nv.lse.iter().map(|x| *x as f32).collect();
    let kern = AttnOutput::from_kernel(nv.shape, &out16, &lse32).unwrap();
    assert!(assert_close(&kern, &rf, &nv, tol.rtol, tol.atol).is_ok());
    // A perturbation of 10x the bound fails, naming the place.
    let mut bad = nv.clone();
    let idx = rf.out.len() - 3;
    bad.out[idx] += 10.0 * (tol.rtol * rep.out.naive_err + tol.atol);
    match assert_close(&bad, &rf, &nv, tol.rtol, tol.atol).unwrap_err() {
        CloseError::Exceeds { which, at, .. } => {
            assert_eq!(which, "out");
            assert_eq!(
                at,
                Location {
                    b: 0,
                    h: 1,
                    row: 5,
                    col: Some(5)
                }
            );
        }
        e => panic!("unexpected {e}"),
    }
    let mut bad = nv.clone();
    bad.lse[9] += 1.0;
    assert!(matches!(
        assert_close(&bad, &rf, &nv, tol.rtol, tol.atol),
        Err(CloseError::Exceeds { which: "lse", .. })
    ));
    // Empty rows must be exactly empty.
    let mut bad = nv.clone();
    bad.out[0] = 1e-30;
    assert!(matches!(
        assert_close(&bad, &rf, &nv, tol.rtol, tol.atol),
        Err(CloseError::EmptyRow { .. })
    ));
    let mut bad = nv.clone();
    bad.lse[0] = 0.0;
    assert!(matches!(
        assert_close(&bad, &rf, &nv, tol.rtol, tol.atol),
        Err(CloseError::EmptyRow { .. })
    ));
    // A non-empty row written as empty fails; NaN fails; shape mismatch fails.
    let mut bad = nv.clone();
    bad.lse[3] = f64::NEG_INFINITY;
    assert!(assert_close(&bad, &rf, &nv, tol.rtol, tol.atol).is_err());
    let mut bad = nv.clone();
    bad.out[40] = f64::NAN;
    assert!(matches!(
        assert_close(&bad, &rf, &nv, tol.rtol, tol.atol),
        Err(CloseError::NaN { .. })
    ));
    let mut bad = nv.clone();
    bad.out.pop();
    assert!(matches!(
        assert_close(&bad, &rf, &nv, tol.rtol, tol.atol),
        Err(CloseError::Shape { .. })
    ));
    assert!(AttnOutput::from_kernel::<f32>(nv.shape, &[0.0], &lse32).is_err());
}
