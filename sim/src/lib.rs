//! `attnforge-sim`: a CPU SIMT simulator that runs the exact CUDA text attnforge emits.
//!
//! The source is compiled by g++ (C++20) together with a header-only shim
//! (`sim/shim/afsim.hpp`, see [`SHIM`]) into a shared object, loaded with
//! libloading, and launched with host buffers. Every CUDA thread is a fiber; each block
//! runs on one OS worker, blocks run in parallel. Barriers, warp collectives, shared
//! memory (poisoned, bounds-checked), atomics, `mma.sync` / `ldmatrix` / `cp.async`
//! emulations and work counters are provided by the shim. Errors inside the kernel
//! (deadlock, divergent barrier, out-of-bounds or uninitialised shared memory, a
//! shared-memory race between barriers, a missing `cp.async` wait, a global access outside
//! a pointer argument's buffer or a misaligned vector access, a fault such as a wild
//! pointer) become [`SimError::Launch`], never a hang or a crash of the host process.
//! Buffers are staged between inaccessible guard regions; the messages name the argument
//! (index and name, read from the kernel's parameter list), the offset and the thread.
//!
//! Shared memory is declared with `AF_SHARED(type, name, count)`,
//! `AF_DYNAMIC_SHARED(type, name)` and (an addition proposed to the conventions)
//! `AF_SHARED_VIEW(type, name, base, offset, count)`; indexing these accessors is
//! bounds-checked, poison-checked and race-checked, raw pointers taken from them are not.
//!
//! ```no_run
//! use attnforge_sim::{Schedule, SimArg, SimConfig, SimKernel};
//! let src = r#"
//! extern "C" __global__ void scale(const float* x, float* y, float a, int n) {
//!   int i = blockIdx.x * blockDim.x + threadIdx.x;
//!   if (i < n) y[i] = a * x[i];
//! }"#;
//! let k = SimKernel::build(src, "scale")?;
//! let x = vec![1.0f32; 100];
//! let mut y = vec![0.0f32; 100];
//! let mut args = [SimArg::input(&x), SimArg::output(&mut y), SimArg::F32(2.0), SimArg::I32(100)];
//! k.launch(4, 32, 0, &mut args, &SimConfig::new(Schedule::Reverse))?;
//! # Ok::<(), attnforge_sim::SimError>(())
//! ```
//!
//! # Emulated PTX wrappers (exact C++ signatures)
//! The codegen prelude defines these with real `asm` under `__CUDA_ARCH__`; under
//! `ATTNFORGE_SIM` the shim defines them (a trailing defaulted `std::source_location`
//! parameter is added by the shim for error messages and is invisible to callers):
//! ```text
//! void af_mma_m16n8k16_f16 (float* d, const unsigned* a, const unsigned* b, const float* c);
//! void af_mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b, const float* c);
//! void af_ldmatrix_x4      (unsigned* r, const void* smem_row);   // r[4]
//! void af_ldmatrix_x2      (unsigned* r, const void* smem_row);   // r[2]
//! void af_ldmatrix_x4_trans(unsigned* r, const void* smem_row);   // r[4]
//! void af_cp_async_16(void* smem_dst, const void* gmem_src);
//! unsigned af_smem_addr(const void* smem_ptr);   // byte offset in the block's shared memory
//! void af_ldmatrix_x4_at      (unsigned* r, unsigned smem_addr);
//! void af_ldmatrix_x4_trans_at(unsigned* r, unsigned smem_addr);
//! void af_cp_async_16_at(unsigned smem_dst, const void* gmem_src);
//! void af_cp_async_commit();
//! template <int N> void af_cp_async_wait();
//! ```
//! `a[4]`, `b[2]` hold packed 16-bit pairs (the lower element index in the low half),
//! `c[4]`/`d[4]` f32 accumulators (`d` may alias `c`), all in the PTX ISA fragment layouts
//! of `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32`.
//! See `sim/README.md` for the supported CUDA subset and the blind spots.

mod args;
mod compile;
mod error;
pub mod tma;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use args::{BufferArg, Elem, SimArg, SimElem};
pub use compile::{cache_dir, BuildOptions, SHIM};
pub use error::SimError;

/// Order in which blocks, and threads inside a block, are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// Blocks and threads in ascending order.
    Forward,
    /// Blocks and threads in descending order.
    Reverse,
    /// A seeded random permutation of blocks, and of threads at every scheduling round.
    Random(u64),
}

impl Schedule {
    /// The three schedules every simulator test should run: forward, reverse, random.
    pub fn standard(seed: u64) -> [Schedule; 3] {
        [Schedule::Forward, Schedule::Reverse, Schedule::Random(seed)]
    }
}

