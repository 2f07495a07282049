//! Ring attention (point-to-point K/V rotation with a log-sum-exp merge per step; backward
//! with dK/dV returned to their owners), skipping every block the mask leaves empty.
//!
//! Schedule: at step `s` (`0..W`) rank `r` attends to the keys of rank `src = r - s` and
//! hands its own K/V to `dst = r + s` (mod W). Each transfer goes straight from the owner to
//! the consumer (one hop, the same bytes per step as relaying around the ring when nothing is
//! skipped), so a block that rank `dst` does not need is simply never sent. In the backward,
//! step `s` recomputes the same block, and its dK/dV contribution goes back to `src` in the
//! same step; owners add the contributions in step order (deterministic).

use attnforge_reference::{lse_merge, AttnOutput, Shape4, Tensor4};

use crate::comm::{CommElem, Communicator};
use crate::engine::{StepBlock, StepEngine, StepGrad};
use crate::error::{invalid, CpError};
use crate::layout::{check_shard, contiguous, CpProblem, Layout};

/// What a rank did in a ring pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Blocks computed (including the rank's own block).
    pub computed: usize,
    /// Blocks skipped because the mask leaves them empty (never sent, never computed).
    pub skipped: usize,
    /// Bytes this rank sent.
    pub bytes_sent: usize,
}

/// A rank's forward result.
#[derive(Debug, Clone, PartialEq)]
pub struct RankForward {
    /// `out`/`lse` of the rank's query rows (shard order).
    pub out: AttnOutput,
    /// Steps computed and skipped, bytes sent.
    pub stats: RingStats,
}

/// A rank's backward result (f64, shard order).
#[derive(Debug, Clone, PartialEq)]
pub struct RankGrads {
    /// `dL/dq` of the rank's query rows.
    pub dq: Tensor4<f64>,
    /// `dL/dk` of the rank's keys (summed over every rank's queries).
    pub dk: Tensor4<f64>,
    /// `dL/dv` of the rank's keys.
    pub dv: Tensor4<f64>,
    /// Steps computed and skipped, bytes sent.
    pub stats: RingStats,
}

/// A rank's input shards.
#[derive(Debug, Clone, Copy)]
pub struct Shards<'a, T> {
    /// `[B, Hq, rows of this rank, D]`.
    pub q: &'a Tensor4<T>,
    /// `[B, Hkv, keys of this rank, D]`.
    pub k: &'a Tensor4<T>,
    /// `[B, Hkv, keys of this rank, Dv]`.
    pub v: &'a Tensor4<T>,
}

/// A K and V block.
type KeyValue<T> = (Tensor4<T>, Tensor4<T>);

struct Ctx {
    rank: usize,
    world: usize,
    needs: Vec<Vec<bool>>,
}

fn setup<C: Communicator, T: CommElem>(
    comm: &C,
    problem: &CpProblem,
    layout: &Layout,
    x: &Shards<'_, T>,
) -> Result<Ctx, CpError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    layout.check(problem, world)?;
    let p = problem;
    check_shard(
        x.q,
        "q shard",
        Shape4::new(p.batch, p.heads_q, layout.q.count(rank), p.dim),
    )?;
    check_shard(
        x.k,
        "k shard",
        Shape4::new(p.batch, p.heads_kv, layout.k.count(rank), p.dim),
    )?;
    check_shard(
        x.v,
        "v shard",
        Shape4::new(p.batch, p.heads_kv, layout.k.count(rank), p.dim_v),
    )?;
    if p.heads_kv == 0 || !p.heads_q.is_multiple_of(p.heads_kv) {
        return Err(invalid("heads_kv", p.heads_kv, "Hkv must divide Hq"));
    }
    Ok(Ctx {
        rank,
        world,
        needs: layout.block_needs(problem)?,
    })
}

/// K and V of rank `src` (`kv_len` keys): fetched at step `s` of the schedule.
fn rotate_kv<C: Communicator, T: CommElem>(
    comm: &C,
    ctx: &Ctx,
    problem: &CpProblem,
    layout: &Layout,
    x: &Shards<'_, T>,
    s: usize,
    stats: &mut RingStats,
) -> Result<Option<KeyValue<T>>, CpError> {
    let (r, w) = (ctx.rank, ctx.world);
    let (dst, src) = ((r + s) % w, (r + w - s) % w);
    if s == 0 {
        return Ok(ctx.needs[r][r].then(|| (contiguous(x.k), contiguous(x.v))));
    }
    let mine: Vec<T> = contiguous(x.k)
        .data
        .into_iter()
        .chain(contiguous(x.v).data)
        .collect();
    let send_buf = if ctx.needs[dst][r] {
        stats.bytes_sent += mine.len() * std::mem::size_of::<T>();
        Some(comm.upload(&mine)?)
    } else {
        None
    };
    let n = layout.k.count(src);
    let ks = Shape4::new(problem.batch, problem.heads_kv, n, problem.dim);
    let vs = Shape4::new(problem.batch, problem.heads_kv, n, problem.dim_v);
    let mut recv_buf = if ctx.needs[r][src] {
        Some(comm.alloc::<T>(ks.numel() + vs.numel())?)
    } else {
        None
    };
    let sends: Vec<(usize, &C::Buffer<T>)> = send_buf.iter().map(|b| (dst, b)).collect();
    let mut recvs: Vec<(usize, &mut C::Buffer<T>)> =
        recv_buf.iter_mut().map(|b| (src, b)).collect();
    comm.exchange(&sends, &mut recvs)?;
    match recv_buf {
        None => Ok(None),
        Some(b) => {
            let data = comm.download(&b)?;
            let (kd, vd) = data.split_at(ks.numel());
            Ok(Some((
                Tensor4::from_vec(ks, kd.to_vec())?,
                Tensor4::from_vec(vs, vd.to_vec())?,
            )))
        }
    }
}

