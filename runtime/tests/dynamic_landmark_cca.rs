//! Landmark attention (training and retrieval) and CCA on the simulator vs the f64
//! reference, all schedules; exact landmark-score ties, blocks that do not divide the
//! length, top_k beyond the block count; counters equal the visited-key counts.

mod dynamic_common;

use attnforge_reference::{cca_core_count, CcaParams, Element, Shape4};
use attnforge_runtime::codegen::dynamic::{DynamicSpec, LandmarkMode};
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::exec_dynamic::DynInputs;
use attnforge_runtime::sim::SimElem;
use dynamic_common::{check_all_schedules, fracs, ints, paged_equals_dense};
use proptest::prelude::*;

#[allow(clippy::too_many_arguments)]
fn landmark_case<T: Element + SimElem>(
    dtype: DType,
    b: usize,
    hkv: usize,
    group: usize,
    sq: usize,
    sk: usize,
    mem_freq: usize,
    top_k: Option<usize>,
    seed: u64,
) {
    let (d, hq) = (64, hkv * group);
    let q = ints::<T>(Shape4::new(b, hq, sq, d), seed, 1);
    let k = ints::<T>(Shape4::new(b, hkv, sk, d), seed ^ 1, 1);
    let v = fracs::<T>(Shape4::new(b, hkv, sk, d), seed ^ 2);
    let mode = top_k.map_or(LandmarkMode::Train, |top_k| LandmarkMode::Retrieval {
        top_k,
    });
    let spec = DynamicSpec::Landmark {
        dtype,
        head_dim: HeadDim::D64,
        mem_freq,
        mode,
    };
    let rep = check_all_schedules(&spec, &DynInputs::new(q, k, v), seed);
    // Visited keys: own block's non-landmark tokens + Bl per visited earlier block.
    let bl = mem_freq + 1;
    let (mut gathered, mut work) = (0u64, 0u64);
    for _ in 0..b * hq {
        for i in 0..sq {
            let pos = i + sk - sq;
            let c = pos / bl;
            let own = (c * bl..=pos).filter(|j| j % bl != bl - 1).count();
            let blocks = top_k.map_or(c, |t| t.min(c));
            gathered += (own + bl * blocks) as u64;
            if top_k.is_some() {
                work += c as u64;
            }
        }
    }
    assert_eq!(rep.run.counters.keys_gathered, gathered, "keys gathered");
    assert_eq!(rep.run.counters.select_work, work, "landmarks scored");
}

