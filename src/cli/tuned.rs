//! `--tuned[=REPORT_DIR]` of `run` and `check`: take the tile the tuner picked for a kernel from
//! its report folder (`attnforge tune --out REPORT_DIR`, default `reports`: `index.md` and one
//! `<variant>.json` per tuned kernel, the forward as `<name>`, the backward as `<name>_bwd`)
//! instead of the default tile. A kernel the folder does not hold, or whose tuned tile does not
//! fit the spec's architecture, keeps the default tile, with a one-line notice on stderr.

use std::path::{Path, PathBuf};

use attnforge::autotune::backward::backward_tile;
use attnforge::autotune::KernelTuning;
use attnforge::codegen::backward::BackwardTile;
use attnforge::specfile::{AnySpecFile, SpecFile};

use super::CliError;

/// The report folder `attnforge tune` wrote when `--tuned` has no value.
pub const DEFAULT_DIR: &str = "reports";

/// A tuner report folder, checked to be one (it has the tuner's `index.md`).
pub struct TunedIndex {
    dir: PathBuf,
}

impl TunedIndex {
    /// Opens `dir`; an input error naming `--tuned` when it is not a tuner report folder.
    pub fn open(dir: &Path) -> Result<Self, CliError> {
        if !dir.join("index.md").is_file() {
            return Err(CliError::input(format!(
                "--tuned: `{}` is not a tuner report folder (no index.md)\n  fix: run `attnforge tune --variant NAME --out {}` first, or pass --tuned=DIR with the folder `tune --out` wrote",
                dir.display(),
                dir.display()
            )));
        }
        Ok(TunedIndex {
            dir: dir.to_path_buf(),
        })
    }

    /// The tuning of `variant`, if the folder holds one with a winner.
    fn tuning(&self, variant: &str) -> Result<Option<KernelTuning>, CliError> {
        let path = self.dir.join(format!("{variant}.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let t: KernelTuning = serde_json::from_str(&text).map_err(|e| {
            CliError::input(format!(
                "--tuned: `{}` is not a tuning report: {e}\n  fix: rewrite the reports with `attnforge-tune report --out {}`, or re-run `attnforge tune`",
                path.display(),
                self.dir.display()
            ))
        })?;
        Ok(t.winner.is_some().then_some(t))
    }

    /// Sets the forward (or, with `backward`, the backward) tile of a static spec file to its
    /// tuned one and returns the line that says which tile it runs with.
    pub fn apply(&self, f: &mut AnySpecFile, backward: bool) -> Result<String, CliError> {
        let AnySpecFile::Static(sf) = f else {
            return Ok(format!(
                "tuned: {} is a data-dependent pipeline (the tuner tunes static kernels); default tiles",
                f.canonical_name()
            ));
        };
        if backward {
            self.apply_backward(sf)
        } else {
            self.apply_forward(sf)
        }
    }

    fn apply_forward(&self, sf: &mut SpecFile) -> Result<String, CliError> {
        let name = sf.spec.canonical_name();
        let fallback = |why: String| -> Result<String, CliError> {
            let t = sf.tile().map_err(CliError::input)?;
            Ok(format!("tuned: {why}; default tile {}", t.suffix()))
        };
        let Some(t) = self.tuning(&name)? else {
            return fallback(format!("{name} is not in {}", self.dir.display()));
        };
        let tile = t.winner.expect("a tuning with a winner");
        if let Err(e) = tile.valid(&sf.spec, sf.tune.arch) {
            return fallback(format!(
                "{name}'s tuned tile {} does not fit {}: {}",
                tile.suffix(),
                sf.tune.arch,
                e.first().map_or(String::new(), ToString::to_string)
            ));
        }
        sf.tune.tile = Some(tile);
        Ok(self.used(&name, &tile.suffix(), &t))
    }

    fn apply_backward(&self, sf: &mut SpecFile) -> Result<String, CliError> {
        let variant = format!("{}_bwd", sf.spec.canonical_name());
        let fallback = |why: String, sf: &SpecFile| {
            format!(
                "tuned: {why}; default backward tile {}",
                sf.backward_tile().suffix()
            )
        };
        let Some(t) = self.tuning(&variant)? else {
            return Ok(fallback(
                format!("{variant} is not in {}", self.dir.display()),
                sf,
            ));
        };
        let tile: BackwardTile = backward_tile(&t.winner.expect("a tuning with a winner"));
        if let Err(e) = tile.valid(&sf.spec, sf.tune.arch) {
            let why = format!(
                "{variant}'s tuned tile {} does not fit {}: {}",
                tile.suffix(),
                sf.tune.arch,
                e.first().map_or(String::new(), ToString::to_string)
            );
            return Ok(fallback(why, sf));
        }
        sf.tune.backward_tile = Some(tile);
        Ok(self.used(&variant, &tile.suffix(), &t))
    }

    fn used(&self, variant: &str, tile: &str, t: &KernelTuning) -> String {
        let basis = match t.basis {
            attnforge::autotune::Basis::Measured => "measured",
            attnforge::autotune::Basis::Predicted => "predicted",
        };
        format!(
            "tuned: {variant} uses tile {tile} from {} ({basis} on {}, {})",
            self.dir.join(format!("{variant}.json")).display(),
            t.arch,
            t.device
        )
    }
}

/// `--tuned` of `run` and `check`: each static spec's tile from the report folder, one line
/// per kernel on stderr; `which(f)` says whether `f` runs forward and backward.
pub fn apply_all(
    dir: &Path,
    files: &mut [AnySpecFile],
    which: impl Fn(&AnySpecFile) -> (bool, bool),
) -> Result<(), CliError> {
    let index = TunedIndex::open(dir)?;
    for f in files {
        let (forward, backward) = which(f);
        for (wanted, bwd) in [(forward, false), (backward, true)] {
            if wanted {
                eprintln!("{}", index.apply(f, bwd)?);
            }
        }
    }
    Ok(())
}
