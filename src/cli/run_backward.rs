//! `attnforge run --backward`: the gradients (variants.md section 12) of a static spec on
//! q/k/v and the upstream gradient dO (optionally dlse) from `.npy`, written as f32 `.npy`.
//!
//! Every input is checked before anything runs (dO's shape, dtype and finiteness, dlse's
//! length, the variant's coverage, the output paths), and the outputs are staged: nothing is
//! written unless every gradient was computed and is finite.

use std::path::{Path, PathBuf};

use attnforge::codegen::backward::backward_supported;
use attnforge::codegen::scores::ScoreParamKind;
use attnforge::codegen::spec::KernelSpec;
use attnforge::exec::{Backend, ExecError, Inputs, RunParams};
use attnforge::exec_backward::{
    reference_backward, run_backward_cuda, simulate_backward, Upstream,
};
use attnforge::npy::{read_f32, read_tensor, write_staged, AnyTensor, Staged};
use attnforge::reference::{AttnOutput, Element, Precision, ScoreParamGrads, Shape4, Tensor4};
use attnforge::sim::SimElem;
use attnforge::specfile::{AnySpecFile, SpecFile};
use clap::Args;

use super::run::{backend_name, static_inputs, Progress, RunArgs, RunBackend};
use super::CliError;

/// The backward's files (`attnforge run --backward`).
#[derive(Debug, Args)]
pub struct GradArgs {
    /// --backward: the upstream gradient dL/dout (.npy): out's shape [B, Hq, Sq, D], the
    /// spec's dtype (the same rules as --q).
    #[arg(long = "do", value_name = "DO", requires = "backward")]
    pub(super) dout: Option<PathBuf>,
    /// --backward: dL/dlse (.npy, float32 [B, Hq, Sq]), when the lse feeds later computation.
    #[arg(long, requires = "backward")]
    pub(super) dlse: Option<PathBuf>,
    /// --backward: output file for dq (float32 [B, Hq, Sq, D]).
    #[arg(long, requires = "backward")]
    pub(super) dq: Option<PathBuf>,
    /// --backward: output file for dk (float32 [B, Hkv, Sk, D]).
    #[arg(long, requires = "backward")]
    pub(super) dk: Option<PathBuf>,
    /// --backward: output file for dv (float32 [B, Hkv, Sk, D]).
    #[arg(long, requires = "backward")]
    pub(super) dv: Option<PathBuf>,
    /// --backward: output file for the score parameter's gradient (float32; softcap: [1],
    /// ALiBi: [Hq], one per query head).
    #[arg(long, requires = "backward")]
    pub(super) dparams: Option<PathBuf>,
}

/// What a backend returned: the gradients (values of the input dtype, as f64), the score
/// parameter's gradient flattened and the forward they were taken at.
struct Grads {
    dq: Tensor4<f64>,
    dk: Tensor4<f64>,
    dv: Tensor4<f64>,
    params: Vec<f64>,
    forward: AttnOutput,
}

fn flat_params(g: &ScoreParamGrads) -> Vec<f64> {
    match g {
        ScoreParamGrads::None => Vec::new(),
        ScoreParamGrads::Softcap(x) => vec![*x],
        ScoreParamGrads::Alibi(v) | ScoreParamGrads::Function(v) => v.clone(),
        ScoreParamGrads::Chain(c) => c.iter().flat_map(flat_params).collect(),
    }
}

/// The learnable score parameter of `spec`, when its backward has one.
fn learnable(spec: &KernelSpec) -> Option<ScoreParamKind> {
    let def = spec.score.def()?;
    def.grad?;
    def.param.map(|p| p.kind)
}

