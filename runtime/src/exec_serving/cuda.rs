//! The GPU path of the serving layouts: the same resolved arguments as the simulator's
//! ([`super::host_args`]), compiled with NVRTC for the device's architecture, launched through
//! the checked [`GpuKernel::launch`], then the split-KV merge kernel after a split decode.
//! Wired and compiled here; it has not run on a GPU yet (none was lent since it was written).

use attnforge_codegen::args::LaunchGeometry;
use attnforge_codegen::emit::{emit, emit_split_merge, MERGE_THREADS};
use attnforge_codegen::spec::KernelSpec;
use attnforge_codegen::tile::TileConfig;
use attnforge_reference::{Element, Precision, VarlenOutput};
use cudarc::driver::CudaSlice;

use super::{
    host_args, launch_geometry, reference_resolved, resolve, split_partials, LayoutArg,
    ServingInputs, ServingReport,
};
use crate::exec::host::HostArg;
use crate::exec::ExecError;
use crate::exec_cuda::{bytes_of, cuda_err, download, signature, time_calls, upload};
use crate::pipeline::{compare, Execution};
use crate::{
    compile_with_cached, device_ptr, Arch, ArgDecl, ArgKind, CompileOptions, Gpu, GpuKernel,
    KernelArgValue, LaunchConfig,
};

/// Device buffers of one serving launch, kept alive while the kernels may run.
struct Buffers {
    o: CudaSlice<u8>,
    lse: CudaSlice<u8>,
    o_part: CudaSlice<u8>,
    lse_part: CudaSlice<u8>,
    keep: Vec<CudaSlice<u8>>,
}

/// The kernel's argument values, in signature order, with the buffers they point into.
fn argument_values<T: Element>(
    gpu: &Gpu,
    x: &ServingInputs<T>,
    args: &[LayoutArg],
    (hq, d, parts): (usize, usize, usize),
) -> Result<(Vec<KernelArgValue>, Buffers), ExecError> {
    let tq = x.q.tokens;
    let zeros = |n: usize| upload(gpu, &vec![0u8; n]);
    let (kd, vd) = x.kv_data();
    let q = upload(gpu, bytes_of(&x.q.data))?;
    let k = upload(gpu, bytes_of(kd))?;
    let v = upload(gpu, bytes_of(vd))?;
    let mut b = Buffers {
        o: zeros(tq * hq * d * std::mem::size_of::<T>())?,
        lse: zeros(hq * tq * 4)?,
        o_part: zeros(parts * tq * hq * d * 4)?,
        lse_part: zeros(parts * hq * tq * 4)?,
        keep: Vec::new(),
    };
    let ptr = |s: &CudaSlice<u8>| KernelArgValue::DevPtr(device_ptr(gpu, s));
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(match a {
            LayoutArg::OutPartial => ptr(&b.o_part),
            LayoutArg::LsePartial => ptr(&b.lse_part),
            LayoutArg::Host(HostArg::Q) => ptr(&q),
            LayoutArg::Host(HostArg::K) => ptr(&k),
            LayoutArg::Host(HostArg::V) => ptr(&v),
            LayoutArg::Host(HostArg::O) => ptr(&b.o),
            LayoutArg::Host(HostArg::Lse) => ptr(&b.lse),
            LayoutArg::Host(HostArg::Ints(a)) => {
                let s = upload(gpu, bytes_of(a))?;
                let p = ptr(&s);
                b.keep.push(s);
                p
            }
            LayoutArg::Host(HostArg::Floats(a)) => {
                let s = upload(gpu, bytes_of(a))?;
                let p = ptr(&s);
                b.keep.push(s);
                p
            }
            LayoutArg::Host(HostArg::I32(v)) => KernelArgValue::I32(*v),
            LayoutArg::Host(HostArg::I64(v)) => KernelArgValue::I64(*v),
            LayoutArg::Host(HostArg::F32(v)) => KernelArgValue::F32(*v),
            // validate_spec refuses statistics with a serving layout
            LayoutArg::Host(HostArg::StatsPartial) => KernelArgValue::DevPtr(0),
        });
    }
    b.keep.extend([q, k, v]);
    Ok((values, b))
}

/// The split-KV merge kernel compiled for `arch` and loaded, with its launch.
fn merge_kernel(
    gpu: &Gpu,
    spec: &KernelSpec,
    arch: Arch,
    rows: usize,
) -> Result<(GpuKernel, LaunchConfig), ExecError> {
    let m = emit_split_merge(spec.dtype, spec.head_dim);
    let compiled =
        compile_with_cached(&m.source, &m.name, &CompileOptions::new(arch)).map_err(cuda_err)?;
    let decls = [
        ("o_part", ArgKind::DevPtr),
        ("lse_part", ArgKind::DevPtr),
        ("o", ArgKind::DevPtr),
        ("lse", ArgKind::DevPtr),
        ("num_splits", ArgKind::I32),
        ("tokens", ArgKind::I32),
        ("heads", ArgKind::I32),
    ]
    .into_iter()
    .map(|(n, k)| ArgDecl::new(n, k))
    .collect();
    let kernel = GpuKernel::load(gpu, &compiled, decls).map_err(cuda_err)?;
    let cfg = LaunchConfig {
        grid: [rows.div_ceil(MERGE_THREADS / 32) as u32, 1, 1],
        block: [MERGE_THREADS as u32, 1, 1],
        dynamic_smem_bytes: 0,
    };
    Ok((kernel, cfg))
}

