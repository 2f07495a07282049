//! `attnforge check`: kernel vs the f64 reference on a backend, with random inputs.

use attnforge::codegen::catalog;
use attnforge::codegen::dynamic::dynamic_catalog;
use attnforge::codegen::spec::{DType, Layout};
use attnforge::exec::{check, Backend, ExecError, Inputs};
use attnforge::reference::{AttnOutput, CloseReport, Element, Shape4, Tensor4};
use attnforge::sim::{SimCounters, SimElem};
use attnforge::specfile::{self, AnySpecFile, SpecFile};
use clap::{Args, ValueEnum};
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressStyle};

use super::check_problems as problems;
use super::common::{random_values, resolve_any};
use super::variant::{variant, Variant};
use super::CliError;

pub const AFTER_HELP: &str = "\
Each kernel runs on random inputs of the spec's [problem] sizes and is compared with the f64
reference using the relative oracle of variants.md section 0: pass when
max|K-R| <= rtol * max|N-R| + atol, N being the naive same-precision path. Exit code 1 when
any kernel fails. A catalog entry runs its own problem (B=1, Hq=2 (4 with GQA, Hkv=1), S=80)
and a suite besides: Sq < Sk and Sq > Sk, GQA Hq=6 Hkv=2, every pipeline stage count, mask
edges on tile edges, large magnitudes, non-default parameters, GQA and f32 twins; on the
simulator the visited-tile counters must equal a brute-force classification of every tile
(docs/correctness.md).

Data-dependent pipelines (landmark, hax, cca, topk, recycled, lse_merge) run every kernel of the
pipeline (attnforge_runtime::exec_dynamic) and compare the final out/lse the same way; their
random inputs are exact (q, k in {-1, 0, 1} for the ranking families, values multiples of
1/16, HAX hyperplanes redrawn until every hash sign is well-posed), so rankings have exact
ties and no near-ties. --all covers the static and the dynamic catalog. --fail-fast stops at
the first failing kernel. --json adds a fingerprint to passing kernels: a digest of the
output bits and the simulator's work counters over every problem (equal digests: bit-identical runs).

