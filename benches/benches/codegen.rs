//! Spec validation and CUDA emission time per catalog kernel (bench id = canonical name).
//! Emission is at the kernel's default tile for sm_80.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use attnforge_benches::quick_criterion;
use attnforge_codegen::prelude::*;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

fn codegen(c: &mut Criterion) {
    let specs = catalog();
    let mut g = c.benchmark_group("codegen");
    for spec in &specs {
        let name = spec.canonical_name();
        g.bench_with_input(BenchmarkId::new("validate", &name), spec, |b, s| {
            b.iter(|| validate_spec(black_box(s)).expect("catalog spec is valid"))
        });
    }
    for spec in &specs {
        let name = spec.canonical_name();
        let tile = default_tile(spec, Arch::Sm80).expect("catalog spec has a default tile");
        g.bench_with_input(BenchmarkId::new("emit", &name), spec, |b, s| {
            b.iter(|| emit(black_box(s), &tile, Arch::Sm80).expect("catalog spec emits"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = codegen
}
criterion_main!(benches);
