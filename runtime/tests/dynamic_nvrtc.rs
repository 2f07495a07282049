//! Every dynamic-pipeline kernel of the catalog (and D = 256 f32) compiles with NVRTC for
//! sm_80 and sm_90 with no stack frame and no spills (ptxas report). Needs
//! `cargo xtask setup`; fails (never skips) without the toolchain.

use std::collections::BTreeMap;

use attnforge_runtime::codegen::dynamic::{
    dynamic_catalog, emit_dynamic, emit_stage_in, DynKeys, DynamicSpec, LandmarkMode,
};
use attnforge_runtime::codegen::spec::{DType, HeadDim};
use attnforge_runtime::{build_many, Arch, CompileOptions, KernelSource};

#[test]
fn dynamic_kernels_compile_without_spills_or_stack() {
    let mut specs = dynamic_catalog();
    specs.push(DynamicSpec::Landmark {
        dtype: DType::F32,
        head_dim: HeadDim::D256,
        mem_freq: 63,
        mode: LandmarkMode::Retrieval { top_k: 4 },
    });
    specs.push(DynamicSpec::Hax {
        dtype: DType::F32,
        head_dim: HeadDim::D256,
        k_lsh: 32,
        k_ks: 32,
        hash_bits: 8,
    });
    specs.push(DynamicSpec::Cca {
        dtype: DType::F32,
        head_dim: HeadDim::D256,
        group: 16,
        window: 1024,
    });
    specs.push(DynamicSpec::Topk {
        dtype: DType::F32,
        head_dim: HeadDim::D256,
        sink: 4,
        recent: 64,
        k: 64,
        split: true,
    });
    let mut kernels = BTreeMap::new();
    for s in &specs {
        for k in emit_dynamic(s).unwrap() {
            kernels.insert(k.name.clone(), k);
        }
        // the key-selecting decode families also read a paged cache
        if attnforge_runtime::exec_dynamic::reads_paged(s) {
            for stage in s.stages() {
                let k = emit_stage_in(s, stage, DynKeys::Paged).unwrap();
                kernels.insert(k.name.clone(), k);
            }
        }
    }
    for stem in [
        "topk_attn_paged_",
        "landmark_select_paged_",
        "landmark_attn_paged_",
    ] {
        assert!(
            kernels.keys().any(|n| n.starts_with(stem)),
            "no {stem} kernel in the catalog"
        );
    }
    assert!(kernels.len() >= 44, "{} kernels", kernels.len());
    let mut bad: Vec<String> = Vec::new();
    for arch in [Arch::Sm80, Arch::Sm90] {
        let srcs: Vec<KernelSource<'_>> = kernels
            .values()
            .map(|k| KernelSource {
                source: &k.source,
                name: &k.name,
                options: CompileOptions::new(arch),
            })
            .collect();
        let built = match build_many(&srcs) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        for (k, b) in kernels.values().zip(built) {
            let b = b.unwrap_or_else(|e| panic!("{} ({arch:?}): {e}", k.name));
            let r = &b.resources;
            if r.stack_frame_bytes != 0 || r.has_spills() {
                bad.push(format!("{} ({arch:?}): {r:?}", k.name));
            }
        }
    }
    assert!(bad.is_empty(), "stack frame or spills:\n{}", bad.join("\n"));
}
