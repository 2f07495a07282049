//! CUDA launch through cudarc's driver API, when a GPU is present.
//!
//! GPU detection is at run time: without `libcuda` (no NVIDIA driver) or without a device,
//! [`Gpu::new`] returns [`LaunchError::NoGpu`] and [`gpu_available`] is false; nothing panics.
//!
//! A [`GpuKernel`] carries its declared signature (`Vec<ArgDecl>`): [`GpuKernel::launch`]
//! checks the argument count and kinds against it and the launch configuration against the
//! device, while `unsafe` [`GpuKernel::launch_unchecked`] does not.
//!
//! ```no_run
//! use attnforge_runtime::{compile, Arch, ArgDecl, ArgKind, Gpu, GpuKernel, KernelArgValue, LaunchConfig};
//! let src = r#"extern "C" __global__ void fill(float* o, int n) {
//!     int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) o[i] = 1.0f; }"#;
//! let gpu = Gpu::new(0)?;
//! let compiled = compile(src, "fill", Arch::Sm90)?;
//! let sig = vec![ArgDecl::new("o", ArgKind::DevPtr), ArgDecl::new("n", ArgKind::I32)];
//! let kernel = GpuKernel::load(&gpu, &compiled, sig)?;
//! let out = gpu.stream().alloc_zeros::<f32>(256)?;
//! let ptr = attnforge_runtime::device_ptr(&gpu, &out);
//! kernel.launch(&LaunchConfig::linear(256, 128), &[KernelArgValue::DevPtr(ptr), KernelArgValue::I32(256)])?;
//! gpu.synchronize()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    sys as dsys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, PushKernelArg,
};

use crate::nvrtc::Compiled;

/// Shared memory a kernel may use without opting in (48 KiB).
pub const DEFAULT_MAX_DYNAMIC_SMEM: u32 = 48 * 1024;

/// The kind of one kernel parameter, as declared by codegen's flat argument list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ArgKind {
    /// A device pointer (`const __half*`, `float*`, `const int*`, ...).
    DevPtr,
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `float`.
    F32,
}

impl fmt::Display for ArgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArgKind::DevPtr => "device pointer",
            ArgKind::I32 => "int (i32)",
            ArgKind::I64 => "long long (i64)",
            ArgKind::F32 => "float (f32)",
        })
    }
}

/// One declared kernel parameter: name and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ArgDecl {
    /// Parameter name (used in error messages).
    pub name: String,
    /// Parameter kind.
    pub kind: ArgKind,
}

impl ArgDecl {
    /// A declared parameter.
    pub fn new(name: impl Into<String>, kind: ArgKind) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }
}

/// One argument value for a launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArgValue {
    /// A raw device address (`CUdeviceptr`); see [`device_ptr`]. The caller keeps the buffer
    /// alive and ordered on the kernel's stream until the kernel finishes.
    DevPtr(u64),
    /// `int`.
    I32(i32),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
}

impl KernelArgValue {
    /// The kind of this value.
    pub fn kind(&self) -> ArgKind {
        match self {
            KernelArgValue::DevPtr(_) => ArgKind::DevPtr,
            KernelArgValue::I32(_) => ArgKind::I32,
            KernelArgValue::I64(_) => ArgKind::I64,
            KernelArgValue::F32(_) => ArgKind::F32,
        }
    }
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LaunchConfig {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, bytes.
    pub dynamic_smem_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch covering `n` threads with `block` threads per block.
    pub fn linear(n: u32, block: u32) -> Self {
        let block = block.max(1);
        Self {
            grid: [n.div_ceil(block).max(1), 1, 1],
            block: [block, 1, 1],
            dynamic_smem_bytes: 0,
        }
    }

    /// Checks the limits common to every CUDA device since compute capability 3.0:
    /// non-zero dimensions, at most 1024 threads and 64 threads in z per block, grid y and z at
    /// most 65535, grid x at most 2^31 - 1.
    pub fn validate(&self) -> Result<(), LaunchError> {
        let bad = |field: &'static str, value: u64, fix: &str| {
            Err(LaunchError::InvalidConfig {
                field,
                value,
                fix: fix.to_owned(),
            })
        };
        for (i, &g) in self.grid.iter().enumerate() {
            if g == 0 {
                return bad(
                    ["grid.x", "grid.y", "grid.z"][i],
                    0,
                    "every grid dimension must be at least 1",
                );
            }
        }
        for (i, &b) in self.block.iter().enumerate() {
            if b == 0 {
                return bad(
                    ["block.x", "block.y", "block.z"][i],
                    0,
                    "every block dimension must be at least 1",
                );
            }
        }
        if self.grid[0] > i32::MAX as u32 {
            return bad(
                "grid.x",
                self.grid[0].into(),
                "grid.x must be at most 2^31 - 1",
            );
        }
        for (i, field) in [(1, "grid.y"), (2, "grid.z")] {
            if self.grid[i] > 65535 {
                return bad(
                    field,
                    self.grid[i].into(),
                    "grid.y and grid.z must be at most 65535",
                );
            }
        }
        if self.block[2] > 64 {
            return bad(
                "block.z",
                self.block[2].into(),
                "block.z must be at most 64",
            );
        }
        let threads: u64 = self.block.iter().map(|&b| u64::from(b)).product();
        if threads > 1024 {
            return bad(
                "block",
                threads,
                "a block holds at most 1024 threads (x*y*z)",
            );
        }
        Ok(())
    }
}

