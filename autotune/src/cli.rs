//! Command-line entry points, shared by the `attnforge-tune` binary and the `attnforge`
//! CLI (`attnforge tune` / `attnforge report`): clap [`TuneArgs`] / [`ReportArgs`] and
//! [`run_tune`] / [`run_report`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use attnforge_codegen::backward::backward_supported;
use attnforge_codegen::catalog;
use attnforge_codegen::serving::DECODE_MAX_SEQ_Q;
use attnforge_codegen::spec::{KernelSpec, Layout};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backward::BackwardTunable;
use crate::cache::{self, Cache, Lookup, CACHE_ENV, DEFAULT_CACHE};
use crate::decode::DecodeTunable;
use crate::kernel::KernelTunable;
use crate::measure::BenchConfig;
use crate::report::{write_reports, ReportItem};
use crate::tuner::{codegen_hash, tune, EnvironmentError, Tunable, TuneOptions};
use crate::Arch;

/// A tuning target: an architecture, and for `sm_90a` the Hopper warpgroup-MMA candidates
/// ranked together with sm_90's (compiled for sm_90a, which runs on compute capability 9.0
/// only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TuneArch {
    /// The architecture (tiles, limits, NVRTC target).
    pub arch: Arch,
    /// Whether the search space adds the warpgroup-MMA tiles (`sm_90a`).
    pub wgmma: bool,
}

impl TuneArch {
    /// `sm_80`, `sm_90` or `sm_90a`.
    pub fn name(&self) -> String {
        format!(
            "{}{}",
            self.arch.sm_name(),
            if self.wgmma { "a" } else { "" }
        )
    }
}

impl From<Arch> for TuneArch {
    fn from(arch: Arch) -> Self {
        TuneArch { arch, wgmma: false }
    }
}

fn parse_arch(s: &str) -> Result<TuneArch, String> {
    if let Some(base) = s.trim().strip_suffix('a') {
        if Arch::parse(base) == Some(Arch::Sm90) {
            return Ok(TuneArch {
                arch: Arch::Sm90,
                wgmma: true,
            });
        }
    }
    Arch::parse(s)
        .map(TuneArch::from)
        .ok_or_else(|| format!("unknown architecture `{s}`: use sm_80, sm_90 or sm_90a"))
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
    /// Target architecture: sm_80, sm_90, or sm_90a (sm_90's candidates and the Hopper
    /// warpgroup-MMA ones, ranked together).
    #[arg(long, default_value = "sm_90", value_parser = parse_arch)]
    pub arch: TuneArch,
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
    /// Kernel layout to tune: `dense` (prefill on [B, H, S, D]), `decode` (the split-KV
    /// decode kernel on a paged cache: tile and number of splits, on `--batch` sequences of
    /// `--decode-tokens` tokens over `--seq` cached keys) or `decode_varlen` (the same over
    /// packed keys).
    #[arg(long, default_value = "dense", value_parser = parse_tune_layout)]
    pub layout: Layout,
    /// Query tokens per sequence of a decode step (`--layout decode | decode_varlen`; 1..=16).
    #[arg(long, default_value_t = 1)]
    pub decode_tokens: usize,
    /// Tune the backward kernels (dK/dV and dQ tile) instead of the forward, at the same
    /// shape (dense layout).
    #[arg(long, conflicts_with = "layout")]
    pub backward: bool,
    /// With --backward: add FlashAttention-2's atomic dQ to the candidates (dQ then not
    /// bit-reproducible; never the default). Cached as `<name>_bwd_atomic_dq`, apart from the
    /// deterministic tuning.
    #[arg(long, requires = "backward")]
    pub atomic_dq: bool,
}

fn parse_tune_layout(s: &str) -> Result<Layout, String> {
    match s {
        "dense" => Ok(Layout::Dense),
        "decode" => Ok(Layout::Decode),
        "decode_varlen" => Ok(Layout::DecodeVarlen),
        _ => Err(format!(
            "the tuner tunes `dense`, `decode` or `decode_varlen` kernels, not `{s}` (varlen and paged prefill use the dense tunings' tiles)"
        )),
    }
}

