//! Running one kernel spec on a backend: the f64 reference, the CPU simulator or a GPU.
//!
//! This is the one place that turns a [`KernelSpec`], a [`TileConfig`], q/k/v tensors and
//! the runtime parameters ([`RunParams`]) into (a) the kernel's flat argument list, in the
//! order [`kernel_args`](attnforge_codegen::args::kernel_args) declares it, and (b) the matching call of `attnforge-reference`.
//! The CLI, the autotuner's correctness gate and the property tests all go through it.
//!
//! ```no_run
//! use attnforge_runtime::exec::{check, Backend, Inputs, RunParams};
//! use attnforge_codegen::prelude::*;
//! use attnforge_reference::{Shape4, Tensor4};
//! let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
//! let tile = default_tile(&spec, Arch::Sm80).unwrap();
//! let t = |s| Tensor4::<f32>::from_fn(Shape4::new(1, 2, s, 64), |_, h, i, d| ((h + i * d) % 7) as f32 / 7.0);
//! let inputs = Inputs::new(t(37), t(37), t(37));
//! let report = check(&spec, &tile, &inputs, &RunParams::default(), &Backend::sim()).unwrap();
//! println!("max error {:e}", report.close.out.max_err);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use attnforge_codegen::args::{
    typed_kernel_args, ArgKind as CgArgKind, ArgRole, BlockListPart, LaunchGeometry, Scalar,
    SizeArg, StatsArg, StrideDim, TensorArg, TypedArg, UserFnSide,
};
use attnforge_codegen::blocks::{build_block_lists, validate_block_lists, BlockLists};
use attnforge_codegen::check::{validate_problem, validate_spec, MaskParams, Problem, SpecError};
use attnforge_codegen::emit::emit;
use attnforge_codegen::masks::{DocRule, ParamType};
use attnforge_codegen::scores::ScoreParamKind;
use attnforge_codegen::shape::Shape;
use attnforge_codegen::spec::{DType, KernelSpec, Mask, ScoreMod, UserParamKind};
use attnforge_codegen::tile::{Arch, TileConfig};
use attnforge_reference as reference;
use attnforge_reference::{
    AttnOptions, AttnOutput, CloseReport, Element, Precision, RefError, Shape4, Tensor4,
};
use attnforge_sim::{Schedule, SimArg, SimConfig, SimCounters, SimElem, SimError, SimKernel};

pub use crate::exec_cuda::CudaPrepared;

/// A Rust twin of a user mask predicate: `(b, h, q_pos, kv_pos) -> allowed`.
pub type HostMaskFn = Arc<dyn Fn(usize, usize, i64, i64) -> bool + Send + Sync>;
/// A Rust twin of a user score function: `(score, b, h, q_pos, kv_pos) -> score'`.
pub type HostScoreFn = Arc<dyn Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync>;

/// Value of a user-function parameter (scalars and read-only arrays).
#[derive(Clone, Debug, PartialEq)]
pub enum UserValue {
    /// `int`, `unsigned` or `bool` scalar (passed as `int`).
    Int(i32),
    /// `float` scalar.
    Float(f32),
    /// `const int*` / `const unsigned*` array.
    Ints(Vec<i32>),
    /// `const float*` array.
    Floats(Vec<f32>),
}

/// Runtime parameters of one run: everything that is a kernel argument besides q, k, v,
/// the outputs, the sizes and the strides.
#[derive(Clone, Default)]
pub struct RunParams {
    /// Scalar mask parameters (must match the spec's mask; `MaskParams::None` otherwise).
    pub mask: Option<MaskParams>,
    /// Softcap value for `ScoreMod::Softcap`.
    pub softcap: Option<f32>,
    /// Softmax scale (default: the spec's, else `1/sqrt(D)`).
    pub scale: Option<f32>,
    /// Per-token document ids for the document masks: `Sk` ids (shared by every batch) or
    /// `B * Sk` (batch-major).
    pub doc: Option<Vec<i32>>,
    /// ALiBi slopes `[Hq]` (default: the standard slopes of variants.md section 3).
    pub alibi_slopes: Option<Vec<f32>>,
    /// Block lists of list-driven masks (default: built from the mask on the host).
    pub block_lists: Option<BlockLists>,
    /// User-function parameter values by parameter name (mask and score share the map).
    pub user: BTreeMap<String, UserValue>,
    /// Rust twin of the spec's user mask predicate (needed by the reference and the
    /// host-side block-list builder).
    pub host_mask: Option<HostMaskFn>,
    /// Rust twin of the spec's user score function (needed by the reference).
    pub host_score: Option<HostScoreFn>,
    /// The user score function with its derivatives, for the reference backward
    /// (`#[attnforge::score(backward)]`'s `host_score_diff(&params)`); its learnable vector
    /// must hold the same values as `user`.
    pub host_score_diff: Option<reference::DiffScoreFn>,
    /// Key splits per sequence of a decode kernel (`Layout::Decode`; default:
    /// `attnforge_codegen::serving::decode_splits` for the default device).
    pub num_splits: Option<usize>,
}

