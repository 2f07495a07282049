//! Project tasks for attnforge, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `cargo xtask setup`: installs NVIDIA's CUDA compiler wheels (NVRTC, runtime headers,
//!   ptxas, the SASS disassemblers) into `<workspace>/.toolchain/cuda` with
//!   `python3 -m pip install --target`. Idempotent: a stamp file records the pinned versions.
//! - `cargo xtask test`: setup, then `cargo fmt --check`, `cargo clippy -D warnings`,
//!   `cargo doc --no-deps` with rustdoc warnings denied, and `cargo test --workspace`
//!   (doctests included), with `ATTNFORGE_CUDA_HOME` pointing at the toolchain.
//! - `cargo xtask run [ARGS..]`: setup, then the main job (see [`MAIN_JOB`]).
//! - `cargo xtask anchors`: the machine-code side-by-side with FlashAttention-2 and Triton
//!   (not in CI; see [`anchors`] and docs/anchors.md).
//! - `cargo xtask mutants [OPTIONS]`: mutation testing of the kernel generator (not in CI;
//!   see [`mutants`] and docs/correctness.md).
//!
//! Only `std` is used, so this builds in seconds on a fresh checkout.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod anchors;
mod fnlen;
mod mutants;
mod pytest;

/// The wheels installed by `cargo xtask setup`, pinned. Changing this list changes the stamp,
/// so the next setup re-installs.
///
/// - `nvidia-cuda-nvrtc-cu12`: `nvidia/cuda_nvrtc/lib/libnvrtc.so.12` (the compiler).
/// - `nvidia-cuda-runtime-cu12`: `nvidia/cuda_runtime/include` (`cuda_fp16.h`, `cuda_bf16.h`).
/// - `nvidia-cuda-nvcc-cu12`: `nvidia/cuda_nvcc/bin/ptxas` (resource reports, CUBIN).
/// - `nvidia-cuda-cuobjdump` / `nvidia-cuda-nvdisasm`: `nvidia/cu13/bin/{cuobjdump,nvdisasm}`
///   (SASS). Only CUDA 13 wheels exist on PyPI; they read sm_80/sm_90 CUBINs from CUDA 12.9.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
    "nvidia-cuda-nvcc-cu12==12.9.86",
    "nvidia-cuda-cuobjdump==13.5.37",
    "nvidia-cuda-nvdisasm==13.5.37",
];

/// Files that must exist after an install (relative to the toolchain folder).
const REQUIRED_FILES: &[&str] = &[
    "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
    "nvidia/cuda_runtime/include/cuda_fp16.h",
    "nvidia/cuda_runtime/include/cuda_bf16.h",
    "nvidia/cuda_nvcc/bin/ptxas",
    "nvidia/cu13/bin/cuobjdump",
    "nvidia/cu13/bin/nvdisasm",
];

/// Executables whose exec bit is restored after install (pip may drop it).
const EXECUTABLES: &[&str] = &[
    "nvidia/cuda_nvcc/bin/ptxas",
    "nvidia/cu13/bin/cuobjdump",
    "nvidia/cu13/bin/nvdisasm",
];

/// The main job run by `cargo xtask run`: the arguments after `cargo`. Extra arguments given
/// to `cargo xtask run` replace [`MAIN_JOB_DEFAULT_ARGS`]. Change the job here, in one place.
const MAIN_JOB: &[&str] = &[
    "run",
    "--release",
    "-p",
    "attnforge",
    "--bin",
    "attnforge",
    "--",
];
/// Default CLI arguments of the main job (the built-in catalog).
const MAIN_JOB_DEFAULT_ARGS: &[&str] = &["tune", "--catalog", "--out", "reports"];

/// Stamp file name inside the toolchain folder.
const STAMP: &str = ".attnforge-stamp";

