//! Locating the CUDA compiler toolchain installed by `cargo xtask setup`.
//!
//! The toolchain is a `pip install --target` folder holding NVIDIA's wheels. It is found, in
//! order, at `$ATTNFORGE_CUDA_HOME`, at `<workspace>/.toolchain/cuda` (the workspace this crate
//! was compiled in), or at `.toolchain/cuda` in the current directory or one of its parents.
//! `$ATTNFORGE_CUDA_HOME` may also name a CUDA toolkit installation (`/usr/local/cuda`:
//! `include/`, `lib64/libnvrtc.so*`, `bin/ptxas`), as on a GPU machine.
//!
//! ```no_run
//! let tc = attnforge_runtime::Toolchain::locate()?;
//! println!("libnvrtc: {}", tc.nvrtc_lib.display());
//! # Ok::<(), attnforge_runtime::ToolchainError>(())
//! ```

use std::path::{Path, PathBuf};

/// Environment variable that points at the toolchain folder (set by `cargo xtask test|run`).
pub const CUDA_HOME_ENV: &str = "ATTNFORGE_CUDA_HOME";

/// The fix printed with every toolchain error.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (it installs the CUDA compiler wheels into \
                              .toolchain/cuda), or set ATTNFORGE_CUDA_HOME to such a folder";

/// Paths inside a toolchain folder, relative to its root.
const NVRTC_LIB: &str = "nvidia/cuda_nvrtc/lib/libnvrtc.so.12";
const RUNTIME_INCLUDE: &str = "nvidia/cuda_runtime/include";
/// Headers of a CUDA toolkit installation (`/usr/local/cuda`).
const TOOLKIT_INCLUDE: &str = "include";
const PTXAS: &str = "nvidia/cuda_nvcc/bin/ptxas";
const CUOBJDUMP: &str = "nvidia/cu13/bin/cuobjdump";
const NVDISASM: &str = "nvidia/cu13/bin/nvdisasm";

/// A toolchain folder was not found or lacks a required file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolchainError {
    /// No candidate folder exists.
    #[error("CUDA toolchain not found (looked in: {}); {SETUP_HINT}", format_paths(.searched))]
    NotFound {
        /// Every folder that was tried.
        searched: Vec<PathBuf>,
    },
    /// The folder exists but a required file is missing.
    #[error("CUDA toolchain at {} is incomplete: {what} missing at {}; {SETUP_HINT}",
            .root.display(), .path.display())]
    Missing {
        /// The toolchain folder.
        root: PathBuf,
        /// What is missing (`libnvrtc`, `ptxas`, ...).
        what: &'static str,
        /// The path that does not exist.
        path: PathBuf,
    },
}

fn format_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Absolute paths of the toolchain's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// The toolchain folder (the `pip install --target` folder).
    pub root: PathBuf,
    /// `libnvrtc.so.12`.
    pub nvrtc_lib: PathBuf,
    /// Include directory with `cuda_fp16.h` and `cuda_bf16.h`.
    pub include_dir: PathBuf,
    /// The standalone `ptxas` executable.
    pub ptxas: PathBuf,
    /// `cuobjdump`, when its wheel is installed.
    pub cuobjdump: Option<PathBuf>,
    /// `nvdisasm`, when its wheel is installed.
    pub nvdisasm: Option<PathBuf>,
}

