//! Top-k retrieval (variants.md section 9) and the log-sum-exp merge on the simulator:
//! fused and split (+ merge kernel) pipelines vs the f64 reference under all schedules,
//! exact ties, k larger than the candidates; the selection kernel's index lists equal the
//! reference's R; the counters equal the selected-key counts.

mod dynamic_common;

use attnforge_reference::{
    assert_close, attention_over_keys, topk_key_sets, AttnOptions, Element, Precision, Shape4,
    Tolerance, TopkParams,
};
use attnforge_runtime::codegen::dynamic::DynamicSpec;
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::exec::Backend;
use attnforge_runtime::exec_dynamic::{merge, DynInputs};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use dynamic_common::{check_all_schedules, fracs, ints, paged_case, paged_equals_dense};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    b: usize,
    hkv: usize,
    group: usize,
    sq: usize,
    sk: usize,
    sink: usize,
    recent: usize,
    k: usize,
    split: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..=2usize,
        1..=2usize,
        1..=2usize,
        1..=3usize,
        1..=48usize,
        0..=4usize,
        0..=6usize,
        1..=40usize,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(b, hkv, group, sq, sk, sink, recent, k, split, seed)| Case {
                b,
                hkv,
                group,
                sq: sq.min(sk),
                sk,
                sink,
                recent,
                k,
                split,
                seed,
            },
        )
}

