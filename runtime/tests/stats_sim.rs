//! Attention statistics outputs on the simulator (variants.md section 14, docs/statistics.md):
//! the forward kernels with the statistics policy and the follow-up kernel against
//! `attnforge_reference::attention_stats` by the oracle of section 0; asking for statistics
//! leaves `out` and `lse` bit-identical; the `top_keys` tie rules on exact ties.

use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::{StatReduce, StatsSpec};
use attnforge_runtime::exec::{self, Inputs, RunParams, UserValue};
use attnforge_runtime::exec_stats::{check_stats, simulate_stats, StatsReport};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};
use proptest::prelude::*;

/// Deterministic values in [-amp, amp) (xorshift64), rounded to `T`.
fn uniform<T: Element>(shape: Shape4, amp: f64, seed: u64) -> Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Tensor4::from_fn(shape, |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T::from_f64(amp * (2.0 * ((x >> 11) as f64 / (1u64 << 53) as f64) - 1.0))
    })
}

/// One problem: `(B, Hq, Hkv, Sq, Sk)` and the q/k amplitude.
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
    amp: f64,
}

fn inputs<T: Element>(spec: &KernelSpec, c: Case, seed: u64) -> Inputs<T> {
    let d = spec.head_dim.get();
    Inputs::new(
        uniform(Shape4::new(c.b, c.hq, c.sq, d), c.amp, seed),
        uniform(Shape4::new(c.b, c.hkv, c.sk, d), c.amp, seed + 1),
        uniform(Shape4::new(c.b, c.hkv, c.sk, d), 1.0, seed + 2),
    )
}

fn stats(reduce: StatReduce, pool: Option<usize>, top_k: usize) -> StatsSpec {
    StatsSpec {
        reduce,
        pool,
        top_k: Some(top_k),
    }
}

fn check_typed<T: Element + SimElem>(
    spec: &KernelSpec,
    c: Case,
    p: &RunParams,
    seed: u64,
) -> Result<StatsReport, String> {
    let tile = default_tile(spec, Arch::Sm80).expect("a default tile");
    check_stats(spec, &tile, &inputs::<T>(spec, c, seed), p)
        .map_err(|e| format!("{} {c:?}: {e}", spec.canonical_name()))
}

fn check(spec: &KernelSpec, c: Case, p: &RunParams, seed: u64) -> StatsReport {
    let r = match spec.dtype {
        DType::F32 => check_typed::<f32>(spec, c, p, seed),
        DType::F16 => check_typed::<f16>(spec, c, p, seed),
        DType::Bf16 => check_typed::<bf16>(spec, c, p, seed),
    };
    r.unwrap_or_else(|e| panic!("{e}"))
}

const fn case(b: usize, hq: usize, hkv: usize, sq: usize, sk: usize) -> Case {
    Case {
        b,
        hq,
        hkv,
        sq,
        sk,
        amp: 1.0,
    }
}

fn spec(dtype: DType, mask: Mask, score: ScoreMod, st: StatsSpec) -> KernelSpec {
    KernelSpec::new(dtype, HeadDim::D64, mask, score)
        .with_gqa()
        .with_stats(st)
}

/// GQA ratios 1, 2, 4, several query blocks and key tiles, Sq != Sk off the tile grid, causal Sq > Sk (empty rows), sum and max
/// over the group, pool widths 1, 3, 7, top_k larger than the keys; f32 (FMA main loop).
#[test]
fn causal_gqa_shapes_and_reductions_f32() {
    let cases = [
        (case(1, 2, 2, 37, 45), stats(StatReduce::Sum, None, 5)),
        // three query blocks, three key tiles: blocks skip the tiles past their diagonal
        (case(1, 2, 1, 150, 150), stats(StatReduce::Sum, Some(3), 10)),
        (case(2, 4, 2, 70, 33), stats(StatReduce::Max, Some(3), 7)),
        (case(1, 4, 1, 19, 83), stats(StatReduce::Sum, Some(7), 100)),
        // Sq > Sk: the first Sq - Sk rows are empty and must carry no weight
        (case(1, 4, 2, 90, 41), stats(StatReduce::Max, Some(1), 9)),
    ];
    for (i, (c, st)) in cases.into_iter().enumerate() {
        let s = spec(DType::F32, Mask::Causal, ScoreMod::None, st);
        let r = check(&s, c, &RunParams::default(), 10 + i as u64);
        let rows_nonempty = c.sq.min(c.sk) as f32;
        // each head's key_mass sums to its number of non-empty rows (section 14)
        for bh in 0..c.b * c.hq {
            let m: f32 = r.run.key_mass[bh * c.sk..(bh + 1) * c.sk].iter().sum();
            assert!(
                (m - rows_nonempty).abs() < 1e-3 * rows_nonempty,
                "{c:?}: mass {m}"
            );
        }
    }
}

