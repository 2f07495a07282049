//! Running the dynamic-sparsity pipelines (landmark, HAX, CCA, top-k, lse merge) on the
//! simulator or a GPU, and checking them against `attnforge-reference`.
//!
//! A [`DynamicSpec`] names the pipeline and its parameters; [`DynInputs`] holds the tensors
//! (plus, for HAX, the hyperplanes and key-selection scores). [`run`] launches every stage
//! in order (selection kernels write index lists that the attention kernels gather from)
//! and returns the output, the per-stage work counters and the intermediate index buffers;
//! [`check`] compares the output with the f64 reference by the relative oracle of
//! variants.md section 0 (`Tolerance::for_dtype`).
//!
//! ```no_run
//! use attnforge_runtime::exec::Backend;
//! use attnforge_runtime::exec_dynamic::{check, DynInputs};
//! use attnforge_codegen::dynamic::DynamicSpec;
//! use attnforge_codegen::spec::{DType, HeadDim};
//! use attnforge_reference::{Shape4, Tensor4};
//! let spec = DynamicSpec::Topk { dtype: DType::F32, head_dim: HeadDim::D64, sink: 2, recent: 4, k: 8, split: false };
//! let t = |s| Tensor4::<f32>::from_fn(Shape4::new(1, 1, s, 64), |_, _, i, d| ((i * 7 + d * 3) % 5) as f32 - 2.0);
//! let report = check(&spec, &DynInputs::new(t(1), t(100), t(100)), &Backend::sim()).unwrap();
//! println!("{} keys gathered", report.run.counters.keys_gathered);
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use attnforge_codegen::args::ArgKind as CgArgKind;
use attnforge_codegen::dynamic::{
    emit_stage, validate_dynamic, DynArgRole, DynBuffer, DynScalar, DynamicKernel, DynamicSpec,
    LandmarkMode, Stage,
};
use attnforge_codegen::shape::Shape;
use attnforge_reference as reference;
use attnforge_reference::{
    AttnOptions, AttnOutput, CloseReport, Element, Precision, Shape4, Sharing, Tensor4,
};
use attnforge_sim::{SimArg, SimCounters, SimElem, SimKernel};

use crate::exec::{Backend, ExecError};

/// HAX's extra inputs: hyperplanes `[1 or B, H', N, nb]` and key-selection scores
/// `[1 or B, H', S, 1]` (f32), with their sharing across heads (see
/// [`attnforge_reference::HaxInputs`]).
#[derive(Clone, Debug)]
pub struct HaxExtra {
    /// Hyperplanes Hp.
    pub hyperplanes: Tensor4<f32>,
    /// Key-selection scores ks.
    pub ks: Tensor4<f32>,
    /// Head sharing of the hyperplanes.
    pub hyperplane_sharing: Sharing,
    /// Head sharing of ks.
    pub ks_sharing: Sharing,
}

/// Inputs of one pipeline run: q/k/v (HAX: q2/k2/x) and the HAX extras.
#[derive(Clone, Debug)]
pub struct DynInputs<T> {
    /// Queries `[B, Hq, Sq, D]`.
    pub q: Tensor4<T>,
    /// Keys `[B, Hkv, Sk, D]`.
    pub k: Tensor4<T>,
    /// Values `[B, Hkv, Sk, D]`.
    pub v: Tensor4<T>,
    /// HAX hyperplanes and key-selection scores (required for [`DynamicSpec::Hax`]).
    pub hax: Option<HaxExtra>,
    /// Score scale; `None`: `1/sqrt(D)` (HAX: 1).
    pub scale: Option<f32>,
    /// LongHeads decoding: the chunk summaries `r [B, Hq, n_chunks, D]` (f32) of an earlier
    /// prefill. `None`: prefill (`Sq == Sk`), the summary kernel computes them.
    pub r: Option<Tensor4<f32>>,
}

impl<T> DynInputs<T> {
    /// q, k, v with the default scale and no HAX extras.
    pub fn new(q: Tensor4<T>, k: Tensor4<T>, v: Tensor4<T>) -> Self {
        DynInputs {
            q,
            k,
            v,
            hax: None,
            scale: None,
            r: None,
        }
    }
}

/// Result of one pipeline run.
#[derive(Clone, Debug)]
pub struct DynRun {
    /// `out` and `lse` of the last stage.
    pub output: AttnOutput,
    /// Counters summed over every stage (simulator only; zero on a GPU).
    pub counters: SimCounters,
    /// Per launch: kernel name and its counters.
    pub stages: Vec<(String, SimCounters)>,
    /// Integer buffers written by the selection stages (`sel`, `code_q`, `code_k`,
    /// `lsh_head`, `lsh_prev`, `ks_idx`, `ks_thr`), for inspection and tests.
    pub indices: BTreeMap<String, Vec<i32>>,
    /// LongHeads prefill: the summaries `r [B, Hq, floor(Sk / w), D]` the summary kernel
    /// wrote (`None` otherwise, and in the reports of [`check`] and [`compare`]).
    pub summaries: Option<Tensor4<f32>>,
}

/// Verdict of [`check`].
#[derive(Clone, Debug)]
pub struct DynCheckReport {
    /// Pipeline name.
    pub pipeline: String,
    /// The oracle's report.
    pub close: CloseReport,
    /// The run (output, counters, index buffers).
    pub run: DynRun,
}

enum Buf<T> {
    Elem(Vec<T>),
    F32(Vec<f32>),
    I32(Vec<i32>),
}

#[derive(Clone, Copy, Debug)]
enum Val {
    I32(i32),
    I64(i64),
    F32(f32),
}

