//! Statistics outputs (variants.md section 14, docs/statistics.md) of the serving kernels on
//! the simulator. The varlen / paged forward kernel's sweep writes per-query-block key sums
//! `[B, Hq, ceil(max Sq_b / block_m), R]` with `R` = [`stats_row_keys`] (a bound on every
//! `Sk_b`: the kernel's `layout.stats_keys`); a decode run's sweep is a third launch after the
//! decode kernel and its split merge, on the packed row blocks of the decode grid without
//! splits (`[B, Hq, ceil(Hq / Hkv * max Sq_b / block_m), R]`, each block writing the rows of
//! the heads it holds). The follow-up kernel then runs unchanged on rows of `R` keys. Keys past a
//! sequence's `Sk_b` carry 0: they add nothing to the group reduce, the max-pool (scores are >= 0)
//! or `top_keys` (score > 0 is eligible), so `key_mass[b, h, j]` for `j < Sk_b` is sequence `b`'s
//! own statistic and the rest is 0.
//!
//! Reference: each sequence's weights are the serving reference run on one-hot values (key `j`
//! of every sequence has `v = e_j`, `Dv = R`), turned into statistics by
//! [`reference::key_stats_from_weights`]: the oracle never sees the sweep.

use attnforge_codegen::args::LaunchGeometry;
use attnforge_codegen::emit::{emit_stats_sweep, SymbolStyle};
use attnforge_codegen::prelude::Arch;
use attnforge_codegen::shape::Shape;
use attnforge_codegen::spec::KernelSpec;
use attnforge_codegen::tile::TileConfig;
use attnforge_reference as reference;
use attnforge_reference::{AttnOutput, AttnStats, Element, Packed, PagedCache, Precision};
use attnforge_sim::{Schedule, SimArg, SimConfig, SimElem};

use super::{
    bind_args, host_args, reference_resolved, resolve, simulate_resolved, Outs, Resolved,
    ServingInputs, ServingKeys,
};
use crate::exec::{cached_sim_kernel, input_err, ExecError, RunParams};
use crate::exec_stats::{compare_stats, reduce_sim, stats_params, StatsReport, StatsRun};

/// Keys per statistics row of a serving run (`R`): varlen `Tk` (the packed key rows), paged
/// `max_pages * page_size` (the block table's reach); the kernel's `layout.stats_keys`.
pub fn stats_row_keys<T>(x: &ServingInputs<T>) -> usize {
    match &x.keys {
        ServingKeys::Varlen { k, .. } => k.tokens,
        ServingKeys::Paged {
            k_cache, max_pages, ..
        } => max_pages * k_cache.page_size,
    }
}

/// Run the spec's serving kernel with statistics and the follow-up kernel on the simulator.
/// Varlen / paged: the forward kernel's sweep writes the partials. Decode layouts: the decode
/// kernel (and its split merge), then the sweep kernel on the merged lse
/// ([`attnforge_codegen::emit::emit_stats_sweep`]). `out`/`lse` are `[B = 1, Hq, Tq, D]`
/// packed rows (`VarlenOutput::to_attn_output`); `key_mass: [B, Hq, R]`, `key_score: [B, Hkv,
/// R]`, `top_keys: [B, Hkv, K]`.
pub fn simulate_stats<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
) -> Result<StatsRun, ExecError> {
    let params = stats_params(spec)?;
    let r = resolve(spec, Some(tile), x, p)?;
    let row = stats_row_keys(x);
    let qblocks = stats_query_blocks(spec, tile, &r);
    // zeros, not NaN: a block past its sequence's rows exits before the sweep, and a decode
    // block writes the rows of the heads it holds only
    let mut partial = vec![0.0f32; r.geo.batch * r.heads_q * qblocks * row];
    let (run, _) = if spec.layout.is_decode() {
        let run = simulate_resolved(spec, tile, x, p, cfg, &r, true, &mut [])?;
        decode_sweep(spec, tile, x, p, cfg, &r, &run.0.output, &mut partial)?;
        run
    } else {
        simulate_resolved(spec, tile, x, p, cfg, &r, true, &mut partial)?
    };
    let dims = Shape {
        batch: r.geo.batch,
        heads_q: r.heads_q,
        heads_kv: r.heads_kv,
        seq_q: r.geo.max_seqlen_q,
        seq_k: row,
    };
    let (key_mass, key_score, top_keys) = reduce_sim(dims, &params, qblocks, &partial, cfg)?;
    Ok(StatsRun {
        output: run.output.to_attn_output(),
        key_mass,
        key_score,
        top_keys,
        counters: run.counters,
    })
}

