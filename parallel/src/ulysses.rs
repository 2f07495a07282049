//! Ulysses (DeepSpeed-Ulysses) attention: an all-to-all turns sequence shards of every head
//! into every position of `Hq / W` heads, each rank runs full attention for its heads, and a
//! second all-to-all returns the outputs to sequence shards.
//!
//! Shards of unequal length (lengths not divisible by W, or uneven partitions) are padded to
//! the longest shard with `PAD` positions, which the engine never allows. GQA: rank `r` gets
//! query heads `r Hq/W ..` and the kv heads they read; when a kv group spans several ranks
//! (`Hq/Hkv > Hq/W`) each of them receives that kv head, and the backward sums their dK/dV.

use std::ops::Range;

use attnforge_reference::{AttnOutput, Element, Shape4, Tensor4};

use crate::comm::{CommElem, Communicator};
use crate::engine::{StepBlock, StepEngine, StepGrad, PAD};
use crate::error::{invalid, CpError};
use crate::layout::{check_shard, contiguous, CpProblem, Layout};
use crate::ring::{RankForward, RankGrads, RingStats, Shards};

/// Query-head and kv-head ranges of every rank.
struct Heads {
    q: Vec<Range<usize>>,
    kv: Vec<Range<usize>>,
}

fn heads(problem: &CpProblem, world: usize) -> Result<Heads, CpError> {
    let (hq, hkv) = (problem.heads_q, problem.heads_kv);
    if hkv == 0 || !hq.is_multiple_of(hkv) {
        return Err(invalid("heads_kv", hkv, "Hkv must divide Hq"));
    }
    if !hq.is_multiple_of(world) {
        return Err(invalid(
            "heads_q",
            hq,
            "Ulysses splits the query heads: Hq must be divisible by the world size (use ring attention otherwise)",
        ));
    }
    let (per, group) = (hq / world, hq / hkv);
    if !per.is_multiple_of(group) && !group.is_multiple_of(per) {
        return Err(invalid(
            "heads_kv",
            hkv,
            "Ulysses needs Hq/W and the GQA group Hq/Hkv to divide one another",
        ));
    }
    let q: Vec<_> = (0..world).map(|r| r * per..(r + 1) * per).collect();
    let kv = q
        .iter()
        .map(|h| h.start / group..(h.end - 1) / group + 1)
        .collect();
    Ok(Heads { q, kv })
}

/// `[B, H, n, D]` -> one chunk per rank `p`: heads `ranges[p]`, rows padded to `pad`.
fn heads_to_chunks<T: Element>(
    t: &Tensor4<T>,
    ranges: &[Range<usize>],
    pad: usize,
    zero: T,
) -> Vec<T> {
    let sh = t.shape;
    let mut out = Vec::new();
    for hr in ranges {
        for b in 0..sh.batch {
            for h in hr.clone() {
                for s in 0..pad {
                    for d in 0..sh.dim {
                        out.push(if s < sh.seq {
                            t.data[((b * sh.heads + h) * sh.seq + s) * sh.dim + d]
                        } else {
                            zero
                        });
                    }
                }
            }
        }
    }
    out
}

/// `world` chunks `[B, hl, pad, D]` (one per source rank) -> `[B, hl, world * pad, D]`.
fn chunks_to_seq<T: Copy>(
    buf: &[T],
    batch: usize,
    hl: usize,
    pad: usize,
    dim: usize,
    world: usize,
) -> Vec<T> {
    let chunk = batch * hl * pad * dim;
    let n = world * pad;
    let mut out = Vec::with_capacity(buf.len());
    for b in 0..batch {
        for h in 0..hl {
            for p in 0..world {
                let base = p * chunk + (b * hl + h) * pad * dim;
                out.extend_from_slice(&buf[base..base + pad * dim]);
            }
        }
    }
    debug_assert_eq!(out.len(), batch * hl * n * dim);
    out
}

/// `[B, hl, world * pad, D]` -> `world` chunks `[B, hl, pad, D]` (chunk `p` = rows of rank `p`).
fn seq_to_chunks(
    x: &[f64],
    batch: usize,
    hl: usize,
    pad: usize,
    dim: usize,
    world: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for p in 0..world {
        for b in 0..batch {
            for h in 0..hl {
                let base = ((b * hl + h) * world + p) * pad * dim;
                out.extend_from_slice(&x[base..base + pad * dim]);
            }
        }
    }
    out
}

/// Chunks from every rank `p` (heads `ranges[p]`, `pad` rows) added into `[B, H, n, D]`.
fn chunks_to_heads(buf: &[f64], ranges: &[Range<usize>], shape: Shape4, pad: usize) -> Vec<f64> {
    let mut out = vec![0.0; shape.numel()];
    let mut off = 0;
    for hr in ranges {
        for b in 0..shape.batch {
            for h in hr.clone() {
                for s in 0..pad {
                    for d in 0..shape.dim {
                        if s < shape.seq {
                            out[((b * shape.heads + h) * shape.seq + s) * shape.dim + d] +=
                                buf[off];
                        }
                        off += 1;
                    }
                }
            }
        }
    }
    out
}

