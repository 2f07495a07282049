//! `cargo xtask pytest`: the Python package's tests (python/tests).
//!
//! 1. A virtual environment `.toolchain/pyenv/` with [`PY_PINS`] (PyTorch from PyPI, about
//!    5.4 GB with its CUDA wheels, which the CPU tests load but never use), installed once and
//!    checked by a stamp; a failed install leaves no stamp (the next run retries).
//! 2. `maturin develop` builds the PyO3 extension (python/, its own cargo workspace) into
//!    that environment, with `target/python` as its target folder.
//! 3. `python -m pytest python/tests`.
//!
//! `cargo xtask test` (whole workspace) runs it as its last step; `ATTNFORGE_PYTEST=0` skips it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::{err, run_step, toolchain_dir, workspace_root, Result, TaskError};

/// What the test environment pins (one requirement a line; the stamp is this text).
pub const PY_PINS: &[&str] = &[
    "torch==2.15.0",
    "numpy==2.4.6",
    "pytest==9.2.0",
    "maturin==1.16.0",
];

const STAMP: &str = ".attnforge-pytest-stamp";

fn venv_dir() -> PathBuf {
    workspace_root().join(".toolchain").join("pyenv")
}

fn stamp_text() -> String {
    PY_PINS.iter().map(|p| format!("{p}\n")).collect()
}

fn ensure_venv() -> Result<PathBuf> {
    let dir = venv_dir();
    let python = dir.join("bin").join("python");
    if fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp_text()) && python.is_file() {
        println!(
            "xtask: python test environment up to date in {}",
            dir.display()
        );
        return Ok(python);
    }
    let _ = fs::remove_dir_all(&dir);
    run_step(
        "python3 -m venv .toolchain/pyenv",
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
    )?;
    run_step(
        &format!(
            "pip install {} (needs the Python package index (PyPI))",
            PY_PINS.join(" ")
        ),
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PY_PINS),
    )?;
    fs::write(dir.join(STAMP), stamp_text())
        .map_err(|e| TaskError(format!("cannot write the stamp in {}: {e}", dir.display())))?;
    Ok(python)
}

/// The simulator cache `cargo test` fills (`sim::cache_dir` of the workspace): the one the
/// tests use unless `ATTNFORGE_SIM_CACHE` names another.
fn sim_cache_dir() -> PathBuf {
    std::env::var_os("ATTNFORGE_SIM_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| t.join("afsim-cache"))
        })
        .unwrap_or_else(|| workspace_root().join("target").join("afsim-cache"))
}

/// `cargo xtask pytest [PYTEST_ARGS..]`.
pub fn run(args: &[String]) -> Result<()> {
    let python = ensure_venv()?;
    let root = workspace_root();
    let venv = venv_dir();
    let bin = venv.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths)
        .map_err(|e| TaskError(format!("cannot extend PATH with {}: {e}", bin.display())))?;
    run_step(
        "cargo fmt --check (python/)",
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "fmt",
                "--manifest-path",
                "python/Cargo.toml",
                "--",
                "--check",
            ])
            .current_dir(&root),
    )?;
    run_step(
        "maturin develop (python/)",
        Command::new(bin.join("maturin"))
            .args(["develop", "--quiet"])
            .current_dir(root.join("python"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", &path)
            .env("PYO3_PYTHON", &python)
            .env("CARGO_TARGET_DIR", root.join("target").join("python")),
    )?;
    let status = Command::new(&python)
        .args(["-m", "pytest", "python/tests", "-q"])
        .args(args)
        .current_dir(&root)
        .env("ATTNFORGE_CUDA_HOME", toolchain_dir())
        // the workspace tests' simulator cache: the extension's own default is under
        // target/python, where every kernel and the shim's precompiled header would be
        // built a second time
        .env("ATTNFORGE_SIM_CACHE", sim_cache_dir())
        .status()
        .map_err(|e| TaskError(format!("cannot run pytest: {e}")))?;
    if !status.success() {
        return err(format!("pytest failed ({status})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_lists_every_pin_on_its_own_line() {
        let s = stamp_text();
        assert_eq!(s.lines().count(), PY_PINS.len());
        assert!(s.lines().any(|l| l.starts_with("torch==")), "{s}");
    }
}
