//! Ring and Ulysses attention over 2, 4 and 8 in-process ranks equal single-device reference
//! attention (forward and gradients) for every static mask, GQA, `Sq == Sk`, `Sq < Sk`,
//! `Sq > Sk` (full/causal), lengths not divisible by the world size, contiguous and zigzag
//! layouts, and the naive same-precision path within the tolerance rule.

mod common;

use attnforge_parallel::*;
use attnforge_reference::{
    assert_close, attention, attention_backward, AttnOptions, BackwardVariant, DType, DiffScoreMod,
    Mask, Precision, ScoreMod, Tolerance,
};
use common::*;

const F64_TOL: f64 = 1e-12;

fn f64_engine() -> ReferenceEngine {
    ReferenceEngine {
        precision: Precision::F64,
    }
}

fn check_forward(s: Sizes, masks: &[Mask], worlds: &[usize], algos: &[Algo]) {
    let x = inputs::<f64>(s, 7);
    for mask in masks {
        let want = attention(
            &x.q,
            &x.k,
            &x.v,
            mask,
            &ScoreMod::None,
            &AttnOptions::reference(),
        )
        .unwrap();
        let p = problem(mask, s);
        for &w in worlds {
            for (lname, layout) in layouts(s, w) {
                for &algo in algos {
                    let (got, _) = run_forward(algo, &f64_engine(), &p, &layout, &x).unwrap();
                    let (eo, el) = (
                        max_abs_diff(&got.out, &want.out),
                        max_abs_diff(&got.lse, &want.lse),
                    );
                    assert!(
                        eo <= F64_TOL && el <= F64_TOL,
                        "{algo:?} {mask:?} W={w} {lname} {s:?}: max |out - ref| = {eo:e}, max |lse - ref| = {el:e}"
                    );
                }
            }
        }
    }
}

const GQA: Sizes = Sizes {
    batch: 2,
    hq: 8,
    hkv: 2,
    sq: 21,
    sk: 21,
    d: 4,
    dv: 3,
};

#[test]
fn forward_equals_reference_every_mask_sq_eq_sk() {
    check_forward(GQA, &masks(21, 2), &[2, 4, 8], &[Algo::Ring, Algo::Ulysses]);
}

#[test]
fn forward_equals_reference_sq_lt_sk() {
    let s = Sizes { sq: 13, ..GQA };
    check_forward(s, &masks(21, 2), &[2, 4, 8], &[Algo::Ring, Algo::Ulysses]);
}

#[test]
fn forward_equals_reference_sq_gt_sk_full_causal() {
    // Rows with positions < 0 are empty under causal; W = 8 with 13 keys leaves zigzag ranks without keys.
    let s = Sizes {
        sq: 21,
        sk: 13,
        ..GQA
    };
    check_forward(
        s,
        &[Mask::Full, Mask::Causal],
        &[2, 4, 8],
        &[Algo::Ring, Algo::Ulysses],
    );
}

#[test]
fn forward_mqa_and_ulysses_kv_heads_shared_across_ranks() {
    // Hkv = 1: at W = 8 every rank holds the same kv head (group 8 > Hq/W = 1).
    let s = Sizes { hkv: 1, ..GQA };
    check_forward(
        s,
        &[Mask::Causal, Mask::ChunkedCausal { chunk: 5 }],
        &[2, 4, 8],
        &[Algo::Ring, Algo::Ulysses],
    );
}

