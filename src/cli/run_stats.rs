//! `attnforge run` of a spec with statistics outputs (`stats = { .. }`, variants.md section 14):
//! `--key-mass`, `--key-score`, `--top-keys` receive what the forward kernel's statistics
//! policy and its follow-up kernel wrote (simulator), or the reference's (`--backend
//! reference`), next to `--out` / `--lse`. Every output is staged and renamed into place only
//! when all are written: a failure leaves the previous files as they were.

use std::path::PathBuf;

use attnforge::exec::{ExecError, Inputs, RunParams};
use attnforge::exec_stats::{reference_stats, simulate_stats};
use attnforge::npy::{write_staged, AnyTensor, Staged};
use attnforge::reference::{AttnOutput, Element, Precision};
use attnforge::sim::{Schedule, SimConfig, SimElem};
use attnforge::specfile::SpecFile;

use super::run::{static_inputs, RunArgs, RunBackend};
use super::CliError;

/// The statistics outputs of `run` (a spec with `stats`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StatsArgs {
    /// Statistics: output file for `key_mass` (float32 [B, Hq, Sk]: the attention each key
    /// receives, summed over the query rows of each query head).
    #[arg(long)]
    pub(super) key_mass: Option<PathBuf>,
    /// Statistics: output file for `key_score` (float32 [B, Hkv, Sk]: key_mass reduced over
    /// each GQA group, then max-pooled, as the spec's `stats` says).
    #[arg(long)]
    pub(super) key_score: Option<PathBuf>,
    /// Statistics: output file for `top_keys` (int32 [B, Hkv, K]: the K keys of largest
    /// key_score, descending, ties to the lower index, -1 where fewer are eligible).
    #[arg(long)]
    pub(super) top_keys: Option<PathBuf>,
}

impl StatsArgs {
    /// Whether any statistics output was asked for.
    pub(super) fn any(&self) -> bool {
        self.key_mass.is_some() || self.key_score.is_some() || self.top_keys.is_some()
    }

    /// The output flags given, with their files.
    pub(super) fn outputs(&self) -> Vec<(&'static str, &PathBuf)> {
        [
            ("--key-mass", &self.key_mass),
            ("--key-score", &self.key_score),
            ("--top-keys", &self.top_keys),
        ]
        .into_iter()
        .filter_map(|(f, p)| p.as_ref().map(|p| (f, p)))
        .collect()
    }
}

/// What a backend returned: the forward and the statistics as stored.
struct Stats {
    out: AttnOutput,
    key_mass: Vec<f32>,
    key_score: Vec<f32>,
    top_keys: Vec<i32>,
    /// `B, Hq, Hkv, Sk, K`.
    dims: [u64; 5],
}

fn go<T: Element + SimElem>(
    sf: &SpecFile,
    x: &Inputs<T>,
    rp: &RunParams,
    backend: RunBackend,
) -> Result<Stats, ExecError> {
    let s = (x.q.shape, x.k.shape);
    let top_k = sf.spec.stats.and_then(|st| st.top_k).unwrap_or(0);
    let dims = [s.0.batch, s.0.heads, s.1.heads, s.1.seq, top_k].map(|v| v as u64);
    match backend {
        RunBackend::Reference => {
            let (out, st) = reference_stats(&sf.spec, x, rp, Precision::F64)?;
            Ok(Stats {
                out,
                key_mass: st.key_mass.iter().map(|&v| v as f32).collect(),
                key_score: st.key_score.iter().map(|&v| v as f32).collect(),
                top_keys: st.top_keys.iter().map(|&i| i as i32).collect(),
                dims,
            })
        }
        RunBackend::Sim => {
            let tile = sf.tile().map_err(|e| ExecError::Input {
                field: e.field.clone(),
                message: e.message.clone(),
                fix: e.fix.clone(),
            })?;
            let r = simulate_stats(&sf.spec, &tile, x, rp, &SimConfig::new(Schedule::Forward))?;
            Ok(Stats {
                out: r.output,
                key_mass: r.key_mass,
                key_score: r.key_score,
                top_keys: r.top_keys,
                dims,
            })
        }
        RunBackend::Cuda => Err(ExecError::Input {
            field: "--backend".into(),
            message:
                "the statistics outputs are read back on the simulator only (not from a GPU yet)"
                    .into(),
            fix: "pass --backend sim (or --backend reference)".into(),
        }),
    }
}