impl Default for TuneArgs {
    fn default() -> Self {
        TuneArgs {
            catalog: false,
            variants: Vec::new(),
            out: PathBuf::from("reports"),
            cache: None,
            arch: TuneArch::from(Arch::Sm90),
            batch: 2,
            heads: 16,
            seq: 4096,
            gate_seq: 40,
            gate_top: 1,
            gate_max_tries: 3,
            compile_top: 6,
            retune: false,
            layout: Layout::Dense,
            decode_tokens: 1,
            backward: false,
            atomic_dq: false,
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
    /// A variant without a decode kernel (`--layout decode`).
    #[error("--variant `{variant}` has no decode kernel: {reason}; fix: pick a variant that `attnforge check --layout decode --all` lists as passing")]
    NoDecodeKernel {
        /// Canonical name.
        variant: String,
        /// The layout's rule it breaks.
        reason: String,
    },
    /// A variant without backward kernels (`--backward`).
    #[error("--variant `{variant}` has no backward kernels: {reason}")]
    NoBackward {
        /// Canonical name.
        variant: String,
        /// Why (`backward_supported`).
        reason: String,
    },
    /// Bad shape argument.
    #[error("--{field} must be at least 1 (--decode-tokens: 1..=16): got {value}")]
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
    /// The report folder cannot be created or written (checked before any tuning).
    #[error(
        "report folder `{path}` is not writable ({source}); fix: pass --out with a writable folder"
    )]
    ReportsNotWritable {
        /// Folder.
        path: PathBuf,
        /// The error of the write probe.
        source: std::io::Error,
    },
    /// The cache holds nothing to report.
    #[error(
        "the tuning cache `{0}` has no valid entries; fix: run `attnforge-tune --catalog` first"
    )]
    EmptyCache(PathBuf),
    /// The machine cannot tune (toolchain or compiler missing, I/O): nothing was cached for
    /// the kernel, so the next run tunes it again.
    #[error("cannot tune {variant}: {error}; nothing was cached for it, so the next run tunes it again once this is fixed")]
    Environment {
        /// The kernel being tuned.
        variant: String,
        /// What failed.
        error: EnvironmentError,
    },
    /// Some kernels have no surviving candidate (reports are written; not cached).
    #[error("no candidate survived for {}: {}; per-candidate reasons: {}; such results are not cached, the next run tunes them again",
        .kernels.len(),
        .kernels.iter().map(|(k, why)| format!("{k} ({why})")).collect::<Vec<_>>().join(", "),
        .summary.index.display())]
    NoWinner {
        /// `(kernel, rejections)` of each kernel without a winner.
        kernels: Vec<(String, String)>,
        /// The rest of the run.
        summary: Box<TuneSummary>,
    },
}

/// Exit code of a tuning that ran but left a kernel without a winner.
pub const EXIT_NO_WINNER: u8 = 1;
/// Exit code of a usage, input or environment error (bad flag, unwritable cache or report
/// folder, missing toolchain or compiler).
pub const EXIT_INPUT: u8 = 2;

impl TuneError {
    /// The process exit code: [`EXIT_NO_WINNER`] (1) for [`TuneError::NoWinner`],
    /// [`EXIT_INPUT`] (2) for everything else (input, environment, I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            TuneError::NoWinner { .. } => EXIT_NO_WINNER,
            _ => EXIT_INPUT,
        }
    }
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
    if a.layout.is_decode() {
        return run_tune_decode(a, &specs);
    }
    if a.backward {
        return run_tune_backward(a, &specs);
    }
    let tunables: Vec<KernelTunable> = specs
        .into_iter()
        .map(|s| {
            KernelTunable::new(s, a.batch, a.heads, a.seq, a.gate_seq).with_wgmma(a.arch.wgmma)
        })
        .collect();
    let dyns: Vec<&dyn Tunable> = tunables.iter().map(|t| t as &dyn Tunable).collect();
    run_tune_with(a, &dyns)
}

/// `--layout decode | decode_varlen`: the decode kernel of each selected variant; with `--catalog` the
/// variants without one (the layout's rules) are left out, a named one is an error.
fn run_tune_decode(a: &TuneArgs, specs: &[KernelSpec]) -> Result<TuneSummary, TuneError> {
    if !(1..=DECODE_MAX_SEQ_Q).contains(&a.decode_tokens) {
        return Err(TuneError::BadShape {
            field: "decode-tokens",
            value: a.decode_tokens,
        });
    }
    let mut tunables = Vec::new();
    for s in specs {
        let shape = ((a.batch, a.heads), (a.decode_tokens, a.seq));
        match DecodeTunable::new_in(s, a.layout, shape.0, shape.1, a.gate_seq) {
            Ok(t) => tunables.push(t),
            Err(_) if a.catalog => {}
            Err(reason) => {
                return Err(TuneError::NoDecodeKernel {
                    variant: s.canonical_name(),
                    reason,
                })
            }
        }
    }
    let dyns: Vec<&dyn Tunable> = tunables.iter().map(|t| t as &dyn Tunable).collect();
    run_tune_with(a, &dyns)
}