fn input_err(field: &str, message: impl Into<String>, fix: impl Into<String>) -> ExecError {
    ExecError::Input {
        field: field.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

fn contiguous<T: Element>(t: &Tensor4<T>) -> Vec<T> {
    if t.strides == t.shape.contiguous_strides() && t.data.len() == t.shape.numel() {
        return t.data.clone();
    }
    let s = t.shape;
    Tensor4::from_fn(s, |b, h, i, d| T::from_f64(t.get(b, h, i, d))).data
}

fn i32_of(field: &str, v: usize) -> Result<i32, ExecError> {
    i32::try_from(v).map_err(|_| {
        input_err(
            field,
            format!("{v} does not fit an i32"),
            "use a smaller problem",
        )
    })
}

fn sharing_mode(s: Sharing) -> i32 {
    match s {
        Sharing::Shared => 0,
        Sharing::PerQueryHead => 1,
        Sharing::PerKvHead => 2,
    }
}

/// The reference result of the pipeline in `precision` (also the input checks: shapes,
/// `Sq <= Sk` / `Sq == Sk`, HAX extras).
pub fn reference_output<T: Element>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    precision: Precision,
) -> Result<AttnOutput, ExecError> {
    let mut opts = AttnOptions {
        scale: None,
        precision,
    };
    if let Some(s) = x.scale {
        opts = opts.with_scale(f64::from(s));
    }
    Ok(match *spec {
        DynamicSpec::Landmark { mem_freq, mode, .. } => {
            let mode = match mode {
                LandmarkMode::Train => reference::LandmarkMode::Training,
                LandmarkMode::Retrieval { top_k } => reference::LandmarkMode::Retrieval { top_k },
            };
            let p = reference::LandmarkParams { mem_freq, mode };
            reference::landmark_attention(&x.q, &x.k, &x.v, &p, &opts)?
        }
        DynamicSpec::Hax { k_lsh, k_ks, .. } => {
            let e = hax_extra(x)?;
            let inputs = reference::HaxInputs {
                q2: &x.q,
                k2: &x.k,
                x: &x.v,
                hyperplanes: &e.hyperplanes,
                ks: &e.ks,
            };
            let p = reference::HaxParams {
                k_lsh,
                k_ks,
                hyperplane_sharing: e.hyperplane_sharing,
                ks_sharing: e.ks_sharing,
            };
            reference::hax_attention(&inputs, &p, &opts)?
        }
        DynamicSpec::Cca { group, window, .. } => {
            let p = reference::CcaParams { group, window };
            reference::cca_attention(&x.q, &x.k, &x.v, &p, &opts)?
        }
        DynamicSpec::Topk {
            sink, recent, k, ..
        } => {
            let p = reference::TopkParams {
                start: sink,
                end: recent,
                k,
            };
            reference::topk_attention(&x.q, &x.k, &x.v, &p, &opts)?
        }
        DynamicSpec::Recycled { .. } => return Err(crate::exec_recycled::not_a_pipeline()),
        DynamicSpec::Longheads { .. } => {
            let p = longheads_params(spec);
            match &x.r {
                Some(r) => {
                    let r = Tensor4::<f64>::from_fn(r.shape, |b, h, i, e| r.get(b, h, i, e));
                    reference::longheads_attention(&x.q, &x.k, &x.v, &r, &p, &opts)?
                }
                None => reference::longheads_prefill(&x.q, &x.k, &x.v, &p, &opts)?,
            }
        }
        DynamicSpec::LseMerge { .. } => {
            return Err(input_err(
                "spec",
                "lse_merge has no q/k/v reference",
                "use merge() with two partial results",
            ))
        }
    })
}

/// The reference's parameters of a [`DynamicSpec::Longheads`] (defaults for any other).
pub fn longheads_params(spec: &DynamicSpec) -> reference::LongHeadsParams {
    match *spec {
        DynamicSpec::Longheads {
            chunk,
            chunks_per_query,
            begin,
            theta,
            ..
        } => reference::LongHeadsParams {
            chunk,
            chunks_per_query,
            begin,
            theta: theta as f64,
        },
        _ => reference::LongHeadsParams::default(),
    }
}

/// LongHeads: the width of a row's selection list for `seq_k` keys,
/// `max(M, min(B / w, ceil(Sk / w)))` (a row at `t < B` lists every chunk `0..=c`: at most
/// `B / w`, and at most the chunks there are).
pub fn longheads_sel_width(spec: &DynamicSpec, seq_k: usize) -> usize {
    match *spec {
        DynamicSpec::Longheads {
            chunk,
            chunks_per_query,
            begin,
            ..
        } => {
            let w = chunk.max(1);
            chunks_per_query.max((begin / w).min(seq_k.div_ceil(w)))
        }
        _ => 0,
    }
}

/// LongHeads input checks the reference does not make: decoding rows need the summaries
/// (`r`), and prefill (no `r`) needs `Dv == D` and `Sq == Sk`.
fn check_longheads<T>(spec: &DynamicSpec, x: &DynInputs<T>) -> Result<(), ExecError> {
    if !matches!(spec, DynamicSpec::Longheads { .. }) {
        return if x.r.is_some() {
            Err(input_err(
                "r",
                format!("`{}` takes no summaries", spec.canonical_name()),
                "remove r (only longheads decoding takes the chunk summaries)",
            ))
        } else {
            Ok(())
        };
    }
    if x.r.is_none() && x.q.shape.seq != x.k.shape.seq {
        return Err(input_err(
            "r",
            format!(
                "Sq = {} < Sk = {} (decoding rows) but no summaries were given",
                x.q.shape.seq, x.k.shape.seq
            ),
            "pass the chunk summaries r [B, Hq, n_chunks, D] of the prefill (DynInputs::r, --r), or give Sq == Sk for a prefill",
        ));
    }
    if let Some(r) = &x.r {
        let (q, rs) = (x.q.shape, r.shape);
        if (rs.batch, rs.heads, rs.dim) != (q.batch, q.heads, q.dim) {
            return Err(input_err(
                "r.shape",
                format!(
                    "[{}, {}, {}, {}] does not fit q [{}, {}, {}, {}]",
                    rs.batch, rs.heads, rs.seq, rs.dim, q.batch, q.heads, q.seq, q.dim
                ),
                "pass the summaries [B, Hq, n_chunks, D] of a prefill of the same batch and query heads",
            ));
        }
    }
    Ok(())
}

fn hax_extra<T>(x: &DynInputs<T>) -> Result<&HaxExtra, ExecError> {
    x.hax.as_ref().ok_or_else(|| {
        input_err(
            "hax",
            "HAX needs hyperplanes and key-selection scores",
            "set DynInputs::hax = Some(HaxExtra { .. })",
        )
    })
}

/// Build (or fetch from the process's simulator kernel cache) the kernel of one stage.
pub fn sim_stage(k: &DynamicKernel) -> Result<Arc<SimKernel>, ExecError> {
    crate::exec::cached_sim_kernel(&k.name, &k.source)
}

/// The buffers of a run, the values its scalars derive from, and where it runs.
struct Machine<'b, T> {
    bufs: BTreeMap<DynBuffer, Buf<T>>,
    scalars: ScalarSource<'b>,
    backend: &'b Backend,
    stages: Vec<(String, SimCounters)>,
    total: SimCounters,
}