/// Launch settings of the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Block and thread order.
    pub schedule: Schedule,
    /// OS worker threads running blocks in parallel; 0 = available parallelism. With 1
    /// worker the block order is exactly the schedule's.
    pub workers: usize,
}

impl SimConfig {
    /// A config with the given schedule and automatic worker count.
    pub fn new(schedule: Schedule) -> SimConfig {
        SimConfig {
            schedule,
            workers: 0,
        }
    }
    /// Sets the worker count (0 = available parallelism).
    pub fn with_workers(mut self, workers: usize) -> SimConfig {
        self.workers = workers;
        self
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::new(Schedule::Forward)
    }
}

/// Grid or block extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim3 {
    /// x extent
    pub x: u32,
    /// y extent
    pub y: u32,
    /// z extent
    pub z: u32,
}

impl From<u32> for Dim3 {
    fn from(x: u32) -> Self {
        Dim3 { x, y: 1, z: 1 }
    }
}
impl From<(u32, u32)> for Dim3 {
    fn from((x, y): (u32, u32)) -> Self {
        Dim3 { x, y, z: 1 }
    }
}
impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Dim3 { x, y, z }
    }
}
impl From<[u32; 3]> for Dim3 {
    fn from([x, y, z]: [u32; 3]) -> Self {
        Dim3 { x, y, z }
    }
}

/// Work counters summed over a launch (`AF_COUNT`; ids from docs/conventions.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// `AF_CTR_TILE_FULL` (0): full tiles visited.
    pub tiles_full: u64,
    /// `AF_CTR_TILE_PARTIAL` (1): partial tiles visited.
    pub tiles_partial: u64,
    /// `AF_CTR_MASK_EVAL` (2): mask evaluations.
    pub mask_evals: u64,
    /// `AF_CTR_KEYS_GATHERED` (3): keys gathered by selection.
    pub keys_gathered: u64,
    /// `AF_CTR_SELECT_WORK` (4): selection work units.
    pub select_work: u64,
    /// All 8 counters.
    pub raw: [u64; 8],
}

impl SimCounters {
    fn from_raw(raw: [u64; 8]) -> SimCounters {
        SimCounters {
            tiles_full: raw[0],
            tiles_partial: raw[1],
            mask_evals: raw[2],
            keys_gathered: raw[3],
            select_work: raw[4],
            raw,
        }
    }
}

#[repr(C)]
struct LaunchCfg {
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem_bytes: u64,
    schedule: c_int,
    seed: u64,
    workers: c_int,
    arg_bytes: *const u64,
    arg_names: *const *const c_char,
}

#[repr(C)]
struct LaunchResult {
    status: c_int,
    counters: [u64; 8],
    message: [c_char; 1024],
}

type EntryFn = unsafe extern "C" fn(*mut *mut c_void, *const LaunchCfg, *mut LaunchResult) -> c_int;
type SigFn = unsafe extern "C" fn() -> *const c_char;

/// A kernel compiled for the simulator and loaded into this process.
#[derive(Debug)]
pub struct SimKernel {
    name: String,
    so: PathBuf,
    cached: bool,
    build_seconds: f64,
    repaired: Option<String>,
    params: Vec<String>,
    /// Parameter names read from the source (for error messages); empty if not found.
    names: Vec<CString>,
    entry: libloading::os::unix::Symbol<EntryFn>,
    _lib: libloading::Library,
}

/// Per `.so` path this process loaded: the `(device, inode)` loaded and the name it was
/// `dlopen`ed under.
type LoadedMap = HashMap<PathBuf, ((u64, u64), PathBuf)>;
static LOADED: Mutex<Option<LoadedMap>> = Mutex::new(None);

/// `dlopen`s `so`. The loader hands back the library already loaded under the same name
/// without looking at the file again, even when the file was replaced since (a rebuilt cache
/// entry); so a path whose file changed is loaded through a fresh hard link, removed once
/// loaded (the loader keeps answering to its name).
fn load_library(so: &Path) -> Result<libloading::Library, String> {
    let meta = std::fs::metadata(so).map_err(|e| e.to_string())?;
    let id = (meta.dev(), meta.ino());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let map = loaded.get_or_insert_with(HashMap::new);
    let (path, fresh_alias) = match map.get(so) {
        None => (so.to_path_buf(), false),
        Some((prev, name)) if *prev == id => (name.clone(), false),
        Some(_) => {
            static ALIAS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = ALIAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut alias = so.as_os_str().to_owned();
            alias.push(format!(".load{}-{n}", std::process::id()));
            let alias = PathBuf::from(alias);
            std::fs::hard_link(so, &alias)
                .or_else(|_| std::fs::copy(so, &alias).map(|_| ()))
                .map_err(|e| format!("linking `{}`: {e}", alias.display()))?;
            (alias, true)
        }
    };
    // SAFETY: the library is our own g++ output, verified against its build-time checksum;
    // its initialisers only set up statics.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| e.to_string());
    if fresh_alias {
        let _ = std::fs::remove_file(&path);
    }
    if lib.is_ok() {
        map.insert(so.to_path_buf(), (id, path));
    }
    lib
}