/// An xtask failure: a message that says what went wrong and what to do.
#[derive(Debug)]
struct TaskError(pub(crate) String);

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, TaskError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(TaskError(msg.into()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup().map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("mutants") => mutants::run(&args[1..]),
        Some("fn-lengths") => fn_lengths(&args[1..]),
        Some("anchors") => anchors::run(&args[1..]),
        Some("pytest") => pytest::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print_usage();
            Ok(())
        }
        Some(other) => err(format!(
            "unknown command `{other}`; expected one of: setup, test, run, mutants, fn-lengths, anchors, pytest (see `cargo xtask help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_usage() {
    println!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
         setup        install the CUDA compiler wheels into .toolchain/cuda (idempotent)\n  \
         test [ARGS]  setup, then fmt --check, clippy -D warnings, doc, and all workspace tests\n               \
                      (ARGS such as `-p CRATE` replace --workspace)\n  \
         run [ARGS]   setup, then the main job: cargo {} {}\n  \
         mutants      mutation testing of the generator (not in CI): every catalog mutant is\n               \
                      built and run against `check --all` and the CI suites; report in\n               \
                      target/mutants/report.md. Options: --list, --check-patterns (no build),\n               \
                      --only ID,ID, --category NAME,NAME, --no-tests, --resume,\n               \
                      --timeout SECONDS (per step)\n  \
         fn-lengths   list the functions of codegen, runtime exec and src/specfile over 120\n               \
                      lines (exit 1 if any; `--max N` for another limit)\n  \
         anchors      not in CI, downloads ~1 GB: compile FlashAttention-2's forward, backward and\n               \
                      split-KV kernels and Triton's forward next to ours for sm_80/sm_90 and\n               \
                      write docs/anchors.md (SASS main loops side by side; tools in\n               \
                      .toolchain/anchors)\n  \
         pytest [ARGS] the Python package's tests: venv .toolchain/pyenv (torch from PyPI),\n               \
                      maturin develop, pytest python/tests (ARGS go to pytest); also the last\n               \
                      step of `test` (whole workspace; ATTNFORGE_PYTEST=0 skips it)",
        MAIN_JOB.join(" "),
        MAIN_JOB_DEFAULT_ARGS.join(" ")
    );
}

/// `cargo xtask fn-lengths [--max N]`: see [`fnlen`].
fn fn_lengths(args: &[String]) -> Result<()> {
    let max = match args {
        [] => fnlen::MAX_FN_LINES,
        [flag, n] if flag == "--max" => n
            .parse()
            .map_err(|_| TaskError(format!("--max takes a number of lines, got `{n}`")))?,
        _ => return err("usage: cargo xtask fn-lengths [--max N]"),
    };
    let off = fnlen::offenders(&workspace_root(), max).map_err(TaskError)?;
    for (path, f) in &off {
        println!("{path}:{} fn {} ({} lines)", f.line, f.name, f.lines);
    }
    if off.is_empty() {
        println!(
            "no function over {max} lines in {}",
            fnlen::SCOPE.join(", ")
        );
        Ok(())
    } else {
        err(format!("{} functions over {max} lines", off.len()))
    }
}

/// The workspace root: the parent of this crate's manifest dir.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn toolchain_dir() -> PathBuf {
    workspace_root().join(".toolchain").join("cuda")
}

fn stamp_text() -> String {
    let mut s = String::from("# attnforge CUDA toolchain: pip install --target . --no-deps\n");
    for w in WHEELS {
        s.push_str(w);
        s.push('\n');
    }
    s
}

fn is_installed(dir: &Path) -> bool {
    let stamp_ok = fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp_text());
    stamp_ok && REQUIRED_FILES.iter().all(|f| dir.join(f).is_file())
}

