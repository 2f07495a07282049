//! Shared fixtures: deterministic inputs, every static mask, and the multi-rank drivers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use attnforge_parallel::*;
use attnforge_reference::{AttnOutput, Element, Mask, Shape4, Tensor4};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A deterministic pseudo-random value in [-1, 1).
pub fn noise(seed: u64, i: usize) -> f64 {
    let mut z = seed
        .wrapping_add(i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

pub fn tensor<T: Element>(shape: Shape4, seed: u64) -> Tensor4<T> {
    let mut n = 0;
    Tensor4::from_fn(shape, |_, _, _, _| {
        n += 1;
        T::from_f64(1.5 * noise(seed, n))
    })
}

/// Doc ids for `sk` keys: documents of lengths 5, 2, 7, 1, 4, ... (ids increasing; id 0 first
/// so share_question's question is a prefix).
pub fn docs(sk: usize) -> Vec<i32> {
    let lens = [5, 2, 7, 1, 4, 3, 6];
    let mut v = Vec::with_capacity(sk);
    let mut id = 0;
    while v.len() < sk {
        for _ in 0..lens[id as usize % lens.len()] {
            if v.len() < sk {
                v.push(id);
            }
        }
        id += 1;
    }
    v
}

/// Every static mask of the reference (with parameters exercising block boundaries), plus a
/// head-dependent predicate and All/Any combinations; `batch` selects per-batch doc ids.
pub fn masks(sk: usize, batch: usize) -> Vec<Mask> {
    let d = docs(sk);
    // Per-batch ids for document: batch 1 shifts the boundaries.
    let mut per_batch = d.clone();
    for b in 1..batch {
        per_batch.extend(docs(sk + b).into_iter().skip(b));
    }
    vec![
        Mask::Full,
        Mask::Causal,
        Mask::Local { left: 3, right: 1 },
        Mask::Local { left: -1, right: 0 },
        Mask::PrefixLm { prefix: 5 },
        Mask::Document { doc: per_batch },
        Mask::CausalDocument { doc: d.clone() },
        Mask::ShareQuestion { doc: d.clone() },
        Mask::GlobalLocal {
            window: 2,
            global: 3,
        },
        Mask::BlockCausalDocument { doc: d, block: 4 },
        Mask::Lambda {
            global: 3,
            local: 4,
        },
        Mask::ChunkedCausal { chunk: 5 },
        Mask::DilatedCausal {
            window: 3,
            dilation: 2,
        },
        Mask::predicate(|_, h, i, j| (i + j + h as i64) % 3 != 0 && j <= i + 2),
        Mask::All(vec![Mask::Causal, Mask::Local { left: 6, right: 0 }]),
        Mask::Any(vec![
            Mask::ChunkedCausal { chunk: 4 },
            Mask::PrefixLm { prefix: 2 },
        ]),
    ]
}

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub batch: usize,
    pub hq: usize,
    pub hkv: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
}

pub fn problem(mask: &Mask, s: Sizes) -> CpProblem {
    CpProblem {
        mask: Arc::new(mask.clone()),
        batch: s.batch,
        heads_q: s.hq,
        heads_kv: s.hkv,
        sq: s.sq,
        sk: s.sk,
        dim: s.d,
        dim_v: s.dv,
        scale: None,
    }
}

pub struct Inputs<T> {
    pub q: Tensor4<T>,
    pub k: Tensor4<T>,
    pub v: Tensor4<T>,
    pub dout: Tensor4<T>,
    pub dlse: Vec<f64>,
}

pub fn inputs<T: Element>(s: Sizes, seed: u64) -> Inputs<T> {
    Inputs {
        q: tensor(Shape4::new(s.batch, s.hq, s.sq, s.d), seed),
        k: tensor(Shape4::new(s.batch, s.hkv, s.sk, s.d), seed + 1000),
        v: tensor(Shape4::new(s.batch, s.hkv, s.sk, s.dv), seed + 2000),
        dout: tensor(Shape4::new(s.batch, s.hq, s.sq, s.dv), seed + 3000),
        dlse: (0..s.batch * s.hq * s.sq)
            .map(|i| 0.3 * noise(seed + 4000, i))
            .collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Ring,
    Ulysses,
}

/// Run the forward on `world` in-process ranks and reassemble the global output.
pub fn run_forward<T: CommElem>(
    algo: Algo,
    engine: &ReferenceEngine,
    problem: &CpProblem,
    layout: &Layout,
    x: &Inputs<T>,
) -> Result<(AttnOutput, Vec<RingStats>), CpError> {
    let world = layout.q.world();
    let res = run_in_process(world, TIMEOUT, |c| {
        let r = c.rank();
        let (q, k, v) = (
            shard(&x.q, &layout.q, r),
            shard(&x.k, &layout.k, r),
            shard(&x.v, &layout.k, r),
        );
        let sh = Shards {
            q: &q,
            k: &k,
            v: &v,
        };
        match algo {
            Algo::Ring => ring_forward(c, engine, problem, layout, &sh),
            Algo::Ulysses => ulysses_forward(c, engine, problem, layout, &sh),
        }
    })?;
    let outs: Vec<AttnOutput> = res.iter().map(|r| r.out.clone()).collect();
    Ok((
        unshard_output(&outs, &layout.q),
        res.iter().map(|r| r.stats).collect(),
    ))
}

/// Global `(dq, dk, dv)`.
pub type Grads = (Tensor4<f64>, Tensor4<f64>, Tensor4<f64>);

/// Global (dq, dk, dv) from the multi-rank backward.
pub fn run_backward<T: CommElem>(
    algo: Algo,
    engine: &ReferenceEngine,
    problem: &CpProblem,
    layout: &Layout,
    x: &Inputs<T>,
) -> Result<Grads, CpError> {
    let world = layout.q.world();
    let res = run_in_process(world, TIMEOUT, |c| {
        let r = c.rank();
        let (q, k, v, dout) = (
            shard(&x.q, &layout.q, r),
            shard(&x.k, &layout.k, r),
            shard(&x.v, &layout.k, r),
            shard(&x.dout, &layout.q, r),
        );
        let dlse = shard_rows(&x.dlse, problem.heads_q, &layout.q, r);
        let sh = Shards {
            q: &q,
            k: &k,
            v: &v,
        };
        match algo {
            Algo::Ring => {
                let f = ring_forward(c, engine, problem, layout, &sh)?;
                ring_backward(c, engine, problem, layout, &sh, &f.out, &dout, Some(&dlse))
            }
            Algo::Ulysses => ulysses_backward(c, engine, problem, layout, &sh, &dout, Some(&dlse)),
        }
    })?;
    let dq: Vec<_> = res.iter().map(|g| g.dq.clone()).collect();
    let dk: Vec<_> = res.iter().map(|g| g.dk.clone()).collect();
    let dv: Vec<_> = res.iter().map(|g| g.dv.clone()).collect();
    Ok((
        unshard(&dq, &layout.q),
        unshard(&dk, &layout.k),
        unshard(&dv, &layout.k),
    ))
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x == y {
                0.0 // equal infinities (empty rows' lse)
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

pub fn layouts(s: Sizes, world: usize) -> Vec<(&'static str, Layout)> {
    let mut v = vec![(
        "contiguous",
        Layout {
            q: Partition::contiguous(s.sq, world).unwrap(),
            k: Partition::contiguous(s.sk, world).unwrap(),
        },
    )];
    v.push((
        "zigzag",
        Layout {
            q: Partition::zigzag(s.sq, world).unwrap(),
            k: Partition::zigzag(s.sk, world).unwrap(),
        },
    ));
    v
}
