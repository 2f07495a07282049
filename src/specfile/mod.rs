//! Spec files: a kernel variant, its runtime parameters, a test problem and a tile in TOML.
//!
//! The file carries the same information as the Rust macro spec and goes through the same
//! library code: the `KernelSpec` part is deserialized with serde and checked with
//! [`attnforge_codegen::check::validate_spec`]; mask and score functions are Rust-subset
//! source text translated by `attnforge-dsl` (the same translator the `#[mask]`/`#[score]`
//! macros use) and evaluated on the host by [`attnforge_dsl::eval`] for the reference.
//! The format is documented in `docs/spec-files.md`.
//!
//! One file per concern: the public types live here; `raw` is the TOML as serde reads it,
//! `load` turns it into a validated [`SpecFile`] (static kernels), `params` checks
//! `[params]` against the mask table and the user functions, `run_params` builds the
//! runtime parameters and host twins, `catalog` gives catalog entries a spec-file view,
//! `dynamic` loads the data-dependent families, `any` tells the two kinds apart, and
//! `error` holds the errors (each names the file, the field and the fix).
//!
//! ```
//! let f = attnforge::specfile::SpecFile::parse(
//!     "dtype = \"f16\"\nhead_dim = 64\nmask = \"local\"\n[params]\nwindow_left = 16\nwindow_right = 0\n",
//!     None,
//! )
//! .unwrap();
//! assert_eq!(f.spec.canonical_name(), "flash_fwd_local_d64_f16");
//! ```

mod any;
mod catalog;
mod dynamic;
mod error;
mod load;
mod params;
mod raw;
mod run_params;
mod serving;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use attnforge_dsl::eval::EvalFn;
use attnforge_dsl::ParamKind;
use attnforge_runtime::codegen::backward::BackwardTile;
use attnforge_runtime::codegen::blocks::BlockLists;
use attnforge_runtime::codegen::check::MaskParams;
use attnforge_runtime::codegen::shape::Shape;
use attnforge_runtime::codegen::spec::KernelSpec;
use attnforge_runtime::codegen::tile::{default_tile, Arch, TileConfig};
use attnforge_runtime::exec::UserValue;
use serde::Deserialize;

pub use any::AnySpecFile;
pub use catalog::{catalog_twins, from_catalog};
pub use dynamic::{dyn_from_catalog, DynSpecFile, DYNAMIC_FAMILIES};
pub use error::{SpecFileError, SpecFileErrors};
pub use serving::{decode_split_choice, ServingBackend, SplitChoice};

/// Test problem used by `attnforge check` (random inputs of these sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// Batch `B`.
    #[serde(default = "one")]
    pub batch: usize,
    /// Query heads `Hq`.
    #[serde(default)]
    pub heads_q: usize,
    /// Key/value heads `Hkv`.
    #[serde(default)]
    pub heads_kv: usize,
    /// Query length `Sq`.
    #[serde(default = "default_seq")]
    pub seq_q: usize,
    /// Key length `Sk`.
    #[serde(default = "default_seq")]
    pub seq_k: usize,
    /// Seed of the random inputs.
    #[serde(default = "one_u64")]
    pub seed: u64,
}

impl Problem {
    /// The problem's shape (the seed aside).
    pub fn shape(&self) -> Shape {
        Shape {
            batch: self.batch,
            heads_q: self.heads_q,
            heads_kv: self.heads_kv,
            seq_q: self.seq_q,
            seq_k: self.seq_k,
        }
    }
}

fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
pub(crate) fn default_seq() -> usize {
    80
}

/// The `[tune]` table: the architecture, the tile used by `emit`/`check`/`run`, and the
/// candidate tiles of a tuning run.
#[derive(Clone, Debug, PartialEq)]
pub struct Tune {
    /// Target architecture.
    pub arch: Arch,
    /// Tile for emit/check/run (default: `default_tile(spec, arch)`).
    pub tile: Option<TileConfig>,
    /// Candidate tiles for tuning (empty: the default search space).
    pub space: Vec<TileConfig>,
    /// Backward tile for check/run --backward (default: `BackwardTile::for_spec`); set by
    /// `--tuned` from the tuner's reports, not read from the file.
    pub backward_tile: Option<BackwardTile>,
}