/// Launch failure.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No usable GPU (no driver, no device, or context creation failed).
    #[error("no GPU: {reason}")]
    NoGpu {
        /// Why.
        reason: String,
    },
    /// Wrong number of arguments.
    #[error("kernel `{kernel}` takes {expected} arguments, got {got}; {detail}")]
    ArgCount {
        /// Kernel name.
        kernel: String,
        /// Declared count.
        expected: usize,
        /// Given count.
        got: usize,
        /// The first missing or extra argument, named.
        detail: String,
    },
    /// An argument has the wrong kind.
    #[error("kernel `{kernel}` argument {index} `{name}` must be a {expected}, got a {got}")]
    ArgKind {
        /// Kernel name.
        kernel: String,
        /// 0-based position.
        index: usize,
        /// Declared name.
        name: String,
        /// Declared kind.
        expected: ArgKind,
        /// Given kind.
        got: ArgKind,
    },
    /// The launch configuration is out of range.
    #[error("invalid launch config: {field} = {value}: {fix}")]
    InvalidConfig {
        /// Field (`grid.y`, `block`, `dynamic_smem_bytes`, ...).
        field: &'static str,
        /// Offending value.
        value: u64,
        /// The rule, and so the fix.
        fix: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {call} for kernel `{kernel}`: {message}")]
    Driver {
        /// Kernel name (empty for device-level calls).
        kernel: String,
        /// What was being done.
        call: &'static str,
        /// Driver message.
        message: String,
    },
}

/// Checks `args` against the declared `signature` of `kernel`: same count, same kinds.
pub fn check_args(
    kernel: &str,
    signature: &[ArgDecl],
    args: &[KernelArgValue],
) -> Result<(), LaunchError> {
    if signature.len() != args.len() {
        let detail = if args.len() < signature.len() {
            let d = &signature[args.len()];
            format!("missing argument {} `{}` ({})", args.len(), d.name, d.kind)
        } else {
            format!(
                "argument {} ({}) is extra; the last declared is `{}`",
                signature.len(),
                args[signature.len()].kind(),
                signature.last().map_or("<none>", |d| d.name.as_str())
            )
        };
        return Err(LaunchError::ArgCount {
            kernel: kernel.to_owned(),
            expected: signature.len(),
            got: args.len(),
            detail,
        });
    }
    for (index, (decl, arg)) in signature.iter().zip(args).enumerate() {
        if decl.kind != arg.kind() {
            return Err(LaunchError::ArgKind {
                kernel: kernel.to_owned(),
                index,
                name: decl.name.clone(),
                expected: decl.kind,
                got: arg.kind(),
            });
        }
    }
    Ok(())
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A CUDA context and stream on one device.
#[derive(Debug, Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    capability: (i32, i32),
    max_dynamic_smem: u32,
}