#[test]
fn backward_equals_reference_backward() {
    for s in [
        GQA,
        Sizes { sq: 13, ..GQA },
        Sizes {
            hkv: 1,
            sq: 17,
            sk: 17,
            ..GQA
        },
    ] {
        let x = inputs::<f64>(s, 11);
        for mask in masks(s.sk, 2) {
            let sm = DiffScoreMod::None;
            let want = attention_backward(
                &x.q,
                &x.k,
                &x.v,
                &x.dout,
                Some(&x.dlse),
                &BackwardVariant::Masked {
                    mask: &mask,
                    score_mod: &sm,
                },
                &AttnOptions::reference(),
            )
            .unwrap();
            let p = problem(&mask, s);
            for w in [2, 4, 8] {
                for (lname, layout) in layouts(s, w) {
                    for algo in [Algo::Ring, Algo::Ulysses] {
                        let (dq, dk, dv) =
                            run_backward(algo, &f64_engine(), &p, &layout, &x).unwrap();
                        for (name, got, want) in [
                            ("dq", &dq, &want.dq),
                            ("dk", &dk, &want.dk),
                            ("dv", &dv, &want.dv),
                        ] {
                            assert_eq!(got.shape, want.shape);
                            let e = max_abs_diff(&got.data, &want.data);
                            assert!(
                                e <= 1e-11,
                                "{algo:?} {mask:?} W={w} {lname} {s:?}: max |{name} - ref| = {e:e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

fn check_naive<T: CommElem>(dtype: DType) {
    let s = Sizes {
        batch: 1,
        hq: 4,
        hkv: 2,
        sq: 37,
        sk: 37,
        d: 16,
        dv: 8,
    };
    let x = inputs::<T>(s, 23);
    let tol = Tolerance::for_dtype(dtype);
    let engine = ReferenceEngine {
        precision: Precision::Naive,
    };
    for mask in masks(s.sk, 1) {
        let r = attention(
            &x.q,
            &x.k,
            &x.v,
            &mask,
            &ScoreMod::None,
            &AttnOptions::reference(),
        )
        .unwrap();
        let n = attention(
            &x.q,
            &x.k,
            &x.v,
            &mask,
            &ScoreMod::None,
            &AttnOptions::naive(),
        )
        .unwrap();
        let p = problem(&mask, s);
        for w in [2, 4] {
            for (lname, layout) in layouts(s, w) {
                for algo in [Algo::Ring, Algo::Ulysses] {
                    let (got, _) = run_forward(algo, &engine, &p, &layout, &x).unwrap();
                    if let Err(e) = assert_close(&got, &r, &n, tol.rtol, tol.atol) {
                        panic!("{dtype:?} {algo:?} {mask:?} W={w} {lname}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn naive_path_within_tolerance_rule_bf16() {
    check_naive::<half::bf16>(DType::Bf16);
}

#[test]
fn naive_path_within_tolerance_rule_f32() {
    check_naive::<f32>(DType::F32);
}

#[test]
fn forward_and_backward_with_the_planners_mask_aware_layout() {
    // Mask-aware layouts give each rank up to 8 scattered ranges.
    let s = Sizes {
        sq: 45,
        sk: 45,
        ..GQA
    };
    let x = inputs::<f64>(s, 31);
    for mask in masks(s.sk, 2) {
        let p = problem(&mask, s);
        let want = attention(
            &x.q,
            &x.k,
            &x.v,
            &mask,
            &ScoreMod::None,
            &AttnOptions::reference(),
        )
        .unwrap();
        let sm = DiffScoreMod::None;
        let want_g = attention_backward(
            &x.q,
            &x.k,
            &x.v,
            &x.dout,
            Some(&x.dlse),
            &BackwardVariant::Masked {
                mask: &mask,
                score_mod: &sm,
            },
            &AttnOptions::reference(),
        )
        .unwrap();
        for w in [2, 4] {
            let pl = plan(&PlanRequest {
                problem: &p,
                world: w,
                link: NVLINK4,
                gpu: GPU_H100_SXM,
                elem_bytes: 8,
            })
            .unwrap();
            let layout = &pl
                .candidates
                .iter()
                .find(|c| c.partition == PartitionKind::MaskAware)
                .unwrap()
                .layout;
            for algo in [Algo::Ring, Algo::Ulysses] {
                let (got, _) = run_forward(algo, &f64_engine(), &p, layout, &x).unwrap();
                let e = max_abs_diff(&got.out, &want.out).max(max_abs_diff(&got.lse, &want.lse));
                assert!(
                    e <= F64_TOL,
                    "{algo:?} {mask:?} W={w} mask-aware: forward error {e:e}"
                );
                let (dq, dk, dv) = run_backward(algo, &f64_engine(), &p, layout, &x).unwrap();
                let e = max_abs_diff(&dq.data, &want_g.dq.data)
                    .max(max_abs_diff(&dk.data, &want_g.dk.data))
                    .max(max_abs_diff(&dv.data, &want_g.dv.data));
                assert!(
                    e <= 1e-11,
                    "{algo:?} {mask:?} W={w} mask-aware: gradient error {e:e}"
                );
            }
        }
    }
}
