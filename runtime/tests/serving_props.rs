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
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::exec::{ExecError, RunParams};
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn cases() -> u32 {
    std::env::var("ATTNFORGE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
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

/// A small deterministic generator (xorshift) for tensor values and page tables.
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
        (self.next() % n as u64) as usize
    }
}

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

fn spec(dtype: DType, mask: Mask, score: ScoreMod, gqa: bool, layout: Layout) -> KernelSpec {
    let s = KernelSpec::new(dtype, HeadDim::D64, mask, score).with_layout(layout);
    if gqa {
        s.with_gqa()
    } else {
        s
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

#[test]
fn smoke_varlen_causal_f32() {
    let s = spec(
        DType::F32,
        Mask::Causal,
        ScoreMod::None,
        false,
        Layout::Varlen,
    );
    let x = varlen::<f32>(
        7,
        &[(0, 3), (5, 5), (37, 40), (4, 2), (3, 0), (70, 70)],
        2,
        2,
        64,
    );
    run(&s, &x, &RunParams::default(), 0).unwrap();
}

#[test]
fn smoke_varlen_causal_f16_gqa() {
    let s = spec(
        DType::F16,
        Mask::Causal,
        ScoreMod::None,
        true,
        Layout::Varlen,
    );
    let x = varlen::<f16>(
        9,
        &[(0, 3), (5, 5), (37, 40), (4, 2), (3, 0), (70, 130)],
        4,
        2,
        64,
    );
    run(&s, &x, &RunParams::default(), 1).unwrap();
}

#[test]
fn smoke_paged_causal_bf16() {
    let s = spec(
        DType::Bf16,
        Mask::Causal,
        ScoreMod::None,
        false,
        Layout::Paged,
    );
    let x = paged::<bf16>(11, &[(0, 3), (5, 5), (37, 40), (1, 70)], 2, 2, 64, 16, true);
    run(&s, &x, &RunParams::default(), 2).unwrap();
}