impl<T: Element + SimElem> Machine<'_, T> {
    /// Launch `k`: each argument by its role; `alias` redirects buffer roles to the
    /// buffers of this launch (the two partial top-k outputs); `part` is the top-k part.
    fn launch(
        &mut self,
        k: &DynamicKernel,
        geo: attnforge_codegen::args::LaunchGeometry,
        alias: &[(DynBuffer, DynBuffer)],
        part: i32,
    ) -> Result<(), ExecError> {
        if geo.grid.contains(&0) {
            return Ok(());
        }
        let target = |b: DynBuffer| alias.iter().find(|(a, _)| *a == b).map_or(b, |(_, to)| *to);
        let scalars: Vec<Option<Val>> = k
            .roles
            .iter()
            .map(|r| match *r {
                DynArgRole::Scalar(s) => scalar_value(s, &self.scalars, part).map(Some),
                DynArgRole::Buffer(_) => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        match self.backend {
            Backend::Sim(cfg) => {
                let c = launch_sim(k, geo, &mut self.bufs, &target, &scalars, cfg)?;
                self.total = add_counters(&self.total, &c);
                self.stages.push((k.name.clone(), c));
                Ok(())
            }
            Backend::Cuda(ord) => {
                cuda::launch(*ord, k, geo, &mut self.bufs, &target, &scalars)?;
                self.stages.push((k.name.clone(), SimCounters::default()));
                Ok(())
            }
            Backend::Reference => Err(input_err(
                "backend",
                "the reference backend runs no kernels",
                "use reference_output() or Backend::Sim / Backend::Cuda",
            )),
        }
    }
}

/// One launch on the simulator: the written buffers are taken out of the table while the
/// launch borrows the read ones, then put back.
fn launch_sim<T: Element + SimElem>(
    k: &DynamicKernel,
    geo: attnforge_codegen::args::LaunchGeometry,
    bufs: &mut BTreeMap<DynBuffer, Buf<T>>,
    target: &dyn Fn(DynBuffer) -> DynBuffer,
    scalars: &[Option<Val>],
    cfg: &attnforge_sim::SimConfig,
) -> Result<SimCounters, ExecError> {
    let sk = sim_stage(k)?;
    let mut outs: BTreeMap<DynBuffer, Buf<T>> = BTreeMap::new();
    for (a, r) in k.args.iter().zip(&k.roles) {
        if let (CgArgKind::Ptr { mutable: true, .. }, DynArgRole::Buffer(b)) = (a.kind, *r) {
            let b = target(b);
            let buf = bufs.remove(&b).ok_or_else(|| {
                input_err(
                    b.name(),
                    "output buffer missing",
                    "report this: exec_dynamic bug",
                )
            })?;
            outs.insert(b, buf);
        }
    }
    let res = {
        let mut args = Vec::with_capacity(k.args.len());
        let mut outs_mut: Vec<(&DynBuffer, &mut Buf<T>)> = outs.iter_mut().collect();
        for ((a, r), s) in k.args.iter().zip(&k.roles).zip(scalars) {
            args.push(match (*r, a.kind) {
                (DynArgRole::Buffer(b), CgArgKind::Ptr { mutable: true, .. }) => {
                    let b = target(b);
                    let i = outs_mut.iter().position(|(m, _)| **m == b).unwrap_or(0);
                    let (_, buf) = outs_mut.swap_remove(i);
                    match buf {
                        Buf::Elem(v) => SimArg::output(v.as_mut_slice()),
                        Buf::F32(v) => SimArg::output(v.as_mut_slice()),
                        Buf::I32(v) => SimArg::output(v.as_mut_slice()),
                    }
                }
                (DynArgRole::Buffer(b), _) => match bufs.get(&target(b)) {
                    None => SimArg::Null,
                    Some(Buf::Elem(v)) => SimArg::input(v.as_slice()),
                    Some(Buf::F32(v)) => SimArg::input(v.as_slice()),
                    Some(Buf::I32(v)) => SimArg::input(v.as_slice()),
                },
                (DynArgRole::Scalar(_), _) => match s {
                    Some(Val::I32(v)) => SimArg::I32(*v),
                    Some(Val::I64(v)) => SimArg::I64(*v),
                    Some(Val::F32(v)) => SimArg::F32(*v),
                    None => {
                        return Err(input_err(
                            &a.name,
                            "scalar without a value",
                            "report this: exec_dynamic bug",
                        ))
                    }
                },
            });
        }
        sk.launch(
            (geo.grid[0], geo.grid[1], geo.grid[2]),
            geo.block[0],
            geo.dynamic_smem_bytes as usize,
            &mut args,
            cfg,
        )
    };
    bufs.extend(outs);
    Ok(res?)
}

/// The problem shape of `x` (its head dimension must be the spec's; Dv = D).
fn shape_of<T>(spec: &DynamicSpec, x: &DynInputs<T>) -> Result<Shape, ExecError> {
    let d = spec.head_dim().get();
    let (qs, ks) = (x.q.shape, x.k.shape);
    if qs.dim != d || x.v.shape.dim != d {
        return Err(input_err(
            "q.dim / v.dim",
            format!(
                "got D = {}, Dv = {}; the spec's head_dim is {d}",
                qs.dim, x.v.shape.dim
            ),
            "pass tensors whose last dimension is the spec's head_dim (Dv = D)",
        ));
    }
    Ok(Shape {
        batch: qs.batch,
        heads_q: qs.heads,
        heads_kv: ks.heads,
        seq_q: qs.seq,
        seq_k: ks.seq,
    })
}

/// What the scalar arguments of a run derive from: the spec, the problem, the scale and
/// HAX's extra inputs.
struct ScalarSource<'a> {
    spec: &'a DynamicSpec,
    shape: Shape,
    rows: usize,
    scale: f32,
    hax: Option<&'a HaxExtra>,
    /// LongHeads: chunks of the summaries (given `r`, or `floor(Sk / w)` in prefill).
    summary_chunks: usize,
    /// A paged cache: `max_pages`, `page_size`, `Tq` (`paged::run`).
    paged: Option<[usize; 3]>,
}

