//! The forward on caller-owned device memory (PyTorch's CUDA tensors): the caller's
//! pointers and element strides, launched on the caller's stream, without copies of q, k,
//! v or out and without synchronizing.
//!
//! Everything that can be checked on the host is checked before the device is touched
//! ([`validate`]): pointers, alignment, strides, shapes, aliasing of the outputs with the
//! inputs. The argument values come from the same role mapping as the staged path
//! (`exec::role_args`, then `exec_cuda::device_values`). Small argument
//! arrays (document ids, ALiBi slopes, block lists, user arrays) are copied to stream-ordered
//! allocations on the caller's stream and freed on it after the kernel.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use attnforge_codegen::args::LaunchGeometry;
use attnforge_codegen::emit::emit;
use attnforge_codegen::shape::Shape;
use attnforge_codegen::spec::{DType, KernelSpec};
use attnforge_codegen::tile::TileConfig;
use attnforge_reference::Shape4;
use cudarc::driver::{result as dres, sys as dsys};

use crate::exec::{input_err, resolve_shape, role_args, ArgStrides, ExecError, RunParams};
use crate::exec_cuda::{check_wgmma, cuda_err, device_values, signature, TensorPtrs};
use crate::{compile_with_cached, Arch, CompileOptions, Gpu, GpuKernel, KernelArgValue};

/// One tensor in device memory: its address, logical shape `[B, H, S, D]` and strides in
/// elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTensor {
    /// Device address of element `[0, 0, 0, 0]`.
    pub ptr: u64,
    /// `[batch, heads, seq, head_dim]`.
    pub shape: [usize; 4],
    /// Element strides of the four dimensions (as `torch.Tensor.stride()`).
    pub strides: [i64; 4],
}

/// A forward launch on caller-owned device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLaunch {
    /// Element type of q, k, v and out (must be the spec's).
    pub dtype: DType,
    /// Queries `[B, Hq, Sq, D]`.
    pub q: DeviceTensor,
    /// Keys `[B, Hkv, Sk, D]`.
    pub k: DeviceTensor,
    /// Values `[B, Hkv, Sk, D]`.
    pub v: DeviceTensor,
    /// Output `[B, Hq, Sq, D]`, written by the kernel.
    pub out: DeviceTensor,
    /// Contiguous float32 `[B, Hq, Sq]` for the log-sum-exp, or `None` (the kernel skips it).
    pub lse: Option<u64>,
    /// CUDA device ordinal of every pointer.
    pub ordinal: usize,
    /// The `CUstream` to launch on (0: the legacy default stream), of the device's primary
    /// context (PyTorch's).
    pub stream: u64,
}

/// The byte range `[start, end)` that a tensor's elements span (empty when a size is 0).
fn byte_range(t: &DeviceTensor, elem: usize) -> (u128, u128) {
    if t.shape.contains(&0) {
        return (t.ptr.into(), t.ptr.into());
    }
    // saturating: absurd sizes are refused by name later (validate_problem), not by a panic
    let last = t
        .shape
        .iter()
        .zip(t.strides)
        .map(|(&n, s)| (n as u128 - 1).saturating_mul(s.max(0) as u128))
        .fold(0u128, u128::saturating_add);
    let bytes = last.saturating_add(1).saturating_mul(elem as u128);
    (t.ptr.into(), u128::from(t.ptr).saturating_add(bytes))
}

