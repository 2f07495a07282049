//! One execution entry point for both kinds of variant: a static kernel (one `KernelSpec`
//! compiled for a tile, with its runtime parameters: [`StaticKernel`]) and a data-dependent
//! pipeline (a [`DynamicSpec`]: selection + gather-attention kernels). What differs between
//! them, the inputs, how the kernels run and what the reference computes, sits behind the
//! [`Pipeline`] trait; [`run`], [`reference()`] and [`check`] (run, f64 reference, relative
//! oracle) are the same code for both. `exec::check` and `exec_dynamic::check` are this
//! `check` with their kind's report.
//!
//! ```no_run
//! use attnforge_runtime::codegen::prelude::*;
//! use attnforge_runtime::exec::{Backend, Inputs, RunParams};
//! use attnforge_runtime::pipeline::{check, StaticKernel};
//! use attnforge_reference::{Shape4, Tensor4};
//! let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
//! let tile = default_tile(&spec, Arch::Sm80).unwrap();
//! let t = Tensor4::<f32>::from_fn(Shape4::new(1, 1, 16, 64), |_, _, s, d| ((s + d) % 5) as f32 * 0.1);
//! let params = RunParams::default();
//! let kernel = StaticKernel { spec: &spec, tile: &tile, params: &params };
//! let report = check(&kernel, &Inputs::new(t.clone(), t.clone(), t), &Backend::sim()).unwrap();
//! assert!(report.close.out.ratio.is_finite());
//! ```

use std::collections::BTreeMap;

use attnforge_codegen::dynamic::{validate_dynamic, DynamicSpec};
use attnforge_codegen::spec::{DType, KernelSpec};
use attnforge_codegen::tile::TileConfig;
use attnforge_reference::{self as reference, AttnOutput, CloseReport, Element, Precision};
use attnforge_sim::{SimCounters, SimElem};

use crate::exec::{self, Backend, ExecError, Inputs, RunParams};
use crate::exec_dynamic::{self, DynInputs};

/// What one run of a variant produced.
#[derive(Clone, Debug)]
pub struct Execution {
    /// `out` and `lse` as the (last) kernel wrote them.
    pub output: AttnOutput,
    /// Work counters summed over every launch (simulator only).
    pub counters: Option<SimCounters>,
    /// Key tiles a dense kernel would visit (static kernels on the simulator only).
    pub dense_tiles: Option<u64>,
    /// Per launch: kernel name and counters (pipelines on the simulator).
    pub stages: Vec<(String, SimCounters)>,
    /// Integer buffers written by a pipeline's selection stages (`sel`, ...).
    pub indices: BTreeMap<String, Vec<i32>>,
}

impl Execution {
    fn of_output(output: AttnOutput) -> Self {
        Execution {
            output,
            counters: None,
            dense_tiles: None,
            stages: Vec::new(),
            indices: BTreeMap::new(),
        }
    }
}

/// A variant that runs on a [`Backend`] and has an f64 reference: the kind-specific part
/// of execution.
pub trait Pipeline {
    /// Its inputs with elements of type `T`.
    type Inputs<T>;

    /// The name its verdicts carry (static kernels: canonical name with the tile).
    fn name(&self) -> String;

    /// The element type of q, k, v and the output.
    fn dtype(&self) -> DType;

    /// Validate `x` and run the kernel(s) on `backend` (a kernel backend: simulator or GPU).
    fn execute<T: Element + SimElem>(
        &self,
        x: &Self::Inputs<T>,
        backend: &Backend,
    ) -> Result<Execution, ExecError>;

    /// The reference result in `precision`; validates the spec and the inputs as `execute`
    /// does.
    fn reference<T: Element>(
        &self,
        x: &Self::Inputs<T>,
        precision: Precision,
    ) -> Result<AttnOutput, ExecError>;
}

/// A static kernel: spec, tile and runtime parameters.
#[derive(Clone, Copy, Debug)]
pub struct StaticKernel<'a> {
    /// The variant.
    pub spec: &'a KernelSpec,
    /// How it runs.
    pub tile: &'a TileConfig,
    /// Mask, score and user parameters of the run.
    pub params: &'a RunParams,
}

impl Pipeline for StaticKernel<'_> {
    type Inputs<T> = Inputs<T>;

    fn name(&self) -> String {
        attnforge_codegen::name::canonical_name_with_tile(self.spec, self.tile)
    }

    fn dtype(&self) -> DType {
        self.spec.dtype
    }

    fn execute<T: Element + SimElem>(
        &self,
        x: &Inputs<T>,
        backend: &Backend,
    ) -> Result<Execution, ExecError> {
        let (spec, tile, p) = (self.spec, self.tile, self.params);
        match backend {
            Backend::Reference => Ok(Execution::of_output(exec::reference(
                spec,
                x,
                p,
                Precision::F64,
            )?)),
            Backend::Sim(cfg) => {
                let s = exec::simulate(spec, tile, x, p, cfg)?;
                Ok(Execution {
                    counters: Some(s.counters),
                    dense_tiles: Some(s.dense_tiles),
                    ..Execution::of_output(s.output)
                })
            }
            Backend::Cuda(ord) => Ok(Execution::of_output(exec::run_cuda(
                spec, tile, x, p, *ord,
            )?)),
        }
    }

    fn reference<T: Element>(
        &self,
        x: &Inputs<T>,
        precision: Precision,
    ) -> Result<AttnOutput, ExecError> {
        exec::reference(self.spec, x, self.params, precision)
    }
}

impl Pipeline for DynamicSpec {
    type Inputs<T> = DynInputs<T>;

