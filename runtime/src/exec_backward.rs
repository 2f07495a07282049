//! Backward runs (variants.md section 12): the forward kernel, then the three backward
//! kernels of [`attnforge_codegen::backward`] on the simulator, checked against the
//! reference's analytic backward ([`attnforge_reference::attention_backward`]) with the
//! tolerance rule of section 0 applied to each gradient: `max|K - R| <= rtol max|N - R| + atol`
//! with `R` the f64 backward and `N` the same backward in the kernel's precision.
//!
//! Inputs are validated before anything runs: `dout` must have the forward output's shape
//! and be finite, `dlse` must have one finite value per query row; an error names the field
//! and the fix, and nothing is written.

use attnforge_codegen::args::BlockListPart;
use attnforge_codegen::backward::{
    backward_supported, emit_backward, grad_args, BackwardKernels, BackwardTile, GradArg,
    ParamGradLayout,
};
use attnforge_codegen::blocks::BlockLists;
use attnforge_codegen::spec::{ScoreMod, UserParamKind};
use attnforge_codegen::tile::{Arch, TileConfig};
use attnforge_reference::{
    self as reference, attention_backward, AttnGrads, AttnOptions, AttnOutput, BackwardVariant,
    DiffScoreMod, Element, Precision, ScoreParamGrads, Shape4, Tensor4, Tolerance,
};
use attnforge_sim::{SimArg, SimConfig, SimElem};

use crate::exec::{
    cached_sim_kernel, host_args, input_err, reference_dtype, reference_mask, resolve, sim_args,
    simulate_raw, Backend, ExecError, Inputs, Resolved, RunParams, UserValue,
};
use attnforge_codegen::spec::KernelSpec;

/// Upstream gradients of a backward run.
#[derive(Clone, Copy, Debug)]
pub struct Upstream<'a, T> {
    /// `dL/dout`: `[B, Hq, Sq, D]` (any strides with a contiguous head dimension).
    pub dout: &'a Tensor4<T>,
    /// `dL/dlse`: `[B, Hq, Sq]` row-major, when the lse feeds later computation.
    pub dlse: Option<&'a [f32]>,
}

/// What the backward kernels returned.
#[derive(Clone, Debug)]
pub struct KernelGrads {
    /// `dq: [B, Hq, Sq, D]`, `dk`/`dv: [B, Hkv, Sk, D]`, values of the input dtype as f64.
    pub dq: Tensor4<f64>,
    /// See `dq`.
    pub dk: Tensor4<f64>,
    /// See `dq`.
    pub dv: Tensor4<f64>,
    /// The score parameter's gradient (softcap: one value; ALiBi: one per query head),
    /// summed over the per-block partials in a fixed order.
    pub score_params: ScoreParamGrads,
    /// The forward the gradients were taken at (the forward kernel's `out`, `lse`).
    pub forward: AttnOutput,
}

/// One gradient's comparison with the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheck {
    /// `dq`, `dk`, `dv` or `score_params`.
    pub name: &'static str,
    /// `max |K - R|`.
    pub max_err: f64,
    /// Flat index of `max_err`.
    pub at: usize,
    /// `max |N - R|`.
    pub naive_err: f64,
    /// `rtol * naive_err + atol`.
    pub bound: f64,
}

impl GradCheck {
    /// Whether the kernel's gradient is within the bound.
    pub fn passed(&self) -> bool {
        self.max_err <= self.bound
    }
}

/// What every backward run needs, checked and resolved before any kernel runs.
struct Prepared<'a, T> {
    r: Resolved,
    dout: Vec<T>,
    dlse: Option<&'a [f32]>,
    kernels: BackwardKernels,
    args: Vec<crate::exec::host::HostArg>,
    tlists: Option<BlockLists>,
    theta: Vec<i32>,
    theta_len: usize,
    dparam_len: usize,
}