/// Where the document ids of the document masks come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocSource {
    /// Explicit ids.
    Ids(Vec<i32>),
    /// Segment lengths: ids 0, 1, 2, ... repeated by length (must sum to `Sk`).
    Segments(Vec<usize>),
    /// An `.npy` file of i32 (relative paths are relative to the spec file).
    File(PathBuf),
}

/// A user function parsed from source text: the CUDA for the kernel and the host evaluator.
#[derive(Clone, Debug)]
pub struct HostFn {
    /// Function name.
    pub name: String,
    /// Parameter names and DSL kinds, in order.
    pub params: Vec<(String, ParamKind)>,
    /// Host evaluator of the same text.
    pub eval: EvalFn,
    /// The first evaluation error of the closures built by [`SpecFile::run_params`] (a
    /// division by zero, an index out of bounds), with the arguments it happened at. The
    /// closures cannot return it (the reference and the block-list builder take plain
    /// predicates), so they record it here and give a neutral value; callers ask
    /// [`SpecFile::user_fn_failure`] before trusting a result.
    pub fault: Arc<OnceLock<String>>,
}

/// A parsed, validated spec file.
#[derive(Clone, Debug)]
pub struct SpecFile {
    /// Where it came from (`None` for catalog entries and text).
    pub path: Option<PathBuf>,
    /// Free text.
    pub description: Option<String>,
    /// The kernel spec (validated).
    pub spec: KernelSpec,
    /// Scalar mask parameters.
    pub mask_params: MaskParams,
    /// Softcap value.
    pub softcap: Option<f32>,
    /// ALiBi slopes (default: the standard slopes).
    pub alibi_slopes: Option<Vec<f32>>,
    /// Document ids.
    pub doc: Option<DocSource>,
    /// Explicit block lists.
    pub block_lists: Option<BlockLists>,
    /// User parameter values.
    pub user: BTreeMap<String, UserValue>,
    /// Host twin of a user mask given as source.
    pub host_mask: Option<HostFn>,
    /// Host twin of a user score given as source.
    pub host_score: Option<HostFn>,
    /// The `[problem]` table.
    pub problem: Problem,
    /// The `[tune]` table.
    pub tune: Tune,
    /// `backward = true`: `check` also checks, and `emit` also writes, the backward kernels
    /// (variants.md section 12); only for variants [`backward_supported`] accepts.
    ///
    /// [`backward_supported`]: attnforge_runtime::codegen::backward::backward_supported
    pub backward: bool,
}

impl SpecFile {
    /// Read and parse a spec file.
    pub fn load(path: &Path) -> Result<SpecFile, SpecFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecFileError {
            file: path.display().to_string(),
            field: "-".into(),
            message: format!("cannot read the spec file: {e}"),
            fix: "give the path of an existing TOML spec file or a catalog name (`attnforge list`)"
                .into(),
        })?;
        Self::parse(&text, Some(path))
    }

    /// The tile for emit/check/run: `[tune] tile`, else the default tile of the arch.
    pub fn tile(&self) -> Result<TileConfig, SpecFileError> {
        match self.tune.tile {
            Some(t) => Ok(t),
            None => default_tile(&self.spec, self.tune.arch).ok_or_else(|| {
                self.error(
                    "tune.tile",
                    "no default tile fits this spec".into(),
                    "give [tune] tile = { block_m = 64, block_n = 64, warps = 4, stages = 1 }",
                )
            }),
        }
    }

    /// The backward tile of check/run --backward: `--tuned`'s, else the deterministic default.
    pub fn backward_tile(&self) -> BackwardTile {
        self.tune
            .backward_tile
            .unwrap_or_else(|| BackwardTile::for_spec(&self.spec))
    }

    /// An error about this file.
    pub fn error(&self, field: &str, message: String, fix: &str) -> SpecFileError {
        SpecFileError {
            file: self
                .path
                .as_ref()
                .map_or("<catalog>".into(), |p| p.display().to_string()),
            field: field.into(),
            message,
            fix: fix.into(),
        }
    }
}
