//! attnforge: declare an attention variant, get CUDA kernels that are generated, compiled,
//! verified against a pure-Rust reference and autotuned.
//!
//! The crates behind the facade:
//! - [`reference`](mod@reference): f64 oracles for every variant (`shared/docs/variants.md`)
//!   and the tolerance oracle;
//! - [`codegen`]: kernel specs, validation, tile configs, tile IR and CUDA emission;
//! - [`sim`]: the CPU SIMT simulator running the exact generated CUDA;
//! - [`kernels`]: NVRTC compilation, ptxas reports, GPU launch, and [`exec`] (run a spec on
//!   the reference, the simulator or a GPU and check it);
//! - [`autotune`]: search space, pruning, measurement, cache and reports;
//! - [`mask`] / [`score`]: attribute macros turning Rust functions into CUDA device functions.
pub use attnforge_autotune as autotune;
pub use attnforge_macros::{kernel, mask, score};
pub use attnforge_reference as reference;
pub use attnforge_runtime as kernels;
pub use attnforge_runtime::{
    codegen, exec, exec_backward, exec_recycled, exec_serving, exec_stats, sim,
};

pub mod limits;
pub mod npy;
pub mod specfile;

/// The names most programs need.
pub mod prelude {
    pub use attnforge_macros::{kernel, mask, score};
    pub use attnforge_reference::{Precision, Shape4, Tensor4};
    pub use attnforge_runtime::codegen::prelude::*;
    pub use attnforge_runtime::exec::{
        check, reference as run_reference, simulate, Backend, Inputs, RunParams, UserValue,
    };
    pub use attnforge_runtime::sim::{Schedule, SimConfig};
}

/// Items the macros expand to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use attnforge_macros_rt as rt;
    pub use attnforge_reference as reference;
    pub use attnforge_runtime::codegen;
    pub use attnforge_runtime::exec;
}
