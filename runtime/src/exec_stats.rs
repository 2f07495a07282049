//! Attention statistics outputs (variants.md section 14, docs/statistics.md) on the
//! simulator: the forward kernel of a spec with [`StatsSpec`] (its statistics sweep writes
//! per-query-block key sums), then the follow-up kernel
//! ([`attnforge_codegen::stats::emit_stats_reduce`]); the reference
//! ([`attnforge_reference::attention_stats`], or the one-hot route for block-sparse lists) and
//! the comparison with the oracle of variants.md section 0.
//!
//! ```no_run
//! use attnforge_runtime::exec::{Inputs, RunParams};
//! use attnforge_runtime::exec_stats::check_stats;
//! use attnforge_codegen::prelude::*;
//! use attnforge_codegen::spec::StatsSpec;
//! use attnforge_reference::{Shape4, Tensor4};
//! let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None)
//!     .with_stats(StatsSpec { top_k: Some(4), ..StatsSpec::default() });
//! let tile = default_tile(&spec, Arch::Sm80).unwrap();
//! let t = |s| Tensor4::<f32>::from_fn(Shape4::new(1, 2, s, 64), |_, h, i, d| ((h + i * d) % 7) as f32 / 7.0);
//! let r = check_stats(&spec, &tile, &Inputs::new(t(37), t(37), t(37)), &RunParams::default()).unwrap();
//! println!("key_mass error ratio {}", r.key_mass.ratio);
//! ```

use attnforge_codegen::args::{ArgRole, SizeArg, StatsArg};
use attnforge_codegen::spec::{KernelSpec, StatReduce, StatsSpec};
use attnforge_codegen::stats::{emit_stats_reduce, STATS_REDUCE_SMEM_BYTES, STATS_REDUCE_THREADS};
use attnforge_codegen::tile::TileConfig;
use attnforge_reference as reference;
use attnforge_reference::{
    assert_close, AttnOptions, AttnOutput, AttnStats, CloseReport, Element, ErrorStat, Precision,
    Shape4, Tolerance,
};
use attnforge_sim::{Schedule, SimArg, SimConfig, SimCounters, SimElem};

use crate::exec::{
    cached_sim_kernel, host_args, input_err, reference_dtype, reference_lists, reference_mask,
    reference_score, resolve, sim_args, sim_kernel, ExecError, HostArg, Inputs, RunParams,
};

/// The statistics parameters of a spec in the reference's terms (a spec without `stats`
/// is an input error naming the field).
pub fn stats_params(spec: &KernelSpec) -> Result<reference::StatsParams, ExecError> {
    let st: StatsSpec = spec.stats.ok_or_else(|| {
        input_err(
            "stats",
            "the spec asks for no statistics outputs",
            "set `stats` in the spec (KernelSpec::with_stats, or `stats = { .. }` in a spec file)",
        )
    })?;
    Ok(reference::StatsParams {
        reduce: match st.reduce {
            StatReduce::Sum => reference::StatReduce::Sum,
            StatReduce::Max => reference::StatReduce::Max,
        },
        pool: st.pool,
        top_k: st.top_k.unwrap_or(0),
    })
}

/// What the kernels wrote: the forward's `out` and `lse`, and the statistics.
#[derive(Clone, Debug)]
pub struct StatsRun {
    /// `out` and `lse` of the forward kernel with statistics.
    pub output: AttnOutput,
    /// `key_mass: [B, Hq, Sk]`.
    pub key_mass: Vec<f32>,
    /// `key_score: [B, Hkv, Sk]`.
    pub key_score: Vec<f32>,
    /// `top_keys: [B, Hkv, K]`, -1 padded.
    pub top_keys: Vec<i32>,
    /// The forward kernel's work counters.
    pub counters: SimCounters,
}

/// Run the spec's forward kernel with statistics and the follow-up kernel on the simulator.
pub fn simulate_stats<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<StatsRun, ExecError> {
    let params = stats_params(spec)?;
    let r = resolve(spec, x, p)?;
    let d = r.dims;
    let qblocks = d.seq_q.div_ceil(tile.block_m);
    let args = host_args(spec, x, p, &r)?;
    let mut o = vec![T::from_f64(0.0); d.batch * d.heads_q * d.seq_q * spec.head_dim.get()];
    let mut lse = vec![0.0f32; d.batch * d.heads_q * d.seq_q];
    // NaN: an entry the forward kernel fails to write poisons key_mass (the kernel zeroes
    // the keys its block does not visit)
    let mut partial = vec![f32::NAN; d.batch * d.heads_q * qblocks * d.seq_k];
    let geo = attnforge_codegen::args::LaunchGeometry::new(spec, tile, d.batch, d.heads_q, d.seq_q);
    let kernel = sim_kernel(spec, tile)?;
    let counters = {
        let at = args.iter().position(|a| *a == HostArg::StatsPartial);
        let at = at.ok_or_else(|| {
            input_err(
                "stats_partial",
                "the kernel has no statistics argument",
                "report this: the argument table and the spec disagree",
            )
        })?;
        let mut sa = sim_args(
            &args,
            x,
            Some(SimArg::output(&mut o)),
            Some(SimArg::output(&mut lse)),
        );
        sa[at] = SimArg::output(&mut partial);
        kernel.launch(
            (geo.grid[0], geo.grid[1], geo.grid[2]),
            geo.block[0],
            geo.dynamic_smem_bytes as usize,
            &mut sa,
            cfg,
        )?
    };
    let (key_mass, key_score, top_keys) = reduce_sim(d, &params, qblocks, &partial, cfg)?;
    let shape = Shape4::new(d.batch, d.heads_q, d.seq_q, spec.head_dim.get());
    Ok(StatsRun {
        output: AttnOutput::from_kernel(shape, &o, &lse)?,
        key_mass,
        key_score,
        top_keys,
        counters,
    })
}