--backward checks the backward kernels instead (variants.md section 12: dq, dk, dv and the
score parameter's gradient, each against the f64 backward with the same rule); with --all it
covers the static catalog (the data-dependent families have no backward). Variants the
backward kernels do not cover yet fail with the reason. A spec file with `backward = true` is
checked both ways without --backward (docs/spec-files.md).

Examples:
  attnforge check flash_fwd_causal_d64_f16
  attnforge check --backward flash_fwd_causal_d64_f16
  attnforge check landmark_retrieval_d64_f16 examples/specs/hax.toml
  attnforge check examples/specs/*.toml --seed 7
  attnforge check --all --backend sim
  attnforge check --all --backend cuda     # needs a GPU
  attnforge check --all --layout varlen    # packed sequences (variants.md section 13)
  attnforge check --all --layout paged     # a paged KV cache, page sizes 1, 16 and 128
  attnforge check --all --layout decode    # decoding on a paged cache, split-KV + merge
  attnforge check --stats --all            # key_mass / key_score / top_keys (docs/statistics.md)
  attnforge check --stats --all --layout decode   # the same after a split decode and its merge

--layout varlen|paged compiles each static variant for the serving layout and runs it on the
simulator over one batch of sequences of different lengths (an empty one, lengths off the
tile grid, Sq_b > Sk_b where defined; paged: a permuted page table with a page shared by
every sequence; decode: 1..16 tokens per sequence, GQA groups packed, splits 1, 2 and more
than key tiles, merged) against the reference's serving function. Variants a layout cannot serve
(data-dependent pipelines, explicit block-sparse lists, doc masks on a paged cache) are
listed as SKIP with the reason.";

/// Backend of `check`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CheckBackend {
    /// The CPU SIMT simulator running the exact generated CUDA.
    Sim,
    /// A GPU (device 0).
    Cuda,
}

/// Options of `attnforge check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Catalog names or spec files.
    specs: Vec<String>,
    /// Check every catalog entry.
    #[arg(long)]
    all: bool,
    /// Where the kernel runs.
    #[arg(long, value_enum, default_value = "sim")]
    backend: CheckBackend,
    /// Override the problem's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object per kernel instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop at the first failing kernel (exit code 1).
    #[arg(long)]
    fail_fast: bool,
    /// Check the backward kernels (gradients) instead of the forward.
    #[arg(long)]
    backward: bool,
    /// Where the rows live: dense (default), varlen (packed sequences) or paged (a paged
    /// KV cache); the serving layouts run on the simulator.
    #[arg(long, value_enum, default_value = "dense")]
    layout: LayoutArg,
    /// Check the attention statistics outputs (key_mass, key_score, top_keys; variants.md
    /// section 14) of each static variant on the simulator instead (dense, or any --layout;
    /// decode: the sweep kernel after the split merge).
    #[arg(long, conflicts_with = "backward")]
    stats: bool,
    /// Run with the tile the tuner picked (`attnforge tune --out DIR`; default `reports`):
    /// `<name>.json` (forward) or `<name>_bwd.json` (--backward) of that folder; a kernel it
    /// does not hold keeps the default tile, with a notice.
    #[arg(long, value_name = "REPORT_DIR", num_args = 0..=1, require_equals = true,
          default_missing_value = super::tuned::DEFAULT_DIR)]
    tuned: Option<std::path::PathBuf>,
}

/// `--layout` of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// `[B, H, S, D]` tensors.
    Dense,
    /// Packed sequences with `cu_seqlens`.
    Varlen,
    /// A paged KV cache with a block table.
    Paged,
    /// Decoding (1..16 tokens per sequence) on a paged cache, split-KV.
    Decode,
    /// Decoding over packed keys (`cu_seqlens_k`), split-KV.
    #[value(name = "decode_varlen")]
    DecodeVarlen,
}

impl LayoutArg {
    fn layout(self) -> Layout {
        match self {
            LayoutArg::Dense => Layout::Dense,
            LayoutArg::Varlen => Layout::Varlen,
            LayoutArg::Paged => Layout::Paged,
            LayoutArg::Decode => Layout::Decode,
            LayoutArg::DecodeVarlen => Layout::DecodeVarlen,
        }
    }
}

/// One variant in a serving layout: its verdict, or why the layout cannot serve it.
fn serving_verdict(
    f: &AnySpecFile,
    layout: Layout,
    backend: &Backend,
    seed: Option<u64>,
    stats: bool,
) -> Result<Result<Verdict, String>, CliError> {
    let sf = match f {
        AnySpecFile::Static(sf) => sf,
        AnySpecFile::Dynamic(df) if layout == Layout::Paged => {
            let seed = seed.unwrap_or(df.problem.seed);
            return super::dynamic::check_paged(df, backend, seed);
        }
        _ => {
            return Ok(Err(
                "data-dependent pipelines read dense inputs (the fused top-k and landmark attention also a paged cache: --layout paged)".into(),
            ))
        }
    };
    let mut sf = sf.clone();
    if stats {
        sf.spec.stats = sf.spec.stats.or(Some(super::check_stats::serving_params()));
    }
    if let Some(why) = super::check_serving::unsupported(&sf, layout) {
        return Ok(Err(why));
    }
    let seed = seed.unwrap_or(sf.problem.seed);
    super::check_serving::check_serving(&sf, layout, backend, seed).map(Ok)
}

/// One kernel's (or pipeline's) result.
pub struct Verdict {
    pub name: String,
    pub ok: bool,
    pub out_err: f64,
    pub out_ratio: f64,
    pub lse_err: f64,
    pub detail: String,
    /// Dynamic pipelines: kernels run and work counters (JSON), else null.
    pub extra: serde_json::Value,
    /// Problems checked (a catalog entry runs a suite, a spec file its own problem).
    pub problems: usize,
    /// Digest of the output bits and the simulator's work counters ([`fingerprint`]) over
    /// every problem checked.
    pub fingerprint: Option<String>,
}

/// FNV-1a digest of a kernel's `out` and `lse` bits and of its work counters (visited
/// tiles, mask evaluations, gathered keys): equal digests mean the run was bit-identical.
/// `cargo xtask mutants` compares it with the unmutated generator's to tell an equivalent
/// mutant from a surviving one.
pub fn fingerprint(output: &AttnOutput, counters: Option<&SimCounters>) -> String {
    let mut h = Fnv::new();
    for x in output.out.iter().chain(&output.lse) {
        h.eat(x.to_bits());
    }
    for c in counters.map_or([0; 8], |c| c.raw) {
        h.eat(c);
    }
    h.hex()
}

/// Several problems' fingerprints folded into one (in order).
pub fn combine_fingerprints<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Fnv::new();
    for p in parts {
        for b in p.bytes() {
            h.eat(u64::from(b));
        }
    }
    h.hex()
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn eat(&mut self, x: u64) {
        for b in x.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl Verdict {
    /// A kernel whose output passed the oracle.
    pub fn passed(name: String, close: &CloseReport, extra: serde_json::Value) -> Self {
        Verdict {
            name,
            ok: true,
            out_err: close.out.max_err,
            out_ratio: close.out.ratio,
            lse_err: close.lse.max_err,
            detail: String::new(),
            extra,
            problems: 1,
            fingerprint: None,
        }
    }

    /// A kernel that failed (mismatch or run error), with the reason.
    pub fn failed(name: String, detail: String) -> Self {
        Verdict {
            name,
            ok: false,
            out_err: f64::NAN,
            out_ratio: f64::NAN,
            lse_err: f64::NAN,
            detail,
            extra: serde_json::Value::Null,
            problems: 1,
            fingerprint: None,
        }
    }
}

pub(super) fn inputs<T: Element>(sf: &SpecFile, seed: u64, magnitude: f32) -> Inputs<T> {
    let p = sf.problem;
    let d = sf.spec.head_dim.get();
    let mk = |h, s, stream| {
        let shape = Shape4::new(p.batch, h, s, d);
        let v = random_values(shape.numel(), seed, stream);
        Tensor4::from_vec(
            shape,
            v.into_iter().map(|x| T::from_f32(x * magnitude)).collect(),
        )
        .expect("sized")
    };
    Inputs::new(
        mk(p.heads_q, p.seq_q, 1),
        mk(p.heads_kv, p.seq_k, 2),
        mk(p.heads_kv, p.seq_k, 3),
    )
}

/// Outcome of one problem: the oracle's report, or why it failed.
/// A passing problem carries its [`fingerprint`].
type CaseOutcome = Result<(CloseReport, String), String>;

fn check_case<T: Element + SimElem>(
    sf: &SpecFile,
    magnitude: f32,
    backend: &Backend,
    seed: u64,
) -> Result<CaseOutcome, CliError> {
    let tile = sf.tile().map_err(CliError::input)?;
    let mut rp = sf
        .run_params(sf.problem.seq_k, None)
        .map_err(CliError::input)?;
    specfile::catalog_twins(sf, &mut rp);
    if let Some(l) = problems::host_lists(&sf.spec, &rp, sf.problem.shape()) {
        rp.block_lists = Some(l);
    }
    let x = inputs::<T>(sf, seed, magnitude);
    let res = check(&sf.spec, &tile, &x, &rp, backend);
    // A user function that failed on the host makes the verdict meaningless.
    if let Some(e) = sf.user_fn_failure() {
        return Err(CliError::input(e.to_string()));
    }
    match res {
        Ok(r) => {
            let print = fingerprint(&r.output, r.counters.as_ref());
            let (Some(c), Some(want)) = (
                r.counters,
                problems::tile_census(&sf.spec, &tile, &rp, sf.problem.shape()),
            ) else {
                return Ok(Ok((r.close, print)));
            };
            let got = (c.tiles_full, c.tiles_partial, c.mask_evals);
            if got == want {
                Ok(Ok((r.close, print)))
            } else {
                Ok(Err(format!(
                    "visited tiles (full, partial, mask evaluations) = {got:?}, a brute-force \
                     classification of every tile expects {want:?}"
                )))
            }
        }
        Err(ExecError::Mismatch { detail, .. }) => Ok(Err(detail)),
        Err(e @ (ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_))) => {
            Err(CliError::input(format!("{}: {e}", sf.location())))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Check a static spec: a spec file on its own `[problem]`, a catalog entry on its problem
/// suite (check_problems.rs). One verdict: the worst errors over the problems, and every
/// failing problem named.
pub(super) fn check_static(
    sf: &SpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    let tile = sf.tile().map_err(CliError::input)?;
    let name = attnforge::codegen::name::canonical_name_with_tile(&sf.spec, &tile);
    let cases = if sf.path.is_none() {
        problems::catalog_cases(sf)
    } else {
        vec![problems::CheckCase {
            label: "the spec file's problem".into(),
            file: sf.clone(),
            magnitude: 1.0,
        }]
    };
    let n = cases.len();
    let mut worst: Option<CloseReport> = None;
    let mut failures = Vec::new();
    let mut prints = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        // The first problem keeps the seed; the others get their own inputs.
        let seed = seed.wrapping_add(i as u64);
        let outcome = match c.file.spec.dtype {
            DType::F32 => check_case::<f32>(&c.file, c.magnitude, backend, seed),
            DType::F16 => check_case::<f16>(&c.file, c.magnitude, backend, seed),
            DType::Bf16 => check_case::<bf16>(&c.file, c.magnitude, backend, seed),
        }?;
        match outcome {
            Ok((r, print)) => {
                prints.push(print);
                worst = Some(match worst {
                    Some(w) => worse(w, r),
                    None => r,
                })
            }
            Err(detail) => failures.push(format!("[{}] {detail}", c.label)),
        }
    }
    let mut v = match (&worst, failures.is_empty()) {
        (Some(w), true) => Verdict::passed(name, w, serde_json::Value::Null),
        _ => Verdict::failed(
            name,
            format!(
                "{} of {n} problems failed: {}",
                failures.len(),
                failures.join("; ")
            ),
        ),
    };
    v.problems = n;
    if v.ok {
        v.fingerprint = Some(combine_fingerprints(prints.iter().map(String::as_str)));
    }
    Ok(v)
}

/// A dynamic pipeline's verdict on its catalog problem combined with one on an extra problem
/// (the worst figures; the work counters of the catalog problem).
pub(super) fn with_extra_problem(mut v: Verdict, label: &str, extra: Verdict) -> Verdict {
    if !extra.ok {
        let own = if v.ok {
            String::new()
        } else {
            format!("{}; ", v.detail)
        };
        v.detail = format!("{own}[{label}] {}", extra.detail);
        v.ok = false;
    }
    v.out_err = v.out_err.max(extra.out_err);
    v.out_ratio = v.out_ratio.max(extra.out_ratio);
    v.lse_err = v.lse_err.max(extra.lse_err);
    v.problems += extra.problems;
    v.fingerprint = match (v.ok, &v.fingerprint, &extra.fingerprint) {
        (true, Some(a), Some(b)) => Some(combine_fingerprints([a.as_str(), b.as_str()])),
        _ => None,
    };
    v
}

/// The larger of each figure of two oracle reports.
fn worse(mut a: CloseReport, b: CloseReport) -> CloseReport {
    if b.out.max_err > a.out.max_err {
        a.out.max_err = b.out.max_err;
    }
    if b.out.ratio > a.out.ratio {
        a.out.ratio = b.out.ratio;
    }
    if b.lse.max_err > a.lse.max_err {
        a.lse.max_err = b.lse.max_err;
    }
    a
}

pub fn run(a: CheckArgs) -> Result<(), CliError> {
    let mut files: Vec<AnySpecFile> = Vec::new();
    if a.all {
        files.extend(
            catalog()
                .into_iter()
                .map(|s| AnySpecFile::Static(Box::new(specfile::from_catalog(s)))),
        );
        if !a.backward && !a.stats {
            files.extend(
                dynamic_catalog()
                    .into_iter()
                    .map(|s| AnySpecFile::Dynamic(specfile::dyn_from_catalog(s))),
            );
        }
    }
    for s in &a.specs {
        let f = resolve_any(s)?;
        problem_budget(&f)?;
        files.push(f);
    }
    if files.is_empty() {
        return Err(CliError::input(
            "nothing to check\n  fix: give catalog names or spec files, or --all",
        ));
    }
    if let Some(dir) = &a.tuned {
        // the same jobs as below: forward unless --backward, backward with it or `backward = true`
        super::tuned::apply_all(dir, &mut files, |f| {
            let file_bwd = matches!(f, AnySpecFile::Static(sf) if sf.backward);
            (!a.backward, a.backward || file_bwd)
        })?;
    }
    let backend = match a.backend {
        CheckBackend::Sim => Backend::sim(),
        CheckBackend::Cuda if a.stats => {
            return Err(CliError::input(
                "--stats runs on the simulator only (the statistics are not read back from a GPU yet)\n  fix: use --backend sim",
            ))
        }
        CheckBackend::Cuda => Backend::Cuda(0),
    };
    // A spec file with `backward = true` is checked forward and backward.
    let jobs: Vec<(&AnySpecFile, bool)> = files
        .iter()
        .flat_map(|f| {
            let both = !a.backward && matches!(f, AnySpecFile::Static(sf) if sf.backward);
            [(f, a.backward)]
                .into_iter()
                .chain(both.then_some((f, true)))
        })
        .collect();
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Two or more kernels at a time on the simulator (each is single-threaded); the GPU
    // backend keeps one, since kernels on one device would only queue behind each other.
    let workers = match a.backend {
        CheckBackend::Sim => std::thread::available_parallelism().map_or(1, |n| n.get()),
        CheckBackend::Cuda => 1,
    }
    .min(jobs.len());
    let mut failed = 0;
    let mut skipped = 0;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::scope(|s| -> Result<(), CliError> {
        for _ in 0..workers {
            let tx = tx.clone();
            let (jobs, stop, next, backend, a) = (&jobs, &stop, &next, &backend, &a);
            s.spawn(move || loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(f, backward)) = jobs.get(i) else {
                    break;
                };
                if tx.send((i, check_job(f, backward, a, backend))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Results are printed in catalog order whatever order the workers finish in.
        let mut done: Vec<Option<JobResult>> = (0..jobs.len()).map(|_| None).collect();
        let mut printed = 0;
        for (i, r) in rx.iter() {
            done[i] = Some(r);
            while let Some(r) = done.get_mut(printed).and_then(Option::take) {
                let (f, backward) = jobs[printed];
                printed += 1;
                bar.set_message(f.canonical_name());
                let v = match r {
                    Ok(Ok(v)) => v,
                    Ok(Err(why)) => {
                        skipped += 1;
                        let line = format!("SKIP {:<56} {why}", f.canonical_name());
                        bar.suspend(|| println!("{line}"));
                        bar.inc(1);
                        continue;
                    }
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(e);
                    }
                };
                if !v.ok {
                    failed += 1;
                }
                let line = if wants_stats(&a, f) && !backward && v.ok && !a.json {
                    format!("PASS {:<56} {}", v.name, v.detail)
                } else {
                    result_line(&v, a.json, backward)
                };
                bar.suspend(|| println!("{line}"));
                bar.inc(1);
                if a.fail_fast && !v.ok {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        bar.finish_and_clear();
        return Err(e);
    }
    bar.finish_and_clear();
    if failed > 0 {
        let stopped = if a.fail_fast {
            " (stopped at the first failure: --fail-fast)"
        } else {
            ""
        };
        return Err(CliError::failed(format!(
            "{failed} of {} kernels failed the check{stopped}",
            jobs.len()
        )));
    }
    if !a.json {
        if skipped > 0 {
            let why = if a.stats && a.layout == LayoutArg::Dense {
                "no statistics outputs for them"
            } else if a.stats {
                "no statistics outputs for them, or the layout cannot serve them"
            } else {
                "the layout cannot serve them"
            };
            println!(
                "{} kernels passed, {skipped} skipped ({why})",
                jobs.len() - skipped
            );
        } else {
            println!("{} kernels passed", jobs.len());
        }
    }
    Ok(())
}

/// One job's result: its verdict, the reason it was skipped, or an error that ends the run.
type JobResult = Result<Result<Verdict, String>, CliError>;

/// Checks one kernel (forward or backward) in the layout the options and the spec file ask for.
fn check_job(f: &AnySpecFile, backward: bool, a: &CheckArgs, backend: &Backend) -> JobResult {
    // a spec file's own `layout` applies unless --layout names one
    let layout = match f {
        AnySpecFile::Static(sf) if a.layout == LayoutArg::Dense => sf.spec.layout,
        _ => a.layout.layout(),
    };
    if wants_stats(a, f) && !backward && layout.is_dense() {
        super::check_stats::check_stats_any(f, a.seed)
    } else if backward && !layout.is_dense() {
        Ok(Err(
            "the backward kernels read the dense layout only".to_string()
        ))
    } else if backward {
        super::check_backward::check_backward_any(f, backend, a.seed).map(Ok)
    } else if layout.is_dense() {
        variant(f).check(backend, a.seed).map(Ok)
    } else {
        serving_verdict(f, layout, backend, a.seed, wants_stats(a, f))
    }
}

/// `--stats`, or a spec file with `stats = { .. }`: checked with its statistics.
fn wants_stats(a: &CheckArgs, f: &AnySpecFile) -> bool {
    a.stats || matches!(f, AnySpecFile::Static(sf) if sf.spec.stats.is_some())
}

/// One kernel's result line: JSON, or PASS/FAIL with its figures.
fn result_line(v: &Verdict, json: bool, backward: bool) -> String {
    if json {
        let mut j = serde_json::json!({
            "kernel": v.name, "pass": v.ok, "out_max_err": finite(v.out_err),
            "out_ratio_to_naive": finite(v.out_ratio), "lse_max_err": finite(v.lse_err),
            "detail": v.detail, "problems": v.problems, "fingerprint": v.fingerprint,
        });
        if let (serde_json::Value::Object(m), serde_json::Value::Object(x)) = (&mut j, &v.extra) {
            m.insert("dynamic".into(), true.into());
            m.extend(x.clone());
        }
        j.to_string()
    } else if v.ok {
        let work = match &v.extra {
            serde_json::Value::Object(x) => format!(
                "  keys gathered {}",
                x.get("keys_gathered").cloned().unwrap_or_default()
            ),
            _ => String::new(),
        };
        let problems = if v.problems > 1 {
            format!("  ({} problems)", v.problems)
        } else {
            String::new()
        };
        if backward {
            format!(
                "PASS {:<56} max err / bound: {}{problems}",
                v.name, v.detail
            )
        } else {
            // a forward pass's detail: e.g. a decode check's split count and its source
            let note = if v.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", v.detail)
            };
            format!(
                "PASS {:<56} out max err {:.3e} (x{:.2} naive)  lse max err {:.3e}{work}{problems}{note}",
                v.name, v.out_err, v.out_ratio, v.lse_err
            )
        }
    } else {
        format!("FAIL {:<56} {}", v.name, v.detail)
    }
}

/// The `[problem]` against the element budget (attnforge::limits; the hard limits are
/// checked when the file is parsed), before its random inputs are allocated.
fn problem_budget(f: &AnySpecFile) -> Result<(), CliError> {
    let v = variant(f);
    let (p, dim, file) = (v.problem(), v.head_dim(), v.location());
    let sizes = attnforge::limits::ProblemSizes {
        fields: [
            ("problem.batch", p.batch as u64),
            ("problem.heads_q", p.heads_q as u64),
            ("problem.heads_kv", p.heads_kv as u64),
            ("problem.seq_q", p.seq_q as u64),
            ("problem.seq_k", p.seq_k as u64),
        ],
        dim: dim as u64,
    };
    attnforge::limits::check_all(&sizes).map_err(|e| {
        CliError::input(format!(
            "{file}: field `{}`: {}\n  fix: {}",
            e.field, e.message, e.fix
        ))
    })
}

fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        x.into()
    } else {
        serde_json::Value::Null
    }
}