fn prepare<'a, T: Element>(
    spec: &KernelSpec,
    bwd_tile: &BackwardTile,
    x: &Inputs<T>,
    up: Upstream<'a, T>,
    p: &RunParams,
    arch: Arch,
) -> Result<Prepared<'a, T>, ExecError> {
    backward_supported(spec).map_err(ExecError::Spec)?;
    let r = resolve(spec, x, p)?;
    let (dout, dlse) = check_upstream(spec, &r, up)?;
    let kernels = emit_backward(spec, bwd_tile, arch).map_err(ExecError::Spec)?;
    let theta = theta_offsets(spec, p)?;
    let theta_len = theta.last().copied().unwrap_or(0) as usize;
    Ok(Prepared {
        dparam_len: dparam_len(&kernels, &r, bwd_tile, theta_len),
        args: host_args(spec, x, p, &r)?,
        tlists: r.lists.as_ref().map(BlockLists::transposed),
        r,
        dout,
        dlse,
        kernels,
        theta,
        theta_len,
    })
}

impl<T: Element> Prepared<'_, T> {
    /// The gradients as the kernels wrote them (values of `T`), widened to f64, and the
    /// parameter partials summed.
    fn grads(
        &self,
        (dq, dk, dv): (&[T], &[T], &[T]),
        dparam: &[f32],
        forward: AttnOutput,
    ) -> Result<KernelGrads, ExecError> {
        let d = self.r.dims;
        let dim = self.kernels.head_dim;
        let to64 = |shape: Shape4, v: &[T]| {
            Tensor4::from_vec(shape, v.iter().map(|x| x.to_f64()).collect())
        };
        Ok(KernelGrads {
            dq: to64(Shape4::new(d.batch, d.heads_q, d.seq_q, dim), dq)?,
            dk: to64(Shape4::new(d.batch, d.heads_kv, d.seq_k, dim), dk)?,
            dv: to64(Shape4::new(d.batch, d.heads_kv, d.seq_k, dim), dv)?,
            score_params: reduce_params(&self.kernels, dparam, &self.r, self.theta_len),
            forward,
        })
    }
}

/// Run the forward kernel `tile` and the backward kernels `bwd_tile` of `spec` on the
/// simulator.
pub fn simulate_backward<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    bwd_tile: &BackwardTile,
    x: &Inputs<T>,
    up: Upstream<'_, T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<KernelGrads, ExecError> {
    let pr = prepare(spec, bwd_tile, x, up, p, Arch::Sm90)?;
    let (o, lse, _) = simulate_raw(spec, tile, x, p, &pr.r, cfg)?;
    let d = pr.r.dims;
    let (q_elems, kv_elems) = (
        d.batch * d.heads_q * d.seq_q * pr.kernels.head_dim,
        d.batch * d.heads_kv * d.seq_k * pr.kernels.head_dim,
    );
    let mut bufs = GradBuffers::<T> {
        delta: vec![0.0; d.batch * d.heads_q * d.seq_q],
        dq: vec![T::from_f64(0.0); q_elems],
        dk: vec![T::from_f64(0.0); kv_elems],
        dv: vec![T::from_f64(0.0); kv_elems],
        dparam: vec![0.0; pr.dparam_len],
        dq_accum: vec![0.0; if bwd_tile.atomic_dq { q_elems } else { 0 }],
    };
    let grads = grad_args(spec);
    for l in pr.kernels.launches(&d, pr.theta_len) {
        if l.grid.contains(&0) {
            continue; // nothing to do (empty sequences)
        }
        let kernel = cached_sim_kernel(&l.kernel.name, &l.kernel.source)?;
        let mut sargs = sim_args(
            &pr.args,
            x,
            Some(SimArg::input(o.as_slice())),
            Some(SimArg::input(lse.as_slice())),
        );
        bufs.bind(
            &mut sargs,
            &grads,
            &pr.dout,
            pr.dlse,
            (&pr.theta, pr.theta_len),
            pr.tlists.as_ref(),
        );
        kernel.launch(
            (l.grid[0] as u32, l.grid[1] as u32, l.grid[2] as u32),
            l.threads as u32,
            l.smem_bytes,
            &mut sargs,
            cfg,
        )?;
    }
    let out_shape = Shape4::new(d.batch, d.heads_q, d.seq_q, pr.kernels.head_dim);
    let forward = AttnOutput::from_kernel(out_shape, &o, &lse)?;
    pr.grads((&bufs.dq, &bufs.dk, &bufs.dv), &bufs.dparam, forward)
}

