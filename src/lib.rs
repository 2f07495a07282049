//! attnforge: declare an attention variant, get CUDA kernels that are generated, compiled,
//! verified against a pure-Rust reference and autotuned.
pub use attnforge_reference as reference;
