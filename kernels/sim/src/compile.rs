//! Building a kernel's `.so` with g++ and the shim, cached by content hash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::SimError;

/// The shim header, embedded so that builds work from any working directory.
pub const SHIM: &str = include_str!("../shim/afsim.hpp");

/// Options of a simulator build. The defaults are what [`crate::SimKernel::build`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// g++ optimisation level (`-O<n>`); 1 by default (fast to build, fast enough to run).
    pub opt_level: u8,
    /// Extra `-D` definitions (`NAME` or `NAME=VALUE`), e.g. `AFSIM_FORCE_UCONTEXT`.
    pub defines: Vec<String>,
    /// Build and use a precompiled shim header (cuts each cold build by about half).
    pub precompiled_header: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            opt_level: 1,
            defines: Vec::new(),
            precompiled_header: true,
        }
    }
}

impl BuildOptions {
    fn flags(&self) -> Vec<String> {
        let mut f = vec![
            "-std=c++20".to_string(),
            format!("-O{}", self.opt_level),
            "-fPIC".into(),
            "-pthread".into(),
            "-w".into(),
            // each .so keeps its own copy of the shim's state (no GNU-unique sharing
            // between kernels built from different shim versions)
            "-fvisibility=hidden".into(),
            "-fno-gnu-unique".into(),
        ];
        f.extend(self.defines.iter().map(|d| format!("-D{d}")));
        f
    }
}

/// The compiler: `ATTNFORGE_SIM_CXX` or `g++`.
pub(crate) fn compiler() -> String {
    std::env::var("ATTNFORGE_SIM_CXX").unwrap_or_else(|_| "g++".to_string())
}

/// The cache directory: `ATTNFORGE_SIM_CACHE`, else `<target>/afsim-cache` where the
/// target directory is `CARGO_TARGET_DIR` (at run time, then at build time) or the
/// workspace's `target/`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ATTNFORGE_SIM_CACHE") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("afsim-cache")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> SimError + 'p {
    move |source| SimError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary name next to `path` (same directory, so `rename` is atomic).
fn tmp_name(path: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp{}-{n}", std::process::id()));
    PathBuf::from(s)
}

/// Writes `text` to `path` unless it exists, atomically (temp file + rename).
fn write_atomic(path: &Path, text: &[u8]) -> Result<(), SimError> {
    if path.exists() {
        return Ok(());
    }
    let tmp = tmp_name(path);
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(text).map_err(io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename into", path))
}

fn run(cmd: &mut Command, cxx: &str) -> Result<std::process::Output, SimError> {
    cmd.output().map_err(|e| SimError::Toolchain {
        compiler: cxx.to_string(),
        message: e.to_string(),
    })
}

fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The result of [`build_so`].
#[derive(Debug, Clone)]
pub(crate) struct Built {
    pub so: PathBuf,
    pub cached: bool,
    pub seconds: f64,
}

/// Makes sure the shim (and its precompiled header) exist in `dir`; returns the shim path.
fn ensure_shim(dir: &Path, opts: &BuildOptions, cxx: &str) -> Result<PathBuf, SimError> {
    let flags = opts.flags();
    let mut h = Sha256::new();
    h.update(SHIM.as_bytes());
    h.update(flags.join(" ").as_bytes());
    h.update(cxx.as_bytes());
    let key = &hex(&h.finalize())[..16];
    let sub = dir.join(format!("shim-{key}"));
    std::fs::create_dir_all(&sub).map_err(io("create directory", &sub))?;
    let hpp = sub.join("afsim.hpp");
    write_atomic(&hpp, SHIM.as_bytes())?;
    if opts.precompiled_header {
        let gch = sub.join("afsim.hpp.gch");
        if !gch.exists() {
            let tmp = tmp_name(&gch);
            let mut cmd = Command::new(cxx);
            cmd.args(&flags)
                .arg("-x")
                .arg("c++-header")
                .arg(&hpp)
                .arg("-o")
                .arg(&tmp);
            let out = run(&mut cmd, cxx)?;
            if out.status.success() {
                std::fs::rename(&tmp, &gch).map_err(io("rename into", &gch))?;
            } else {
                // not fatal: builds fall back to parsing the header
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    Ok(hpp)
}

/// Builds (or finds in the cache) the `.so` for `source` + `AFSIM_EXPORT_KERNEL(name)`.
pub(crate) fn build_so(source: &str, name: &str, opts: &BuildOptions) -> Result<Built, SimError> {
    let start = Instant::now();
    let cxx = compiler();
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    let full = format!("{source}\n#line 1 \"afsim-export\"\nAFSIM_EXPORT_KERNEL({name})\n");
    let flags = opts.flags();
    let mut h = Sha256::new();
    for part in [SHIM, &full, &flags.join(" "), name, &cxx] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key = hex(&h.finalize())[..32].to_string();
    let so = dir.join(format!("{name}-{key}.so"));
    if so.exists() {
        return Ok(Built {
            so,
            cached: true,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let shim = ensure_shim(&dir, opts, &cxx)?;
    let cu = dir.join(format!("{name}-{key}.cu"));
    write_atomic(&cu, full.as_bytes())?;
    let tmp = tmp_name(&so);
    let mut cmd = Command::new(&cxx);
    cmd.args(&flags)
        .arg("-shared")
        // never unload: the shim installs a chained SIGSEGV handler for fiber stack guards
        .arg("-Wl,-z,nodelete")
        .arg("-x")
        .arg("c++")
        .arg("-include")
        .arg(&shim)
        .arg(&cu)
        .arg("-o")
        .arg(&tmp);
    let out = run(&mut cmd, &cxx)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(SimError::Compile {
            kernel: name.to_string(),
            command: cmdline(&cmd),
            source_path: cu,
            log,
        });
    }
    std::fs::rename(&tmp, &so).map_err(io("rename into", &so))?;
    Ok(Built {
        so,
        cached: false,
        seconds: start.elapsed().as_secs_f64(),
    })
}