fn overlaps(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Address, alignment and stride rules of one tensor.
fn check_tensor(name: &str, t: &DeviceTensor, elem: usize) -> Result<[usize; 4], ExecError> {
    if t.ptr == 0 {
        return Err(input_err(
            name,
            "null data pointer",
            format!("pass an allocated CUDA tensor as {name}"),
        ));
    }
    if !t.ptr.is_multiple_of(elem as u64) {
        return Err(input_err(
            name,
            format!(
                "data pointer {:#x} is not aligned to its {elem}-byte elements",
                t.ptr
            ),
            format!("pass {name}.contiguous() (a view starting at an aligned element)"),
        ));
    }
    let mut strides = [0usize; 4];
    for (i, &s) in t.strides.iter().enumerate() {
        strides[i] = usize::try_from(s).map_err(|_| {
            input_err(
                &format!("{name}.stride[{i}]"),
                format!("negative stride {s}"),
                format!("pass {name}.contiguous()"),
            )
        })?;
    }
    if strides[3] != 1 {
        return Err(input_err(
            &format!("{name}.stride[3]"),
            format!(
                "head-dimension stride {} (the last dimension must be contiguous)",
                strides[3]
            ),
            format!("pass {name}.contiguous(); nothing is copied silently"),
        ));
    }
    Ok(strides)
}

/// `out` must be the contiguous `[B, Hq, Sq, D]` of `dims`: one element per thread's write,
/// no overlapping rows.
fn check_out(
    out: &DeviceTensor,
    strides: [usize; 4],
    dims: Shape,
    d: usize,
) -> Result<(), ExecError> {
    let want = [dims.batch, dims.heads_q, dims.seq_q, d];
    if out.shape != want {
        return Err(input_err(
            "out",
            format!(
                "shape {:?}, expected {want:?} ([B, Hq, Sq, D] of q)",
                out.shape
            ),
            "allocate out like q (torch.empty_like(q))",
        ));
    }
    // checked: sizes past the limits are refused by name later (validate_problem)
    let product = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    let contiguous = [product(&want[1..]), product(&want[2..]), Some(d), Some(1)];
    if strides.iter().zip(contiguous).any(|(&s, c)| Some(s) != c) {
        return Err(input_err(
            "out.stride",
            format!("strides {strides:?}, expected the contiguous ones of {want:?}"),
            "allocate out contiguous (torch.empty_like(q, memory_format=torch.contiguous_format))",
        ));
    }
    Ok(())
}

/// The host-side checks of a launch: the problem shape and the element strides of q, k, v,
/// out. Errors name the argument and the fix.
pub fn validate(
    spec: &KernelSpec,
    l: &DeviceLaunch,
) -> Result<(Shape, [[usize; 4]; 4]), ExecError> {
    if l.dtype != spec.dtype {
        return Err(input_err(
            "q",
            format!(
                "dtype {} but the spec is compiled for {}",
                l.dtype.short(),
                spec.dtype.short()
            ),
            "pass tensors of the spec's dtype or choose a spec of theirs",
        ));
    }
    let elem = spec.dtype.bytes();
    let named = [("q", &l.q), ("k", &l.k), ("v", &l.v), ("out", &l.out)];
    let mut strides = [[0usize; 4]; 4];
    for (i, (name, t)) in named.iter().enumerate() {
        strides[i] = check_tensor(name, t, elem)?;
    }
    let s4 = |t: &DeviceTensor| Shape4::new(t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let dims = crate::exec::shape_of(spec, s4(&l.q), s4(&l.k), s4(&l.v))?;
    check_out(&l.out, strides[3], dims, spec.head_dim.get())?;
    let out = byte_range(&l.out, elem);
    let lse = l.lse.map(|p| {
        let rows = [dims.heads_q, dims.seq_q]
            .iter()
            .fold(dims.batch as u128, |a, &n| a.saturating_mul(n as u128));
        (
            u128::from(p),
            u128::from(p).saturating_add(rows.saturating_mul(4)),
        )
    });
    check_lse_ptr(l.lse)?;
    for (name, t) in &named[..3] {
        let r = byte_range(t, elem);
        for (oname, o) in [("out", Some(out)), ("lse", lse)] {
            if o.is_some_and(|o| overlaps(o, r)) {
                return Err(input_err(
                    oname,
                    format!("its memory overlaps {name}'s"),
                    format!("pass a freshly allocated {oname}, not a view of {name}"),
                ));
            }
        }
    }
    if lse.is_some_and(|r| overlaps(r, out)) {
        return Err(input_err(
            "lse",
            "its memory overlaps out's",
            "pass a freshly allocated float32 lse",
        ));
    }
    Ok((dims, strides))
}

fn check_lse_ptr(lse: Option<u64>) -> Result<(), ExecError> {
    match lse {
        Some(0) => Err(input_err(
            "lse",
            "null data pointer",
            "pass an allocated float32 [B, Hq, Sq] tensor, or None to skip lse",
        )),
        Some(p) if !p.is_multiple_of(4) => Err(input_err(
            "lse",
            format!("data pointer {p:#x} is not aligned to 4 bytes"),
            "pass a contiguous float32 tensor",
        )),
        _ => Ok(()),
    }
}

/// The kernel's argument values for `l`, through the shared role mapping. Argument arrays
/// are handed to `place`, which returns their device address.
pub(crate) fn launch_values(
    spec: &KernelSpec,
    p: &RunParams,
    l: &DeviceLaunch,
    place: &mut dyn FnMut(&[u8]) -> Result<u64, ExecError>,
) -> Result<(Shape, Vec<KernelArgValue>), ExecError> {
    if spec.stats.is_some() {
        return Err(input_err(
            "stats",
            "a kernel with statistics outputs runs with its follow-up kernel",
            "use a spec without statistics on CUDA tensors (statistics: attnforge check --stats)",
        ));
    }
    let (dims, [q, k, v, o]) = validate(spec, l)?;
    let r = resolve_shape(spec, dims, p)?;
    let args = role_args(spec, &ArgStrides { q, k, v, o }, p, &r)?;
    let ptrs = TensorPtrs {
        q: l.q.ptr,
        k: l.k.ptr,
        v: l.v.ptr,
        o: l.out.ptr,
        lse: l.lse.unwrap_or(0),
        stats_partial_bytes: 0,
    };
    Ok((dims, device_values(&args, &ptrs, place)?))
}

/// The GPU of `ordinal` (its primary context, PyTorch's), opened once per process.
fn device_gpu(ordinal: usize) -> Result<Gpu, ExecError> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    let gpus = GPUS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(g) = gpus.lock().unwrap_or_else(|e| e.into_inner()).get(&ordinal) {
        return Ok(g.clone());
    }
    // Opening device 0 first reports a missing driver as "no GPU", before counting devices.
    let first = Gpu::new(0).map_err(cuda_err)?;
    let count = dres::device::get_count().map_err(cuda_err)?;
    if ordinal >= count as usize {
        return Err(input_err(
            "ordinal",
            format!("device {ordinal}, but this machine has {count} CUDA device(s)"),
            "pass tensors on an existing device",
        ));
    }
    let gpu = if ordinal == 0 {
        first
    } else {
        Gpu::new(ordinal).map_err(cuda_err)?
    };
    gpus.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(ordinal, gpu.clone());
    Ok(gpu)
}

/// The kernel of spec + tile compiled (through the kernel cache) and loaded on `gpu`, once
/// per process and device: the module stays loaded while launches may be pending.
fn loaded_kernel(
    gpu: &Gpu,
    ordinal: usize,
    spec: &KernelSpec,
    tile: &TileConfig,
) -> Result<GpuKernel, ExecError> {
    static KERNELS: OnceLock<Mutex<HashMap<(usize, String), GpuKernel>>> = OnceLock::new();
    let arch = Arch::for_capability(gpu.compute_capability().0);
    check_wgmma(tile, gpu.compute_capability().0, ordinal)?;
    let k = emit(spec, tile, arch).map_err(ExecError::Spec)?;
    let key = (ordinal, format!("{}\n{}", k.name, k.source));
    let kernels = KERNELS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(g) = kernels.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(g.clone());
    }
    let compiled = compile_with_cached(&k.source, &k.name, &CompileOptions::for_tile(arch, tile))
        .map_err(cuda_err)?;
    let kernel = GpuKernel::load(gpu, &compiled, signature(spec)).map_err(cuda_err)?;
    kernels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, kernel.clone());
    Ok(kernel)
}