/// `key_mass`, `key_score`, `top_keys`.
pub(crate) type ReducedStats = (Vec<f32>, Vec<f32>, Vec<i32>);

/// The follow-up kernel on the partial sums `[B, Hq, qblocks, d.seq_k]` (a serving layout
/// passes its padded row length as `seq_k`): arguments filled by an exhaustive match on
/// their roles.
pub(crate) fn reduce_sim(
    d: attnforge_codegen::shape::Shape,
    params: &reference::StatsParams,
    qblocks: usize,
    partial: &[f32],
    cfg: &SimConfig,
) -> Result<ReducedStats, ExecError> {
    let k = emit_stats_reduce();
    let kernel = cached_sim_kernel(&k.name, &k.source)?;
    let mut key_mass = vec![0.0f32; d.batch * d.heads_q * d.seq_k];
    let mut key_score = vec![0.0f32; d.batch * d.heads_kv * d.seq_k];
    let mut raw = vec![0.0f32; d.batch * d.heads_kv * d.seq_k];
    let mut top = vec![0i32; d.batch * d.heads_kv * params.top_k];
    {
        let (mut km, mut ks, mut rw, mut tk) = (
            Some(&mut key_mass),
            Some(&mut key_score),
            Some(&mut raw),
            Some(&mut top),
        );
        let mut sa = Vec::with_capacity(k.args.len());
        for a in &k.args {
            let i32_of = |v: usize| SimArg::I32(v as i32);
            sa.push(match a.role {
                ArgRole::Stats(s) => match s {
                    StatsArg::Partial => SimArg::input(partial),
                    StatsArg::KeyMass => {
                        SimArg::output(km.take().expect("one key_mass").as_mut_slice())
                    }
                    StatsArg::KeyScore => {
                        SimArg::output(ks.take().expect("one key_score").as_mut_slice())
                    }
                    StatsArg::ScoreRaw => {
                        SimArg::output(rw.take().expect("one raw").as_mut_slice())
                    }
                    StatsArg::TopKeys => match tk.take().expect("one top_keys") {
                        t if t.is_empty() => SimArg::Null,
                        t => SimArg::output(t.as_mut_slice()),
                    },
                    StatsArg::QBlocks => i32_of(qblocks),
                    StatsArg::ReduceMax => {
                        i32_of(usize::from(params.reduce == reference::StatReduce::Max))
                    }
                    StatsArg::Pool => i32_of(params.pool.unwrap_or(1)),
                    StatsArg::TopK => i32_of(params.top_k),
                },
                ArgRole::Size(s) => i32_of(match s {
                    SizeArg::Batch => d.batch,
                    SizeArg::HeadsQ => d.heads_q,
                    SizeArg::HeadsKv => d.heads_kv,
                    SizeArg::SeqQ => d.seq_q,
                    SizeArg::SeqK => d.seq_k,
                }),
                ArgRole::Tensor(_)
                | ArgRole::Stride { .. }
                | ArgRole::Scale
                | ArgRole::DocIds
                | ArgRole::DocBatchStride
                | ArgRole::MaskParam { .. }
                | ArgRole::BlockList(_)
                | ArgRole::ScoreParam
                | ArgRole::Serving(_)
                | ArgRole::UserParam { .. } => {
                    return Err(input_err(
                        &a.arg.name,
                        "a forward-kernel argument in the statistics follow-up kernel's list",
                        "report this: the argument table and the kernel disagree",
                    ))
                }
            });
        }
        kernel.launch(
            (d.heads_kv as u32, d.batch as u32, 1),
            STATS_REDUCE_THREADS as u32,
            STATS_REDUCE_SMEM_BYTES,
            &mut sa,
            cfg,
        )?;
    }
    Ok((key_mass, key_score, top))
}

