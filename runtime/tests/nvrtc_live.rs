//! Live tests against the NVRTC, ptxas and cuobjdump installed by `cargo xtask setup`.
//! They fail (with the setup hint) when the toolchain is missing; they never skip.

mod common;

use attnforge_runtime::{
    build_kernel, build_many, compile, compile_with, run_ptxas, sass, sass_opcode_count, Arch,
    BuildError, CompileError, CompileOptions, Compiler, KernelSource,
};
use common::{ok, ATTENTION, MMA, SMALL, SPILLING};

const ELF_MAGIC: &[u8] = b"\x7fELF";

#[test]
fn compiler_loads_the_toolchain_nvrtc_12_9() {
    let c = ok(Compiler::global());
    assert_eq!(
        c.version(),
        (12, 9),
        "pinned wheel is nvidia-cuda-nvrtc-cu12==12.9.86"
    );
    assert!(
        c.uses_toolchain_library(),
        "cudarc resolved a different libnvrtc"
    );
}

#[test]
fn small_kernel_gives_ptx_cubin_and_resources_for_sm80_and_sm90() {
    for arch in [Arch::Sm80, Arch::Sm90] {
        let b = ok(build_kernel(SMALL, "small_k", arch));
        assert!(
            b.compiled.ptx.contains(".entry small_k"),
            "{}",
            b.compiled.ptx
        );
        assert!(b
            .compiled
            .ptx
            .contains(&format!(".target {}", arch.sm_name())));
        let cubin = b
            .compiled
            .cubin
            .as_deref()
            .expect("real-arch compile yields a CUBIN");
        assert!(cubin.starts_with(ELF_MAGIC));
        let r = &b.resources;
        assert_eq!(r.kernel, "small_k");
        assert_eq!(r.arch, arch.sm_name());
        assert_eq!(r.shared_bytes, 256 * 4, "__shared__ float s[256]");
        assert!(r.registers > 0 && r.registers <= 255, "{r:?}");
        assert_eq!(r.barriers, 1, "one __syncthreads barrier");
        assert!(!r.has_spills(), "{r:?}");
        println!("small_k {arch}: {r:?}, NVRTC {:?}", b.compiled.compile_time);
    }
}

#[test]
fn standalone_ptxas_agrees_with_the_nvrtc_log() {
    let tc = Compiler::global().map(|c| c.toolchain().clone());
    let tc = ok(tc);
    for arch in [Arch::Sm80, Arch::Sm90] {
        let b = ok(build_kernel(ATTENTION, "attn_test_d64_f16", arch));
        let standalone = ok(run_ptxas(&tc, &b.compiled.ptx, "attn", arch));
        assert_eq!(standalone.kernels.len(), 2, "{standalone:?}");
        for k in &b.report.kernels {
            let s = standalone
                .kernel(&k.kernel)
                .expect("same kernels in both reports");
            assert_eq!(
                (s.registers, s.shared_bytes),
                (k.registers, k.shared_bytes),
                "{arch}"
            );
            assert_eq!(s.stack_frame_bytes, k.stack_frame_bytes);
        }
    }
}

#[test]
fn attention_kernel_half_and_bf16_has_no_spills_on_sm80_and_sm90() {
    for arch in [Arch::Sm80, Arch::Sm90] {
        for name in ["attn_test_d64_f16", "attn_test_d64_bf16"] {
            let b = ok(build_kernel(ATTENTION, name, arch));
            let r = &b.resources;
            ok(r.check_no_spills());
            assert_eq!(r.stack_frame_bytes, 0);
            assert_eq!(
                r.shared_bytes,
                2 * 64 * 64 * 2,
                "K and V tiles of 64x64 16-bit values"
            );
            println!(
                "{name} {arch}: {} registers, {} B smem, NVRTC compile {:.1} ms",
                r.registers,
                r.shared_bytes,
                b.compiled.compile_time.as_secs_f64() * 1e3
            );
        }
    }
}

#[test]
fn dynamically_indexed_local_array_is_reported_as_a_stack_frame() {
    let b = ok(build_kernel(SPILLING, "spill_k", Arch::Sm90));
    assert!(b.resources.stack_frame_bytes >= 1024, "{:?}", b.resources);
    let e = b.resources.check_no_spills().unwrap_err();
    assert!(e.to_string().contains("spill_k"), "{e}");
}

