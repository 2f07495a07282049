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

pub(crate) fn cuda_err(e: impl std::fmt::Display) -> ExecError {
    ExecError::Cuda(e.to_string())
}

pub(crate) fn bytes_of<T: Copy>(data: &[T]) -> &[u8] {
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

/// Device addresses of the tensors of one forward launch, and the size of the statistics
/// buffer when the kernel has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TensorPtrs {
    pub(crate) q: u64,
    pub(crate) k: u64,
    pub(crate) v: u64,
    pub(crate) o: u64,
    /// 0: the kernel skips lse.
    pub(crate) lse: u64,
    pub(crate) stats_partial_bytes: usize,
}

/// The launch values of a forward argument list: tensors bound to `ptrs`, argument arrays
/// (document ids, slopes, block lists, user arrays; zeros for the statistics buffer) placed
/// in device memory by `place`, which returns their address. Empty arrays are null. Shared
/// by the staged path and the caller-owned one ([`crate::exec_device`]).
pub(crate) fn device_values(
    args: &[HostArg],
    ptrs: &TensorPtrs,
    place: &mut dyn FnMut(&[u8]) -> Result<u64, ExecError>,
) -> Result<Vec<KernelArgValue>, ExecError> {
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(match a {
            HostArg::Q => KernelArgValue::DevPtr(ptrs.q),
            HostArg::K => KernelArgValue::DevPtr(ptrs.k),
            HostArg::V => KernelArgValue::DevPtr(ptrs.v),
            HostArg::O => KernelArgValue::DevPtr(ptrs.o),
            HostArg::Lse => KernelArgValue::DevPtr(ptrs.lse),
            HostArg::Ints(a) if a.is_empty() => KernelArgValue::DevPtr(0),
            HostArg::Floats(a) if a.is_empty() => KernelArgValue::DevPtr(0),
            HostArg::Ints(a) => KernelArgValue::DevPtr(place(bytes_of(a))?),
            HostArg::Floats(a) => KernelArgValue::DevPtr(place(bytes_of(a))?),
            HostArg::StatsPartial => {
                KernelArgValue::DevPtr(place(&vec![0u8; ptrs.stats_partial_bytes])?)
            }
            HostArg::I32(v) => KernelArgValue::I32(*v),
            HostArg::I64(v) => KernelArgValue::I64(*v),
            HostArg::F32(v) => KernelArgValue::F32(*v),
        });
    }
    Ok(values)
}

/// A warpgroup-MMA tile runs on compute capability 9.x only (sm_90a code is not forward
/// compatible).
pub(crate) fn check_wgmma(tile: &TileConfig, major: i32, ordinal: usize) -> Result<(), ExecError> {
    if tile.wgmma && major != 9 {
        return Err(crate::exec::input_err(
            "tile.wgmma",
            format!("a warpgroup-MMA (sm_90a) tile needs a Hopper GPU; device {ordinal} has compute capability {major}.x"),
            "use a tile without wgmma on this device",
        ));
    }
    Ok(())
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
    check_wgmma(tile, major, ordinal)?;
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
    let ptrs = TensorPtrs {
        q: device_ptr(&gpu, &q),
        k: device_ptr(&gpu, &kk),
        v: device_ptr(&gpu, &v),
        o: device_ptr(&gpu, &o),
        lse: device_ptr(&gpu, &lse),
        // the statistics sweep's per-query-block key sums (the GPU path runs the forward
        // with it, for timing; the statistics are read back on the simulator)
        stats_partial_bytes: d.batch * d.heads_q * d.seq_q.div_ceil(tile.block_m) * d.seq_k * 4,
    };
    let values = device_values(args, &ptrs, &mut |b: &[u8]| {
        let s = up(b)?;
        let p = device_ptr(&gpu, &s);
        keep.push(s);
        Ok(p)
    })?;
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

/// Host data of a backward launch besides the forward's: the upstream gradients, the
/// transposed block lists, the learnable vector's layout and the `dparam` length.
pub(crate) struct GradHost<'a, T> {
    pub(crate) dout: &'a [T],
    pub(crate) dlse: Option<&'a [f32]>,
    pub(crate) tlists: Option<&'a attnforge_codegen::blocks::BlockLists>,
    pub(crate) theta: &'a [i32],
    pub(crate) theta_len: usize,
    pub(crate) dparam_len: usize,
    /// Elements of the atomic-dQ variant's f32 buffer (0: null).
    pub(crate) dq_accum_len: usize,
}