/// `--backward`: the backward kernels of each selected variant; with `--catalog` the
/// variants without them are left out, a named one is an error.
fn run_tune_backward(a: &TuneArgs, specs: &[KernelSpec]) -> Result<TuneSummary, TuneError> {
    let mut tunables = Vec::new();
    for s in specs {
        match backward_supported(s) {
            Ok(()) => tunables.push(
                BackwardTunable::new(s.clone(), a.batch, a.heads, a.seq, a.gate_seq)
                    .with_atomic_dq(a.atomic_dq),
            ),
            Err(_) if a.catalog => {}
            Err(errs) => {
                return Err(TuneError::NoBackward {
                    variant: s.canonical_name(),
                    reason: errs
                        .iter()
                        .map(|e| format!("{}: {}", e.path, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                })
            }
        }
    }
    let dyns: Vec<&dyn Tunable> = tunables.iter().map(|t| t as &dyn Tunable).collect();
    run_tune_with(a, &dyns)
}

/// Create `dir` and write (then remove) a probe file in it.
fn check_writable_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(std::io::Error::other("it exists and is not a folder"));
    }
    std::fs::create_dir_all(dir)?;
    let probe = cache::unique_sibling(&dir.join(".attnforge-write"), "probe");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// [`run_tune`] over caller-supplied tunables (tests inject fake kernels here).
///
/// Order: the report folder and (when anything must be tuned) the cache are checked for
/// writability first, so a read-only path fails before any tuning work. A kernel that hits
/// an [`EnvironmentError`] stops the run ([`TuneError::Environment`]) and nothing is cached
/// for it; a kernel without a winner is reported and not cached, and the run ends with
/// [`TuneError::NoWinner`] after writing the reports.
pub fn run_tune_with(a: &TuneArgs, tunables: &[&dyn Tunable]) -> Result<TuneSummary, TuneError> {
    let out_existed = a.out.exists();
    check_writable_dir(&a.out).map_err(|source| TuneError::ReportsNotWritable {
        path: a.out.clone(),
        source,
    })?;
    let r = tune_into_checked_out(a, tunables);
    if !out_existed && matches!(r, Err(ref e) if !matches!(e, TuneError::NoWinner { .. })) {
        // created by the writability check, never written: removed if still empty
        let _ = std::fs::remove_dir(&a.out);
    }
    r
}

fn tune_into_checked_out(
    a: &TuneArgs,
    tunables: &[&dyn Tunable],
) -> Result<TuneSummary, TuneError> {
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
    let keyed: Vec<(String, String, Lookup)> = tunables
        .iter()
        .map(|t| {
            let variant = t.variant();
            let hash = codegen_hash(*t, a.arch.arch);
            let (_, bucket) = t.shape();
            let key = cache::key(&variant, &a.arch.name(), &t.device(), &bucket);
            let look = match Cache::lookup(&loaded.file, &key, &hash) {
                _ if loaded.corrupt.is_some() => Lookup::Corrupt("the whole file".into()),
                _ if a.retune => Lookup::Miss,
                // older versions cached failed tunings: never reuse one
                Lookup::Hit(t) if t.winner.is_none() => Lookup::Stale(String::new()),
                l => l,
            };
            (variant, bucket, look)
        })
        .collect();
    if keyed.iter().any(|k| !matches!(k.2, Lookup::Hit(_))) {
        cache.check_writable()?;
    }
    let pb = bar(tunables.len());
    if let Some(why) = &loaded.corrupt {
        let aside = cache.set_aside_corrupt(&mut |m| say(&mut s, &pb, m))?;
        say(
            &mut s,
            &pb,
            format!(
                "cache `{}` is corrupt ({why}): not trusted, kept as `{}`, its kernels are re-tuned",
                cache.path().display(),
                aside.map_or_else(|| "(gone meanwhile)".to_owned(), |p| p.display().to_string())
            ),
        );
    }
    let opts = TuneOptions {
        arch: a.arch.arch,
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
    let mut no_winner = Vec::new();
    for (t, (variant, bucket, look)) in tunables.iter().zip(keyed) {
        pb.set_message(variant.clone());
        if let Lookup::Hit(tuning) = look {
            s.cache_hits += 1;
            say(
                &mut s,
                &pb,
                format!(
                    "cache hit: {variant} ({}, {bucket}): winner {} reused, not re-tuned",
                    a.arch.name(),
                    tuning.winner.map_or("none".to_owned(), |w| w.suffix())
                ),
            );
            items.push(ReportItem {
                tuning: *tuning,
                from_cache: true,
            });
            pb.inc(1);
            continue;
        }
        let why = match &look {
            Lookup::Stale(old) if old.is_empty() => {
                s.retuned_stale += 1;
                "cached without a winner (by an older version), re-tuning".to_owned()
            }
            Lookup::Stale(old) => {
                s.retuned_stale += 1;
                format!(
                    "stale (tuned with codegen {}), re-tuning",
                    &old[..12.min(old.len())]
                )
            }
            Lookup::Corrupt(r) => {
                s.retuned_corrupt += 1;
                format!("corrupt ({r}), re-tuning")
            }
            _ => {
                s.tuned_new += 1;
                "tuning".to_owned()
            }
        };
        let mut step = |m: &str| pb.set_message(m.to_owned());
        let tuning = match tune(*t, &opts, &mut step) {
            Ok(t) => t,
            Err(error) => {
                pb.finish_and_clear();
                return Err(TuneError::Environment { variant, error });
            }
        };
        let stages: Vec<String> = tuning
            .stage_seconds
            .iter()
            .map(|(n, t)| format!("{n} {t:.1} s"))
            .collect();
        let outcome = match tuning.winner {
            Some(w) => {
                let splits = tuning
                    .winner_result()
                    .and_then(|c| c.predicted?.splits)
                    .map_or(String::new(), |k| format!(" with {k} key splits"));
                format!("winner {}{splits}", w.suffix())
            }
            None => format!("NO WINNER ({}); not cached", tuning.rejections()),
        };
        let line = format!(
            "{why}: {variant}: {outcome} ({}) in {:.1} s ({})",
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
            no_winner.push((variant, tuning.rejections()));
        } else {
            cache.store_with(std::slice::from_ref(&tuning), &mut |m| say(&mut s, &pb, m))?;
        }
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
        "{} kernels in {:.1} s: {} from the cache (not re-tuned), {} tuned, {} stale re-tuned, {} corrupt re-tuned, {} without a winner; report: {}",
        s.kernels,
        s.seconds,
        s.cache_hits,
        s.tuned_new,
        s.retuned_stale,
        s.retuned_corrupt,
        s.no_winner,
        s.index.display()
    );
    eprintln!("{line}");
    s.log.push(line);
    if !no_winner.is_empty() {
        return Err(TuneError::NoWinner {
            kernels: no_winner,
            summary: Box::new(s),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use attnforge_codegen::spec::{DType, HeadDim, Mask, ScoreMod};

    #[test]
    fn sm_90a_is_sm_90_with_the_wgmma_candidates() {
        assert_eq!(
            parse_arch("sm_90a"),
            Ok(TuneArch {
                arch: Arch::Sm90,
                wgmma: true
            })
        );
        assert_eq!(parse_arch("sm_90"), Ok(TuneArch::from(Arch::Sm90)));
        assert_eq!(parse_arch("80"), Ok(TuneArch::from(Arch::Sm80)));
        assert_eq!(
            parse_arch("sm_90a").map(|a| a.name()),
            Ok("sm_90a".to_owned())
        );
        let e = parse_arch("sm_80a").unwrap_err();
        assert!(e.contains("sm_80a") && e.contains("sm_90a"), "{e}");
        let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
        let plain = KernelTunable::new(spec.clone(), 2, 16, 4096, 40);
        let hopper = plain.clone().with_wgmma(true);
        let (p, h) = (plain.space(Arch::Sm90), hopper.space(Arch::Sm90));
        assert!(p.iter().all(|t| !t.wgmma));
        assert!(
            h.starts_with(&p),
            "sm_90's candidates first, then the wgmma ones"
        );
        assert!(h.iter().any(|t| t.warp_specialized()) && h.len() >= p.len() + 8);
        // sm_80 has none, and neither has an f32 spec
        assert_eq!(hopper.space(Arch::Sm80), plain.space(Arch::Sm80));
        let f32_spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
        let f = KernelTunable::new(f32_spec, 2, 16, 4096, 40);
        assert_eq!(
            f.clone().with_wgmma(true).space(Arch::Sm90),
            f.space(Arch::Sm90)
        );
    }
}
