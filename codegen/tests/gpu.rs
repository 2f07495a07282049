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
