//! The Hopper warpgroup-MMA kernels (issue 22) through NVRTC + ptxas for `sm_90a`: every
//! tensor-core catalog variant that the wgmma mainloop runs (all but LM-Infinite) at the wgmma
//! tiles (in CI a sample of the pairs, `wgmma_pairs`) compiles without spills or stack frame,
//! its main loop issues `HGMMA.64x<BN>x16` for Q K^T and `HGMMA.64x<D>x16` for P V with no
//! `HMMA` left, ptxas does not serialize the wgmma (no accumulator touched inside a pipeline
//! stage), and the interior-tile main loop of
//! the dense kernels issues fewer instructions per m16n8k16-equivalent MMA than their
//! mma.sync counterparts at the default tile. Prints the figures (docs/hopper.md). Fails
//! (never skips) without the toolchain of `cargo xtask setup`.

use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::{
    build_with, main_loops, sass, CompileOptions, Compiler, InstrClass, KernelSource, MainLoopHints,
};

struct Built {
    name: String,
    sass: String,
    log: String,
    spills: u64,
    stack: u64,
    registers: u32,
}

fn build(spec: &KernelSpec, tile: &TileConfig) -> Built {
    let k = emit_with(spec, tile, Arch::Sm90, SymbolStyle::WithTile)
        .unwrap_or_else(|e| panic!("{tile:?} does not emit: {e:?}"));
    let compiler = Compiler::global().expect("NVRTC (run `cargo xtask setup`)");
    let b = build_with(
        compiler,
        &KernelSource {
            source: &k.source,
            name: &k.name,
            options: CompileOptions::for_tile(Arch::Sm90, tile),
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", k.name));
    let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
    if let Some(dir) = std::env::var_os("ANCHORS_DUMP_SASS") {
        // inspection aid (as in the anchors example): the SASS of each kernel
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("{}.sass", k.name)),
            &text,
        );
    }
    Built {
        sass: text,
        log: b.compiled.log.clone(),
        spills: b.resources.spill_store_bytes
            + b.resources.spill_load_bytes
            + b.resources.local_bytes,
        stack: b.resources.stack_frame_bytes,
        registers: b.resources.registers,
        name: k.name,
    }
}

/// `(block_m, block_n, stages, producer warpgroup)`: 3 stages or a producer warpgroup
/// software-pipeline the loop (Q K^T of one tile issued with P V of the previous one).
const TILES: [(usize, usize, usize, bool); 9] = [
    (128, 128, 2, false),
    (128, 64, 2, false),
    (64, 128, 2, false),
    (128, 128, 3, false),
    (128, 64, 3, false),
    (64, 128, 3, false),
    (128, 128, 2, true),
    (128, 64, 3, true),
    (64, 128, 3, true),
];

fn tile_of((bm, bn, st, ws): (usize, usize, usize, bool)) -> TileConfig {
    if ws {
        TileConfig::wgmma_specialized(bm, bn, st)
    } else {
        TileConfig::wgmma(bm, bn, st)
    }
}

/// Every (catalog variant, wgmma tile) pair the wgmma main loop runs. In CI a sample that
/// still reaches every variant and every tile: each variant at its tile closest to spilling
/// (the highest register estimate without a producer warpgroup) and each tile at its heaviest variant (ties: the longest
/// kernel text); `ATTNFORGE_HEAVY=1` builds every pair (about 150 kernels, 3 minutes here).
fn wgmma_pairs() -> Vec<(KernelSpec, TileConfig)> {
    let mut all = Vec::new();
    for spec in attnforge_runtime::codegen::catalog::catalog() {
        if spec.dtype == DType::F32
            || spec.mask.lm_infinite_scoring()
            || spec.head_dim == HeadDim::D256
        {
            continue;
        }
        for t in TILES {
            let tile = tile_of(t);
            if tile.valid(&spec, Arch::Sm90).is_ok() {
                all.push((spec.clone(), tile));
            }
        }
    }
    if std::env::var("ATTNFORGE_HEAVY").is_ok_and(|v| v == "1") {
        return all;
    }
    let weight = |(s, t): &(KernelSpec, TileConfig)| {
        let len = emit_with(s, t, Arch::Sm90, SymbolStyle::WithTile).map_or(0, |k| k.source.len());
        (t.estimated_registers(s), len)
    };
    let mut picked: Vec<(KernelSpec, TileConfig)> = Vec::new();
    let mut add = |p: &(KernelSpec, TileConfig)| {
        if !picked
            .iter()
            .any(|(s, t)| s.canonical_name() == p.0.canonical_name() && t.suffix() == p.1.suffix())
        {
            picked.push(p.clone());
        }
    };
    let names: Vec<String> = all.iter().map(|(s, _)| s.canonical_name()).collect();
    for name in names.iter().collect::<std::collections::BTreeSet<_>>() {
        // a producer warpgroup's tiles cap the consumers' registers (setmaxnreg), so the
        // variant's heaviest tile is among the others: of those the highest estimate, then
        // the last in TILES order (3 stages)
        let best = all
            .iter()
            .filter(|(s, t)| &s.canonical_name() == name && !t.warp_specialized())
            .max_by_key(|p| weight(p));
        add(best.expect("a pair of this variant"));
    }
    for t in TILES {
        let suffix = tile_of(t).suffix();
        if let Some(best) = all
            .iter()
            .filter(|(_, x)| x.suffix() == suffix)
            .max_by_key(|p| weight(p))
        {
            add(best);
        }
    }
    picked
}

