//! Command-line entry points, shared by the `attnforge-tune` binary and the `attnforge`
//! CLI (`attnforge tune` / `attnforge report`): clap [`TuneArgs`] / [`ReportArgs`] and
//! [`run_tune`] / [`run_report`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use attnforge_codegen::catalog;
use attnforge_codegen::spec::KernelSpec;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cache::{self, Cache, Lookup, CACHE_ENV, DEFAULT_CACHE};
use crate::kernel::KernelTunable;
use crate::measure::BenchConfig;
use crate::report::{write_reports, ReportItem};
use crate::tuner::{codegen_hash, tune, Tunable, TuneOptions};
use crate::Arch;

fn parse_arch(s: &str) -> Result<Arch, String> {
    match s.trim().trim_start_matches("sm_") {
        "80" => Ok(Arch::Sm80),
        "90" => Ok(Arch::Sm90),
        _ => Err(format!("unknown architecture `{s}`: use sm_80 or sm_90")),
    }
}

/// `tune`: tune kernels of the catalog and write the reports.
#[derive(Args, Debug, Clone)]
pub struct TuneArgs {
    /// Tune every kernel of the built-in catalog.
    #[arg(long)]
    pub catalog: bool,
    /// Tune these catalog kernels (canonical names; repeatable).
    #[arg(long = "variant", value_name = "NAME")]
    pub variants: Vec<String>,
    /// Report folder.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Tuning cache file [env: ATTNFORGE_TUNE_CACHE; default: target/attnforge-tune/cache.json].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Target architecture (sm_80 or sm_90).
    #[arg(long, default_value = "sm_90", value_parser = parse_arch)]
    pub arch: Arch,
    /// Batch of the tuning shape.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Query heads of the tuning shape (GQA kernels: a quarter as kv heads).
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    /// Sequence length of the tuning shape.
    #[arg(long, default_value_t = 4096)]
    pub seq: usize,
    /// Sequence length of the correctness gate on the simulator.
    #[arg(long, default_value_t = 40)]
    pub gate_seq: usize,
    /// Candidates (from the top of the static ranking) that must pass the gate.
    #[arg(long, default_value_t = 1)]
    pub gate_top: usize,
    /// Most candidates the gate tries per kernel before giving up.
    #[arg(long, default_value_t = 3)]
    pub gate_max_tries: usize,
    /// Compile (NVRTC + ptxas) only the best N candidates of a pre-ranking by the model on
    /// estimated registers / shared memory (0: compile the whole space).
    #[arg(long, default_value_t = 6)]
    pub compile_top: usize,
    /// Ignore the cache (re-tune everything; results are still stored).
    #[arg(long)]
    pub retune: bool,
}

impl Default for TuneArgs {
    fn default() -> Self {
        TuneArgs {
            catalog: false,
            variants: Vec::new(),
            out: PathBuf::from("reports"),
            cache: None,
            arch: Arch::Sm90,
            batch: 2,
            heads: 16,
            seq: 4096,
            gate_seq: 40,
            gate_top: 1,
            gate_max_tries: 3,
            compile_top: 6,
            retune: false,
        }
    }
}

/// `report`: rewrite the reports from the cache alone (no tuning).
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Report folder.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Tuning cache file [env: ATTNFORGE_TUNE_CACHE; default: target/attnforge-tune/cache.json].
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Errors of the entry points.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Nothing selected.
    #[error("no kernels selected; fix: pass --catalog or --variant NAME")]
    NothingSelected,
    /// Unknown variant name.
    #[error("--variant `{0}` is not in the catalog; fix: use a canonical name such as flash_fwd_causal_d128_bf16 (`attnforge list` lists them)")]
    UnknownVariant(String),
    /// Bad shape argument.
    #[error("--{field} must be at least 1: got {value}")]
    BadShape {
        /// Flag name.
        field: &'static str,
        /// Value.
        value: usize,
    },
    /// Cache failure.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// Report writing failed.
    #[error("writing reports to `{path}`: {source}")]
    Report {
        /// Folder.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The cache holds nothing to report.
    #[error(
        "the tuning cache `{0}` has no valid entries; fix: run `attnforge-tune --catalog` first"
    )]
    EmptyCache(PathBuf),
}

/// What a tuning run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TuneSummary {
    /// Kernels in the run.
    pub kernels: usize,
    /// Reused from the cache (not re-tuned).
    pub cache_hits: usize,
    /// Tuned because absent.
    pub tuned_new: usize,
    /// Re-tuned because the codegen changed.
    pub retuned_stale: usize,
    /// Re-tuned because the entry (or file) was corrupt.
    pub retuned_corrupt: usize,
    /// Kernels without any surviving candidate.
    pub no_winner: usize,
    /// The index page.
    pub index: PathBuf,
    /// Wall time, seconds.
    pub seconds: f64,
    /// One line per kernel saying what happened (also printed).
    pub log: Vec<String>,
}

