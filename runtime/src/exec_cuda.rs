//! The GPU backend of [`crate::exec`]: compile with NVRTC for the device's architecture,
//! copy the inputs, launch through the checked [`GpuKernel::launch`], copy the outputs back.

use attnforge_codegen::args::{kernel_args, ArgKind as CgArgKind, LaunchGeometry};
use attnforge_codegen::emit::emit;
use attnforge_codegen::spec::KernelSpec;
use attnforge_codegen::tile::TileConfig;
use attnforge_reference::{AttnOutput, Element, Shape4};
use cudarc::driver::CudaSlice;

use crate::exec::host::HostArg;
use crate::exec::{ExecError, Inputs};
use crate::{
    compile_with_cached, device_ptr, Arch, ArgDecl, ArgKind, CompileOptions, Gpu, GpuKernel,
    KernelArgValue, LaunchConfig,
};
use attnforge_codegen::shape::Shape;

fn cuda_err(e: impl std::fmt::Display) -> ExecError {
    ExecError::Cuda(e.to_string())
}

fn bytes_of<T: Copy>(data: &[T]) -> &[u8] {
    // SAFETY: T is a plain numeric type (f32, f16, bf16, i32); reading its bytes is sound.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// Map codegen's argument kinds onto the launcher's.
pub(crate) fn signature(spec: &KernelSpec) -> Vec<ArgDecl> {
    kernel_args(spec)
        .into_iter()
        .map(|a| {
            let kind = match a.kind {
                CgArgKind::Ptr { .. } => ArgKind::DevPtr,
                CgArgKind::Scalar(attnforge_codegen::args::Scalar::I32) => ArgKind::I32,
                CgArgKind::Scalar(attnforge_codegen::args::Scalar::I64) => ArgKind::I64,
                CgArgKind::Scalar(attnforge_codegen::args::Scalar::F32) => ArgKind::F32,
            };
            ArgDecl::new(a.name, kind)
        })
        .collect()
}

/// A kernel compiled for and loaded on a GPU, with its inputs and outputs in device memory:
/// [`CudaPrepared::launch`] runs it again (for timing), [`CudaPrepared::output`] copies the
/// results back.
pub struct CudaPrepared {
    gpu: Gpu,
    kernel: GpuKernel,
    cfg: LaunchConfig,
    values: Vec<KernelArgValue>,
    o: CudaSlice<u8>,
    lse: CudaSlice<u8>,
    // Inputs and argument arrays: kept alive while the kernel may run.
    _inputs: Vec<CudaSlice<u8>>,
    out_elems: usize,
    rows: usize,
    shape: Shape4,
}

impl std::fmt::Debug for CudaPrepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPrepared")
            .field("kernel", &self.kernel.name())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl CudaPrepared {
    /// The GPU the kernel is loaded on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Launch grid, block and dynamic shared memory.
    pub fn config(&self) -> &LaunchConfig {
        &self.cfg
    }

    /// Enqueue one launch on the GPU's stream (checked against the declared signature;
    /// asynchronous: synchronize through [`Gpu::synchronize`] or [`CudaPrepared::output`]).
    pub fn launch(&self) -> Result<(), ExecError> {
        self.kernel
            .launch(&self.cfg, &self.values)
            .map_err(cuda_err)
    }

    /// Wait for the GPU and copy `out` and `lse` back.
    pub fn output<T: Element>(&self) -> Result<AttnOutput, ExecError> {
        self.gpu.synchronize().map_err(cuda_err)?;
        let stream = self.gpu.stream();
        let o_bytes = stream.clone_dtoh(&self.o).map_err(cuda_err)?;
        let lse_bytes = stream.clone_dtoh(&self.lse).map_err(cuda_err)?;
        let o_vals: Vec<T> = o_bytes
            .chunks_exact(std::mem::size_of::<T>())
            .take(self.out_elems)
            // SAFETY: the chunk holds exactly one T written by the kernel.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
            .collect();
        let lse_vals: Vec<f32> = lse_bytes
            .chunks_exact(4)
            .take(self.rows)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(AttnOutput::from_kernel(self.shape, &o_vals, &lse_vals)?)
    }
}

pub(crate) fn prepare<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    args: &[HostArg],
    d: Shape,
    ordinal: usize,
) -> Result<CudaPrepared, ExecError> {
    let gpu = Gpu::new(ordinal).map_err(cuda_err)?;
    let (major, _minor) = gpu.compute_capability();
    let arch = Arch::for_capability(major);
    if tile.wgmma && major != 9 {
        // sm_90a code runs on compute capability 9.0 only (not forward compatible)
        return Err(crate::exec::input_err(
            "tile.wgmma",
            format!("a warpgroup-MMA (sm_90a) tile needs a Hopper GPU; device {ordinal} has compute capability {major}.x"),
            "use a tile without wgmma on this device",
        ));
    }
    let k = emit(spec, tile, arch).map_err(ExecError::Spec)?;
    // Through the persistent kernel cache: a kernel compiled before is not compiled again.
    let compiled = compile_with_cached(&k.source, &k.name, &CompileOptions::for_tile(arch, tile))
        .map_err(cuda_err)?;
    let kernel = GpuKernel::load(&gpu, &compiled, signature(spec)).map_err(cuda_err)?;
    let stream = gpu.stream().clone();
    let up = |b: &[u8]| -> Result<CudaSlice<u8>, ExecError> {
        // Never allocate zero bytes: keep a valid (unused) address for empty arrays.
        let mut v = b.to_vec();
        if v.is_empty() {
            v.push(0);
        }
        stream.clone_htod(&v).map_err(cuda_err)
    };
    let out_elems = d.batch * d.heads_q * d.seq_q * spec.head_dim.get();
    let rows = d.batch * d.heads_q * d.seq_q;
    let q = up(bytes_of(&x.q.data))?;
    let kk = up(bytes_of(&x.k.data))?;
    let v = up(bytes_of(&x.v.data))?;
    let o = up(&vec![0u8; out_elems * std::mem::size_of::<T>()])?;
    let lse = up(&vec![0u8; rows * 4])?;
    let mut keep: Vec<CudaSlice<u8>> = Vec::new();
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(match a {
            HostArg::Q => KernelArgValue::DevPtr(device_ptr(&gpu, &q)),
            HostArg::K => KernelArgValue::DevPtr(device_ptr(&gpu, &kk)),
            HostArg::V => KernelArgValue::DevPtr(device_ptr(&gpu, &v)),
            HostArg::O => KernelArgValue::DevPtr(device_ptr(&gpu, &o)),
            HostArg::Lse => KernelArgValue::DevPtr(device_ptr(&gpu, &lse)),
            HostArg::Ints(a) => {
                let s = up(bytes_of(a))?;
                let p = device_ptr(&gpu, &s);
                keep.push(s);
                KernelArgValue::DevPtr(p)
            }
            HostArg::Floats(a) => {
                let s = up(bytes_of(a))?;
                let p = device_ptr(&gpu, &s);
                keep.push(s);
                KernelArgValue::DevPtr(p)
            }
            HostArg::I32(v) => KernelArgValue::I32(*v),
            HostArg::I64(v) => KernelArgValue::I64(*v),
            HostArg::F32(v) => KernelArgValue::F32(*v),
        });
    }
    keep.extend([q, kk, v]);
    let geo = LaunchGeometry::new(spec, tile, d.batch, d.heads_q, d.seq_q);
    let cfg = LaunchConfig {
        grid: geo.grid,
        block: geo.block,
        dynamic_smem_bytes: geo.dynamic_smem_bytes,
    };
    Ok(CudaPrepared {
        gpu,
        kernel,
        cfg,
        values,
        o,
        lse,
        _inputs: keep,
        out_elems,
        rows,
        shape: Shape4::new(d.batch, d.heads_q, d.seq_q, spec.head_dim.get()),
    })
}