#[test]
fn every_wgmma_variant_compiles_for_sm_90a_with_hgmma_and_no_spills() {
    let mut bad = Vec::new();
    let mut n = 0;
    let pairs = wgmma_pairs();
    let variants: std::collections::BTreeSet<String> =
        pairs.iter().map(|(s, _)| s.canonical_name()).collect();
    let tiles: std::collections::BTreeSet<String> = pairs.iter().map(|(_, t)| t.suffix()).collect();
    assert!(
        variants.len() >= 15,
        "only {} wgmma variants",
        variants.len()
    );
    assert_eq!(tiles.len(), TILES.len(), "every wgmma tile is built");
    for (spec, tile) in pairs {
        {
            let bn = tile.block_n;
            let b = build(&spec, &tile);
            n += 1;
            let d = spec.head_dim.get();
            let mut why = Vec::new();
            if b.spills + b.stack != 0 {
                why.push(format!("spills {} B, stack {} B", b.spills, b.stack));
            }
            for shape in [
                format!("HGMMA.64x{bn}x16.F32"),
                format!("HGMMA.64x{d}x16.F32"),
            ] {
                if !b.sass.contains(&shape) {
                    why.push(format!("no {shape}"));
                }
            }
            if b.sass.contains("HMMA.") {
                why.push("mma.sync (HMMA) in a wgmma kernel".into());
            }
            if let Some(line) = b.log.lines().find(|l| l.contains("serialized")) {
                why.push(format!("ptxas serialized the wgmma: {line}"));
            }
            println!("{}: {} registers", b.name, b.registers);
            if !why.is_empty() {
                bad.push(format!("{}: {}", b.name, why.join("; ")));
            }
        }
    }
    let heavy = std::env::var("ATTNFORGE_HEAVY").is_ok_and(|v| v == "1");
    assert!(!heavy || n >= 150, "only {n} wgmma kernels built");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_best_dense_wgmma_main_loop_issues_fewer_instructions_per_mma_than_mma_sync() {
    for (d, mask) in [
        (HeadDim::D64, Mask::Full),
        (HeadDim::D64, Mask::Causal),
        (HeadDim::D128, Mask::Full),
        (HeadDim::D128, Mask::Causal),
    ] {
        let spec = KernelSpec::new(DType::Bf16, d, mask, ScoreMod::None);
        let sync_tile = default_tile(&spec, Arch::Sm90).expect("a default tile");
        let sync = {
            let b = build(&spec, &sync_tile);
            let r = main_loops(&b.sass, &MainLoopHints::for_kernel(&spec, &sync_tile))
                .expect("analysable");
            r.first().expect("a main loop").instr_per_mma()
        };
        let mut best = f64::INFINITY;
        for t in TILES {
            let tile = tile_of(t);
            let b = build(&spec, &tile);
            let h = MainLoopHints::for_kernel(&spec, &tile);
            let reports = main_loops(&b.sass, &h).expect("analysable");
            let m = reports.first().expect("a main loop");
            assert_eq!(
                m.mma,
                h.mma_per_iteration.unwrap(),
                "{}: one key tile per main-loop iteration",
                b.name
            );
            let classes: Vec<String> = [
                InstrClass::IntAddress,
                InstrClass::Fp,
                InstrClass::Mufu,
                InstrClass::CpAsync,
                InstrClass::Shuffle,
                InstrClass::BranchSync,
                InstrClass::Other,
            ]
            .iter()
            .map(|c| format!("{c:?} {:.2}", m.per_mma(*c)))
            .collect();
            println!(
                "{}: {:.2} instr/MMA (mma.sync {}: {sync:.2}), ldmatrix {:.0} B/MMA; {}",
                b.name,
                m.instr_per_mma(),
                sync_tile.suffix(),
                m.ldmatrix_bytes_per_mma(),
                classes.join(", ")
            );
            best = best.min(m.instr_per_mma());
        }
        // Since session 8's mma.sync address work, one wgmma tile (block_n 64 at d = 64,
        // 6.09 against 5.95) no longer undercuts the mma.sync default tile; the best wgmma
        // tile of every kernel does (d64 full 3.98 with a producer warpgroup).
        assert!(
            best < sync,
            "{spec:?}: the best wgmma tile issues {best:.2} instructions per MMA, mma.sync's default tile {sync:.2}"
        );
    }
}
