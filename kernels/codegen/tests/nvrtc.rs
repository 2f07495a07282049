//! The emitted CUDA compiles with NVRTC and ptxas reports no stack frame and no spills,
//! for every catalog kernel with its default tile on sm_80 and sm_90, and for the golden
//! tiles. Uses `attnforge-kernels` (dev-dependency) and the toolchain of
//! `cargo xtask setup` (`.toolchain/cuda` or `ATTNFORGE_CUDA_HOME`).
//!
//! The whole default search space (about 1000 kernels) is checked by
//! `ATTNFORGE_FULL_SPACE=1 cargo test -p attnforge-codegen --test nvrtc` (slow).

use attnforge_codegen::prelude::*;
use attnforge_kernels::{build_many, Arch as KArch, CompileOptions, KernelSource};

fn karch(a: Arch) -> KArch {
    match a {
        Arch::Sm80 => KArch::Sm80,
        Arch::Sm90 => KArch::Sm90,
    }
}

fn check_all(kernels: Vec<(EmittedKernel, Arch)>) {
    let sources: Vec<KernelSource<'_>> = kernels
        .iter()
        .map(|(k, a)| KernelSource {
            source: &k.source,
            name: &k.name,
            options: CompileOptions::new(karch(*a)),
        })
        .collect();
    let results = build_many(&sources).unwrap_or_else(|e| panic!("NVRTC unavailable: {e}"));
    let mut bad = Vec::new();
    for ((k, a), r) in kernels.iter().zip(results) {
        match r {
            Err(e) => bad.push(format!("{} {}: {e}", k.name, a.sm_name())),
            Ok(b) => {
                let u = &b.resources;
                if u.stack_frame_bytes != 0 || u.spill_store_bytes != 0 || u.spill_load_bytes != 0 {
                    bad.push(format!(
                        "{} {}: {} registers, stack {} B, spills {}/{} B (estimate {})",
                        k.name,
                        a.sm_name(),
                        u.registers,
                        u.stack_frame_bytes,
                        u.spill_store_bytes,
                        u.spill_load_bytes,
                        k.metadata.tile.estimated_registers(&k.metadata.spec)
                    ));
                }
                if b.compiled.log.contains("warning") {
                    bad.push(format!(
                        "{} {}: NVRTC warnings:\n{}",
                        k.name,
                        a.sm_name(),
                        b.compiled.log
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} kernels failed:\n{}",
        bad.len(),
        kernels.len(),
        bad.join("\n")
    );
}

#[test]
fn catalog_default_tiles_compile_without_spills() {
    let full = std::env::var_os("ATTNFORGE_FULL_SPACE").is_some();
    let mut ks = Vec::new();
    for spec in catalog() {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let tiles = if full {
                default_search_space(&spec, arch)
            } else {
                default_tile(&spec, arch).into_iter().collect()
            };
            for t in tiles {
                ks.push((
                    emit_with(&spec, &t, arch, SymbolStyle::WithTile).unwrap(),
                    arch,
                ));
            }
        }
    }
    check_all(ks);
}

#[test]
fn largest_register_configs_compile_without_spills() {
    // per spec and arch, the valid config with the highest register estimate: the one
    // closest to spilling
    let mut ks = Vec::new();
    for spec in catalog() {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let t = default_search_space(&spec, arch)
                .into_iter()
                .max_by_key(|t| t.estimated_registers(&spec))
                .unwrap();
            ks.push((
                emit_with(&spec, &t, arch, SymbolStyle::WithTile).unwrap(),
                arch,
            ));
        }
    }
    check_all(ks);
}

// ---- static evidence of the tensor-core path (docs/static-evidence.md) ----

/// One row of the evidence table.
struct Row {
    name: String,
    arch: Arch,
    d: usize,
    dtype: DType,
    tile: TileConfig,
    registers: u32,
    smem: usize,
    stack: u64,
    spills: u64,
    hmma: usize,
    hmma_min: usize,
    ms: f64,
}

/// HMMA instructions one key tile needs: Q K^T is (D/16) x (BN/8) m16n8k16 products, P V
/// is (BN/16) x (D/8), i.e. D * BN / 128 each; LM-Infinite has two Q K^T branches.
fn hmma_per_tile(spec: &KernelSpec, t: &TileConfig) -> usize {
    let one = spec.head_dim.get() * t.block_n / 128;
    if matches!(spec.mask, Mask::LmInfinite) {
        3 * one
    } else {
        2 * one
    }
}

/// Catalog variants (mask, score, gqa, block size) re-instantiated in f16 and bf16 at d = 64
/// and d = 128, deduplicated.
fn evidence_specs() -> Vec<KernelSpec> {
    let mut out: Vec<KernelSpec> = Vec::new();
    for s in catalog() {
        for dtype in [DType::F16, DType::Bf16] {
            for d in [HeadDim::D64, HeadDim::D128] {
                let mut x = s.clone();
                x.dtype = dtype;
                x.head_dim = d;
                if !out.iter().any(|y| y.canonical_name() == x.canonical_name()) {
                    out.push(x);
                }
            }
        }
    }
    out
}

#[test]
fn evidence() {
    let mut jobs: Vec<(KernelSpec, TileConfig, Arch)> = Vec::new();
    for spec in evidence_specs() {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let t = default_tile(&spec, arch).expect("a default tile");
            jobs.push((spec.clone(), t, arch));
        }
    }
    // every config of the tensor-core default space for one variant
    let causal = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
    for arch in [Arch::Sm80, Arch::Sm90] {
        for t in default_search_space(&causal, arch) {
            if !jobs
                .iter()
                .any(|(s, u, a)| *s == causal && *u == t && *a == arch)
            {
                jobs.push((causal.clone(), t, arch));
            }
        }
    }
    let kernels: Vec<EmittedKernel> = jobs
        .iter()
        .map(|(s, t, a)| emit_with(s, t, *a, SymbolStyle::WithTile).unwrap())
        .collect();
    let sources: Vec<KernelSource<'_>> = kernels
        .iter()
        .zip(&jobs)
        .map(|(k, (_, _, a))| KernelSource {
            source: &k.source,
            name: &k.name,
            options: CompileOptions::new(karch(*a)),
        })
        .collect();
    let results = build_many(&sources).unwrap_or_else(|e| panic!("NVRTC unavailable: {e}"));
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for ((k, (spec, t, arch)), r) in kernels.iter().zip(&jobs).zip(results) {
        let b = match r {
            Ok(b) => b,
            Err(e) => {
                bad.push(format!("{} {}: {e}", k.name, arch.sm_name()));
                continue;
            }
        };
        let text = attnforge_kernels::sass(b.compiled.cubin.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("SASS of {}: {e}", k.name));
        let u = &b.resources;
        let row = Row {
            name: spec.canonical_name(),
            arch: *arch,
            d: spec.head_dim.get(),
            dtype: spec.dtype,
            tile: *t,
            registers: u.registers,
            smem: t.smem_bytes(spec) + u.shared_bytes as usize,
            stack: u.stack_frame_bytes,
            spills: u.spill_store_bytes + u.spill_load_bytes,
            hmma: attnforge_kernels::sass_opcode_count(&text, "HMMA"),
            hmma_min: hmma_per_tile(spec, t),
            ms: b.compiled.compile_time.as_secs_f64() * 1e3,
        };
        let id = format!("{} {} {}", k.name, arch.sm_name(), t.suffix());
        if row.stack != 0 || row.spills != 0 {
            bad.push(format!(
                "{id}: stack {} B, spills {} B ({} registers)",
                row.stack, row.spills, row.registers
            ));
        }
        if row.hmma < row.hmma_min {
            bad.push(format!(
                "{id}: {} HMMA in SASS, a key tile needs {}",
                row.hmma, row.hmma_min
            ));
        }
        if row.smem > arch.max_dynamic_smem() {
            bad.push(format!(
                "{id}: {} B shared memory over the {} limit",
                row.smem,
                arch.sm_name()
            ));
        }
        if b.compiled.log.contains("warning") {
            bad.push(format!("{id}: NVRTC warnings:\n{}", b.compiled.log));
        }
        rows.push(row);
    }
    if std::env::var_os("ATTNFORGE_WRITE_EVIDENCE").is_some() {
        write_evidence(&rows);
    }
    assert!(
        bad.is_empty(),
        "{} of {} kernels failed:\n{}",
        bad.len(),
        jobs.len(),
        bad.join("\n")
    );
}

fn write_evidence(rows: &[Row]) {
    use std::fmt::Write as _;
    let mut s = String::new();
    let regs = rows.iter().map(|r| r.registers);
    let ms: Vec<f64> = rows.iter().map(|r| r.ms).collect();
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let _ = writeln!(
        s,
        "# Static evidence: the tensor-core path through the real compilers\n"
    );
    let _ = writeln!(s, "Generated by `ATTNFORGE_WRITE_EVIDENCE=1 cargo test -p attnforge-codegen --test nvrtc evidence`");
    let _ = writeln!(
        s,
        "(the same test asserts every property in CI without writing this file). NVRTC 12.9 +"
    );
    let _ = writeln!(s, "ptxas (`--ptxas-options=-v`), SASS by `cuobjdump -sass` from the wheels of `cargo xtask setup`.");
    let _ = writeln!(
        s,
        "No GPU was used: these are compile-time facts, not performance.\n"
    );
    let _ = writeln!(
        s,
        "Rows: every catalog variant (mask, score, GQA) in f16 and bf16 at d = 64 and 128 with its"
    );
    let _ = writeln!(
        s,
        "default tile on sm_80 and sm_90, plus every config of the tensor-core default space of"
    );
    let _ = writeln!(s, "`flash_fwd_causal_d128_bf16`. Asserted per row: stack frame 0, spills 0, no NVRTC warning,");
    let _ = writeln!(
        s,
        "shared memory (dynamic + static) within the architecture's opt-in limit, and at least"
    );
    let _ = writeln!(
        s,
        "`HMMA min` HMMA instructions in the SASS, the m16n8k16 products of one key tile"
    );
    let _ = writeln!(
        s,
        "(D x BN / 128 for Q K^T and again for P V; LM-Infinite has two Q K^T branches)."
    );
    let _ = writeln!(
        s,
        "Compile ms is the wall time of one NVRTC call (PTX + CUBIN) measured while two"
    );
    let _ = writeln!(
        s,
        "kernels compile in parallel on the 2-core dev machine (issue 3 target: < 300 ms each).\n"
    );
    let _ = writeln!(s, "Summary over {} kernels: registers {}..={}, HMMA {}..={}, compile ms median {:.0}, max {:.0}, {} of {} under 300 ms.\n",
        rows.len(),
        regs.clone().min().unwrap_or(0),
        regs.max().unwrap_or(0),
        rows.iter().map(|r| r.hmma).min().unwrap_or(0),
        rows.iter().map(|r| r.hmma).max().unwrap_or(0),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
        ms.iter().filter(|&&m| m < 300.0).count(),
        ms.len());
    let _ = writeln!(s, "| variant | arch | d | dtype | tile | registers | smem B | stack B | spill B | HMMA | HMMA min | compile ms |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            r.name,
            r.arch.sm_name(),
            r.d,
            r.dtype.cuda().trim_start_matches("__"),
            r.tile.suffix(),
            r.registers,
            r.smem,
            r.stack,
            r.spills,
            r.hmma,
            r.hmma_min,
            r.ms
        );
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/static-evidence.md");
    std::fs::write(&path, s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
