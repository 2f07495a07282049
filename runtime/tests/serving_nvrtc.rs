//! The serving kernels (varlen and paged layouts, variants.md section 13) compile with NVRTC
//! for sm_80 and sm_90 without spills or a stack frame, next to their dense twins (the
//! registers of both are printed: `cargo test -p attnforge-runtime --test serving_nvrtc --
//! --nocapture`). Fails (never skips) without the toolchain of `cargo xtask setup`.

use attnforge_runtime::build_kernel;
use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;

#[test]
fn serving_kernels_compile_without_spills() {
    let d64 = HeadDim::D64;
    let specs = [
        KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None),
        KernelSpec::new(DType::F16, d64, Mask::Local, ScoreMod::Softcap).with_gqa(),
        KernelSpec::new(DType::F16, d64, Mask::Document, ScoreMod::None),
        KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::LmInfinite, ScoreMod::None),
        KernelSpec::new(DType::F32, d64, Mask::Causal, ScoreMod::Alibi),
    ];
    let mut failures = Vec::new();
    for base in specs {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let mut regs = Vec::new();
            for layout in Layout::ALL {
                if layout.is_paged() && base.mask.reads_doc() {
                    continue; // rejected by validate_spec (tested in serving_props)
                }
                let spec = base.clone().with_layout(layout);
                let tile = default_tile(&spec, Arch::Sm80).expect("a tile");
                let k = emit_with(&spec, &tile, arch, SymbolStyle::WithTile).expect("emits");
                let b = build_kernel(&k.source, &k.name, arch)
                    .unwrap_or_else(|e| panic!("{} (run `cargo xtask setup`): {e}", k.name));
                let r = &b.resources;
                if r.spill_store_bytes + r.spill_load_bytes + r.stack_frame_bytes > 0 {
                    failures.push(format!(
                        "{} {}: spills {} / {} bytes, stack {} bytes",
                        k.name,
                        arch.sm_name(),
                        r.spill_store_bytes,
                        r.spill_load_bytes,
                        r.stack_frame_bytes
                    ));
                }
                regs.push(format!("{} {}", layout.tag(), r.registers));
            }
            println!(
                "{} {}: registers {}",
                base.canonical_name(),
                arch.sm_name(),
                regs.join(", ")
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
