//! Running a loaded static spec file in a serving layout (varlen, paged, decode): the one
//! path the CLI's `run` and the Python package share.

use attnforge_reference::{Element, Precision, VarlenOutput};
use attnforge_runtime::exec::{ExecError, RunParams};
use attnforge_runtime::exec_serving::{self, ServingInputs};
use attnforge_sim::{Schedule, SimConfig, SimElem};

use super::{catalog_twins, SpecFile, SpecFileError};

/// Where a serving run computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServingBackend {
    /// The reference at a precision (f64, or the same-precision naive path).
    Reference(Precision),
    /// The generated kernels on the CPU SIMT simulator.
    Sim,
    /// GPU `ordinal`: host arrays copied to the device and back.
    Cuda(usize),
}

fn input(e: SpecFileError) -> ExecError {
    ExecError::Input {
        field: e.field,
        message: e.message,
        fix: e.fix,
    }
}

impl SpecFile {
    /// The runtime parameters of a serving run on `x` (see [`SpecFile::run_serving`]).
    pub fn serving_params<T: Element>(
        &self,
        x: &ServingInputs<T>,
        doc: Option<Vec<i32>>,
        num_splits: Option<usize>,
    ) -> Result<RunParams, ExecError> {
        // the geometry fills in mask defaults per sequence; the file's own key length only
        // sizes parameters that the serving resolution replaces
        let mut rp = self.run_params(x.q.tokens.max(1), doc).map_err(input)?;
        rp.block_lists = None;
        catalog_twins(self, &mut rp);
        rp.num_splits = num_splits;
        Ok(rp)
    }

    /// Run this spec's serving kernel (or the reference) on `x`. `doc` replaces the file's
    /// document ids (packed like the keys); `num_splits` fixes a decode kernel's key splits
    /// (`None`: the runtime's rule). The layout arrays are checked before any launch.
    pub fn run_serving<T: Element + SimElem>(
        &self,
        x: &ServingInputs<T>,
        doc: Option<Vec<i32>>,
        num_splits: Option<usize>,
        backend: ServingBackend,
    ) -> Result<VarlenOutput, ExecError> {
        let rp = self.serving_params(x, doc, num_splits)?;
        let tile = self.tile().map_err(input)?;
        match backend {
            ServingBackend::Reference(p) => exec_serving::reference(&self.spec, x, &rp, p),
            ServingBackend::Sim => {
                let cfg = SimConfig::new(Schedule::Forward);
                exec_serving::simulate(&self.spec, &tile, x, &rp, &cfg).map(|r| r.output)
            }
            ServingBackend::Cuda(ordinal) => {
                exec_serving::run_cuda(&self.spec, &tile, x, &rp, 0, ordinal).map(|r| r.0)
            }
        }
    }
}
