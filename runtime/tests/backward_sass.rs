//! The tensor-core backward kernels (issue 18) compiled with NVRTC for sm_80 and sm_90 and their
//! main loops measured by the SASS analyzer ([`main_loops`], as `main_loop_ratchet.rs` does for
//! the forward): causal d 64 / d 128 bf16 at the default backward tile. Checks that each main
//! loop does one tile's MMAs (dK/dV per query tile: S^T, dP^T, dV, dK; dQ per key tile: S, dP,
//! dQ), without spills or stack, and prints the figures of docs/backward.md ("SASS"):
//! `cargo test -p attnforge-runtime --test backward_sass -- --nocapture`. Fails (never skips)
//! without the toolchain of `cargo xtask setup`.

use attnforge_runtime::codegen::backward::{emit_backward, mainloop, BackwardTile};
use attnforge_runtime::codegen::prelude::{DType, HeadDim, KernelSpec, Mask, ScoreMod};
use attnforge_runtime::codegen::tile::{Arch, Mainloop};
use attnforge_runtime::{build_kernel, main_loops, sass, MainLoopHints};

/// Instructions per MMA of each main loop as measured when the kernels were written
/// (2026-12-04, NVRTC 12.9.86; docs/backward.md "SASS"): a ratchet like
/// `main_loop_ratchet.rs`'s, failing when a loop gets more than 2% worse. A change that
/// improves a figure updates it here and in the docs.
const COMMITTED: [(&str, &str, f64); 8] = [
    ("flash_fwd_causal_d64_bf16_bwd_dkdv", "sm_80", 6.83),
    ("flash_fwd_causal_d64_bf16_bwd_dq", "sm_80", 8.29),
    ("flash_fwd_causal_d64_bf16_bwd_dkdv", "sm_90", 7.11),
    ("flash_fwd_causal_d64_bf16_bwd_dq", "sm_90", 8.61),
    ("flash_fwd_causal_d128_bf16_bwd_dkdv", "sm_80", 5.67),
    ("flash_fwd_causal_d128_bf16_bwd_dq", "sm_80", 6.73),
    ("flash_fwd_causal_d128_bf16_bwd_dkdv", "sm_90", 5.92),
    ("flash_fwd_causal_d128_bf16_bwd_dq", "sm_90", 7.07),
];

#[test]
fn tensor_core_backward_main_loops() {
    let mut table = Vec::new();
    for head_dim in [HeadDim::D64, HeadDim::D128] {
        let spec = KernelSpec::new(DType::Bf16, head_dim, Mask::Causal, ScoreMod::None);
        let t = BackwardTile::for_spec(&spec);
        assert_eq!(mainloop(&spec, &t), Mainloop::TensorCore);
        let d = head_dim.get();
        assert_eq!((t.block_m, t.block_n, t.warps), (64, 64, 4));
        // a main-loop iteration: dK/dV one query tile of `qm` rows (32 at d 128, whose 64-row
        // tile spills), dQ one key tile of 64; m16n8k16 MMAs per warp of one product of its 16
        // rows, and 16-byte cp.async per warp of the tile's two [rows][d] 16-bit copies
        let qm = if d > 64 { 32 } else { 64 };
        let product = |rows: usize| (16 * rows * d) as f64 / 2048.0;
        let copies = |rows: usize| (2 * rows * d * 2) as f64 / (512.0 * t.warps as f64);
        for arch in [Arch::Sm80, Arch::Sm90] {
            let k = emit_backward(&spec, &t, arch).expect("emits");
            let (dkdv_smem, dq_smem) = t.smem_bytes(&spec);
            for (kernel, products, rows, smem) in
                [(&k.dkdv, 4.0, qm, dkdv_smem), (&k.dq, 3.0, 64, dq_smem)]
            {
                let b = build_kernel(&kernel.source, &kernel.name, arch)
                    .unwrap_or_else(|e| panic!("compile (run `cargo xtask setup`): {e}"));
                let r = &b.resources;
                assert_eq!(
                    (r.stack_frame_bytes, r.spill_store_bytes, r.spill_load_bytes),
                    (0, 0, 0),
                    "{} {}: {} registers",
                    kernel.name,
                    arch.sm_name(),
                    r.registers
                );
                let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
                let hints = MainLoopHints {
                    mma_per_iteration: Some(products * product(rows)),
                    cp_async_per_iteration: Some(copies(rows)),
                };
                let reports = main_loops(&text, &hints).expect("analysable");
                let m = reports.first().expect("a main loop");
                assert_eq!(
                    m.mma,
                    products * product(rows),
                    "{}: one tile per iteration",
                    kernel.name
                );
                let committed = COMMITTED
                    .iter()
                    .find(|(n, a, _)| *n == kernel.name && *a == arch.sm_name())
                    .map(|c| c.2)
                    .expect("a committed figure");
                // the committed figures are rounded to 0.01
                assert!(
                    m.instr_per_mma() <= (committed + 0.005) * 1.02,
                    "{} {}: {:.3} instructions per MMA, committed {committed}",
                    kernel.name,
                    arch.sm_name(),
                    m.instr_per_mma()
                );
                table.push(format!(
                    "| {} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.2} |",
                    kernel.name,
                    arch.sm_name(),
                    r.registers,
                    smem,
                    m.mma,
                    m.instr_per_mma(),
                    m.ldmatrix_bytes_per_mma(),
                    m.partial.instr_per_mma(),
                ));
            }
        }
    }
    println!("| kernel | arch | registers | smem B | MMA/iter | instr/MMA | ldmatrix B/MMA | partial instr/MMA |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in table {
        println!("{r}");
    }
}

