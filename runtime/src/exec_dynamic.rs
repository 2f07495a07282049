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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use attnforge_codegen::args::ArgKind as CgArgKind;
use attnforge_codegen::dynamic::{
    emit_stage, validate_dynamic, DynamicKernel, DynamicSpec, LandmarkMode, Stage,
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
        DynamicSpec::LseMerge { .. } => {
            return Err(input_err(
                "spec",
                "lse_merge has no q/k/v reference",
                "use merge() with two partial results",
            ))
        }
    })
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

/// The buffers and scalars of a run, and where it runs.
struct Machine<'b, T> {
    bufs: BTreeMap<String, Buf<T>>,
    vals: HashMap<&'static str, Val>,
    backend: &'b Backend,
    stages: Vec<(String, SimCounters)>,
    total: SimCounters,
}

impl<T: Element + SimElem> Machine<'_, T> {
    /// Launch `k`; `alias` renames kernel arguments to buffer names; `set` overrides scalars.
    fn launch(
        &mut self,
        k: &DynamicKernel,
        geo: attnforge_codegen::args::LaunchGeometry,
        alias: &[(&str, &str)],
        set: &[(&str, Val)],
    ) -> Result<(), ExecError> {
        if geo.grid.contains(&0) {
            return Ok(());
        }
        let buf_name = |n: &str| {
            alias
                .iter()
                .find(|(a, _)| *a == n)
                .map_or(n.to_string(), |(_, b)| b.to_string())
        };
        let scalar = |n: &str| -> Result<Val, ExecError> {
            set.iter()
                .find(|(a, _)| *a == n)
                .map(|(_, v)| *v)
                .or_else(|| self.vals.get(n).copied())
                .ok_or_else(|| {
                    input_err(
                        n,
                        "kernel argument has no value",
                        "report this: exec_dynamic misses a scalar",
                    )
                })
        };
        match self.backend {
            Backend::Sim(cfg) => {
                let sk = sim_stage(k)?;
                // Outputs are taken out of the table while the launch borrows the inputs.
                let mut outs: BTreeMap<String, Buf<T>> = BTreeMap::new();
                for a in &k.args {
                    if let CgArgKind::Ptr { mutable: true, .. } = a.kind {
                        let n = buf_name(&a.name);
                        let b = self.bufs.remove(&n).ok_or_else(|| {
                            input_err(&n, "output buffer missing", "report this: exec_dynamic bug")
                        })?;
                        outs.insert(n, b);
                    }
                }
                let res = {
                    let mut args = Vec::with_capacity(k.args.len());
                    let mut outs_mut: Vec<(&String, &mut Buf<T>)> = outs.iter_mut().collect();
                    for a in &k.args {
                        let n = buf_name(&a.name);
                        args.push(match a.kind {
                            CgArgKind::Ptr { mutable: true, .. } => {
                                let i = outs_mut.iter().position(|(m, _)| **m == n).unwrap_or(0);
                                let (_, b) = outs_mut.swap_remove(i);
                                match b {
                                    Buf::Elem(v) => SimArg::output(v.as_mut_slice()),
                                    Buf::F32(v) => SimArg::output(v.as_mut_slice()),
                                    Buf::I32(v) => SimArg::output(v.as_mut_slice()),
                                }
                            }
                            CgArgKind::Ptr { .. } => match self.bufs.get(&n) {
                                None => SimArg::Null,
                                Some(Buf::Elem(v)) => SimArg::input(v.as_slice()),
                                Some(Buf::F32(v)) => SimArg::input(v.as_slice()),
                                Some(Buf::I32(v)) => SimArg::input(v.as_slice()),
                            },
                            CgArgKind::Scalar(_) => match scalar(&a.name)? {
                                Val::I32(v) => SimArg::I32(v),
                                Val::I64(v) => SimArg::I64(v),
                                Val::F32(v) => SimArg::F32(v),
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
                self.bufs.extend(outs);
                let c = res?;
                self.total = add_counters(&self.total, &c);
                self.stages.push((k.name.clone(), c));
                Ok(())
            }
            Backend::Cuda(ord) => {
                let mut vals = Vec::new();
                for a in &k.args {
                    vals.push(match a.kind {
                        CgArgKind::Scalar(_) => Some(scalar(&a.name)?),
                        CgArgKind::Ptr { .. } => None,
                    });
                }
                cuda::launch(*ord, k, geo, &mut self.bufs, &buf_name, &vals)?;
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

/// The scalar arguments every family's kernels share (sizes and the score scale).
fn shape_scalars<T>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    p: &Shape,
) -> Result<HashMap<&'static str, Val>, ExecError> {
    let rows = p.batch * p.heads_q * p.seq_q;
    let scale = x.scale.unwrap_or(match spec {
        DynamicSpec::Hax { .. } => 1.0,
        _ => 1.0 / (spec.head_dim().get() as f32).sqrt(),
    });
    let mut vals: HashMap<&'static str, Val> = HashMap::new();
    vals.insert("batch", Val::I32(i32_of("q.batch", p.batch)?));
    vals.insert("heads_q", Val::I32(i32_of("q.heads", p.heads_q)?));
    vals.insert("heads_kv", Val::I32(i32_of("k.heads", p.heads_kv)?));
    vals.insert("seq_q", Val::I32(i32_of("q.seq", p.seq_q)?));
    vals.insert("seq_k", Val::I32(i32_of("k.seq", p.seq_k)?));
    vals.insert("seq", Val::I32(i32_of("q.seq", p.seq_q)?));
    vals.insert("rows", Val::I32(i32_of("rows", rows)?));
    vals.insert("scale", Val::F32(scale));
    Ok(vals)
}

/// HAX's buffers and scalars: hyperplanes, key-selection scores, hash codes and lists.
fn hax_buffers<T>(
    x: &DynInputs<T>,
    (k_lsh, k_ks, hash_bits): (usize, usize, usize),
    rows: usize,
    vals: &mut HashMap<&'static str, Val>,
    bufs: &mut BTreeMap<String, Buf<T>>,
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
    let (hp, ksv) = (contiguous(&e.hyperplanes), contiguous(&e.ks));
    let bstride = |t: &Tensor4<f32>| {
        if t.shape.batch == 1 {
            0
        } else {
            (t.shape.heads * t.shape.seq * t.shape.dim) as i64
        }
    };
    vals.insert("nb", Val::I32(nb as i32));
    vals.insert("hp_bstride", Val::I64(bstride(&e.hyperplanes)));
    vals.insert("hp_mode", Val::I32(sharing_mode(e.hyperplane_sharing)));
    vals.insert("ks_bstride", Val::I64(bstride(&e.ks)));
    vals.insert("ks_mode", Val::I32(sharing_mode(e.ks_sharing)));
    vals.insert("k_lsh", Val::I32(i32_of("k_lsh", k_lsh)?));
    vals.insert("k_ks", Val::I32(k_ks as i32));
    bufs.insert("hp".into(), Buf::F32(hp));
    bufs.insert("ks".into(), Buf::F32(ksv));
    for n in ["code_q", "code_k", "lsh_head", "lsh_prev", "ks_thr"] {
        bufs.insert(n.into(), Buf::I32(vec![-7; rows]));
    }
    bufs.insert("ks_idx".into(), Buf::I32(vec![-7; (rows * k_ks).max(1)]));
    Ok(())
}

/// The family's parameters as scalars and its scratch buffers; the names of the index
/// buffers its selection stages write (returned in [`DynRun::indices`]).
fn family_buffers<T>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    p: &Shape,
    vals: &mut HashMap<&'static str, Val>,
    bufs: &mut BTreeMap<String, Buf<T>>,
) -> Result<Vec<&'static str>, ExecError> {
    let rows = p.batch * p.heads_q * p.seq_q;
    let d = spec.head_dim().get();
    let idx_bufs: Vec<&'static str>;
    match *spec {
        DynamicSpec::Landmark { mem_freq, mode, .. } => {
            vals.insert("mem_freq", Val::I32(i32_of("mem_freq", mem_freq)?));
            let w = match mode {
                LandmarkMode::Retrieval { top_k } => top_k,
                LandmarkMode::Train => 0,
            };
            vals.insert("top_k", Val::I32(w as i32));
            vals.insert("sel_width", Val::I32(w as i32));
            if w > 0 {
                bufs.insert("sel".into(), Buf::I32(vec![-7; rows * w]));
            }
            idx_bufs = vec!["sel"];
        }
        DynamicSpec::Topk {
            sink, recent, k, ..
        } => {
            vals.insert("s_start", Val::I32(i32_of("sink", sink)?));
            vals.insert("s_end", Val::I32(i32_of("recent", recent)?));
            vals.insert("topk", Val::I32(k as i32));
            vals.insert("part", Val::I32(0));
            bufs.insert("sel".into(), Buf::I32(vec![-7; rows * k]));
            for n in ["o_a", "o_b"] {
                bufs.insert(n.into(), Buf::F32(vec![0.0; rows * d]));
            }
            for n in ["lse_a", "lse_b"] {
                bufs.insert(n.into(), Buf::F32(vec![0.0; rows]));
            }
            idx_bufs = vec!["sel"];
        }
        DynamicSpec::Cca { group, window, .. } => {
            let pooled = p.seq_q.saturating_sub(window) / group;
            vals.insert("group", Val::I32(i32_of("group", group)?));
            vals.insert("window", Val::I32(i32_of("window", window)?));
            vals.insert("pooled", Val::I32(pooled as i32));
            vals.insert("pool_scale", Val::F32(1.0 / (d as f32).sqrt()));
            let n = (p.batch * p.heads_q * pooled * d).max(1);
            bufs.insert("kbar".into(), Buf::F32(vec![0.0; n]));
            bufs.insert("vbar".into(), Buf::F32(vec![0.0; n]));
            idx_bufs = vec![];
        }
        DynamicSpec::Hax {
            k_lsh,
            k_ks,
            hash_bits,
            ..
        } => {
            hax_buffers(x, (k_lsh, k_ks, hash_bits), rows, vals, bufs)?;
            idx_bufs = vec![
                "code_q", "code_k", "lsh_head", "lsh_prev", "ks_idx", "ks_thr",
            ];
        }
        DynamicSpec::LseMerge { .. } => {
            return Err(input_err(
                "spec",
                "lse_merge takes two partial results, not q/k/v",
                "use merge()",
            ))
        }
    }
    Ok(idx_bufs)
}

/// Launch every stage of the pipeline in order (the split top-k attention twice).
fn launch_stages<T: Element + SimElem>(
    mach: &mut Machine<'_, T>,
    spec: &DynamicSpec,
    p: &Shape,
) -> Result<(), ExecError> {
    for stage in spec.stages() {
        let kern = emit_stage(spec, stage).map_err(ExecError::Spec)?;
        let geo = stage.geometry(spec, p);
        match stage {
            Stage::TopkAttnPart => {
                mach.launch(
                    &kern,
                    geo,
                    &[("o", "o_a"), ("lse", "lse_a")],
                    &[("part", Val::I32(1))],
                )?;
                mach.launch(
                    &kern,
                    geo,
                    &[("o", "o_b"), ("lse", "lse_b")],
                    &[("part", Val::I32(2))],
                )?;
            }
            _ => mach.launch(&kern, geo, &[], &[])?,
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
    let _ = reference_output(spec, x, Precision::Naive)?;
    let d = spec.head_dim().get();
    let p = shape_of(spec, x)?;
    let rows = p.batch * p.heads_q * p.seq_q;
    let mut vals = shape_scalars(spec, x, &p)?;
    let mut indices = BTreeMap::new();
    if rows == 0 {
        let empty = Shape4::new(p.batch, p.heads_q, 0, d);
        return Ok(DynRun {
            output: AttnOutput::from_kernel(empty, &Vec::<T>::new(), &[])?,
            counters: SimCounters::default(),
            stages: Vec::new(),
            indices,
        });
    }
    let qn = if matches!(spec, DynamicSpec::Hax { .. }) {
        ["q2", "k2", "x"]
    } else {
        ["q", "k", "v"]
    };
    let mut bufs: BTreeMap<String, Buf<T>> = BTreeMap::new();
    bufs.insert(qn[0].into(), Buf::Elem(contiguous(&x.q)));
    bufs.insert(qn[1].into(), Buf::Elem(contiguous(&x.k)));
    bufs.insert(qn[2].into(), Buf::Elem(contiguous(&x.v)));
    bufs.insert("o".into(), Buf::Elem(vec![T::from_f64(0.0); rows * d]));
    bufs.insert("lse".into(), Buf::F32(vec![0.0f32; rows]));
    let idx_bufs = family_buffers(spec, x, &p, &mut vals, &mut bufs)?;
    let mut mach = Machine {
        bufs,
        vals,
        backend,
        stages: Vec::new(),
        total: SimCounters::default(),
    };
    launch_stages(&mut mach, spec, &p)?;
    let mut bufs = mach.bufs;
    for n in idx_bufs {
        if let Some(Buf::I32(v)) = bufs.remove(n) {
            indices.insert(n.to_string(), v);
        }
    }
    let (Some(Buf::Elem(o)), Some(Buf::F32(lse))) = (bufs.remove("o"), bufs.remove("lse")) else {
        return Err(input_err(
            "o",
            "output buffers lost",
            "report this: exec_dynamic bug",
        ));
    };
    Ok(DynRun {
        output: AttnOutput::from_kernel(Shape4::new(p.batch, p.heads_q, p.seq_q, d), &o, &lse)?,
        counters: mach.total,
        stages: mach.stages,
        indices,
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
        },
    })
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
    bufs.insert("o_a".to_string(), Buf::F32(f(&a.out)));
    bufs.insert("lse_a".to_string(), Buf::F32(f(&a.lse)));
    bufs.insert("o_b".to_string(), Buf::F32(f(&b.out)));
    bufs.insert("lse_b".to_string(), Buf::F32(f(&b.lse)));
    bufs.insert("o".to_string(), Buf::Elem(vec![T::from_f64(0.0); rows * d]));
    bufs.insert("lse".to_string(), Buf::F32(vec![0.0; rows]));
    let mut vals = HashMap::new();
    vals.insert("rows", Val::I32(i32_of("rows", rows)?));
    let mut mach = Machine {
        bufs,
        vals,
        backend,
        stages: Vec::new(),
        total: SimCounters::default(),
    };
    let p = Shape {
        batch: a.shape.batch,
        heads_q: a.shape.heads,
        heads_kv: a.shape.heads,
        seq_q: a.shape.seq,
        seq_k: a.shape.seq,
    };
    let kern = emit_stage(spec, Stage::LseMerge).map_err(ExecError::Spec)?;
    mach.launch(&kern, Stage::LseMerge.geometry(spec, &p), &[], &[])?;
    let (Some(Buf::Elem(o)), Some(Buf::F32(lse))) =
        (mach.bufs.remove("o"), mach.bufs.remove("lse"))
    else {
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

mod cuda {
    //! The GPU half: compile the stage with NVRTC for the device, upload the buffers the
    //! kernel names, launch through the checked [`GpuKernel::launch`], download its outputs.

    use std::collections::BTreeMap;

    use attnforge_codegen::args::{ArgKind as CgArgKind, LaunchGeometry, Scalar};
    use attnforge_codegen::dynamic::DynamicKernel;
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
        bufs: &mut BTreeMap<String, Buf<T>>,
        buf_name: &dyn Fn(&str) -> String,
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
        let mut dev: Vec<(String, bool, CudaSlice<u8>)> = Vec::new();
        let mut values = Vec::with_capacity(k.args.len());
        for (a, s) in k.args.iter().zip(scalars) {
            values.push(match (a.kind, s) {
                (CgArgKind::Ptr { mutable, .. }, _) => {
                    let n = buf_name(&a.name);
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
                (_, Some(Val::I32(v))) => KernelArgValue::I32(*v),
                (_, Some(Val::I64(v))) => KernelArgValue::I64(*v),
                (_, Some(Val::F32(v))) => KernelArgValue::F32(*v),
                (_, None) => return Err(cuda_err(format!("no value for `{}`", a.name))),
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