#[test]
fn compile_error_carries_log_options_name_and_source() {
    let src = "extern \"C\" __global__ void broken(float* o) {\n    o[0] = undefined_thing;\n}\n";
    match compile(src, "broken_variant", Arch::Sm80) {
        Err(CompileError::Compilation {
            name,
            arch,
            options,
            log,
            excerpt,
            cuda_source,
        }) => {
            assert_eq!(name, "broken_variant");
            assert_eq!(arch, Arch::Sm80);
            assert!(
                options.iter().any(|o| o == "--gpu-architecture=sm_80"),
                "{options:?}"
            );
            assert!(log.contains("undefined_thing"), "{log}");
            assert!(excerpt.contains(">    2 |"), "{excerpt}");
            assert_eq!(cuda_source, src);
        }
        other => panic!("expected a Compilation error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(matches!(
        compile("x", "", Arch::Sm80),
        Err(CompileError::InvalidInput { field: "name", .. })
    ));
    assert!(matches!(
        compile("a\0b", "k", Arch::Sm80),
        Err(CompileError::InvalidInput {
            field: "source",
            ..
        })
    ));
    match build_kernel(SMALL, "no_such_kernel", Arch::Sm80) {
        Err(BuildError::KernelMissing { found, .. }) => assert_eq!(found, vec!["small_k"]),
        other => panic!("expected KernelMissing, got {other:?}"),
    }
}

#[test]
fn extra_options_reach_nvrtc() {
    let src = "extern \"C\" __global__ void opt_k(float* o) { o[0] = VALUE; }";
    assert!(
        compile(src, "opt_k", Arch::Sm80).is_err(),
        "VALUE is undefined without -D"
    );
    let mut opts = CompileOptions::new(Arch::Sm80);
    opts.extra.push("-DVALUE=3.5f".to_owned());
    let c = ok(compile_with(src, "opt_k", &opts));
    assert!(c.options.contains(&"-DVALUE=3.5f".to_owned()));
    let bits = 3.5f32.to_bits().to_string(); // stored as `mov.u32 %r, <bits>`
    assert!(
        c.ptx.contains(&bits),
        "3.5f ({bits}) not in the PTX:\n{}",
        c.ptx
    );
}

#[test]
fn build_many_keeps_order_and_isolates_failures() {
    let arches = [Arch::Sm80, Arch::Sm90];
    let mut items = Vec::new();
    for arch in arches {
        for name in ["attn_test_d64_f16", "attn_test_d64_bf16"] {
            items.push(KernelSource {
                source: ATTENTION,
                name,
                options: CompileOptions::new(arch),
            });
        }
    }
    items.insert(
        1,
        KernelSource {
            source: "garbage(",
            name: "bad",
            options: CompileOptions::new(Arch::Sm80),
        },
    );
    let start = std::time::Instant::now();
    let results = ok(build_many(&items));
    println!(
        "build_many: {} kernels in {:?}",
        items.len(),
        start.elapsed()
    );
    assert_eq!(results.len(), items.len());
    for (item, r) in items.iter().zip(&results) {
        match r {
            Ok(b) => {
                assert_eq!(b.resources.kernel, item.name);
                assert_eq!(b.compiled.arch, item.options.arch);
            }
            Err(e) => {
                assert_eq!(item.name, "bad", "{e}");
                assert!(
                    matches!(e, BuildError::Compile(c) if matches!(**c, CompileError::Compilation { .. }))
                );
            }
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn mma_sync_shows_hmma_in_sass_and_plain_kernels_do_not() {
    for arch in [Arch::Sm80, Arch::Sm90] {
        let c = ok(compile(MMA, "mma_k", arch));
        let text = ok(sass(c.cubin.as_deref().expect("cubin")));
        assert!(
            text.contains(&format!("code for {}", arch.sm_name())),
            "{text}"
        );
        assert!(sass_opcode_count(&text, "HMMA") >= 1, "no HMMA in:\n{text}");

        let plain = ok(compile(SMALL, "small_k", arch));
        let text = ok(sass(plain.cubin.as_deref().expect("cubin")));
        assert!(text.contains("small_k"));
        assert_eq!(sass_opcode_count(&text, "HMMA"), 0);
    }
}

#[test]
fn repeated_compiles_are_cheap() {
    ok(compile(SMALL, "small_k", Arch::Sm90)); // warm: library loaded, headers cached
    let n = 5;
    let start = std::time::Instant::now();
    for _ in 0..n {
        ok(compile(ATTENTION, "attn_test_d64_bf16", Arch::Sm90));
    }
    let per = start.elapsed() / n;
    println!("attention kernel (2 entries, fp16+bf16 headers): {per:?} per NVRTC compile");
    assert!(per.as_secs_f64() < 5.0, "NVRTC compile took {per:?}");
}