/// Tensor-core main loops (f16, bf16) with masks, softcap, ALiBi, a user predicate, documents
/// and explicit block-sparse lists (the reference's one-hot route), rectangular problems.
#[test]
fn masks_and_score_mods_tensor_cores() {
    let st = stats(StatReduce::Max, Some(5), 6);
    let rect = case(1, 4, 2, 45, 77);
    let run = |s: KernelSpec, p: RunParams, c: Case| {
        check(&s, c, &p, 3);
    };
    run(
        spec(DType::F16, Mask::Local, ScoreMod::Softcap, st),
        RunParams::default()
            .with_mask(
                MaskParams::new()
                    .with("window_left", 20)
                    .with("window_right", 3),
            )
            .with_softcap(0.7),
        rect,
    );
    run(
        spec(DType::Bf16, Mask::Causal, ScoreMod::Alibi, st),
        RunParams::default(),
        rect,
    );
    let doc: Vec<i32> = (0..rect.sk as i32).map(|j| j / 23).collect();
    run(
        spec(
            DType::Bf16,
            Mask::Document,
            ScoreMod::None,
            stats(StatReduce::Sum, None, 4),
        ),
        RunParams::default().with_doc(doc),
        rect,
    );
    let dil = attnforge_runtime::codegen::catalog::example_mask_fn();
    run(
        spec(DType::F16, Mask::Predicate(dil), ScoreMod::None, st),
        RunParams::default()
            .with_user("stride", UserValue::Int(3))
            .with_host_mask(|_, _, q, k| k <= q && (q - k) % 3 == 0),
        rect,
    );
    // Sq > Sk under full attention: no empty rows, every row sees every key
    run(
        spec(DType::Bf16, Mask::Full, ScoreMod::None, st),
        RunParams::default(),
        case(2, 2, 1, 70, 29),
    );
}

/// Explicit block-sparse lists: the reference runs on one-hot values (variants.md section 14).
#[test]
fn block_sparse_lists() {
    let s = spec(
        DType::Bf16,
        Mask::BlockSparse { mask: None },
        ScoreMod::None,
        stats(StatReduce::Sum, Some(3), 8),
    );
    let c = case(1, 2, 1, 200, 300);
    // query blocks of 128 rows x key blocks of 128: block 0 sees key block 1 fully and key
    // block 0 partially; block 1 sees key block 2 fully
    let lists = BlockLists {
        batches: 1,
        heads: 1,
        rows: 2,
        cols: 3,
        width: 2,
        full_num: vec![1, 1],
        full_idx: vec![1, 0, 2, 0],
        partial_num: vec![1, 0],
        partial_idx: vec![0, 0, 0, 0],
    };
    let p = RunParams {
        block_lists: Some(lists),
        ..RunParams::default()
    };
    check(&s, c, &p, 4);
}

/// Large scores (|s| up to a few hundred): P underflows for most keys; the near-tie rule of
/// top_keys lets keys whose f64 weight is below the bound fall out.
#[test]
fn large_magnitude() {
    let s = spec(
        DType::F16,
        Mask::Causal,
        ScoreMod::None,
        stats(StatReduce::Sum, Some(3), 12),
    );
    check(
        &s,
        Case {
            amp: 16.0,
            ..case(1, 4, 2, 50, 66)
        },
        &RunParams::default(),
        5,
    );
}