/// Query blocks per (sequence, query head) of the partials: `ceil(max Sq_b / block_m)`, or for
/// a decode kernel its packed row blocks, `ceil(Hq / Hkv * max Sq_b / block_m)` (a head's rows
/// lie in one or two of them; the others stay 0).
fn stats_query_blocks(spec: &KernelSpec, tile: &TileConfig, r: &Resolved) -> usize {
    let rows = if spec.layout.is_decode() {
        r.heads_q / r.heads_kv * r.geo.max_seqlen_q
    } else {
        r.geo.max_seqlen_q
    };
    rows.div_ceil(tile.block_m)
}

/// The statistics sweep of a decode run: its own kernel on the decode grid without splits,
/// with the decode kernel's arguments, reading the merged lse of `merged`.
#[allow(clippy::too_many_arguments)] // the run's inputs, resolved values and output buffers
fn decode_sweep<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    cfg: &SimConfig,
    r: &Resolved,
    merged: &attnforge_reference::VarlenOutput,
    partial: &mut [f32],
) -> Result<(), ExecError> {
    let k = emit_stats_sweep(spec, tile, Arch::Sm90, SymbolStyle::Canonical)
        .map_err(ExecError::Spec)?;
    let kernel = cached_sim_kernel(&k.name, &k.source)?;
    let heads = (r.heads_q, r.heads_kv);
    let geo = LaunchGeometry::decode(spec, tile, r.geo.batch, heads, r.geo.max_seqlen_q, 1);
    if geo.grid.contains(&0) {
        return Ok(());
    }
    let args = host_args(spec, x, p, r)?;
    // f64 from f32: exact back
    let mut lse: Vec<f32> = merged.lse.iter().map(|&v| v as f32).collect();
    let mut o = vec![T::from_f64(0.0); merged.out.len()]; // not read
    let outs = Outs {
        o: Some(SimArg::output(&mut o)),
        lse: Some(SimArg::output(&mut lse)),
        o_part: Some(SimArg::Null),
        lse_part: Some(SimArg::Null),
        stats: Some(SimArg::output(partial)),
    };
    let mut sa = bind_args(&args, x, outs);
    kernel.launch(
        (geo.grid[0], geo.grid[1], geo.grid[2]),
        geo.block[0],
        tile.stats_sweep_smem_bytes(spec),
        &mut sa,
        cfg,
    )?;
    Ok(())
}

/// The reference `out`/`lse` (packed, as [`simulate_stats`]) and statistics at `precision`.
pub fn reference_stats<T: Element>(
    spec: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    precision: Precision,
) -> Result<(AttnOutput, AttnStats), ExecError> {
    let params = stats_params(spec)?;
    let r = resolve(spec, None, x, p)?;
    let out = reference_resolved(spec, x, p, &r, precision)?;
    let row = stats_row_keys(x);
    // The naive path's weights in f32: the one-hot route's naive `P @ V` would round P to T
    // (the mma contract), an error the kernel's f32 sums do not make, so the error scale of
    // the rule would be T's rounding of P. f32 holds every T exactly. LM-Infinite keeps T:
    // its rotated q and k are rounded to T by contract, as the kernel rounds them.
    let w = if precision == Precision::Naive && !spec.mask.lm_infinite_scoring() {
        reference_resolved(spec, &one_hot(&widened(x), row)?, p, &r, precision)?
    } else {
        reference_resolved(spec, &one_hot(x, row)?, p, &r, precision)?
    };
    let mut st = AttnStats {
        batch: r.geo.batch,
        heads_q: x.q.heads,
        heads_kv: r.heads_kv,
        seq_k: row,
        top_k: params.top_k,
        key_mass: Vec::new(),
        key_score: Vec::new(),
        top_keys: Vec::new(),
    };
    for b in 0..r.geo.batch {
        let (q0, q1) = (x.cu_seqlens_q[b] as usize, x.cu_seqlens_q[b + 1] as usize);
        // sequence b's weight rows as a one-batch dense [1, Hq, Sq_b, R] output
        let wb = w.rows_as_dense(q0..q1).map_err(super::serving_err)?;
        let sb = reference::key_stats_from_weights(&wb, r.heads_kv, &params)?;
        st.key_mass.extend(sb.key_mass);
        st.key_score.extend(sb.key_score);
        st.top_keys.extend(sb.top_keys);
    }
    Ok((out.to_attn_output(), st))
}