/// Device buffers of the backward arguments.
struct GradDevice {
    dout: CudaSlice<u8>,
    dlse: Option<CudaSlice<u8>>,
    delta: CudaSlice<u8>,
    dq: CudaSlice<u8>,
    dk: CudaSlice<u8>,
    dv: CudaSlice<u8>,
    dparam: CudaSlice<u8>,
    dq_accum: CudaSlice<u8>,
    /// Argument arrays (theta offsets, transposed lists): kept alive while kernels may run.
    keep: Vec<CudaSlice<u8>>,
}

/// Copy `b` to the device (never zero bytes: a valid, unused address for empty arrays).
pub(crate) fn upload(gpu: &Gpu, b: &[u8]) -> Result<CudaSlice<u8>, ExecError> {
    let mut v = b.to_vec();
    if v.is_empty() {
        v.push(0);
    }
    gpu.stream().clone_htod(&v).map_err(cuda_err)
}

impl GradDevice {
    fn new<T: Copy>(
        gpu: &Gpu,
        h: &GradHost<'_, T>,
        d: Shape,
        dim: usize,
    ) -> Result<Self, ExecError> {
        let t = std::mem::size_of::<T>();
        let zeros = |n: usize| upload(gpu, &vec![0u8; n]);
        Ok(GradDevice {
            dout: upload(gpu, bytes_of(h.dout))?,
            dlse: h.dlse.map(|l| upload(gpu, bytes_of(l))).transpose()?,
            delta: zeros(d.batch * d.heads_q * d.seq_q * 4)?,
            dq: zeros(d.batch * d.heads_q * d.seq_q * dim * t)?,
            dk: zeros(d.batch * d.heads_kv * d.seq_k * dim * t)?,
            dv: zeros(d.batch * d.heads_kv * d.seq_k * dim * t)?,
            dparam: zeros(h.dparam_len * 4)?,
            dq_accum: zeros(h.dq_accum_len * 4)?,
            keep: Vec::new(),
        })
    }

    /// The declaration and value of one backward argument.
    fn arg<T>(
        &mut self,
        gpu: &Gpu,
        g: attnforge_codegen::backward::GradArg,
        h: &GradHost<'_, T>,
    ) -> Result<(ArgKind, KernelArgValue), ExecError> {
        use attnforge_codegen::args::BlockListPart as P;
        use attnforge_codegen::backward::GradArg as G;
        let ptr = |s: &CudaSlice<u8>| (ArgKind::DevPtr, KernelArgValue::DevPtr(device_ptr(gpu, s)));
        let null = (ArgKind::DevPtr, KernelArgValue::DevPtr(0));
        let int = |n: usize| (ArgKind::I32, KernelArgValue::I32(n as i32));
        Ok(match g {
            G::DOut => ptr(&self.dout),
            G::DLse => self.dlse.as_ref().map_or(null, ptr),
            G::Delta => ptr(&self.delta),
            G::DQ => ptr(&self.dq),
            G::DK => ptr(&self.dk),
            G::DV => ptr(&self.dv),
            G::DParam if h.dparam_len == 0 => null,
            G::DParam => ptr(&self.dparam),
            G::DQAccum if h.dq_accum_len == 0 => null,
            G::DQAccum => ptr(&self.dq_accum),
            G::ThetaLen => int(h.theta_len),
            G::ThetaOffsets | G::Transposed(_) => {
                let l = h.tlists;
                let missing = || cuda_err("a block-list kernel without its transposed lists");
                let ints: &[i32] = match g {
                    G::ThetaOffsets => h.theta,
                    G::Transposed(P::Batches) => return Ok(int(l.ok_or_else(missing)?.batches)),
                    G::Transposed(P::Heads) => return Ok(int(l.ok_or_else(missing)?.heads)),
                    G::Transposed(P::Rows) => return Ok(int(l.ok_or_else(missing)?.rows)),
                    G::Transposed(P::Width) => return Ok(int(l.ok_or_else(missing)?.width)),
                    G::Transposed(P::FullNum) => &l.ok_or_else(missing)?.full_num,
                    G::Transposed(P::FullIdx) => &l.ok_or_else(missing)?.full_idx,
                    G::Transposed(P::PartialNum) => &l.ok_or_else(missing)?.partial_num,
                    _ => &l.ok_or_else(missing)?.partial_idx,
                };
                let s = upload(gpu, bytes_of(ints))?;
                let v = ptr(&s);
                self.keep.push(s);
                v
            }
        })
    }
}