impl std::fmt::Debug for RunParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunParams")
            .field("mask", &self.mask)
            .field("softcap", &self.softcap)
            .field("scale", &self.scale)
            .field("doc", &self.doc.as_ref().map(Vec::len))
            .field("alibi_slopes", &self.alibi_slopes)
            .field("block_lists", &self.block_lists.is_some())
            .field("user", &self.user)
            .field("host_mask", &self.host_mask.is_some())
            .field("host_score", &self.host_score.is_some())
            .field("host_score_diff", &self.host_score_diff.is_some())
            .field("num_splits", &self.num_splits)
            .finish()
    }
}

impl RunParams {
    /// Builder: scalar mask parameters.
    pub fn with_mask(mut self, m: MaskParams) -> Self {
        self.mask = Some(m);
        self
    }
    /// Builder: softcap.
    pub fn with_softcap(mut self, c: f32) -> Self {
        self.softcap = Some(c);
        self
    }
    /// Builder: document ids.
    pub fn with_doc(mut self, doc: Vec<i32>) -> Self {
        self.doc = Some(doc);
        self
    }
    /// Builder: the key splits of a decode kernel.
    pub fn with_num_splits(mut self, n: usize) -> Self {
        self.num_splits = Some(n);
        self
    }
    /// Builder: a user parameter value.
    pub fn with_user(mut self, name: &str, v: UserValue) -> Self {
        self.user.insert(name.to_string(), v);
        self
    }
    /// Builder: the Rust twin of the user mask.
    pub fn with_host_mask(
        mut self,
        f: impl Fn(usize, usize, i64, i64) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.host_mask = Some(Arc::new(f));
        self
    }
    /// Builder: the Rust twin of the user score function.
    pub fn with_host_score(
        mut self,
        f: impl Fn(f64, usize, usize, i64, i64) -> f64 + Send + Sync + 'static,
    ) -> Self {
        self.host_score = Some(Arc::new(f));
        self
    }
}

/// q, k, v of one run (`[B, Hq, Sq, D]`, `[B, Hkv, Sk, D]`, `[B, Hkv, Sk, D]`; the head
/// dimension must be contiguous, the other strides are free).
#[derive(Clone, Debug)]
pub struct Inputs<T> {
    /// Queries.
    pub q: Tensor4<T>,
    /// Keys.
    pub k: Tensor4<T>,
    /// Values.
    pub v: Tensor4<T>,
}

impl<T> Inputs<T> {
    /// Bundle q, k, v.
    pub fn new(q: Tensor4<T>, k: Tensor4<T>, v: Tensor4<T>) -> Self {
        Inputs { q, k, v }
    }
}

/// Where a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The f64 reference (no kernel).
    Reference,
    /// The CPU SIMT simulator running the exact generated CUDA.
    Sim(SimConfig),
    /// A real GPU through cudarc (device ordinal).
    Cuda(usize),
}

impl Backend {
    /// The simulator with the forward schedule.
    pub fn sim() -> Self {
        Backend::Sim(SimConfig::new(Schedule::Forward))
    }
}