/// All-equal scores (q = 0): every key of a full row gets the same weight, summed in the same
/// order for every key, so the kernel's key scores tie exactly and top_keys is 0, 1, .. (ties
/// by lower index); keys past the candidates are -1. Causal: the earlier keys weigh more.
#[test]
fn all_equal_scores_tie_rules() {
    for (mask, k) in [(Mask::Full, 40), (Mask::Causal, 40)] {
        let s = spec(
            DType::F32,
            mask.clone(),
            ScoreMod::None,
            stats(StatReduce::Sum, None, k),
        );
        let c = case(1, 2, 1, 21, 30);
        let tile = default_tile(&s, Arch::Sm80).expect("tile");
        let mut x = inputs::<f32>(&s, c, 6);
        x.q = Tensor4::from_fn(x.q.shape, |_, _, _, _| 0.0);
        let r = check_stats(&s, &tile, &x, &RunParams::default()).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<i32> = (0..k as i32).map(|j| if j < 30 { j } else { -1 }).collect();
        assert_eq!(r.run.top_keys, want, "{mask:?}");
        assert_eq!(r.top_near_ties, 0);
    }
}

/// Asking for statistics leaves `out` and `lse` bit-identical (tensor-core and FMA loops).
#[test]
fn out_and_lse_are_unchanged() {
    for (dtype, mask) in [
        (DType::Bf16, Mask::Causal),
        (DType::F32, Mask::Causal),
        (DType::Bf16, Mask::LmInfinite),
        (DType::F32, Mask::LmInfinite),
    ] {
        let p = match mask {
            Mask::LmInfinite => lm_params(3, 17, 40),
            _ => RunParams::default(),
        };
        let plain = KernelSpec::new(dtype, HeadDim::D64, mask.clone(), ScoreMod::None).with_gqa();
        let with = plain.clone().with_stats(stats(StatReduce::Max, Some(3), 4));
        let tile = default_tile(&plain, Arch::Sm80).expect("tile");
        assert_eq!(tile, default_tile(&with, Arch::Sm80).expect("tile"));
        // causal Sq > Sk (empty rows); LM-Infinite needs Sq <= Sk
        let c = match mask {
            Mask::LmInfinite => case(1, 4, 2, 45, 70),
            _ => case(1, 4, 2, 70, 45),
        };
        let cfg = SimConfig::new(Schedule::Forward);
        let (a, b) = match dtype {
            DType::Bf16 => {
                let x = inputs::<bf16>(&plain, c, 7);
                let a = exec::simulate(&plain, &tile, &x, &p, &cfg);
                (a, simulate_stats(&with, &tile, &x, &p, &cfg))
            }
            _ => {
                let x = inputs::<f32>(&plain, c, 7);
                let a = exec::simulate(&plain, &tile, &x, &p, &cfg);
                (a, simulate_stats(&with, &tile, &x, &p, &cfg))
            }
        };
        let (a, b) = (a.expect("plain"), b.expect("stats"));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&a.output.out),
            bits(&b.output.out),
            "{dtype:?} {mask:?} out"
        );
        assert_eq!(
            bits(&a.output.lse),
            bits(&b.output.lse),
            "{dtype:?} {mask:?} lse"
        );
        assert_eq!(
            a.counters, b.counters,
            "{dtype:?}: the main loop visits the same tiles"
        );
    }
}