fn all_to_all<C: Communicator, T: CommElem>(
    comm: &C,
    send: &[T],
    stats: &mut RingStats,
) -> Result<Vec<T>, CpError> {
    let w = comm.world_size();
    stats.bytes_sent += send.len() / w * (w - 1) * std::mem::size_of::<T>();
    let sb = comm.upload(send)?;
    let mut rb = comm.alloc::<T>(send.len())?;
    comm.all_to_all(&sb, &mut rb)?;
    Ok(comm.download(&rb)?)
}

fn padded_positions(all: impl Fn(usize) -> Vec<i64>, world: usize, pad: usize) -> Vec<i64> {
    let mut v = Vec::with_capacity(world * pad);
    for p in 0..world {
        let mut x = all(p);
        x.resize(pad, PAD);
        v.extend(x);
    }
    v
}

/// The head-sharded operands of one rank after the first all-to-all.
struct Local<T> {
    q: Tensor4<T>,
    k: Tensor4<T>,
    v: Tensor4<T>,
    q_pos: Vec<i64>,
    k_pos: Vec<i64>,
    heads: Heads,
    lq: usize,
    lk: usize,
}

fn gather_heads<C: Communicator, T: CommElem>(
    comm: &C,
    problem: &CpProblem,
    layout: &Layout,
    x: &Shards<'_, T>,
    stats: &mut RingStats,
) -> Result<Local<T>, CpError> {
    let (r, w) = (comm.rank(), comm.world_size());
    layout.check(problem, w)?;
    let p = problem;
    check_shard(
        x.q,
        "q shard",
        Shape4::new(p.batch, p.heads_q, layout.q.count(r), p.dim),
    )?;
    check_shard(
        x.k,
        "k shard",
        Shape4::new(p.batch, p.heads_kv, layout.k.count(r), p.dim),
    )?;
    check_shard(
        x.v,
        "v shard",
        Shape4::new(p.batch, p.heads_kv, layout.k.count(r), p.dim_v),
    )?;
    let heads = heads(problem, w)?;
    let (lq, lk) = (layout.q.max_count(), layout.k.max_count());
    let (hql, hkvl) = (heads.q[r].len(), heads.kv[r].len());
    let zero = T::from_f64(0.0);
    let qb = all_to_all(
        comm,
        &heads_to_chunks(&contiguous(x.q), &heads.q, lq, zero),
        stats,
    )?;
    let kb = all_to_all(
        comm,
        &heads_to_chunks(&contiguous(x.k), &heads.kv, lk, zero),
        stats,
    )?;
    let vb = all_to_all(
        comm,
        &heads_to_chunks(&contiguous(x.v), &heads.kv, lk, zero),
        stats,
    )?;
    let b = p.batch;
    let q = Tensor4::from_vec(
        Shape4::new(b, hql, w * lq, p.dim),
        chunks_to_seq(&qb, b, hql, lq, p.dim, w),
    )?;
    let k = Tensor4::from_vec(
        Shape4::new(b, hkvl, w * lk, p.dim),
        chunks_to_seq(&kb, b, hkvl, lk, p.dim, w),
    )?;
    let v = Tensor4::from_vec(
        Shape4::new(b, hkvl, w * lk, p.dim_v),
        chunks_to_seq(&vb, b, hkvl, lk, p.dim_v, w),
    )?;
    Ok(Local {
        q,
        k,
        v,
        q_pos: padded_positions(|s| layout.q_positions(problem, s), w, lq),
        k_pos: padded_positions(|s| layout.k_positions(s), w, lk),
        heads,
        lq,
        lk,
    })
}

/// Ulysses forward on one rank (same inputs and result as [`crate::ring_forward`]).
pub fn ulysses_forward<C, T, E>(
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
    let mut stats = RingStats::default();
    let (r, w) = (comm.rank(), comm.world_size());
    let loc = gather_heads(comm, problem, layout, x, &mut stats)?;
    let hql = loc.heads.q[r].len();
    let block = StepBlock {
        q: &loc.q,
        k: &loc.k,
        v: &loc.v,
        q_pos: &loc.q_pos,
        k_pos: &loc.k_pos,
        head_offset: loc.heads.q[r].start,
    };
    let full = engine.forward(&problem.step_problem(), &block)?;
    stats.computed = 1;
    let b = problem.batch;
    let n = layout.q.count(r);
    let ob = all_to_all(
        comm,
        &seq_to_chunks(&full.out, b, hql, loc.lq, problem.dim_v, w),
        &mut stats,
    )?;
    let lb = all_to_all(
        comm,
        &seq_to_chunks(&full.lse, b, hql, loc.lq, 1, w),
        &mut stats,
    )?;
    let oshape = Shape4::new(b, problem.heads_q, n, problem.dim_v);
    let out = chunks_to_heads(&ob, &loc.heads.q, oshape, loc.lq);
    // Every row is written by exactly one head range: start from zero and add.
    let lse = chunks_to_heads(
        &lb,
        &loc.heads.q,
        Shape4::new(b, problem.heads_q, n, 1),
        loc.lq,
    );
    Ok(RankForward {
        out: AttnOutput {
            out,
            lse,
            shape: oshape,
        },
        stats,
    })
}