impl<'a> ScalarSource<'a> {
    fn new<T>(spec: &'a DynamicSpec, x: &'a DynInputs<T>, p: &Shape) -> Self {
        ScalarSource {
            spec,
            shape: *p,
            rows: p.batch * p.heads_q * p.seq_q,
            scale: x.scale.unwrap_or(match spec {
                DynamicSpec::Hax { .. } => 1.0,
                _ => 1.0 / (spec.head_dim().get() as f32).sqrt(),
            }),
            hax: x.hax.as_ref(),
            summary_chunks: match (&x.r, spec) {
                (Some(r), _) => r.shape.seq,
                (None, DynamicSpec::Longheads { chunk, .. }) => p.seq_k / chunk.max(&1),
                _ => 0,
            },
            paged: None,
        }
    }

    /// Every scalar the pipeline's stages take, computed once before any launch so that a
    /// value out of range is an input error up front (the sizes first, then each stage's).
    fn check_all(&self) -> Result<(), ExecError> {
        use DynScalar as S;
        let shared = [
            S::Batch,
            S::HeadsQ,
            S::HeadsKv,
            S::SeqQ,
            S::SeqK,
            S::Seq,
            S::Rows,
        ];
        for s in shared {
            scalar_value(s, self, 0)?;
        }
        for stage in self.spec.stages() {
            for a in stage.typed_args(self.spec.dtype()) {
                if let DynArgRole::Scalar(s) = a.role {
                    scalar_value(s, self, 0)?;
                }
            }
        }
        Ok(())
    }
}

