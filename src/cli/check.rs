//! `attnforge check`: kernel vs the f64 reference on a backend, with random inputs.

use attnforge::codegen::catalog;
use attnforge::codegen::dynamic::dynamic_catalog;
use attnforge::codegen::spec::DType;
use attnforge::exec::{check, Backend, ExecError, Inputs};
use attnforge::reference::{AttnOutput, CloseReport, Element, Shape4, Tensor4};
use attnforge::sim::{SimCounters, SimElem};
use attnforge::specfile::{self, AnySpecFile, SpecFile};
use clap::{Args, ValueEnum};
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{random_values, resolve_any};
use super::dynamic;
use super::CliError;

pub const AFTER_HELP: &str = "\
Each kernel runs on random inputs of the spec's [problem] sizes (catalog entries: B=1, Hq=2
(4 with GQA, Hkv=1), S=80) and is compared with the f64 reference using the relative oracle
of variants.md section 0: pass when max|K-R| <= rtol * max|N-R| + atol, N being the naive
same-precision path. Exit code 1 when any kernel fails.

Data-dependent pipelines (landmark, hax, cca, topk, lse_merge) run every kernel of the
pipeline (attnforge_kernels::exec_dynamic) and compare the final out/lse the same way; their
random inputs are exact (q, k in {-1, 0, 1} for the ranking families, values multiples of
1/16, HAX hyperplanes redrawn until every hash sign is well-posed), so rankings have exact
ties and no near-ties. --all covers the static and the dynamic catalog. --fail-fast stops at
the first failing kernel. --json adds a fingerprint to passing kernels: a digest of the
output bits and the simulator's work counters (equal digests: bit-identical runs).