/// Everything that can go wrong when running a kernel.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The spec or the problem is invalid (every error, with field paths).
    #[error("invalid kernel spec or problem:\n{}", format_spec_errors(.0))]
    Spec(Vec<SpecError>),
    /// A runtime input is missing or malformed.
    #[error("input `{field}`: {message}; fix: {fix}")]
    Input {
        /// The input field.
        field: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
    /// The reference rejected the problem.
    #[error("reference: {0}")]
    Reference(#[from] RefError),
    /// The simulator failed to build or run the kernel.
    #[error("simulator: {0}")]
    Sim(#[from] SimError),
    /// The GPU backend failed.
    #[error("cuda: {0}")]
    Cuda(String),
    /// Kernel and reference disagree beyond the oracle's tolerance.
    #[error("kernel `{kernel}` disagrees with the reference: {detail}")]
    Mismatch {
        /// Kernel name (with tile config).
        kernel: String,
        /// The oracle's report.
        detail: String,
    },
}

fn format_spec_errors(errs: &[SpecError]) -> String {
    errs.iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn input_err(
    field: &str,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> ExecError {
    ExecError::Input {
        field: field.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// The problem shape read off the inputs (the head dimension is the spec's).
fn dims_of<T: Element>(spec: &KernelSpec, x: &Inputs<T>) -> Result<Shape, ExecError> {
    if T::DTYPE != reference_dtype(spec.dtype) {
        return Err(input_err(
            "q",
            format!(
                "element type {} does not match the spec's dtype {}",
                T::DTYPE.name(),
                spec.dtype.short()
            ),
            "pass tensors of the spec's dtype",
        ));
    }
    for (name, t) in [("q", &x.q), ("k", &x.k), ("v", &x.v)] {
        if t.strides[3] != 1 {
            return Err(input_err(
                name,
                format!("head-dimension stride {} (must be 1)", t.strides[3]),
                "make the last dimension contiguous",
            ));
        }
        if t.data.iter().any(|e| !e.to_f64().is_finite()) {
            return Err(input_err(
                name,
                "contains NaN or Inf",
                "clean the input; attention of non-finite values is undefined",
            ));
        }
    }
    shape_of(spec, x.q.shape, x.k.shape, x.v.shape)
}

/// The problem shape of q, k, v of these shapes: head dimensions are the spec's, batches
/// agree, k and v agree (shared by host inputs and caller-owned device tensors).
pub(crate) fn shape_of(
    spec: &KernelSpec,
    q: Shape4,
    k: Shape4,
    v: Shape4,
) -> Result<Shape, ExecError> {
    let d = spec.head_dim.get();
    for (name, s) in [("q", q), ("k", k), ("v", v)] {
        if s.dim != d {
            return Err(input_err(
                name,
                format!(
                    "head dimension {} but the kernel is compiled for {d}",
                    s.dim
                ),
                "pass tensors with the spec's head_dim or choose another spec",
            ));
        }
    }
    for (name, s) in [("k", k), ("v", v)] {
        if s.batch != q.batch {
            return Err(input_err(
                name,
                format!(
                    "{name} has batch size {} but q has batch size {}",
                    s.batch, q.batch
                ),
                "pass q, k and v with the same batch size (dimension 0)",
            ));
        }
    }
    if k.heads != v.heads || k.seq != v.seq {
        return Err(input_err(
            "v",
            format!(
                "v is [{}, {}, {}, ..] but k is [{}, {}, {}, ..]",
                v.batch, v.heads, v.seq, k.batch, k.heads, k.seq
            ),
            "pass k and v with the same heads and length",
        ));
    }
    Ok(Shape {
        batch: q.batch,
        heads_q: q.heads,
        heads_kv: k.heads,
        seq_q: q.seq,
        seq_k: k.seq,
    })
}

/// The reference's element type of a spec dtype (the one mapping between the two crates).
pub fn reference_dtype(d: DType) -> reference::DType {
    match d {
        DType::F16 => reference::DType::F16,
        DType::Bf16 => reference::DType::Bf16,
        DType::F32 => reference::DType::F32,
    }
}

fn problem(spec: &KernelSpec, d: &Shape, p: &RunParams) -> Problem {
    Problem {
        batch: d.batch,
        heads_q: d.heads_q,
        heads_kv: d.heads_kv,
        seq_q: d.seq_q,
        seq_k: d.seq_k,
        mask: p.mask.clone().unwrap_or(MaskParams::None),
        softcap: spec.score.param_of(ScoreParamKind::Scalar).and(p.softcap),
    }
}

/// The fully resolved runtime values of one run (defaults filled in, lists built).
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) dims: Shape,
    pub(crate) scale: f32,
    pub(crate) mask: MaskParams,
    pub(crate) doc: Vec<i32>,
    pub(crate) doc_batch_stride: i64,
    pub(crate) alibi: Vec<f32>,
    pub(crate) lists: Option<BlockLists>,
}

/// The mask's parameter values by name as the kernel receives them (float parameters
/// rounded to f32), for the reference.
pub(crate) fn named_values(spec: &KernelSpec, m: &MaskParams) -> Vec<(&'static str, f64)> {
    spec.mask.def().map_or_else(Vec::new, |d| {
        d.params
            .iter()
            .filter_map(|p| {
                let v = m.get(p.name)?;
                Some((
                    p.name,
                    match p.ty {
                        ParamType::Int => v,
                        ParamType::Float => f64::from(v as f32),
                    },
                ))
            })
            .collect()
    })
}

/// The element mask of the spec as an `attnforge-reference` mask (the oracle's own
/// definitions; only user predicates come from [`RunParams::host_mask`]).
pub(crate) fn reference_mask(
    spec: &KernelSpec,
    r: &Resolved,
    p: &RunParams,
) -> Result<reference::Mask, ExecError> {
    use reference::Mask as R;
    let host = || {
        p.host_mask.clone().ok_or_else(|| {
            input_err(
                "host_mask",
                "the spec has a user mask predicate but no Rust twin was given",
                "pass RunParams::with_host_mask (the #[attnforge::mask] function's `eval`)",
            )
        })
    };
    Ok(match &spec.mask {
        Mask::Builtin(m) => R::builtin(m.tag(), &named_values(spec, &r.mask), &r.doc)?,
        Mask::Predicate(_) | Mask::BlockSparse { mask: Some(_) } => {
            let f = host()?;
            R::Predicate(Arc::new(move |b, h, i, j| f(b, h, i, j)))
        }
        Mask::BlockSparse { mask: None } => R::Full,
    })
}

pub(crate) fn reference_score(
    spec: &KernelSpec,
    r: &Resolved,
    p: &RunParams,
) -> Result<reference::ScoreMod, ExecError> {
    use reference::ScoreMod as R;
    Ok(match &spec.score {
        ScoreMod::None => R::None,
        ScoreMod::Softcap => R::Softcap(f64::from(p.softcap.unwrap_or(0.0))),
        ScoreMod::Alibi => R::Alibi(r.alibi.iter().map(|&s| f64::from(s)).collect()),
        ScoreMod::User(_) => {
            let f = p.host_score.clone().ok_or_else(|| {
                input_err(
                    "host_score",
                    "the spec has a user score function but no Rust twin was given",
                    "pass RunParams::with_host_score (the #[attnforge::score] function's `eval`)",
                )
            })?;
            R::Function(Arc::new(move |s, b, h, i, j| f(s, b, h, i, j)))
        }
    })
}

pub(crate) fn resolve<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    p: &RunParams,
) -> Result<Resolved, ExecError> {
    resolve_shape(spec, dims_of(spec, x)?, p)
}

/// [`resolve`] for a problem of shape `dims` (the inputs already checked).
pub(crate) fn resolve_shape(
    spec: &KernelSpec,
    dims: Shape,
    p: &RunParams,
) -> Result<Resolved, ExecError> {
    validate_spec(spec).map_err(ExecError::Spec)?;
    validate_problem(spec, &problem(spec, &dims, p)).map_err(ExecError::Spec)?;
    let scale = p.scale.unwrap_or_else(|| spec.effective_scale());
    if !(scale.is_finite() && scale > 0.0) {
        return Err(input_err(
            "scale",
            format!("scale = {scale}"),
            "pass a finite positive scale",
        ));
    }
    let (doc, doc_batch_stride) = resolve_doc(spec, &dims, p)?;
    let alibi = resolve_alibi(spec, &dims, p)?;
    let mut r = Resolved {
        dims,
        scale,
        mask: p.mask.clone().unwrap_or(MaskParams::None),
        doc,
        doc_batch_stride,
        alibi,
        lists: None,
    };
    if spec.mask.uses_block_lists() {
        r.lists = Some(resolve_block_lists(spec, &r, p)?);
    }
    Ok(r)
}

/// The document ids of the doc-reading masks and their batch stride (0: one row of `Sk`
/// ids shared by every batch), checked against `Sk` and the mask's document rule.
fn resolve_doc(
    spec: &KernelSpec,
    dims: &Shape,
    p: &RunParams,
) -> Result<(Vec<i32>, i64), ExecError> {
    let (doc, doc_batch_stride) = match (&p.doc, spec.mask.reads_doc()) {
        (None, true) => {
            return Err(input_err(
                "doc",
                format!(
                    "the `{}` mask needs per-token document ids",
                    spec.mask.tag()
                ),
                "pass RunParams::with_doc(ids) with Sk or B*Sk ids",
            ))
        }
        (Some(d), true) if d.len() == dims.seq_k => (d.clone(), 0),
        (Some(d), true) if d.len() == dims.batch * dims.seq_k => (d.clone(), dims.seq_k as i64),
        (Some(d), true) => {
            return Err(input_err(
                "doc",
                format!(
                    "{} ids, expected Sk = {} or B*Sk = {}",
                    d.len(),
                    dims.seq_k,
                    dims.batch * dims.seq_k
                ),
                "pass one id per key position, shared or per batch",
            ))
        }
        (_, false) => (Vec::new(), 0),
    };
    if spec
        .mask
        .def()
        .is_some_and(|d| d.doc_rule == DocRule::QuestionPrefix)
    {
        for b in 0..if doc_batch_stride == 0 { 1 } else { dims.batch } {
            let row = &doc[b * doc_batch_stride as usize..][..dims.seq_k];
            let q_end = row.iter().position(|&x| x != 0).unwrap_or(row.len());
            if row[q_end..].contains(&0) {
                return Err(input_err(
                    "doc",
                    format!("batch {b}: doc id 0 (the question) is not a prefix"),
                    "put every question token (id 0) before the answers",
                ));
            }
        }
    }
    Ok((doc, doc_batch_stride))
}

/// The per-head slopes of a per-head score modification (the standard ALiBi slopes when
/// none are given); empty for the other scores.
fn resolve_alibi(spec: &KernelSpec, dims: &Shape, p: &RunParams) -> Result<Vec<f32>, ExecError> {
    let per_head = spec.score.param_of(ScoreParamKind::PerHead);
    Ok(match (per_head, &p.alibi_slopes) {
        (Some(_), Some(s)) if s.len() == dims.heads_q => s.clone(),
        (Some(sp), Some(s)) => {
            return Err(input_err(
                sp.name,
                format!("{} slopes for {} query heads", s.len(), dims.heads_q),
                sp.fix,
            ))
        }
        // The standard slopes (variants.md section 3), the only per-head default.
        (Some(_), None) => reference::alibi_slopes(dims.heads_q)
            .into_iter()
            .map(|s| s as f32)
            .collect(),
        (None, _) => Vec::new(),
    })
}

/// The block lists of a block-list mask: the given ones, else built from the reference
/// mask (block-sparse kernels need them given), validated against the problem.
fn resolve_block_lists(
    spec: &KernelSpec,
    r: &Resolved,
    p: &RunParams,
) -> Result<BlockLists, ExecError> {
    let dims = r.dims;
    let lists = match &p.block_lists {
        Some(l) => l.clone(),
        None => {
            if matches!(spec.mask, Mask::BlockSparse { .. }) {
                return Err(input_err(
                    "block_lists",
                    "a block-sparse kernel needs explicit block lists",
                    "pass RunParams::block_lists (e.g. from attnforge_codegen::blocks::build_block_lists)",
                ));
            }
            let m = reference_mask(spec, r, p)?;
            let sk = dims.seq_k;
            build_block_lists(
                dims.batch,
                if matches!(spec.mask, Mask::Predicate(_)) {
                    dims.heads_q
                } else {
                    1
                },
                dims.seq_q,
                dims.seq_k,
                spec.sparse_block,
                |b, h, i, j| m.allowed(b, h, i, j, sk),
            )
        }
    };
    validate_block_lists(
        &lists,
        dims.batch,
        dims.heads_q,
        dims.seq_q,
        dims.seq_k,
        spec.sparse_block,
    )
    .map_err(ExecError::Spec)?;
    Ok(lists)
}

/// The f64 reference (or the same-precision naive path) for the spec and inputs.
pub fn reference<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    p: &RunParams,
    precision: Precision,
) -> Result<AttnOutput, ExecError> {
    let r = resolve(spec, x, p)?;
    reference_resolved(spec, x, p, &r, precision)
}

fn reference_resolved<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    p: &RunParams,
    r: &Resolved,
    precision: Precision,
) -> Result<AttnOutput, ExecError> {
    let opts = AttnOptions {
        scale: Some(f64::from(r.scale)),
        precision,
    };
    let mask = reference_mask(spec, r, p)?;
    let score = reference_score(spec, r, p)?;
    // LM-Infinite takes no score modification (refused by validate_spec in resolve).
    Ok(if spec.mask.lm_infinite_scoring() {
        reference::lm_infinite_attention(
            &x.q,
            &x.k,
            &x.v,
            &reference::LmInfiniteParams::from_values(&named_values(spec, &r.mask)),
            &opts,
        )?
    } else if spec.mask.uses_block_lists() {
        let l = r.lists.as_ref().expect("resolved lists");
        let rl = reference_lists(spec, l, r.dims)?;
        reference::block_sparse_attention(&x.q, &x.k, &x.v, &rl, &mask, &score, &opts)?
    } else {
        reference::attention(&x.q, &x.k, &x.v, &mask, &score, &opts)?
    })
}

/// The codegen block lists in the reference's representation (an independent copy of the
/// FlexAttention BlockMask semantics).
pub(crate) fn reference_lists(
    spec: &KernelSpec,
    l: &BlockLists,
    _d: Shape,
) -> Result<reference::BlockLists, ExecError> {
    Ok(reference::BlockLists::from_flex_arrays(
        (l.batches, l.heads, l.rows),
        (spec.sparse_block.q, spec.sparse_block.k),
        (&l.partial_num, &l.partial_idx),
        (&l.full_num, &l.full_idx),
    )?)
}

/// Output of a simulator run: the kernel's result plus the work counters.
#[derive(Clone, Debug)]
pub struct SimRun {
    /// `out` and `lse` as written by the kernel.
    pub output: AttnOutput,
    /// Work counters (visited tiles, mask evaluations).
    pub counters: SimCounters,
    /// Key tiles (of `block_n` columns) per query tile that a dense kernel would visit,
    /// summed over every block: the denominator of sparsity claims.
    pub dense_tiles: u64,
}

/// The process's one simulator kernel cache (static kernels and dynamic stages alike),
/// keyed by name and source.
fn sim_cache() -> &'static Mutex<HashMap<String, Arc<SimKernel>>> {
    static C: OnceLock<Mutex<HashMap<String, Arc<SimKernel>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Build (or fetch from the process cache) the simulator kernel `name` of `source`.
pub(crate) fn cached_sim_kernel(name: &str, source: &str) -> Result<Arc<SimKernel>, ExecError> {
    let key = format!("{name}\n{source}");
    if let Some(s) = sim_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(s.clone());
    }
    let built = Arc::new(SimKernel::build(source, name)?);
    sim_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, built.clone());
    Ok(built)
}

