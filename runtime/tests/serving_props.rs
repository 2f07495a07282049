//! Serving layouts (variants.md section 13) on the simulator: packed varlen sequences and a
//! paged KV cache through the forward templates' layout policies, against the reference's
//! serving function (each sequence gathered and run through the dense reference), with the
//! oracle of the dense check.
//!
//! Lengths are random per case (zero-length sequences, lengths that are not tile multiples,
//! `Sq_b != Sk_b`, `Sq_b > Sk_b` for full and causal), page tables are random permutations
//! with shared pages, page sizes 1 .. 1024. `ATTNFORGE_PROPTEST_CASES` sets the cases per
//! property (default 4: every case runs the exact generated CUDA on the CPU).

use attnforge_reference::{Element, Packed, PagedCache};
use attnforge_runtime::codegen::check::MaskParams;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::exec::RunParams;
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::SimElem;
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn cases() -> u32 {
    std::env::var("ATTNFORGE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

mod inputs;
use inputs::{sim_cfg as cfg, Rng};

fn packed<T: Element>(rng: &mut Rng, tokens: usize, heads: usize, dim: usize) -> Packed<T> {
    Packed::from_fn(tokens, heads, dim, |_, _, _| {
        T::from_f64(f64::from(rng.unit()))
    })
}

fn cu(lens: &[usize]) -> Vec<i32> {
    let mut c = vec![0i32];
    for &l in lens {
        c.push(c.last().unwrap() + l as i32);
    }
    c
}

/// Varlen inputs for per-sequence (Sq_b, Sk_b).
fn varlen<T: Element>(
    seed: u64,
    lens: &[(usize, usize)],
    hq: usize,
    hkv: usize,
    d: usize,
) -> ServingInputs<T> {
    let mut rng = Rng(seed | 1);
    let (sq, sk): (Vec<usize>, Vec<usize>) = lens.iter().copied().unzip();
    let (tq, tk) = (sq.iter().sum(), sk.iter().sum());
    ServingInputs {
        q: packed(&mut rng, tq, hq, d),
        cu_seqlens_q: cu(&sq),
        keys: ServingKeys::Varlen {
            k: packed(&mut rng, tk, hkv, d),
            v: packed(&mut rng, tk, hkv, d),
            cu_seqlens_k: cu(&sk),
        },
    }
}

/// Paged inputs: each sequence's pages drawn from a shuffled pool; with `share`, every
/// sequence's first page is page 0 (a shared prefix page; those sequences then see the same
/// first keys). Entries past a sequence's pages are -1.
fn paged<T: Element>(
    seed: u64,
    lens: &[(usize, usize)],
    hq: usize,
    hkv: usize,
    d: usize,
    page_size: usize,
    share: bool,
) -> ServingInputs<T> {
    let mut rng = Rng(seed | 1);
    let (sq, sk): (Vec<usize>, Vec<usize>) = lens.iter().copied().unzip();
    let pages: Vec<usize> = sk.iter().map(|&k| k.div_ceil(page_size)).collect();
    let max_pages = pages.iter().copied().max().unwrap_or(0) + 1;
    let num_pages = pages.iter().sum::<usize>() + 2;
    let mut pool: Vec<usize> = (0..num_pages).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i + 1));
    }
    let mut table = vec![-1i32; lens.len() * max_pages];
    let mut next = 0;
    for (b, &n) in pages.iter().enumerate() {
        for i in 0..n {
            table[b * max_pages + i] = if share && i == 0 {
                0
            } else {
                next += 1;
                pool[next - 1] as i32
            };
        }
    }
    let cache = |rng: &mut Rng| {
        PagedCache::from_fn(num_pages, page_size, hkv, d, |_, _, _, _| {
            T::from_f64(f64::from(rng.unit()))
        })
    };
    let tq = sq.iter().sum();
    ServingInputs {
        q: packed(&mut rng, tq, hq, d),
        cu_seqlens_q: cu(&sq),
        keys: ServingKeys::Paged {
            k_cache: cache(&mut rng),
            v_cache: cache(&mut rng),
            block_table: table,
            max_pages,
            seqlens_k: sk.iter().map(|&k| k as i32).collect(),
        },
    }
}

