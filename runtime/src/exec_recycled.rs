//! Recycled Attention (variants.md section 16, docs/families/recycled.md): the decode driver.
//!
//! [`run_recycled`] runs the `T` decode steps of a [`DynamicSpec::Recycled`] over a
//! contiguous key cache `k, v: [B, Hkv, Sk, D]`, step `t` being query row `t` of
//! `q: [B, Hq, T, D]` at position `p_t = Sk - T + t`:
//! - the schedule (full or partial per batch element) is the reference's
//!   [`attnforge_reference::recycled_schedule`] on the un-rotated queries `q_raw`, computed on
//!   the host in f64;
//! - a full step runs the dense forward kernel with statistics
//!   ([`RecycledConfig::full_step_spec`]: `reduce = max`, max-pool, `top_keys` of `K`) on the
//!   query row and the key prefix `0..=p_t` (lengths are runtime arguments: one compiled
//!   kernel for every step), then the statistics follow-up kernel; its `top_keys` become the
//!   recycled set of each kv head;
//! - a partial step runs the top-k gather kernel (`topk_attn`, empty static window) over a
//!   per-row key list: the recycled set (lowest score dropped first when it and the new keys
//!   exceed `K`; ties drop the higher index) plus every key appended since the last full step.
//!
//! [`check_recycled`] compares every step with [`attnforge_reference::recycled_attention`]:
//! the same kinds and key sets, out/lse by the oracle of variants.md section 0.
//!
//! ```no_run
//! use attnforge_runtime::exec::Backend;
//! use attnforge_runtime::exec_recycled::{check_recycled, RecycledInputs};
//! use attnforge_codegen::dynamic::DynamicSpec;
//! use attnforge_codegen::spec::{DType, HeadDim};
//! use attnforge_reference::{Shape4, Tensor4};
//! let spec = DynamicSpec::Recycled { dtype: DType::F32, head_dim: HeadDim::D64,
//!     recycle_size: Some(8), stride: 2, threshold_milli: 850, pool: 7 };
//! let t = |s| Tensor4::<f32>::from_fn(Shape4::new(1, 1, s, 64), |_, _, i, d| ((i * 7 + d * 3) % 5) as f32 - 2.0);
//! let x = RecycledInputs::new(t(4), t(4), t(100), t(100));
//! let r = check_recycled(&spec, &x, &Backend::sim()).unwrap();
//! for s in &r.run.steps { println!("{:?} {} keys", s.kinds, s.keys_read); }
//! ```

use attnforge_codegen::args::ArgKind as CgArgKind;
use attnforge_codegen::dynamic::{
    emit_stage, validate_dynamic, DynArgRole, DynBuffer, DynScalar, DynamicSpec, RecycledConfig,
    Stage,
};
use attnforge_codegen::shape::Shape;
use attnforge_codegen::tile::{default_tile, Arch};
use attnforge_reference as reference;
use attnforge_reference::{
    assert_close, AttnOptions, AttnOutput, CloseReport, Element, Precision, Shape4, StepKind,
    Tensor4, Tolerance,
};
use attnforge_sim::{SimArg, SimConfig, SimCounters, SimElem};

use crate::exec::{input_err, reference_dtype, Backend, ExecError, Inputs, RunParams};

/// The inputs of a recycled run: rotated queries `q: [B, Hq, T, D]`, the same queries
/// un-rotated `q_raw` (the similarity test), the key cache `k` and `v: [B, Hkv, Sk, D]`.
#[derive(Clone, Debug)]
pub struct RecycledInputs<T> {
    /// Rotated queries of the `T` steps (attention).
    pub q: Tensor4<T>,
    /// Un-rotated queries of the same steps (the cosine schedule).
    pub q_raw: Tensor4<T>,
    /// Key cache (already rotated, at their original positions).
    pub k: Tensor4<T>,
    /// Value cache.
    pub v: Tensor4<T>,
    /// Score scale; `None`: `1/sqrt(D)`.
    pub scale: Option<f32>,
}

