//! The main-loop ratchet (issue 17, item 4): the default-tile dense kernels
//! `flash_fwd_{full,causal}_d{64,128}_bf16` are compiled with NVRTC for sm_80 and sm_90 and
//! their main loops measured by the analyzer ([`main_loops`]); the test fails when a main
//! loop's instructions per MMA or ldmatrix bytes per MMA is more than 2% worse than the
//! figures committed in `docs/main_loop_figures.csv` (the attnforge rows of docs/anchors.md
//! come from the same analysis). When a change improves a figure, commit the new one:
//! `ATTNFORGE_RATCHET_WRITE=1 cargo test -p attnforge-runtime --test main_loop_ratchet`
//! rewrites the file from the measurement (review the diff). Fails (never skips) without
//! the toolchain of `cargo xtask setup`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::{build_kernel, main_loops, sass, MainLoopHints};

/// How much worse than the committed figure a measurement may be.
const TOLERANCE: f64 = 1.02;

fn figures_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/main_loop_figures.csv")
}

/// `(kernel, arch) -> (instructions per MMA, ldmatrix bytes per MMA)` of the committed file.
fn committed() -> BTreeMap<(String, String), (f64, f64)> {
    let path = figures_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("kernel,") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let num = |i: usize| -> f64 {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{}:{}: bad line `{line}`", path.display(), n + 1))
        };
        out.insert((f[0].to_owned(), f[1].to_owned()), (num(2), num(3)));
    }
    out
}

/// Measures the default-tile kernels: `(kernel, arch) -> (instr/MMA, ldmatrix bytes/MMA)`.
fn measure() -> BTreeMap<(String, String), (f64, f64)> {
    let mut out = BTreeMap::new();
    for (head_dim, mask) in [
        (HeadDim::D64, Mask::Full),
        (HeadDim::D64, Mask::Causal),
        (HeadDim::D128, Mask::Full),
        (HeadDim::D128, Mask::Causal),
    ] {
        let spec = KernelSpec::new(DType::Bf16, head_dim, mask, ScoreMod::None);
        for arch in [Arch::Sm80, Arch::Sm90] {
            let tile = default_tile(&spec, arch).expect("a default tile");
            let k = emit_with(&spec, &tile, arch, SymbolStyle::WithTile).expect("emits");
            let b = build_kernel(&k.source, &k.name, arch)
                .unwrap_or_else(|e| panic!("compile (run `cargo xtask setup`): {e}"));
            let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
            let hints = MainLoopHints::for_kernel(&spec, &tile);
            let mma = hints.mma_per_iteration.expect("set by hints()");
            let reports = main_loops(&text, &hints).expect("analysable");
            let m = reports.first().expect("a main loop");
            // (causal kernels: the scan for the next visited tile is assumed to take 1 trip)
            assert_eq!(
                m.mma, mma,
                "{}: one key tile per main-loop iteration",
                k.name
            );
            assert_eq!(
                b.resources.spill_store_bytes + b.resources.spill_load_bytes,
                0
            );
            out.insert(
                (k.name.clone(), arch.sm_name().to_owned()),
                (m.instr_per_mma(), m.ldmatrix_bytes_per_mma()),
            );
        }
    }
    out
}

#[test]
fn main_loops_are_no_worse_than_committed() {
    let now = measure();
    if std::env::var_os("ATTNFORGE_RATCHET_WRITE").is_some() {
        let mut s = String::from(
            "# Main-loop figures of the default-tile dense kernels (per warp, per m16n8k16-equivalent\n\
             # MMA, one key tile), measured by runtime/tests/main_loop_ratchet.rs, which fails when a\n\
             # kernel gets more than 2% worse. Rewrite: ATTNFORGE_RATCHET_WRITE=1 cargo test -p\n\
             # attnforge-runtime --test main_loop_ratchet\n\
             kernel,arch,instr_per_mma,ldmatrix_bytes_per_mma\n",
        );
        for ((k, a), (i, l)) in &now {
            let _ = writeln!(s, "{k},{a},{i:.3},{l:.1}");
        }
        std::fs::write(figures_path(), s).expect("write the figures");
        return;
    }
    let old = committed();
    let mut worse = Vec::new();
    for (key, (instr, ldsm)) in &now {
        let Some((c_instr, c_ldsm)) = old.get(key) else {
            worse.push(format!("{key:?}: no committed figure"));
            continue;
        };
        println!(
            "{} {}: instr/MMA {instr:.3} (committed {c_instr:.3}), ldmatrix B/MMA {ldsm:.1} (committed {c_ldsm:.1})",
            key.0, key.1
        );
        if *instr > c_instr * TOLERANCE {
            worse.push(format!(
                "{} {}: {instr:.3} instructions per MMA, committed {c_instr:.3}",
                key.0, key.1
            ));
        }
        if *ldsm > c_ldsm * TOLERANCE {
            worse.push(format!(
                "{} {}: {ldsm:.1} ldmatrix bytes per MMA, committed {c_ldsm:.1}",
                key.0, key.1
            ));
        }
    }
    assert!(
        worse.is_empty(),
        "main loops more than 2% worse than docs/main_loop_figures.csv:\n{}",
        worse.join("\n")
    );
}