/// Offsets of a user score function's parameters in the learnable vector (one per parameter
/// and one past the last): an `f32` scalar takes one element, an `&[f32]` table its length.
fn theta_offsets(spec: &KernelSpec, p: &RunParams) -> Result<Vec<i32>, ExecError> {
    let ScoreMod::User(f) = &spec.score else {
        return Ok(Vec::new());
    };
    let mut off = vec![0i32];
    for q in &f.params {
        let n = match (q.kind, p.user.get(&q.name)) {
            (UserParamKind::F32, _) => 1,
            (UserParamKind::ArrayF32, Some(UserValue::Floats(v))) => v.len(),
            (UserParamKind::ArrayF32, _) => {
                return Err(input_err(
                    &format!("user.{}", q.name),
                    "missing table of a learnable parameter",
                    format!(
                        "pass RunParams::with_user(\"{}\", UserValue::Floats(..))",
                        q.name
                    ),
                ))
            }
            _ => 0,
        };
        off.push(off.last().copied().unwrap_or(0) + n as i32);
    }
    Ok(off)
}

/// The kernels' output and scratch buffers.
struct GradBuffers<T> {
    delta: Vec<f32>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
    dparam: Vec<f32>,
    /// The atomic-dQ variant's f32 sums (empty otherwise: a null argument).
    dq_accum: Vec<f32>,
}

impl<T: SimElem> GradBuffers<T> {
    /// Append the [`GradArg`]s in kernel order.
    fn bind<'a>(
        &'a mut self,
        sargs: &mut Vec<SimArg<'a>>,
        grads: &[(GradArg, attnforge_codegen::args::KernelArg)],
        dout: &'a [T],
        dlse: Option<&'a [f32]>,
        theta: (&'a [i32], usize),
        tlists: Option<&'a BlockLists>,
    ) {
        let mut delta = Some(SimArg::output(self.delta.as_mut_slice()));
        let mut dq = Some(SimArg::output(self.dq.as_mut_slice()));
        let mut dk = Some(SimArg::output(self.dk.as_mut_slice()));
        let mut dv = Some(SimArg::output(self.dv.as_mut_slice()));
        let or_null = |v: &'a mut Vec<f32>| {
            Some(if v.is_empty() {
                SimArg::Null
            } else {
                SimArg::output(v.as_mut_slice())
            })
        };
        let mut dparam = or_null(&mut self.dparam);
        let mut dq_accum = or_null(&mut self.dq_accum);
        for &(g, _) in grads {
            sargs.push(match g {
                GradArg::DOut => SimArg::input(dout),
                GradArg::DLse => dlse.map_or(SimArg::Null, SimArg::input),
                GradArg::Delta => delta.take().expect("one delta"),
                GradArg::DQ => dq.take().expect("one dq"),
                GradArg::DK => dk.take().expect("one dk"),
                GradArg::DV => dv.take().expect("one dv"),
                GradArg::DParam => dparam.take().expect("one dparam"),
                GradArg::DQAccum => dq_accum.take().expect("one dq_accum"),
                GradArg::ThetaOffsets => SimArg::input(theta.0),
                GradArg::ThetaLen => SimArg::I32(theta.1 as i32),
                GradArg::Transposed(part) => transposed_arg(part, tlists),
            });
        }
    }
}

/// One part of the transposed block lists.
fn transposed_arg(part: BlockListPart, l: Option<&BlockLists>) -> SimArg<'_> {
    let Some(l) = l else {
        return SimArg::Null;
    };
    fn ints(v: &[i32]) -> SimArg<'_> {
        if v.is_empty() {
            SimArg::Null
        } else {
            SimArg::input(v)
        }
    }
    match part {
        BlockListPart::FullNum => ints(&l.full_num),
        BlockListPart::FullIdx => ints(&l.full_idx),
        BlockListPart::PartialNum => ints(&l.partial_num),
        BlockListPart::PartialIdx => ints(&l.partial_idx),
        BlockListPart::Batches => SimArg::I32(l.batches as i32),
        BlockListPart::Heads => SimArg::I32(l.heads as i32),
        BlockListPart::Rows => SimArg::I32(l.rows as i32),
        BlockListPart::Width => SimArg::I32(l.width as i32),
    }
}