/// Copy `n` elements of `T` back from `s`.
pub(crate) fn download<T: Copy>(
    gpu: &Gpu,
    s: &CudaSlice<u8>,
    n: usize,
) -> Result<Vec<T>, ExecError> {
    let b = gpu.stream().clone_dtoh(s).map_err(cuda_err)?;
    Ok(b.chunks_exact(std::mem::size_of::<T>())
        .take(n)
        // SAFETY: the chunk holds exactly one T written by the kernel.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
        .collect())
}

/// Seconds per call of `f`, averaged over `n` synchronized calls (0 when `n` is 0).
pub(crate) fn time_calls(
    gpu: &Gpu,
    n: usize,
    f: &dyn Fn() -> Result<(), ExecError>,
) -> Result<f64, ExecError> {
    if n == 0 {
        return Ok(0.0);
    }
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        f()?;
    }
    gpu.synchronize().map_err(cuda_err)?;
    Ok(t0.elapsed().as_secs_f64() / n as f64)
}

/// The forward kernel, then the three backward kernels of `bwd` on GPU `ordinal`; `timed`
/// extra runs of each measure their time (wall clock around synchronized launches).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    bwd: &attnforge_codegen::backward::BackwardKernels,
    x: &Inputs<T>,
    args: &[HostArg],
    d: Shape,
    h: &GradHost<'_, T>,
    timed: usize,
    ordinal: usize,
) -> Result<CudaGrads<T>, ExecError> {
    use attnforge_codegen::backward::grad_args;
    let p = prepare(spec, tile, x, args, d, ordinal)?;
    let gpu = &p.gpu;
    let arch = Arch::for_capability(gpu.compute_capability().0);
    let dim = spec.head_dim.get();
    let mut dev = GradDevice::new(gpu, h, d, dim)?;
    let mut decls = signature(spec);
    let mut values = p.values.clone();
    for (g, a) in grad_args(spec) {
        let (kind, value) = dev.arg(gpu, g, h)?;
        decls.push(ArgDecl::new(a.name, kind));
        values.push(value);
    }
    let mut kernels = Vec::new();
    for l in bwd.launches(&d, h.theta_len) {
        if l.grid.contains(&0) {
            continue;
        }
        let compiled =
            compile_with_cached(&l.kernel.source, &l.kernel.name, &CompileOptions::new(arch))
                .map_err(cuda_err)?;
        let kernel = GpuKernel::load(gpu, &compiled, decls.clone()).map_err(cuda_err)?;
        let cfg = LaunchConfig {
            grid: [l.grid[0] as u32, l.grid[1] as u32, l.grid[2] as u32],
            block: [l.threads as u32, 1, 1],
            dynamic_smem_bytes: l.smem_bytes as u32,
        };
        kernels.push((kernel, cfg));
    }
    let run_bwd = || -> Result<(), ExecError> {
        for (k, cfg) in &kernels {
            k.launch(cfg, &values).map_err(cuda_err)?;
        }
        Ok(())
    };
    p.launch()?;
    run_bwd()?;
    gpu.synchronize().map_err(cuda_err)?;
    let seconds = (
        time_calls(gpu, timed, &|| p.launch())?,
        time_calls(gpu, timed, &run_bwd)?,
    );
    let (q_elems, kv_elems) = (
        d.batch * d.heads_q * d.seq_q * dim,
        d.batch * d.heads_kv * d.seq_k * dim,
    );
    Ok(CudaGrads {
        forward: p.output::<T>()?,
        dq: download(gpu, &dev.dq, q_elems)?,
        dk: download(gpu, &dev.dk, kv_elems)?,
        dv: download(gpu, &dev.dv, kv_elems)?,
        dparam: download(gpu, &dev.dparam, h.dparam_len)?,
        seconds,
    })
}
