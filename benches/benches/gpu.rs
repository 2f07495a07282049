//! Generated kernels on a GPU, timed with CUDA events (`attnforge_autotune::measure::CudaEvents`,
//! device time between events around each batch of launches). Dense kernels (full, causal;
//! FMA f32 and tensor-core f16/bf16) at B = 4, H = 16, S = 2048, default tile for the
//! device's architecture. Each kernel is first checked against the f64 reference on a small
//! problem (`exec::check` with `Backend::Cuda(0)`); a kernel that fails is reported and not
//! timed.
//!
//! Without a GPU (`attnforge_runtime::gpu_available()` false) the bench prints why and exits 0.

use std::time::Duration;

use attnforge_autotune::measure::CudaEvents;
use attnforge_autotune::workload::{default_params, inputs, Shape};
use attnforge_benches::quick_criterion;
use attnforge_codegen::args::{kernel_args, LaunchGeometry};
use attnforge_codegen::catalog::find;
use attnforge_codegen::prelude::{default_tile, emit, DType, KernelSpec};
use attnforge_reference::Element;
use attnforge_runtime::exec::{check, Backend, Inputs};
use attnforge_runtime::sim::SimElem;
use attnforge_runtime::{
    compile, device_ptr, gpu_available, Arch, ArgDecl, ArgKind, Gpu, GpuKernel, KernelArgValue,
    LaunchConfig,
};
use criterion::{BenchmarkId, Criterion};
use half::{bf16, f16};

const KERNELS: [&str; 4] = [
    "flash_fwd_full_d64_f32",
    "flash_fwd_causal_d64_f16",
    "flash_fwd_full_d128_bf16",
    "flash_fwd_causal_d128_bf16",
];
const BATCH: usize = 4;
const HEADS: usize = 16;
const SEQ: usize = 2048;

/// Deterministic inputs in [-1, 1) as the device bytes of `dtype`.
fn device_bytes(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
            DType::Bf16 => out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes()),
        }
    }
    out
}

fn check_on_gpu<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &attnforge_codegen::prelude::TileConfig,
) -> Result<f64, String> {
    let shape = Shape::for_spec(spec, 1, 2, 97);
    let x: Inputs<T> = inputs(spec, &shape, 5);
    let p = default_params(spec, &shape);
    check(spec, tile, &x, &p, &Backend::Cuda(0))
        .map(|r| r.close.out.max_err)
        .map_err(|e| e.to_string())
}