/// `attnforge run --backward`.
pub(super) fn run(a: &RunArgs, any: &AnySpecFile) -> Result<(), CliError> {
    let AnySpecFile::Static(sf) = any else {
        return Err(CliError::input(format!(
            "{}: --backward: `{}` is a data-dependent pipeline; the backward (variants.md section 12) covers the static variants only\n  fix: drop --backward, or pick a static spec (`attnforge list`)",
            a.spec,
            any.canonical_name()
        )));
    };
    supported(a, sf)?;
    let [dout_path, dq, dk, dv] = required_files(a)?;
    if a.grads.dparams.is_some() && learnable(&sf.spec).is_none() {
        return Err(CliError::input(format!(
            "{}: --dparams: `{}` has no learnable score parameter (softcap and ALiBi have one)\n  fix: remove --dparams",
            a.spec,
            sf.spec.canonical_name()
        )));
    }
    let (q, k, v, rp) = static_inputs(sf, a)?;
    let (dout, dlse) = upstream(a, dout_path, &q)?;
    let progress = Progress::start(format!(
        "{}: backward on the {}",
        sf.spec.canonical_name(),
        backend_name(a.backend)
    ));
    let dl = dlse.as_deref();
    let res = match (q, k, v, dout) {
        (AnyTensor::F32(q), AnyTensor::F32(k), AnyTensor::F32(v), AnyTensor::F32(o)) => {
            go::<f32>(sf, Inputs::new(q, k, v), &o, dl, &rp, a.backend)
        }
        (AnyTensor::F16(q), AnyTensor::F16(k), AnyTensor::F16(v), AnyTensor::F16(o)) => {
            go(sf, Inputs::new(q, k, v), &o, dl, &rp, a.backend)
        }
        (AnyTensor::Bf16(q), AnyTensor::Bf16(k), AnyTensor::Bf16(v), AnyTensor::Bf16(o)) => {
            go(sf, Inputs::new(q, k, v), &o, dl, &rp, a.backend)
        }
        _ => unreachable!("read_tensor returns the spec's dtype"),
    };
    progress.finish(res.is_ok());
    if let Some(e) = sf.user_fn_failure() {
        return Err(CliError::input(e.to_string()));
    }
    let g = res.map_err(|e| match e {
        ExecError::Spec(_) | ExecError::Input { .. } | ExecError::Reference(_) => {
            CliError::input(format!("{}: --backward: {e}", a.spec))
        }
        e => CliError::failed(format!("{}: --backward: {e}", a.spec)),
    })?;
    write_grads(a, &sf.spec.canonical_name(), [dq, dk, dv], &g)
}

/// The variant must be one the backward kernels (and the reference's backward) cover.
fn supported(a: &RunArgs, sf: &SpecFile) -> Result<(), CliError> {
    backward_supported(&sf.spec).map_err(|errs| {
        let why: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        let fix = errs.first().map_or(String::new(), |e| e.fix.clone());
        CliError::input(format!(
            "{}: --backward: `{}` has no backward kernels: {}\n  fix: drop --backward, or {fix}",
            a.spec,
            sf.spec.canonical_name(),
            why.join("; ")
        ))
    })
}