impl Gpu {
    /// Opens device `ordinal`. [`LaunchError::NoGpu`] when the driver library is absent or
    /// the device cannot be opened.
    pub fn new(ordinal: usize) -> Result<Self, LaunchError> {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { dsys::is_culib_present() } {
            return Err(LaunchError::NoGpu {
                reason: "the CUDA driver library (libcuda.so) is not installed".to_owned(),
            });
        }
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Self, String> {
            let ctx = CudaContext::new(ordinal).map_err(|e| e.to_string())?;
            let capability = ctx.compute_capability().map_err(|e| e.to_string())?;
            let optin = ctx
                .attribute(
                    dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                )
                .map_err(|e| e.to_string())?;
            let stream = ctx.default_stream();
            Ok(Self {
                ctx,
                stream,
                capability,
                max_dynamic_smem: u32::try_from(optin).unwrap_or(0),
            })
        }));
        match opened {
            Ok(Ok(g)) => Ok(g),
            Ok(Err(reason)) => Err(LaunchError::NoGpu {
                reason: format!("device {ordinal}: {reason}"),
            }),
            Err(p) => Err(LaunchError::NoGpu {
                reason: format!("device {ordinal}: {}", panic_message(p)),
            }),
        }
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream kernels are launched on (the context's default stream).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.capability
    }

    /// Most dynamic shared memory per block after opting in, bytes.
    pub fn max_dynamic_smem(&self) -> u32 {
        self.max_dynamic_smem
    }

    /// Waits for all work on the stream.
    pub fn synchronize(&self) -> Result<(), LaunchError> {
        self.stream.synchronize().map_err(|e| LaunchError::Driver {
            kernel: String::new(),
            call: "cuStreamSynchronize",
            message: e.to_string(),
        })
    }
}

/// Whether a CUDA GPU (device 0) can be opened; computed once, never panics.
pub fn gpu_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| Gpu::new(0).is_ok())
}

/// The device address of `slice`, for [`KernelArgValue::DevPtr`]. The buffer must stay alive
/// until kernels using the address have finished.
pub fn device_ptr<T>(gpu: &Gpu, slice: &CudaSlice<T>) -> u64 {
    let (ptr, _sync) = slice.device_ptr(&gpu.stream);
    ptr
}

/// One 8-byte slot per argument for `cuLaunchKernel`'s parameter array, the value in its
/// low bytes: the driver reads as many bytes from the slot's address as the parameter's type
/// has, so on a little-endian host a 4-byte `int` or `float` is the slot's low half.
fn param_slots(args: &[KernelArgValue]) -> Vec<u64> {
    args.iter()
        .map(|a| match *a {
            KernelArgValue::DevPtr(p) => p,
            KernelArgValue::I32(v) => u64::from(v as u32),
            KernelArgValue::I64(v) => v as u64,
            KernelArgValue::F32(v) => u64::from(v.to_bits()),
        })
        .collect()
}

/// A kernel loaded on a GPU, with its declared signature.
#[derive(Debug, Clone)]
pub struct GpuKernel {
    name: String,
    signature: Vec<ArgDecl>,
    function: CudaFunction,
    gpu: Gpu,
}

impl GpuKernel {
    /// Loads `compiled` on `gpu`: the CUBIN when it was built for the device's exact compute
    /// capability, the PTX (JIT-compiled by the driver) otherwise.
    pub fn load(
        gpu: &Gpu,
        compiled: &Compiled,
        signature: Vec<ArgDecl>,
    ) -> Result<Self, LaunchError> {
        let driver = |call, e: cudarc::driver::DriverError| LaunchError::Driver {
            kernel: compiled.name.clone(),
            call,
            message: e.to_string(),
        };
        let image = match &compiled.cubin {
            Some(bin) if compiled.arch.compute_capability() == gpu.capability => {
                cudarc::nvrtc::Ptx::from_binary(bin.clone())
            }
            _ => cudarc::nvrtc::Ptx::from_src(compiled.ptx.clone()),
        };
        let module = gpu
            .ctx
            .load_module(image)
            .map_err(|e| driver("cuModuleLoadData", e))?;
        let function = module
            .load_function(&compiled.name)
            .map_err(|e| driver("cuModuleGetFunction", e))?;
        Ok(Self {
            name: compiled.name.clone(),
            signature,
            function,
            gpu: gpu.clone(),
        })
    }

    /// Kernel name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declared signature.
    pub fn signature(&self) -> &[ArgDecl] {
        &self.signature
    }

    /// Checked launch: arguments against the signature, the config against the device limits
    /// (dynamic shared memory above 48 KiB is opted into here). Asynchronous: call
    /// [`Gpu::synchronize`] to wait. Pointer arguments must address live device buffers large
    /// enough for the kernel; that part cannot be checked here.
    pub fn launch(&self, cfg: &LaunchConfig, args: &[KernelArgValue]) -> Result<(), LaunchError> {
        self.check_launch(cfg, args)?;
        // SAFETY: count and kinds match the declared signature; config validated.
        unsafe { self.launch_unchecked(cfg, args) }
    }