/// Emit and build (or fetch from the process cache) the simulator kernel for spec + tile.
///
/// The emitted source does not depend on the architecture (it only sets the limits the tile
/// is validated against), so the simulator takes the most generous target, sm_90: a tile
/// valid on any target runs here. With sm_80 the tuner's gate rejected sm_90 candidates
/// over sm_80's 163 KiB of shared memory (seen on an H200, docs/gpu-results/2026-12-04-*).
pub fn sim_kernel(spec: &KernelSpec, tile: &TileConfig) -> Result<Arc<SimKernel>, ExecError> {
    let k = emit(spec, tile, Arch::Sm90).map_err(ExecError::Spec)?;
    cached_sim_kernel(&k.name, &k.source)
}

/// A host-side argument value, in kernel order. Buffers are referred to by index into the
/// run's buffer table so that both the simulator and the GPU backend can bind them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum HostArg {
    Q,
    K,
    V,
    O,
    Lse,
    /// The forward kernel's per-query-block key sums of the statistics outputs (a buffer
    /// that exec_stats binds; null elsewhere).
    StatsPartial,
    Ints(Vec<i32>),
    Floats(Vec<f32>),
    I32(i32),
    I64(i64),
    F32(f32),
}

fn user_value(p: &RunParams, name: &str, kind: UserParamKind) -> Result<HostArg, ExecError> {
    let v = p.user.get(name).ok_or_else(|| {
        input_err(
            &format!("user.{name}"),
            "missing value of a user-function parameter",
            format!("pass RunParams::with_user(\"{name}\", ..)"),
        )
    })?;
    let bad = || {
        input_err(
            &format!("user.{name}"),
            format!("value {v:?} does not match the declared kind {kind:?}"),
            "pass a value of the declared kind",
        )
    };
    Ok(match (kind, v) {
        (UserParamKind::I32 | UserParamKind::U32 | UserParamKind::Bool, UserValue::Int(i)) => {
            HostArg::I32(*i)
        }
        (UserParamKind::F32, UserValue::Float(f)) => HostArg::F32(*f),
        (UserParamKind::ArrayI32 | UserParamKind::ArrayU32, UserValue::Ints(a)) => {
            HostArg::Ints(a.clone())
        }
        (UserParamKind::ArrayF32, UserValue::Floats(a)) => HostArg::Floats(a.clone()),
        _ => return Err(bad()),
    })
}

