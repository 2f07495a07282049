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
