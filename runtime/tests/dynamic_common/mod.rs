//! Shared helpers of the dynamic-sparsity tests (`dynamic_*.rs`): deterministic inputs and
//! a check over the three standard simulator schedules.
#![allow(dead_code)]

use attnforge_reference::{Element, Shape4, SplitMix64, Tensor4};
use attnforge_runtime::codegen::dynamic::DynamicSpec;
use attnforge_runtime::exec::Backend;
use attnforge_runtime::exec_dynamic::{check, DynCheckReport, DynInputs};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};

/// Integer values in `[-r, r]` (exact in every dtype; dot products exact in f32, so
/// rankings have exact ties and no near-ties).
pub fn ints<T: Element>(shape: Shape4, seed: u64, r: usize) -> Tensor4<T> {
    let mut g = SplitMix64(seed);
    Tensor4::from_fn(shape, |_, _, _, _| {
        T::from_f64(g.below(2 * r + 1) as f64 - r as f64)
    })
}

/// Multiples of 1/16 in `[-1, 1]` (exact in every dtype).
pub fn fracs<T: Element>(shape: Shape4, seed: u64) -> Tensor4<T> {
    let mut g = SplitMix64(seed);
    Tensor4::from_fn(shape, |_, _, _, _| {
        T::from_f64((g.below(33) as f64 - 16.0) / 16.0)
    })
}

/// Check `spec` on the simulator under forward, reverse and random schedules; every
/// schedule must pass the oracle and give the same counters. Returns the last report.
pub fn check_all_schedules<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    seed: u64,
) -> DynCheckReport {
    let mut last: Option<DynCheckReport> = None;
    for s in Schedule::standard(seed) {
        let r = match check(spec, x, &Backend::Sim(SimConfig::new(s))) {
            Ok(r) => r,
            Err(e) => panic!("{} under {s:?}: {e}", spec.canonical_name()),
        };
        if let Some(p) = &last {
            assert_eq!(
                p.run.counters.raw, r.run.counters.raw,
                "counters differ under {s:?}"
            );
            assert_eq!(
                p.run.indices, r.run.indices,
                "index buffers differ under {s:?}"
            );
        }
        last = Some(r);
    }
    last.expect("three schedules")
}