fn gpu_benches(c: &mut Criterion<CudaEvents>, gpu: &Gpu) {
    let (major, _) = gpu.compute_capability();
    let arch = Arch::for_capability(major);
    let mut g = c.benchmark_group("gpu");
    for name in KERNELS {
        let spec = find(name).unwrap_or_else(|| panic!("`{name}` is not in the catalog"));
        let tile = default_tile(&spec, arch).expect("default tile");
        let checked = match spec.dtype {
            DType::F32 => check_on_gpu::<f32>(&spec, &tile),
            DType::F16 => check_on_gpu::<f16>(&spec, &tile),
            DType::Bf16 => check_on_gpu::<bf16>(&spec, &tile),
        };
        if let Err(e) = checked {
            println!("gpu bench: {name} not timed: the check against the reference failed: {e}");
            continue;
        }
        let k = emit(&spec, &tile, arch).expect("emit");
        let compiled = compile(&k.source, &k.name, arch).expect("NVRTC compile");
        let args = kernel_args(&spec);
        let sig: Vec<ArgDecl> = args
            .iter()
            .map(|a| {
                let kind = match a.kind {
                    attnforge_codegen::args::ArgKind::Ptr { .. } => ArgKind::DevPtr,
                    attnforge_codegen::args::ArgKind::Scalar(s) => match s {
                        attnforge_codegen::args::Scalar::I32 => ArgKind::I32,
                        attnforge_codegen::args::Scalar::I64 => ArgKind::I64,
                        attnforge_codegen::args::Scalar::F32 => ArgKind::F32,
                    },
                };
                ArgDecl::new(a.name.clone(), kind)
            })
            .collect();
        let kernel = GpuKernel::load(gpu, &compiled, sig).expect("load the kernel");
        let hkv = if spec.gqa { HEADS / 4 } else { HEADS };
        let d = spec.head_dim.get();
        let elem = spec.dtype.bytes();
        let stream = gpu.stream();
        let q = stream
            .clone_htod(&device_bytes(spec.dtype, BATCH * HEADS * SEQ * d, 1))
            .expect("upload q");
        let kk = stream
            .clone_htod(&device_bytes(spec.dtype, BATCH * hkv * SEQ * d, 2))
            .expect("upload k");
        let v = stream
            .clone_htod(&device_bytes(spec.dtype, BATCH * hkv * SEQ * d, 3))
            .expect("upload v");
        let o = stream
            .alloc_zeros::<u8>(BATCH * HEADS * SEQ * d * elem)
            .expect("alloc o");
        let lse = stream
            .alloc_zeros::<u8>(BATCH * HEADS * SEQ * 4)
            .expect("alloc lse");
        let strides = |h: usize| [(h * SEQ * d) as i64, (SEQ * d) as i64, d as i64];
        let mut values = Vec::with_capacity(args.len());
        let mut unsupported = None;
        for a in &args {
            let n = a.name.as_str();
            values.push(match n {
                "q" => KernelArgValue::DevPtr(device_ptr(gpu, &q)),
                "k" => KernelArgValue::DevPtr(device_ptr(gpu, &kk)),
                "v" => KernelArgValue::DevPtr(device_ptr(gpu, &v)),
                "o" => KernelArgValue::DevPtr(device_ptr(gpu, &o)),
                "lse" => KernelArgValue::DevPtr(device_ptr(gpu, &lse)),
                "batch" => KernelArgValue::I32(BATCH as i32),
                "heads_q" => KernelArgValue::I32(HEADS as i32),
                "heads_kv" => KernelArgValue::I32(hkv as i32),
                "seq_q" | "seq_k" => KernelArgValue::I32(SEQ as i32),
                "scale" => KernelArgValue::F32(spec.effective_scale()),
                _ if n.contains("_stride_") => {
                    let heads = if n.starts_with('k') || n.starts_with('v') {
                        hkv
                    } else {
                        HEADS
                    };
                    let s = strides(heads);
                    KernelArgValue::I64(match n.chars().last() {
                        Some('b') => s[0],
                        Some('h') => s[1],
                        _ => s[2],
                    })
                }
                _ => {
                    unsupported = Some(n.to_owned());
                    break;
                }
            });
        }
        if let Some(n) = unsupported {
            println!("gpu bench: {name} not timed: argument `{n}` is not set up by this bench");
            continue;
        }
        let geo = LaunchGeometry::new(&spec, &tile, BATCH, HEADS, SEQ);
        let cfg = LaunchConfig {
            grid: geo.grid,
            block: geo.block,
            dynamic_smem_bytes: geo.dynamic_smem_bytes,
        };
        kernel.launch(&cfg, &values).expect("first launch");
        gpu.synchronize().expect("first launch completes");
        g.bench_function(BenchmarkId::from_parameter(&k.name), |b| {
            b.iter(|| kernel.launch(&cfg, &values).expect("launch"))
        });
        gpu.synchronize().expect("launches complete");
        drop((q, kk, v, o, lse));
    }
    g.finish();
}

fn main() {
    if !gpu_available() {
        let why = Gpu::new(0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "device 0 could not be opened".to_owned());
        println!("gpu bench skipped: no CUDA GPU on this machine ({why}); nothing was timed");
        return;
    }
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("gpu bench skipped: {e}");
            return;
        }
    };
    let mut c = quick_criterion()
        .warm_up_time(Duration::from_millis(500))
        .with_measurement(CudaEvents::new(&gpu))
        .configure_from_args();
    gpu_benches(&mut c, &gpu);
    c.final_summary();
}
