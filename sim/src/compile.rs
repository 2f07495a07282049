//! Building a kernel's `.so` with g++ and the shim, cached by content hash.
//!
//! Every cached `.so` has a checksum file next to it (`<so>.sha256`: SHA-256 and size of the
//! `.so`, written at build time). A hit is verified against it before the library is loaded:
//! a truncated `.so` would otherwise be mapped and die with SIGBUS on first use, and a
//! garbage one fail with "invalid ELF header". A damaged entry (wrong size, wrong checksum,
//! missing or malformed checksum file) is rebuilt and the reason reported
//! ([`Built::repaired`]). Files are replaced by writing a temporary file and renaming it,
//! never rewritten in place, so a library already mapped by a process stays intact.

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
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
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

/// Writes `text` to `path` unless it already holds exactly that, atomically (temp file +
/// rename). Returns whether it wrote (a damaged source or shim in the cache is replaced).
fn write_atomic(path: &Path, text: &[u8]) -> Result<bool, SimError> {
    if std::fs::read(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    replace_file(path, text)?;
    Ok(true)
}

/// Writes `text` to a temporary file and renames it over `path`.
fn replace_file(path: &Path, text: &[u8]) -> Result<(), SimError> {
    let tmp = tmp_name(path);
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(text).map_err(io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename into", path))
}

/// The checksum file of a cached `.so`.
fn checksum_path(so: &Path) -> PathBuf {
    let mut s = so.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// `sha256 <hex> size <bytes>` of a file.
fn checksum_line(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(format!(
        "sha256 {} size {}\n",
        hex(&Sha256::digest(&bytes)),
        bytes.len()
    ))
}

/// Why the cached `so` cannot be trusted; `Ok` when it matches the checksum recorded at
/// build time.
fn verify_entry(so: &Path) -> Result<(), String> {
    let sum = checksum_path(so);
    let recorded = std::fs::read_to_string(&sum).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("no checksum file `{}`", sum.display()),
        _ => format!("checksum file `{}` unreadable: {e}", sum.display()),
    })?;
    let size: Option<u64> = recorded
        .split_whitespace()
        .skip_while(|w| *w != "size")
        .nth(1)
        .and_then(|v| v.parse().ok());
    let Some(size) = size else {
        return Err(format!("checksum file `{}` is malformed", sum.display()));
    };
    let actual = std::fs::metadata(so)
        .map_err(|e| format!("unreadable: {e}"))?
        .len();
    if actual != size {
        return Err(format!(
            "{actual} bytes where {size} were built (truncated or overwritten)"
        ));
    }
    let now = checksum_line(so).map_err(|e| format!("unreadable: {e}"))?;
    if now != recorded {
        return Err("its contents differ from the checksum recorded at build time".into());
    }
    Ok(())
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
    /// Why a cached entry was rebuilt (it was damaged), if it was.
    pub repaired: Option<String>,
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
    let rewritten = write_atomic(&hpp, SHIM.as_bytes())?;
    if opts.precompiled_header {
        let gch = sub.join("afsim.hpp.gch");
        if rewritten {
            // built from the damaged header it replaces
            let _ = std::fs::remove_file(&gch);
        }
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

/// Builds (or finds in the cache and verifies) the `.so` for `source` +
/// `AFSIM_EXPORT_KERNEL(name)`. `distrust`: rebuild even a verified entry, for this reason
/// (the loader rejected it).
pub(crate) fn build_so(
    source: &str,
    name: &str,
    opts: &BuildOptions,
    distrust: Option<String>,
) -> Result<Built, SimError> {
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
    let mut repaired = distrust;
    if repaired.is_none() && so.exists() {
        match verify_entry(&so) {
            Ok(()) => {
                return Ok(Built {
                    so,
                    cached: true,
                    seconds: start.elapsed().as_secs_f64(),
                    repaired: None,
                })
            }
            Err(why) => {
                repaired = Some(format!(
                    "cache entry `{}` was damaged ({why}); rebuilt it",
                    so.display()
                ))
            }
        }
    }
    let mut shim = ensure_shim(&dir, opts, &cxx)?;
    let cu = dir.join(format!("{name}-{key}.cu"));
    write_atomic(&cu, full.as_bytes())?;
    let tmp = tmp_name(&so);
    let mut attempt = 0;
    loop {
        attempt += 1;
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
        if out.status.success() {
            break;
        }
        let _ = std::fs::remove_file(&tmp);
        let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        let gch = shim.with_extension("hpp.gch");
        if attempt == 1 && opts.precompiled_header && log.contains("precompiled header") {
            // a damaged (e.g. truncated) precompiled header fails every build: rebuild it
            let _ = std::fs::remove_file(&gch);
            shim = ensure_shim(&dir, opts, &cxx)?;
            let why = format!(
                "the precompiled shim header `{}` was damaged ({}); rebuilt it",
                gch.display(),
                log.lines().next().unwrap_or("").trim()
            );
            repaired = Some(match repaired {
                Some(r) => format!("{r}; {why}"),
                None => why,
            });
            continue;
        }
        return Err(SimError::Compile {
            kernel: name.to_string(),
            command: cmdline(&cmd),
            source_path: cu,
            log,
        });
    }
    // the checksum goes in first: a reader in between sees the old (or no) `.so` with the
    // new checksum, and only rebuilds once more
    let sum = checksum_line(&tmp).map_err(io("read", &tmp))?;
    replace_file(&checksum_path(&so), sum.as_bytes())?;
    std::fs::rename(&tmp, &so).map_err(io("rename into", &so))?;
    Ok(Built {
        so,
        cached: false,
        seconds: start.elapsed().as_secs_f64(),
        repaired,
    })
}
