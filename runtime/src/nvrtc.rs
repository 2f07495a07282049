//! NVRTC compilation through cudarc, with `libnvrtc.so.12` loaded from the toolchain folder.
//!
//! cudarc's dynamic loading opens NVRTC by bare library names (`libnvrtc.so`, ...,
//! `libnvrtc.so.12`), which the dynamic linker only finds on `LD_LIBRARY_PATH`. The
//! [`Compiler`] first opens the wheel's library by absolute path and keeps it loaded for the
//! life of the process; glibc then resolves cudarc's `libnvrtc.so.12` candidate to that same
//! library (a loaded object matches its SONAME), so no environment variable is needed. If a
//! system `libnvrtc.so` is found first, cudarc uses it; [`Compiler::uses_toolchain_library`]
//! reports that, and [`Compiled::nvrtc_version`] says which NVRTC compiled each kernel.
//!
//! Every compile targets a real architecture (`sm_80`, `sm_90`, `sm_90a`), so one NVRTC call
//! gives the PTX, the CUBIN and the ptxas resource log (`--ptxas-options=-v`).
//!
//! [`compile`] / [`compile_with`] always run NVRTC. [`compile_cached`] /
//! [`compile_with_cached`] (and [`Compiler::compile_cached`]) first look the compile up in the
//! persistent [`KernelCache`] and store what they compile, so a kernel is compiled once per
//! machine rather than once per process; [`Compiled::from_cache`] says which happened.
//!
//! ```no_run
//! use attnforge_runtime::{compile, Arch};
//! let src = r#"extern "C" __global__ void k(float* o) { o[threadIdx.x] = 1.0f; }"#;
//! let c = compile(src, "k", Arch::Sm90)?;
//! assert!(c.ptx.contains(".entry k"));
//! # Ok::<(), attnforge_runtime::CompileError>(())
//! ```

use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cudarc::nvrtc::{result as nv, sys};

use crate::kcache::{cache_key, CacheEntry, CacheKey, CompilerFingerprint, KernelCache};
use crate::toolchain::{Toolchain, ToolchainError};

/// The target architecture (the code generator's; `sm_90a` is [`CompileOptions::arch_specific`]).
pub use attnforge_codegen::tile::Arch;

/// Options of one compile. [`CompileOptions::new`] gives the defaults used by [`compile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Target architecture.
    pub arch: Arch,
    /// Compile for the arch-specific target (`sm_90a`: `wgmma`/`setmaxnreg`, not forward
    /// compatible); only with [`Arch::Sm90`]. Off by default.
    pub arch_specific: bool,
    /// C++ dialect passed as `-std=`; `c++20` by default, like the simulator's g++ build.
    pub std: String,
    /// Ask ptxas for its resource report (`--ptxas-options=-v`); on by default.
    pub ptxas_verbose: bool,
    /// FlashAttention-style float mode, on by default: `-ftz=true -prec-div=false
    /// -prec-sqrt=false` (denormals flushed to zero, division and square root to within 2 ulp;
    /// FlashAttention builds with `--use_fast_math`, which implies these and more). The
    /// kernels' exponentials are `exp2f` of non-positive arguments whose subnormal results
    /// do not matter next to the row's largest term (1); it shortens the NVRTC + ptxas
    /// compile by about 8% and the kernels' instruction count. Off: IEEE-exact division
    /// and subnormals.
    pub fast_float: bool,
    /// Further NVRTC options, appended verbatim (e.g. `--use_fast_math`, `-DNAME=1`, `-lineinfo`).
    pub extra: Vec<String>,
}

impl CompileOptions {
    /// The NVRTC/ptxas target name: `sm_80`, `sm_90`, or `sm_90a` with `arch_specific`.
    pub fn target_name(&self) -> String {
        if self.arch_specific {
            format!("{}a", self.arch.sm_name())
        } else {
            self.arch.sm_name().to_owned()
        }
    }

    /// The options of a generated kernel with `tile` on `arch`: the defaults, and the
    /// arch-specific target (`sm_90a`) for a warpgroup-MMA tile.
    pub fn for_tile(arch: Arch, tile: &attnforge_codegen::tile::TileConfig) -> Self {
        let mut o = Self::new(arch);
        o.arch_specific = tile.wgmma;
        o
    }

    /// Defaults for `arch`: C++20, ptxas report on, fast float mode on, nothing extra.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            arch_specific: false,
            std: "c++20".to_owned(),
            ptxas_verbose: true,
            fast_float: true,
            extra: Vec::new(),
        }
    }
}

