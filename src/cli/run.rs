//! `attnforge run`: one spec on q/k/v from `.npy`, out and lse to `.npy`.

use std::path::PathBuf;

use attnforge::codegen::spec::DType;
use attnforge::exec::{reference, simulate, ExecError, Inputs, RunParams};
use attnforge::npy::{read_i32, read_tensor, write_atomic, AnyTensor};
use attnforge::reference::{AttnOutput, Element, Precision};
use attnforge::sim::{SimConfig, SimElem};
use attnforge::specfile::{self, AnySpecFile, SpecFile};
use clap::{Args, ValueEnum};

use super::common::resolve_any;
use super::dynamic;
use super::CliError;

pub const AFTER_HELP: &str = "\
Inputs: q [B, Hq, Sq, D], k and v [B, Hkv, Sk, D], C order, little endian: float32 ('<f4')
for f32 specs, float16 ('<f2') for f16 specs; for bf16 specs (NumPy has no bfloat16) uint16
raw bf16 bits ('<u2') or float32 rounded to bf16. Document ids: --doc, int32, [Sk] or [B, Sk].
NaN/Inf inputs are rejected. Outputs: out [B, Hq, Sq, D] and lse [B, Hq, Sq] as float32
(exact for f16/bf16 kernel outputs; lse = -inf on empty rows), written atomically.

Examples:
  attnforge run examples/specs/causal.toml --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy
  attnforge run examples/specs/document.toml --q q.npy --k k.npy --v v.npy --doc ids.npy --out o.npy --backend reference
  attnforge run flash_fwd_full_d128_bf16 --dtype bf16 --q q.npy --k k.npy --v v.npy --out o.npy
  attnforge run examples/specs/landmark_retrieval.toml --q q.npy --k k.npy --v v.npy --out o.npy
  attnforge run examples/specs/hax.toml --q q2.npy --k k2.npy --v x.npy --hyperplanes hp.npy --ks ks.npy --out o.npy

Data-dependent pipelines: landmark, cca and topk take q/k/v as above; HAX takes q2/k2/x as
--q/--k/--v plus --hyperplanes and --ks (f32; head extent 1 = shared, Hq = per query head,
Hkv = per kv head). lse_merge is not supported by `run` yet (use `attnforge check`).";

/// Backend of `run`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RunBackend {
    /// The f64 reference (no kernel).
    Reference,
    /// The CPU simulator running the generated CUDA.
    Sim,
    /// A GPU (device 0).
    Cuda,
}

/// Element type flag.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DtypeArg {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16 (input as '<u2' raw bits or '<f4').
    Bf16,
}

/// Options of `attnforge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Catalog name or spec file.
    spec: String,
    /// Queries (.npy).
    #[arg(long)]
    q: PathBuf,
    /// Keys (.npy).
    #[arg(long)]
    k: PathBuf,
    /// Values (.npy).
    #[arg(long)]
    v: PathBuf,
    /// Document ids (.npy, int32), replacing the spec file's.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Output file for `out`.
    #[arg(long)]
    out: PathBuf,
    /// Output file for `lse` (optional).
    #[arg(long)]
    lse: Option<PathBuf>,
    /// HAX only: hyperplanes, f32 [1|B, H', N, hash_bits] (H' = 1, Hq or Hkv).
    #[arg(long)]
    hyperplanes: Option<PathBuf>,
    /// HAX only: key-selection scores, f32 [1|B, H', S, 1] (H' = 1, Hq or Hkv).
    #[arg(long)]
    ks: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value = "sim")]
    backend: RunBackend,
    /// Element type of the kernel (default: the spec's); must agree with the spec's dtype.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
}

fn go<T: Element + SimElem>(
    sf: &SpecFile,
    x: Inputs<T>,
    rp: &RunParams,
    backend: RunBackend,
) -> Result<AttnOutput, ExecError> {
    let tile = sf.tile().map_err(|e| ExecError::Input {
        field: e.field.clone(),
        message: e.message.clone(),
        fix: e.fix.clone(),
    })?;
    match backend {
        RunBackend::Reference => reference(&sf.spec, &x, rp, Precision::F64),
        RunBackend::Sim => Ok(simulate(&sf.spec, &tile, &x, rp, &SimConfig::default())?.output),
        RunBackend::Cuda => attnforge::exec::run_cuda(&sf.spec, &tile, &x, rp, 0),
    }
}