impl Toolchain {
    /// Finds the toolchain: `$ATTNFORGE_CUDA_HOME`, else `<workspace>/.toolchain/cuda`, else
    /// `.toolchain/cuda` in the current directory or a parent. When the variable is set, only
    /// that folder is tried (a wrong value is reported, never silently bypassed).
    pub fn locate() -> Result<Self, ToolchainError> {
        if let Some(home) = std::env::var_os(CUDA_HOME_ENV).filter(|v| !v.is_empty()) {
            return Self::at(PathBuf::from(home));
        }
        let mut searched = Vec::new();
        let compiled_in = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf);
        let mut candidates: Vec<PathBuf> = compiled_in.into_iter().collect();
        if let Ok(cwd) = std::env::current_dir() {
            candidates.extend(cwd.ancestors().map(Path::to_path_buf));
        }
        for base in candidates {
            let dir = base.join(".toolchain").join("cuda");
            if dir.is_dir() {
                return Self::at(dir);
            }
            if !searched.contains(&dir) {
                searched.push(dir);
            }
        }
        Err(ToolchainError::NotFound { searched })
    }

    /// Uses the toolchain folder `root`, checking that NVRTC, the headers and ptxas exist.
    pub fn at(root: impl Into<PathBuf>) -> Result<Self, ToolchainError> {
        let root = root.into();
        let root = root.canonicalize().unwrap_or(root);
        if !root.is_dir() {
            return Err(ToolchainError::NotFound {
                searched: vec![root],
            });
        }
        let need = |what: &'static str, rel: &str| {
            let path = root.join(rel);
            if path.exists() {
                Ok(path)
            } else {
                Err(ToolchainError::Missing {
                    root: root.clone(),
                    what,
                    path,
                })
            }
        };
        if !root.join(NVRTC_LIB).exists() && root.join(TOOLKIT_INCLUDE).is_dir() {
            return Self::toolkit(root);
        }
        let nvrtc_lib = need("libnvrtc (wheel nvidia-cuda-nvrtc-cu12)", NVRTC_LIB)?;
        let include_dir = need(
            "CUDA headers (wheel nvidia-cuda-runtime-cu12)",
            RUNTIME_INCLUDE,
        )?;
        need(
            "cuda_bf16.h (wheel nvidia-cuda-runtime-cu12)",
            "nvidia/cuda_runtime/include/cuda_bf16.h",
        )?;
        let ptxas = need("ptxas (wheel nvidia-cuda-nvcc-cu12)", PTXAS)?;
        let optional = |rel: &str| Some(root.join(rel)).filter(|p| p.is_file());
        Ok(Self {
            nvrtc_lib,
            include_dir,
            ptxas,
            cuobjdump: optional(CUOBJDUMP),
            nvdisasm: optional(NVDISASM),
            root,
        })
    }

    /// A CUDA toolkit installation (`include/`, `lib64/` or `lib/`, `bin/`): the newest
    /// `libnvrtc.so.<major>` found (NVRTC's C API is the same across majors 12 and 13).
    fn toolkit(root: PathBuf) -> Result<Self, ToolchainError> {
        let missing = |what: &'static str, path: PathBuf| ToolchainError::Missing {
            root: root.clone(),
            what,
            path,
        };
        let include_dir = root.join(TOOLKIT_INCLUDE);
        if !include_dir.join("cuda_bf16.h").is_file() {
            return Err(missing(
                "cuda_bf16.h (CUDA toolkit)",
                include_dir.join("cuda_bf16.h"),
            ));
        }
        let mut libs: Vec<PathBuf> = ["lib64", "lib", "targets/x86_64-linux/lib"]
            .iter()
            .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
            .flat_map(|rd| rd.filter_map(Result::ok).map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("libnvrtc.so."))
                    .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        libs.sort_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("libnvrtc.so."))
                .and_then(|v| v.parse::<u32>().ok())
        });
        let nvrtc_lib = libs
            .pop()
            .ok_or_else(|| missing("libnvrtc (CUDA toolkit)", root.join("lib64/libnvrtc.so.*")))?;
        let ptxas = root.join("bin/ptxas");
        if !ptxas.is_file() {
            return Err(missing("ptxas (CUDA toolkit)", ptxas));
        }
        let optional = |rel: &str| Some(root.join(rel)).filter(|p| p.is_file());
        Ok(Self {
            nvrtc_lib,
            include_dir,
            ptxas,
            cuobjdump: optional("bin/cuobjdump"),
            nvdisasm: optional("bin/nvdisasm"),
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_folder_is_a_typed_error_with_the_setup_hint() {
        let err = Toolchain::at("/nonexistent/attnforge-toolchain").unwrap_err();
        assert!(matches!(err, ToolchainError::NotFound { .. }));
        assert!(err.to_string().contains("cargo xtask setup"), "{err}");
    }

    #[test]
    fn incomplete_folder_names_the_missing_part() {
        let dir = std::env::temp_dir().join(format!("af-tc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Toolchain::at(&dir).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        match &err {
            ToolchainError::Missing { what, path, .. } => {
                assert!(what.contains("libnvrtc"), "{what}");
                assert!(path.ends_with(NVRTC_LIB));
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(err.to_string().contains("cargo xtask setup"));
    }

    #[test]
    fn toolkit_layout_is_found_with_the_newest_nvrtc() {
        let dir = std::env::temp_dir().join(format!("af-tk-test-{}", std::process::id()));
        for d in ["include", "lib64", "bin"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // headers missing: named
        let err = Toolchain::at(&dir).unwrap_err();
        assert!(err.to_string().contains("cuda_bf16.h"), "{err}");
        std::fs::write(dir.join("include/cuda_bf16.h"), "").unwrap();
        let err = Toolchain::at(&dir).unwrap_err();
        assert!(err.to_string().contains("libnvrtc"), "{err}");
        for f in [
            "lib64/libnvrtc.so.12",
            "lib64/libnvrtc.so.13",
            "lib64/libnvrtc.so",
            "bin/ptxas",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let tc = Toolchain::at(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            tc.nvrtc_lib.ends_with("lib64/libnvrtc.so.13"),
            "{:?}",
            tc.nvrtc_lib
        );
        assert!(tc.include_dir.ends_with("include"));
        assert!(tc.ptxas.ends_with("bin/ptxas"));
        assert_eq!(tc.cuobjdump, None);
    }
}
