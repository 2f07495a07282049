//! attnforge-autotune: search space, static pruning, correctness gate, measurement,
//! persistent cache and reports for generated attention kernels.
//!
//! Pipeline per kernel ([`tuner::tune`]): the codegen's default search space filtered by
//! `TileConfig::valid` -> NVRTC + ptxas for every candidate -> static pruning (spills, stack
//! frame, shared memory, occupancy per architecture, [`occupancy`]) -> static ranking by
//! the cost model ([`model`]) -> correctness gate on the CPU simulator against the f64
//! reference -> measurement with criterion on a GPU ([`measure`], CUDA events) -> winner.
//! Results are cached ([`cache`]) and written as Markdown + JSON + SVG reports ([`report`]).
//! Without a GPU the winner is chosen by the model and labelled *predicted*.
//!
//! ```no_run
//! use attnforge_autotune::cli::{run_tune, TuneArgs};
//! let args = TuneArgs { catalog: true, out: "reports".into(), ..TuneArgs::default() };
//! let summary = run_tune(&args)?;
//! println!("{} kernels, {} from the cache", summary.kernels, summary.cache_hits);
//! # Ok::<(), attnforge_autotune::TuneError>(())
//! ```

pub mod backward;
pub mod cache;
pub mod cli;
pub mod decode;
pub mod kernel;
pub mod measure;
pub mod model;
pub mod occupancy;
pub mod report;
pub mod sass_counts;
pub mod tuner;
pub mod workload;

pub use attnforge_codegen::tile::Arch;
pub use cli::{run_report, run_tune, ReportArgs, TuneArgs, TuneError, TuneSummary};
pub use tuner::{tune, Basis, CandidateResult, KernelTuning, Status, Tunable, TuneOptions};

/// Version of the static model and pipeline; part of the cache key's codegen hash, so a
/// change of the model re-tunes.
pub const MODEL_VERSION: &str = "model-3";
