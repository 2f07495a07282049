//! NVRTC compile latency (NVRTC + ptxas inside it: PTX, CUBIN and the `-v` resource report,
//! exactly what `attnforge_runtime::compile` does for the tuner) of every catalog kernel at
//! its default tile, on sm_80 and sm_90. Issue 3's target: < 300 ms per kernel. Each
//! iteration is one full compile, sampled flat (10 compiles per bench id). Filter with
//! criterion's argument, e.g. `-- nvrtc/sm_80` or `-- lm_infinite`.
//!
//! Two groups with the same ids: `nvrtc` is wall time; `nvrtc_cpu` is the on-CPU time of
//! the compiling thread (`/proc/thread-self/schedstat`), which a machine shared with other
//! work inflates much less than wall time (NVRTC compiles on the calling thread; the bench
//! prints the process CPU time of the first compile next to the thread's as a check).
//!
//! A third group, `nvrtc_cached/<sm>/<name>`, is the hit path of the persistent kernel cache
//! (`Compiler::compile_cached`: key hash + read + verify of the stored PTX/CUBIN/log, no NVRTC
//! call), against a private cache folder under the system temp folder that is filled by one
//! compile per kernel first and removed at the end. The other groups never use the cache.
//!
//! Needs the NVRTC wheel (`cargo xtask setup`); without it the bench says so and exits 0.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::time::Duration;

use attnforge_benches::quick_criterion;
use attnforge_codegen::catalog::catalog;
use attnforge_codegen::prelude::{default_tile, emit, KernelSpec};
use attnforge_runtime::{compile, Arch, CompileOptions, Compiler, KernelCache};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

/// On-CPU time of the calling thread, if the kernel reports it.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// User + system CPU time of the whole process (clock ticks of 10 ms).
fn process_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn nvrtc(c: &mut Criterion) {
    let compiler = match Compiler::global() {
        Ok(cm) => cm,
        Err(e) => {
            println!("nvrtc bench skipped: {e}");
            return;
        }
    };
    let (maj, min) = compiler.version();
    println!("nvrtc bench: NVRTC {maj}.{min}");
    let specs: Vec<KernelSpec> = catalog();
    let mut g = c.benchmark_group("nvrtc");
    g.sampling_mode(SamplingMode::Flat);
    for arch in Arch::ALL {
        for spec in &specs {
            let tile = default_tile(spec, arch).expect("default tile");
            let k = emit(spec, &tile, arch).expect("emit");
            // One untimed compile: fails loudly on a compile error.
            let (t0, p0) = (thread_cpu(), process_cpu());
            let first = compile(&k.source, &k.name, arch).expect("NVRTC compile");
            let (t1, p1) = (thread_cpu(), process_cpu());
            let ms = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.0} ms", (b - a).as_secs_f64() * 1e3),
                _ => "n/a".to_owned(),
            };
            println!(
                "nvrtc bench: {} {} tile {} first compile: wall {:.0} ms, thread cpu {}, process cpu {}",
                arch.sm_name(),
                k.name,
                tile.suffix(),
                first.compile_time.as_secs_f64() * 1e3,
                ms(t0, t1),
                ms(p0, p1),
            );
            g.bench_function(BenchmarkId::new(arch.sm_name(), &k.name), |b| {
                b.iter(|| compile(&k.source, &k.name, arch).expect("NVRTC compile"))
            });
        }
    }
    g.finish();
    nvrtc_cached(c, compiler, &specs);
    if thread_cpu().is_none() {
        println!("nvrtc bench: no /proc/thread-self/schedstat; the nvrtc_cpu group is skipped");
        return;
    }
    let mut g = c.benchmark_group("nvrtc_cpu");
    g.sampling_mode(SamplingMode::Flat);
    for arch in Arch::ALL {
        for spec in &specs {
            let tile = default_tile(spec, arch).expect("default tile");
            let k = emit(spec, &tile, arch).expect("emit");
            g.bench_function(BenchmarkId::new(arch.sm_name(), &k.name), |b| {
                b.iter_custom(|iters| {
                    let start = thread_cpu().unwrap_or_default();
                    for _ in 0..iters {
                        compile(&k.source, &k.name, arch).expect("NVRTC compile");
                    }
                    thread_cpu().unwrap_or_default().saturating_sub(start)
                })
            });
        }
    }
    g.finish();
}

/// The `nvrtc_cached` group: cache hits only (the cache is filled before timing).
fn nvrtc_cached(c: &mut Criterion, compiler: &Compiler, specs: &[KernelSpec]) {
    let dir = std::env::temp_dir().join(format!("attnforge-bench-kcache-{}", std::process::id()));
    let cache = KernelCache::at(&dir);
    let mut g = c.benchmark_group("nvrtc_cached");
    for arch in Arch::ALL {
        let opts = CompileOptions::new(arch);
        for spec in specs {
            let tile = default_tile(spec, arch).expect("default tile");
            let k = emit(spec, &tile, arch).expect("emit");
            let miss = compiler
                .compile_cached(&cache, &k.source, &k.name, &opts)
                .expect("NVRTC compile");
            let hit = compiler
                .compile_cached(&cache, &k.source, &k.name, &opts)
                .expect("cache hit");
            assert!(
                hit.from_cache,
                "nvrtc_cached bench: no hit for {} in {} (folder not writable?)",
                k.name,
                dir.display()
            );
            println!(
                "nvrtc_cached bench: {} {} miss: compile {:.0} ms; first hit: lookup {:.3} ms \
                 ({} B PTX, {} B CUBIN)",
                arch.sm_name(),
                k.name,
                miss.compile_time.as_secs_f64() * 1e3,
                hit.cache_lookup.as_secs_f64() * 1e3,
                hit.ptx.len(),
                hit.cubin.as_ref().map_or(0, Vec::len),
            );
            g.bench_function(BenchmarkId::new(arch.sm_name(), &k.name), |b| {
                b.iter(|| {
                    let r = compiler
                        .compile_cached(&cache, &k.source, &k.name, &opts)
                        .expect("cache hit");
                    assert!(r.from_cache);
                    r
                })
            });
        }
    }
    g.finish();
    let _ = cache.clear();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = nvrtc
}
criterion_main!(benches);