pub(crate) fn run<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    args: &[HostArg],
    d: Shape,
    ordinal: usize,
) -> Result<AttnOutput, ExecError> {
    let p = prepare(spec, tile, x, args, d, ordinal)?;
    p.launch()?;
    p.output::<T>()
}

/// What the backward kernels wrote on the GPU, copied back.
pub(crate) struct CudaGrads<T> {
    pub(crate) forward: AttnOutput,
    pub(crate) dq: Vec<T>,
    pub(crate) dk: Vec<T>,
    pub(crate) dv: Vec<T>,
    pub(crate) dparam: Vec<f32>,
    /// Seconds per forward and per backward (the three kernels), averaged over timed runs.
    pub(crate) seconds: (f64, f64),
}

/// A device buffer of `n` zeroed `T`s (at least one byte).
fn zeros(gpu: &Gpu, n_bytes: usize) -> Result<CudaSlice<u8>, ExecError> {
    gpu.stream()
        .clone_htod(&vec![0u8; n_bytes.max(1)])
        .map_err(cuda_err)
}

/// The forward kernel, then the three backward kernels of `bwd` on GPU `ordinal`. `grads`
/// lists the backward arguments after the forward's; `timed` extra runs of each measure
/// their time (wall clock around synchronized launches).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    bwd: &attnforge_codegen::backward::BackwardKernels,
    x: &Inputs<T>,
    args: &[HostArg],
    d: Shape,
    up: (&[T], Option<&[f32]>),
    tlists: Option<&attnforge_codegen::blocks::BlockLists>,
    (theta, theta_len, dparam_len): (&[i32], usize, usize),
    timed: usize,
    ordinal: usize,
) -> Result<CudaGrads<T>, ExecError> {
    use attnforge_codegen::args::BlockListPart;
    use attnforge_codegen::backward::{grad_args, GradArg, DELTA_WARPS};
    let p = prepare(spec, tile, x, args, d, ordinal)?;
    let gpu = &p.gpu;
    let (major, _) = gpu.compute_capability();
    let arch = Arch::for_capability(major);
    let dim = spec.head_dim.get();
    let t = std::mem::size_of::<T>();
    let q_elems = d.batch * d.heads_q * d.seq_q * dim;
    let kv_elems = d.batch * d.heads_kv * d.seq_k * dim;
    let rows = d.batch * d.heads_q * d.seq_q;
    let stream = gpu.stream().clone();
    let up_bytes = |b: &[u8]| -> Result<CudaSlice<u8>, ExecError> {
        let mut v = b.to_vec();
        if v.is_empty() {
            v.push(0);
        }
        stream.clone_htod(&v).map_err(cuda_err)
    };
    let dout = up_bytes(bytes_of(up.0))?;
    let dlse = up.1.map(|l| up_bytes(bytes_of(l))).transpose()?;
    let delta = zeros(gpu, rows * 4)?;
    let dq = zeros(gpu, q_elems * t)?;
    let dk = zeros(gpu, kv_elems * t)?;
    let dv = zeros(gpu, kv_elems * t)?;
    let dparam = zeros(gpu, dparam_len * 4)?;
    let mut keep = Vec::new();
    let mut decls = signature(spec);
    let mut values = p.values.clone();
    for (g, a) in grad_args(spec) {
        let ptr = |s: &CudaSlice<u8>| KernelArgValue::DevPtr(device_ptr(gpu, s));
        let (kind, value) = match g {
            GradArg::DOut => (ArgKind::DevPtr, ptr(&dout)),
            GradArg::DLse => (
                ArgKind::DevPtr,
                dlse.as_ref().map_or(KernelArgValue::DevPtr(0), ptr),
            ),
            GradArg::Delta => (ArgKind::DevPtr, ptr(&delta)),
            GradArg::DQ => (ArgKind::DevPtr, ptr(&dq)),
            GradArg::DK => (ArgKind::DevPtr, ptr(&dk)),
            GradArg::DV => (ArgKind::DevPtr, ptr(&dv)),
            GradArg::DParam if dparam_len == 0 => (ArgKind::DevPtr, KernelArgValue::DevPtr(0)),
            GradArg::DParam => (ArgKind::DevPtr, ptr(&dparam)),
            GradArg::ThetaOffsets => {
                let s = up_bytes(bytes_of(theta))?;
                let v = ptr(&s);
                keep.push(s);
                (ArgKind::DevPtr, v)
            }
            GradArg::ThetaLen => (ArgKind::I32, KernelArgValue::I32(theta_len as i32)),
            GradArg::Transposed(part) => {
                let l = tlists
                    .ok_or_else(|| cuda_err("a block-list kernel without its transposed lists"))?;
                let count = |n: usize| (ArgKind::I32, KernelArgValue::I32(n as i32));
                match part {
                    BlockListPart::Batches => count(l.batches),
                    BlockListPart::Heads => count(l.heads),
                    BlockListPart::Rows => count(l.rows),
                    BlockListPart::Width => count(l.width),
                    arr => {
                        let v = match arr {
                            BlockListPart::FullNum => &l.full_num,
                            BlockListPart::FullIdx => &l.full_idx,
                            BlockListPart::PartialNum => &l.partial_num,
                            _ => &l.partial_idx,
                        };
                        let s = up_bytes(bytes_of(v))?;
                        let v = ptr(&s);
                        keep.push(s);
                        (ArgKind::DevPtr, v)
                    }
                }
            }
        };
        decls.push(ArgDecl::new(a.name, kind));
        values.push(value);
    }
    let bt = &bwd.tile;
    let launches = [
        (
            &bwd.delta,
            [d.seq_q.div_ceil(DELTA_WARPS), d.heads_q, d.batch],
            DELTA_WARPS * 32,
            0,
        ),
        (
            &bwd.dkdv,
            [d.seq_k.div_ceil(bt.block_n), d.heads_kv, d.batch],
            bt.threads(),
            bt.dkdv_smem_bytes(dim, attnforge_codegen::backward::branches(spec)),
        ),
        (
            &bwd.dq,
            [d.seq_q.div_ceil(bt.block_m), d.heads_q, d.batch],
            bt.threads(),
            bt.dq_smem_bytes(dim, attnforge_codegen::backward::branches(spec))
                + 4 * bt.threads() * theta_len,
        ),
    ];
    let mut kernels = Vec::new();
    for (k, grid, threads, smem) in launches {
        if grid.iter().any(|&g| g == 0) {
            continue;
        }
        let compiled = compile_with_cached(&k.source, &k.name, &CompileOptions::new(arch))
            .map_err(cuda_err)?;
        let kernel = GpuKernel::load(gpu, &compiled, decls.clone()).map_err(cuda_err)?;
        let cfg = LaunchConfig {
            grid: [grid[0] as u32, grid[1] as u32, grid[2] as u32],
            block: [threads as u32, 1, 1],
            dynamic_smem_bytes: smem as u32,
        };
        kernels.push((kernel, cfg));
    }
    let run_fwd = || p.launch();
    let run_bwd = || -> Result<(), ExecError> {
        for (k, cfg) in &kernels {
            k.launch(cfg, &values).map_err(cuda_err)?;
        }
        Ok(())
    };
    run_fwd()?;
    run_bwd()?;
    gpu.synchronize().map_err(cuda_err)?;
    let mut seconds = (0.0, 0.0);
    if timed > 0 {
        for (slot, f) in [
            (0, &run_fwd as &dyn Fn() -> Result<(), ExecError>),
            (1, &run_bwd),
        ] {
            let t0 = std::time::Instant::now();
            for _ in 0..timed {
                f()?;
            }
            gpu.synchronize().map_err(cuda_err)?;
            let s = t0.elapsed().as_secs_f64() / timed as f64;
            if slot == 0 {
                seconds.0 = s;
            } else {
                seconds.1 = s;
            }
        }
    }
    let forward = p.output::<T>()?;
    let back = |s: &CudaSlice<u8>, n: usize| -> Result<Vec<T>, ExecError> {
        let b = stream.clone_dtoh(s).map_err(cuda_err)?;
        Ok(b.chunks_exact(t)
            .take(n)
            // SAFETY: the chunk holds exactly one T written by the kernel.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
            .collect())
    };
    let dparam_vals: Vec<f32> = stream
        .clone_dtoh(&dparam)
        .map_err(cuda_err)?
        .chunks_exact(4)
        .take(dparam_len)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(CudaGrads {
        forward,
        dq: back(&dq, q_elems)?,
        dk: back(&dk, kv_elems)?,
        dv: back(&dv, kv_elems)?,
        dparam: dparam_vals,
        seconds,
    })
}