/// The reference statistics at `precision` (f64, or the naive same-precision path): the
/// attention and its statistics from [`reference::attention_stats`]; block-sparse lists
/// and LM-Infinite through their weights ([`reference::one_hot_values`],
/// [`reference::key_stats_from_weights`]).
pub fn reference_stats<T: Element>(
    spec: &KernelSpec,
    x: &Inputs<T>,
    p: &RunParams,
    precision: Precision,
) -> Result<(AttnOutput, AttnStats), ExecError> {
    let params = stats_params(spec)?;
    let r = resolve(spec, x, p)?;
    let opts = AttnOptions {
        scale: Some(f64::from(r.scale)),
        precision,
    };
    let d = r.dims;
    if spec.mask.lm_infinite_scoring() {
        // its own entry point (two rotated scoring branches): the weights are its output on
        // one-hot values
        let lm =
            reference::LmInfiniteParams::from_values(&crate::exec::named_values(spec, &r.mask));
        let out = reference::lm_infinite_attention(&x.q, &x.k, &x.v, &lm, &opts)?;
        let one_hot = reference::one_hot_values::<T>(d.batch, d.heads_kv, d.seq_k);
        let w = reference::lm_infinite_attention(&x.q, &x.k, &one_hot, &lm, &opts)?;
        return Ok((
            out,
            reference::key_stats_from_weights(&w, d.heads_kv, &params)?,
        ));
    }
    let mask = reference_mask(spec, &r, p)?;
    let score = reference_score(spec, &r, p)?;
    if let attnforge_codegen::spec::Mask::BlockSparse { .. } = spec.mask {
        let l = r.lists.as_ref().expect("resolved lists");
        let rl = reference_lists(spec, l, r.dims)?;
        let out = reference::block_sparse_attention(&x.q, &x.k, &x.v, &rl, &mask, &score, &opts)?;
        let one_hot = reference::one_hot_values::<T>(d.batch, d.heads_kv, d.seq_k);
        let w = reference::block_sparse_attention(&x.q, &x.k, &one_hot, &rl, &mask, &score, &opts)?;
        let st = reference::key_stats_from_weights(&w, d.heads_kv, &params)?;
        return Ok((out, st));
    }
    Ok(reference::attention_stats(
        &x.q, &x.k, &x.v, &mask, &score, &params, &opts,
    )?)
}

/// Verdict of a statistics check.
#[derive(Clone, Debug)]
pub struct StatsReport {
    /// `out` and `lse` against the oracle (the forward kernel with statistics).
    pub close: CloseReport,
    /// `key_mass` against the oracle.
    pub key_mass: ErrorStat,
    /// `key_score` against the oracle.
    pub key_score: ErrorStat,
    /// `top_keys` positions that differ from the f64 reference as a near-tie (allowed).
    pub top_near_ties: usize,
    /// `top_keys` entries compared.
    pub top_entries: usize,
    /// What the kernels wrote.
    pub run: StatsRun,
}

/// The tolerance of the statistics: the rule of variants.md section 0 with the dtype's
/// documented figures (`rtol = 2`; `atol` f32 1e-5, f16 1e-3, bf16 8e-3), the rule `out` and
/// `lse` are held to. Why the dtype's and not f32's although the sums are f32: every weight
/// is `P = exp(s - lse)` with the forward kernel's lse, so the statistics inherit the lse's
/// error (its score rounding differs from the sweep's f32 dot product by a few ulp of |s|),
/// and lse is held to the dtype's rule. Measured (bf16, d128, |s| ~ 300): the key_mass error
/// is 3.3x the naive path's, above `rtol = 2` with f32's `atol`; docs/statistics.md.
pub fn stats_tolerance(dtype: attnforge_codegen::spec::DType) -> Tolerance {
    Tolerance::for_dtype(reference_dtype(dtype))
}

/// `max |K - R| <= rtol max |N - R| + atol` over one statistic (`name` in the error).
pub fn close_stat(
    name: &str,
    kernel: &[f32],
    refr: &[f64],
    naive: &[f64],
    tol: Tolerance,
) -> Result<ErrorStat, ExecError> {
    if kernel.len() != refr.len() || naive.len() != refr.len() {
        return Err(input_err(
            name,
            format!(
                "lengths differ: kernel {}, reference {}, naive {}",
                kernel.len(),
                refr.len(),
                naive.len()
            ),
            "report this: the kernel and the reference disagree on the shape",
        ));
    }
    let mut st = ErrorStat::default();
    for (i, ((&k, &r), &n)) in kernel.iter().zip(refr).zip(naive).enumerate() {
        let e = (f64::from(k) - r).abs();
        // a NaN error is taken (and then fails the bound)
        if e.is_nan() || e > st.max_err {
            st.max_err = e;
            st.at.col = Some(i);
        }
        let ne = (n - r).abs();
        if ne.is_finite() && ne > st.naive_err {
            st.naive_err = ne;
        }
    }
    st.bound = tol.rtol * st.naive_err + tol.atol;
    st.ratio = if st.max_err == 0.0 {
        0.0
    } else if st.naive_err == 0.0 {
        f64::INFINITY
    } else {
        st.max_err / st.naive_err
    };
    if st.max_err <= st.bound {
        Ok(st)
    } else {
        Err(input_err(
            name,
            format!(
                "max |kernel - reference| = {:e} at element {} exceeds the bound {:e} (rtol {} x naive {:e} + atol {:e})",
                st.max_err,
                st.at.col.unwrap_or(0),
                st.bound,
                tol.rtol,
                st.naive_err,
                tol.atol
            ),
            "a kernel bug: compare with `attnforge check` of the spec without stats",
        ))
    }
}