/// Ulysses backward on one rank (same inputs and result as [`crate::ring_backward`]; `out`
/// is not needed: each rank recomputes the full rows of its heads).
pub fn ulysses_backward<C, T, E>(
    comm: &C,
    engine: &E,
    problem: &CpProblem,
    layout: &Layout,
    x: &Shards<'_, T>,
    dout: &Tensor4<T>,
    dlse: Option<&[f64]>,
) -> Result<RankGrads, CpError>
where
    C: Communicator,
    T: CommElem,
    E: StepEngine<T> + ?Sized,
{
    let mut stats = RingStats::default();
    let (r, w) = (comm.rank(), comm.world_size());
    let p = problem;
    let n = layout.q.count(r);
    let dout = contiguous(dout);
    check_shard(
        &dout,
        "dout shard",
        Shape4::new(p.batch, p.heads_q, n, p.dim_v),
    )?;
    if let Some(d) = dlse {
        if d.len() != p.batch * p.heads_q * n {
            return Err(invalid(
                "dlse shard",
                d.len(),
                "pass B * Hq * (rows of this rank) values",
            ));
        }
    }
    let loc = gather_heads(comm, problem, layout, x, &mut stats)?;
    let (hql, hkvl, b) = (loc.heads.q[r].len(), loc.heads.kv[r].len(), p.batch);
    let zero = T::from_f64(0.0);
    let db = all_to_all(
        comm,
        &heads_to_chunks(&dout, &loc.heads.q, loc.lq, zero),
        &mut stats,
    )?;
    let dout_l = Tensor4::from_vec(
        Shape4::new(b, hql, w * loc.lq, p.dim_v),
        chunks_to_seq(&db, b, hql, loc.lq, p.dim_v, w),
    )?;
    let dlse_l = match dlse {
        Some(d) => {
            let t = Tensor4::from_vec(Shape4::new(b, p.heads_q, n, 1), d.to_vec())?;
            let lb = all_to_all(
                comm,
                &heads_to_chunks(&t, &loc.heads.q, loc.lq, 0.0),
                &mut stats,
            )?;
            Some(chunks_to_seq(&lb, b, hql, loc.lq, 1, w))
        }
        None => None,
    };
    let block = StepBlock {
        q: &loc.q,
        k: &loc.k,
        v: &loc.v,
        q_pos: &loc.q_pos,
        k_pos: &loc.k_pos,
        head_offset: loc.heads.q[r].start,
    };
    let step = problem.step_problem();
    let full = engine.forward(&step, &block)?;
    let g = engine.backward(
        &step,
        &block,
        &StepGrad {
            dout: &dout_l,
            out: &full,
            dlse: dlse_l.as_deref(),
        },
    )?;
    stats.computed = 1;
    let nk = layout.k.count(r);
    let back = |data: &[f64],
                hl: usize,
                pad: usize,
                dim: usize,
                ranges: &[Range<usize>],
                heads: usize,
                rows: usize,
                stats: &mut RingStats|
     -> Result<Tensor4<f64>, CpError> {
        let buf = all_to_all(comm, &seq_to_chunks(data, b, hl, pad, dim, w), stats)?;
        let sh = Shape4::new(b, heads, rows, dim);
        Ok(Tensor4::from_vec(
            sh,
            chunks_to_heads(&buf, ranges, sh, pad),
        )?)
    };
    let dq = back(
        &g.dq.data,
        hql,
        loc.lq,
        p.dim,
        &loc.heads.q,
        p.heads_q,
        n,
        &mut stats,
    )?;
    let dk = back(
        &g.dk.data,
        hkvl,
        loc.lk,
        p.dim,
        &loc.heads.kv,
        p.heads_kv,
        nk,
        &mut stats,
    )?;
    let dv = back(
        &g.dv.data,
        hkvl,
        loc.lk,
        p.dim_v,
        &loc.heads.kv,
        p.heads_kv,
        nk,
        &mut stats,
    )?;
    Ok(RankGrads { dq, dk, dv, stats })
}
