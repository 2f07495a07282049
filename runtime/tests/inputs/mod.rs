//! Input generators shared by the simulator property tests.
#![allow(dead_code)] // each test binary uses its own subset

use attnforge_reference::{Element, Packed, PagedCache, Shape4, Tensor4};
use attnforge_runtime::exec_serving::{ServingInputs, ServingKeys};

/// Deterministic N(0, sigma^2) samples (xorshift64 + Box-Muller), rounded to `T`: the same
/// seed gives the same tensor on every machine, so a failing case is reproducible from its
/// printed seed.
pub fn normal<T: Element>(shape: Shape4, sigma: f64, seed: u64) -> Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    Tensor4::from_fn(shape, |_, _, _, _| {
        let (u1, u2) = (uniform(), uniform());
        T::from_f64(sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
    })
}

/// A simulator configuration that varies the thread schedule with the seed (forward,
/// reverse, random), so a race or an order dependence shows up across cases.
pub fn sim_cfg(seed: u64) -> attnforge_runtime::sim::SimConfig {
    use attnforge_runtime::sim::{Schedule, SimConfig};
    let mut c = SimConfig::new(match seed % 3 {
        0 => Schedule::Forward,
        1 => Schedule::Reverse,
        _ => Schedule::Random(seed),
    });
    c.workers = 2;
    c
}

/// A small deterministic generator (xorshift) for tensor values, lengths and page tables.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value in [-1, 1] on a grid of 0.001.
    pub fn unit(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Packed offsets (`cu_seqlens`) of the lengths `lens`.
pub fn cu(lens: &[usize]) -> Vec<i32> {
    let mut c = vec![0i32];
    for &l in lens {
        c.push(c.last().unwrap() + l as i32);
    }
    c
}

/// Paged inputs for per-sequence (Sq_b, Sk_b): pages drawn from a shuffled pool, every
/// sequence's first page shared (page 0, a common prefix), entries past a sequence's pages
/// -1, partially filled last pages wherever Sk_b is not a page multiple.
pub fn paged<T: Element>(
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
    let val = |rng: &mut Rng| T::from_f64(f64::from(rng.unit()));
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