/// The `top_keys` rule (docs/statistics.md): (1) exact against a selection from the kernel's
/// own `key_score` (`reference::top_keys`, ties by lower index, score > 0, -1 padded); (2)
/// against the f64 reference, each position holds the reference's key, or both keys' f64
/// scores (0 for -1) lie within `bound` of each other (a near-tie that rounding may order
/// either way). Returns the number of near-tie positions.
pub fn check_top_keys(run: &StatsRun, refr: &AttnStats, bound: f64) -> Result<usize, ExecError> {
    let (k, sk) = (refr.top_k, refr.seq_k);
    let mut near = 0;
    for row in 0..refr.batch * refr.heads_kv {
        let (b, g) = (row / refr.heads_kv, row % refr.heads_kv);
        let kscore: Vec<f64> = run.key_score[row * sk..(row + 1) * sk]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let got: Vec<i64> = run.top_keys[row * k..(row + 1) * k]
            .iter()
            .map(|&x| i64::from(x))
            .collect();
        let own = reference::top_keys(&kscore, k);
        if got != own {
            return Err(input_err(
                "top_keys",
                format!("(b={b}, g={g}): kernel {got:?}, selection from its own key_score {own:?}"),
                "a bug of the selection in af_stats_reduce (cuda/af_stats.cuh)",
            ));
        }
        let rs = refr.score(b, g);
        let at = |j: i64| if j < 0 { 0.0 } else { rs[j as usize] };
        for (t, (&kj, &rj)) in got.iter().zip(refr.top(b, g)).enumerate() {
            if kj == rj {
                continue;
            }
            if (at(kj) - at(rj)).abs() > bound {
                return Err(input_err(
                    "top_keys",
                    format!(
                        "(b={b}, g={g}) position {t}: kernel key {kj} (f64 score {:e}), reference key {rj} (f64 score {:e}): not a near-tie (bound {bound:e})",
                        at(kj),
                        at(rj)
                    ),
                    "a kernel bug (key_score passed, so the ranking differs)",
                ));
            }
            near += 1;
        }
    }
    Ok(near)
}

/// Run the statistics on the simulator and compare `out`/`lse`, `key_mass`, `key_score` and
/// `top_keys` with the reference (variants.md sections 0 and 14).
pub fn check_stats<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &Inputs<T>,
    p: &RunParams,
) -> Result<StatsReport, ExecError> {
    let run = simulate_stats(spec, tile, x, p, &SimConfig::new(Schedule::Forward))?;
    let want = reference_stats(spec, x, p, Precision::F64)?;
    let naive = reference_stats(spec, x, p, Precision::Naive)?;
    compare_stats(spec, run, want, naive)
}

/// The verdict of a run against the f64 reference and the naive path (`out`, `lse` and the
/// statistics): the one comparison of every layout.
pub(crate) fn compare_stats(
    spec: &KernelSpec,
    run: StatsRun,
    (r_out, r_st): (AttnOutput, AttnStats),
    (n_out, n_st): (AttnOutput, AttnStats),
) -> Result<StatsReport, ExecError> {
    let tol = Tolerance::for_dtype(reference_dtype(spec.dtype));
    let close = assert_close(&run.output, &r_out, &n_out, tol.rtol, tol.atol).map_err(|e| {
        input_err(
            "out",
            e.to_string(),
            "a kernel bug: the forward with statistics differs",
        )
    })?;
    let st = stats_tolerance(spec.dtype);
    let key_mass = close_stat(
        "key_mass",
        &run.key_mass,
        &r_st.key_mass,
        &n_st.key_mass,
        st,
    )?;
    let key_score = close_stat(
        "key_score",
        &run.key_score,
        &r_st.key_score,
        &n_st.key_score,
        st,
    )?;
    let top_near_ties = check_top_keys(&run, &r_st, key_score.bound)?;
    Ok(StatsReport {
        close,
        key_mass,
        key_score,
        top_near_ties,
        top_entries: run.top_keys.len(),
        run,
    })
}