Examples:
  attnforge check flash_fwd_causal_d64_f16
  attnforge check landmark_retrieval_d64_f16 examples/specs/hax.toml
  attnforge check examples/specs/*.toml --seed 7
  attnforge check --all --backend sim
  attnforge check --all --backend cuda     # needs a GPU";

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
    /// Digest of the output bits and the simulator's work counters ([`fingerprint`]).
    pub fingerprint: Option<String>,
}

/// FNV-1a digest of a kernel's `out` and `lse` bits and of its work counters (visited
/// tiles, mask evaluations, gathered keys): equal digests mean the run was bit-identical.
/// `cargo xtask mutants` compares it with the unmutated generator's to tell an equivalent
/// mutant from a surviving one.
pub fn fingerprint(output: &AttnOutput, counters: Option<&SimCounters>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for x in output.out.iter().chain(&output.lse) {
        eat(x.to_bits());
    }
    for c in counters.map_or([0; 8], |c| c.raw) {
        eat(c);
    }
    format!("{h:016x}")
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
            fingerprint: None,
        }
    }
}

fn inputs<T: Element>(sf: &SpecFile, seed: u64) -> Inputs<T> {
    let p = sf.problem;
    let d = sf.spec.head_dim.get();
    let mk = |h, s, stream| {
        let shape = Shape4::new(p.batch, h, s, d);
        let v = random_values(shape.numel(), seed, stream);
        Tensor4::from_vec(shape, v.into_iter().map(T::from_f32).collect()).expect("sized")
    };
    Inputs::new(
        mk(p.heads_q, p.seq_q, 1),
        mk(p.heads_kv, p.seq_k, 2),
        mk(p.heads_kv, p.seq_k, 3),
    )
}

fn check_one<T: Element + SimElem>(
    sf: &SpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    let tile = sf.tile().map_err(CliError::input)?;
    let mut rp = sf
        .run_params(sf.problem.seq_k, None)
        .map_err(CliError::input)?;
    specfile::catalog_twins(sf, &mut rp);
    let x = inputs::<T>(sf, seed);
    let name = attnforge::codegen::name::canonical_name_with_tile(&sf.spec, &tile);
    let res = check(&sf.spec, &tile, &x, &rp, backend);
    // A user function that failed on the host makes the verdict meaningless.
    if let Some(e) = sf.user_fn_failure() {
        return Err(CliError::input(e.to_string()));
    }
    match res {
        Ok(r) => Ok(Verdict {
            fingerprint: Some(fingerprint(&r.output, r.counters.as_ref())),
            ..Verdict::passed(name, &r.close, serde_json::Value::Null)
        }),
        Err(ExecError::Mismatch { detail, .. }) => Ok(Verdict::failed(name, detail)),
        Err(e @ (ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_))) => {
            Err(CliError::input(format!("{}: {e}", where_(sf))))
        }
        Err(e) => Ok(Verdict::failed(name, e.to_string())),
    }
}

fn where_(sf: &SpecFile) -> String {
    sf.path
        .as_ref()
        .map_or_else(|| sf.spec.canonical_name(), |p| p.display().to_string())
}

pub fn run(a: CheckArgs) -> Result<(), CliError> {
    let mut files: Vec<AnySpecFile> = Vec::new();
    if a.all {
        files.extend(
            catalog()
                .into_iter()
                .map(|s| AnySpecFile::Static(Box::new(specfile::from_catalog(s)))),
        );
        files.extend(
            dynamic_catalog()
                .into_iter()
                .map(|s| AnySpecFile::Dynamic(specfile::dyn_from_catalog(s))),
        );
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
    let backend = match a.backend {
        CheckBackend::Sim => Backend::sim(),
        CheckBackend::Cuda => Backend::Cuda(0),
    };
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut failed = 0;
    for f in &files {
        bar.set_message(f.canonical_name());
        let v = match f {
            AnySpecFile::Static(sf) => {
                let seed = a.seed.unwrap_or(sf.problem.seed);
                match sf.spec.dtype {
                    DType::F32 => check_one::<f32>(sf, &backend, seed),
                    DType::F16 => check_one::<f16>(sf, &backend, seed),
                    DType::Bf16 => check_one::<bf16>(sf, &backend, seed),
                }
            }
            AnySpecFile::Dynamic(df) => {
                dynamic::check(df, &backend, a.seed.unwrap_or(df.problem.seed))
            }
        };
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        if !v.ok {
            failed += 1;
        }
        let line = if a.json {
            let mut j = serde_json::json!({
                "kernel": v.name, "pass": v.ok, "out_max_err": finite(v.out_err),
                "out_ratio_to_naive": finite(v.out_ratio), "lse_max_err": finite(v.lse_err),
                "detail": v.detail, "fingerprint": v.fingerprint,
            });
            if let (serde_json::Value::Object(m), serde_json::Value::Object(x)) = (&mut j, &v.extra)
            {
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
            format!(
                "PASS {:<56} out max err {:.3e} (x{:.2} naive)  lse max err {:.3e}{work}",
                v.name, v.out_err, v.out_ratio, v.lse_err
            )
        } else {
            format!("FAIL {:<56} {}", v.name, v.detail)
        };
        bar.suspend(|| println!("{line}"));
        bar.inc(1);
        if a.fail_fast && !v.ok {
            break;
        }
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
            files.len()
        )));
    }
    if !a.json {
        println!("{} kernels passed", files.len());
    }
    Ok(())
}

/// The `[problem]` against the element budget (attnforge::limits; the hard limits are
/// checked when the file is parsed), before its random inputs are allocated.
fn problem_budget(f: &AnySpecFile) -> Result<(), CliError> {
    let (p, dim, file) = match f {
        AnySpecFile::Static(sf) => (sf.problem, sf.spec.head_dim.get(), where_(sf)),
        AnySpecFile::Dynamic(df) => (
            df.problem,
            df.spec.head_dim().get(),
            df.path
                .as_ref()
                .map_or_else(|| df.spec.canonical_name(), |p| p.display().to_string()),
        ),
    };
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
