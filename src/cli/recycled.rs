//! `attnforge check` / `attnforge run` of the Recycled Attention family (variants.md
//! section 16): the decode driver `exec_recycled` over `T` steps of q (rotated), q_raw
//! (un-rotated), k, v.

use std::path::Path;

use attnforge::codegen::dynamic::DynamicSpec;
use attnforge::codegen::spec::DType;
use attnforge::exec::{Backend, ExecError};
use attnforge::exec_recycled::{self, RecycledInputs};
use attnforge::npy::{read_tensor, AnyTensor};
use attnforge::reference::{AttnOutput, Element, Precision, Shape4, StepKind, Tensor4};
use attnforge::sim::SimElem;
use attnforge::specfile::DynSpecFile;

use super::check::Verdict;
use super::run::RunBackend;
use super::CliError;

fn input_error(label: &str, e: ExecError) -> CliError {
    match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{label}: {e}"))
        }
        e => CliError::failed(format!("{label}: {e}")),
    }
}

/// Integer values in `[-r, r]` from a splitmix stream (exact in every dtype: no near-ties
/// in the full steps' rankings).
fn ints<T: Element>(shape: Shape4, seed: u64, stream: u64, r: u64) -> Tensor4<T> {
    let mut g =
        attnforge::reference::SplitMix64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(stream));
    Tensor4::from_fn(shape, |_, _, _, _| {
        T::from_f64(g.below(2 * r as usize + 1) as f64 - r as f64)
    })
}

/// The random problem of `check`: integer q/k/v; q_raw points one way for the first half of
/// the steps and another way after (so a check after the jump runs a full step).
fn check_inputs<T: Element>(df: &DynSpecFile, seed: u64) -> RecycledInputs<T> {
    let p = df.problem;
    let d = df.spec.head_dim().get();
    let qs = Shape4::new(p.batch, p.heads_q, p.seq_q, d);
    let ks = Shape4::new(p.batch, p.heads_kv, p.seq_k, d);
    let half = p.seq_q / 2;
    let q_raw = Tensor4::from_fn(qs, |_, _, t, x| {
        let w = if t < half { 2 } else { 3 };
        T::from_f64(f64::from(u8::from(x % w == 0)))
    });
    let mut x = RecycledInputs::new(
        ints(qs, seed, 1, 1),
        q_raw,
        ints(ks, seed, 2, 1),
        ints(ks, seed, 3, 2),
    );
    x.scale = df.scale;
    x
}

fn check_typed<T: Element + SimElem>(
    df: &DynSpecFile,
    backend: &Backend,
    seed: u64,
) -> Result<Verdict, CliError> {
    let name = df.spec.canonical_name();
    let x = check_inputs::<T>(df, seed);
    match exec_recycled::check_recycled(&df.spec, &x, backend) {
        Ok(r) => {
            let worst = r
                .close
                .iter()
                .max_by(|a, b| a.out.ratio.total_cmp(&b.out.ratio))
                .cloned()
                .unwrap_or_default();
            let extra = serde_json::json!({
                "kernels": attnforge::codegen::dynamic::RecycledConfig::of(&df.spec)
                    .map(|c| c.kernel_names().to_vec())
                    .unwrap_or_default(),
                "keys_gathered": r.run.steps.iter().map(|s| s.counters.keys_gathered).sum::<u64>(),
                "kinds": r.run.steps.iter().map(|s| kinds_text(&s.kinds)).collect::<Vec<_>>(),
                "keys_read": r.run.steps.iter().map(|s| s.keys_read).collect::<Vec<_>>(),
                "recycle_size": r.run.recycle_size,
            });
            Ok(Verdict {
                fingerprint: Some(super::check::fingerprint(&r.run.stacked(), None)),
                ..Verdict::passed(name, &worst, extra)
            })
        }
        Err(e @ (ExecError::Spec(_) | ExecError::Reference(_))) => Err(input_error(&name, e)),
        Err(e) => Ok(Verdict::failed(name, e.to_string())),
    }
}

/// `attnforge check` of a recycled spec: its `[problem]` (`seq_q` decode steps over a cache of
/// `seq_k` keys) on the simulator, every step against `recycled_attention`.
pub fn check(df: &DynSpecFile, backend: &Backend, seed: u64) -> Result<Verdict, CliError> {
    match df.spec.dtype() {
        DType::F32 => check_typed::<f32>(df, backend, seed),
        DType::F16 => check_typed::<half::f16>(df, backend, seed),
        DType::Bf16 => check_typed::<half::bf16>(df, backend, seed),
    }
}

