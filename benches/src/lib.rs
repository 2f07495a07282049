//! attnforge benchmarks: shared criterion settings for the benches in `benches/benches/` and
//! the summary that turns criterion's results into the table of `docs/benchmarks.md`.
//!
//! Benches (each `harness = false`, run with `cargo bench -p attnforge-benches --bench NAME`):
//!
//! | bench | what is timed | bench ids |
//! |---|---|---|
//! | `codegen` | `validate_spec` and `emit` (default tile, sm_80) per catalog kernel | `codegen/validate/<name>`, `codegen/emit/<name>` |
//! | `nvrtc` | NVRTC compile (PTX + CUBIN + ptxas report) at the default tile | `nvrtc/<sm>/<name>` |
//! | `reference` | the f64 reference per variant family, small shapes | `reference/<name or family>` |
//! | `simulator` | `exec::simulate` of a flash kernel on a small causal problem | `simulator/<name>` |
//! | `tune_cache` | tuning-cache load and lookup | `tune_cache/<op>` |
//! | `gpu` | generated kernels on a GPU (CUDA events); skips without one | `gpu/<name>` |
//!
//! [`summary`] reads `<criterion dir>/**/new/{benchmark,estimates}.json` and renders the
//! Markdown table (`cargo run -p attnforge-benches --bin bench-summary`).
//!
//! ```
//! let c = attnforge_benches::quick_criterion();
//! drop(c);
//! assert!(attnforge_benches::criterion_dir().ends_with("criterion"));
//! ```

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;

pub mod summary;

/// Environment variable overriding where criterion writes (and the summary reads) results.
pub const CRITERION_DIR_ENV: &str = "ATTNFORGE_BENCH_DIR";

/// The criterion output directory: `$ATTNFORGE_BENCH_DIR`, else `$CARGO_TARGET_DIR/criterion`,
/// else `<workspace>/target/criterion`. Set explicitly because `cargo bench` runs bench
/// binaries from the package folder, where criterion's own default would be
/// `benches/target/criterion`.
pub fn criterion_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CRITERION_DIR_ENV) {
        return PathBuf::from(d);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace_root().join(t)
        } else {
            t
        };
        return t.join("criterion");
    }
    workspace_root().join("target").join("criterion")
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Short criterion settings so that each bench binary finishes in about a minute on two
/// cores: 0.3 s warm-up, 1 s measurement, 10 samples, 10 000 bootstrap resamples, no plots.
/// Command-line flags (`--measurement-time`, `--sample-size`, ...) still override them.
pub fn quick_criterion() -> Criterion {
    Criterion::default()
        .output_directory(&criterion_dir())
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .nresamples(10_000)
        .without_plots()
}