/// The inputs as f32 (exact for every element type).
fn widened<T: Element>(x: &ServingInputs<T>) -> ServingInputs<f32> {
    let pk =
        |t: &Packed<T>| Packed::from_fn(t.tokens, t.heads, t.dim, |a, h, d| t.get(a, h, d) as f32);
    let pc = |c: &PagedCache<T>| PagedCache {
        data: c.data.iter().map(|e| e.to_f64() as f32).collect(),
        num_pages: c.num_pages,
        page_size: c.page_size,
        heads: c.heads,
        dim: c.dim,
    };
    let keys = match &x.keys {
        ServingKeys::Varlen { k, v, cu_seqlens_k } => ServingKeys::Varlen {
            k: pk(k),
            v: pk(v),
            cu_seqlens_k: cu_seqlens_k.clone(),
        },
        ServingKeys::Paged {
            k_cache,
            v_cache,
            block_table,
            max_pages,
            seqlens_k,
        } => ServingKeys::Paged {
            k_cache: pc(k_cache),
            v_cache: pc(v_cache),
            block_table: block_table.clone(),
            max_pages: *max_pages,
            seqlens_k: seqlens_k.clone(),
        },
    };
    ServingInputs {
        q: pk(&x.q),
        cu_seqlens_q: x.cu_seqlens_q.clone(),
        keys,
    }
}

/// The inputs with one-hot values of `Dv = row` (key `j` of each sequence has `v = e_j`): the
/// attention output row is the weight row. A paged slot holding two different keys (pages
/// shared at different positions) has no one-hot value: an input error naming it.
fn one_hot<T: Element>(x: &ServingInputs<T>, row: usize) -> Result<ServingInputs<T>, ExecError> {
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    let keys = match &x.keys {
        ServingKeys::Varlen {
            k, cu_seqlens_k, ..
        } => {
            let owner = |t: usize| cu_seqlens_k.partition_point(|&c| c as usize <= t) - 1;
            let v = Packed::from_fn(k.tokens, k.heads, row, |t, _, e| {
                if e + cu_seqlens_k[owner(t)] as usize == t {
                    one
                } else {
                    zero
                }
            });
            ServingKeys::Varlen {
                k: k.clone(),
                v,
                cu_seqlens_k: cu_seqlens_k.clone(),
            }
        }
        ServingKeys::Paged {
            k_cache,
            block_table,
            max_pages,
            seqlens_k,
            ..
        } => {
            let ps = k_cache.page_size;
            // the key position each slot holds
            let mut pos = vec![None::<usize>; k_cache.num_pages * ps];
            for (b, &sk) in seqlens_k.iter().enumerate() {
                for j in 0..sk as usize {
                    let slot = block_table[b * max_pages + j / ps] as usize * ps + j % ps;
                    match pos[slot] {
                        Some(o) if o != j => {
                            return Err(input_err(
                                &format!("block_table[{b}][{}]", j / ps),
                                format!("cache slot {slot} holds key {o} of another sequence and key {j} of sequence {b}"),
                                "the statistics reference needs each slot at one key position: share pages only at equal positions",
                            ))
                        }
                        _ => pos[slot] = Some(j),
                    }
                }
            }
            let v_cache =
                PagedCache::from_fn(k_cache.num_pages, ps, k_cache.heads, row, |pg, sl, _, e| {
                    if pos[pg * ps + sl] == Some(e) {
                        one
                    } else {
                        zero
                    }
                });
            ServingKeys::Paged {
                k_cache: k_cache.clone(),
                v_cache,
                block_table: block_table.clone(),
                max_pages: *max_pages,
                seqlens_k: seqlens_k.clone(),
            }
        }
    };
    Ok(ServingInputs {
        q: x.q.clone(),
        cu_seqlens_q: x.cu_seqlens_q.clone(),
        keys,
    })
}

/// Run the statistics of a varlen / paged spec on the simulator and compare `out`/`lse`,
/// `key_mass`, `key_score` and `top_keys` with the reference by the rules of the dense check
/// ([`crate::exec_stats::check_stats`]).
pub fn check_stats<T: Element + SimElem>(
    spec: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
) -> Result<StatsReport, ExecError> {
    let want = reference_stats(spec, x, p, Precision::F64)?;
    let naive = reference_stats(spec, x, p, Precision::Naive)?;
    let run = simulate_stats(spec, tile, x, p, &SimConfig::new(Schedule::Forward))?;
    compare_stats(spec, run, want, naive)
}
