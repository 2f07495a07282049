//! Input generators shared by the simulator property tests.

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