/// The statistics flags against the spec: the spec must ask for statistics, and for
/// `top_k` when `--top-keys` is given (input errors naming the flag).
pub(super) fn check_flags(sf: &SpecFile, a: &RunArgs) -> Result<(), CliError> {
    if sf.spec.stats.is_none() {
        let (flag, _) = a.stats.outputs()[0];
        return Err(CliError::input(format!(
            "{flag}: the spec `{}` asks for no statistics outputs\n  fix: add `stats = {{ reduce = \"max\", pool = 7, top_k = 64 }}` (or your values) to the spec file, or drop {flag}",
            a.spec
        )));
    }
    if a.stats.top_keys.is_some() && sf.spec.stats.is_some_and(|s| s.top_k.is_none()) {
        return Err(CliError::input(format!(
            "--top-keys: the spec `{}` has no `top_k` in its stats\n  fix: add `top_k = K` to `stats`, or drop --top-keys",
            a.spec
        )));
    }
    Ok(())
}

/// Run `sf` with its statistics and write `--out`, `--lse` and the statistics files.
pub(super) fn run(sf: &SpecFile, a: &RunArgs) -> Result<(), CliError> {
    check_flags(sf, a)?;
    let (q, k, v, rp) = static_inputs(sf, a)?;
    let res = match (q, k, v) {
        (AnyTensor::F32(q), AnyTensor::F32(k), AnyTensor::F32(v)) => {
            go::<f32>(sf, &Inputs::new(q, k, v), &rp, a.backend)
        }
        (AnyTensor::F16(q), AnyTensor::F16(k), AnyTensor::F16(v)) => {
            go(sf, &Inputs::new(q, k, v), &rp, a.backend)
        }
        (AnyTensor::Bf16(q), AnyTensor::Bf16(k), AnyTensor::Bf16(v)) => {
            go(sf, &Inputs::new(q, k, v), &rp, a.backend)
        }
        _ => unreachable!("read_tensor returns the spec's dtype"),
    };
    let st = res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{}: {e}", a.spec))
        }
        e => CliError::failed(format!("{}: {e}", a.spec)),
    })?;
    write(a, &sf.spec.canonical_name(), &st)
}

fn write(a: &RunArgs, name: &str, st: &Stats) -> Result<(), CliError> {
    let staged = stage(a, st.dims, (&st.key_mass, &st.key_score, &st.top_keys))?;
    // out and lse last: write_outputs commits them, then the statistics are committed
    super::run::write_outputs(a, name, &st.out)?;
    commit(a, staged)
}

/// The statistics files staged (nothing in place yet): `key_mass [B, Hq, Sk]`, `key_score
/// [B, Hkv, Sk]`, `top_keys [B, Hkv, K]` with `dims = [B, Hq, Hkv, Sk, K]`; NaN or Inf is an
/// error that writes nothing.
pub(super) fn stage(
    a: &RunArgs,
    [b, hq, hkv, sk, kk]: [u64; 5],
    (key_mass, key_score, top_keys): (&[f32], &[f32], &[i32]),
) -> Result<Vec<Staged>, CliError> {
    if key_mass.iter().chain(key_score).any(|v| !v.is_finite()) {
        return Err(CliError::failed(format!(
            "{}: the statistics hold NaN or Inf; nothing was written",
            a.spec
        )));
    }
    let mut staged = Vec::new();
    let s = &a.stats;
    if let Some(p) = &s.key_mass {
        staged.push(write_staged(p, &[b, hq, sk], key_mass).map_err(CliError::input)?);
    }
    if let Some(p) = &s.key_score {
        staged.push(write_staged(p, &[b, hkv, sk], key_score).map_err(CliError::input)?);
    }
    if let Some(p) = &s.top_keys {
        staged.push(write_staged(p, &[b, hkv, kk], top_keys).map_err(CliError::input)?);
    }
    Ok(staged)
}

/// Move the staged statistics files into place (after `out` and `lse`).
pub(super) fn commit(a: &RunArgs, staged: Vec<Staged>) -> Result<(), CliError> {
    for f in staged {
        f.commit().map_err(CliError::input)?;
    }
    for (flag, p) in a.stats.outputs() {
        println!("{flag}: wrote {}", p.display());
    }
    Ok(())
}