fn run_case<T: Element + SimElem>(c: &Case, dtype: DType) {
    let d = 64;
    let hq = c.hkv * c.group;
    let q = ints::<T>(Shape4::new(c.b, hq, c.sq, d), c.seed, 1);
    let k = ints::<T>(Shape4::new(c.b, c.hkv, c.sk, d), c.seed ^ 1, 1);
    let v = fracs::<T>(Shape4::new(c.b, c.hkv, c.sk, d), c.seed ^ 2);
    let spec = DynamicSpec::Topk {
        dtype,
        head_dim: HeadDim::D64,
        sink: c.sink,
        recent: c.recent,
        k: c.k,
        split: c.split,
    };
    let x = DynInputs::new(q, k, v);
    let rep = check_all_schedules(&spec, &x, c.seed);
    // The selection equals the reference's R (as a set; the kernel lists it by rank).
    let p = TopkParams {
        start: c.sink,
        end: c.recent,
        k: c.k,
    };
    let sets = topk_key_sets(&x.q, &x.k, &x.v, &p, Precision::F64).unwrap();
    let sel = &rep.run.indices["sel"];
    let mut gathered = 0;
    let mut work = 0;
    for (row, (w, r)) in sets.static_keys.iter().zip(&sets.retrieved).enumerate() {
        let mut got: Vec<usize> = sel[row * c.k..(row + 1) * c.k]
            .iter()
            .take_while(|&&j| j >= 0)
            .map(|&j| j as usize)
            .collect();
        assert!(sel[row * c.k..]
            .iter()
            .take(c.k)
            .skip(got.len())
            .all(|&j| j == -1));
        got.sort_unstable();
        assert_eq!(&got, r, "row {row}: selected keys");
        gathered += w.len() + r.len();
        let i = row % c.sq;
        let pos = i + c.sk - c.sq;
        work += pos + 1 - w.len();
    }
    assert_eq!(
        rep.run.counters.keys_gathered, gathered as u64,
        "keys gathered = |W| + |R|"
    );
    assert_eq!(
        rep.run.counters.select_work, work as u64,
        "select work = candidates scored"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn topk_f32_matches_reference(c in case()) {
        run_case::<f32>(&c, DType::F32);
    }

    #[test]
    fn topk_f16_matches_reference(c in case()) {
        run_case::<half::f16>(&c, DType::F16);
    }
}

#[test]
fn topk_bf16_k_beyond_candidates_and_decode_shape() {
    // One query (decoding), k larger than every candidate set, and a case with no candidates.
    for (sk, sink, recent, k) in [(37, 3, 5, 64), (6, 4, 4, 2), (50, 0, 0, 7)] {
        let c = Case {
            b: 1,
            hkv: 2,
            group: 2,
            sq: 1,
            sk,
            sink,
            recent,
            k,
            split: false,
            seed: sk as u64,
        };
        run_case::<half::bf16>(&c, DType::Bf16);
        run_case::<half::bf16>(&Case { split: true, ..c }, DType::Bf16);
    }
}

#[test]
fn lse_merge_kernel_equals_attention_over_the_union() {
    let (b, h, s, sk, d) = (2, 3, 5, 40, 64);
    let q = fracs::<half::f16>(Shape4::new(b, h, s, d), 11);
    let k = fracs::<half::f16>(Shape4::new(b, h, sk, d), 12);
    let v = fracs::<half::f16>(Shape4::new(b, h, sk, d), 13);
    // Disjoint sets: even keys in A, odd keys below 20 in B; some rows get an empty B,
    // one row gets both empty.
    let rows = b * h * s;
    let mut a_sets = Vec::new();
    let mut b_sets = Vec::new();
    for r in 0..rows {
        let a: Vec<usize> = if r == 3 {
            vec![]
        } else {
            (0..sk).filter(|j| j % 2 == 0 && j % 7 != r % 7).collect()
        };
        let bb: Vec<usize> = if r % 4 == 0 {
            vec![]
        } else {
            (0..20).filter(|j| j % 2 == 1).collect()
        };
        a_sets.push(a);
        b_sets.push(if r == 3 { vec![] } else { bb });
    }
    let union: Vec<Vec<usize>> = a_sets
        .iter()
        .zip(&b_sets)
        .map(|(a, b)| {
            let mut u = a.clone();
            u.extend(b);
            u.sort_unstable();
            u
        })
        .collect();
    let pa = attention_over_keys(&q, &k, &v, &a_sets, &AttnOptions::reference()).unwrap();
    let pb = attention_over_keys(&q, &k, &v, &b_sets, &AttnOptions::reference()).unwrap();
    let want = attention_over_keys(&q, &k, &v, &union, &AttnOptions::reference()).unwrap();
    let naive = attention_over_keys(&q, &k, &v, &union, &AttnOptions::naive()).unwrap();
    let spec = DynamicSpec::LseMerge {
        dtype: DType::F16,
        head_dim: HeadDim::D64,
    };
    let tol = Tolerance::for_dtype(attnforge_reference::DType::F16);
    for sched in Schedule::standard(5) {
        let got =
            merge::<half::f16>(&spec, &pa, &pb, &Backend::Sim(SimConfig::new(sched))).unwrap();
        assert_close(&got.output, &want, &naive, tol.rtol, tol.atol).unwrap();
        assert_eq!(
            got.output.lse[3],
            f64::NEG_INFINITY,
            "both parts empty -> empty row"
        );
    }
}

/// The fused top-k on a paged cache equals the dense kernels' run per sequence bit for bit
/// (out, lse, selected keys) and passes the tolerance rule against the f64 reference.
fn paged_topk_case<T: Element + SimElem>(
    lens: &[(usize, usize)],
    heads: (usize, usize),
    ps: usize,
    (sink, recent, k): (usize, usize, usize),
    seed: u64,
    dtype: DType,
) {
    let spec = DynamicSpec::Topk {
        dtype,
        head_dim: HeadDim::D64,
        sink,
        recent,
        k,
        split: false,
    };
    paged_equals_dense::<T>(&spec, lens, heads, ps, seed);
}

fn paged_lens() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0..=3usize, 0..=40usize), 1..=3)
        .prop_map(|v| v.into_iter().map(|(sq, sk)| (sq.min(sk), sk)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn paged_topk_equals_the_dense_run_on_gathered_keys(
        lens in paged_lens(),
        hkv in 1..=2usize,
        group in 1..=2usize,
        ps in prop::sample::select(vec![1usize, 16]),
        dt in 0..3usize,
        seed in any::<u64>(),
    ) {
        // the fixed cases' parameters per dtype: the kernels' source names the spec, so
        // the simulator compiles each (dtype, parameters) pair once for both tests
        let (h, p) = ((hkv, hkv * group), TOPK_PARAMS[dt]);
        match dt {
            0 => paged_topk_case::<f32>(&lens, h, ps, p, seed, DType::F32),
            1 => paged_topk_case::<half::f16>(&lens, h, ps, p, seed, DType::F16),
            _ => paged_topk_case::<half::bf16>(&lens, h, ps, p, seed, DType::Bf16),
        }
    }
}

/// (sink, recent, k) of the paged cases per dtype (f32, f16, bf16).
const TOPK_PARAMS: [(usize, usize, usize); 3] = [(2, 3, 5), (0, 4, 9), (4, 0, 3)];

/// Fixed hard cases: every dtype at page sizes 1 and 16, GQA 4:1 (the group reads one kv
/// head through the table), a partial last page, an empty sequence, decoding rows.
#[test]
fn paged_topk_fixed_cases_every_dtype() {
    let lens = [(1, 37), (0, 0), (3, 17), (2, 16)];
    for ps in [1, 16] {
        paged_topk_case::<f32>(&lens, (1, 4), ps, TOPK_PARAMS[0], 5, DType::F32);
        paged_topk_case::<half::f16>(&lens, (2, 4), ps, TOPK_PARAMS[1], 6, DType::F16);
        paged_topk_case::<half::bf16>(&lens, (1, 2), ps, TOPK_PARAMS[2], 7, DType::Bf16);
    }
}

/// Bad layout arrays are refused before any launch, naming the array, the index and the
/// fix (the static paged layout's host checks); a split top-k or a family that reads dense
/// keys only (CCA) names the field to change.
#[test]
fn paged_topk_refuses_bad_layouts() {
    use attnforge_runtime::exec::ExecError;
    use attnforge_runtime::exec_dynamic::run_paged;
    use attnforge_runtime::exec_serving::ServingKeys;
    let spec = DynamicSpec::Topk {
        dtype: DType::F32,
        head_dim: HeadDim::D64,
        sink: 1,
        recent: 2,
        k: 3,
        split: false,
    };
    let sim = Backend::Sim(SimConfig::new(Schedule::Forward));
    let base = paged_case::<f32>(&[(1, 20), (2, 9)], (1, 2), 16, 3).x;
    let path_of = |e: ExecError| match e {
        ExecError::Spec(v) => v
            .into_iter()
            .map(|e| format!("{} ({})", e.path, e.fix))
            .collect::<Vec<_>>()
            .join("; "),
        ExecError::Input { field, fix, .. } => format!("{field} ({fix})"),
        e => panic!("not an input error: {e}"),
    };
    let mut bad = paged_case::<f32>(&[(1, 20), (2, 9)], (1, 2), 16, 3).x;
    if let ServingKeys::Paged {
        block_table,
        max_pages,
        ..
    } = &mut bad.keys
    {
        block_table[*max_pages] = 99; // sequence 1's first page, read
    }
    let e = path_of(run_paged(&spec, &bad, None, &sim).unwrap_err());
    assert!(e.contains("block_table[1][0]"), "{e}");
    let mut bad = paged_case::<f32>(&[(1, 20), (2, 9)], (1, 2), 16, 3).x;
    bad.cu_seqlens_q[1] = 4; // above cu_seqlens_q[2]: decreasing
    let e = path_of(run_paged(&spec, &bad, None, &sim).unwrap_err());
    assert!(e.contains("cu_seqlens_q"), "{e}");
    let mut bad = paged_case::<f32>(&[(1, 20), (2, 9)], (1, 2), 16, 3).x;
    if let ServingKeys::Paged { seqlens_k, .. } = &mut bad.keys {
        seqlens_k[1] = 40; // beyond the table's two pages
    }
    let e = path_of(run_paged(&spec, &bad, None, &sim).unwrap_err());
    assert!(e.contains("seqlens_k[1]"), "{e}");
    let split = DynamicSpec::Topk {
        dtype: DType::F32,
        head_dim: HeadDim::D64,
        sink: 1,
        recent: 2,
        k: 3,
        split: true,
    };
    assert!(path_of(run_paged(&split, &base, None, &sim).unwrap_err()).starts_with("mode"));
    let cca = DynamicSpec::Cca {
        dtype: DType::F32,
        head_dim: HeadDim::D64,
        group: 4,
        window: 8,
    };
    assert!(path_of(run_paged(&cca, &base, None, &sim).unwrap_err()).starts_with("layout"));
    assert!(run_paged(&spec, &base, None, &sim).is_ok());
}