/// `dout` contiguous and `dlse`, both checked: shapes, finiteness.
fn check_upstream<'a, T: Element>(
    spec: &KernelSpec,
    r: &Resolved,
    up: Upstream<'a, T>,
) -> Result<(Vec<T>, Option<&'a [f32]>), ExecError> {
    let d = r.dims;
    let want = Shape4::new(d.batch, d.heads_q, d.seq_q, spec.head_dim.get());
    if up.dout.shape != want {
        return Err(input_err(
            "dout",
            format!(
                "shape {:?}, the forward's output is {:?}",
                up.dout.shape, want
            ),
            "pass dO with the shape of out: [batch, heads_q, seq_q, head_dim]",
        ));
    }
    if up.dout.strides[3] != 1 {
        return Err(input_err(
            "dout",
            format!("head-dimension stride {}", up.dout.strides[3]),
            "make the head dimension contiguous (stride 1)",
        ));
    }
    if T::DTYPE != reference_dtype(spec.dtype) {
        return Err(input_err(
            "dout",
            format!(
                "element type {}, the spec's dtype is {:?}",
                T::DTYPE.name(),
                spec.dtype
            ),
            "pass dO in the dtype of q, k, v",
        ));
    }
    let mut dense = Vec::with_capacity(want.numel());
    for b in 0..want.batch {
        for h in 0..want.heads {
            for s in 0..want.seq {
                for e in 0..want.dim {
                    let at = b * up.dout.strides[0]
                        + h * up.dout.strides[1]
                        + s * up.dout.strides[2]
                        + e;
                    let v = *up.dout.data.get(at).ok_or_else(|| {
                        input_err(
                            "dout",
                            "strides reach past the data",
                            "pass strides within the buffer",
                        )
                    })?;
                    if !v.to_f64().is_finite() {
                        return Err(input_err(
                            "dout",
                            format!("{} at (b={b}, h={h}, row={s}, col={e})", v.to_f64()),
                            "upstream gradients must be finite; find where the NaN/inf comes from",
                        ));
                    }
                    dense.push(v);
                }
            }
        }
    }
    if let Some(l) = up.dlse {
        let rows = d.batch * d.heads_q * d.seq_q;
        if l.len() != rows {
            return Err(input_err(
                "dlse",
                format!("{} values for {rows} query rows", l.len()),
                "pass one value per (batch, head, query row), row-major",
            ));
        }
        if let Some(i) = l.iter().position(|x| !x.is_finite()) {
            return Err(input_err(
                "dlse",
                format!("{} at flat index {i}", l[i]),
                "upstream gradients must be finite",
            ));
        }
    }
    Ok((dense, up.dlse))
}

/// Elements of `dparam`: per dQ block, one (softcap, ALiBi) or `theta_len` (user functions).
fn dparam_len(k: &BackwardKernels, r: &Resolved, t: &BackwardTile, theta_len: usize) -> usize {
    let d = r.dims;
    let blocks = d.batch * d.heads_q * d.seq_q.div_ceil(t.block_m);
    match k.param {
        None => 0,
        Some(ParamGradLayout::Learnable) => blocks * theta_len,
        Some(_) => blocks,
    }
}

/// The score parameters' gradient from the dQ kernel's per-block partials, summed in a fixed
/// order (batch, head, query tile): softcap one total, ALiBi one per query head, a user
/// function one per element of its learnable vector.
fn reduce_params(
    k: &BackwardKernels,
    partial: &[f32],
    r: &Resolved,
    theta_len: usize,
) -> ScoreParamGrads {
    let t = &k.tile;
    let Some(layout) = k.param else {
        return ScoreParamGrads::None;
    };
    let d = r.dims;
    let tiles = d.seq_q.div_ceil(t.block_m);
    let width = if layout == ParamGradLayout::Learnable {
        theta_len
    } else {
        1
    };
    let mut per_head = vec![vec![0.0f64; width]; d.heads_q];
    for b in 0..d.batch {
        for (h, acc) in per_head.iter_mut().enumerate() {
            for i in 0..tiles {
                let block = (b * d.heads_q + h) * tiles + i;
                for (e, a) in acc.iter_mut().enumerate() {
                    *a += f64::from(partial[block * width + e]);
                }
            }
        }
    }
    match layout {
        ParamGradLayout::Scalar => ScoreParamGrads::Softcap(per_head.iter().map(|v| v[0]).sum()),
        ParamGradLayout::PerHead => ScoreParamGrads::Alibi(per_head.iter().map(|v| v[0]).collect()),
        ParamGradLayout::Learnable => ScoreParamGrads::Function(
            (0..theta_len)
                .map(|e| per_head.iter().map(|v| v[e]).sum())
                .collect(),
        ),
    }
}

