//! The whole default search space through the real compiler: every catalog variant (mask,
//! score, GQA) x dtype (f16, bf16, f32) x head dim (64, 128, 256) x every config of
//! `default_search_space` on sm_80 and sm_90, compiled by NVRTC + ptxas. Asserts zero spill
//! bytes, zero stack frame, no compiler warnings, and prints the compile-latency
//! distribution.
//!
//! The whole space is thousands of compiles (about 45 minutes of this 2-core machine's time
//! when measured next to other work), so by default the test compiles a fixed sample that
//! still reaches every tile config: for each (dtype, head dim, arch, tile) the variant closest
//! to spilling by the register estimate (ties: the longest kernel text, i.e. the most mask and
//! score work). `ATTNFORGE_HEAVY=1` compiles all of it (run before a release; the figures are
//! in docs/static-evidence.md). There is no skip path: NVRTC is installed by `cargo xtask setup`.
//!
//! `ATTNFORGE_HEAVY=1 cargo test --release -p attnforge-codegen --test nvrtc_space -- --nocapture`

use std::time::{Duration, Instant};

use attnforge_codegen::prelude::*;
use attnforge_runtime::{build_many, CompileOptions, KernelSource};

/// Catalog variants re-instantiated at every dtype and head dim, deduplicated by canonical
/// name (the catalog already fixes some of these combinations).
fn variants() -> Vec<KernelSpec> {
    attnforge_codegen::catalog::instantiate(
        &[DType::F16, DType::Bf16, DType::F32],
        &[HeadDim::D64, HeadDim::D128, HeadDim::D256],
    )
}

/// Space of every variant on both archs; a combination without any valid config must also
/// have no default tile (the spec is then rejected at validation, never silently dropped).
fn jobs() -> (Vec<(KernelSpec, TileConfig, Arch)>, Vec<String>) {
    let mut jobs = Vec::new();
    let mut unsupported = Vec::new();
    for spec in variants() {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let space = default_search_space(&spec, arch);
            if space.is_empty() {
                assert!(
                    default_tile(&spec, arch).is_none(),
                    "{} on {}: empty space but a default tile",
                    spec.canonical_name(),
                    arch.sm_name()
                );
                unsupported.push(format!("{} {}", spec.canonical_name(), arch.sm_name()));
            }
            for t in space {
                jobs.push((spec.clone(), t, arch));
            }
        }
    }
    (jobs, unsupported)
}

#[test]
fn variants_cover_the_catalog_at_every_dtype_and_head_dim() {
    let v = variants();
    // every catalog entry appears as itself
    for s in catalog() {
        assert!(v.iter().any(|x| x.canonical_name() == s.canonical_name()));
    }
    // and every (dtype, head dim) pair appears for every catalog entry
    let families = v.len() / 9;
    assert_eq!(v.len(), families * 9, "variants x 3 dtypes x 3 head dims");
    assert!(families >= 18, "{families} distinct catalog variants");
}

/// One compile: the variant, its tile and the architecture.
type Job = (KernelSpec, TileConfig, Arch);

/// Whether the whole space is compiled (`ATTNFORGE_HEAVY=1`) or the per-tile sample.
fn heavy() -> bool {
    std::env::var("ATTNFORGE_HEAVY").is_ok_and(|v| v == "1")
}

/// Per (dtype, head dim, arch, tile), the job whose variant is closest to spilling: the
/// highest register estimate, then the longest emitted source, then the first in catalog order.
fn sample(jobs: Vec<Job>) -> Vec<Job> {
    use std::collections::BTreeMap;
    let mut best: BTreeMap<String, (usize, usize, Job)> = BTreeMap::new();
    for (s, t, a) in jobs {
        let key = format!(
            "{:?} {} {} {}",
            s.dtype,
            s.head_dim.get(),
            a.sm_name(),
            t.suffix()
        );
        let len = emit_with(&s, &t, a, SymbolStyle::WithTile)
            .map(|k| k.source.len())
            .unwrap_or(usize::MAX);
        let score = (t.estimated_registers(&s), len);
        match best.get(&key) {
            Some((r, l, _)) if (*r, *l) >= score => {}
            _ => {
                best.insert(key, (score.0, score.1, (s, t, a)));
            }
        }
    }
    best.into_values().map(|(_, _, j)| j).collect()
}