/// The atomic-dQ variant's dK/dV loop (`BackwardTile::atomic_dq`, FlashAttention-2's form):
/// five products per warp and iteration (the fifth, dS K, feeds the f32 reductions), no
/// spills. Its instructions per MMA are the whole backward's per useful MMA (the dQ kernel
/// only converts); printed next to the deterministic pair's figure from `COMMITTED`
/// (the dK/dV and dQ loops' instructions over the five useful products: (4 a + 3 b) / 5),
/// and ratcheted like it.
#[test]
fn atomic_dq_main_loop() {
    const ATOMIC: [(usize, &str, f64); 4] = [
        (64, "sm_80", 7.44),
        (64, "sm_90", 7.76),
        (128, "sm_80", 6.25),
        (128, "sm_90", 6.56),
    ];
    for (d, arch_name, committed) in ATOMIC {
        let head_dim = if d == 64 { HeadDim::D64 } else { HeadDim::D128 };
        let arch = if arch_name == "sm_80" {
            Arch::Sm80
        } else {
            Arch::Sm90
        };
        let spec = KernelSpec::new(DType::Bf16, head_dim, Mask::Causal, ScoreMod::None);
        let t = BackwardTile::new(64, 64, 4).atomic();
        let qm = t.dkdv_query_step(d);
        let product = (16 * qm * d) as f64 / 2048.0;
        let k = emit_backward(&spec, &t, arch).expect("emits");
        let b = build_kernel(&k.dkdv.source, &k.dkdv.name, arch).expect("compiles");
        let r = &b.resources;
        assert_eq!(
            (r.stack_frame_bytes, r.spill_store_bytes),
            (0, 0),
            "{}",
            k.dkdv.name
        );
        let text = sass(b.compiled.cubin.as_deref().unwrap_or_default()).expect("SASS");
        let products = t.dkdv_products();
        let hints = MainLoopHints {
            mma_per_iteration: Some(products * product),
            cp_async_per_iteration: Some((2 * qm * d * 2) as f64 / (512.0 * t.warps as f64)),
        };
        let m = main_loops(&text, &hints).expect("analysable");
        let m = m.first().expect("a main loop");
        assert_eq!(m.mma, products * product, "{}: 5 products", k.dkdv.name);
        let per_useful = m.instr_per_mma();
        let det = |kernel: &str| {
            let name = format!("{}_bwd_{kernel}", spec.canonical_name());
            COMMITTED
                .iter()
                .find(|(n, a, _)| *n == name && *a == arch_name)
                .expect("committed")
                .2
        };
        println!(
            "| {} atomic | {arch_name} | {} | {:.0} | {:.2} | deterministic whole backward {:.2} |",
            k.dkdv.name,
            r.registers,
            m.mma,
            per_useful,
            (4.0 * det("dkdv") + 3.0 * det("dq")) / 5.0
        );
        assert!(
            per_useful <= (committed + 0.005) * 1.02,
            "{} {arch_name}: {per_useful:.3} instructions per useful MMA, committed {committed}",
            k.dkdv.name,
        );
    }
}
