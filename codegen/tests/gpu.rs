//! The tensor-core property suite on a real GPU (`exec::Backend::Cuda(0)`): the same case
//! list as the simulator test (`tests/tc_cases`), checked against the f64 reference with
//! the oracle of variants.md section 0. Without a GPU (no `libcuda`, no device) every test
//! prints why and passes: this machine class has none; `gpu/run.sh` runs the built binary
//! on the device machine (docs/gpu-check.md).
//!
//! `ATTNFORGE_EMIT_DIR=<dir>` makes `emit_bench_kernels` write the benchmark kernels (dense
//! full and causal, bf16, d = 64 and 128, default tile for sm_90) as `.cu` + metadata JSON.

mod tc_cases;

use attnforge_codegen::prelude::*;
use attnforge_runtime::exec::Backend;
use attnforge_runtime::gpu_available;

fn gpu_or_skip(test: &str) -> bool {
    if gpu_available() {
        true
    } else {
        println!("{test}: no GPU (no libcuda or no CUDA device): nothing to check on this machine");
        false
    }
}

fn gpu_suite(cases: Vec<tc_cases::TcCase>) {
    let mut bad = Vec::new();
    for c in &cases {
        match tc_cases::run_case(c, &Backend::Cuda(0)) {
            Ok(r) => println!("{}: max |out - ref| = {:e}", c.name, r.close.out.max_err),
            Err(e) => bad.push(format!("{}: {e}", c.name)),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} GPU runs failed:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn gpu_tensor_core_f16_d64() {
    if gpu_or_skip("gpu_tensor_core_f16_d64") {
        gpu_suite(tc_cases::variants(DType::F16, HeadDim::D64));
    }
}

#[test]
fn gpu_tensor_core_bf16_d64() {
    if gpu_or_skip("gpu_tensor_core_bf16_d64") {
        gpu_suite(tc_cases::variants(DType::Bf16, HeadDim::D64));
    }
}

#[test]
fn gpu_tensor_core_f16_d128() {
    if gpu_or_skip("gpu_tensor_core_f16_d128") {
        gpu_suite(tc_cases::variants(DType::F16, HeadDim::D128));
    }
}

#[test]
fn gpu_tensor_core_bf16_d128() {
    if gpu_or_skip("gpu_tensor_core_bf16_d128") {
        gpu_suite(tc_cases::variants(DType::Bf16, HeadDim::D128));
    }
}

#[test]
fn gpu_tensor_core_d256_and_sq_gt_sk() {
    if gpu_or_skip("gpu_tensor_core_d256_and_sq_gt_sk") {
        let mut v = tc_cases::extra(DType::F16);
        v.extend(tc_cases::extra(DType::Bf16));
        gpu_suite(v);
    }
}

// The Hopper warpgroup-MMA (sm_90a) suites: the device must be compute capability 9.0 (the
// H200 of gpu/run.sh); elsewhere the run reports an input error naming `tile.wgmma`.
#[test]
fn gpu_wgmma_f16_d64() {
    if gpu_or_skip("gpu_wgmma_f16_d64") {
        gpu_suite(tc_cases::wgmma_variants(DType::F16, HeadDim::D64));
    }
}

#[test]
fn gpu_wgmma_bf16_d64() {
    if gpu_or_skip("gpu_wgmma_bf16_d64") {
        gpu_suite(tc_cases::wgmma_variants(DType::Bf16, HeadDim::D64));
    }
}

#[test]
fn gpu_wgmma_f16_d128() {
    if gpu_or_skip("gpu_wgmma_f16_d128") {
        gpu_suite(tc_cases::wgmma_variants(DType::F16, HeadDim::D128));
    }
}

#[test]
fn gpu_wgmma_bf16_d128() {
    if gpu_or_skip("gpu_wgmma_bf16_d128") {
        gpu_suite(tc_cases::wgmma_variants(DType::Bf16, HeadDim::D128));
    }
}

/// The warpgroup-MMA tiles `gpu/bench.py` times next to the default tile.
/// `(block_m, block_n, stages, producer warpgroup)`; 3 stages or a producer warpgroup
/// software-pipeline the loop.
const BENCH_WGMMA_TILES: [(usize, usize, usize, bool); 6] = [
    (128, 128, 2, false),
    (128, 128, 3, false),
    (64, 128, 2, false),
    (128, 128, 2, true),
    (128, 128, 3, true),
    (64, 128, 3, true),
];

/// Writes the benchmark kernels when `ATTNFORGE_EMIT_DIR` is set (by `gpu/build.sh`): the
/// default tile for sm_90 (canonical name) and the warpgroup-MMA tiles (name with the tile
/// suffix, compiled for sm_90a); always checks which mainloop each one is.
#[test]
fn emit_bench_kernels() {
    let dir = std::env::var_os("ATTNFORGE_EMIT_DIR");
    let write = |k: &attnforge_codegen::emit::EmittedKernel| {
        if let Some(dir) = &dir {
            let dir = std::path::Path::new(dir);
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{}.cu", k.name)), &k.source).unwrap();
            std::fs::write(
                dir.join(format!("{}.json", k.name)),
                serde_json::to_string_pretty(&k.metadata).unwrap(),
            )
            .unwrap();
        }
    };
    for mask in [Mask::Full, Mask::Causal] {
        for d in [HeadDim::D64, HeadDim::D128] {
            let spec = KernelSpec::new(DType::Bf16, d, mask.clone(), ScoreMod::None);
            let tile = default_tile(&spec, Arch::Sm90).unwrap();
            assert_eq!(
                attnforge_codegen::tile::Mainloop::select(&spec, &tile),
                attnforge_codegen::tile::Mainloop::TensorCore
            );
            write(&emit(&spec, &tile, Arch::Sm90).unwrap());
            for (bm, bn, st, ws) in BENCH_WGMMA_TILES {
                let tile = if ws {
                    TileConfig::wgmma_specialized(bm, bn, st)
                } else {
                    TileConfig::wgmma(bm, bn, st)
                };
                if tile.valid(&spec, Arch::Sm90).is_err() {
                    continue; // over a limit at this head dimension
                }
                assert_eq!(
                    attnforge_codegen::tile::Mainloop::select(&spec, &tile),
                    attnforge_codegen::tile::Mainloop::Wgmma
                );
                let style = attnforge_codegen::emit::SymbolStyle::WithTile;
                write(
                    &attnforge_codegen::emit::emit_with(&spec, &tile, Arch::Sm90, style).unwrap(),
                );
            }
        }
    }
}

/// Deterministic inputs in [-amp, amp) (xorshift), rounded to `T`.
fn uniform<T: attnforge_reference::Element>(
    shape: attnforge_reference::Shape4,
    amp: f64,
    seed: u64,
) -> attnforge_reference::Tensor4<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    attnforge_reference::Tensor4::from_fn(shape, |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T::from_f64(amp * (2.0 * ((x >> 11) as f64 / (1u64 << 53) as f64) - 1.0))
    })
}