fn launch_config(g: &LaunchGeometry) -> LaunchConfig {
    LaunchConfig {
        grid: g.grid,
        block: g.block,
        dynamic_smem_bytes: g.dynamic_smem_bytes,
    }
}

/// Run the spec's serving kernel on GPU `ordinal` (after a split decode, the merge kernel
/// too): the layout arrays are checked on the host first, nothing runs on bad input. Returns
/// `out: [Tq, Hq, D]`, `lse: [Hq, Tq]` as the kernels wrote them, and the seconds per step
/// (kernel and merge) averaged over `timed` further synchronized runs (0 when `timed` is 0).
pub fn run_cuda<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &crate::exec::RunParams,
    timed: usize,
    ordinal: usize,
) -> Result<(VarlenOutput, f64), ExecError> {
    let r = resolve(spec, Some(tile), x, p)?;
    let args = host_args(spec, x, p, &r)?;
    let gpu = Gpu::new(ordinal).map_err(cuda_err)?;
    let (major, _) = gpu.compute_capability();
    let arch = Arch::for_capability(major);
    let k = emit(spec, tile, arch).map_err(ExecError::Spec)?;
    let compiled = compile_with_cached(&k.source, &k.name, &CompileOptions::for_tile(arch, tile))
        .map_err(cuda_err)?;
    let kernel = GpuKernel::load(&gpu, &compiled, signature(spec)).map_err(cuda_err)?;
    let (hq, d, tq) = (r.heads_q, spec.head_dim.get(), x.q.tokens);
    let parts = split_partials(spec, &r);
    let (values, b) = argument_values(&gpu, x, &args, (hq, d, parts))?;
    let cfg = launch_config(&launch_geometry(spec, tile, &r));
    let merge = if parts > 0 {
        let (mk, mcfg) = merge_kernel(&gpu, spec, arch, tq * hq)?;
        let mvalues = vec![
            KernelArgValue::DevPtr(device_ptr(&gpu, &b.o_part)),
            KernelArgValue::DevPtr(device_ptr(&gpu, &b.lse_part)),
            KernelArgValue::DevPtr(device_ptr(&gpu, &b.o)),
            KernelArgValue::DevPtr(device_ptr(&gpu, &b.lse)),
            KernelArgValue::I32(parts as i32),
            KernelArgValue::I32(tq as i32),
            KernelArgValue::I32(hq as i32),
        ];
        Some((mk, mcfg, mvalues))
    } else {
        None
    };
    let empty = cfg.grid.contains(&0);
    let step = || -> Result<(), ExecError> {
        if empty {
            return Ok(()); // no sequence has query rows: nothing to launch
        }
        kernel.launch(&cfg, &values).map_err(cuda_err)?;
        if let Some((mk, mcfg, mvalues)) = &merge {
            mk.launch(mcfg, mvalues).map_err(cuda_err)?;
        }
        Ok(())
    };
    step()?;
    gpu.synchronize().map_err(cuda_err)?;
    let seconds = time_calls(&gpu, timed, &step)?;
    let o: Vec<T> = download(&gpu, &b.o, tq * hq * d)?;
    let lse: Vec<f32> = download(&gpu, &b.lse, hq * tq)?;
    drop(b.keep);
    let output = VarlenOutput {
        out: o.iter().map(|e| e.to_f64()).collect(),
        lse: lse.iter().map(|&e| f64::from(e)).collect(),
        tokens: tq,
        heads: hq,
        dim: d,
    };
    Ok((output, seconds))
}

/// [`super::check`] on GPU `ordinal`: the kernels' output against the per-sequence
/// reference by the same oracle (reference first: bad input is an error before any launch).
pub fn check_cuda<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &crate::exec::RunParams,
    ordinal: usize,
) -> Result<ServingReport, ExecError> {
    let r = resolve(spec, Some(tile), x, p)?;
    let want = reference_resolved(spec, x, p, &r, Precision::F64)?.to_attn_output();
    let naive = reference_resolved(spec, x, p, &r, Precision::Naive)?.to_attn_output();
    let (out, _) = run_cuda(spec, tile, x, p, 0, ordinal)?;
    let name = attnforge_codegen::name::canonical_name_with_tile(spec, tile);
    let exec = Execution {
        output: out.to_attn_output(),
        counters: None,
        dense_tiles: None,
        stages: Vec::new(),
        indices: Default::default(),
    };
    compare(&name, spec.dtype, exec, &want, &naive)
}