/// The value of one scalar argument: an exhaustive match on its role (`part` is the top-k
/// attention part of this launch).
fn scalar_value(s: DynScalar, c: &ScalarSource<'_>, part: i32) -> Result<Val, ExecError> {
    use DynScalar as S;
    let p = &c.shape;
    let not_in_family = || {
        input_err(
            s.name(),
            format!(
                "the {} pipeline has no `{}` argument",
                c.spec.canonical_name(),
                s.name()
            ),
            "report this: the stage's argument roles and exec_dynamic disagree",
        )
    };
    let i32v = |field: &str, v: usize| i32_of(field, v).map(Val::I32);
    let hax = || c.hax.ok_or_else(not_in_family);
    let paged = |i: usize, field: &str| match c.paged {
        Some(v) => i32v(field, v[i]),
        None => Err(not_in_family()),
    };
    match (s, *c.spec) {
        (S::MaxPages, _) => paged(0, "max_pages"),
        (S::PageSize, _) => paged(1, "k_cache.page_size"),
        (S::TotalQ, _) => paged(2, "q.tokens"),
        (S::Batch, _) => i32v("q.batch", p.batch),
        (S::HeadsQ, _) => i32v("q.heads", p.heads_q),
        (S::HeadsKv, _) => i32v("k.heads", p.heads_kv),
        (S::SeqQ | S::Seq, _) => i32v("q.seq", p.seq_q),
        (S::SeqK, _) => i32v("k.seq", p.seq_k),
        (S::Rows, _) => i32v("rows", c.rows),
        (S::Scale, _) => Ok(Val::F32(c.scale)),
        (S::Part, _) => Ok(Val::I32(part)),
        (S::MemFreq, DynamicSpec::Landmark { mem_freq, .. }) => i32v("mem_freq", mem_freq),
        (S::TopK | S::SelWidth, DynamicSpec::Landmark { mode, .. }) => Ok(Val::I32(match mode {
            LandmarkMode::Retrieval { top_k } => top_k as i32,
            LandmarkMode::Train => 0,
        })),
        (S::Sink, DynamicSpec::Topk { sink, .. }) => i32v("sink", sink),
        (S::Recent, DynamicSpec::Topk { recent, .. }) => i32v("recent", recent),
        (S::TopkK, DynamicSpec::Topk { k, .. }) => Ok(Val::I32(k as i32)),
        (S::Group, DynamicSpec::Cca { group, .. }) => i32v("group", group),
        (S::Window, DynamicSpec::Cca { window, .. }) => i32v("window", window),
        (S::Pooled, DynamicSpec::Cca { group, window, .. }) => {
            Ok(Val::I32((p.seq_q.saturating_sub(window) / group) as i32))
        }
        (S::PoolScale, DynamicSpec::Cca { head_dim, .. }) => {
            Ok(Val::F32(1.0 / (head_dim.get() as f32).sqrt()))
        }
        (S::Chunk, DynamicSpec::Longheads { chunk, .. }) => i32v("chunk", chunk),
        (
            S::ChunksPerQuery,
            DynamicSpec::Longheads {
                chunks_per_query, ..
            },
        ) => i32v("chunks_per_query", chunks_per_query),
        (S::Begin, DynamicSpec::Longheads { begin, .. }) => i32v("begin", begin),
        (S::Theta, DynamicSpec::Longheads { theta, .. }) => Ok(Val::F32(theta as f32)),
        (S::SelWidth, DynamicSpec::Longheads { .. }) => {
            i32v("sel width", longheads_sel_width(c.spec, p.seq_k))
        }
        (S::SummaryChunks, DynamicSpec::Longheads { .. }) => i32v("r.seq", c.summary_chunks),
        (S::KLsh, DynamicSpec::Hax { k_lsh, .. }) => i32v("k_lsh", k_lsh),
        (S::KKs, DynamicSpec::Hax { k_ks, .. }) => Ok(Val::I32(k_ks as i32)),
        (S::HashBits, DynamicSpec::Hax { .. }) => Ok(Val::I32(hax()?.hyperplanes.shape.dim as i32)),
        (S::HyperplaneBatchStride, DynamicSpec::Hax { .. }) => {
            Ok(Val::I64(batch_stride(&hax()?.hyperplanes)))
        }
        (S::HyperplaneMode, DynamicSpec::Hax { .. }) => {
            Ok(Val::I32(sharing_mode(hax()?.hyperplane_sharing)))
        }
        (S::KeyScoreBatchStride, DynamicSpec::Hax { .. }) => Ok(Val::I64(batch_stride(&hax()?.ks))),
        (S::KeyScoreMode, DynamicSpec::Hax { .. }) => Ok(Val::I32(sharing_mode(hax()?.ks_sharing))),
        (
            S::MemFreq
            | S::TopK
            | S::SelWidth
            | S::Sink
            | S::Recent
            | S::TopkK
            | S::Group
            | S::Window
            | S::Pooled
            | S::PoolScale
            | S::KLsh
            | S::KKs
            | S::HashBits
            | S::HyperplaneBatchStride
            | S::HyperplaneMode
            | S::KeyScoreBatchStride
            | S::KeyScoreMode
            | S::Chunk
            | S::ChunksPerQuery
            | S::Begin
            | S::Theta
            | S::SummaryChunks,
            _,
        ) => Err(not_in_family()),
    }
}

/// The batch stride of a HAX extra input (0: one copy shared across the batch).
fn batch_stride(t: &Tensor4<f32>) -> i64 {
    if t.shape.batch == 1 {
        0
    } else {
        (t.shape.heads * t.shape.seq * t.shape.dim) as i64
    }
}

/// HAX's buffers: hyperplanes, key-selection scores, hash codes and lists.
fn hax_buffers<T>(
    x: &DynInputs<T>,
    (k_ks, hash_bits): (usize, usize),
    rows: usize,
    bufs: &mut BTreeMap<DynBuffer, Buf<T>>,
) -> Result<(), ExecError> {
    let e = hax_extra(x)?;
    let nb = e.hyperplanes.shape.dim;
    if nb != hash_bits {
        return Err(input_err(
            "hyperplanes.dim (nb)",
            format!("{nb} hyperplanes given, the spec's hash_bits is {hash_bits}"),
            "pass [_, _, N, hash_bits] hyperplanes or change hax.hash_bits",
        ));
    }
    bufs.insert(DynBuffer::Hyperplanes, Buf::F32(contiguous(&e.hyperplanes)));
    bufs.insert(DynBuffer::KeyScores, Buf::F32(contiguous(&e.ks)));
    for b in [
        DynBuffer::CodeQ,
        DynBuffer::CodeK,
        DynBuffer::LshHead,
        DynBuffer::LshPrev,
        DynBuffer::KeySelThreshold,
    ] {
        bufs.insert(b, Buf::I32(vec![-7; rows]));
    }
    bufs.insert(
        DynBuffer::KeySelIdx,
        Buf::I32(vec![-7; (rows * k_ks).max(1)]),
    );
    Ok(())
}

