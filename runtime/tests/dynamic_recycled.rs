//! Recycled Attention (variants.md section 16) on the simulator: the decode driver
//! (`exec_recycled`) against `attnforge_reference::recycled_attention`, step by step: the same
//! kinds, key sets and recycled sets, out/lse within the oracle of section 0. Integer-valued
//! q/k (exact ties, no near-ties: the full steps' `top_keys` rank f32 weights).

mod dynamic_common;

use std::time::Instant;

use attnforge_reference::{attention_over_keys, AttnOptions, Element, Shape4, StepKind, Tensor4};
use attnforge_runtime::codegen::dynamic::DynamicSpec;
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::exec::{Backend, ExecError};
use attnforge_runtime::exec_recycled::{check_recycled, run_recycled, RecycledInputs};
use attnforge_runtime::sim::SimElem;
use dynamic_common::ints;

fn spec(dtype: DType, k: Option<usize>, stride: usize, pool: usize) -> DynamicSpec {
    DynamicSpec::Recycled {
        dtype,
        head_dim: HeadDim::D64,
        recycle_size: k,
        stride,
        threshold_milli: 850,
        pool,
    }
}

/// Un-rotated queries whose head mean is `dir(b, t)` scaled by `1 + t` (the cosine sees only
/// the direction): every head of (b, t) holds the same row.
fn q_raw_of<T: Element>(
    b: usize,
    hq: usize,
    t: usize,
    dir: impl Fn(usize, usize) -> usize,
) -> Tensor4<T> {
    Tensor4::from_fn(Shape4::new(b, hq, t, 64), |bb, _, tt, d| {
        let which = dir(bb, tt);
        let x = match which {
            0 => 0.0,
            w => f64::from(u8::from(d % w == 0)) * (1.0 + tt as f64),
        };
        T::from_f64(x)
    })
}

fn inputs<T: Element>(
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    sk: usize,
    seed: u64,
) -> RecycledInputs<T> {
    RecycledInputs::new(
        ints(Shape4::new(b, hq, t, 64), seed, 1),
        ints(Shape4::new(b, hq, t, 64), seed + 1, 1),
        ints(Shape4::new(b, hkv, sk, 64), seed + 2, 1),
        ints(Shape4::new(b, hkv, sk, 64), seed + 3, 2),
    )
}

fn check_dtype<T: Element + SimElem>(dtype: DType) {
    // B 2, GQA Hq 4 / Hkv 2, 45 keys (no tile multiple), 12 steps, stride 3, K 6.
    let mut x = inputs::<T>(2, 4, 2, 12, 45, 7);
    // b 0: direction 2 until step 6, then 3 (cos(e2, e3) < 0.85): full at 0 and 6, partial
    // at the checks 3 and 9. b 1: a zero query at step 3 (full), then the same direction.
    x.q_raw = q_raw_of(2, 4, 12, |b, t| match (b, t) {
        (0, t) if t < 6 => 2,
        (0, _) => 3,
        (_, 3) => 0,
        _ => 5,
    });
    let s = spec(dtype, Some(6), 3, 7);
    let r = check_recycled(&s, &x, &Backend::sim()).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
    let kinds: Vec<Vec<StepKind>> = r.run.steps.iter().map(|s| s.kinds.clone()).collect();
    let full =
        |b: usize| -> Vec<usize> { (0..12).filter(|&t| kinds[t][b] == StepKind::Full).collect() };
    assert_eq!(full(0), [0, 6], "{dtype:?}");
    // b 1: the zero query of step 3 becomes q_full, so the check at 6 is undefined: full.
    assert_eq!(full(1), [0, 3, 6], "{dtype:?}");
    // Step 1 (partial everywhere) reads K = 6 keys per (b, kv head): 5 recycled + 1 new.
    assert_eq!(r.run.steps[1].keys_read, 4 * 6);
    // Step 6 of b 0 (full): all 40 keys 0..=39 per kv head.
    assert_eq!(r.run.steps[6].keys[0].len(), 40);
    for st in &r.run.steps {
        assert_eq!(st.keys_read, st.keys.iter().map(Vec::len).sum::<usize>());
    }
}