/// The kernel's arguments in declaration order, with values resolved from the inputs: an
/// exhaustive match on each argument's [`ArgRole`] (never on its name).
pub(crate) fn host_args<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    p: &RunParams,
    r: &Resolved,
) -> Result<Vec<HostArg>, ExecError> {
    let d = r.dims;
    // o is written contiguous [B, Hq, Sq, D].
    let o = Shape4::new(d.batch, d.heads_q, d.seq_q, spec.head_dim.get()).contiguous_strides();
    let strides = ArgStrides {
        q: x.q.strides,
        k: x.k.strides,
        v: x.v.strides,
        o,
    };
    role_args(spec, &strides, p, r)
}

/// Element strides `(batch, head, seq, dim)` of the four tensors of a forward launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArgStrides {
    pub(crate) q: [usize; 4],
    pub(crate) k: [usize; 4],
    pub(crate) v: [usize; 4],
    pub(crate) o: [usize; 4],
}

/// The kernel's arguments in declaration order for tensors of these strides: the one
/// mapping from [`ArgRole`] to value, shared by host inputs ([`host_args`]) and caller-owned
/// device tensors ([`crate::exec_device`]).
pub(crate) fn role_args(
    spec: &KernelSpec,
    strides: &ArgStrides,
    p: &RunParams,
    r: &Resolved,
) -> Result<Vec<HostArg>, ExecError> {
    let d = r.dims;
    let lists = r.lists.as_ref();
    let mut out = Vec::new();
    for TypedArg { arg: a, role } in typed_kernel_args(spec) {
        let v = match role {
            ArgRole::Tensor(t) => match t {
                TensorArg::Q => HostArg::Q,
                TensorArg::K => HostArg::K,
                TensorArg::V => HostArg::V,
                TensorArg::O => HostArg::O,
                TensorArg::Lse => HostArg::Lse,
            },
            ArgRole::Size(s) => HostArg::I32(match s {
                SizeArg::Batch => d.batch,
                SizeArg::HeadsQ => d.heads_q,
                SizeArg::HeadsKv => d.heads_kv,
                SizeArg::SeqQ => d.seq_q,
                SizeArg::SeqK => d.seq_k,
            } as i32),
            ArgRole::Stride { tensor, dim } => {
                let strides = match tensor {
                    TensorArg::Q => strides.q,
                    TensorArg::K => strides.k,
                    TensorArg::V => strides.v,
                    TensorArg::O | TensorArg::Lse => strides.o,
                };
                HostArg::I64(match dim {
                    StrideDim::Batch => strides[0],
                    StrideDim::Head => strides[1],
                    StrideDim::Seq => strides[2],
                } as i64)
            }
            ArgRole::Scale => HostArg::F32(r.scale),
            ArgRole::DocIds => HostArg::Ints(r.doc.clone()),
            ArgRole::DocBatchStride => HostArg::I64(r.doc_batch_stride),
            ArgRole::MaskParam { mask, index } => {
                let def = &mask.def().params[index];
                let v = r
                    .mask
                    .get(def.name)
                    .unwrap_or_else(|| def.default.at(d.seq_k));
                match def.ty {
                    ParamType::Int => HostArg::I32(v as i32),
                    ParamType::Float => HostArg::F32(v as f32),
                }
            }
            ArgRole::BlockList(part) => block_list_arg(part, lists),
            ArgRole::ScoreParam => score_param_arg(spec, p, r, &a.name)?,
            ArgRole::UserParam { side, index } => user_param_arg(spec, p, side, index, &a.name)?,
            ArgRole::Stats(StatsArg::Partial) => HostArg::StatsPartial,
            ArgRole::Stats(_) => {
                return Err(input_err(
                    &a.name,
                    "an argument of the statistics follow-up kernel in a forward kernel's list",
                    "report this: the argument table and the kernel disagree",
                ))
            }
            ArgRole::Serving(_) => {
                return Err(input_err(
                    &a.name,
                    format!(
                        "the kernel has layout `{}`: it reads packed or paged inputs",
                        spec.layout.tag()
                    ),
                    "run it through attnforge_runtime::exec_serving (ServingInputs), or use a dense spec",
                ))
            }
        };
        check_arg_kind(&a, &v)?;
        out.push(v);
    }
    Ok(out)
}

