//! Errors of the simulator: building, loading and launching a kernel.

use std::path::PathBuf;

/// Everything that can go wrong between CUDA text and a finished simulated launch.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The kernel name is not usable as a C symbol.
    #[error("kernel name `{name}` is invalid: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No usable C++ compiler.
    #[error("C++ compiler `{compiler}` could not be run ({message}); install g++ >= 11 (C++20) or set ATTNFORGE_SIM_CXX to one")]
    Toolchain {
        /// The compiler that was tried.
        compiler: String,
        /// The OS error.
        message: String,
    },
    /// g++ rejected the source; `log` is the compiler output.
    #[error("g++ failed to compile kernel `{kernel}` ({source_path}):\n{log}\ncommand: {command}")]
    Compile {
        /// Kernel name.
        kernel: String,
        /// The command line that was run.
        command: String,
        /// Where the exact compiled source was written.
        source_path: PathBuf,
        /// The compiler's stderr and stdout.
        log: String,
    },
    /// A file operation in the build cache failed.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The built shared object could not be loaded or lacks the entry point.
    #[error("could not load simulator library for kernel `{kernel}` from `{path}`: {message}")]
    Load {
        /// Kernel name.
        kernel: String,
        /// The `.so` path.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The launch arguments do not match the kernel's parameters.
    #[error("kernel `{kernel}`: {message}")]
    Args {
        /// Kernel name.
        kernel: String,
        /// Which argument is wrong and what to pass instead.
        message: String,
    },
    /// A launch configuration field is out of range.
    #[error("launch of `{kernel}`: `{field}` {message}")]
    Config {
        /// Kernel name.
        kernel: String,
        /// The field, e.g. `grid.x` or `block`.
        field: &'static str,
        /// What is wrong and the allowed range.
        message: String,
    },
    /// The simulated kernel failed (deadlock, divergent barrier, out-of-bounds or
    /// uninitialised shared memory, out-of-bounds global access, missing cp.async wait, ...).
    #[error("simulated launch of `{kernel}` failed: {message}")]
    Launch {
        /// Kernel name.
        kernel: String,
        /// The shim's message, naming the block and threads.
        message: String,
    },
}