/// Installs the wheels unless the stamp matches. Returns the toolchain folder.
fn setup() -> Result<PathBuf> {
    let dir = toolchain_dir();
    if is_installed(&dir) {
        fix_exec_bits(&dir)?;
        println!("xtask: CUDA toolchain up to date in {}", dir.display());
        return Ok(dir);
    }
    check_pip()?;
    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
    fs::create_dir_all(&parent)
        .map_err(|e| TaskError(format!("cannot create {}: {e}", parent.display())))?;
    // Install into a private folder, then rename: a crashed or concurrent install never leaves
    // a half-filled toolchain behind the stamp.
    let tmp = parent.join(format!("cuda.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    println!(
        "xtask: installing CUDA compiler wheels into {}",
        dir.display()
    );
    for w in WHEELS {
        println!("xtask:   {w}");
    }
    let start = Instant::now();
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&tmp)
        .args(WHEELS)
        .status()
        .map_err(|e| TaskError(format!("cannot run python3: {e}")))?;
    if !status.success() {
        let _ = fs::remove_dir_all(&tmp);
        return err(format!(
            "pip install failed ({status}); check network access to PyPI and that these versions \
             exist: {}",
            WHEELS.join(" ")
        ));
    }
    fs::write(tmp.join(STAMP), stamp_text())
        .map_err(|e| TaskError(format!("cannot write stamp in {}: {e}", tmp.display())))?;
    fix_exec_bits(&tmp)?;
    if let Some(missing) = REQUIRED_FILES.iter().find(|f| !tmp.join(f).is_file()) {
        return err(format!(
            "the wheels installed but {missing} is missing; the wheel layout changed: update \
             WHEELS / REQUIRED_FILES in xtask/src/main.rs"
        ));
    }
    if dir.exists() {
        if is_installed(&dir) {
            // Someone else finished the same install first.
            let _ = fs::remove_dir_all(&tmp);
            return Ok(dir);
        }
        fs::remove_dir_all(&dir)
            .map_err(|e| TaskError(format!("cannot remove stale {}: {e}", dir.display())))?;
    }
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        if !is_installed(&dir) {
            return err(format!(
                "cannot move the toolchain into {}: {e}",
                dir.display()
            ));
        }
    }
    check_ptxas(&dir)?;
    println!(
        "xtask: CUDA toolchain installed in {:.1} s ({})",
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

fn check_pip() -> Result<()> {
    let out = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output();
    match out {
        Err(e) => err(format!(
            "python3 not found ({e}); install Python 3 with pip (e.g. `apt-get install \
             python3 python3-pip`), then rerun `cargo xtask setup`"
        )),
        Ok(o) if !o.status.success() => err(format!(
            "`python3 -m pip` is not available ({}); install pip (e.g. `apt-get install \
             python3-pip` or `python3 -m ensurepip`), then rerun `cargo xtask setup`",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(unix)]
fn fix_exec_bits(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for exe in EXECUTABLES {
        let path = dir.join(exe);
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let mut perms = meta.permissions();
        if perms.mode() & 0o111 != 0o111 {
            perms.set_mode(perms.mode() | 0o755);
            fs::set_permissions(&path, perms)
                .map_err(|e| TaskError(format!("cannot chmod {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn fix_exec_bits(_dir: &Path) -> Result<()> {
    Ok(())
}

fn check_ptxas(dir: &Path) -> Result<()> {
    let ptxas = dir.join("nvidia/cuda_nvcc/bin/ptxas");
    let out = Command::new(&ptxas)
        .arg("--version")
        .output()
        .map_err(|e| TaskError(format!("cannot run {}: {e}", ptxas.display())))?;
    if !out.status.success() {
        return err(format!(
            "{} --version failed: {}",
            ptxas.display(),
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "xtask: ptxas ok: {}",
        text.lines().last().unwrap_or("").trim()
    );
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn run_step(label: &str, cmd: &mut Command) -> Result<()> {
    println!("\nxtask: ==> {label}");
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| TaskError(format!("cannot start `{label}`: {e}")))?;
    if !status.success() {
        return err(format!("step `{label}` failed ({status})"));
    }
    println!(
        "xtask: <== {label}: ok in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask test [CARGO_ARGS..]`: with no arguments, the whole workspace; arguments
/// (e.g. `-p attnforge-runtime`) replace `--workspace` for clippy and test (fmt always checks all).
fn test(scope: &[String]) -> Result<()> {
    warn_low_disk();
    let dir = setup()?;
    let whole = scope.is_empty();
    let scope: Vec<String> = if whole {
        vec!["--workspace".to_owned()]
    } else {
        scope.to_vec()
    };
    let steps: [Vec<String>; 4] = [
        to_args(&["fmt", "--all", "--", "--check"], &[]),
        [
            to_args(&["clippy"], &scope),
            to_args(&["--all-targets", "--", "-D", "warnings"], &[]),
        ]
        .concat(),
        // rustdoc warnings (broken links, bad code blocks) fail the run like clippy's
        to_args(&["doc", "--no-deps"], &scope),
        to_args(&["test"], &scope),
    ];
    for (i, args) in steps.iter().enumerate() {
        let label = format!("[{}/{}] cargo {}", i + 1, steps.len(), args.join(" "));
        let mut cmd = cargo();
        cmd.args(args).env("ATTNFORGE_CUDA_HOME", &dir);
        if args[0] == "doc" {
            cmd.env("RUSTDOCFLAGS", "-D warnings");
        }
        run_step(&label, &mut cmd)?;
    }
    // the Python package is tested with the whole workspace; ATTNFORGE_PYTEST=0 skips it
    // (the first run installs torch into .toolchain/pyenv: minutes and about 5 GB)
    if whole && !std::env::var("ATTNFORGE_PYTEST").is_ok_and(|v| v == "0") {
        pytest::run(&[])?;
    }
    println!("\nxtask: all steps passed");
    Ok(())
}

/// Free space the full test build needs (measured: about 4 GiB of `target/` plus the toolchain
/// and simulator objects); below it the build dies with an unrelated-looking rustc I/O error.
const NEEDED_DISK_GIB: u64 = 8;

/// Prints a warning when the disk holding `target/` has less than [`NEEDED_DISK_GIB`] free.
/// Uses POSIX `df -Pk`; when `df` is unavailable nothing is said (the build still runs).
fn warn_low_disk() {
    let root = workspace_root();
    let Ok(out) = Command::new("df").arg("-Pk").arg(&root).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(kib) = free_kib {
        let gib = kib / (1024 * 1024);
        if gib < NEEDED_DISK_GIB {
            println!(
                "xtask: WARNING: only {gib} GiB free on the disk of {}; the test build needs about \
                 {NEEDED_DISK_GIB} GiB. Free space (e.g. `cargo clean`, old clones) if the build \
                 fails with `No space left on device`.",
                root.display()
            );
        }
    }
}

fn to_args(fixed: &[&str], extra: &[String]) -> Vec<String> {
    fixed
        .iter()
        .map(|s| (*s).to_owned())
        .chain(extra.iter().cloned())
        .collect()
}

fn run(extra: &[String]) -> Result<()> {
    let dir = setup()?;
    let mut cmd = cargo();
    cmd.args(MAIN_JOB).env("ATTNFORGE_CUDA_HOME", &dir);
    if extra.is_empty() {
        cmd.args(MAIN_JOB_DEFAULT_ARGS);
    } else {
        cmd.args(extra);
    }
    let label = format!(
        "cargo {} {}",
        MAIN_JOB.join(" "),
        if extra.is_empty() {
            MAIN_JOB_DEFAULT_ARGS.join(" ")
        } else {
            extra.join(" ")
        }
    );
    run_step(&label, &mut cmd)
}