impl<T> RecycledInputs<T> {
    /// q, q_raw, k, v with the default scale.
    pub fn new(q: Tensor4<T>, q_raw: Tensor4<T>, k: Tensor4<T>, v: Tensor4<T>) -> Self {
        RecycledInputs {
            q,
            q_raw,
            k,
            v,
            scale: None,
        }
    }
}

/// One decode step as the kernels ran it.
#[derive(Clone, Debug)]
pub struct RecycledStepRun {
    /// Full or partial, per batch element.
    pub kinds: Vec<StepKind>,
    /// The key set per `(b, kv head)` (index `b * Hkv + g`), ascending.
    pub keys: Vec<Vec<usize>>,
    /// Keys read: the sum of the set sizes over `(b, kv head)` (counted on the host).
    pub keys_read: usize,
    /// The recycled set per `(b, kv head)` after the step (the last full step's
    /// `top_keys`, descending score).
    pub recycled: Vec<Vec<usize>>,
    /// `out: [B, Hq, 1, D]`, `lse: [B, Hq, 1]`.
    pub out: AttnOutput,
    /// The simulator's counters of the step's launches (forward with statistics: tiles
    /// visited; gather: keys gathered per query head).
    pub counters: SimCounters,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct RecycledRun {
    /// `K` used (the spec's, or 1/8 of the cache at step 0).
    pub recycle_size: usize,
    /// Every step in order.
    pub steps: Vec<RecycledStepRun>,
}

impl RecycledRun {
    /// `out: [B, Hq, T, D]` and `lse: [B, Hq, T]` of every step, row `t` from step `t`.
    pub fn stacked(&self) -> AttnOutput {
        let first = self.steps.first().map(|s| s.out.shape);
        let (b, hq, d) = first.map_or((0, 0, 0), |s| (s.batch, s.heads, s.dim));
        let t = self.steps.len();
        let mut o = AttnOutput::empty(Shape4::new(b, hq, t, d));
        for (i, s) in self.steps.iter().enumerate() {
            for r in 0..b * hq {
                let dst = r * t + i;
                o.out[dst * d..(dst + 1) * d].copy_from_slice(&s.out.out[r * d..(r + 1) * d]);
                o.lse[dst] = s.out.lse[r];
            }
        }
        o
    }
}

/// The error of the generic pipeline entry points for this family.
pub fn not_a_pipeline() -> ExecError {
    input_err(
        "spec",
        "recycled is a decode driver over T steps (q, q_raw, k, v), not a one-shot pipeline",
        "use attnforge_runtime::exec_recycled::run_recycled / check_recycled",
    )
}

fn config(spec: &DynamicSpec) -> Result<RecycledConfig, ExecError> {
    validate_dynamic(spec).map_err(ExecError::Spec)?;
    RecycledConfig::of(spec).ok_or_else(|| {
        input_err(
            "spec",
            format!("`{}` is not a recycled spec", spec.canonical_name()),
            "use exec_dynamic for the other families",
        )
    })
}

/// The reference's parameters for a run whose `K` is `k`.
fn reference_params(c: &RecycledConfig, k: usize) -> reference::RecycledParams {
    reference::RecycledParams {
        recycle_size: Some(k),
        stride: c.stride,
        threshold: c.threshold(),
        pool: c.pool,
    }
}

/// Shape checks, each naming its field: `q_raw` of `q`'s shape, `T <= Sk`, `T >= 1`,
/// `Hq % Hkv == 0`, `D` the spec's, `v` matching `k`.
fn check_inputs<T: Element>(c: &RecycledConfig, x: &RecycledInputs<T>) -> Result<(), ExecError> {
    let (q, k, v) = (x.q.shape, x.k.shape, x.v.shape);
    let d = c.head_dim.get();
    let bad = |field: &str, message: String, fix: &str| Err(input_err(field, message, fix));
    if x.q_raw.shape != q {
        return bad(
            "q_raw.shape",
            format!("{:?}, but q is {q:?}", x.q_raw.shape),
            "pass the un-rotated queries of the same steps, [B, Hq, T, D]",
        );
    }
    if q.dim != d || k.dim != d || v.dim != d {
        return bad(
            "q.dim / k.dim / v.dim",
            format!(
                "{} / {} / {}; the spec's head_dim is {d}",
                q.dim, k.dim, v.dim
            ),
            "pass tensors whose last dimension is the spec's head_dim (Dv = D)",
        );
    }
    if k.batch != q.batch || v.batch != q.batch || v.heads != k.heads || v.seq != k.seq {
        return bad(
            "k.shape / v.shape",
            format!("q {q:?}, k {k:?}, v {v:?}"),
            "k and v are [B, Hkv, Sk, D] with q's batch",
        );
    }
    if k.heads == 0 || q.heads % k.heads != 0 {
        return bad(
            "q.heads",
            format!("Hq = {} is not a multiple of Hkv = {}", q.heads, k.heads),
            "use Hq % Hkv == 0 (GQA) with Hkv >= 1",
        );
    }
    if q.seq == 0 || q.seq > k.seq {
        return bad(
            "q.seq",
            format!(
                "T = {} decode steps over a cache of Sk = {} keys",
                q.seq, k.seq
            ),
            "give 1 <= T <= Sk steps: step t sits at position Sk - T + t",
        );
    }
    for (f, t) in [("q", &x.q), ("q_raw", &x.q_raw), ("k", &x.k), ("v", &x.v)] {
        let sh = t.shape;
        let dims = [sh.batch, sh.heads, sh.seq, sh.dim];
        let last: usize = dims.iter().zip(t.strides).map(|(n, st)| (n - 1) * st).sum();
        if dims.contains(&0) || last >= t.data.len() {
            return bad(
                &format!("{f}.data"),
                format!(
                    "{} elements for shape {sh:?} (strides {:?})",
                    t.data.len(),
                    t.strides
                ),
                "pass a non-empty tensor whose data covers its shape",
            );
        }
    }
    Ok(())
}

/// `t[bs, :, seq, :]` as a contiguous tensor (`bs` the batch elements).
fn select<T: Element>(t: &Tensor4<T>, bs: &[usize], seq: std::ops::Range<usize>) -> Tensor4<T> {
    let sh = Shape4::new(bs.len(), t.shape.heads, seq.len(), t.shape.dim);
    Tensor4::from_fn(sh, |b, h, s, d| {
        T::from_f64(t.get(bs[b], h, seq.start + s, d))
    })
}

fn contiguous<T: Element>(t: &Tensor4<T>) -> Vec<T> {
    let all: Vec<usize> = (0..t.shape.batch).collect();
    select(t, &all, 0..t.shape.seq).data
}

fn add_counters(a: &mut SimCounters, c: &SimCounters) {
    for (x, y) in a.raw.iter_mut().zip(c.raw) {
        *x += y;
    }
    a.tiles_full += c.tiles_full;
    a.tiles_partial += c.tiles_partial;
    a.mask_evals += c.mask_evals;
    a.keys_gathered += c.keys_gathered;
    a.select_work += c.select_work;
}

/// What stays fixed over a run.
struct Driver<'a, T> {
    spec: &'a DynamicSpec,
    c: RecycledConfig,
    x: &'a RecycledInputs<T>,
    k_size: usize,
    cfg: SimConfig,
    /// Contiguous k and v for the gather kernel.
    kc: Vec<T>,
    vc: Vec<T>,
}