/// `sm_90a` exists only on top of `sm_90`.
fn check_target(name: &str, opts: &CompileOptions) -> Result<(), CompileError> {
    if opts.arch_specific && opts.arch != Arch::Sm90 {
        return Err(CompileError::InvalidInput {
            name: name.to_owned(),
            field: "options",
            reason: format!(
                "arch_specific (sm_90a) needs arch sm_90, not {}; set arch to Arch::Sm90 or \
                 turn arch_specific off",
                opts.arch
            ),
        });
    }
    Ok(())
}

/// The result of one NVRTC compile.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Kernel (or variant) name given to [`compile`]; also the program name `<name>.cu`.
    pub name: String,
    /// Target architecture.
    pub arch: Arch,
    /// PTX text.
    pub ptx: String,
    /// CUBIN for `arch` (present for every real-architecture compile).
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log: warnings and, with `ptxas_verbose`, the ptxas resource report.
    pub log: String,
    /// Every option passed to NVRTC.
    pub options: Vec<String>,
    /// Wall-clock time of the NVRTC call (create + compile + fetch outputs); zero when the
    /// result came from the [`KernelCache`] (no NVRTC call was made).
    pub compile_time: Duration,
    /// `(major, minor)` of the NVRTC library that compiled it.
    pub nvrtc_version: (i32, i32),
    /// Whether PTX, CUBIN and log were read from the [`KernelCache`] instead of compiled.
    /// Always false for [`compile`] / [`compile_with`].
    pub from_cache: bool,
    /// Time spent in the cache: hashing the key plus reading and verifying the entry (the
    /// whole cost of a hit). Zero when no cache was consulted (uncached calls, a disabled
    /// cache).
    pub cache_lookup: Duration,
}

/// NVRTC compilation failure.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The toolchain folder was not found.
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    /// `libnvrtc.so.12` exists but could not be loaded.
    #[error("cannot load NVRTC from {path}: {reason}; reinstall with `cargo xtask setup`")]
    LoadLibrary {
        /// Path of the library.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// An input cannot be passed to NVRTC.
    #[error("invalid {field} for kernel `{name}`: {reason}")]
    InvalidInput {
        /// Kernel name as given.
        name: String,
        /// Which input (`name`, `source`, `options`).
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The CUDA source did not compile. Carries everything needed to reproduce it.
    #[error("NVRTC failed to compile kernel `{name}` for {arch}:\n{log}\n{excerpt}options: {}",
            .options.join(" "))]
    Compilation {
        /// Kernel (variant) name.
        name: String,
        /// Target architecture.
        arch: Arch,
        /// NVRTC options used.
        options: Vec<String>,
        /// NVRTC's log with the diagnostics.
        log: String,
        /// The source lines the log points at, numbered (empty when none are named).
        excerpt: String,
        /// The complete CUDA source.
        cuda_source: String,
    },
    /// An NVRTC API call other than the compile itself failed.
    #[error("NVRTC call {call} failed for kernel `{name}`: {code}")]
    Nvrtc {
        /// Kernel name.
        name: String,
        /// The API function.
        call: &'static str,
        /// The NVRTC status.
        code: String,
    },
    /// cudarc panicked inside an NVRTC call (for example a symbol missing from a foreign
    /// `libnvrtc`); the panic was contained.
    #[error("NVRTC binding panicked while compiling `{name}`: {message}")]
    Panicked {
        /// Kernel name.
        name: String,
        /// The panic message.
        message: String,
    },
}

/// The loaded NVRTC library plus the toolchain paths. Create once ([`Compiler::global`]) and
/// reuse: loading is done once per process, each compile is one NVRTC program.
#[derive(Debug)]
pub struct Compiler {
    toolchain: Toolchain,
    /// Keeps the wheel's `libnvrtc.so.12` loaded so cudarc resolves to it.
    _lib: libloading::Library,
    version: (i32, i32),
    uses_toolchain_library: bool,
    /// What, besides source, name and options, keys a [`KernelCache`] entry.
    fingerprint: CompilerFingerprint,
}

/// CUDA headers (in the include folder) whose content the kernel prelude compiles in; their
/// size and modification time are part of every cache key.
const KEYED_HEADERS: [&str; 4] = [
    "cuda_fp16.h",
    "cuda_fp16.hpp",
    "cuda_bf16.h",
    "cuda_bf16.hpp",
];

static GLOBAL: OnceLock<Compiler> = OnceLock::new();

type NvrtcVersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

