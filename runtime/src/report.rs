//! Compile + resource report in one call, for one kernel or a whole catalog.
//!
//! The NVRTC library is loaded once per process ([`crate::Compiler::global`]); each kernel
//! costs one NVRTC program (tens of ms for small kernels). [`build_many`] compiles on all
//! cores, returning results in input order.
//!
//! The `*_cached` variants ([`build_kernel_cached`], [`build_with_cache`],
//! [`build_many_cached`], [`build_many_with_cache`]) go through the persistent
//! [`KernelCache`]: a hit skips NVRTC and re-parses the stored ptxas report, so the result is
//! the same as a fresh build's; `compiled.from_cache` and `compiled.cache_lookup` tell a hit
//! apart. The uncached functions always compile.
//!
//! ```no_run
//! use attnforge_runtime::{build_kernel, Arch};
//! let src = r#"extern "C" __global__ void k(float* o) { o[threadIdx.x] = 1.0f; }"#;
//! let b = build_kernel(src, "k", Arch::Sm80)?;
//! println!("{} registers, {:?}", b.resources.registers, b.compiled.compile_time);
//! b.resources.check_no_spills()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::kcache::KernelCache;
use crate::nvrtc::{Arch, CompileError, CompileOptions, Compiled, Compiler};
use crate::ptxas::{parse_ptxas_log, PtxasReport, ReportParseError, ResourceUsage};

/// A compiled kernel with its ptxas resources.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// PTX, CUBIN, log, options, timings.
    pub compiled: Compiled,
    /// The resources of the kernel named in the request.
    pub resources: ResourceUsage,
    /// The whole report (every kernel in the module, non-inlined functions, warnings).
    pub report: PtxasReport,
}

/// Failure of [`build_kernel`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// NVRTC failed (the error carries log, options and source).
    #[error(transparent)]
    Compile(Box<CompileError>),
    /// The ptxas report in NVRTC's log could not be parsed.
    #[error("kernel `{name}` for {arch}: {error}")]
    Report {
        /// Kernel name.
        name: String,
        /// Architecture.
        arch: Arch,
        /// The parse error.
        error: ReportParseError,
    },
    /// The module compiled but has no entry function of that name.
    #[error(
        "kernel `{name}` for {arch}: no entry function `{name}` in the module (found: {found:?}); \
         declare it `extern \"C\" __global__` with exactly this name"
    )]
    KernelMissing {
        /// Kernel name requested.
        name: String,
        /// Architecture.
        arch: Arch,
        /// Entry functions that were reported.
        found: Vec<String>,
    },
}

impl From<CompileError> for BuildError {
    fn from(e: CompileError) -> Self {
        BuildError::Compile(Box::new(e))
    }
}

/// One kernel to build: source text, kernel symbol, options.
#[derive(Debug, Clone)]
pub struct KernelSource<'a> {
    /// Complete CUDA source.
    pub source: &'a str,
    /// Kernel symbol (`extern "C"`), also used to label errors.
    pub name: &'a str,
    /// Architecture and options; `ptxas_verbose` is forced on.
    pub options: CompileOptions,
}

/// Compiles `source` for `arch` and extracts the resources of kernel `name`.
pub fn build_kernel(source: &str, name: &str, arch: Arch) -> Result<KernelBuild, BuildError> {
    build_with(
        Compiler::global()?,
        &KernelSource {
            source,
            name,
            options: CompileOptions::new(arch),
        },
    )
}

/// [`build_kernel`] through the process-wide [`KernelCache::global`].
pub fn build_kernel_cached(
    source: &str,
    name: &str,
    arch: Arch,
) -> Result<KernelBuild, BuildError> {
    build_with_cache(
        Compiler::global()?,
        KernelCache::global(),
        &KernelSource {
            source,
            name,
            options: CompileOptions::new(arch),
        },
    )
}

/// [`build_kernel`] with an explicit compiler and options.
pub fn build_with(compiler: &Compiler, k: &KernelSource<'_>) -> Result<KernelBuild, BuildError> {
    build_impl(compiler, None, k)
}

/// [`build_with`] through `cache` (see [`Compiler::compile_cached`]).
pub fn build_with_cache(
    compiler: &Compiler,
    cache: &KernelCache,
    k: &KernelSource<'_>,
) -> Result<KernelBuild, BuildError> {
    build_impl(compiler, Some(cache), k)
}

fn build_impl(
    compiler: &Compiler,
    cache: Option<&KernelCache>,
    k: &KernelSource<'_>,
) -> Result<KernelBuild, BuildError> {
    let mut options = k.options.clone();
    options.ptxas_verbose = true;
    let compiled = match cache {
        Some(c) => compiler.compile_cached(c, k.source, k.name, &options)?,
        None => compiler.compile_with(k.source, k.name, &options)?,
    };
    let report = parse_ptxas_log(&compiled.log).map_err(|error| BuildError::Report {
        name: k.name.to_owned(),
        arch: options.arch,
        error,
    })?;
    let resources = report
        .kernel(k.name)
        .cloned()
        .ok_or_else(|| BuildError::KernelMissing {
            name: k.name.to_owned(),
            arch: options.arch,
            found: report.kernels.iter().map(|r| r.kernel.clone()).collect(),
        })?;
    Ok(KernelBuild {
        compiled,
        resources,
        report,
    })
}

/// Builds every kernel, in parallel over the available cores; results are in input order.
/// The outer error means NVRTC itself is unavailable (no toolchain: run `cargo xtask setup`).
pub fn build_many(
    kernels: &[KernelSource<'_>],
) -> Result<Vec<Result<KernelBuild, BuildError>>, CompileError> {
    many_impl(None, kernels)
}

/// [`build_many`] through the process-wide [`KernelCache::global`]: kernels built before are
/// read back, the others compiled in parallel and stored.
pub fn build_many_cached(
    kernels: &[KernelSource<'_>],
) -> Result<Vec<Result<KernelBuild, BuildError>>, CompileError> {
    many_impl(Some(KernelCache::global()), kernels)
}

/// [`build_many`] through `cache`.
pub fn build_many_with_cache(
    cache: &KernelCache,
    kernels: &[KernelSource<'_>],
) -> Result<Vec<Result<KernelBuild, BuildError>>, CompileError> {
    many_impl(Some(cache), kernels)
}

fn many_impl(
    cache: Option<&KernelCache>,
    kernels: &[KernelSource<'_>],
) -> Result<Vec<Result<KernelBuild, BuildError>>, CompileError> {
    let compiler = Compiler::global()?;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(kernels.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<KernelBuild, BuildError>>> =
        (0..kernels.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(k) = kernels.get(i) else { break };
                let r = build_impl(compiler, cache, k);
                if let Ok(mut guard) = results.lock() {
                    guard[i] = Some(r);
                }
            });
        }
    });
    Ok(slots
        .into_iter()
        .zip(kernels)
        .map(|(r, k)| {
            r.unwrap_or_else(|| {
                Err(CompileError::Panicked {
                    name: k.name.to_owned(),
                    message: "a build worker stopped before finishing this kernel".to_owned(),
                }
                .into())
            })
        })
        .collect())
}