impl<T: Element + SimElem> Driver<'_, T> {
    /// Full step `t` for the batch elements `bs`: forward with statistics on the key prefix;
    /// writes the rows of `out` and the new recycled sets.
    fn full_step(
        &self,
        t: usize,
        bs: &[usize],
        out: &mut AttnOutput,
        recycled: &mut [Vec<usize>],
    ) -> Result<SimCounters, ExecError> {
        let (hq, hkv, d) = (
            self.x.q.shape.heads,
            self.x.k.shape.heads,
            self.c.head_dim.get(),
        );
        let pos = self.x.k.shape.seq - self.x.q.shape.seq + t;
        let spec = self.c.full_step_spec(self.k_size);
        let tile = default_tile(&spec, Arch::Sm80).ok_or_else(|| {
            input_err(
                "spec",
                "no default tile for the full-step kernel",
                "report this: every dense spec with statistics has one",
            )
        })?;
        let inputs = Inputs::new(
            select(&self.x.q, bs, t..t + 1),
            select(&self.x.k, bs, 0..pos + 1),
            select(&self.x.v, bs, 0..pos + 1),
        );
        let rp = RunParams {
            scale: self.x.scale,
            ..RunParams::default()
        };
        let st = crate::exec_stats::simulate_stats(&spec, &tile, &inputs, &rp, &self.cfg)?;
        for (i, &b) in bs.iter().enumerate() {
            for h in 0..hq {
                let r = b * hq + h;
                out.out[r * d..(r + 1) * d].copy_from_slice(st.output.row(i, h, 0));
                out.lse[r] = st.output.lse_at(i, h, 0);
            }
            for g in 0..hkv {
                let at = (i * hkv + g) * self.k_size;
                recycled[b * hkv + g] = st.top_keys[at..at + self.k_size]
                    .iter()
                    .filter_map(|&j| usize::try_from(j).ok())
                    .collect();
            }
        }
        Ok(st.counters)
    }

    /// Partial step `t`: the gather kernel over `sets` (per `(b, kv head)`; empty for the
    /// batch elements of a full step); writes their rows of `out`.
    fn partial_step(
        &self,
        t: usize,
        sets: &[Vec<usize>],
        partial: &[usize],
        out: &mut AttnOutput,
    ) -> Result<SimCounters, ExecError> {
        let (bn, hq, hkv, sk) = (
            self.x.q.shape.batch,
            self.x.q.shape.heads,
            self.x.k.shape.heads,
            self.x.k.shape.seq,
        );
        let d = self.c.head_dim.get();
        let width = sets.iter().map(Vec::len).max().unwrap_or(0).max(1);
        // One -1-terminated list per query row (b, h): its kv head's set.
        let mut sel = vec![-1i32; bn * hq * width];
        for b in partial {
            for h in 0..hq {
                let set = &sets[b * hkv + h / (hq / hkv)];
                for (r, &j) in set.iter().enumerate() {
                    sel[(b * hq + h) * width + r] = j as i32;
                }
            }
        }
        let all: Vec<usize> = (0..bn).collect();
        let qc = select(&self.x.q, &all, t..t + 1).data;
        let mut o = vec![T::from_f64(0.0); bn * hq * d];
        let mut lse = vec![0.0f32; bn * hq];
        let stage = Stage::TopkAttn;
        let k = emit_stage(self.spec, stage).map_err(ExecError::Spec)?;
        let p = Shape {
            batch: bn,
            heads_q: hq,
            heads_kv: hkv,
            seq_q: 1,
            seq_k: sk,
        };
        let geo = stage.geometry(self.spec, &p);
        let kernel = crate::exec_dynamic::sim_stage(&k)?;
        let scale = self.x.scale.unwrap_or(1.0 / (d as f32).sqrt());
        let int = |v: usize, f: &str| -> Result<SimArg<'_>, ExecError> {
            i32::try_from(v).map(SimArg::I32).map_err(|_| {
                input_err(
                    f,
                    format!("{v} does not fit an i32"),
                    "use a smaller problem",
                )
            })
        };
        let counters = {
            let (mut o_slot, mut lse_slot) = (Some(o.as_mut_slice()), Some(lse.as_mut_slice()));
            let mut args = Vec::with_capacity(k.args.len());
            for (a, r) in k.args.iter().zip(&k.roles) {
                args.push(match *r {
                    DynArgRole::Buffer(DynBuffer::Q) => SimArg::input(qc.as_slice()),
                    DynArgRole::Buffer(DynBuffer::K) => SimArg::input(self.kc.as_slice()),
                    DynArgRole::Buffer(DynBuffer::V) => SimArg::input(self.vc.as_slice()),
                    DynArgRole::Buffer(DynBuffer::Sel) => SimArg::input(sel.as_slice()),
                    DynArgRole::Buffer(DynBuffer::O) => {
                        SimArg::output(o_slot.take().unwrap_or_default())
                    }
                    DynArgRole::Buffer(DynBuffer::Lse) => {
                        SimArg::output(lse_slot.take().unwrap_or_default())
                    }
                    DynArgRole::Scalar(DynScalar::Batch) => int(bn, "q.batch")?,
                    DynArgRole::Scalar(DynScalar::HeadsQ) => int(hq, "q.heads")?,
                    DynArgRole::Scalar(DynScalar::HeadsKv) => int(hkv, "k.heads")?,
                    DynArgRole::Scalar(DynScalar::SeqQ) => SimArg::I32(1),
                    DynArgRole::Scalar(DynScalar::SeqK) => int(sk, "k.seq")?,
                    DynArgRole::Scalar(DynScalar::Sink | DynScalar::Recent | DynScalar::Part) => {
                        SimArg::I32(0)
                    }
                    DynArgRole::Scalar(DynScalar::TopkK) => int(width, "recycle_size")?,
                    DynArgRole::Scalar(DynScalar::Scale) => SimArg::F32(scale),
                    _ => {
                        return Err(input_err(
                            &a.name,
                            format!("unexpected argument of {} ({:?})", k.name, a.kind),
                            "report this: exec_recycled and the topk_attn stage disagree",
                        ))
                    }
                });
            }
            debug_assert!(k.args.iter().all(|a| !matches!(
                a.kind,
                CgArgKind::Ptr { mutable: true, .. }
            ) || a.name == "o"
                || a.name == "lse"));
            kernel.launch(
                (geo.grid[0], geo.grid[1], geo.grid[2]),
                geo.block[0],
                geo.dynamic_smem_bytes as usize,
                &mut args,
                &self.cfg,
            )?
        };
        for &b in partial {
            for h in 0..hq {
                let r = b * hq + h;
                for (dst, src) in out.out[r * d..(r + 1) * d].iter_mut().zip(&o[r * d..]) {
                    *dst = src.to_f64();
                }
                out.lse[r] = f64::from(lse[r]);
            }
        }
        Ok(counters)
    }
}

