//! The backward kernels (variants.md section 12) on the simulator against the reference's
//! analytic backward, gradient by gradient, with the tolerance rule of section 0.

use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::codegen::backward::BackwardTile;
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{Inputs, RunParams};
use attnforge_runtime::exec_backward::{check_backward, Upstream};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};

/// Deterministic N(0, sigma^2) samples (xorshift64 + Box-Muller), rounded to `T`.
fn normal<T: Element>(shape: Shape4, sigma: f64, seed: u64) -> Tensor4<T> {
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

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
    sigma: f64,
    dlse: bool,
}

fn run<T: Element + SimElem>(
    spec: &KernelSpec,
    c: Case,
    p: &RunParams,
    seed: u64,
) -> Result<(), String> {
    let tile = default_tile(spec, Arch::Sm80).expect("default tile");
    let d = spec.head_dim.get();
    let x = Inputs::new(
        normal::<T>(Shape4::new(c.batch, c.hq, c.sq, d), c.sigma, seed),
        normal::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), c.sigma, seed ^ 0xA5A5),
        normal::<T>(Shape4::new(c.batch, c.hkv, c.sk, d), 1.0, seed ^ 0x5A5A),
    );
    let dout = normal::<T>(Shape4::new(c.batch, c.hq, c.sq, d), 1.0, seed ^ 0x3C3C);
    let dlse: Vec<f32> = (0..c.batch * c.hq * c.sq)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
        .collect();
    let up = Upstream {
        dout: &dout,
        dlse: c.dlse.then_some(dlse.as_slice()),
    };
    let cfg = SimConfig::new(Schedule::Forward);
    check_backward(spec, &tile, &BackwardTile::default(), &x, up, p, &cfg)
        .map(|(_, checks)| eprintln!("{} {c:?}: {checks:?}", spec.canonical_name()))
        .map_err(|e| format!("{} {c:?}: {e}", spec.canonical_name()))
}

#[test]
fn causal_f32_smoke() {
    let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None).with_gqa();
    let c = Case {
        batch: 1,
        hq: 2,
        hkv: 1,
        sq: 45,
        sk: 70,
        sigma: 1.0,
        dlse: true,
    };
    run::<f32>(&spec, c, &RunParams::default(), 1).unwrap();
}