/// The value of one block-list argument (zero-sized when the mask uses no lists).
pub(crate) fn block_list_arg(part: BlockListPart, lists: Option<&BlockLists>) -> HostArg {
    let ints = |f: fn(&BlockLists) -> &Vec<i32>| {
        HostArg::Ints(lists.map(|l| f(l).clone()).unwrap_or_default())
    };
    let int = |f: fn(&BlockLists) -> usize| HostArg::I32(lists.map_or(0, |l| f(l) as i32));
    match part {
        BlockListPart::FullNum => ints(|l| &l.full_num),
        BlockListPart::FullIdx => ints(|l| &l.full_idx),
        BlockListPart::PartialNum => ints(|l| &l.partial_num),
        BlockListPart::PartialIdx => ints(|l| &l.partial_idx),
        BlockListPart::Batches => int(|l| l.batches),
        BlockListPart::Heads => int(|l| l.heads),
        BlockListPart::Rows => int(|l| l.rows),
        BlockListPart::Width => int(|l| l.width),
    }
}

/// The score modification's parameter: the scalar (softcap) or the per-head slopes.
fn score_param_arg(
    spec: &KernelSpec,
    p: &RunParams,
    r: &Resolved,
    arg_name: &str,
) -> Result<HostArg, ExecError> {
    match spec.score.def().and_then(|d| d.param).map(|q| q.kind) {
        Some(ScoreParamKind::Scalar) => Ok(HostArg::F32(p.softcap.unwrap_or(0.0))),
        Some(ScoreParamKind::PerHead) => Ok(HostArg::Floats(r.alibi.clone())),
        None => Err(input_err(
            arg_name,
            "a score argument without a score parameter",
            "report this: the argument table and the score table disagree",
        )),
    }
}