impl Compiler {
    /// The process-wide compiler for [`Toolchain::locate`]; loads NVRTC on first use.
    /// A failure is not cached, so a later call after `cargo xtask setup` succeeds.
    pub fn global() -> Result<&'static Compiler, CompileError> {
        if let Some(c) = GLOBAL.get() {
            return Ok(c);
        }
        let c = Compiler::new(Toolchain::locate()?)?;
        Ok(GLOBAL.get_or_init(|| c))
    }

    /// Loads NVRTC from `toolchain`. Prefer [`Compiler::global`]: cudarc binds NVRTC once per
    /// process, so only the first loaded library is ever used for compiling.
    pub fn new(toolchain: Toolchain) -> Result<Self, CompileError> {
        let path = toolchain.nvrtc_lib.display().to_string();
        // SAFETY: loading NVIDIA's libnvrtc runs no initialisers with preconditions.
        let lib = unsafe { libloading::Library::new(&toolchain.nvrtc_lib) }.map_err(|e| {
            CompileError::LoadLibrary {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let (mut major, mut minor) = (0, 0);
        let ours = {
            // SAFETY: nvrtcVersion has this signature in every NVRTC release.
            let f = unsafe { lib.get::<NvrtcVersionFn>(b"nvrtcVersion\0") }.map_err(|e| {
                CompileError::LoadLibrary {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            // SAFETY: valid out-pointers.
            unsafe { f(&mut major, &mut minor) };
            *f as usize
        };
        // SAFETY: only dlopen()s candidate names; the wheel's library is already loaded, so
        // the `libnvrtc.so.12` candidate resolves.
        if !unsafe { sys::is_culib_present() } {
            return Err(CompileError::LoadLibrary {
                path,
                reason: "cudarc could not resolve libnvrtc after preloading it (a CUDA toolkit \
                         library other than libnvrtc.so.12: put its folder on LD_LIBRARY_PATH)"
                    .to_owned(),
            });
        }
        let theirs = catch_unwind(|| {
            // SAFETY: is_culib_present() returned true, so culib() finds a library.
            let lib = unsafe { sys::culib() };
            unsafe { lib.get::<NvrtcVersionFn>(b"nvrtcVersion\0") }
                .map(|s| *s as usize)
                .ok()
        })
        .ok()
        .flatten();
        let uses_toolchain_library = theirs == Some(ours);
        let mut keyed = vec![toolchain.nvrtc_lib.clone()];
        keyed.extend(KEYED_HEADERS.iter().map(|h| toolchain.include_dir.join(h)));
        let fingerprint = CompilerFingerprint::new((major, minor), uses_toolchain_library, &keyed);
        Ok(Self {
            toolchain,
            _lib: lib,
            version: (major, minor),
            uses_toolchain_library,
            fingerprint,
        })
    }

    /// The toolchain this compiler uses for headers and tools.
    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    /// `(major, minor)` of the toolchain's NVRTC.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Whether cudarc's NVRTC calls go to the toolchain's library (false when a system
    /// `libnvrtc.so` was found first by the dynamic linker).
    pub fn uses_toolchain_library(&self) -> bool {
        self.uses_toolchain_library
    }

    /// The full NVRTC option list for `opts`.
    pub fn options(&self, opts: &CompileOptions) -> Vec<String> {
        let mut v = vec![
            format!("--gpu-architecture={}", opts.target_name()),
            format!("--include-path={}", self.toolchain.include_dir.display()),
            format!("-std={}", opts.std),
        ];
        if opts.ptxas_verbose {
            v.push("--ptxas-options=-v".to_owned());
        }
        if opts.fast_float {
            v.extend(["-ftz=true", "-prec-div=false", "-prec-sqrt=false"].map(str::to_owned));
        }
        v.extend(opts.extra.iter().cloned());
        v
    }

    /// What identifies this compiler in a [`KernelCache`] key (NVRTC version, library and
    /// header fingerprints).
    pub fn fingerprint(&self) -> &CompilerFingerprint {
        &self.fingerprint
    }

    /// The [`KernelCache`] key of compiling `source` (kernel `name`) with `opts`.
    pub fn cache_key(&self, source: &str, name: &str, opts: &CompileOptions) -> CacheKey {
        cache_key(source, name, &self.options(opts), &self.fingerprint)
    }

    /// [`Compiler::compile_with`] through `cache`: a verified entry is returned without
    /// calling NVRTC (`from_cache: true`); otherwise the source is compiled and, on success,
    /// stored (replacing a corrupt entry). Cache failures never fail the compile; compile
    /// errors are returned as by `compile_with` and not cached.
    pub fn compile_cached(
        &self,
        cache: &KernelCache,
        source: &str,
        name: &str,
        opts: &CompileOptions,
    ) -> Result<Compiled, CompileError> {
        if !cache.is_enabled() {
            return self.compile_with(source, name, opts);
        }
        check_target(name, opts)?;
        let start = Instant::now();
        let options = self.options(opts);
        let key = cache_key(source, name, &options, &self.fingerprint);
        if let Some(e) = cache.load(&key) {
            return Ok(Compiled {
                name: name.to_owned(),
                arch: opts.arch,
                ptx: e.ptx,
                cubin: e.cubin,
                log: e.log,
                options,
                compile_time: Duration::ZERO,
                nvrtc_version: e.nvrtc_version,
                from_cache: true,
                cache_lookup: start.elapsed(),
            });
        }
        let lookup = start.elapsed();
        let mut c = self.compile_with(source, name, opts)?;
        c.cache_lookup = lookup;
        cache.store(
            &key,
            &CacheEntry {
                ptx: c.ptx.clone(),
                cubin: c.cubin.clone(),
                log: c.log.clone(),
                nvrtc_version: c.nvrtc_version,
                compile_time: c.compile_time,
            },
        );
        Ok(c)
    }

    /// Compiles `source`, whose kernel (or variant) is called `name`, with `opts`.
    pub fn compile_with(
        &self,
        source: &str,
        name: &str,
        opts: &CompileOptions,
    ) -> Result<Compiled, CompileError> {
        let invalid = |field, reason: &str| CompileError::InvalidInput {
            name: name.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid(
                "name",
                "the kernel name is empty; pass the kernel's symbol",
            ));
        }
        let c_name = CString::new(format!("{name}.cu"))
            .map_err(|_| invalid("name", "contains a NUL byte; remove it"))?;
        let c_src = CString::new(source)
            .map_err(|_| invalid("source", "contains a NUL byte; remove it"))?;
        check_target(name, opts)?;
        let options = self.options(opts);
        if options.iter().any(|o| o.contains('\0')) {
            return Err(invalid(
                "options",
                "an option contains a NUL byte; remove it",
            ));
        }
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| run_nvrtc(&c_src, &c_name, &options)));
        let raw = match outcome {
            Ok(r) => r,
            Err(p) => {
                let message = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(CompileError::Panicked {
                    name: name.to_owned(),
                    message,
                });
            }
        };
        let compile_time = start.elapsed();
        let nv_err = |call, code: nv::NvrtcError| CompileError::Nvrtc {
            name: name.to_owned(),
            call,
            code: format!("{:?}", code.0),
        };
        match raw {
            RawOutcome::ApiError(call, code) => Err(nv_err(call, code)),
            RawOutcome::Failed { log } => Err(CompileError::Compilation {
                name: name.to_owned(),
                arch: opts.arch,
                options,
                excerpt: excerpt(&log, source),
                log,
                cuda_source: source.to_owned(),
            }),
            RawOutcome::Ok { ptx, cubin, log } => Ok(Compiled {
                name: name.to_owned(),
                arch: opts.arch,
                ptx,
                cubin,
                log,
                options,
                compile_time,
                nvrtc_version: self.version,
                from_cache: false,
                cache_lookup: Duration::ZERO,
            }),
        }
    }
}

enum RawOutcome {
    Ok {
        ptx: String,
        cubin: Option<Vec<u8>>,
        log: String,
    },
    Failed {
        log: String,
    },
    ApiError(&'static str, nv::NvrtcError),
}

/// Destroys the NVRTC program on every path.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program, destroyed once here.
        let _ = unsafe { nv::destroy_program(self.0) };
    }
}

fn chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn run_nvrtc(src: &CString, name: &CString, options: &[String]) -> RawOutcome {
    let prog = match nv::create_program(src, Some(name)) {
        Ok(p) => Program(p),
        Err(e) => return RawOutcome::ApiError("nvrtcCreateProgram", e),
    };
    // SAFETY: `prog` is live until dropped; src and name outlive it.
    let compiled = unsafe { nv::compile_program(prog.0, options) };
    let log = match unsafe { nv::get_program_log(prog.0) } {
        Ok(l) => chars_to_string(&l),
        Err(e) => return RawOutcome::ApiError("nvrtcGetProgramLog", e),
    };
    match compiled {
        Ok(()) => {}
        Err(nv::NvrtcError(sys::nvrtcResult::NVRTC_ERROR_COMPILATION)) => {
            return RawOutcome::Failed { log }
        }
        Err(e) => return RawOutcome::ApiError("nvrtcCompileProgram", e),
    }
    let ptx = match unsafe { nv::get_ptx(prog.0) } {
        Ok(p) => chars_to_string(&p),
        Err(e) => return RawOutcome::ApiError("nvrtcGetPTX", e),
    };
    let mut size = 0usize;
    // SAFETY: valid program and out-pointer.
    let cubin = match unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result() {
        Ok(()) if size > 0 => {
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds `size` bytes as NVRTC requires.
            if let Err(e) = unsafe { sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()) }.result()
            {
                return RawOutcome::ApiError("nvrtcGetCUBIN", e);
            }
            Some(buf)
        }
        Ok(()) => None,
        Err(e) => return RawOutcome::ApiError("nvrtcGetCUBINSize", e),
    };
    RawOutcome::Ok { ptx, cubin, log }
}

