//! The statistics kernels (variants.md section 14, docs/statistics.md) compile with NVRTC for
//! sm_80 and sm_90 without stack frame or spills (the forward kernels with the statistics
//! policy and the follow-up kernel), the main loop keeps its instructions per MMA (within the
//! ratchet's 2%), and the cost of the statistics sweep in instructions per MMA
//! (printed: the figures of docs/statistics.md). Fails (never skips) without the toolchain
//! of `cargo xtask setup`.

use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::spec::StatsSpec;
use attnforge_runtime::codegen::stats::emit_stats_reduce;
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::{build_kernel, main_loops, sass, sass_loops, MainLoopHints, SassLoop};

/// Compiles `source` for `arch`: (registers, SASS text); asserts no stack frame, no spills.
fn compile(source: &str, name: &str, arch: Arch) -> (u32, String) {
    let b = build_kernel(source, name, arch)
        .unwrap_or_else(|e| panic!("compile {name} (run `cargo xtask setup`): {e}"));
    let u = &b.resources;
    assert_eq!(
        (u.stack_frame_bytes, u.spill_store_bytes, u.spill_load_bytes),
        (0, 0, 0),
        "{name} {arch:?}: stack / spills ({} registers)",
        u.registers
    );
    let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
    (u.registers, text)
}

/// Instructions of the statistics sweep per key tile and thread (= per warp): the tile loop
/// (the loop without MMA holding the most FFMA and a MUFU.EX2), each loop inside it counted
/// for its trips, from the work it does per trip: the dot-product loop `D * RPT * CB` FFMA
/// (RPT x CB scores per thread), the K staging loop `block_n * D / threads` STS, the
/// row-group sum `RGN` LDS per key column (4 columns per thread, RGN = threads / (block_n / 4)),
/// and a loop holding the exponentials (a packed decode block's loop over the query heads of
/// its rows; the prefill kernels have none: one head) `heads` trips.
fn sweep_instr_per_tile(loops: &[SassLoop], d: usize, tile: &TileConfig, heads: usize) -> f64 {
    let outer = loops
        .iter()
        .filter(|l| l.count("HMMA") == 0 && l.count("MUFU.EX2") > 0 && l.count("FFMA") > 0)
        .max_by_key(|l| l.instructions)
        .expect("the statistics tile loop");
    one_trip(loops, outer, d, tile, heads)
}

/// Instructions one trip of `l` executes: its body, plus each loop directly inside it
/// (not nested in another) executed for its trips instead of once.
fn one_trip(loops: &[SassLoop], l: &SassLoop, d: usize, tile: &TileConfig, heads: usize) -> f64 {
    let nt = tile.threads();
    let rgn = nt / (tile.block_n / 4);
    let scores = tile.block_m * tile.block_n / nt; // RPT x CB per thread
    let inner: Vec<&SassLoop> = loops
        .iter()
        .filter(|c| l.contains(c) && !std::ptr::eq(*c, l))
        .collect();
    let direct = inner.iter().filter(|c| {
        !inner
            .iter()
            .any(|o| !std::ptr::eq(*o, **c) && o.contains(c))
    });
    let mut total = l.instructions as f64;
    for c in direct {
        let per_trip = |op: &str| c.count(op).max(1) as f64;
        let trips = if c.count("MUFU.EX2") > 0 {
            heads as f64
        } else if c.count("FFMA") > 0 {
            (d * scores) as f64 / per_trip("FFMA")
        } else if c.count("STS") > 0 {
            (tile.block_n * d / nt) as f64 / per_trip("STS")
        } else {
            rgn as f64 / per_trip("LDS")
        };
        total += trips * one_trip(loops, c, d, tile, heads) - c.instructions as f64;
    }
    total
}

#[test]
fn stats_kernels_compile_and_cost() {
    let mut rows = Vec::new();
    for (dtype, d, mask) in [
        (DType::Bf16, HeadDim::D64, Mask::Causal),
        (DType::Bf16, HeadDim::D128, Mask::Causal),
        (DType::F16, HeadDim::D64, Mask::Local),
    ] {
        let plain = KernelSpec::new(dtype, d, mask, ScoreMod::None).with_gqa();
        let with = plain.clone().with_stats(StatsSpec::default());
        for arch in [Arch::Sm80, Arch::Sm90] {
            let tile = default_tile(&with, arch).expect("a default tile");
            let hints = MainLoopHints::for_kernel(&plain, &tile);
            let mut per_mma = Vec::new();
            let mut regs = Vec::new();
            let mut sweep = 0.0;
            for s in [&plain, &with] {
                let k = emit_with(s, &tile, arch, SymbolStyle::WithTile).expect("emits");
                let (r, text) = compile(&k.source, &k.name, arch);
                let m = main_loops(&text, &hints).expect("analysable");
                per_mma.push(m.first().expect("a main loop").instr_per_mma());
                regs.push(r);
                if s.stats.is_some() {
                    sweep =
                        sweep_instr_per_tile(&sass_loops(&text).expect("loops"), d.get(), &tile, 1);
                }
            }
            // the main loop is the same code; the compiler may schedule it a little
            // differently with the sweep after it: the ratchet's 2% (main_loop_ratchet.rs)
            assert!(
                per_mma[1] <= per_mma[0] * 1.02,
                "{plain:?} {arch:?}: main loop {} instr/MMA with statistics, {} without",
                per_mma[1],
                per_mma[0]
            );
            // per key tile and warp: the main loop issues mma_per_iteration MMAs
            let mma = hints.mma_per_iteration.expect("set by hints()") as f64;
            let extra = sweep / mma;
            rows.push(format!(
                "{} {} tile {}: registers {} -> {}, main loop {:.3} -> {:.3} instr/MMA, sweep {:.0} instr/tile, +{:.1} instr/MMA",
                plain.canonical_name(),
                arch.sm_name(),
                tile.suffix(),
                regs[0],
                regs[1],
                per_mma[0],
                per_mma[1],
                sweep,
                extra
            ));
        }
    }
    for arch in [Arch::Sm80, Arch::Sm90] {
        let k = emit_stats_reduce();
        let (r, _) = compile(&k.source, &k.name, arch);
        rows.push(format!("{} {}: registers {r}", k.name, arch.sm_name()));
    }
    for r in &rows {
        println!("{r}");
    }
}

