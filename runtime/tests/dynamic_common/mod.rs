//! Shared helpers of the dynamic-sparsity tests (`dynamic_*.rs`): deterministic inputs and
//! a check over the three standard simulator schedules.
#![allow(dead_code)]

use attnforge_reference::{Element, Shape4, SplitMix64, Tensor4};
use attnforge_runtime::codegen::dynamic::DynamicSpec;
use attnforge_runtime::exec::Backend;
use attnforge_runtime::exec_dynamic::{check, DynCheckReport, DynInputs};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};

/// Integer values in `[-r, r]` (exact in every dtype; dot products exact in f32, so
/// rankings have exact ties and no near-ties).
pub fn ints<T: Element>(shape: Shape4, seed: u64, r: usize) -> Tensor4<T> {
    let mut g = SplitMix64(seed);
    Tensor4::from_fn(shape, |_, _, _, _| {
        T::from_f64(g.below(2 * r + 1) as f64 - r as f64)
    })
}

/// Multiples of 1/16 in `[-1, 1]` (exact in every dtype).
pub fn fracs<T: Element>(shape: Shape4, seed: u64) -> Tensor4<T> {
    let mut g = SplitMix64(seed);
    Tensor4::from_fn(shape, |_, _, _, _| {
        T::from_f64((g.below(33) as f64 - 16.0) / 16.0)
    })
}

/// Check `spec` on the simulator under forward, reverse and random schedules; every
/// schedule must pass the oracle and give the same counters. Returns the last report.
pub fn check_all_schedules<T: Element + SimElem>(
    spec: &DynamicSpec,
    x: &DynInputs<T>,
    seed: u64,
) -> DynCheckReport {
    let mut last: Option<DynCheckReport> = None;
    for s in Schedule::standard(seed) {
        let r = match check(spec, x, &Backend::Sim(SimConfig::new(s))) {
            Ok(r) => r,
            Err(e) => panic!("{} under {s:?}: {e}", spec.canonical_name()),
        };
        if let Some(p) = &last {
            assert_eq!(
                p.run.counters.raw, r.run.counters.raw,
                "counters differ under {s:?}"
            );
            assert_eq!(
                p.run.indices, r.run.indices,
                "index buffers differ under {s:?}"
            );
        }
        last = Some(r);
    }
    last.expect("three schedules")
}

/// A batch of sequences on a paged cache: per sequence its dense `q [1, Hq, Sq_b, D]`,
/// `k, v [1, Hkv, Sk_b, D]` and the same data laid out as serving inputs (packed q, pages
/// in a shuffled pool with a garbage page, slots past a partial last page and block-table
/// entries past the sequence's pages filled with garbage).
pub struct PagedCase<T> {
    pub seqs: Vec<(Tensor4<T>, Tensor4<T>, Tensor4<T>)>,
    pub x: attnforge_runtime::exec_serving::ServingInputs<T>,
}