fn want_dtype(a: &RunArgs, have: DType) -> Result<(), CliError> {
    if let Some(d) = a.dtype {
        let want = match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::Bf16,
        };
        if want != have {
            return Err(CliError::input(format!(
                "--dtype {} but the spec `{}` is {}\n  fix: drop --dtype or pick a spec of that dtype",
                want.short(),
                a.spec,
                have.short()
            )));
        }
    }
    Ok(())
}

pub fn run(a: RunArgs) -> Result<(), CliError> {
    let sf = match resolve_any(&a.spec)? {
        AnySpecFile::Static(sf) => *sf,
        AnySpecFile::Dynamic(df) => {
            want_dtype(&a, df.spec.dtype())?;
            if a.doc.is_some() {
                return Err(CliError::input(format!(
                    "{}: --doc is for the document masks; `{}` takes no document ids\n  fix: remove --doc",
                    a.spec,
                    df.spec.canonical_name()
                )));
            }
            let files = dynamic::RunFiles {
                q: &a.q,
                k: &a.k,
                v: &a.v,
                hyperplanes: a.hyperplanes.as_deref(),
                ks: a.ks.as_deref(),
            };
            let at = match a.backend {
                RunBackend::Reference => dynamic::Where::Reference,
                RunBackend::Sim => dynamic::Where::Sim,
                RunBackend::Cuda => dynamic::Where::Cuda,
            };
            let out = dynamic::run(&df, &a.spec, &files, at)?;
            return write_outputs(&a, &df.spec.canonical_name(), &out);
        }
    };
    want_dtype(&a, sf.spec.dtype)?;
    if a.hyperplanes.is_some() || a.ks.is_some() {
        return Err(CliError::input(format!(
            "{}: --hyperplanes / --ks are HAX inputs; `{}` does not take them\n  fix: remove them",
            a.spec,
            sf.spec.canonical_name()
        )));
    }
    let q = read_tensor(&a.q, sf.spec.dtype).map_err(CliError::input)?;
    let k = read_tensor(&a.k, sf.spec.dtype).map_err(CliError::input)?;
    let v = read_tensor(&a.v, sf.spec.dtype).map_err(CliError::input)?;
    let doc = match &a.doc {
        Some(p) => Some(read_i32(p).map_err(CliError::input)?),
        None => None,
    };
    let mut rp = sf.run_params(k.shape().seq, doc).map_err(CliError::input)?;
    specfile::catalog_twins(&sf, &mut rp);
    let res = match (q, k, v) {
        (AnyTensor::F32(q), AnyTensor::F32(k), AnyTensor::F32(v)) => {
            go::<f32>(&sf, Inputs::new(q, k, v), &rp, a.backend)
        }
        (AnyTensor::F16(q), AnyTensor::F16(k), AnyTensor::F16(v)) => {
            go(&sf, Inputs::new(q, k, v), &rp, a.backend)
        }
        (AnyTensor::Bf16(q), AnyTensor::Bf16(k), AnyTensor::Bf16(v)) => {
            go(&sf, Inputs::new(q, k, v), &rp, a.backend)
        }
        _ => unreachable!("read_tensor returns the spec's dtype"),
    };
    // A user function that failed on the host makes every result meaningless, whatever the
    // backend reported.
    if let Some(e) = sf.user_fn_failure() {
        return Err(CliError::input(e.to_string()));
    }
    let out = res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{}: {e}", a.spec))
        }
        e => CliError::failed(format!("{}: {e}", a.spec)),
    })?;
    write_outputs(&a, &sf.spec.canonical_name(), &out)
}

fn write_outputs(a: &RunArgs, name: &str, out: &AttnOutput) -> Result<(), CliError> {
    let (b, h, s, d) = (
        out.shape.batch as u64,
        out.shape.heads as u64,
        out.shape.seq as u64,
        out.shape.dim as u64,
    );
    let o: Vec<f32> = out.out.iter().map(|&x| x as f32).collect();
    let l: Vec<f32> = out.lse.iter().map(|&x| x as f32).collect();
    // Write both to temporaries first, so that a failure leaves neither file behind.
    write_atomic(&a.out, &[b, h, s, d], &o).map_err(CliError::input)?;
    if let Some(lp) = &a.lse {
        if let Err(e) = write_atomic(lp, &[b, h, s], &l) {
            let _ = std::fs::remove_file(&a.out);
            return Err(CliError::input(e));
        }
    }
    println!(
        "{}: wrote {} [{b}, {h}, {s}, {d}]{}",
        name,
        a.out.display(),
        a.lse.as_ref().map_or(String::new(), |p| format!(
            " and {} [{b}, {h}, {s}]",
            p.display()
        ))
    );
    Ok(())
}
