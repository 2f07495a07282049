//! Simulator throughput: 64 blocks x 128 threads, 11 barriers and 10 shuffles per thread,
//! under each schedule. Run: `cargo bench -p attnforge-sim --bench throughput`.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use attnforge_sim::{Schedule, SimArg, SimConfig, SimKernel};
use criterion::{criterion_group, criterion_main, Criterion};

const SRC: &str = include_str!("kernel_11_barriers.cu");

fn bench(c: &mut Criterion) {
    let k = SimKernel::build(SRC, "bench_barriers").expect("build");
    let x: Vec<f32> = (0..64 * 128).map(|i| (i % 13) as f32).collect();
    let mut out = vec![0.0f32; 64 * 128];
    let mut g = c.benchmark_group("sim_64x128_11bar_10shfl");
    for (label, sched) in [
        ("forward", Schedule::Forward),
        ("reverse", Schedule::Reverse),
        ("random", Schedule::Random(7)),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut args = [SimArg::input(&x), SimArg::output(&mut out)];
                k.launch(64, 128, 0, &mut args, &SimConfig::new(sched))
                    .expect("launch")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
