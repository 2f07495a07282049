//! Build-time and single-launch measurements, printed as a small table:
//! cold `.so` build with and without the precompiled shim header, cached build, and one
//! launch of 64 blocks x 128 threads with 11 barriers and 10 shuffles per thread.
//! Run: `cargo bench -p attnforge-sim --bench build_time` (uses a fresh temporary cache).

use std::time::Instant;

use attnforge_sim::{BuildOptions, Schedule, SimArg, SimConfig, SimKernel};

const SRC: &str = include_str!("kernel_11_barriers.cu");

fn main() {
    let dir = std::env::temp_dir().join(format!("afsim-build-time-{}", std::process::id()));
    std::env::set_var("ATTNFORGE_SIM_CACHE", &dir);
    let no_pch = BuildOptions {
        precompiled_header: false,
        ..Default::default()
    };
    let t = Instant::now();
    let k = SimKernel::build_with(SRC, "bench_barriers", &no_pch).expect("build");
    println!(
        "cold build, no PCH:            {:7.3} s",
        t.elapsed().as_secs_f64()
    );
    assert!(!k.was_cached());
    let t = Instant::now();
    let _ = SimKernel::build(&format!("{SRC}\n// pch warm-up"), "bench_barriers").expect("build");
    println!(
        "cold build + building the PCH: {:7.3} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let _ = SimKernel::build(&format!("{SRC}\n// pch used"), "bench_barriers").expect("build");
    println!(
        "cold build with PCH:           {:7.3} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let k = SimKernel::build(&format!("{SRC}\n// pch used"), "bench_barriers").expect("build");
    assert!(k.was_cached());
    println!(
        "cached build:                  {:7.3} s",
        t.elapsed().as_secs_f64()
    );

    let x: Vec<f32> = (0..64 * 128).map(|i| (i % 13) as f32).collect();
    let mut out = vec![0.0f32; 64 * 128];
    for (label, sched, workers) in [
        ("forward, all workers", Schedule::Forward, 0),
        ("reverse, all workers", Schedule::Reverse, 0),
        ("random, all workers", Schedule::Random(3), 0),
        ("forward, 1 worker", Schedule::Forward, 1),
    ] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut args = [SimArg::input(&x), SimArg::output(&mut out)];
            let t = Instant::now();
            k.launch(
                64,
                128,
                0,
                &mut args,
                &SimConfig::new(sched).with_workers(workers),
            )
            .expect("launch");
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "launch 64x128, 11 barriers, 10 shuffles ({label}): {:6.2} ms (best of 5)",
            best * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
