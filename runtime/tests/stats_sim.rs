//! Attention statistics outputs on the simulator (variants.md section 14, docs/statistics.md):
//! the forward kernels with the statistics policy and the follow-up kernel against
//! `attnforge_reference::attention_stats` by the oracle of section 0; asking for statistics
//! leaves `out` and `lse` bit-identical; the `top_keys` tie rules on exact ties.

use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::{StatReduce, StatsSpec};
use attnforge_runtime::exec::{Inputs, RunParams};
use attnforge_runtime::exec_stats::{check_stats, StatsReport};
use attnforge_runtime::sim::SimElem;
use half::{bf16, f16};

/// Deterministic values in [-amp, amp) (xorshift64), rounded to `T`.
fn uniform<T: Element>(shape: Shape4, amp: f64, seed: u64) -> Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Tensor4::from_fn(shape, |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T::from_f64(amp * (2.0 * ((x >> 11) as f64 / (1u64 << 53) as f64) - 1.0))
    })
}

/// One problem: `(B, Hq, Hkv, Sq, Sk)` and the q/k amplitude.
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sk: usize,
    amp: f64,
}

fn inputs<T: Element>(spec: &KernelSpec, c: Case, seed: u64) -> Inputs<T> {
    let d = spec.head_dim.get();
    Inputs::new(
        uniform(Shape4::new(c.b, c.hq, c.sq, d), c.amp, seed),
        uniform(Shape4::new(c.b, c.hkv, c.sk, d), c.amp, seed + 1),
        uniform(Shape4::new(c.b, c.hkv, c.sk, d), 1.0, seed + 2),
    )
}

fn stats(reduce: StatReduce, pool: Option<usize>, top_k: usize) -> StatsSpec {
    StatsSpec {
        reduce,
        pool,
        top_k: Some(top_k),
    }
}

fn check_typed<T: Element + SimElem>(
    spec: &KernelSpec,
    c: Case,
    p: &RunParams,
    seed: u64,
) -> Result<StatsReport, String> {
    let tile = default_tile(spec, Arch::Sm80).expect("a default tile");
    check_stats(spec, &tile, &inputs::<T>(spec, c, seed), p)
        .map_err(|e| format!("{} {c:?}: {e}", spec.canonical_name()))
}

fn check(spec: &KernelSpec, c: Case, p: &RunParams, seed: u64) -> StatsReport {
    let r = match spec.dtype {
        DType::F32 => check_typed::<f32>(spec, c, p, seed),
        DType::F16 => check_typed::<f16>(spec, c, p, seed),
        DType::Bf16 => check_typed::<bf16>(spec, c, p, seed),
    };
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn causal_f32_smoke() {
    let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None)
        .with_gqa()
        .with_stats(stats(StatReduce::Sum, Some(3), 5));
    let c = Case {
        b: 1,
        hq: 2,
        hkv: 1,
        sq: 37,
        sk: 45,
        amp: 1.0,
    };
    let r = check(
        &spec,
        c,
        &RunParams::default().with_mask(MaskParams::None),
        1,
    );
    eprintln!(
        "{:?} {:?} near {}",
        r.key_mass, r.key_score, r.top_near_ties
    );
}