#[test]
fn the_sample_reaches_every_tile_config_and_every_variant_kind() {
    let (jobs, _) = jobs();
    let tiles = |js: &[Job]| {
        js.iter()
            .map(|(s, t, a)| {
                format!(
                    "{:?} {} {} {}",
                    s.dtype,
                    s.head_dim.get(),
                    a.sm_name(),
                    t.suffix()
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let all = tiles(&jobs);
    let picked = sample(jobs);
    assert_eq!(
        tiles(&picked),
        all,
        "every (dtype, head dim, arch, tile) is compiled once"
    );
    assert_eq!(picked.len(), all.len());
    // the estimate's heaviest variants are what the sample compiles: LM-Infinite (two
    // score branches) and a user score function must both be among them
    assert!(picked.iter().any(|(s, _, _)| s.mask.lm_infinite_scoring()));
    assert!(picked
        .iter()
        .any(|(s, _, _)| matches!(s.score, ScoreMod::User(_))));
}

#[test]
fn every_default_space_config_compiles_without_spills_or_stack() {
    let (jobs, unsupported) = jobs();
    let total = jobs.len();
    let jobs = if heavy() { jobs } else { sample(jobs) };
    println!(
        "compiling {} of the space's {total} kernels ({})",
        jobs.len(),
        if heavy() {
            "ATTNFORGE_HEAVY=1: all"
        } else {
            "per-tile sample; ATTNFORGE_HEAVY=1 for all"
        }
    );
    let wall = Instant::now();
    let mut bad = Vec::new();
    let mut times: Vec<Duration> = Vec::with_capacity(jobs.len());
    let mut slowest = (Duration::ZERO, String::new());
    // in chunks: every result holds PTX and a CUBIN
    for chunk in jobs.chunks(64) {
        let kernels: Vec<EmittedKernel> = chunk
            .iter()
            .map(|(s, t, a)| {
                emit_with(s, t, *a, SymbolStyle::WithTile).unwrap_or_else(|e| {
                    panic!(
                        "{} {} {}: {e:?}",
                        s.canonical_name(),
                        a.sm_name(),
                        t.suffix()
                    )
                })
            })
            .collect();
        let sources: Vec<KernelSource<'_>> = kernels
            .iter()
            .zip(chunk)
            .map(|(k, (_, _, a))| KernelSource {
                source: &k.source,
                name: &k.name,
                options: CompileOptions::new(*a),
            })
            .collect();
        let results = build_many(&sources).unwrap_or_else(|e| panic!("NVRTC unavailable: {e}"));
        for ((k, (_, _, arch)), r) in kernels.iter().zip(chunk).zip(results) {
            let id = format!("{} {}", k.name, arch.sm_name());
            let b = match r {
                Ok(b) => b,
                Err(e) => {
                    bad.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let u = &b.resources;
            if u.stack_frame_bytes != 0 || u.spill_store_bytes != 0 || u.spill_load_bytes != 0 {
                bad.push(format!(
                    "{id}: {} registers, stack {} B, spills {}/{} B",
                    u.registers, u.stack_frame_bytes, u.spill_store_bytes, u.spill_load_bytes
                ));
            }
            if b.compiled.log.contains("warning") {
                bad.push(format!("{id}: warnings:\n{}", b.compiled.log));
            }
            let t = b.compiled.compile_time;
            if t > slowest.0 {
                slowest = (t, id);
            }
            times.push(t);
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if !times.is_empty() {
        println!(
            "{} kernels ({} variants x dtypes x head dims, 2 archs) in {:.0} s: compile median {:.0} ms, p90 {:.0} ms, max {:.0} ms ({}); {} of them under 300 ms",
            times.len(),
            variants().len(),
            wall.elapsed().as_secs_f64(),
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10]),
            ms(slowest.0),
            slowest.1,
            times.iter().filter(|t| t.as_millis() < 300).count()
        );
    }
    if !unsupported.is_empty() {
        println!(
            "no valid config (rejected at validation): {}",
            unsupported.join(", ")
        );
    }
    assert!(
        bad.is_empty(),
        "{} of {} kernels failed:\n{}",
        bad.len(),
        jobs.len(),
        bad.join("\n")
    );
}