/// The family's scratch buffers; the index buffers its selection stages write (returned
/// in [`DynRun::indices`]).
fn family_buffers<T>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    p: &Shape,
    bufs: &mut BTreeMap<DynBuffer, Buf<T>>,
) -> Result<Vec<DynBuffer>, ExecError> {
    let rows = p.batch * p.heads_q * p.seq_q;
    let d = spec.head_dim().get();
    Ok(match *spec {
        DynamicSpec::Landmark { mode, .. } => {
            if let LandmarkMode::Retrieval { top_k } = mode {
                if top_k > 0 {
                    bufs.insert(DynBuffer::Sel, Buf::I32(vec![-7; rows * top_k]));
                }
            }
            vec![DynBuffer::Sel]
        }
        DynamicSpec::Topk { k, .. } => {
            bufs.insert(DynBuffer::Sel, Buf::I32(vec![-7; rows * k]));
            for b in [DynBuffer::OA, DynBuffer::OB] {
                bufs.insert(b, Buf::F32(vec![0.0; rows * d]));
            }
            for b in [DynBuffer::LseA, DynBuffer::LseB] {
                bufs.insert(b, Buf::F32(vec![0.0; rows]));
            }
            vec![DynBuffer::Sel]
        }
        DynamicSpec::Cca { group, window, .. } => {
            let pooled = p.seq_q.saturating_sub(window) / group;
            let n = (p.batch * p.heads_q * pooled * d).max(1);
            bufs.insert(DynBuffer::KBar, Buf::F32(vec![0.0; n]));
            bufs.insert(DynBuffer::VBar, Buf::F32(vec![0.0; n]));
            vec![]
        }
        DynamicSpec::Hax {
            k_ks, hash_bits, ..
        } => {
            hax_buffers(x, (k_ks, hash_bits), rows, bufs)?;
            vec![
                DynBuffer::CodeQ,
                DynBuffer::CodeK,
                DynBuffer::LshHead,
                DynBuffer::LshPrev,
                DynBuffer::KeySelIdx,
                DynBuffer::KeySelThreshold,
            ]
        }
        DynamicSpec::Recycled { .. } => return Err(crate::exec_recycled::not_a_pipeline()),
        DynamicSpec::Longheads { chunk, .. } => {
            let width = longheads_sel_width(spec, p.seq_k);
            bufs.insert(DynBuffer::Sel, Buf::I32(vec![-7; rows * width]));
            let r = match &x.r {
                Some(r) => contiguous(r),
                None => vec![f32::NAN; p.batch * p.heads_q * (p.seq_k / chunk) * d],
            };
            bufs.insert(DynBuffer::Summaries, Buf::F32(r));
            vec![DynBuffer::Sel]
        }
        DynamicSpec::LseMerge { .. } => {
            return Err(input_err(
                "spec",
                "lse_merge takes two partial results, not q/k/v",
                "use merge()",
            ))
        }
    })
}

/// Launch every stage of the pipeline in order (the split top-k attention twice).
fn launch_stages<T: Element + SimElem>(
    mach: &mut Machine<'_, T>,
    spec: &DynamicSpec,
    p: &Shape,
    summaries_given: bool,
) -> Result<(), ExecError> {
    for stage in spec.stages() {
        if stage == Stage::LongheadsSummary && summaries_given {
            continue; // decoding: the summaries are an input
        }
        let kern = emit_stage(spec, stage).map_err(ExecError::Spec)?;
        let geo = stage.geometry(spec, p);
        match stage {
            Stage::TopkAttnPart => {
                let (o, lse) = (DynBuffer::O, DynBuffer::Lse);
                mach.launch(&kern, geo, &[(o, DynBuffer::OA), (lse, DynBuffer::LseA)], 1)?;
                mach.launch(&kern, geo, &[(o, DynBuffer::OB), (lse, DynBuffer::LseB)], 2)?;
            }
            _ => mach.launch(&kern, geo, &[], 0)?,
        }
    }
    Ok(())
}

/// Run the pipeline of `spec` on `backend` (simulator or GPU).
pub fn run<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    backend: &Backend,
) -> Result<DynRun, ExecError> {
    validate_dynamic(spec).map_err(ExecError::Spec)?;
    // The reference's input checks first (shapes, lengths, HAX extras): typed errors.
    check_longheads(spec, x)?;
    let _ = reference_output(spec, x, Precision::Naive)?;
    let d = spec.head_dim().get();
    let p = shape_of(spec, x)?;
    let rows = p.batch * p.heads_q * p.seq_q;
    let scalars = ScalarSource::new(spec, x, &p);
    scalars.check_all()?;
    let mut indices = BTreeMap::new();
    if rows == 0 {
        let empty = Shape4::new(p.batch, p.heads_q, 0, d);
        return Ok(DynRun {
            output: AttnOutput::from_kernel(empty, &Vec::<T>::new(), &[])?,
            counters: SimCounters::default(),
            stages: Vec::new(),
            indices,
            summaries: None,
        });
    }
    let qkv = if matches!(spec, DynamicSpec::Hax { .. }) {
        [DynBuffer::Q2, DynBuffer::K2, DynBuffer::X]
    } else {
        [DynBuffer::Q, DynBuffer::K, DynBuffer::V]
    };
    let mut bufs: BTreeMap<DynBuffer, Buf<T>> = BTreeMap::new();
    bufs.insert(qkv[0], Buf::Elem(contiguous(&x.q)));
    bufs.insert(qkv[1], Buf::Elem(contiguous(&x.k)));
    bufs.insert(qkv[2], Buf::Elem(contiguous(&x.v)));
    bufs.insert(DynBuffer::O, Buf::Elem(vec![T::from_f64(0.0); rows * d]));
    bufs.insert(DynBuffer::Lse, Buf::F32(vec![0.0f32; rows]));
    let idx_bufs = family_buffers(spec, x, &p, &mut bufs)?;
    let mut mach = Machine {
        bufs,
        scalars,
        backend,
        stages: Vec::new(),
        total: SimCounters::default(),
    };
    launch_stages(&mut mach, spec, &p, x.r.is_some())?;
    let mut bufs = mach.bufs;
    let summaries = match (spec, &x.r, bufs.remove(&DynBuffer::Summaries)) {
        (DynamicSpec::Longheads { chunk, .. }, None, Some(Buf::F32(r))) => Some(
            Tensor4::from_vec(Shape4::new(p.batch, p.heads_q, p.seq_k / chunk, d), r)
                .map_err(ExecError::from)?,
        ),
        _ => None,
    };
    for b in idx_bufs {
        if let Some(Buf::I32(v)) = bufs.remove(&b) {
            indices.insert(b.name().to_string(), v);
        }
    }
    let (o, lse) = take_outputs(&mut bufs)?;
    Ok(DynRun {
        output: AttnOutput::from_kernel(Shape4::new(p.batch, p.heads_q, p.seq_q, d), &o, &lse)?,
        counters: mach.total,
        stages: mach.stages,
        indices,
        summaries,
    })
}