/// The cache path: flag, else `ATTNFORGE_TUNE_CACHE`, else the default.
pub fn cache_path(flag: &Option<PathBuf>) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os(CACHE_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

fn select(a: &TuneArgs) -> Result<Vec<KernelSpec>, TuneError> {
    let cat = catalog();
    if a.catalog {
        return Ok(cat);
    }
    if a.variants.is_empty() {
        return Err(TuneError::NothingSelected);
    }
    a.variants
        .iter()
        .map(|n| {
            cat.iter()
                .find(|s| s.canonical_name() == *n)
                .cloned()
                .ok_or_else(|| TuneError::UnknownVariant(n.clone()))
        })
        .collect()
}

fn bar(len: usize) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if std::io::stderr().is_terminal() {
        pb.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// Tune the selected kernels with the generated-kernel tunable and write the reports.
pub fn run_tune(a: &TuneArgs) -> Result<TuneSummary, TuneError> {
    for (field, value) in [
        ("batch", a.batch),
        ("heads", a.heads),
        ("seq", a.seq),
        ("gate-seq", a.gate_seq),
    ] {
        if value == 0 {
            return Err(TuneError::BadShape { field, value });
        }
    }
    let specs = select(a)?;
    let tunables: Vec<KernelTunable> = specs
        .into_iter()
        .map(|s| KernelTunable::new(s, a.batch, a.heads, a.seq, a.gate_seq))
        .collect();
    let dyns: Vec<&dyn Tunable> = tunables.iter().map(|t| t as &dyn Tunable).collect();
    run_tune_with(a, &dyns)
}

/// [`run_tune`] over caller-supplied tunables (tests inject fake kernels here).
pub fn run_tune_with(a: &TuneArgs, tunables: &[&dyn Tunable]) -> Result<TuneSummary, TuneError> {
    let started = Instant::now();
    let cache = Cache::new(cache_path(&a.cache));
    let loaded = cache.load();
    let mut s = TuneSummary {
        kernels: tunables.len(),
        ..TuneSummary::default()
    };
    let say = |s: &mut TuneSummary, pb: &ProgressBar, line: String| {
        pb.println(&line);
        if pb.is_hidden() {
            eprintln!("{line}");
        }
        s.log.push(line);
    };
    let pb = bar(tunables.len());
    if let Some(why) = &loaded.corrupt {
        say(
            &mut s,
            &pb,
            format!(
                "cache `{}` is corrupt ({why}): not trusted, kept aside as .corrupt, re-tuning",
                cache.path().display()
            ),
        );
    }
    let opts = TuneOptions {
        arch: a.arch,
        gate_top: a.gate_top,
        gate_max_tries: a.gate_max_tries,
        compile_top: a.compile_top,
        bench: BenchConfig::default(),
        criterion_dir: cache
            .path()
            .parent()
            .map_or_else(|| PathBuf::from("criterion"), |p| p.join("criterion")),
    };
    let mut items = Vec::new();
    for t in tunables {
        let variant = t.variant();
        pb.set_message(variant.clone());
        let hash = codegen_hash(*t, a.arch);
        let (_, bucket) = t.shape();
        let key = cache::key(&variant, a.arch.sm_name(), &t.device(), &bucket);
        let look = if a.retune {
            Lookup::Miss
        } else {
            Cache::lookup(&loaded.file, &key, &hash)
        };
        if let Lookup::Hit(tuning) = look {
            s.cache_hits += 1;
            say(
                &mut s,
                &pb,
                format!(
                    "cache hit: {variant} ({}, {bucket}): winner {} reused, not re-tuned",
                    a.arch.sm_name(),
                    tuning.winner.map_or("none".to_owned(), |w| w.suffix())
                ),
            );
            if tuning.winner.is_none() {
                s.no_winner += 1;
            }
            items.push(ReportItem {
                tuning: *tuning,
                from_cache: true,
            });
            pb.inc(1);
            continue;
        }
        let why = match &look {
            Lookup::Stale(old) => {
                s.retuned_stale += 1;
                format!(
                    "stale (tuned with codegen {}), re-tuning",
                    &old[..12.min(old.len())]
                )
            }
            Lookup::Corrupt(r) => {
                s.retuned_corrupt += 1;
                format!("corrupt entry ({r}), re-tuning")
            }
            _ => {
                s.tuned_new += 1;
                "tuning".to_owned()
            }
        };
        let mut step = |m: &str| pb.set_message(m.to_owned());
        let tuning = tune(*t, &opts, &mut step);
        let stages: Vec<String> = tuning
            .stage_seconds
            .iter()
            .map(|(n, t)| format!("{n} {t:.1} s"))
            .collect();
        let line = format!(
            "{why}: {variant}: winner {} ({}) in {:.1} s ({})",
            tuning.winner.map_or("none".to_owned(), |w| w.suffix()),
            match tuning.basis {
                crate::Basis::Measured => "measured",
                crate::Basis::Predicted => "predicted, no GPU",
            },
            tuning.tune_seconds,
            stages.join(", ")
        );
        say(&mut s, &pb, line);
        if tuning.winner.is_none() {
            s.no_winner += 1;
        }
        cache.store(std::slice::from_ref(&tuning))?;
        items.push(ReportItem {
            tuning,
            from_cache: false,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    s.index = write_reports(&a.out, &items).map_err(|e| TuneError::Report {
        path: a.out.clone(),
        source: e,
    })?;
    s.seconds = started.elapsed().as_secs_f64();
    let line = format!(
        "{} kernels in {:.1} s: {} from the cache (not re-tuned), {} tuned, {} stale re-tuned, {} corrupt re-tuned; report: {}",
        s.kernels,
        s.seconds,
        s.cache_hits,
        s.tuned_new,
        s.retuned_stale,
        s.retuned_corrupt,
        s.index.display()
    );
    eprintln!("{line}");
    s.log.push(line);
    Ok(s)
}

/// Rewrite the reports from every valid cache entry. Returns the index path.
pub fn run_report(a: &ReportArgs) -> Result<PathBuf, TuneError> {
    let cache = Cache::new(cache_path(&a.cache));
    let loaded = cache.load();
    let items: Vec<ReportItem> = Cache::entries(&loaded.file)
        .into_iter()
        .map(|tuning| ReportItem {
            tuning,
            from_cache: true,
        })
        .collect();
    if items.is_empty() {
        return Err(TuneError::EmptyCache(cache.path().to_path_buf()));
    }
    write_reports(&a.out, &items).map_err(|e| TuneError::Report {
        path: a.out.clone(),
        source: e,
    })
}
