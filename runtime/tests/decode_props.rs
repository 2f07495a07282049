//! The decode kernel (`Layout::Decode`, variants.md section 13): GQA groups packed into the
//! M tile, the keys split across blocks and merged by log-sum-exp, on a paged cache; on the
//! simulator against the per-sequence dense reference (the oracle of the dense check), and
//! its split partials' merge against the split-KV reference.
//!
//! Few cases (every one runs the exact generated CUDA on the CPU): small shapes whose packed
//! rows and keys still cross tile boundaries. `ATTNFORGE_PROPTEST_CASES` sets the random cases.

use attnforge_reference::{Element, Packed, PagedCache};
use attnforge_runtime::codegen::check::MaskParams;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::exec::RunParams;
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};

fn cases() -> u64 {
    std::env::var("ATTNFORGE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

fn cfg(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(match seed % 3 {
        0 => Schedule::Forward,
        1 => Schedule::Reverse,
        _ => Schedule::Random(seed),
    });
    c.workers = 2;
    c
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn cu(lens: &[usize]) -> Vec<i32> {
    let mut c = vec![0i32];
    for &l in lens {
        c.push(c.last().unwrap() + l as i32);
    }
    c
}

/// Paged inputs for per-sequence (Sq_b, Sk_b): pages drawn from a shuffled pool, every
/// sequence's first page shared (page 0, a common prefix), entries past a sequence's pages
/// -1, partially filled last pages wherever Sk_b is not a page multiple.
fn paged<T: Element>(
    seed: u64,
    lens: &[(usize, usize)],
    (hq, hkv): (usize, usize),
    d: usize,
    page_size: usize,
) -> ServingInputs<T> {
    let mut rng = Rng(seed | 1);
    let (sq, sk): (Vec<usize>, Vec<usize>) = lens.iter().copied().unzip();
    let pages: Vec<usize> = sk.iter().map(|&k| k.div_ceil(page_size)).collect();
    let max_pages = pages.iter().copied().max().unwrap_or(0) + 1;
    let num_pages = pages.iter().sum::<usize>() + 2;
    let mut pool: Vec<usize> = (1..num_pages).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i + 1));
    }
    let mut table = vec![-1i32; lens.len() * max_pages];
    let mut next = 0;
    for (b, &n) in pages.iter().enumerate() {
        for i in 0..n {
            table[b * max_pages + i] = if i == 0 {
                0
            } else {
                next += 1;
                pool[next - 1] as i32
            };
        }
    }
    let mut val = |rng: &mut Rng| T::from_f64(f64::from(rng.unit()));
    let k_cache = PagedCache::from_fn(num_pages, page_size, hkv, d, |_, _, _, _| val(&mut rng));
    let v_cache = PagedCache::from_fn(num_pages, page_size, hkv, d, |_, _, _, _| val(&mut rng));
    let tq = sq.iter().sum();
    ServingInputs {
        q: Packed::from_fn(tq, hq, d, |_, _, _| val(&mut rng)),
        cu_seqlens_q: cu(&sq),
        keys: ServingKeys::Paged {
            k_cache,
            v_cache,
            block_table: table,
            max_pages,
            seqlens_k: sk.iter().map(|&k| k as i32).collect(),
        },
    }
}

fn decode(dtype: DType, d: HeadDim, mask: Mask, score: ScoreMod) -> KernelSpec {
    let mut s = KernelSpec::new(dtype, d, mask, score).with_layout(Layout::Decode);
    s.gqa = true;
    s
}

/// Kernel vs the per-sequence dense reference (the dense check's oracle) at `splits`.
fn check<T: Element + SimElem>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    splits: usize,
    seed: u64,
) {
    let tile = default_tile(spec, Arch::Sm80).expect("a tile");
    let p = p.clone().with_num_splits(splits);
    if let Err(e) = exec_serving::check(spec, &tile, x, &p, &cfg(seed)) {
        panic!(
            "{} splits {splits} ({:?}): {e}",
            spec.canonical_name(),
            x.cu_seqlens_q
        );
    }
}

/// GQA 4 (two kv heads), causal f16 d64, page size 16: an empty sequence, 1, 3 and 16 query
/// tokens (64 packed rows: one full M tile), key lengths off the tile grid; splits 1 (no
/// merge), 2, 3 and 40 (more splits than key tiles: empty splits).
#[test]
fn causal_gqa_splits() {
    let spec = decode(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let lens = [(1, 70), (0, 5), (3, 130), (16, 200)];
    let x = paged::<f16>(7, &lens, (8, 2), 64, 16);
    for (i, splits) in [1, 2, 3, 40].into_iter().enumerate() {
        check(&spec, &x, &RunParams::default(), splits, i as u64);
    }
}
