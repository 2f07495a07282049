//! attnforge kernel toolchain: NVRTC compilation, ptxas resource reports, SASS and CUDA launch.
//!
//! The CUDA compilers come from NVIDIA's PyPI wheels installed by `cargo xtask setup` into
//! `.toolchain/cuda` ([`Toolchain`]); no GPU and no system CUDA are needed to compile,
//! inspect resources or disassemble. Launching needs a GPU and is detected at run time
//! ([`gpu_available`]).
//!
//! - [`compile`] / [`compile_with`]: CUDA source to PTX + CUBIN with NVRTC (via cudarc).
//! - [`build_kernel`] / [`build_many`]: compile plus the ptxas report of the kernel
//!   ([`ResourceUsage`]: registers, shared memory, stack frame, spills).
//! - [`compile_cached`] / [`build_kernel_cached`] / [`build_many_cached`]: the same through
//!   the persistent on-disk [`KernelCache`] (a kernel is compiled once per machine).
//! - [`run_ptxas`]: standalone `ptxas -v` on PTX; [`parse_ptxas_log`] parses either output.
//! - [`sass`]: CUBIN to SASS text; [`sass_opcode_count`] counts e.g. `HMMA`;
//!   [`sass_loops`] / [`opcode_count_in_loops`] find its loops (backward branches);
//!   [`main_loops`] finds each function's main loop by dominators and counts its
//!   instructions per MMA by class ([`MainLoopReport`], used by `cargo xtask anchors`).
//! - [`Gpu`], [`GpuKernel`]: load and launch (checked against a declared signature, or
//!   `unsafe` unchecked).
//!
//! ```no_run
//! use attnforge_runtime::{build_kernel, Arch};
//! let src = r#"extern "C" __global__ void k(float* o) { o[threadIdx.x] = 2.0f; }"#;
//! let b = build_kernel(src, "k", Arch::Sm90)?;
//! assert_eq!(b.resources.stack_frame_bytes, 0);
//! # Ok::<(), attnforge_runtime::BuildError>(())
//! ```

pub mod exec;
pub mod exec_backward;
mod exec_cuda;
pub mod exec_device;
pub mod exec_dynamic;
pub mod exec_recycled;
pub mod exec_serving;
pub mod exec_stats;
mod kcache;
mod launch;
mod nvrtc;
pub mod pipeline;
mod ptxas;
mod report;
mod sass;
mod sass_cfg;
mod toolchain;

/// The code generator (specs, validation, emission), re-exported.
pub use attnforge_codegen as codegen;
/// The CPU SIMT simulator, re-exported.
pub use attnforge_sim as sim;
pub use kcache::{
    cache_key, CacheEntry, CacheKey, CompilerFingerprint, KernelCache, KERNEL_CACHE_ENV,
    KERNEL_CACHE_FORMAT,
};
pub use launch::{
    check_args, device_ptr, gpu_available, ArgDecl, ArgKind, Gpu, GpuKernel, KernelArgValue,
    LaunchConfig, LaunchError, DEFAULT_MAX_DYNAMIC_SMEM,
};
pub use nvrtc::{
    compile, compile_cached, compile_with, compile_with_cached, Arch, CompileError, CompileOptions,
    Compiled, Compiler,
};
pub use ptxas::{
    parse_ptxas_log, run_ptxas, FunctionFrame, PtxasReport, ReportParseError, ResourceUsage,
    SpillError, ToolError,
};
pub use report::{
    build_kernel, build_kernel_cached, build_many, build_many_cached, build_many_with_cache,
    build_with, build_with_cache, BuildError, KernelBuild, KernelSource,
};
pub use sass::{
    opcode_count_in_loops, sass, sass_loops, sass_opcode_count, sass_with, SassError, SassLoop,
};
pub use sass_cfg::{
    classify, global_load_bytes, ldmatrix_bytes, main_loops, mma_equivalents, natural_loop_summary,
    tile_load_bytes, InnerLoop, InstrClass, MainLoopHints, MainLoopReport, PathCounts, TripSource,
};
pub use toolchain::{Toolchain, ToolchainError, CUDA_HOME_ENV, SETUP_HINT};