/// Run the pipeline and compare its output with the f64 reference (tolerance of the
/// spec's dtype, naive same-precision error scale).
pub fn check<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    backend: &Backend,
) -> Result<DynCheckReport, ExecError> {
    let r = crate::pipeline::check(spec, x, backend)?;
    Ok(DynCheckReport {
        pipeline: r.name,
        close: r.close,
        run: DynRun {
            output: r.run.output,
            counters: r.run.counters.unwrap_or_default(),
            stages: r.run.stages,
            indices: r.run.indices,
            summaries: None,
        },
    })
}

/// Compare a pipeline's `run` with the f64 reference `want` by the relative oracle
/// (tolerance of the spec's dtype; `naive` is the same math in the kernel's precision, the
/// error scale): [`crate::pipeline::compare`] with this kind's report. Used by the merge
/// check of `attnforge-macros-rt`.
pub fn compare(
    spec: &DynamicSpec,
    run: DynRun,
    want: &AttnOutput,
    naive: &AttnOutput,
) -> Result<DynCheckReport, ExecError> {
    let exec = crate::pipeline::Execution {
        output: run.output,
        counters: Some(run.counters),
        dense_tiles: None,
        stages: run.stages,
        indices: run.indices,
    };
    let name = spec.canonical_name();
    let r = crate::pipeline::compare(&name, spec.dtype(), exec, want, naive)?;
    Ok(DynCheckReport {
        pipeline: r.name,
        close: r.close,
        run: DynRun {
            output: r.run.output,
            counters: r.run.counters.unwrap_or_default(),
            stages: r.run.stages,
            indices: r.run.indices,
            summaries: None,
        },
    })
}

/// The attention kernel's `o` and `lse` out of a finished pipeline's buffers.
fn take_outputs<T>(
    bufs: &mut BTreeMap<DynBuffer, Buf<T>>,
) -> Result<(Vec<T>, Vec<f32>), ExecError> {
    match (bufs.remove(&DynBuffer::O), bufs.remove(&DynBuffer::Lse)) {
        (Some(Buf::Elem(o)), Some(Buf::F32(lse))) => Ok((o, lse)),
        _ => Err(input_err(
            "o",
            "output buffers lost",
            "report this: exec_dynamic bug",
        )),
    }
}

/// Run the log-sum-exp merge kernel of `spec` (a [`DynamicSpec::LseMerge`]) on two partial
/// results (`out`/`lse` rounded to f32, as the partial kernels write them); the output has
/// the spec's dtype `T`.
pub fn merge<T: Element + SimElem>(
    spec: &DynamicSpec,
    a: &AttnOutput,
    b: &AttnOutput,
    backend: &Backend,
) -> Result<DynRun, ExecError> {
    let DynamicSpec::LseMerge { head_dim, .. } = *spec else {
        return Err(input_err(
            "spec",
            "merge() runs a lse_merge spec",
            "pass DynamicSpec::LseMerge",
        ));
    };
    let d = head_dim.get();
    if a.shape != b.shape || a.shape.dim != d {
        return Err(input_err(
            "b.shape",
            format!("{:?} vs {:?} (head_dim {d})", a.shape, b.shape),
            "merge two results of the same [B, Hq, Sq, head_dim] shape",
        ));
    }
    let rows = a.lse.len();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut bufs = BTreeMap::new();
    bufs.insert(DynBuffer::OA, Buf::F32(f(&a.out)));
    bufs.insert(DynBuffer::LseA, Buf::F32(f(&a.lse)));
    bufs.insert(DynBuffer::OB, Buf::F32(f(&b.out)));
    bufs.insert(DynBuffer::LseB, Buf::F32(f(&b.lse)));
    bufs.insert(DynBuffer::O, Buf::Elem(vec![T::from_f64(0.0); rows * d]));
    bufs.insert(DynBuffer::Lse, Buf::F32(vec![0.0; rows]));
    let p = Shape {
        batch: a.shape.batch,
        heads_q: a.shape.heads,
        heads_kv: a.shape.heads,
        seq_q: a.shape.seq,
        seq_k: a.shape.seq,
    };
    let mut mach = Machine {
        bufs,
        scalars: ScalarSource {
            spec,
            shape: p,
            rows,
            scale: 1.0,
            hax: None,
            summary_chunks: 0,
            paged: None,
        },
        backend,
        stages: Vec::new(),
        total: SimCounters::default(),
    };
    let kern = emit_stage(spec, Stage::LseMerge).map_err(ExecError::Spec)?;
    mach.launch(&kern, Stage::LseMerge.geometry(spec, &p), &[], 0)?;
    let (Some(Buf::Elem(o)), Some(Buf::F32(lse))) = (
        mach.bufs.remove(&DynBuffer::O),
        mach.bufs.remove(&DynBuffer::Lse),
    ) else {
        return Err(input_err(
            "o",
            "output buffers lost",
            "report this: exec_dynamic bug",
        ));
    };
    Ok(DynRun {
        output: AttnOutput::from_kernel(a.shape, &o, &lse)?,
        counters: mach.total,
        stages: mach.stages,
        indices: BTreeMap::new(),
        summaries: None,
    })
}