/// The backward kernels (variants.md section 12) on the GPU against the reference's
/// backward, then their time next to the forward's at B 1, H 16, S 4096 (bf16, d 128):
/// the FMA backward (f32 arithmetic) is a correctness path, not yet a fast one.
#[test]
fn gpu_backward() {
    use attnforge_codegen::backward::BackwardTile;
    use attnforge_reference::Shape4;
    use attnforge_runtime::exec::{Inputs, RunParams};
    use attnforge_runtime::exec_backward::{check_backward, run_backward_cuda, Upstream};
    if !gpu_or_skip("gpu_backward") {
        return;
    }
    let cases = [
        (
            KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None).with_gqa(),
            4,
            2,
            200,
            333,
        ),
        (
            KernelSpec::new(DType::F16, HeadDim::D64, Mask::Local, ScoreMod::Alibi),
            2,
            2,
            150,
            150,
        ),
        (
            KernelSpec::new(DType::F32, HeadDim::D64, Mask::Full, ScoreMod::Softcap),
            2,
            2,
            77,
            190,
        ),
        (
            KernelSpec::new(DType::Bf16, HeadDim::D256, Mask::Causal, ScoreMod::None),
            2,
            2,
            100,
            100,
        ),
    ];
    let mut bad = Vec::new();
    for (spec, hq, hkv, sq, sk) in cases {
        let d = spec.head_dim.get();
        let mut p = RunParams::default();
        if spec.mask == Mask::Local {
            p.mask = Some(
                MaskParams::new()
                    .with("window_left", 40)
                    .with("window_right", 5),
            );
        }
        if spec.score == ScoreMod::Softcap {
            p.softcap = Some(5.0);
        }
        let tile = default_tile(&spec, Arch::Sm90).unwrap();
        // the tile the CLI uses: the tensor-core form for f16/bf16 at d 64/128
        let bt = BackwardTile::for_spec(&spec);
        let name = spec.canonical_name();
        let r = match spec.dtype {
            DType::Bf16 => {
                let x = Inputs::new(
                    uniform::<half::bf16>(Shape4::new(2, hq, sq, d), 2.0, 1),
                    uniform(Shape4::new(2, hkv, sk, d), 2.0, 2),
                    uniform(Shape4::new(2, hkv, sk, d), 1.0, 3),
                );
                let dout = uniform::<half::bf16>(Shape4::new(2, hq, sq, d), 1.0, 4);
                check_backward(
                    &spec,
                    &tile,
                    &bt,
                    &x,
                    Upstream {
                        dout: &dout,
                        dlse: None,
                    },
                    &p,
                    &Backend::Cuda(0),
                )
                .map(|r| r.1)
            }
            DType::F16 => {
                let x = Inputs::new(
                    uniform::<half::f16>(Shape4::new(2, hq, sq, d), 2.0, 1),
                    uniform(Shape4::new(2, hkv, sk, d), 2.0, 2),
                    uniform(Shape4::new(2, hkv, sk, d), 1.0, 3),
                );
                let dout = uniform::<half::f16>(Shape4::new(2, hq, sq, d), 1.0, 4);
                check_backward(
                    &spec,
                    &tile,
                    &bt,
                    &x,
                    Upstream {
                        dout: &dout,
                        dlse: None,
                    },
                    &p,
                    &Backend::Cuda(0),
                )
                .map(|r| r.1)
            }
            DType::F32 => {
                let x = Inputs::new(
                    uniform::<f32>(Shape4::new(2, hq, sq, d), 2.0, 1),
                    uniform(Shape4::new(2, hkv, sk, d), 2.0, 2),
                    uniform(Shape4::new(2, hkv, sk, d), 1.0, 3),
                );
                let dout = uniform::<f32>(Shape4::new(2, hq, sq, d), 1.0, 4);
                let dlse: Vec<f32> = (0..2 * hq * sq)
                    .map(|i| (i % 7) as f32 * 0.1 - 0.3)
                    .collect();
                check_backward(
                    &spec,
                    &tile,
                    &bt,
                    &x,
                    Upstream {
                        dout: &dout,
                        dlse: Some(&dlse),
                    },
                    &p,
                    &Backend::Cuda(0),
                )
                .map(|r| r.1)
            }
        };
        match r {
            Ok(checks) => println!("gpu_backward {name}: {checks:?}"),
            Err(e) => bad.push(format!("{name}: {e}")),
        }
    }
    // time: forward vs the three backward kernels, bf16 d128, B 1, H 16, S 4096
    for mask in [Mask::Full, Mask::Causal] {
        let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, mask, ScoreMod::None);
        let tile = default_tile(&spec, Arch::Sm90).unwrap();
        let (h, s, d) = (16, 4096, 128);
        let x = Inputs::new(
            uniform::<half::bf16>(Shape4::new(1, h, s, d), 1.0, 5),
            uniform(Shape4::new(1, h, s, d), 1.0, 6),
            uniform(Shape4::new(1, h, s, d), 1.0, 7),
        );
        let dout = uniform::<half::bf16>(Shape4::new(1, h, s, d), 1.0, 8);
        let up = Upstream {
            dout: &dout,
            dlse: None,
        };
        let bt = BackwardTile::for_spec(&spec);
        match run_backward_cuda(&spec, &tile, &bt, &x, up, &RunParams::default(), 5, 0) {
            Ok((_, (f, b))) => {
                let causal = if spec.mask == Mask::Causal { 0.5 } else { 1.0 };
                let flops = 4.0 * (h * s * s * d) as f64 * causal;
                println!(
                    "gpu_backward time {}: B1 H{h} S{s}: forward {:.3} ms ({:.1} TFLOP/s), backward {:.3} ms ({:.1} TFLOP/s at 2.5x the forward's FLOPs)",
                    spec.canonical_name(), f * 1e3, flops / f / 1e12, b * 1e3, 2.5 * flops / b / 1e12
                );
            }
            Err(e) => bad.push(format!("timing {}: {e}", spec.canonical_name())),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