/// Numbered source lines around each `<file>(<line>): error` the log names.
fn excerpt(log: &str, source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut wanted: Vec<usize> = Vec::new();
    for l in log.lines() {
        let Some(open) = l.find(".cu(") else { continue };
        let rest = &l[open + 4..];
        let Some(close) = rest.find(')') else {
            continue;
        };
        if !rest[close..].contains("error") {
            continue;
        }
        if let Ok(n) = rest[..close].parse::<usize>() {
            wanted.push(n);
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = String::new();
    for n in wanted.into_iter().take(5) {
        let lo = n.saturating_sub(2).max(1);
        let hi = (n + 1).min(lines.len());
        for i in lo..=hi {
            let mark = if i == n { ">" } else { " " };
            out.push_str(&format!("{mark}{i:5} | {}\n", lines[i - 1]));
        }
        out.push_str("      ...\n");
    }
    out
}

/// Compiles `source` (kernel `name`) for `arch` with the default options, using the
/// process-wide [`Compiler`].
pub fn compile(source: &str, name: &str, arch: Arch) -> Result<Compiled, CompileError> {
    compile_with(source, name, &CompileOptions::new(arch))
}

/// Compiles with explicit options, using the process-wide [`Compiler`].
pub fn compile_with(
    source: &str,
    name: &str,
    opts: &CompileOptions,
) -> Result<Compiled, CompileError> {
    Compiler::global()?.compile_with(source, name, opts)
}

/// [`compile`] through the process-wide [`KernelCache::global`] (the folder chosen by
/// `$ATTNFORGE_KERNEL_CACHE`, `$XDG_CACHE_HOME` or `$HOME`): a kernel compiled before, by any
/// process, is read back instead of compiled again.
pub fn compile_cached(source: &str, name: &str, arch: Arch) -> Result<Compiled, CompileError> {
    compile_with_cached(source, name, &CompileOptions::new(arch))
}

/// [`compile_with`] through the process-wide [`KernelCache::global`].
pub fn compile_with_cached(
    source: &str,
    name: &str,
    opts: &CompileOptions,
) -> Result<Compiled, CompileError> {
    Compiler::global()?.compile_cached(KernelCache::global(), source, name, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.sm_name()), Some(a));
            assert_eq!(a.to_string(), a.sm_name());
        }
        assert_eq!(Arch::parse("75"), None);
        assert_eq!(
            Arch::parse("90a"),
            None,
            "sm_90a is a target flag, not an Arch"
        );
    }

    #[test]
    fn arch_specific_targets_sm_90a() {
        let mut o = CompileOptions::new(Arch::Sm90);
        assert_eq!(o.target_name(), "sm_90");
        o.arch_specific = true;
        assert_eq!(o.target_name(), "sm_90a");
        assert_eq!(Arch::Sm90.compute_capability(), (9, 0));
        let bad = CompileOptions {
            arch_specific: true,
            ..CompileOptions::new(Arch::Sm80)
        };
        let e = check_target("k", &bad).unwrap_err().to_string();
        assert!(e.contains("arch_specific") && e.contains("sm_80"), "{e}");
        assert!(check_target("k", &o).is_ok());
    }

    #[test]
    fn excerpt_points_at_the_error_line() {
        let src = "a\nb\nc\nd\ne\n";
        let log = "k.cu(3): error: identifier \"c\" is undefined\n";
        let ex = excerpt(log, src);
        assert!(ex.contains(">    3 | c"), "{ex}");
        assert!(ex.contains("     2 | b"), "{ex}");
        assert!(!ex.contains("| e"), "{ex}");
        assert_eq!(excerpt("k.cu(3): warning: x", src), "");
    }
}