/// Run the `T` decode steps of `spec` on the simulator (see the module docs). Errors name
/// their field: the spec's parameters, `q_raw.shape`, `q.seq` (`T > Sk`), `q.heads`, ...
pub fn run_recycled<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &RecycledInputs<T>,
    backend: &Backend,
) -> Result<RecycledRun, ExecError> {
    let c = config(spec)?;
    check_inputs(&c, x)?;
    let cfg = match backend {
        Backend::Sim(cfg) => *cfg,
        Backend::Cuda(_) | Backend::Reference => {
            return Err(input_err(
                "backend",
                "the recycled driver runs on the simulator only (GPU driver not built; the reference is reference_recycled)",
                "use Backend::sim()",
            ))
        }
    };
    let (bn, hq, steps) = (x.q.shape.batch, x.q.shape.heads, x.q.shape.seq);
    let (hkv, sk, d) = (x.k.shape.heads, x.k.shape.seq, c.head_dim.get());
    let first = sk - steps;
    let k_size = c.recycle_size_at(first);
    let kinds = reference::recycled_schedule(&x.q_raw, &reference_params(&c, k_size))?;
    let drv = Driver {
        spec,
        c,
        x,
        k_size,
        cfg,
        kc: contiguous(&x.k),
        vc: contiguous(&x.v),
    };
    let mut recycled: Vec<Vec<usize>> = vec![Vec::new(); bn * hkv];
    let mut last_full = vec![first; bn];
    let mut out_steps = Vec::with_capacity(steps);
    for (t, kinds_t) in kinds.into_iter().enumerate() {
        let pos = first + t;
        let full: Vec<usize> = (0..bn).filter(|&b| kinds_t[b] == StepKind::Full).collect();
        let partial: Vec<usize> = (0..bn)
            .filter(|&b| kinds_t[b] == StepKind::Partial)
            .collect();
        let mut out = AttnOutput::empty(Shape4::new(bn, hq, 1, d));
        let mut counters = SimCounters::default();
        if !full.is_empty() {
            add_counters(
                &mut counters,
                &drv.full_step(t, &full, &mut out, &mut recycled)?,
            );
        }
        let mut sets: Vec<Vec<usize>> = vec![Vec::new(); bn * hkv];
        for &b in &full {
            last_full[b] = pos;
            for g in 0..hkv {
                sets[b * hkv + g] = (0..=pos).collect();
            }
        }
        for &b in &partial {
            let new = last_full[b] + 1..pos + 1;
            let keep = k_size.saturating_sub(new.len());
            for g in 0..hkv {
                // `recycled` is in descending score order (ties: lower index first): keeping
                // its front drops the lowest scores first, ties the higher index first.
                let mut s: Vec<usize> = recycled[b * hkv + g].iter().take(keep).copied().collect();
                s.extend(new.clone());
                s.sort_unstable();
                sets[b * hkv + g] = s;
            }
        }
        if !partial.is_empty() {
            add_counters(
                &mut counters,
                &drv.partial_step(t, &sets, &partial, &mut out)?,
            );
        }
        out_steps.push(RecycledStepRun {
            kinds: kinds_t,
            keys_read: sets.iter().map(Vec::len).sum(),
            keys: sets,
            recycled: recycled.clone(),
            out,
            counters,
        });
    }
    Ok(RecycledRun {
        recycle_size: k_size,
        steps: out_steps,
    })
}

