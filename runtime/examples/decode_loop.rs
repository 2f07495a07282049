//! Static SASS figures of the decode kernels' main loop (the anchors' decode rows, NVRTC).
use attnforge_runtime::codegen::emit::{emit_with, SymbolStyle};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::{
    build_with, main_loops, sass, CompileOptions, Compiler, InstrClass, KernelSource, MainLoopHints,
};

fn main() {
    let only = std::env::args().nth(1).unwrap_or_default();
    for layout in [Layout::Decode, Layout::DecodeVarlen, Layout::Paged] {
        for (dt, hd, mask) in [
            (DType::Bf16, HeadDim::D128, Mask::Causal),
            (DType::Bf16, HeadDim::D128, Mask::Full),
            (DType::F16, HeadDim::D64, Mask::Causal),
            (DType::Bf16, HeadDim::D64, Mask::Causal),
            (DType::Bf16, HeadDim::D64, Mask::Full),
        ] {
            let spec = KernelSpec::new(dt, hd, mask, ScoreMod::None)
                .with_gqa()
                .with_layout(layout);
            if !only.is_empty() && !spec.canonical_name().contains(&only) {
                continue;
            }
            // TILE=m64n128w4s2 measures another tile (an invalid one is skipped)
            let tile = match std::env::var("TILE")
                .ok()
                .and_then(|t| TileConfig::parse_suffix(&t))
            {
                Some(t) if t.valid(&spec, Arch::Sm80).is_ok() => t,
                Some(_) => continue,
                None => default_tile(&spec, Arch::Sm80).unwrap(),
            };
            let mut line = format!("{:<48}", spec.canonical_name());
            for arch in [Arch::Sm80, Arch::Sm90] {
                let k = emit_with(&spec, &tile, arch, SymbolStyle::WithTile).unwrap();
                let src = KernelSource {
                    source: &k.source,
                    name: &k.name,
                    options: CompileOptions::for_tile(arch, &tile),
                };
                let b = build_with(Compiler::global().unwrap(), &src).unwrap();
                let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).unwrap();
                if let Some(dir) = std::env::var_os("DUMP") {
                    let _ = std::fs::write(
                        std::path::Path::new(&dir).join(format!(
                            "{}_{}.sass",
                            k.name,
                            arch.sm_name()
                        )),
                        &text,
                    );
                }
                let hints = MainLoopHints::for_kernel(&spec, &tile);
                let r = main_loops(&text, &hints)
                    .unwrap()
                    .into_iter()
                    .next()
                    .unwrap();
                if std::env::var_os("OPCODES").is_some() {
                    println!("{} {}: {:?}", k.name, arch.sm_name(), r.by_opcode);
                }
                let per_key = r.instructions * tile.warps as f64 / tile.block_n as f64;
                let p = &r.partial;
                line += &format!(
                    " | {}: {:.2}/key {:.2}/MMA part {:.2}/MMA int {:.2} regs {} spill {}",
                    arch.sm_name(),
                    per_key,
                    r.instructions / r.mma,
                    p.instructions / p.mma,
                    r.by_class
                        .get(&InstrClass::IntAddress)
                        .copied()
                        .unwrap_or(0.0)
                        / r.mma,
                    b.resources.registers,
                    b.resources.spill_store_bytes + b.resources.spill_load_bytes
                );
            }
            println!("{line}");
        }
    }
}
