//! Tuning-cache lookup time (`attnforge_autotune::cache`). The cache is synthetic but shaped
//! like a real one: every catalog kernel x {sm_80, sm_90} x 2 shape buckets (84 entries),
//! each holding its full default search space with resources, occupancy, predictions and a
//! winner, as `attnforge tune` stores it. It is written once with `Cache::store` to a
//! temporary folder (removed at the end); the benches time:
//!
//! - `tune_cache/load`: read and parse the whole file (`Cache::load`);
//! - `tune_cache/lookup_hit`: one key, checksum verified and the tuning parsed (`Cache::lookup`);
//! - `tune_cache/lookup_miss`: a key that is absent;
//! - `tune_cache/entries`: every valid entry (`Cache::entries`, what `attnforge report` reads).

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use attnforge_autotune::cache::{key_of, Cache, Lookup};
use attnforge_autotune::model::Prediction;
use attnforge_autotune::occupancy::{occupancy, ArchLimits};
use attnforge_autotune::tuner::{Basis, CandidateResult, KernelTuning, Resources, Status};
use attnforge_autotune::Arch;
use attnforge_benches::quick_criterion;
use attnforge_codegen::prelude::{catalog, default_search_space, KernelSpec};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn tuning(spec: &KernelSpec, arch: Arch, bucket: &str) -> KernelTuning {
    let space = default_search_space(spec, arch);
    let limits = ArchLimits::of(arch);
    let candidates: Vec<CandidateResult> = space
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let threads = t.threads() as u32;
            let registers = t.estimated_registers(spec).min(255) as u32;
            let smem = t.smem_bytes(spec) as u64;
            let occ = occupancy(&limits, threads as usize, registers as usize, smem as usize);
            CandidateResult {
                name: format!("{}__{}", spec.canonical_name(), t.suffix()),
                tile: *t,
                status: match i {
                    0 => Status::Winner,
                    1..=3 => Status::Passed,
                    _ => Status::NotGated,
                },
                resources: Some(Resources {
                    registers,
                    smem_bytes: smem,
                    stack_frame_bytes: 0,
                    spill_bytes: 0,
                    threads,
                    main_loop: None,
                }),
                occupancy: Some(occ),
                predicted: Some(Prediction {
                    time_us: 100.0 + i as f64,
                    compute_us: 60.0,
                    smem_us: 20.0,
                    dram_us: 17.0,
                    waves: 3,
                    latency_hiding: 0.75,
                    splits: None,
                }),
                gate: None,
                measured: None,
            }
        })
        .collect();
    KernelTuning {
        variant: spec.canonical_name(),
        arch,
        device: "sim+model".to_owned(),
        shape: format!("bucket {bucket}"),
        bucket: bucket.to_owned(),
        codegen_hash: "0".repeat(64),
        basis: Basis::Predicted,
        winner: space.first().copied(),
        candidates,
        tune_seconds: 1.5,
        stage_seconds: vec![("build".into(), 1.0), ("gate".into(), 0.5)],
    }
}

fn tune_cache(c: &mut Criterion) {
    let dir =
        std::env::temp_dir().join(format!("attnforge-bench-tune-cache-{}", std::process::id()));
    let cache = Cache::new(dir.join("cache.json"));
    let mut all = Vec::new();
    for spec in catalog() {
        for arch in [Arch::Sm80, Arch::Sm90] {
            for bucket in ["bh8_sq1024_sk1024", "bh32_sq4096_sk4096"] {
                all.push(tuning(&spec, arch, bucket));
            }
        }
    }
    cache.store(&all).expect("store the synthetic cache");
    let bytes = std::fs::metadata(cache.path())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "tune_cache bench: {} entries, {} KiB",
        all.len(),
        bytes / 1024
    );
    let file = cache.load().file;
    let hit = key_of(&all[all.len() / 2]);
    let hash = all[0].codegen_hash.clone();
    assert!(matches!(Cache::lookup(&file, &hit, &hash), Lookup::Hit(_)));

    let mut g = c.benchmark_group("tune_cache");
    g.bench_function("load", |b| b.iter(|| cache.load()));
    g.bench_function("lookup_hit", |b| {
        b.iter(|| Cache::lookup(&file, black_box(&hit), &hash))
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            Cache::lookup(
                &file,
                black_box("absent|sm_80|sim+model|bh1_sq1_sk1"),
                &hash,
            )
        })
    });
    g.bench_function("entries", |b| b.iter(|| Cache::entries(&file)));
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = tune_cache
}
criterion_main!(benches);
