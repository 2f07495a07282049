//! Running a loaded static spec file in a serving layout (varlen, paged, decode): the one
//! path the CLI's `run` and the Python package share.

use attnforge_autotune::decode::{model_splits, DecodeLaunch};
use attnforge_reference::{Element, Precision, VarlenOutput};
use attnforge_runtime::codegen::tile::{Arch, TileConfig};
use attnforge_runtime::exec::{ExecError, RunParams};
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
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

/// The key splits of a decode launch and where they come from (printed by `run` and
/// `check`).
#[derive(Clone, Debug, PartialEq)]
pub struct SplitChoice {
    /// The count to launch with; `None`: the runtime's rule (`decode_splits`, or unsplit when
    /// a sequence has more queries than keys).
    pub splits: Option<usize>,
    /// One sentence: the count and its source.
    pub why: String,
}

/// `(Sq_b, Sk_b)` of every sequence of `x`, and its kv heads.
fn serving_lens<T>(x: &ServingInputs<T>) -> (Vec<(i32, i32)>, usize) {
    let (sk, heads_kv): (Vec<i32>, usize) = match &x.keys {
        ServingKeys::Paged {
            seqlens_k, k_cache, ..
        } => (seqlens_k.clone(), k_cache.heads),
        ServingKeys::Varlen {
            cu_seqlens_k, k, ..
        } => (
            cu_seqlens_k.windows(2).map(|w| w[1] - w[0]).collect(),
            k.heads,
        ),
    };
    let sq = x.cu_seqlens_q.windows(2).map(|w| w[1] - w[0]);
    (sq.zip(sk).collect(), heads_kv)
}

/// The key splits of a decode run of `spec` at `tile` on `x`: `given` when set; else the
/// tuner's decode model at this launch ([`model_splits`]: the count `tune --layout decode`
/// predicts, sm_90 with 132 SMs); else the runtime's rule (`None`: unsplit when a sequence
/// has `Sq_b > Sk_b`, `decode_splits` when the model has no prediction, e.g. without the
/// NVRTC toolchain). Other layouts: `given`.
pub fn decode_split_choice<T>(
    spec: &attnforge_runtime::codegen::spec::KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    given: Option<usize>,
) -> SplitChoice {
    let choice = |splits, why: String| SplitChoice { splits, why };
    if let Some(k) = given {
        return choice(given, format!("{k} key splits (given)"));
    }
    if !spec.layout.is_decode() {
        return choice(None, "no key splits (not a decode layout)".into());
    }
    let (lens, heads_kv) = serving_lens(x);
    if lens.iter().any(|(q, k)| q > k) {
        let why = "1 key split (a sequence has more queries than keys: unsplit)";
        return choice(None, why.into());
    }
    let max = |f: fn(&(i32, i32)) -> i32| lens.iter().map(f).max().unwrap_or(0).max(0) as usize;
    let launch = DecodeLaunch {
        batch: lens.len(),
        heads_q: x.q.heads,
        heads_kv,
        max_seq_q: max(|l| l.0),
        max_seq_k: max(|l| l.1),
    };
    if launch.batch == 0 {
        return choice(None, "no key splits (no sequence)".into());
    }
    match model_splits(spec, tile, launch, Arch::Sm90) {
        Ok(p) => {
            let k = p.splits.unwrap_or(1);
            let s = if k == 1 { "" } else { "s" };
            let why = format!(
                "{k} key split{s} (the decode model's choice for {} on sm_90, 132 SMs: {:.1} us predicted)",
                tile.suffix(),
                p.time_us
            );
            choice(Some(k), why)
        }
        Err(e) => choice(
            None,
            format!("key splits from decode_splits' rule (no model prediction: {e})"),
        ),
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
    /// (`None`: [`decode_split_choice`], the decode model's count, as `attnforge run`). The
    /// layout arrays are checked before any launch.
    pub fn run_serving<T: Element + SimElem>(
        &self,
        x: &ServingInputs<T>,
        doc: Option<Vec<i32>>,
        num_splits: Option<usize>,
        backend: ServingBackend,
    ) -> Result<VarlenOutput, ExecError> {
        let tile = self.tile().map_err(input)?;
        let num_splits = match backend {
            ServingBackend::Reference(_) => num_splits,
            _ => decode_split_choice(&self.spec, &tile, x, num_splits).splits,
        };
        let rp = self.serving_params(x, doc, num_splits)?;
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