/// The value of parameter `index` of the mask's or the score's user function.
pub(crate) fn user_param_arg(
    spec: &KernelSpec,
    p: &RunParams,
    side: UserFnSide,
    index: usize,
    arg_name: &str,
) -> Result<HostArg, ExecError> {
    let f = match (side, &spec.mask, &spec.score) {
        (UserFnSide::Mask, Mask::Predicate(f) | Mask::BlockSparse { mask: Some(f) }, _)
        | (UserFnSide::Score, _, ScoreMod::User(f)) => Some(f),
        _ => None,
    };
    let Some(q) = f.and_then(|f| f.params.get(index)) else {
        return Err(input_err(
            arg_name,
            "a user-parameter argument without its function parameter",
            "report this: the argument table and the spec disagree",
        ));
    };
    user_value(p, &q.name, q.kind)
}

/// Type agreement of a host value with the argument's declared kind (a codegen/exec
/// contract check).
fn check_arg_kind(a: &attnforge_codegen::args::KernelArg, v: &HostArg) -> Result<(), ExecError> {
    let ok = matches!(
        (&a.kind, v),
        (
            CgArgKind::Ptr { .. },
            HostArg::Q
                | HostArg::K
                | HostArg::V
                | HostArg::O
                | HostArg::Lse
                | HostArg::StatsPartial
        ) | (CgArgKind::Ptr { .. }, HostArg::Ints(_) | HostArg::Floats(_))
            | (CgArgKind::Scalar(Scalar::I32), HostArg::I32(_))
            | (CgArgKind::Scalar(Scalar::I64), HostArg::I64(_))
            | (CgArgKind::Scalar(Scalar::F32), HostArg::F32(_))
    );
    if ok {
        Ok(())
    } else {
        Err(input_err(
            &a.name,
            format!("value {v:?} does not match the kernel's {:?}", a.kind),
            "report this: the argument table and the kernel disagree",
        ))
    }
}

/// Run the spec's kernel on the simulator.
pub fn simulate<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<SimRun, ExecError> {
    let r = resolve(spec, x, p)?;
    simulate_resolved(spec, tile, x, p, &r, cfg)
}

fn simulate_resolved<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    r: &Resolved,
    cfg: &SimConfig,
) -> Result<SimRun, ExecError> {
    let d = r.dims;
    let (o, lse, counters) = simulate_raw(spec, tile, x, p, r, cfg)?;
    let shape = Shape4::new(d.batch, d.heads_q, d.seq_q, spec.head_dim.get());
    let dense_tiles =
        (d.batch * d.heads_q * d.seq_q.div_ceil(tile.block_m) * d.seq_k.div_ceil(tile.block_n))
            as u64;
    Ok(SimRun {
        output: AttnOutput::from_kernel(shape, &o, &lse)?,
        counters,
        dense_tiles,
    })
}