pub fn paged_case<T: Element>(
    lens: &[(usize, usize)],
    (hkv, hq): (usize, usize),
    ps: usize,
    seed: u64,
) -> PagedCase<T> {
    use attnforge_reference::{Packed, PagedCache};
    use attnforge_runtime::exec_serving::{ServingInputs, ServingKeys};
    let d = 64;
    let seqs: Vec<_> = lens
        .iter()
        .enumerate()
        .map(|(b, &(sq, sk))| {
            let s = seed.wrapping_add(7 * b as u64);
            (
                ints::<T>(Shape4::new(1, hq, sq, d), s, 1),
                ints::<T>(Shape4::new(1, hkv, sk, d), s ^ 1, 1),
                fracs::<T>(Shape4::new(1, hkv, sk, d), s ^ 2),
            )
        })
        .collect();
    let pages: Vec<usize> = lens.iter().map(|l| l.1.div_ceil(ps)).collect();
    let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
    let num_pages = pages.iter().sum::<usize>() + 1;
    // physical page of logical page i of the pool: a seed-dependent permutation
    let mut order: Vec<usize> = (0..num_pages).collect();
    let mut g = seed | 1;
    for i in (1..num_pages).rev() {
        g = g
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (g >> 33) as usize % (i + 1));
    }
    let garbage = T::from_f64(3.0);
    let mut kc = vec![garbage; num_pages * ps * hkv * d];
    let mut vc = kc.clone();
    let mut table = vec![-1i32; lens.len() * max_pages];
    let mut next = 0;
    for (b, (_, k, v)) in seqs.iter().enumerate() {
        for j in 0..lens[b].1 {
            let page = order[next + j / ps];
            table[b * max_pages + j / ps] = page as i32;
            for h in 0..hkv {
                for e in 0..d {
                    let at = ((page * ps + j % ps) * hkv + h) * d + e;
                    kc[at] = T::from_f64(k.get(0, h, j, e));
                    vc[at] = T::from_f64(v.get(0, h, j, e));
                }
            }
        }
        next += pages[b];
    }
    let tq: usize = lens.iter().map(|l| l.0).sum();
    let mut qd = Vec::with_capacity(tq * hq * d);
    let mut cu = vec![0i32];
    for (q, _, _) in &seqs {
        for i in 0..q.shape.seq {
            for h in 0..hq {
                qd.extend((0..d).map(|e| T::from_f64(q.get(0, h, i, e))));
            }
        }
        cu.push(cu.last().unwrap() + q.shape.seq as i32);
    }
    let x = ServingInputs {
        q: Packed::from_vec(tq, hq, d, qd).unwrap(),
        cu_seqlens_q: cu,
        keys: ServingKeys::Paged {
            k_cache: PagedCache::from_vec(num_pages, ps, hkv, d, kc).unwrap(),
            v_cache: PagedCache::from_vec(num_pages, ps, hkv, d, vc).unwrap(),
            block_table: table,
            max_pages,
            seqlens_k: lens.iter().map(|l| l.1 as i32).collect(),
        },
    };
    PagedCase { seqs, x }
}

/// `spec` on a paged cache (`paged_case`): each sequence's rows (out, lse, the selection)
/// equal the dense kernels' run on that sequence's gathered keys bit for bit, and the result
/// passes the tolerance rule against the per-sequence f64 reference.
pub fn paged_equals_dense<T: Element + SimElem>(
    spec: &DynamicSpec,
    lens: &[(usize, usize)],
    heads: (usize, usize),
    ps: usize,
    seed: u64,
) {
    use attnforge_runtime::exec_dynamic::{check_paged, run};
    let c = paged_case::<T>(lens, heads, ps, seed);
    let sim = Backend::Sim(SimConfig::new(Schedule::Forward));
    let (rep, sel) = check_paged(spec, &c.x, None, &sim).unwrap();
    let (out, hq, d, tq) = (&rep.run.output, heads.1, 64, c.x.q.tokens);
    let width = sel.len() / (tq * hq).max(1);
    let mut q0 = 0;
    for (b, (q, kk, v)) in c.seqs.iter().enumerate() {
        let sq = q.shape.seq;
        if sq == 0 {
            continue;
        }
        let dense = run(
            spec,
            &DynInputs::new(q.clone(), kk.clone(), v.clone()),
            &sim,
        )
        .unwrap();
        for h in 0..hq {
            for i in 0..sq {
                let (row, t) = (h * sq + i, (h * tq + q0 + i));
                let what = format!("seq {b} head {h} row {i}");
                assert_eq!(
                    &out.out[t * d..(t + 1) * d],
                    &dense.output.out[row * d..(row + 1) * d],
                    "{what}: out"
                );
                assert_eq!(
                    out.lse[t].to_bits(),
                    dense.output.lse[row].to_bits(),
                    "{what}: lse"
                );
                if width > 0 {
                    let want = &dense.indices["sel"][row * width..(row + 1) * width];
                    assert_eq!(&sel[t * width..(t + 1) * width], want, "{what}: sel");
                }
            }
        }
        q0 += sq;
    }
}
