//! Golden CUDA text for three canonical kernels, plus determinism of emission.
//!
//! Regenerate the golden files after an intended change with
//! `ATTNFORGE_BLESS=1 cargo test -p attnforge-codegen --test golden`.
//! Set `ATTNFORGE_DUMP_DIR=<dir>` to also write every catalog kernel (default tile, sm_80)
//! there, with its launch metadata JSON (used to compile them with NVRTC by hand).

use std::path::PathBuf;

use attnforge_codegen::prelude::*;

/// The three golden kernels and their tile configs.
fn golden_cases() -> Vec<(&'static str, TileConfig)> {
    vec![
        ("flash_fwd_causal_d128_bf16", TileConfig::new(64, 64, 4, 1)),
        (
            "flash_fwd_local_softcap_d64_f16",
            TileConfig::new(64, 64, 4, 1),
        ),
        (
            "flash_fwd_lm_infinite_d128_bf16",
            TileConfig::new(32, 64, 4, 1),
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

#[test]
fn golden_kernels_match() {
    let bless = std::env::var_os("ATTNFORGE_BLESS").is_some();
    let mut mismatches = Vec::new();
    for (name, tile) in golden_cases() {
        let spec = attnforge_codegen::catalog::find(name)
            .unwrap_or_else(|| panic!("{name} not in the catalog"));
        let k = emit(&spec, &tile, Arch::Sm80).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(k.name, name);
        let path = golden_dir().join(format!("{name}.cu"));
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &k.source).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run ATTNFORGE_BLESS=1 cargo test -p attnforge-codegen --test golden",
                path.display()
            )
        });
        if want != k.source {
            let line = want
                .lines()
                .zip(k.source.lines())
                .position(|(a, b)| a != b)
                .map_or(0, |i| i + 1);
            mismatches.push(format!(
                "{name}: differs from {} at line {line}",
                path.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{mismatches:#?}\nif the change is intended: ATTNFORGE_BLESS=1 cargo test -p attnforge-codegen --test golden"
    );
}

#[test]
fn emission_is_deterministic_and_self_contained() {
    for spec in catalog() {
        let tile = default_tile(&spec, Arch::Sm80).expect("a valid default tile");
        let a = emit(&spec, &tile, Arch::Sm80).unwrap();
        let b = emit(&spec.clone(), &tile, Arch::Sm80).unwrap();
        assert_eq!(a.source, b.source, "{}", a.name);
        assert!(a.source.starts_with(&format!(
            "// attnforge generated kernel: {}\n// spec: ",
            a.name
        )));
        assert!(a.source.contains(&format!(
            "extern \"C\" __global__ void __launch_bounds__({}, 1) {}(",
            tile.threads(),
            a.name
        )));
        let mainloop = attnforge_codegen::tile::Mainloop::select(&spec, &tile);
        for (f, text) in attnforge_codegen::emit::prelude_files(mainloop) {
            assert!(
                a.source
                    .contains(&format!("// ---- begin {f} ----\n{text}")),
                "{}: prelude {f} not pasted",
                a.name
            );
            assert!(a.source.contains(&format!("// ---- end {f} ----")));
        }
        assert!(
            !a.source.contains("#include \""),
            "{}: must not include local files",
            a.name
        );
        assert!(
            !a.source.contains("__shared__ float"),
            "{}: shared memory only via AF_ macros",
            a.name
        );
        // every argument of the list appears in the signature, in order
        let sig_start = a.source.find("extern \"C\"").unwrap();
        let mut at = sig_start;
        for arg in kernel_args(&spec) {
            let needle = format!(" {}", arg.name);
            let pos = a.source[at..]
                .find(&arg.kind.c_type())
                .map(|p| p + at)
                .unwrap();
            let npos = a.source[pos..].find(&needle).unwrap() + pos;
            at = npos + needle.len();
        }
    }
}

#[test]
fn dump_catalog_when_asked() {
    let Some(dir) = std::env::var_os("ATTNFORGE_DUMP_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for spec in catalog() {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let space = default_search_space(&spec, arch);
            let all = std::env::var_os("ATTNFORGE_DUMP_ALL").is_some();
            let tiles: Vec<TileConfig> = if all {
                space
            } else {
                default_tile(&spec, arch).into_iter().collect()
            };
            for tile in tiles {
                let k = emit_with(&spec, &tile, arch, SymbolStyle::WithTile).unwrap();
                let stem = format!("{}__{}", k.name, arch.sm_name());
                std::fs::write(dir.join(format!("{stem}.cu")), &k.source).unwrap();
                std::fs::write(
                    dir.join(format!("{stem}.json")),
                    serde_json::to_string_pretty(&k.metadata).unwrap(),
                )
                .unwrap();
            }
        }
    }
}
