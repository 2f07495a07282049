//! Run-time support of `kernel!` declarations with `family:` (the data-dependent families
//! of `attnforge_codegen::dynamic`): thin delegations to `attnforge_runtime::pipeline` and
//! `attnforge_runtime::exec_dynamic`,
//! plus the check of the log-sum-exp merge (two partial results in, one out).

use attnforge_reference::{self as reference, AttnOutput, Element, Precision};
use attnforge_runtime::codegen::dynamic::{emit_dynamic, DynamicKernel, DynamicSpec};
use attnforge_runtime::exec::{Backend, ExecError};
use attnforge_runtime::exec_dynamic::{self, DynCheckReport, DynInputs, DynRun};
use attnforge_runtime::pipeline;
use attnforge_runtime::sim::{SimConfig, SimElem};

/// The pipeline's kernels in launch order (one self-contained `.cu` each).
pub fn cuda(spec: &DynamicSpec) -> Result<Vec<DynamicKernel>, ExecError> {
    emit_dynamic(spec).map_err(ExecError::Spec)
}

/// Runs every stage of the pipeline on the simulator.
pub fn simulate<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    cfg: &SimConfig,
) -> Result<DynRun, ExecError> {
    exec_dynamic::run(spec, x, &Backend::Sim(*cfg))
}

/// The f64 reference of the pipeline.
pub fn reference<T: Element>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
) -> Result<AttnOutput, ExecError> {
    pipeline::reference(spec, x, Precision::F64)
}

/// Runs on `backend` and compares with the reference.
pub fn check<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    backend: &Backend,
) -> Result<DynCheckReport, ExecError> {
    exec_dynamic::check(spec, x, backend)
}

/// Runs the pipeline on GPU `ordinal` and returns its output.
pub fn launch<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    ordinal: usize,
) -> Result<AttnOutput, ExecError> {
    pipeline::run(spec, x, &Backend::Cuda(ordinal)).map(|r| r.output)
}

/// Runs the merge kernel of an `lse_merge` spec on `backend` (simulator or GPU).
pub fn merge<T: Element + SimElem>(
    spec: &DynamicSpec,
    a: &AttnOutput,
    b: &AttnOutput,
    backend: &Backend,
) -> Result<DynRun, ExecError> {
    exec_dynamic::merge::<T>(spec, a, b, backend)
}

/// The f64 log-sum-exp merge of two partial results (`attnforge_reference::lse_merge`);
/// their rows must be `head_dim` wide, as for the kernel.
pub fn merge_reference(
    spec: &DynamicSpec,
    a: &AttnOutput,
    b: &AttnOutput,
) -> Result<AttnOutput, ExecError> {
    let d = spec.head_dim().get();
    if a.shape.dim != d || b.shape.dim != d {
        return Err(ExecError::Input {
            field: "a.shape.dim / b.shape.dim".into(),
            message: format!(
                "rows of {} and {} values; the spec's head_dim is {d}",
                a.shape.dim, b.shape.dim
            ),
            fix: "merge two results of the same [B, Hq, Sq, head_dim] shape".into(),
        });
    }
    Ok(reference::lse_merge(a, b)?)
}

/// Runs the merge kernel on `backend` and compares it with the f64 merge (tolerance of the
/// spec's dtype; the error scale of the naive path is the f64 merge rounded to `T`).
pub fn merge_check<T: Element + SimElem>(
    spec: &DynamicSpec,
    a: &AttnOutput,
    b: &AttnOutput,
    backend: &Backend,
) -> Result<DynCheckReport, ExecError> {
    let run = merge::<T>(spec, a, b, backend)?;
    let want = merge_reference(spec, a, b)?;
    let mut naive = want.clone();
    for o in &mut naive.out {
        *o = T::from_f64(*o).to_f64();
    }
    exec_dynamic::compare(spec, run, &want, &naive)
}
