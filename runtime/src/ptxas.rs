//! ptxas resource reports: registers, shared memory, stack frame and spills per kernel.
//!
//! The report comes either from NVRTC's log (a compile with `--ptxas-options=-v`, the
//! default of [`crate::compile`]) or from the toolchain's standalone `ptxas -v` run on PTX
//! ([`run_ptxas`]). Both print the same lines:
//!
//! ```text
//! ptxas info    : Compiling entry function 'k' for 'sm_80'
//! ptxas info    : Function properties for k
//!     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem, 372 bytes cmem[0]
//! ```
//!
//! A stack frame or spill in an attention kernel means a register array went to local memory:
//! [`ResourceUsage::check_no_spills`] turns that into an error.
//!
//! ```
//! let log = "ptxas info    : Compiling entry function 'k' for 'sm_90'\n\
//!            ptxas info    : Function properties for k\n\
//!            ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
//!            ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem\n";
//! let report = attnforge_runtime::parse_ptxas_log(log)?;
//! let k = report.kernel("k").unwrap();
//! assert_eq!((k.registers, k.shared_bytes, k.stack_frame_bytes), (10, 1024, 0));
//! # Ok::<(), attnforge_runtime::ReportParseError>(())
//! ```

use std::path::PathBuf;
use std::process::Command;

use crate::nvrtc::Arch;
use crate::toolchain::{Toolchain, ToolchainError};

/// Resources of one kernel (entry function) for one architecture.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResourceUsage {
    /// Kernel symbol.
    pub kernel: String,
    /// `sm_XX` as printed by ptxas.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers used (`used N barriers`; 0 when ptxas does not print it).
    pub barriers: u32,
    /// Static shared memory per block, bytes (dynamic shared memory is not included).
    pub shared_bytes: u64,
    /// Stack frame per thread, bytes (local memory for arrays or spills).
    pub stack_frame_bytes: u64,
    /// Bytes stored by register spills.
    pub spill_store_bytes: u64,
    /// Bytes loaded by register spills.
    pub spill_load_bytes: u64,
    /// Local memory per thread, bytes (`N bytes lmem`, printed by some ptxas versions).
    pub local_bytes: u64,
    /// Constant memory per bank: `(bank, bytes)` from `N bytes cmem[bank]`.
    pub cmem: Vec<(u32, u64)>,
    /// ptxas's own compile time for this kernel, ms.
    pub ptxas_time_ms: Option<f64>,
}

impl ResourceUsage {
    /// True when the kernel has a stack frame, spills or local memory.
    pub fn has_spills(&self) -> bool {
        self.stack_frame_bytes > 0
            || self.spill_store_bytes > 0
            || self.spill_load_bytes > 0
            || self.local_bytes > 0
    }

    /// Errors when [`has_spills`](Self::has_spills), naming the kernel and the numbers.
    pub fn check_no_spills(&self) -> Result<(), SpillError> {
        if self.has_spills() {
            Err(SpillError {
                usage: Box::new(self.clone()),
            })
        } else {
            Ok(())
        }
    }
}

/// A kernel has a stack frame or spills.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "kernel `{}` for {} uses local memory: {} bytes stack frame, {} bytes spill stores, {} bytes \
     spill loads, {} bytes lmem ({} registers); a register array went to local memory: use \
     compile-time indices into register arrays, fewer live values, or a smaller tile",
    .usage.kernel, .usage.arch, .usage.stack_frame_bytes, .usage.spill_store_bytes,
    .usage.spill_load_bytes, .usage.local_bytes, .usage.registers
)]
pub struct SpillError {
    /// The offending kernel's resources.
    pub usage: Box<ResourceUsage>,
}

/// Stack frame and spills of a non-entry function (a device function that was not inlined).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FunctionFrame {
    /// Function symbol (mangled).
    pub function: String,
    /// Stack frame, bytes.
    pub stack_frame_bytes: u64,
    /// Spill stores, bytes.
    pub spill_store_bytes: u64,
    /// Spill loads, bytes.
    pub spill_load_bytes: u64,
}

