//! Simulator throughput: `exec::simulate` of flash kernels (the exact generated CUDA on the
//! CPU SIMT simulator) on a small causal problem, B = 1, H = 2, S = 128, default tile
//! (sm_80). The kernel's `.so` is built (g++) and the result checked against the reference
//! once, outside the timed loop; each iteration is one launch on the host buffers.
//! Throughput counts the unmasked (query, key) pairs: `B * H * S * (S + 1) / 2`.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use attnforge_autotune::workload::{default_params, inputs, Shape};
use attnforge_benches::quick_criterion;
use attnforge_codegen::prelude::{default_tile, Arch, DType, KernelSpec};
use attnforge_reference::Element;
use attnforge_runtime::exec::{check, sim_kernel, simulate, Backend, Inputs};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use criterion::{
    criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, BenchmarkId, Criterion,
    SamplingMode, Throughput,
};
use half::f16;

const SEQ: usize = 128;

fn bench_one<T: Element + SimElem>(g: &mut BenchmarkGroup<'_, WallTime>, spec: &KernelSpec) {
    let shape = Shape::for_spec(spec, 1, 2, SEQ);
    let tile = default_tile(spec, Arch::Sm80).expect("default tile");
    let x: Inputs<T> = inputs(spec, &shape, 11);
    let p = default_params(spec, &shape);
    let built = sim_kernel(spec, &tile).expect("simulator build");
    println!(
        "simulator bench: {} tile {} built in {:.1} s{}",
        spec.canonical_name(),
        tile.suffix(),
        built.build_seconds(),
        if built.was_cached() {
            " (cached .so)"
        } else {
            ""
        }
    );
    let report = check(spec, &tile, &x, &p, &Backend::sim()).expect("kernel matches the reference");
    println!(
        "simulator bench: {} max |out error| {:.2e}",
        spec.canonical_name(),
        report.close.out.max_err
    );
    let cfg = SimConfig::new(Schedule::Forward);
    let pairs = (shape.batch * shape.heads_q * SEQ * (SEQ + 1) / 2) as u64;
    g.throughput(Throughput::Elements(pairs));
    g.bench_function(BenchmarkId::from_parameter(spec.canonical_name()), |b| {
        b.iter(|| simulate(spec, &tile, &x, &p, &cfg).expect("simulate"))
    });
}

fn simulator(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulator");
    g.sampling_mode(SamplingMode::Flat);
    // Tensor-core mainloop (emulated mma.sync / ldmatrix / cp.async), a catalog kernel.
    let tc = attnforge_codegen::catalog::find("flash_fwd_causal_d64_f16").expect("catalog entry");
    bench_one::<f16>(&mut g, &tc);
    // FMA mainloop (f32): the same variant in f32.
    let fma = KernelSpec {
        dtype: DType::F32,
        ..tc.clone()
    };
    bench_one::<f32>(&mut g, &fma);
    g.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = simulator
}
criterion_main!(benches);
