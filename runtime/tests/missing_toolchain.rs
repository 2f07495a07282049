//! A wrong `ATTNFORGE_CUDA_HOME` gives a typed error with the setup hint, never a panic.
//! Its own test binary: it changes the process environment.

use attnforge_runtime::{compile, sass, Arch, CompileError, Toolchain, ToolchainError};

#[test]
fn wrong_cuda_home_is_reported_with_the_setup_hint() {
    std::env::set_var("ATTNFORGE_CUDA_HOME", "/nonexistent/attnforge-cuda");
    let e = Toolchain::locate().unwrap_err();
    assert!(matches!(e, ToolchainError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("cargo xtask setup"), "{e}");

    let e = compile("extern \"C\" __global__ void k() {}", "k", Arch::Sm80).unwrap_err();
    assert!(matches!(e, CompileError::Toolchain(_)), "{e:?}");
    assert!(e.to_string().contains("cargo xtask setup"), "{e}");

    let e = sass(b"\x7fELF").unwrap_err();
    assert!(e.to_string().contains("cargo xtask setup"), "{e}");
}