/// Bad statistics parameters are errors naming the field and the fix, never panics.
#[test]
fn invalid_stats_are_named_errors() {
    use attnforge_runtime::codegen::check::validate_spec;
    use attnforge_runtime::codegen::spec::Layout;
    let base = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let err = |s: &KernelSpec| {
        validate_spec(s)
            .expect_err("invalid")
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = err(&base.clone().with_stats(stats(StatReduce::Sum, Some(4), 3)));
    assert!(e.contains("stats.pool") && e.contains("odd"), "{e}");
    let e = err(&base.clone().with_stats(stats(StatReduce::Sum, None, 0)));
    assert!(e.contains("stats.top_k") && e.contains("omit"), "{e}");
    // the decode layouts' statistics are built (a sweep kernel after the split merge)
    for layout in [Layout::Decode, Layout::DecodeVarlen] {
        let s = base.clone().with_gqa().with_layout(layout);
        assert!(validate_spec(&s.with_stats(StatsSpec::default())).is_ok());
    }
    // LM-Infinite's statistics are built (its two scoring branches are in the sweep)
    let lm = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::LmInfinite, ScoreMod::None);
    assert!(validate_spec(&lm.with_stats(StatsSpec::default())).is_ok());
    let mut t = TileConfig::new(64, 64, 4, 2);
    t.wgmma = true;
    let s = base.with_stats(StatsSpec::default());
    let e = t.valid(&s, Arch::Sm90).expect_err("wgmma refused");
    assert!(
        e.iter().any(|e| e.to_string().contains("tile.wgmma")),
        "{e:?}"
    );
    // the runtime refuses a spec without statistics with the field named
    let plain = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let x = inputs::<f32>(&plain, case(1, 1, 1, 8, 8), 1);
    let tile = default_tile(&plain, Arch::Sm80).expect("tile");
    let e = check_stats(&plain, &tile, &x, &RunParams::default()).expect_err("no stats");
    assert!(e.to_string().contains("`stats`"), "{e}");
}

/// LM-Infinite parameters: `G` global tokens, window `L`, distance limit (Deff = min(it, Sk - 1)).
fn lm_params(g: i64, l: i64, dist: i64) -> RunParams {
    RunParams::default().with_mask(
        MaskParams::new()
            .with("global_tokens", g)
            .with("local_window", l)
            .with("dist_limit", dist)
            .with("rope_theta", 500.0),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    /// LM-Infinite statistics (both rotated scoring branches: near, q and k rotated at their
    /// positions; far, q at Deff and k raw) against the reference's one-hot route, every
    /// dtype, GQA 1..4, Sq <= Sk off the tile grid, window and global tokens such that tiles
    /// take one branch, the other, or both; each head's key_mass sums to its rows (LM-Infinite
    /// has no empty rows: the diagonal key is always near).
    #[test]
    fn lm_infinite_statistics(
        dt in 0usize..3,
        group in prop::sample::select(vec![1usize, 2, 4]),
        sq in 1usize..90,
        extra in 0usize..80,
        g in 0i64..5,
        l in 1i64..40,
        dist in 1i64..150,
        pool in prop::sample::select(vec![1usize, 3, 5]),
        seed in 0u64..1000,
    ) {
        let (dtype, d) = [(DType::F32, HeadDim::D64), (DType::F16, HeadDim::D64), (DType::Bf16, HeadDim::D128)][dt];
        let s = KernelSpec::new(dtype, d, Mask::LmInfinite, ScoreMod::None)
            .with_gqa()
            .with_stats(stats(StatReduce::Sum, Some(pool), 9));
        let c = case(1, 2 * group, 2, sq, sq + extra);
        let r = check(&s, c, &lm_params(g, l, dist), seed);
        for bh in 0..c.hq {
            let m: f32 = r.run.key_mass[bh * c.sk..(bh + 1) * c.sk].iter().sum();
            prop_assert!((m - c.sq as f32).abs() < 1e-3 * c.sq as f32, "{c:?}: mass {m}");
        }
    }
}

/// LM-Infinite with large magnitudes (inputs x8) and a far branch that carries weight: a few
/// global tokens far behind every row (Sq 70, Sk 133, window 17, Deff 40).
#[test]
fn lm_infinite_large_magnitude() {
    for dtype in [DType::F16, DType::Bf16] {
        let s = KernelSpec::new(dtype, HeadDim::D64, Mask::LmInfinite, ScoreMod::None)
            .with_gqa()
            .with_stats(stats(StatReduce::Max, Some(3), 12));
        let c = Case {
            amp: 8.0,
            ..case(2, 4, 2, 70, 133)
        };
        check(&s, c, &lm_params(3, 17, 40), 21);
    }
}