/// Everything in one ptxas `-v` report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PtxasReport {
    /// One entry per kernel, in report order.
    pub kernels: Vec<ResourceUsage>,
    /// Non-inlined device functions with their frames.
    pub functions: Vec<FunctionFrame>,
    /// Global memory of the module (`N bytes gmem`).
    pub gmem_bytes: u64,
    /// `ptxas warning` lines, verbatim.
    pub warnings: Vec<String>,
}

impl PtxasReport {
    /// The kernel called `name`, if reported.
    pub fn kernel(&self, name: &str) -> Option<&ResourceUsage> {
        self.kernels.iter().find(|k| k.kernel == name)
    }
}

/// A line of a ptxas report that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ptxas report line {line_no}: {reason}: `{line}`")]
pub struct ReportParseError {
    /// 1-based line number in the log.
    pub line_no: usize,
    /// The line.
    pub line: String,
    /// What was expected.
    pub reason: String,
}

/// Parses a ptxas `-v` report (NVRTC log or standalone ptxas output). Lines that are not
/// part of the report (NVRTC warnings, blank lines) are skipped; a malformed resource line is
/// an error.
pub fn parse_ptxas_log(log: &str) -> Result<PtxasReport, ReportParseError> {
    let mut report = PtxasReport::default();
    // Index of the kernel the next `Used`/`Compile time` lines belong to.
    let mut current: Option<usize> = None;
    // Target of the next `bytes stack frame` line.
    let mut props_for: Option<String> = None;
    for (i, raw) in log.lines().enumerate() {
        let err = |reason: &str| ReportParseError {
            line_no: i + 1,
            line: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let line = raw.trim();
        let body = if let Some(rest) = line.strip_prefix("ptxas") {
            let rest = rest.trim_start();
            if let Some(w) = rest.strip_prefix("warning") {
                report
                    .warnings
                    .push(w.trim_start_matches([' ', ':']).trim().to_owned());
                continue;
            }
            let rest = rest.strip_prefix("info").unwrap_or(rest).trim_start();
            rest.trim_start_matches([':', '.']).trim()
        } else {
            line
        };
        if let Some(rest) = body.strip_prefix("Compiling entry function") {
            let mut quoted = rest.split('\'').skip(1).step_by(2);
            let name = quoted
                .next()
                .ok_or_else(|| err("expected a quoted kernel name"))?;
            let arch = quoted.next().unwrap_or("").to_owned();
            report.kernels.push(ResourceUsage {
                kernel: name.to_owned(),
                arch,
                ..Default::default()
            });
            current = Some(report.kernels.len() - 1);
        } else if let Some(rest) = body.strip_prefix("Function properties for") {
            props_for = Some(rest.trim().to_owned());
        } else if body.contains("bytes stack frame") {
            let target = props_for
                .take()
                .ok_or_else(|| err("frame line without a function"))?;
            let mut frame = FunctionFrame {
                function: target.clone(),
                ..Default::default()
            };
            for item in body.split(',') {
                let (n, what) =
                    number_and_rest(item).ok_or_else(|| err("expected `N bytes ...`"))?;
                match what {
                    "bytes stack frame" => frame.stack_frame_bytes = n,
                    "bytes spill stores" => frame.spill_store_bytes = n,
                    "bytes spill loads" => frame.spill_load_bytes = n,
                    _ => return Err(err("unknown item in the frame line")),
                }
            }
            match report.kernels.iter_mut().rev().find(|k| k.kernel == target) {
                Some(k) => {
                    k.stack_frame_bytes = frame.stack_frame_bytes;
                    k.spill_store_bytes = frame.spill_store_bytes;
                    k.spill_load_bytes = frame.spill_load_bytes;
                }
                None => report.functions.push(frame),
            }
        } else if let Some(rest) = body.strip_prefix("Used") {
            let k = current
                .and_then(|c| report.kernels.get_mut(c))
                .ok_or_else(|| err("`Used` line before any `Compiling entry function`"))?;
            for item in rest.split(',') {
                let item = item.trim();
                let item = item.strip_prefix("used").map(str::trim).unwrap_or(item);
                let (n, what) = number_and_rest(item).ok_or_else(|| err("expected `N <unit>`"))?;
                if what == "registers" {
                    k.registers = to_u32(n).ok_or_else(|| err("register count too large"))?;
                } else if what == "barriers" {
                    k.barriers = to_u32(n).ok_or_else(|| err("barrier count too large"))?;
                } else if what == "bytes smem" {
                    k.shared_bytes = n;
                } else if what == "bytes lmem" {
                    k.local_bytes = n;
                } else if let Some(bank) = what.strip_prefix("bytes cmem[") {
                    let bank = bank
                        .trim_end_matches(']')
                        .parse()
                        .map_err(|_| err("bad cmem bank"))?;
                    k.cmem.push((bank, n));
                }
                // Other items (e.g. `bytes tmem` on newer arches) are not tracked.
            }
        } else if let Some(rest) = body.strip_prefix("Compile time =") {
            if let Some(k) = current.and_then(|c| report.kernels.get_mut(c)) {
                let ms = rest.trim().trim_end_matches("ms").trim();
                k.ptxas_time_ms = Some(ms.parse().map_err(|_| err("bad compile time"))?);
            }
        } else if let Some((n, "bytes gmem")) = number_and_rest(body) {
            report.gmem_bytes = n;
        }
    }
    Ok(report)
}

fn number_and_rest(item: &str) -> Option<(u64, &str)> {
    let item = item.trim();
    let end = item.find(|c: char| !c.is_ascii_digit())?;
    let n = item[..end].parse().ok()?;
    Some((n, item[end..].trim()))
}

fn to_u32(n: u64) -> Option<u32> {
    u32::try_from(n).ok()
}

/// Failure of an external toolchain program (ptxas, cuobjdump, nvdisasm).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The toolchain was not found.
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    /// The tool is not installed in the toolchain.
    #[error("{tool} is not installed in the CUDA toolchain; {hint}", hint = crate::toolchain::SETUP_HINT)]
    NotInstalled {
        /// The tool's name.
        tool: &'static str,
    },
    /// Writing the input file or starting the tool failed.
    #[error("cannot run {}: {reason}", .path.display())]
    Io {
        /// The tool or file involved.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The tool ran and reported an error.
    #[error("{tool} failed ({status}) on `{input}`:\n{stderr}")]
    Failed {
        /// The tool's name.
        tool: &'static str,
        /// Exit status.
        status: String,
        /// What it was given (kernel or file name).
        input: String,
        /// Its error output.
        stderr: String,
    },
    /// The tool's report could not be parsed.
    #[error(transparent)]
    Parse(#[from] ReportParseError),
}

/// A temporary file removed on drop.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    pub(crate) fn new(stem: &str, ext: &str, bytes: &[u8]) -> Result<Self, ToolError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let safe: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let path = std::env::temp_dir().join(format!(
            "attnforge-{}-{}-{safe}.{ext}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).map_err(|e| ToolError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the toolchain's standalone `ptxas -v --gpu-name <arch>` on `ptx` and parses the report
/// (the CUBIN it writes is discarded). `name` labels errors.
pub fn run_ptxas(
    toolchain: &Toolchain,
    ptx: &str,
    name: &str,
    arch: Arch,
) -> Result<PtxasReport, ToolError> {
    let input = TempFile::new(name, "ptx", ptx.as_bytes())?;
    let output = TempFile(input.0.with_extension("cubin"));
    let out = Command::new(&toolchain.ptxas)
        .args(["-v", "--gpu-name", arch.sm_name(), "-o"])
        .arg(&output.0)
        .arg(&input.0)
        .output()
        .map_err(|e| ToolError::Io {
            path: toolchain.ptxas.clone(),
            reason: e.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool: "ptxas",
            status: out.status.to_string(),
            input: name.to_owned(),
            stderr,
        });
    }
    // ptxas prints the report on stderr (some versions on stdout).
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push('\n');
    text.push_str(&stderr);
    Ok(parse_ptxas_log(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from NVRTC 12.9 (`--gpu-architecture=sm_80 --ptxas-options=-v`).
    const NVRTC_SM80: &str = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
        ptxas info    : Function properties for k\n\
        ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
        ptxas info    : Used 10 registers, used 1 barriers, 1024 bytes smem, 372 bytes cmem[0]\n\
        ptxas info    : Compile time = 1.783 ms\n";

    /// Standalone ptxas 12.9 output shape, with a spilling kernel and a called function
    /// (numbers edited to exercise every field).
    const PTXAS_TWO_KERNELS: &str = "ptxas info    : 8 bytes gmem\n\
        ptxas info    : Function properties for _Z6helperPf\n\
        \x20   48 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
        ptxas info    : Compiling entry function 'a' for 'sm_90'\n\
        ptxas info    : Function properties for a\n\
        \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
        ptxas info    : Used 168 registers, used 1 barriers, 34816 bytes smem\n\
        ptxas info    : Compile time = 12.5 ms\n\
        ptxas warning : Registers are spilled to local memory in function 'b', 16 bytes spill stores, 16 bytes spill loads\n\
        ptxas info    : Compiling entry function 'b' for 'sm_90'\n\
        ptxas info    : Function properties for b\n\
        \x20   32 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads\n\
        ptxas info    : Used 255 registers, 400 bytes cmem[0], 8 bytes cmem[2]\n";

    #[test]
    fn parses_captured_nvrtc_log() {
        let r = parse_ptxas_log(NVRTC_SM80).unwrap();
        assert_eq!(r.kernels.len(), 1);
        let k = &r.kernels[0];
        assert_eq!(k.kernel, "k");
        assert_eq!(k.arch, "sm_80");
        assert_eq!(k.registers, 10);
        assert_eq!(k.barriers, 1);
        assert_eq!(k.shared_bytes, 1024);
        assert_eq!(k.cmem, vec![(0, 372)]);
        assert_eq!(k.ptxas_time_ms, Some(1.783));
        assert!(!k.has_spills());
        assert!(k.check_no_spills().is_ok());
    }

    #[test]
    fn parses_several_kernels_functions_and_spills() {
        let r = parse_ptxas_log(PTXAS_TWO_KERNELS).unwrap();
        assert_eq!(r.gmem_bytes, 8);
        assert_eq!(r.kernels.len(), 2);
        let a = r.kernel("a").unwrap();
        assert_eq!((a.registers, a.shared_bytes, a.barriers), (168, 34816, 1));
        assert!(!a.has_spills());
        let b = r.kernel("b").unwrap();
        assert_eq!((b.registers, b.stack_frame_bytes), (255, 32));
        assert_eq!((b.spill_store_bytes, b.spill_load_bytes), (16, 16));
        assert_eq!(b.cmem, vec![(0, 400), (2, 8)]);
        let e = b.check_no_spills().unwrap_err();
        assert!(e.to_string().contains("`b`") && e.to_string().contains("32 bytes stack frame"));
        assert_eq!(r.functions.len(), 1);
        assert_eq!(r.functions[0].function, "_Z6helperPf");
        assert_eq!(r.functions[0].stack_frame_bytes, 48);
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        let e = parse_ptxas_log("ptxas info    : Used lots registers\n").unwrap_err();
        assert_eq!(e.line_no, 1);
        let log = "ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
                   ptxas info    : Used x registers\n";
        assert_eq!(parse_ptxas_log(log).unwrap_err().line_no, 2);
        let frame =
            "ptxas info    : Function properties for k\n    0 bytes stack frame, 3 apples\n";
        assert!(parse_ptxas_log(frame).is_err());
    }

    #[test]
    fn unrelated_lines_are_ignored() {
        let log = format!("k.cu(3): warning #177-D: variable \"x\" was declared but never referenced\n\n{NVRTC_SM80}");
        assert_eq!(
            parse_ptxas_log(&log).unwrap(),
            parse_ptxas_log(NVRTC_SM80).unwrap()
        );
    }
}