fn run<T: Element + SimElem>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    seed: u64,
) -> Result<(), TestCaseError> {
    let tile = default_tile(spec, Arch::Sm80).expect("a tile");
    match exec_serving::check(spec, &tile, x, p, &cfg(seed)) {
        Ok(_) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!(
            "{} ({:?}): {e}",
            spec.canonical_name(),
            x.cu_seqlens_q
        ))),
    }
}

/// The doc ids of `lens`' keys, packed like the keys: per sequence a question prefix (id 0)
/// of random length, then documents 1, 2, 3 of 23 keys each.
fn doc_ids(seed: u64, lens: &[(usize, usize)]) -> Vec<i32> {
    let mut rng = Rng(seed | 1);
    let mut ids = Vec::new();
    for &(_, sk) in lens {
        let question = rng.below(sk + 1);
        ids.extend((0..sk).map(|j| {
            if j < question {
                0
            } else {
                1 + (j / 23 % 3) as i32
            }
        }));
    }
    ids
}

/// Runtime parameters of a case: random windows for the sliding window, doc ids for the doc
/// masks, a softcap; defaults otherwise.
fn params(spec: &KernelSpec, seed: u64, lens: &[(usize, usize)]) -> RunParams {
    let mut p = RunParams::default();
    // the table's default or stress value of each parameter at the longest sequence
    let max_sk = lens.iter().map(|l| l.1).max().unwrap_or(0).max(1);
    if let Some(def) = spec.mask.def() {
        let mut m = MaskParams::new();
        for (i, q) in def.params.iter().enumerate() {
            let (a, b) = (q.default.at(max_sk), q.stress.at(max_sk));
            let (a, b) = if (seed >> i) & 1 == 1 { (b, a) } else { (a, b) };
            m.set(q.name, if q.check(a).is_ok() { a } else { b });
        }
        p = p.with_mask(m);
    }
    if spec.mask == Mask::Local {
        let mut rng = Rng(seed | 1);
        let left = rng.below(80) as i32 - 1;
        p = p.with_mask(
            MaskParams::new()
                .with("window_left", left)
                .with("window_right", rng.below(3) as i32),
        );
    }
    if spec.mask.reads_doc() {
        p = p.with_doc(doc_ids(seed, lens));
    }
    if spec.score == ScoreMod::Softcap {
        p = p.with_softcap(20.0);
    }
    p
}

/// One case: inputs of the spec's dtype and layout (paged: `page_size`, shared first page
/// with `share`), checked against the reference.
fn case(
    spec: &KernelSpec,
    lens: &[(usize, usize)],
    hq_hkv: (usize, usize),
    page: (usize, bool),
    seed: u64,
) -> Result<(), TestCaseError> {
    fn go<T: Element + SimElem>(
        spec: &KernelSpec,
        lens: &[(usize, usize)],
        (hq, hkv): (usize, usize),
        (page_size, share): (usize, bool),
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let d = spec.head_dim.get();
        let x = match spec.layout {
            Layout::Paged => paged::<T>(seed, lens, hq, hkv, d, page_size, share),
            _ => varlen::<T>(seed, lens, hq, hkv, d),
        };
        run(spec, &x, &params(spec, seed, lens), seed)
    }
    match spec.dtype {
        DType::F16 => go::<f16>(spec, lens, hq_hkv, page, seed),
        DType::Bf16 => go::<bf16>(spec, lens, hq_hkv, page, seed),
        DType::F32 => go::<f32>(spec, lens, hq_hkv, page, seed),
    }
}

/// Sequence lengths: 1 to 4 sequences of 0 .. 90 queries and 0 .. 150 keys (not tile
/// multiples, zero lengths included); `Sq_b > Sk_b` only where the spec defines it.
fn lens_strategy(sq_gt_sk: bool) -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0usize..90, 0usize..150), 1..5).prop_map(move |v| {
        v.into_iter()
            .map(|(q, k)| if sq_gt_sk { (q, k) } else { (q.min(k), k) })
            .collect()
    })
}

const DTYPES: [DType; 3] = [DType::F16, DType::Bf16, DType::F32];