fn add_counters(a: &SimCounters, b: &SimCounters) -> SimCounters {
    let mut raw = a.raw;
    for (t, s) in raw.iter_mut().zip(b.raw) {
        *t += s;
    }
    SimCounters {
        tiles_full: raw[0],
        tiles_partial: raw[1],
        mask_evals: raw[2],
        keys_gathered: raw[3],
        select_work: raw[4],
        raw,
    }
}

mod paged;
pub use paged::{check_paged, reads_paged, reference_paged, run_paged, DynPagedRun};

mod cuda {
    //! The GPU half: compile the stage with NVRTC for the device, upload the buffers the
    //! kernel names, launch through the checked [`GpuKernel::launch`], download its outputs.

    use std::collections::BTreeMap;

    use attnforge_codegen::args::{ArgKind as CgArgKind, LaunchGeometry, Scalar};
    use attnforge_codegen::dynamic::{DynArgRole, DynBuffer, DynamicKernel};
    use attnforge_reference::Element;
    use cudarc::driver::CudaSlice;

    use super::{Buf, Val};
    use crate::exec::ExecError;
    use crate::{
        compile, device_ptr, Arch, ArgDecl, ArgKind, Gpu, GpuKernel, KernelArgValue, LaunchConfig,
    };

    fn cuda_err(e: impl std::fmt::Display) -> ExecError {
        ExecError::Cuda(e.to_string())
    }

    fn bytes_of<T: Copy>(data: &[T]) -> &[u8] {
        // SAFETY: T is a plain numeric type (f32, f16, bf16, i32); reading its bytes is sound.
        unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        }
    }

    fn read_back<U: Copy>(bytes: &[u8], out: &mut [U]) {
        for (o, c) in out
            .iter_mut()
            .zip(bytes.chunks_exact(std::mem::size_of::<U>()))
        {
            // SAFETY: the chunk holds exactly one U written by the kernel.
            *o = unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<U>()) };
        }
    }

    pub(super) fn launch<T: Element>(
        ordinal: usize,
        k: &DynamicKernel,
        geo: LaunchGeometry,
        bufs: &mut BTreeMap<DynBuffer, Buf<T>>,
        target: &dyn Fn(DynBuffer) -> DynBuffer,
        scalars: &[Option<Val>],
    ) -> Result<(), ExecError> {
        let gpu = Gpu::new(ordinal).map_err(cuda_err)?;
        let arch = Arch::for_capability(gpu.compute_capability().0);
        let compiled = compile(&k.source, &k.name, arch).map_err(cuda_err)?;
        let sig: Vec<ArgDecl> = k
            .args
            .iter()
            .map(|a| {
                let kind = match a.kind {
                    CgArgKind::Ptr { .. } => ArgKind::DevPtr,
                    CgArgKind::Scalar(Scalar::I32) => ArgKind::I32,
                    CgArgKind::Scalar(Scalar::I64) => ArgKind::I64,
                    CgArgKind::Scalar(Scalar::F32) => ArgKind::F32,
                };
                ArgDecl::new(a.name.clone(), kind)
            })
            .collect();
        let kernel = GpuKernel::load(&gpu, &compiled, sig).map_err(cuda_err)?;
        let stream = gpu.stream().clone();
        let mut dev: Vec<(DynBuffer, bool, CudaSlice<u8>)> = Vec::new();
        let mut values = Vec::with_capacity(k.args.len());
        for ((a, r), s) in k.args.iter().zip(&k.roles).zip(scalars) {
            values.push(match (*r, a.kind, s) {
                (DynArgRole::Buffer(b), CgArgKind::Ptr { mutable, .. }, _) => {
                    let n = target(b);
                    let mut bytes = match bufs.get(&n) {
                        None => {
                            values.push(KernelArgValue::DevPtr(0));
                            continue;
                        }
                        Some(Buf::Elem(v)) => bytes_of(v).to_vec(),
                        Some(Buf::F32(v)) => bytes_of(v).to_vec(),
                        Some(Buf::I32(v)) => bytes_of(v).to_vec(),
                    };
                    if bytes.is_empty() {
                        bytes.push(0);
                    }
                    let slice = stream.clone_htod(&bytes).map_err(cuda_err)?;
                    let p = device_ptr(&gpu, &slice);
                    dev.push((n, mutable, slice));
                    KernelArgValue::DevPtr(p)
                }
                (_, _, Some(Val::I32(v))) => KernelArgValue::I32(*v),
                (_, _, Some(Val::I64(v))) => KernelArgValue::I64(*v),
                (_, _, Some(Val::F32(v))) => KernelArgValue::F32(*v),
                (_, _, None) => return Err(cuda_err(format!("no value for `{}`", a.name))),
            });
        }
        let cfg = LaunchConfig {
            grid: geo.grid,
            block: geo.block,
            dynamic_smem_bytes: geo.dynamic_smem_bytes,
        };
        kernel.launch(&cfg, &values).map_err(cuda_err)?;
        gpu.synchronize().map_err(cuda_err)?;
        for (n, mutable, slice) in &dev {
            if !*mutable {
                continue;
            }
            let bytes = stream.clone_dtoh(slice).map_err(cuda_err)?;
            match bufs.get_mut(n) {
                Some(Buf::Elem(v)) => read_back(&bytes, v),
                Some(Buf::F32(v)) => read_back(&bytes, v),
                Some(Buf::I32(v)) => read_back(&bytes, v),
                None => {}
            }
        }
        Ok(())
    }
}