fn kinds_text(k: &[StepKind]) -> String {
    k.iter()
        .map(|k| match k {
            StepKind::Full => "full",
            StepKind::Partial => "partial",
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The steps' kinds and keys read, one line each, and the stacked output.
fn go<T: Element + SimElem>(
    df: &DynSpecFile,
    x: &RecycledInputs<T>,
    at: RunBackend,
) -> Result<AttnOutput, ExecError> {
    let mut lines = Vec::new();
    let out = match at {
        RunBackend::Sim => {
            let r = exec_recycled::run_recycled(&df.spec, x, &Backend::sim())?;
            for (t, s) in r.steps.iter().enumerate() {
                lines.push(format!(
                    "step {t}: {} keys_read {}",
                    kinds_text(&s.kinds),
                    s.keys_read
                ));
            }
            r.stacked()
        }
        RunBackend::Reference => {
            let steps = exec_recycled::reference_recycled(&df.spec, x, Precision::F64)?;
            let (b, hq, d) = (x.q.shape.batch, x.q.shape.heads, x.q.shape.dim);
            let n = steps.len();
            let mut o = AttnOutput::empty(Shape4::new(b, hq, n, d));
            for (t, s) in steps.iter().enumerate() {
                lines.push(format!(
                    "step {t}: {} keys_read {}",
                    kinds_text(&s.kinds),
                    s.keys_read
                ));
                for r in 0..b * hq {
                    let dst = r * n + t;
                    o.out[dst * d..(dst + 1) * d].copy_from_slice(&s.out.out[r * d..(r + 1) * d]);
                    o.lse[dst] = s.out.lse[r];
                }
            }
            o
        }
        RunBackend::Cuda => {
            return Err(ExecError::Input {
                field: "backend".into(),
                message: "the recycled decode driver runs on the simulator (GPU driver not built)"
                    .into(),
                fix: "use --backend sim or --backend reference".into(),
            })
        }
    };
    println!("{}", lines.join("\n"));
    Ok(out)
}

/// `attnforge run` of a recycled spec: q (rotated) `[B, Hq, T, D]`, q_raw (un-rotated, same
/// shape), k, v `[B, Hkv, Sk, D]`; prints each step's kinds and keys read and returns
/// `out [B, Hq, T, D]`, `lse [B, Hq, T]`.
pub fn run(
    df: &DynSpecFile,
    label: &str,
    files: &super::dynamic::RunFiles<'_>,
    q_raw: Option<&Path>,
    at: RunBackend,
) -> Result<AttnOutput, CliError> {
    let Some(q_raw) = q_raw else {
        return Err(CliError::input(format!(
            "{label}: field `q_raw`: recycled needs the un-rotated queries of the steps\n  fix: pass --q-raw q_raw.npy ([B, Hq, T, D], the shape of --q)"
        )));
    };
    if files.hyperplanes.is_some() || files.ks.is_some() {
        return Err(CliError::input(format!(
            "{label}: --hyperplanes / --ks are HAX inputs; recycled does not take them\n  fix: remove them"
        )));
    }
    let dt = df.spec.dtype();
    let read = |p: &Path| read_tensor(p, dt).map_err(CliError::input);
    let (q, qr, k, v) = (read(files.q)?, read(q_raw)?, read(files.k)?, read(files.v)?);
    let scale = df
        .scale
        .map_or(1.0 / (df.spec.head_dim().get() as f64).sqrt(), f64::from);
    super::run::check_magnitudes(label, [(files.q, &q), (files.k, &k), (files.v, &v)], scale)?;
    let mk = |q, qr, k, v| {
        let mut x = RecycledInputs::new(q, qr, k, v);
        x.scale = df.scale;
        x
    };
    let res = match (q, qr, k, v) {
        (AnyTensor::F32(q), AnyTensor::F32(r), AnyTensor::F32(k), AnyTensor::F32(v)) => {
            go(df, &mk(q, r, k, v), at)
        }
        (AnyTensor::F16(q), AnyTensor::F16(r), AnyTensor::F16(k), AnyTensor::F16(v)) => go(
            df,
            &RecycledInputs {
                scale: df.scale,
                ..RecycledInputs::new(q, r, k, v)
            },
            at,
        ),
        (AnyTensor::Bf16(q), AnyTensor::Bf16(r), AnyTensor::Bf16(k), AnyTensor::Bf16(v)) => go(
            df,
            &RecycledInputs {
                scale: df.scale,
                ..RecycledInputs::new(q, r, k, v)
            },
            at,
        ),
        _ => unreachable!("read_tensor returns the spec's dtype"),
    };
    res.map_err(|e| input_error(label, e))
}

/// Whether `spec` is a recycled spec (its run and check go through this module).
pub fn is_recycled(spec: &DynamicSpec) -> bool {
    matches!(spec, DynamicSpec::Recycled { .. })
}