/// The reference backward of the spec (f64, or the naive same-precision path).
pub fn reference_backward<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    up: Upstream<'_, T>,
    p: &RunParams,
    precision: Precision,
) -> Result<AttnGrads, ExecError> {
    backward_supported(spec).map_err(ExecError::Spec)?;
    let r = resolve(spec, x, p)?;
    let mask = reference_mask(spec, &r, p)?;
    let diff = match &spec.score {
        ScoreMod::User(_) => {
            DiffScoreMod::Function(p.host_score_diff.clone().ok_or_else(|| {
                input_err(
                "host_score_diff",
                "the spec has a user score function but no Rust twin with derivatives was given",
                "pass RunParams::host_score_diff (#[attnforge::score(backward)]'s host_score_diff)",
            )
            })?)
        }
        _ => DiffScoreMod::from_builtin(&crate::exec::reference_score(spec, &r, p)?)?,
    };
    let opts = AttnOptions {
        scale: Some(f64::from(r.scale)),
        precision,
    };
    let dlse: Option<Vec<f64>> = up.dlse.map(|l| l.iter().map(|&v| f64::from(v)).collect());
    if spec.mask.lm_infinite_scoring() {
        let lm =
            reference::LmInfiniteParams::from_values(&crate::exec::named_values(spec, &r.mask));
        let variant = BackwardVariant::from(&lm);
        return Ok(attention_backward(
            &x.q,
            &x.k,
            &x.v,
            up.dout,
            dlse.as_deref(),
            &variant,
            &opts,
        )?);
    }
    let rl = match &r.lists {
        Some(l) => Some(crate::exec::reference_lists(spec, l, r.dims)?),
        None => None,
    };
    let variant = match &rl {
        Some(lists) => BackwardVariant::BlockSparse {
            lists,
            mask: &mask,
            score_mod: &diff,
        },
        None => BackwardVariant::Masked {
            mask: &mask,
            score_mod: &diff,
        },
    };
    Ok(attention_backward(
        &x.q,
        &x.k,
        &x.v,
        up.dout,
        dlse.as_deref(),
        &variant,
        &opts,
    )?)
}