#[allow(clippy::too_many_arguments)]
fn cca_case<T: Element + SimElem>(
    dtype: DType,
    b: usize,
    hkv: usize,
    group_q: usize,
    s: usize,
    g: usize,
    w: usize,
    seed: u64,
) {
    let (d, hq) = (64, hkv * group_q);
    let q = fracs::<T>(Shape4::new(b, hq, s, d), seed);
    let k = fracs::<T>(Shape4::new(b, hkv, s, d), seed ^ 1);
    let v = fracs::<T>(Shape4::new(b, hkv, s, d), seed ^ 2);
    let spec = DynamicSpec::Cca {
        dtype,
        head_dim: HeadDim::D64,
        group: g,
        window: w,
    };
    let rep = check_all_schedules(&spec, &DynInputs::new(q, k, v), seed);
    let p = CcaParams {
        group: g,
        window: w,
    };
    let per_head: usize = (0..s)
        .map(|i| {
            let n = cca_core_count(i, &p);
            n + i + 1 - n * g
        })
        .sum();
    let pooled = s.saturating_sub(w) / g;
    assert_eq!(
        rep.run.counters.keys_gathered,
        (b * hq * per_head) as u64,
        "core + raw tokens"
    );
    assert_eq!(
        rep.run.counters.select_work,
        (b * hq * pooled * g) as u64,
        "pooled tokens"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn landmark_train_matches_reference(
        hkv in 1..=2usize, group in 1..=2usize, sk in 1..=40usize, dq in 0..=5usize,
        mem_freq in 1..=6usize, seed in any::<u64>(),
    ) {
        landmark_case::<f32>(DType::F32, 1, hkv, group, sk - dq.min(sk - 1), sk, mem_freq, None, seed);
    }

    #[test]
    fn landmark_retrieval_matches_reference(
        b in 1..=2usize, hkv in 1..=2usize, sk in 1..=40usize, dq in 0..=3usize,
        mem_freq in 1..=5usize, top_k in 1..=8usize, seed in any::<u64>(),
    ) {
        landmark_case::<half::f16>(DType::F16, b, hkv, 1, sk - dq.min(sk - 1), sk, mem_freq, Some(top_k), seed);
    }

    #[test]
    fn cca_matches_reference(
        hkv in 1..=2usize, group_q in 1..=2usize, s in 1..=48usize, g in 1..=6usize,
        w in 0..=20usize, seed in any::<u64>(),
    ) {
        cca_case::<f32>(DType::F32, 1, hkv, group_q, s, g, w, seed);
    }
}

#[test]
fn landmark_retrieval_with_all_blocks_is_training_and_bf16() {
    // top_k >= number of blocks: retrieval visits every block (== training mode).
    landmark_case::<half::bf16>(DType::Bf16, 1, 1, 2, 23, 23, 3, Some(100), 7);
    landmark_case::<half::bf16>(DType::Bf16, 1, 1, 2, 23, 23, 3, None, 7);
    // Block size 2 (mem_freq 1) and a trailing incomplete block.
    landmark_case::<half::f16>(DType::F16, 1, 2, 1, 9, 30, 1, Some(2), 8);
}

#[test]
fn cca_f16_bf16_edges() {
    cca_case::<half::f16>(DType::F16, 2, 1, 2, 37, 4, 9, 3); // S - w not a multiple of g
    cca_case::<half::bf16>(DType::Bf16, 1, 2, 1, 20, 3, 0, 4); // window 0
    cca_case::<half::f16>(DType::F16, 1, 1, 1, 10, 16, 4, 5); // no pooled group
}

/// Landmark attention (retrieval and training) on a paged cache: each sequence's rows (out,
/// lse, the selected blocks) equal the dense kernels' run on its gathered keys bit for bit
/// and pass the tolerance rule against the per-sequence f64 reference.
fn paged_landmark_case<T: Element + SimElem>(
    lens: &[(usize, usize)],
    heads: (usize, usize),
    ps: usize,
    (mem_freq, top_k): (usize, usize),
    seed: u64,
    dtype: DType,
) {
    let mode = if top_k == 0 {
        LandmarkMode::Train
    } else {
        LandmarkMode::Retrieval { top_k }
    };
    let spec = DynamicSpec::Landmark {
        dtype,
        head_dim: HeadDim::D64,
        mem_freq,
        mode,
    };
    paged_equals_dense::<T>(&spec, lens, heads, ps, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn paged_landmark_equals_the_dense_run_on_gathered_keys(
        lens in prop::collection::vec((0..=3usize, 0..=40usize), 1..=3)
            .prop_map(|v| v.into_iter().map(|(sq, sk)| (sq.min(sk), sk)).collect::<Vec<_>>()),
        hkv in 1..=2usize,
        group in 1..=2usize,
        ps in prop::sample::select(vec![1usize, 16]),
        dt in 0..3usize,
        seed in any::<u64>(),
    ) {
        // the fixed cases' parameters per dtype: the kernels' source names the spec, so
        // the simulator compiles each (dtype, parameters) pair once for both tests
        let (h, p) = ((hkv, hkv * group), LANDMARK_PARAMS[dt]);
        match dt {
            0 => paged_landmark_case::<f32>(&lens, h, ps, p, seed, DType::F32),
            1 => paged_landmark_case::<half::f16>(&lens, h, ps, p, seed, DType::F16),
            _ => paged_landmark_case::<half::bf16>(&lens, h, ps, p, seed, DType::Bf16),
        }
    }
}

/// (mem_freq, top_k) of the paged cases per dtype (f32, f16, bf16; top_k 0: training).
const LANDMARK_PARAMS: [(usize, usize); 3] = [(3, 2), (4, 100), (2, 0)];

/// Fixed hard cases: every dtype at page sizes 1 and 16, GQA, a partial last page, an
/// empty sequence, decoding and chunked-prefill rows, top_k beyond the blocks, training.
#[test]
fn paged_landmark_fixed_cases_every_dtype() {
    let lens = [(1, 37), (0, 0), (3, 17), (2, 16)];
    for ps in [1, 16] {
        paged_landmark_case::<f32>(&lens, (1, 4), ps, LANDMARK_PARAMS[0], 5, DType::F32);
        paged_landmark_case::<half::f16>(&lens, (2, 4), ps, LANDMARK_PARAMS[1], 6, DType::F16);
        paged_landmark_case::<half::bf16>(&lens, (1, 2), ps, LANDMARK_PARAMS[2], 7, DType::Bf16);
    }
}