    fn name(&self) -> String {
        self.canonical_name()
    }

    fn dtype(&self) -> DType {
        DynamicSpec::dtype(self)
    }

    fn execute<T: Element + SimElem>(
        &self,
        x: &DynInputs<T>,
        backend: &Backend,
    ) -> Result<Execution, ExecError> {
        let on_sim = matches!(backend, Backend::Sim(_));
        let r = exec_dynamic::run(self, x, backend)?;
        Ok(Execution {
            output: r.output,
            counters: on_sim.then_some(r.counters),
            dense_tiles: None,
            stages: r.stages,
            indices: r.indices,
        })
    }

    fn reference<T: Element>(
        &self,
        x: &DynInputs<T>,
        precision: Precision,
    ) -> Result<AttnOutput, ExecError> {
        validate_dynamic(self).map_err(ExecError::Spec)?;
        exec_dynamic::reference_output(self, x, precision)
    }
}

/// Verdict of [`check`].
#[derive(Clone, Debug)]
pub struct Report {
    /// The variant's name ([`Pipeline::name`]).
    pub name: String,
    /// The oracle's report (max errors, where, ratio to the naive error).
    pub close: CloseReport,
    /// The run that passed.
    pub run: Execution,
}

/// Run `p` on `backend` and return what it wrote.
pub fn run<P: Pipeline, T: Element + SimElem>(
    p: &P,
    x: &P::Inputs<T>,
    backend: &Backend,
) -> Result<Execution, ExecError> {
    p.execute(x, backend)
}

/// The f64 reference (or the same-precision naive result) of `p` on `x`.
pub fn reference<P: Pipeline, T: Element>(
    p: &P,
    x: &P::Inputs<T>,
    precision: Precision,
) -> Result<AttnOutput, ExecError> {
    p.reference(x, precision)
}

/// Run `p` on `backend` and compare it with the f64 reference by the relative oracle of
/// variants.md section 0 (default tolerance of the dtype; the naive same-precision result
/// is the error scale).
pub fn check<P: Pipeline, T: Element + SimElem>(
    p: &P,
    x: &P::Inputs<T>,
    backend: &Backend,
) -> Result<Report, ExecError> {
    // The reference first: it validates the spec and the inputs (typed errors before any
    // kernel runs), and a host twin of a user function that fails there must be seen before
    // the kernel's own failure.
    let want = p.reference(x, Precision::F64)?;
    let naive = p.reference(x, Precision::Naive)?;
    let run = p.execute(x, backend)?;
    compare(&p.name(), p.dtype(), run, &want, &naive)
}

/// The oracle's verdict on `run` against the f64 reference `want` (`naive`: the error
/// scale), with the tolerance of `dtype`.
pub fn compare(
    name: &str,
    dtype: DType,
    run: Execution,
    want: &AttnOutput,
    naive: &AttnOutput,
) -> Result<Report, ExecError> {
    let tol = reference::Tolerance::for_dtype(exec::reference_dtype(dtype));
    let close =
        reference::assert_close(&run.output, want, naive, tol.rtol, tol.atol).map_err(|e| {
            ExecError::Mismatch {
                kernel: name.to_string(),
                detail: e.to_string(),
            }
        })?;
    Ok(Report {
        name: name.to_string(),
        close,
        run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnforge_codegen::dynamic::LandmarkMode;
    use attnforge_codegen::spec::{HeadDim, Mask, ScoreMod};
    use attnforge_codegen::tile::{default_tile, Arch};
    use attnforge_reference::{Shape4, Tensor4};

    fn t(seq: usize, dim: usize) -> Tensor4<f32> {
        Tensor4::from_fn(Shape4::new(1, 1, seq, dim), |_, _, s, d| {
            ((s * 7 + d * 3) % 5) as f32 * 0.25 - 0.5
        })
    }

    #[test]
    fn an_invalid_pipeline_is_a_spec_error_before_any_input_is_read() {
        let spec = DynamicSpec::Landmark {
            dtype: DType::F32,
            head_dim: HeadDim::D64,
            mem_freq: 0,
            mode: LandmarkMode::Retrieval { top_k: 0 },
        };
        // Inputs of the wrong head dimension: the spec's error must win.
        let x = DynInputs::new(t(4, 8), t(4, 8), t(4, 8));
        for r in [
            check(&spec, &x, &Backend::sim()).map(|_| ()),
            reference(&spec, &x, Precision::F64).map(|_| ()),
        ] {
            match r {
                Err(ExecError::Spec(errs)) => {
                    assert_eq!(errs[0].path, "landmark.mem_freq", "{errs:?}")
                }
                other => panic!("expected a spec error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_static_kernel_checks_through_the_shared_entry_point() {
        let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
        let tile = default_tile(&spec, Arch::Sm80).unwrap();
        let params = RunParams::default();
        let k = StaticKernel {
            spec: &spec,
            tile: &tile,
            params: &params,
        };
        let x = Inputs::new(t(9, 64), t(9, 64), t(9, 64));
        let r = check(&k, &x, &Backend::Reference).unwrap();
        assert_eq!(
            r.name,
            attnforge_codegen::name::canonical_name_with_tile(&spec, &tile)
        );
        assert_eq!(r.close.out.max_err, 0.0, "the reference against itself");
        assert!(r.run.counters.is_none() && r.run.stages.is_empty());
        let bad = Inputs::new(t(9, 64), t(9, 64), t(8, 64));
        assert!(matches!(
            check(&k, &bad, &Backend::Reference),
            Err(ExecError::Input { .. })
        ));
    }
}
