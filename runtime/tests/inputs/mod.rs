//! Input generators shared by the simulator property tests.
#![allow(dead_code)] // each test binary uses its own subset

use attnforge_reference::{Element, Shape4, Tensor4};

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