#[test]
fn steps_match_reference_f16_bf16_f32_gqa() {
    let t0 = Instant::now();
    check_dtype::<half::f16>(DType::F16);
    check_dtype::<half::bf16>(DType::Bf16);
    check_dtype::<f32>(DType::F32);
    eprintln!("steps_match_reference: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn ties_and_k_larger_than_candidates() {
    // q = 0: every weight equal, every pooled score equal: top_keys keeps the lowest
    // indices; K = 100 > the 30 candidates keeps them all (partial steps = causal).
    let mut x = inputs::<half::f16>(1, 2, 1, 5, 30, 11);
    x.q = Tensor4::from_fn(x.q.shape, |_, _, _, _| half::f16::from_f64(0.0));
    let r = check_recycled(&spec(DType::F16, Some(100), 10, 7), &x, &Backend::sim()).unwrap();
    assert_eq!(r.run.steps[1].keys[0], (0..27).collect::<Vec<_>>());
    // K = 4 with all-equal scores: the recycled set is 0..4; partial steps drop its highest
    // indices first as new keys arrive.
    let r = check_recycled(&spec(DType::F16, Some(4), 10, 1), &x, &Backend::sim()).unwrap();
    assert_eq!(r.run.steps[0].recycled[0], [0, 1, 2, 3]);
    assert_eq!(r.run.steps[1].keys[0], [0, 1, 2, 26]);
    assert_eq!(r.run.steps[2].keys[0], [0, 1, 26, 27]);
    assert_eq!(r.run.steps[4].keys[0], [26, 27, 28, 29]);
}

#[test]
fn bad_inputs_name_the_field() {
    let x = inputs::<half::f16>(1, 2, 1, 4, 20, 3);
    let field = |e: ExecError| match e {
        ExecError::Input { field, .. } => field,
        ExecError::Spec(v) => v[0].path.clone(),
        e => panic!("unexpected {e}"),
    };
    let mut bad = x.clone();
    bad.q_raw = ints(Shape4::new(1, 2, 3, 64), 1, 1);
    let run = |s: &DynamicSpec, x: &RecycledInputs<half::f16>| run_recycled(s, x, &Backend::sim());
    assert_eq!(
        field(run(&spec(DType::F16, None, 10, 7), &bad).unwrap_err()),
        "q_raw.shape"
    );
    let long = inputs::<half::f16>(1, 2, 1, 21, 20, 3);
    assert_eq!(
        field(run(&spec(DType::F16, None, 10, 7), &long).unwrap_err()),
        "q.seq"
    );
    assert_eq!(
        field(run(&spec(DType::F16, Some(0), 10, 7), &x).unwrap_err()),
        "recycled.recycle_size"
    );
    assert_eq!(
        field(run(&spec(DType::F16, None, 0, 7), &x).unwrap_err()),
        "recycled.stride"
    );
    assert_eq!(
        field(run(&spec(DType::F16, None, 10, 6), &x).unwrap_err()),
        "recycled.pool"
    );
    let gqa = inputs::<half::f16>(1, 3, 2, 4, 20, 3);
    assert_eq!(
        field(run(&spec(DType::F16, None, 10, 7), &gqa).unwrap_err()),
        "q.heads"
    );
}

/// The done-when: 64 decode steps on a 4096-token cache (B 1, Hq 2, Hkv 1, D 64,
/// default parameters: K = 504, S = 10, s = 0.85, pool 7); the query direction jumps at
/// step 30, so steps 0 and 30 are full. Every step's output equals exact attention over
/// that step's key set (the reference's `attention_over_keys`, f64) within the oracle, and
/// the kinds and key sets equal `recycled_attention`'s.
#[test]
fn decode_64_steps_on_4096_keys() {
    let t0 = Instant::now();
    let mut x = inputs::<half::f16>(1, 2, 1, 64, 4096, 21);
    x.q_raw = q_raw_of(1, 2, 64, |_, t| if t < 30 { 2 } else { 3 });
    let s = spec(DType::F16, None, 10, 7);
    let r = check_recycled(&s, &x, &Backend::sim()).unwrap();
    assert_eq!(r.run.recycle_size, 504);
    let mut total = 0;
    for (t, st) in r.run.steps.iter().enumerate() {
        let want = if t == 0 || t == 30 {
            StepKind::Full
        } else {
            StepKind::Partial
        };
        assert_eq!(st.kinds, [want], "step {t}");
        eprintln!("step {t:2}: {:?} keys read {}", st.kinds[0], st.keys_read);
        total += st.keys_read;
        // Exact attention over the step's key set, independently of the driver's reference.
        let q = Tensor4::from_fn(Shape4::new(1, 2, 1, 64), |_, h, _, d| {
            half::f16::from_f64(x.q.get(0, h, t, d))
        });
        let sets = vec![st.keys[0].clone(); 2];
        let exact = attention_over_keys(&q, &x.k, &x.v, &sets, &AttnOptions::reference()).unwrap();
        let naive = attention_over_keys(&q, &x.k, &x.v, &sets, &AttnOptions::naive()).unwrap();
        let tol = attnforge_reference::Tolerance::for_dtype(attnforge_reference::DType::F16);
        attnforge_reference::assert_close(&st.out, &exact, &naive, tol.rtol, tol.atol)
            .unwrap_or_else(|e| panic!("step {t}: {e}"));
    }
    let dense: usize = (0..64).map(|t| 4096 - 64 + t + 1).sum();
    eprintln!(
        "64 steps on 4096 keys: keys read {total} of {dense} dense ({:.3}); {:.1} s",
        total as f64 / dense as f64,
        t0.elapsed().as_secs_f64()
    );
}

/// Visited-key figures (docs/families/recycled.md) at 16k and 128k tokens, behind
/// `ATTNFORGE_HEAVY=1` (minutes on the simulator): 64 decode steps, B 1, Hq 2, Hkv 1, D 64,
/// default parameters, the query direction jumping at step 30. Every step is checked against
/// the reference as in `decode_64_steps_on_4096_keys`; prints the keys read (counted on the
/// host), the simulator's gathered keys of the partial steps and the key tiles the full
/// steps' forward kernel visited.
#[test]
fn visited_key_figures_16k_128k() {
    if !std::env::var("ATTNFORGE_HEAVY").is_ok_and(|v| v == "1") {
        eprintln!("visited_key_figures_16k_128k: set ATTNFORGE_HEAVY=1 to run");
        return;
    }
    let sizes: Vec<usize> = std::env::var("ATTNFORGE_RECYCLED_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16384, 131072]);
    for sk in sizes {
        let t0 = Instant::now();
        let mut x = inputs::<half::f16>(1, 2, 1, 64, sk, 31);
        x.q_raw = q_raw_of(1, 2, 64, |_, t| if t < 30 { 2 } else { 3 });
        let r = check_recycled(&spec(DType::F16, None, 10, 7), &x, &Backend::sim()).unwrap();
        let kinds: Vec<StepKind> = r.run.steps.iter().map(|s| s.kinds[0]).collect();
        let full: Vec<usize> = (0..64).filter(|&t| kinds[t] == StepKind::Full).collect();
        assert_eq!(full, [0, 30], "Sk {sk}");
        let read: usize = r.run.steps.iter().map(|s| s.keys_read).sum();
        let dense: usize = (0..64).map(|t| sk - 64 + t + 1).sum();
        let gathered: u64 = r.run.steps.iter().map(|s| s.counters.keys_gathered).sum();
        let tiles: u64 = r
            .run
            .steps
            .iter()
            .map(|s| s.counters.tiles_full + s.counters.tiles_partial)
            .sum();
        eprintln!(
            "Sk {sk}: K {}, full steps {full:?}, keys read {read} of {dense} dense ({:.4}); \
             simulator: partial steps gathered {gathered} keys over 2 query heads \
             ({} per kv head), full steps visited {tiles} key tiles; {:.0} s",
            r.run.recycle_size,
            read as f64 / dense as f64,
            gathered / 2,
            t0.elapsed().as_secs_f64()
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 6, ..Default::default() })]
    /// Random small problems (B 1-2, GQA groups 1-2, 1-9 steps, caches of T-40 keys, strides
    /// 1-4, thresholds 0-1, K 1-8 or default, pool 1/3/7, f16): every step equals the
    /// reference (kinds, key sets, recycled sets, out/lse by the oracle).
    #[test]
    fn random_problems_match_reference(
        b in 1..=2usize,
        hkv in 1..=2usize,
        group in 1..=2usize,
        steps in 1..=9usize,
        extra in 0..=31usize,
        stride in 1..=4usize,
        threshold_milli in 0..=1000usize,
        k in proptest::option::of(1..=8usize),
        pool in proptest::sample::select(vec![1usize, 3, 7]),
        seed in 0..1000u64,
    ) {
        let sk = steps + extra;
        let x = inputs::<half::f16>(b, hkv * group, hkv, steps, sk, seed);
        let s = DynamicSpec::Recycled {
            dtype: DType::F16,
            head_dim: HeadDim::D64,
            recycle_size: k,
            stride,
            threshold_milli,
            pool,
        };
        let r = check_recycled(&s, &x, &Backend::sim());
        proptest::prop_assert!(r.is_ok(), "{:?}", r.err());
    }
}
