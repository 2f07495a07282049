//! The main-loop analyzer ([`attnforge_runtime::main_loops`]) on the SASS of our own
//! generated kernels, compiled by the toolchain of `cargo xtask setup`: whatever the emitter
//! produces, one iteration of the main loop must be exactly one key tile of tensor-core work
//! (2·block_m·block_n·d / (warps·2048) m16n8k16 per warp), with every nested loop's trips
//! derived rather than assumed. Fails (never skips) without the toolchain.

use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::tile::{default_tile, Arch};
use attnforge_runtime::{build_kernel, main_loops, sass, InstrClass, MainLoopHints};

#[test]
fn main_loop_of_our_dense_kernel_is_one_key_tile() {
    let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Full, ScoreMod::None);
    for arch in [Arch::Sm80, Arch::Sm90] {
        let tile = default_tile(&spec, arch).expect("a default tile");
        let k = emit_with(&spec, &tile, arch, SymbolStyle::WithTile).expect("emits");
        let b = build_kernel(&k.source, &k.name, arch)
            .unwrap_or_else(|e| panic!("compile (run `cargo xtask setup`): {e}"));
        let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
        let expected =
            (2 * tile.block_m * tile.block_n * 128) as f64 / (tile.warps as f64 * 2048.0);
        // no MMA hint: the MMA count must come from the code itself (nested loops by their
        // constant bounds); the copy hint may solve a copy loop whose bound is a register.
        // A nested loop explained by neither is reported as an assumption, which fails.
        let hints = MainLoopHints {
            mma_per_iteration: None,
            cp_async_per_iteration: Some(
                (2 * tile.block_n * 128 * 2) as f64 / (512.0 * tile.warps as f64),
            ),
        };
        let reports = main_loops(&text, &hints).expect("analysable");
        assert_eq!(reports.len(), 1, "{}", k.name);
        let m = &reports[0];
        assert_eq!(
            m.mma, expected,
            "{} {arch:?}: MMA per main-loop iteration",
            k.name
        );
        assert!(m.assumptions().is_empty(), "{:?}", m.assumptions());
        assert!(
            m.by_class
                .get(&InstrClass::Ldmatrix)
                .copied()
                .unwrap_or(0.0)
                > 0.0
        );
        assert!(m.by_class.get(&InstrClass::Mufu).copied().unwrap_or(0.0) > 0.0);
        assert!(
            !m.by_class.contains_key(&InstrClass::Local),
            "spills in the main loop"
        );
        // every class adds up to the total, and the loop does more than its MMAs
        let sum: f64 = m.by_class.values().sum();
        assert!((sum - m.instructions).abs() < 1e-9);
        assert!(m.instr_per_mma() > 1.0 && m.instr_per_mma().is_finite());
    }
}