/// The parameter names of `extern "C" __global__ void <kernel>(...)` in `source`: the last
/// identifier of each top-level comma-separated parameter. `None` if the definition is not
/// found or a parameter has no name.
fn param_names(source: &str, kernel: &str) -> Option<Vec<String>> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = source[from..].find(kernel).map(|i| i + from) {
        from = at + kernel.len();
        let before = &source[..at];
        let after = source[from..].trim_start();
        let decl_start = before.rfind([';', '}']).map_or(0, |i| i + 1);
        if before.ends_with(is_ident)
            || !after.starts_with('(')
            || !before[decl_start..].contains("__global__")
        {
            continue;
        }
        let mut depth = 0usize;
        let mut list = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        list = Some(&after[1..i]);
                        break;
                    }
                }
                _ => {}
            }
        }
        let list = list?.trim();
        if list.is_empty() || list == "void" {
            return Some(Vec::new());
        }
        let mut names = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in list.char_indices().chain([(list.len(), ',')]) {
            match c {
                '(' | '<' | '[' => depth += 1,
                ')' | '>' | ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    let piece = list[start..i].trim();
                    let name: String = piece
                        .chars()
                        .rev()
                        .take_while(|&c| is_ident(c))
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    if name.is_empty() || name.len() == piece.len() {
                        return None;
                    }
                    names.push(name);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return Some(names);
    }
    None
}

fn check_name(name: &str) -> Result<(), SimError> {
    let bad = |reason: &str| SimError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let mut chars = name.chars();
    match chars.next() {
        None => {
            return Err(bad(
                "it is empty; pass the kernel's `extern \"C\"` function name",
            ))
        }
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(bad("it must start with an ASCII letter or `_`"))
        }
        _ => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad(
            "use only ASCII letters, digits and `_` (a C identifier)",
        ));
    }
    Ok(())
}

impl SimKernel {
    /// Compiles `source` (the exact emitted CUDA text) for the simulator with the default
    /// [`BuildOptions`] and loads it. `kernel_name` is the `extern "C" __global__` function.
    /// Builds are cached under [`cache_dir`] by a hash of shim, source, flags and name.
    pub fn build(source: &str, kernel_name: &str) -> Result<SimKernel, SimError> {
        SimKernel::build_with(source, kernel_name, &BuildOptions::default())
    }