/// Enqueue the forward of `spec` with `tile` on `l.stream`, reading and writing the
/// caller's device memory. Returns once the launch is enqueued (no synchronization). Without
/// a GPU: `ExecError::Cuda` naming the reason, after the host-side checks.
///
/// The caller keeps q, k, v, out and lse alive and unused by other writers until the kernel
/// finishes on `l.stream` (PyTorch's caching allocator does so for tensors used on their
/// current stream).
pub fn launch_device(
    spec: &KernelSpec,
    tile: &TileConfig,
    p: &RunParams,
    l: &DeviceLaunch,
) -> Result<(), ExecError> {
    // Host checks first: a bad call fails the same way with or without a GPU.
    launch_values(spec, p, l, &mut |_| Ok(1))?;
    let gpu = device_gpu(l.ordinal)?;
    let kernel = loaded_kernel(&gpu, l.ordinal, spec, tile)?;
    gpu.context().bind_to_thread().map_err(cuda_err)?;
    let stream = l.stream as dsys::CUstream;
    let mut temps: Vec<u64> = Vec::new();
    let placed = launch_values(spec, p, l, &mut |b| {
        // SAFETY: a fresh stream-ordered allocation of b.len() bytes on the caller's stream,
        // filled from `b`, which is read before the call returns (pageable host memory is
        // staged by the driver); it is freed on the same stream after the kernel.
        unsafe {
            let dst = dres::malloc_async(stream, b.len()).map_err(cuda_err)?;
            temps.push(dst);
            dres::memcpy_htod_async(dst, b, stream).map_err(cuda_err)?;
            Ok(dst)
        }
    });
    let launched = placed.and_then(|(dims, values)| {
        let geo = LaunchGeometry::new(spec, tile, dims.batch, dims.heads_q, dims.seq_q);
        let cfg = crate::LaunchConfig {
            grid: geo.grid,
            block: geo.block,
            dynamic_smem_bytes: geo.dynamic_smem_bytes,
        };
        // SAFETY: the stream belongs to the device's primary context (the caller's
        // contract, as PyTorch's streams do); q, k, v, out, lse were checked above for
        // null, alignment, shape and strides, and the caller keeps them alive on it.
        unsafe { kernel.launch_on_stream(stream, &cfg, &values) }.map_err(cuda_err)
    });
    for t in temps {
        // SAFETY: allocated above on this stream; the free is ordered after the kernel.
        unsafe { dres::free_async(t, stream) }.map_err(cuda_err)?;
    }
    launched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{host_args, resolve, Inputs};
    use attnforge_codegen::args::kernel_args;
    use attnforge_codegen::spec::{HeadDim, Mask, ScoreMod};
    use attnforge_reference::Tensor4;

    const B: usize = 2;
    const HQ: usize = 4;
    const HKV: usize = 2;
    const SQ: usize = 5;
    const SK: usize = 7;
    const D: usize = 64;

    fn spec() -> KernelSpec {
        let mut s = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Document, ScoreMod::None);
        s.gqa = true;
        s
    }

    fn params() -> RunParams {
        RunParams::default().with_doc(vec![0, 0, 1, 1, 1, 2, 2])
    }

    /// q in a `[B, S, H, D]` buffer seen as `[B, H, S, D]` (torch's `transpose(1, 2)`).
    const Q_STRIDES: [usize; 4] = [SQ * HQ * D, D, HQ * D, 1];

    fn contiguous(s: [usize; 4]) -> [usize; 4] {
        [s[1] * s[2] * s[3], s[2] * s[3], s[3], 1]
    }

    fn dev(ptr: u64, shape: [usize; 4], strides: [usize; 4]) -> DeviceTensor {
        DeviceTensor {
            ptr,
            shape,
            strides: strides.map(|s| s as i64),
        }
    }

    const MIB: u64 = 1 << 20;

    fn launch() -> DeviceLaunch {
        let (qs, kvs) = ([B, HQ, SQ, D], [B, HKV, SK, D]);
        DeviceLaunch {
            dtype: DType::F32,
            q: dev(MIB, qs, Q_STRIDES),
            k: dev(2 * MIB, kvs, contiguous(kvs)),
            v: dev(3 * MIB, kvs, contiguous(kvs)),
            out: dev(4 * MIB, qs, contiguous(qs)),
            lse: Some(5 * MIB),
            ordinal: 0,
            stream: 0,
        }
    }

    /// Hands out fake addresses for the argument arrays, recording their contents.
    fn recorder(log: &mut Vec<Vec<u8>>) -> impl FnMut(&[u8]) -> Result<u64, ExecError> + '_ {
        move |b| {
            log.push(b.to_vec());
            Ok(0xA000_0000 + log.len() as u64)
        }
    }

    #[test]
    fn device_values_are_the_staged_paths_with_the_callers_pointers() {
        let t = |s: [usize; 4], strides| Tensor4::<f32> {
            shape: Shape4::new(s[0], s[1], s[2], s[3]),
            strides,
            data: vec![0.5; s[0] * s[1] * s[2] * s[3]],
        };
        let l = launch();
        let x = Inputs::new(
            t(l.q.shape, Q_STRIDES),
            t(l.k.shape, contiguous(l.k.shape)),
            t(l.v.shape, contiguous(l.v.shape)),
        );
        let (spec, p) = (spec(), params());
        let r = resolve(&spec, &x, &p).unwrap();
        let staged_args = host_args(&spec, &x, &p, &r).unwrap();
        let ptrs = TensorPtrs {
            q: l.q.ptr,
            k: l.k.ptr,
            v: l.v.ptr,
            o: l.out.ptr,
            lse: 5 * MIB,
            stats_partial_bytes: 0,
        };
        let (mut staged_log, mut dev_log) = (Vec::new(), Vec::new());
        let staged = device_values(&staged_args, &ptrs, &mut recorder(&mut staged_log)).unwrap();
        let (_, device) = launch_values(&spec, &p, &l, &mut recorder(&mut dev_log)).unwrap();
        assert_eq!(device, staged);
        assert_eq!(dev_log, staged_log);
        // Independently of both: the values by name, as the CUDA signature orders them.
        let names: Vec<String> = kernel_args(&spec).into_iter().map(|a| a.name).collect();
        let by = |n: &str| device[names.iter().position(|m| m == n).unwrap()];
        use KernelArgValue::{DevPtr, I32, I64};
        assert_eq!(by("q"), DevPtr(MIB));
        assert_eq!(by("o"), DevPtr(4 * MIB));
        assert_eq!(by("lse"), DevPtr(5 * MIB));
        assert_eq!(by("heads_kv"), I32(2));
        assert_eq!(by("seq_k"), I32(7));
        assert_eq!(by("q_stride_h"), I64(64));
        assert_eq!(by("q_stride_s"), I64(4 * 64));
        assert_eq!(by("k_stride_h"), I64(7 * 64));
        assert_eq!(by("o_stride_b"), I64(4 * 5 * 64));
        assert_eq!(by("doc"), DevPtr(0xA000_0001));
        let ids: Vec<u8> = [0i32, 0, 1, 1, 1, 2, 2]
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect();
        assert_eq!(dev_log[0], ids);
    }

    #[test]
    fn without_lse_the_lse_argument_is_null() {
        let mut l = launch();
        l.lse = None;
        let (_, v) = launch_values(&spec(), &params(), &l, &mut |_| Ok(1)).unwrap();
        let i = kernel_args(&spec())
            .iter()
            .position(|a| a.name == "lse")
            .unwrap();
        assert_eq!(v[i], KernelArgValue::DevPtr(0));
    }

    /// The field an invalid launch is refused with (the message names it).
    fn refused(l: &DeviceLaunch) -> String {
        match launch_values(&spec(), &params(), l, &mut |_| Ok(1)) {
            Err(ExecError::Input { field, fix, .. }) => {
                assert!(!fix.is_empty());
                field
            }
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {l:?}"),
        }
    }

    #[test]
    fn each_host_check_names_its_argument() {
        type Edit = fn(&mut DeviceLaunch);
        let cases: [(Edit, &str); 14] = [
            (|l| l.q.ptr = 0, "q"),
            (|l| l.k.ptr += 2, "k"),
            (|l| l.v.strides[1] = -448, "v.stride[1]"),
            (|l| l.q.strides[3] = 2, "q.stride[3]"),
            (|l| l.k.shape[0] = 3, "k"),
            (|l| l.v.shape[2] = 6, "v"),
            (|l| l.q.shape[3] = 128, "q"),
            (|l| l.out.shape[2] = 4, "out"),
            (|l| l.out.strides = [1280, 320, 1, 1], "out.stride"),
            (|l| l.out.ptr = l.q.ptr + 256, "out"),
            (|l| l.lse = Some(l.k.ptr + 8), "lse"),
            (|l| l.lse = Some(l.out.ptr), "lse"),
            (|l| l.lse = Some(0), "lse"),
            (|l| l.dtype = DType::F16, "q"),
        ];
        for (edit, field) in cases {
            let mut l = launch();
            edit(&mut l);
            assert_eq!(refused(&l), field, "{l:?}");
        }
    }

    #[test]
    fn sizes_past_the_32_bit_limit_are_refused_by_name() {
        let mut l = launch();
        l.k.shape[2] = 1 << 31;
        l.v.shape[2] = 1 << 31;
        (l.k.ptr, l.v.ptr) = (1 << 44, 1 << 50);
        let e = refused(&l);
        assert!(e.contains("seq_k") && e.contains("2^31"), "{e}");
    }

    #[test]
    fn absurd_sizes_and_strides_are_errors_not_overflows() {
        let mut l = launch();
        l.q.shape = [usize::MAX, usize::MAX, usize::MAX, D];
        l.q.strides = [i64::MAX, i64::MAX, i64::MAX, 1];
        (l.k.shape[0], l.v.shape[0]) = (usize::MAX, usize::MAX);
        l.out.shape = l.q.shape;
        assert_eq!(refused(&l), "out.stride");
        // a batch of 2^40: every range fits, the size limit names the field
        let mut l = launch();
        let big = |t: &mut DeviceTensor, ptr: u64| {
            t.shape[0] = 1 << 40;
            t.ptr = ptr;
        };
        big(&mut l.q, 1 << 62);
        big(&mut l.k, 1 << 60);
        big(&mut l.v, 1 << 61);
        big(&mut l.out, 1 << 59);
        l.lse = Some(3 << 62);
        let e = refused(&l);
        assert!(e.contains("batch") && e.contains("2^31"), "{e}");
    }

    #[test]
    fn a_valid_launch_without_a_gpu_reports_no_gpu() {
        if crate::gpu_available() {
            return; // the GPU script runs the launch against the reference
        }
        let tile = attnforge_codegen::tile::default_tile(&spec(), Arch::Sm80).unwrap();
        let e = launch_device(&spec(), &tile, &params(), &launch()).unwrap_err();
        assert!(e.to_string().contains("no GPU"), "{e}");
        // a bad call is refused the same way with or without a GPU
        let mut l = launch();
        l.q.ptr = 0;
        let e = launch_device(&spec(), &tile, &params(), &l).unwrap_err();
        assert!(
            matches!(e, ExecError::Input { ref field, .. } if field == "q"),
            "{e}"
        );
    }
}