    /// The checks of [`GpuKernel::launch`]: arguments against the signature, the config
    /// against the device limits.
    fn check_launch(&self, cfg: &LaunchConfig, args: &[KernelArgValue]) -> Result<(), LaunchError> {
        check_args(&self.name, &self.signature, args)?;
        cfg.validate()?;
        if cfg.dynamic_smem_bytes > self.gpu.max_dynamic_smem {
            return Err(LaunchError::InvalidConfig {
                field: "dynamic_smem_bytes",
                value: cfg.dynamic_smem_bytes.into(),
                fix: format!(
                    "this device allows at most {} bytes of dynamic shared memory per block",
                    self.gpu.max_dynamic_smem
                ),
            });
        }
        Ok(())
    }

    /// Checked launch (as [`GpuKernel::launch`]) on a foreign stream, such as PyTorch's
    /// current stream, through the driver's `cuLaunchKernel`. The kernel's context is made
    /// current on this thread first. Asynchronous; nothing is synchronized.
    ///
    /// # Safety
    /// `stream` must be a live stream of this kernel's context (a primary-context stream of
    /// the same device, or null for the legacy default stream), and every pointer argument
    /// must address device memory valid for the kernel's accesses, kept alive and ordered on
    /// `stream` until the kernel finishes.
    pub unsafe fn launch_on_stream(
        &self,
        stream: dsys::CUstream,
        cfg: &LaunchConfig,
        args: &[KernelArgValue],
    ) -> Result<(), LaunchError> {
        self.check_launch(cfg, args)?;
        let driver = |call, e: cudarc::driver::DriverError| LaunchError::Driver {
            kernel: self.name.clone(),
            call,
            message: e.to_string(),
        };
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(|e| driver("cuCtxSetCurrent", e))?;
        self.opt_in_smem(cfg)?;
        let mut slots = param_slots(args);
        let mut params: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| (s as *mut u64).cast::<std::ffi::c_void>())
            .collect();
        // SAFETY: `params` has one pointer per declared parameter (checked above), each to a
        // slot that outlives the call (the driver copies the values at launch); the stream
        // and the pointed-to memory are the caller's contract.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.function.cu_function(),
                (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
                (cfg.block[0], cfg.block[1], cfg.block[2]),
                cfg.dynamic_smem_bytes,
                stream,
                &mut params,
            )
        }
        .map_err(|e| driver("cuLaunchKernel", e))
    }

    /// Opt into dynamic shared memory above 48 KiB when the launch needs it.
    fn opt_in_smem(&self, cfg: &LaunchConfig) -> Result<(), LaunchError> {
        if cfg.dynamic_smem_bytes > DEFAULT_MAX_DYNAMIC_SMEM {
            let bytes = i32::try_from(cfg.dynamic_smem_bytes).unwrap_or(i32::MAX);
            self.function
                .set_attribute(
                    dsys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                )
                .map_err(|e| LaunchError::Driver {
                    kernel: self.name.clone(),
                    call: "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Launch without checking arguments or config.
    ///
    /// # Safety
    /// `args` must match the kernel's real parameter list in number, order and type, pointers
    /// must address device memory valid for the kernel's accesses, and `cfg` must be valid for
    /// the kernel (threads per block, shared memory).
    pub unsafe fn launch_unchecked(
        &self,
        cfg: &LaunchConfig,
        args: &[KernelArgValue],
    ) -> Result<(), LaunchError> {
        let driver = |call, e: cudarc::driver::DriverError| LaunchError::Driver {
            kernel: self.name.clone(),
            call,
            message: e.to_string(),
        };
        self.opt_in_smem(cfg)?;
        // Values live in typed vectors that are fully built before references are taken.
        let mut ptrs = Vec::new();
        let mut i32s = Vec::new();
        let mut i64s = Vec::new();
        let mut f32s = Vec::new();
        for a in args {
            match *a {
                KernelArgValue::DevPtr(p) => ptrs.push(p),
                KernelArgValue::I32(v) => i32s.push(v),
                KernelArgValue::I64(v) => i64s.push(v),
                KernelArgValue::F32(v) => f32s.push(v),
            }
        }
        let mut builder = self.gpu.stream.launch_builder(&self.function);
        let (mut ip, mut ii, mut il, mut ifl) = (0, 0, 0, 0);
        for a in args {
            match a {
                KernelArgValue::DevPtr(_) => {
                    builder.arg(&ptrs[ip]);
                    ip += 1;
                }
                KernelArgValue::I32(_) => {
                    builder.arg(&i32s[ii]);
                    ii += 1;
                }
                KernelArgValue::I64(_) => {
                    builder.arg(&i64s[il]);
                    il += 1;
                }
                KernelArgValue::F32(_) => {
                    builder.arg(&f32s[ifl]);
                    ifl += 1;
                }
            }
        }
        let config = cudarc::driver::LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.dynamic_smem_bytes,
        };
        // SAFETY: forwarded to the caller's contract.
        unsafe { builder.launch(config) }.map_err(|e| driver("cuLaunchKernel", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_slots_hold_each_value_in_the_bytes_the_driver_reads() {
        let args = [
            KernelArgValue::DevPtr(0x7f00_1234_5678),
            KernelArgValue::I32(-2),
            KernelArgValue::I64(-3),
            KernelArgValue::F32(1.5),
        ];
        let slots = param_slots(&args);
        let bytes = |i: usize| slots[i].to_ne_bytes();
        assert_eq!(u64::from_ne_bytes(bytes(0)), 0x7f00_1234_5678);
        assert_eq!(i32::from_ne_bytes(bytes(1)[..4].try_into().unwrap()), -2);
        assert_eq!(i64::from_ne_bytes(bytes(2)), -3);
        assert_eq!(f32::from_ne_bytes(bytes(3)[..4].try_into().unwrap()), 1.5);
    }

    fn sig() -> Vec<ArgDecl> {
        vec![
            ArgDecl::new("q", ArgKind::DevPtr),
            ArgDecl::new("seq_len", ArgKind::I32),
            ArgDecl::new("stride", ArgKind::I64),
            ArgDecl::new("scale", ArgKind::F32),
        ]
    }

    #[test]
    fn matching_args_pass() {
        let args = [
            KernelArgValue::DevPtr(0x1000),
            KernelArgValue::I32(128),
            KernelArgValue::I64(1 << 40),
            KernelArgValue::F32(0.125),
        ];
        check_args("k", &sig(), &args).unwrap();
    }

    #[test]
    fn missing_argument_is_named() {
        let args = [KernelArgValue::DevPtr(0), KernelArgValue::I32(1)];
        let e = check_args("k", &sig(), &args).unwrap_err();
        assert!(matches!(
            e,
            LaunchError::ArgCount {
                expected: 4,
                got: 2,
                ..
            }
        ));
        assert!(e.to_string().contains("`stride`"), "{e}");
    }

    #[test]
    fn extra_argument_is_reported() {
        let mut args = vec![
            KernelArgValue::DevPtr(0),
            KernelArgValue::I32(1),
            KernelArgValue::I64(2),
            KernelArgValue::F32(3.0),
        ];
        args.push(KernelArgValue::I32(9));
        let e = check_args("k", &sig(), &args).unwrap_err();
        assert!(matches!(
            e,
            LaunchError::ArgCount {
                expected: 4,
                got: 5,
                ..
            }
        ));
        assert!(e.to_string().contains("extra"), "{e}");
    }

    #[test]
    fn wrong_kind_names_the_argument() {
        let args = [
            KernelArgValue::DevPtr(0),
            KernelArgValue::I64(1),
            KernelArgValue::I64(2),
            KernelArgValue::F32(3.0),
        ];
        match check_args("k", &sig(), &args).unwrap_err() {
            LaunchError::ArgKind {
                index,
                name,
                expected,
                got,
                ..
            } => {
                assert_eq!((index, name.as_str()), (1, "seq_len"));
                assert_eq!((expected, got), (ArgKind::I32, ArgKind::I64));
            }
            other => panic!("expected ArgKind, got {other:?}"),
        }
    }

    #[test]
    fn config_limits() {
        assert!(LaunchConfig::linear(1000, 128).validate().is_ok());
        assert_eq!(LaunchConfig::linear(1000, 128).grid, [8, 1, 1]);
        let mut c = LaunchConfig::linear(1, 1);
        c.block = [32, 32, 2];
        assert!(matches!(
            c.validate(),
            Err(LaunchError::InvalidConfig {
                field: "block",
                value: 2048,
                ..
            })
        ));
        c.block = [1, 1, 1];
        c.grid = [1, 0, 1];
        assert!(matches!(
            c.validate(),
            Err(LaunchError::InvalidConfig {
                field: "grid.y",
                ..
            })
        ));
        c.grid = [1, 1, 70000];
        assert!(matches!(
            c.validate(),
            Err(LaunchError::InvalidConfig {
                field: "grid.z",
                ..
            })
        ));
    }

    /// This machine class has no GPU driver; on a GPU machine the test checks the opposite.
    #[test]
    fn gpu_detection_never_panics() {
        let direct = Gpu::new(0);
        assert_eq!(gpu_available(), direct.is_ok());
        if let Err(e) = direct {
            assert!(matches!(e, LaunchError::NoGpu { .. }));
            assert!(e.to_string().starts_with("no GPU"));
        }
    }
}