    /// As [`SimKernel::build`] with explicit options.
    pub fn build_with(
        source: &str,
        kernel_name: &str,
        opts: &BuildOptions,
    ) -> Result<SimKernel, SimError> {
        check_name(kernel_name)?;
        let mut built = compile::build_so(source, kernel_name, opts, None)?;
        let lib = match load_library(&built.so) {
            Ok(lib) => lib,
            // a verified entry the loader still rejects (its checksum file damaged to match,
            // or built by another toolchain): rebuilt once
            Err(message) if built.cached => {
                built = compile::build_so(
                    source,
                    kernel_name,
                    opts,
                    Some(format!(
                        "cache entry `{}` was rejected by the loader ({message}); rebuilt it",
                        built.so.display()
                    )),
                )?;
                load_library(&built.so).map_err(|message| SimError::Load {
                    kernel: kernel_name.to_string(),
                    path: built.so.clone(),
                    message,
                })?
            }
            Err(message) => {
                return Err(SimError::Load {
                    kernel: kernel_name.to_string(),
                    path: built.so.clone(),
                    message,
                })
            }
        };
        if let Some(why) = &built.repaired {
            eprintln!("attnforge-sim: {why}");
        }
        let load_err = |message: String| SimError::Load {
            kernel: kernel_name.to_string(),
            path: built.so.clone(),
            message,
        };
        let sym = format!("{kernel_name}__afsim");
        // SAFETY: AFSIM_EXPORT_KERNEL defines this symbol with exactly this signature.
        let entry: libloading::Symbol<'_, EntryFn> =
            unsafe { lib.get(sym.as_bytes()) }.map_err(|e| load_err(format!("{sym}: {e}")))?;
        // SAFETY: the raw symbol is kept together with (and dropped before) the library.
        let entry = unsafe { entry.into_raw() };
        let sig_name = format!("{kernel_name}__afsim_sig");
        // SAFETY: AFSIM_EXPORT_KERNEL defines this symbol with exactly this signature.
        let sig: libloading::Symbol<'_, SigFn> = unsafe { lib.get(sig_name.as_bytes()) }
            .map_err(|e| load_err(format!("{sig_name}: {e}")))?;
        // SAFETY: returns a pointer to a static NUL-terminated string.
        let sig = unsafe { CStr::from_ptr(sig()) }
            .to_string_lossy()
            .into_owned();
        let params = if sig.is_empty() {
            Vec::new()
        } else {
            sig.split(',').map(str::to_string).collect()
        };
        let names = param_names(source, kernel_name)
            .filter(|n| n.len() == params.len())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| CString::new(n).ok())
            .collect();
        Ok(SimKernel {
            names,
            name: kernel_name.to_string(),
            so: built.so,
            cached: built.cached,
            build_seconds: built.seconds,
            repaired: built.repaired,
            params,
            entry,
            _lib: lib,
        })
    }

    /// The kernel name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The built shared object.
    pub fn so_path(&self) -> &Path {
        &self.so
    }
    /// Whether the `.so` came from the cache.
    pub fn was_cached(&self) -> bool {
        self.cached
    }
    /// What was repaired while building, if anything: a damaged cached `.so` (wrong size or
    /// checksum, checksum file missing, rejected by the loader) or precompiled shim header,
    /// each rebuilt. Also printed on stderr.
    pub fn cache_repair(&self) -> Option<&str> {
        self.repaired.as_deref()
    }
    /// Seconds spent building (or finding) the `.so`.
    pub fn build_seconds(&self) -> f64 {
        self.build_seconds
    }
    /// The kernel's parameter types as C++ spellings, e.g. `["const float*", "int"]`.
    pub fn param_types(&self) -> Vec<String> {
        self.params.iter().map(|p| args::cpp_type(p)).collect()
    }

    /// Runs the kernel on `grid` x `block` simulated threads with `dynamic_smem_bytes` of
    /// dynamic shared memory. `args` must match the kernel's parameters one to one (checked:
    /// count, pointer element types, scalar types). Output buffers are copied back, also
    /// when the launch fails.
    pub fn launch(
        &self,
        grid: impl Into<Dim3>,
        block: impl Into<Dim3>,
        dynamic_smem_bytes: usize,
        args: &mut [SimArg<'_>],
        cfg: &SimConfig,
    ) -> Result<SimCounters, SimError> {
        let (grid, block) = (grid.into(), block.into());
        let cfg_err = |field: &'static str, message: String| SimError::Config {
            kernel: self.name.clone(),
            field,
            message,
        };
        for (field, v) in [
            ("grid.x", grid.x),
            ("grid.y", grid.y),
            ("grid.z", grid.z),
            ("block.x", block.x),
            ("block.y", block.y),
            ("block.z", block.z),
        ] {
            if v == 0 {
                return Err(cfg_err(
                    field,
                    "is 0; every extent must be at least 1".into(),
                ));
            }
        }
        let threads = u64::from(block.x) * u64::from(block.y) * u64::from(block.z);
        if threads > 1024 {
            return Err(cfg_err(
                "block",
                format!("has {threads} threads; CUDA allows at most 1024 per block"),
            ));
        }
        if grid.y > 65535 || grid.z > 65535 {
            return Err(cfg_err(
                "grid",
                "y and z extents must be at most 65535".into(),
            ));
        }
        if dynamic_smem_bytes > 1 << 30 {
            return Err(cfg_err(
                "dynamic_smem_bytes",
                "is over 1 GiB; is it a byte count?".into(),
            ));
        }
        let codes: Vec<&str> = self.params.iter().map(String::as_str).collect();
        args::check(&codes, args).map_err(|message| SimError::Args {
            kernel: self.name.clone(),
            message,
        })?;

        // Stage buffers, then build the parameter value array (one slot per argument).
        let staged: Vec<Option<args::Staged>> = args
            .iter()
            .map(|a| match a {
                SimArg::Buffer(b) => Some(b.stage(cfg.schedule == Schedule::Reverse)),
                _ => None,
            })
            .collect();
        #[derive(Clone, Copy)]
        #[repr(C)]
        union Slot {
            ptr: *mut c_void,
            i32: i32,
            i64: i64,
            u32: u32,
            f32: f32,
        }
        let mut slots: Vec<Slot> = args
            .iter()
            .zip(&staged)
            .map(|(a, s)| match a {
                SimArg::Buffer(_) => Slot {
                    ptr: s.as_ref().map_or(std::ptr::null_mut(), |s| s.ptr()),
                },
                SimArg::Null => Slot {
                    ptr: std::ptr::null_mut(),
                },
                SimArg::I32(v) => Slot { i32: *v },
                SimArg::I64(v) => Slot { i64: *v },
                SimArg::U32(v) => Slot { u32: *v },
                SimArg::F32(v) => Slot { f32: *v },
            })
            .collect();
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| (s as *mut Slot).cast()).collect();
        // extents of the pointer arguments: the shim checks global accesses against them
        let arg_bytes: Vec<u64> = args
            .iter()
            .map(|a| match a {
                SimArg::Buffer(b) => b.byte_len as u64,
                _ => 0,
            })
            .collect();
        let name_ptrs: Vec<*const c_char> = self.names.iter().map(|n| n.as_ptr()).collect();
        let (schedule, seed) = match cfg.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(s) => (2, s),
        };
        let lc = LaunchCfg {
            grid: [grid.x, grid.y, grid.z],
            block: [block.x, block.y, block.z],
            dynamic_smem_bytes: dynamic_smem_bytes as u64,
            schedule,
            seed,
            workers: c_int::try_from(cfg.workers).unwrap_or(c_int::MAX),
            arg_bytes: arg_bytes.as_ptr(),
            arg_names: if name_ptrs.is_empty() {
                std::ptr::null()
            } else {
                name_ptrs.as_ptr()
            },
        };
        let mut res = LaunchResult {
            status: 0,
            counters: [0; 8],
            message: [0; 1024],
        };
        // SAFETY: `params` has one pointer per kernel parameter (checked against the
        // kernel's signature above), each pointing at a value of the parameter's type;
        // pointer parameters point at staged buffers that live until after the call.
        let rc = unsafe { (self.entry)(params.as_mut_ptr(), &lc, &mut res) };
        for (a, s) in args.iter_mut().zip(&staged) {
            if let (SimArg::Buffer(b), Some(s)) = (a, s) {
                b.unstage(s);
            }
        }
        if rc != 0 || res.status != 0 {
            // SAFETY: the shim always NUL-terminates the message within the array.
            let message = unsafe { CStr::from_ptr(res.message.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(SimError::Launch {
                kernel: self.name.clone(),
                message,
            });
        }
        // writes just outside a buffer's unguarded end land in its page slack, not in a guard
        for (i, (a, s)) in args.iter().zip(&staged).enumerate() {
            if let (SimArg::Buffer(b), Some(s)) = (a, s) {
                if let Some(off) = s.slack_written() {
                    let name = self
                        .names
                        .get(i)
                        .map(|n| format!(" `{}`", n.to_string_lossy()))
                        .unwrap_or_default();
                    let elem = b.byte_len.checked_div(b.len).unwrap_or(1).max(1) as i64;
                    return Err(SimError::Launch {
                        kernel: self.name.clone(),
                        message: format!(
                            "out-of-bounds global write {} argument {i}{name} ({} elements = \
                             {} bytes): byte offset {off} (element {}) was written (found after \
                             the launch; the thread is not known)",
                            if off < 0 {
                                "before the start of"
                            } else {
                                "past the end of"
                            },
                            b.len,
                            b.byte_len,
                            off.div_euclid(elem)
                        ),
                    });
                }
            }
        }
        Ok(SimCounters::from_raw(res.counters))
    }
}

// A built kernel can be shared across test threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SimKernel>();
};

#[cfg(test)]
mod tests {
    use super::param_names;

    #[test]
    fn parameter_names_come_from_the_kernel_definition() {
        let src = r#"
// calls flash(x) before the definition; flash_fwd is another kernel
__device__ void helper() { flash(0); }
extern "C" __global__ void flash_fwd(int z) {}
extern "C" __global__ void __launch_bounds__(128, 1) flash(
    const __half* __restrict__ q,
    float* o,
    long long q_stride_b,
    int n)
{
}"#;
        assert_eq!(
            param_names(src, "flash").unwrap(),
            ["q", "o", "q_stride_b", "n"]
        );
        assert_eq!(param_names(src, "flash_fwd").unwrap(), ["z"]);
        assert_eq!(
            param_names("__global__ void k() {}", "k").unwrap(),
            Vec::<String>::new()
        );
        // an unnamed parameter: no names at all
        assert!(param_names("__global__ void k(int, float* p) {}", "k").is_none());
        assert!(param_names("__global__ void k(int a) {}", "missing").is_none());
    }
}