/// `--do`, `--dq`, `--dk`, `--dv`: every missing one named at once.
fn required_files(a: &RunArgs) -> Result<[&Path; 4], CliError> {
    let g = &a.grads;
    let files = [
        ("--do", "dO.npy", &g.dout),
        ("--dq", "dq.npy", &g.dq),
        ("--dk", "dk.npy", &g.dk),
        ("--dv", "dv.npy", &g.dv),
    ];
    let missing: Vec<String> = files
        .iter()
        .filter(|(_, _, p)| p.is_none())
        .map(|(f, e, _)| format!("{f} {e}"))
        .collect();
    if !missing.is_empty() {
        return Err(CliError::input(format!(
            "{}: --backward needs {}\n  fix: add {}",
            a.spec,
            missing
                .iter()
                .map(|m| m.split(' ').next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(" ")
        )));
    }
    Ok(files.map(|(_, _, p)| p.as_deref().expect("checked")))
}

/// dO (out's shape, the spec's dtype, finite) and dlse (one finite f32 per query row).
fn upstream(
    a: &RunArgs,
    dout_path: &Path,
    q: &AnyTensor,
) -> Result<(AnyTensor, Option<Vec<f32>>), CliError> {
    let dtype = match q {
        AnyTensor::F32(_) => attnforge::codegen::spec::DType::F32,
        AnyTensor::F16(_) => attnforge::codegen::spec::DType::F16,
        AnyTensor::Bf16(_) => attnforge::codegen::spec::DType::Bf16,
    };
    let dout = read_tensor(dout_path, dtype).map_err(|e| CliError::input(format!("--do {e}")))?;
    let want = q.shape();
    if dout.shape() != want {
        return Err(CliError::input(format!(
            "--do {}: shape {:?}, but out (the shape of --q) is {:?}\n  fix: pass dL/dout with out's shape [batch, heads_q, seq_q, head_dim]",
            dout_path.display(),
            dims(dout.shape()),
            dims(want)
        )));
    }
    let Some(lp) = &a.grads.dlse else {
        return Ok((dout, None));
    };
    let (shape, l) = read_f32(lp).map_err(|e| CliError::input(format!("--dlse {e}")))?;
    let rows = [want.batch, want.heads, want.seq].map(|x| x as u64);
    if shape != rows && shape != [rows.iter().product::<u64>()] {
        return Err(CliError::input(format!(
            "--dlse {}: shape {shape:?} ({} values), but lse has {rows:?} ({} query rows)\n  fix: pass one float32 per (batch, head, query row): shape [batch, heads_q, seq_q] = {rows:?}",
            lp.display(),
            l.len(),
            rows.iter().product::<u64>()
        )));
    }
    Ok((dout, Some(l)))
}

fn dims(s: Shape4) -> [usize; 4] {
    [s.batch, s.heads, s.seq, s.dim]
}

/// The backward of one dtype on the chosen backend.
fn go<T: Element + SimElem>(
    sf: &SpecFile,
    x: Inputs<T>,
    dout: &Tensor4<T>,
    dlse: Option<&[f32]>,
    rp: &RunParams,
    backend: RunBackend,
) -> Result<Grads, ExecError> {
    let tile = sf.tile().map_err(|e| ExecError::Input {
        field: e.field.clone(),
        message: e.message.clone(),
        fix: e.fix.clone(),
    })?;
    let bwd = sf.backward_tile();
    let up = Upstream { dout, dlse };
    let k = match backend {
        RunBackend::Reference => {
            let r = reference_backward(&sf.spec, &x, up, rp, Precision::F64)?;
            return Ok(Grads {
                params: flat_params(&r.score_params),
                dq: r.dq,
                dk: r.dk,
                dv: r.dv,
                forward: r.forward,
            });
        }
        RunBackend::Sim => {
            let Backend::Sim(cfg) = Backend::sim() else {
                unreachable!("Backend::sim is the simulator")
            };
            simulate_backward(&sf.spec, &tile, &bwd, &x, up, rp, &cfg)?
        }
        RunBackend::Cuda => run_backward_cuda(&sf.spec, &tile, &bwd, &x, up, rp, 0, 0)?.0,
    };
    Ok(Grads {
        params: flat_params(&k.score_params),
        dq: k.dq,
        dk: k.dk,
        dv: k.dv,
        forward: k.forward,
    })
}

/// The first non-finite value of a gradient: `(name, flat index)`.
fn non_finite(g: &Grads) -> Option<(&'static str, usize)> {
    [
        ("dq", &g.dq.data),
        ("dk", &g.dk.data),
        ("dv", &g.dv.data),
        ("dparams", &g.params),
    ]
    .into_iter()
    .find_map(|(n, v)| v.iter().position(|x| !x.is_finite()).map(|i| (n, i)))
}

/// Stage every output, then rename them all into place.
fn write_grads(
    a: &RunArgs,
    name: &str,
    [dq, dk, dv]: [&Path; 3],
    g: &Grads,
) -> Result<(), CliError> {
    if let Some((n, i)) = non_finite(g) {
        return Err(CliError::input(format!(
            "{}: {name}: {n} has a NaN or Inf at flat index {i}; nothing was written\n  fix: a user function, or the inputs, give non-finite scores or gradients: make every score finite",
            a.spec
        )));
    }
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let shape = |t: &Tensor4<f64>| dims(t.shape).map(|x| x as u64).to_vec();
    let mut files: Vec<(&Path, Vec<u64>, Vec<f32>)> = vec![
        (dq, shape(&g.dq), f32s(&g.dq.data)),
        (dk, shape(&g.dk), f32s(&g.dk.data)),
        (dv, shape(&g.dv), f32s(&g.dv.data)),
    ];
    if let Some(p) = &a.grads.dparams {
        files.push((p, vec![g.params.len() as u64], f32s(&g.params)));
    }
    let fw = &g.forward;
    let rows = [fw.shape.batch, fw.shape.heads, fw.shape.seq].map(|x| x as u64);
    if let Some(p) = &a.out {
        let mut s = rows.to_vec();
        s.push(fw.shape.dim as u64);
        files.push((p, s, f32s(&fw.out)));
    }
    if let Some(p) = &a.lse {
        files.push((p, rows.to_vec(), f32s(&fw.lse)));
    }
    let staged: Vec<Staged> = files
        .iter()
        .map(|(p, s, d)| write_staged(p, s, d).map_err(CliError::input))
        .collect::<Result<_, _>>()?;
    for s in staged {
        s.commit().map_err(CliError::input)?;
    }
    let list: Vec<String> = files
        .iter()
        .map(|(p, s, _)| format!("{} {s:?}", p.display()))
        .collect();
    println!("{name}: backward: wrote {}", list.join(", "));
    Ok(())
}