/// Ring attention forward on one rank: `x` holds the rank's shards of q, k, v under `layout`.
pub fn ring_forward<C, T, E>(
    comm: &C,
    engine: &E,
    problem: &CpProblem,
    layout: &Layout,
    x: &Shards<'_, T>,
) -> Result<RankForward, CpError>
where
    C: Communicator,
    T: CommElem,
    E: StepEngine<T> + ?Sized,
{
    let ctx = setup(comm, problem, layout, x)?;
    let step = problem.step_problem();
    let q = contiguous(x.q);
    let q_pos = layout.q_positions(problem, ctx.rank);
    let out_shape = Shape4::new(problem.batch, problem.heads_q, q.shape.seq, problem.dim_v);
    let mut acc = AttnOutput::empty(out_shape);
    let mut stats = RingStats::default();
    for s in 0..ctx.world {
        let src = (ctx.rank + ctx.world - s) % ctx.world;
        match rotate_kv(comm, &ctx, problem, layout, x, s, &mut stats)? {
            Some((k, v)) => {
                let k_pos = layout.k_positions(src);
                let block = StepBlock {
                    q: &q,
                    k: &k,
                    v: &v,
                    q_pos: &q_pos,
                    k_pos: &k_pos,
                    head_offset: 0,
                };
                let part = engine.forward(&step, &block)?;
                acc = lse_merge(&acc, &part)?;
                stats.computed += 1;
            }
            None => stats.skipped += 1,
        }
    }
    Ok(RankForward { out: acc, stats })
}

fn add_into(dst: &mut [f64], src: &[f64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Ring attention backward on one rank. `out` is the rank's forward result
/// ([`ring_forward`]), `dout` the upstream gradient of its rows, `dlse` optionally that of
/// its lse (`[B, Hq, rows]`).
#[allow(clippy::too_many_arguments)] // the communicator, engine, problem, layout, inputs and upstream gradients
pub fn ring_backward<C, T, E>(
    comm: &C,
    engine: &E,
    problem: &CpProblem,
    layout: &Layout,
    x: &Shards<'_, T>,
    out: &AttnOutput,
    dout: &Tensor4<T>,
    dlse: Option<&[f64]>,
) -> Result<RankGrads, CpError>
where
    C: Communicator,
    T: CommElem,
    E: StepEngine<T> + ?Sized,
{
    let ctx = setup(comm, problem, layout, x)?;
    let (r, w) = (ctx.rank, ctx.world);
    let step = problem.step_problem();
    let q = contiguous(x.q);
    let dout = contiguous(dout);
    let q_pos = layout.q_positions(problem, r);
    let p = problem;
    check_shard(
        &dout,
        "dout shard",
        Shape4::new(p.batch, p.heads_q, q.shape.seq, p.dim_v),
    )?;
    let grad = StepGrad {
        dout: &dout,
        out,
        dlse,
    };
    let mut dq = vec![0.0; q.shape.numel()];
    let nk = layout.k.count(r);
    let ks = Shape4::new(p.batch, p.heads_kv, nk, p.dim);
    let vs = Shape4::new(p.batch, p.heads_kv, nk, p.dim_v);
    let mut dkv = vec![0.0; ks.numel() + vs.numel()];
    let mut stats = RingStats::default();
    for s in 0..w {
        let (dst, src) = ((r + s) % w, (r + w - s) % w);
        let kv = rotate_kv(comm, &ctx, problem, layout, x, s, &mut stats)?;
        let part = match &kv {
            Some((k, v)) => {
                let k_pos = layout.k_positions(src);
                let block = StepBlock {
                    q: &q,
                    k,
                    v,
                    q_pos: &q_pos,
                    k_pos: &k_pos,
                    head_offset: 0,
                };
                let g = engine.backward(&step, &block, &grad)?;
                add_into(&mut dq, &g.dq.data);
                stats.computed += 1;
                Some(g.dk.data.into_iter().chain(g.dv.data).collect::<Vec<f64>>())
            }
            None => {
                stats.skipped += 1;
                None
            }
        };
        if s == 0 {
            if let Some(part) = part {
                add_into(&mut dkv, &part);
            }
            continue;
        }
        // dK/dV of src's keys go back to src; ours come back from dst.
        let send_buf = match &part {
            Some(pd) => {
                stats.bytes_sent += pd.len() * std::mem::size_of::<f64>();
                Some(comm.upload(pd)?)
            }
            None => None,
        };
        let mut recv_buf = if ctx.needs[dst][r] {
            Some(comm.alloc::<f64>(dkv.len())?)
        } else {
            None
        };
        let sends: Vec<(usize, &C::Buffer<f64>)> = send_buf.iter().map(|b| (src, b)).collect();
        let mut recvs: Vec<(usize, &mut C::Buffer<f64>)> =
            recv_buf.iter_mut().map(|b| (dst, b)).collect();
        comm.exchange(&sends, &mut recvs)?;
        if let Some(b) = recv_buf {
            add_into(&mut dkv, &comm.download(&b)?);
        }
    }
    let vd = dkv.split_off(ks.numel());
    Ok(RankGrads {
        dq: Tensor4::from_vec(q.shape, dq)?,
        dk: Tensor4::from_vec(ks, dkv)?,
        dv: Tensor4::from_vec(vs, vd)?,
        stats,
    })
}