/// Every case of `spec` (with each dtype drawn at random) through `layout`.
fn property(base: KernelSpec, layout: Layout, page_sizes: &[usize]) {
    let spec0 = base.with_gqa().with_layout(layout);
    let pages = page_sizes.to_vec();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strat = (
        lens_strategy(spec0.allows_sq_gt_sk()),
        0usize..3,
        prop::sample::select(vec![(2usize, 2usize), (4, 2), (4, 1)]),
        prop::sample::select(pages),
        any::<bool>(),
        any::<u64>(),
    );
    runner
        .run(&strat, |(lens, dt, heads, page_size, share, seed)| {
            let mut spec = spec0.clone();
            spec.dtype = DTYPES[dt];
            case(&spec, &lens, heads, (page_size, share), seed)
        })
        .unwrap_or_else(|e| panic!("{}: {e}", spec0.canonical_name()));
}

fn s(mask: Mask, score: ScoreMod) -> KernelSpec {
    KernelSpec::new(DType::F16, HeadDim::D64, mask, score)
}

#[test]
fn varlen_causal_and_full() {
    property(s(Mask::Causal, ScoreMod::None), Layout::Varlen, &[1]);
    property(s(Mask::Full, ScoreMod::None), Layout::Varlen, &[1]);
}

#[test]
fn varlen_windows_and_prefixes() {
    property(s(Mask::Local, ScoreMod::None), Layout::Varlen, &[1]);
    property(s(Mask::PrefixLm, ScoreMod::None), Layout::Varlen, &[1]);
    property(s(Mask::GlobalLocal, ScoreMod::None), Layout::Varlen, &[1]);
    property(s(Mask::ChunkedCausal, ScoreMod::None), Layout::Varlen, &[1]);
    property(s(Mask::DilatedCausal, ScoreMod::None), Layout::Varlen, &[1]);
}

#[test]
fn varlen_documents() {
    property(s(Mask::Document, ScoreMod::None), Layout::Varlen, &[1]);
    property(
        s(Mask::CausalDocument, ScoreMod::None),
        Layout::Varlen,
        &[1],
    );
    property(s(Mask::ShareQuestion, ScoreMod::None), Layout::Varlen, &[1]);
    property(
        s(Mask::BlockCausalDocument, ScoreMod::None),
        Layout::Varlen,
        &[1],
    );
}

#[test]
fn varlen_scores_and_lm_infinite() {
    property(s(Mask::Full, ScoreMod::Softcap), Layout::Varlen, &[1]);
    property(s(Mask::Causal, ScoreMod::Alibi), Layout::Varlen, &[1]);
    property(s(Mask::LambdaMask, ScoreMod::None), Layout::Varlen, &[1]);
    property(s(Mask::LmInfinite, ScoreMod::None), Layout::Varlen, &[1]);
}

const PAGE_SIZES: [usize; 6] = [1, 2, 16, 64, 256, 1024];

#[test]
fn paged_causal_and_full() {
    property(s(Mask::Causal, ScoreMod::None), Layout::Paged, &PAGE_SIZES);
    property(s(Mask::Full, ScoreMod::None), Layout::Paged, &PAGE_SIZES);
}

#[test]
fn paged_masks_and_scores() {
    property(
        s(Mask::Local, ScoreMod::Softcap),
        Layout::Paged,
        &PAGE_SIZES,
    );
    property(
        s(Mask::ChunkedCausal, ScoreMod::Alibi),
        Layout::Paged,
        &PAGE_SIZES,
    );
    property(
        s(Mask::LmInfinite, ScoreMod::None),
        Layout::Paged,
        &PAGE_SIZES,
    );
}

/// Each page size at least once, page size 1 and 1024 included (the property draws them).
#[test]
fn paged_every_page_size_with_a_partial_last_page() {
    let spec = s(Mask::Causal, ScoreMod::None)
        .with_gqa()
        .with_layout(Layout::Paged);
    for (i, &ps) in PAGE_SIZES.iter().enumerate() {
        // Sk = 3 ps + 1 (or 3 for ps = 1): the last page holds one key
        let lens = [(5, 3 * ps + 1), (0, ps), (17, 40)];
        case(&spec, &lens, (4, 2), (ps, i % 2 == 0), i as u64).unwrap();
    }
}