/// The forward on the simulator: `o` (contiguous `[B, Hq, Sq, D]`) and `lse` as the kernel
/// wrote them, and the work counters.
pub(crate) fn simulate_raw<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    r: &Resolved,
    cfg: &SimConfig,
) -> Result<(Vec<T>, Vec<f32>, SimCounters), ExecError> {
    if spec.stats.is_some() {
        // the statistics sweep writes a buffer this path does not bind
        return Err(input_err(
            "stats",
            "a kernel with statistics outputs runs with its follow-up kernel",
            "use attnforge_runtime::exec_stats::{simulate_stats, check_stats} (CLI: attnforge check --stats)",
        ));
    }
    let kernel = sim_kernel(spec, tile)?;
    let d = r.dims;
    let args = host_args(spec, x, p, r)?;
    let mut o = vec![T::from_f64(0.0); d.batch * d.heads_q * d.seq_q * spec.head_dim.get()];
    let mut lse = vec![0.0f32; d.batch * d.heads_q * d.seq_q];
    let geo = LaunchGeometry::new(spec, tile, d.batch, d.heads_q, d.seq_q);
    let counters = {
        let o_arg = Some(SimArg::output(&mut o));
        let lse_arg = Some(SimArg::output(&mut lse));
        let mut sim_args = sim_args(&args, x, o_arg, lse_arg);
        kernel.launch(
            (geo.grid[0], geo.grid[1], geo.grid[2]),
            geo.block[0],
            geo.dynamic_smem_bytes as usize,
            &mut sim_args,
            cfg,
        )?
    };
    Ok((o, lse, counters))
}

/// The simulator arguments of a forward argument list; `o` and `lse` bind the given buffers
/// (outputs of the forward, inputs of the backward).
pub(crate) fn sim_args<'a, T: Element + SimElem>(
    args: &'a [HostArg],
    x: &'a Inputs<T>,
    mut o: Option<SimArg<'a>>,
    mut lse: Option<SimArg<'a>>,
) -> Vec<SimArg<'a>> {
    args.iter()
        .map(|a| match a {
            HostArg::Q => SimArg::input(&x.q.data),
            HostArg::K => SimArg::input(&x.k.data),
            HostArg::V => SimArg::input(&x.v.data),
            HostArg::O => o.take().expect("one o argument"),
            HostArg::Lse => lse.take().expect("one lse argument"),
            // exec_stats binds the buffer in place of this null
            HostArg::StatsPartial => SimArg::Null,
            HostArg::Ints(v) if v.is_empty() => SimArg::Null,
            HostArg::Ints(v) => SimArg::input(v.as_slice()),
            HostArg::Floats(v) if v.is_empty() => SimArg::Null,
            HostArg::Floats(v) => SimArg::input(v.as_slice()),
            HostArg::I32(v) => SimArg::I32(*v),
            HostArg::I64(v) => SimArg::I64(*v),
            HostArg::F32(v) => SimArg::F32(*v),
        })
        .collect()
}

/// Run the spec's kernel on GPU `ordinal` and return what it wrote (`out`, `lse`).
///
/// The inputs and runtime parameters are validated exactly as for the simulator, the kernel
/// is compiled with NVRTC for the device's architecture and launched through the checked
/// [`crate::GpuKernel::launch`]. Without a GPU this is `ExecError::Cuda` naming the reason.
pub fn run_cuda<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    ordinal: usize,
) -> Result<AttnOutput, ExecError> {
    let r = resolve(spec, x, p)?;
    let args = host_args(spec, x, p, &r)?;
    crate::exec_cuda::run(spec, tile, x, &args, r.dims, ordinal)
}

/// Compile the spec's kernel for GPU `ordinal`, upload the inputs and return a
/// [`CudaPrepared`] whose `launch` re-runs the kernel without copies (what timing needs).
pub fn prepare_cuda<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    ordinal: usize,
) -> Result<CudaPrepared, ExecError> {
    let r = resolve(spec, x, p)?;
    let args = host_args(spec, x, p, &r)?;
    crate::exec_cuda::prepare(spec, tile, x, &args, r.dims, ordinal)
}

/// Verdict of a kernel-vs-reference check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Kernel name (canonical name with tile config).
    pub kernel: String,
    /// The oracle's report (max errors, where, ratio to the naive error).
    pub close: CloseReport,
    /// Simulator counters when the backend was the simulator.
    pub counters: Option<SimCounters>,
    /// Dense tile count (denominator of sparsity claims), simulator only.
    pub dense_tiles: Option<u64>,
    /// The kernel's output (`out`, `lse`) that passed the oracle.
    pub output: AttnOutput,
}

/// Run the kernel on `backend` and compare it with the f64 reference using the relative
/// oracle of variants.md section 0 (default tolerance of the dtype): the shared
/// [`crate::pipeline::check`] with this kind's report.
pub fn check<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    backend: &Backend,
) -> Result<CheckReport, ExecError> {
    let kernel = crate::pipeline::StaticKernel {
        spec,
        tile,
        params: p,
    };
    let r = crate::pipeline::check(&kernel, x, backend)?;
    Ok(CheckReport {
        kernel: r.name,
        close: r.close,
        counters: r.run.counters,
        dense_tiles: r.run.dense_tiles,
        output: r.run.output,
    })
}

pub(crate) mod host {
    //! Crate-internal access to the resolved argument table for the GPU backend.
    pub(crate) use super::HostArg;
}