/// Main-loop instructions per MMA of `spec` at `tile` on `arch` (the interior-tile path).
fn instr_per_mma(spec: &KernelSpec, tile: &TileConfig, arch: Arch) -> f64 {
    let k = emit_with(spec, tile, arch, SymbolStyle::WithTile).expect("emits");
    let b = build_kernel(&k.source, &k.name, arch)
        .unwrap_or_else(|e| panic!("compile (run `cargo xtask setup`): {e}"));
    let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
    let reports = main_loops(&text, &MainLoopHints::for_kernel(spec, tile)).expect("analysable");
    reports.first().expect("a main loop").instr_per_mma()
}

/// Known exceptions to the 10% bound, each with the most it may cost (over dense) and why.
///
/// The two dilated masks at d = 64: their per-tile work beyond dense (the classifier of the
/// prefetch walk, with its modulus) is 38-41 instructions per key tile on sm_90 (ptxas 12.9),
/// 0.6 per MMA of the 64 of a d = 64 tile. Once the dense loop lost its address arithmetic
/// (5.95 instead of 7.23 instructions per MMA on sm_90) that fixed cost is 10-11% of it (it
/// was 6-8%). A dilated mask's tiles are mostly partial anyway (a key every `stride`
/// positions), so their full-tile path is rarely run.
const EXCEPTIONS: &[(&str, f64)] = &[
    ("flash_fwd_mask_dilated_d64_f16", 1.13),
    ("flash_fwd_dilated_causal_d64_f16", 1.13),
];

/// Issue 17, item 4: the mask of a catalog variant costs nothing on a full tile. Every
/// tensor-core catalog variant without a score modification, at its default tile, has a
/// main loop (the interior-tile path) within 10% of the dense kernel's instructions per MMA
/// at the same dtype, head dimension and tile, on sm_80 and sm_90 ([`EXCEPTIONS`] within
/// their own bound). Score modifications are not held to it: their per-element work
/// (softcap, ALiBi, a user function) is on every tile.
#[test]
fn catalog_masks_cost_nothing_on_full_tiles() {
    let mut over = Vec::new();
    for spec in attnforge_runtime::codegen::catalog::catalog() {
        if spec.dtype == DType::F32 || spec.score != ScoreMod::None || spec.mask == Mask::Full {
            continue;
        }
        let dense = KernelSpec::new(spec.dtype, spec.head_dim, Mask::Full, ScoreMod::None);
        for arch in [Arch::Sm80, Arch::Sm90] {
            let tile = default_tile(&spec, arch).expect("a default tile");
            let (v, f) = (
                instr_per_mma(&spec, &tile, arch),
                instr_per_mma(&dense, &tile, arch),
            );
            println!(
                "{} {} {}: {v:.3} instr/MMA, dense {f:.3} ({:+.1}%)",
                spec.canonical_name(),
                tile.suffix(),
                arch.sm_name(),
                100.0 * (v / f - 1.0)
            );
            let bound = EXCEPTIONS
                .iter()
                .find(|(n, _)| *n == spec.canonical_name())
                .map_or(1.10, |(_, b)| *b);
            if v > f * bound {
                over.push(format!(
                    "{} {} {}: {v:.3} vs dense {f:.3} (bound x{bound})",
                    spec.canonical_name(),
                    tile.suffix(),
                    arch.sm_name()
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "catalog variants whose full-tile main loop is over their bound above dense:\n{}",
        over.join("\n")
    );
}