/// The reference's steps ([`reference::recycled_attention`]) in `precision`, with the
/// driver's `K` and input checks.
pub fn reference_recycled<T: Element>(
    spec: &DynamicSpec,
    x: &RecycledInputs<T>,
    precision: Precision,
) -> Result<Vec<reference::RecycledStep>, ExecError> {
    let c = config(spec)?;
    check_inputs(&c, x)?;
    let k_size = c.recycle_size_at(x.k.shape.seq - x.q.shape.seq);
    let mut opts = AttnOptions {
        scale: None,
        precision,
    };
    if let Some(s) = x.scale {
        opts = opts.with_scale(f64::from(s));
    }
    Ok(reference::recycled_attention(
        &x.q,
        &x.q_raw,
        &x.k,
        &x.v,
        &reference_params(&c, k_size),
        &opts,
    )?)
}

/// Verdict of [`check_recycled`].
#[derive(Clone, Debug)]
pub struct RecycledCheck {
    /// The run.
    pub run: RecycledRun,
    /// The oracle's report per step.
    pub close: Vec<CloseReport>,
}

/// Run on the simulator and compare every step with the reference: the same kinds, the
/// same key sets and recycled sets (exactly), out/lse by the oracle of section 0
/// (`Tolerance::for_dtype`, f64 reference vs the naive reference in the kernel's
/// precision). A difference is an [`ExecError::Input`] naming the step (`steps[t].<what>`).
pub fn check_recycled<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &RecycledInputs<T>,
    backend: &Backend,
) -> Result<RecycledCheck, ExecError> {
    let run = run_recycled(spec, x, backend)?;
    let want = reference_recycled(spec, x, Precision::F64)?;
    let naive = reference_recycled(spec, x, Precision::Naive)?;
    let tol = Tolerance::for_dtype(reference_dtype(spec.dtype()));
    let mut close = Vec::with_capacity(run.steps.len());
    for (t, (got, (r, n))) in run.steps.iter().zip(want.iter().zip(&naive)).enumerate() {
        let differ = |what: &str, g: String, w: String| {
            input_err(
                &format!("steps[{t}].{what}"),
                format!("kernel {g}, reference {w}"),
                "report this: the driver and recycled_attention disagree",
            )
        };
        if got.kinds != r.kinds {
            return Err(differ(
                "kinds",
                format!("{:?}", got.kinds),
                format!("{:?}", r.kinds),
            ));
        }
        if got.keys != r.keys {
            return Err(differ(
                "keys",
                format!("{:?}", got.keys),
                format!("{:?}", r.keys),
            ));
        }
        if got.recycled != r.recycled {
            let (g, w) = (format!("{:?}", got.recycled), format!("{:?}", r.recycled));
            return Err(differ("recycled", g, w));
        }
        let rep = assert_close(&got.out, &r.out, &n.out, tol.rtol, tol.atol)
            .map_err(|e| differ("out", e.to_string(), "within tolerance".into()))?;
        close.push(rep);
    }
    Ok(RecycledCheck { run, close })
}