/// LM-Infinite (two scoring branches in the sweep: twice the score registers) and the varlen
/// and paged layouts (padded partial rows, keys through the block table) compile for sm_80
/// and sm_90 without stack frame or spills; registers printed without and with statistics.
#[test]
fn lm_infinite_and_serving_stats_compile() {
    use attnforge_runtime::codegen::spec::Layout;
    for (mask, layout) in [
        (Mask::LmInfinite, Layout::Dense),
        (Mask::Causal, Layout::Varlen),
        (Mask::Causal, Layout::Paged),
    ] {
        let plain = KernelSpec::new(DType::Bf16, HeadDim::D128, mask, ScoreMod::None)
            .with_gqa()
            .with_layout(layout);
        let with = plain.clone().with_stats(StatsSpec::default());
        for arch in [Arch::Sm80, Arch::Sm90] {
            let tile = default_tile(&with, arch).expect("a default tile");
            let mut regs = Vec::new();
            for s in [&plain, &with] {
                let k = emit_with(s, &tile, arch, SymbolStyle::WithTile).expect("emits");
                regs.push(compile(&k.source, &k.name, arch).0);
            }
            println!(
                "{} {} tile {}: registers {} -> {}",
                with.canonical_name(),
                arch.sm_name(),
                tile.suffix(),
                regs[0],
                regs[1]
            );
        }
    }
}

/// The decode layouts' statistics sweep kernel (`emit_stats_sweep`: the third launch, after
/// the decode kernel and its split merge) compiles for sm_80 and sm_90 without stack frame or
/// spills, on a paged cache and over packed keys, with a mask and score modification per
/// packed row and with LM-Infinite's two branches; printed: its registers and the sweep's
/// instructions per key tile and warp (the analysis of the prefill sweep above).
#[test]
fn decode_stats_sweep_compiles() {
    use attnforge_runtime::codegen::emit::emit_stats_sweep;
    use attnforge_runtime::codegen::spec::Layout;
    let cases = [
        (
            DType::Bf16,
            HeadDim::D128,
            Mask::Causal,
            ScoreMod::None,
            Layout::Decode,
        ),
        (
            DType::F16,
            HeadDim::D64,
            Mask::Local,
            ScoreMod::Softcap,
            Layout::Decode,
        ),
        (
            DType::Bf16,
            HeadDim::D64,
            Mask::Causal,
            ScoreMod::None,
            Layout::DecodeVarlen,
        ),
        (
            DType::Bf16,
            HeadDim::D128,
            Mask::LmInfinite,
            ScoreMod::None,
            Layout::Decode,
        ),
    ];
    for (dtype, d, mask, score, layout) in cases {
        let spec = KernelSpec::new(dtype, d, mask, score)
            .with_gqa()
            .with_layout(layout)
            .with_stats(StatsSpec::default());
        for arch in [Arch::Sm80, Arch::Sm90] {
            let tile = default_tile(&spec, arch).expect("a default tile");
            let k = emit_stats_sweep(&spec, &tile, arch, SymbolStyle::WithTile).expect("emits");
            assert!(
                !k.source.contains("af_fwd_tc<Tile>(") && !k.source.contains("af_fwd_fma<Tile>(")
            );
            let (r, text) = compile(&k.source, &k.name, arch);
            let loops = sass_loops(&text).expect("loops");
            // per key tile and warp, one token of a group of 4 (one head per trip of the
            // head loop) and 16 tokens (a 64-row block holds 4 heads)
            let sweep = if spec.mask.lm_infinite_scoring() {
                String::new()
            } else {
                let t = |h| sweep_instr_per_tile(&loops, d.get(), &tile, h) / tile.block_n as f64;
                format!(
                    ", sweep {:.1} / {:.1} instr per key and live warp (1 / 4 heads per block)",
                    t(1),
                    t(4)
                )
            };
            println!(
                "{} {} tile {}: registers {r}{sweep}",
                k.name,
                arch.sm_name(),
                tile.suffix()
            );
        }
    }
}