/// Every gradient of `k` against the f64 reference `r` with the naive run `n` as the error
/// scale (variants.md section 0, per gradient; parameter gradients with f32's atol).
pub fn compare_grads(
    k: &KernelGrads,
    r: &AttnGrads,
    n: &AttnGrads,
    tol: Tolerance,
) -> Vec<GradCheck> {
    let mut out = vec![
        grad_check("dq", &k.dq.data, &r.dq.data, &n.dq.data, tol),
        grad_check("dk", &k.dk.data, &r.dk.data, &n.dk.data, tol),
        grad_check("dv", &k.dv.data, &r.dv.data, &n.dv.data, tol),
    ];
    let flat = |g: &ScoreParamGrads| match g {
        ScoreParamGrads::Softcap(x) => vec![*x],
        ScoreParamGrads::Alibi(v) | ScoreParamGrads::Function(v) => v.clone(),
        _ => Vec::new(),
    };
    let (kp, rp, np) = (
        flat(&k.score_params),
        flat(&r.score_params),
        flat(&n.score_params),
    );
    if !rp.is_empty() {
        let ptol = Tolerance {
            rtol: tol.rtol,
            atol: Tolerance::for_dtype(reference::DType::F32).atol * (1.0 + max_abs(&rp)),
        };
        out.push(grad_check("score_params", &kp, &rp, &np, ptol));
    }
    out
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

fn grad_check(name: &'static str, k: &[f64], r: &[f64], n: &[f64], tol: Tolerance) -> GradCheck {
    let mut max_err = if k.len() == r.len() {
        0.0
    } else {
        f64::INFINITY
    };
    let mut at = 0;
    for (i, (a, b)) in k.iter().zip(r).enumerate() {
        let e = (a - b).abs();
        if e > max_err || e.is_nan() {
            max_err = if e.is_nan() { f64::INFINITY } else { e };
            at = i;
        }
    }
    let naive_err = n
        .iter()
        .zip(r)
        .map(|(a, b)| (a - b).abs())
        .filter(|e| e.is_finite())
        .fold(0.0, f64::max);
    GradCheck {
        name,
        max_err,
        at,
        naive_err,
        bound: tol.rtol * naive_err + tol.atol,
    }
}

/// The forward kernel and the backward kernels on GPU `ordinal` (inputs validated as for the
/// simulator); `timed` extra runs measure the seconds per forward and per backward.
#[allow(clippy::too_many_arguments)]
pub fn run_backward_cuda<T: Element>(
    spec: &KernelSpec,
    tile: &TileConfig,
    bwd_tile: &BackwardTile,
    x: &Inputs<T>,
    up: Upstream<'_, T>,
    p: &RunParams,
    timed: usize,
    ordinal: usize,
) -> Result<(KernelGrads, (f64, f64)), ExecError> {
    let (major, _) = crate::Gpu::new(ordinal)
        .map_err(|e| ExecError::Cuda(e.to_string()))?
        .compute_capability();
    let pr = prepare(spec, bwd_tile, x, up, p, Arch::for_capability(major))?;
    let host = crate::exec_cuda::GradHost {
        dout: &pr.dout,
        dlse: pr.dlse,
        tlists: pr.tlists.as_ref(),
        theta: &pr.theta,
        theta_len: pr.theta_len,
        dparam_len: pr.dparam_len,
        dq_accum_len: if bwd_tile.atomic_dq {
            let d = pr.r.dims;
            d.batch * d.heads_q * d.seq_q * pr.kernels.head_dim
        } else {
            0
        },
    };
    let g = crate::exec_cuda::backward(
        spec,
        tile,
        &pr.kernels,
        x,
        &pr.args,
        pr.r.dims,
        &host,
        timed,
        ordinal,
    )?;
    Ok((
        pr.grads((&g.dq, &g.dk, &g.dv), &g.dparam, g.forward)?,
        g.seconds,
    ))
}

/// Run the backward on `backend` (simulator or GPU) and compare it with the reference;
/// `Err(Mismatch)` naming the first gradient over its bound.
pub fn check_backward<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    bwd_tile: &BackwardTile,
    x: &Inputs<T>,
    up: Upstream<'_, T>,
    p: &RunParams,
    backend: &Backend,
) -> Result<(KernelGrads, Vec<GradCheck>), ExecError> {
    let k = match backend {
        Backend::Sim(cfg) => simulate_backward(spec, tile, bwd_tile, x, up, p, cfg)?,
        Backend::Cuda(ordinal) => run_backward_cuda(spec, tile, bwd_tile, x, up, p, 0, *ordinal)?.0,
        Backend::Reference => {
            return Err(input_err(
                "backend",
                "the reference checks nothing against itself",
                "pass the simulator or a GPU backend",
            ))
        }
    };
    let r = reference_backward(spec, x, up, p, Precision::F64)?;
    let n = reference_backward(spec, x, up, p, Precision::Naive)?;
    let checks = compare_grads(&k, &r, &n, Tolerance::for_dtype(T::DTYPE));
    if let Some(c) = checks.iter().find(|c| !c.passed()) {
        return Err(ExecError::Mismatch {
            kernel: format!("{}_bwd", attnforge_codegen::name::canonical_name(spec)),
            detail: format!(
                "{}: max error {:.3e} at flat index {} over the bound {:.3e} (naive error {:.3e})",
                c.name, c.max_err, c.at, c.bound, c.naive_err
            ),
        });
    }
    Ok((k, checks))
}
