//! The planner: causal balance is better with zigzag / mask-aware than contiguous; work is
//! conserved; layouts are valid; Ulysses feasibility is reported.

use std::sync::Arc;

use attnforge_parallel::*;
use attnforge_reference::Mask;

fn problem(mask: Mask, s: usize, hq: usize, hkv: usize) -> CpProblem {
    CpProblem {
        mask: Arc::new(mask),
        batch: 1,
        heads_q: hq,
        heads_kv: hkv,
        sq: s,
        sk: s,
        dim: 64,
        dim_v: 64,
        scale: None,
    }
}

fn candidate(p: &Plan, m: Method, k: PartitionKind) -> &PlanCandidate {
    p.candidates
        .iter()
        .find(|c| c.method == m && c.partition == k)
        .unwrap()
}

#[test]
fn causal_balance_is_better_with_zigzag_and_mask_aware_than_contiguous() {
    for w in [2, 4, 8] {
        let pr = problem(Mask::Causal, 4096, 8, 8);
        let p = plan(&PlanRequest {
            problem: &pr,
            world: w,
            link: NVLINK4,
            gpu: GPU_H100_SXM,
            elem_bytes: 2,
        })
        .unwrap();
        let c = candidate(&p, Method::Ring, PartitionKind::Contiguous).imbalance;
        let z = candidate(&p, Method::Ring, PartitionKind::Zigzag).imbalance;
        let m = candidate(&p, Method::Ring, PartitionKind::MaskAware).imbalance;
        // Contiguous causal: the last rank has (2W - 1) / W times the mean work.
        let want_c = (2 * w - 1) as f64 / w as f64;
        assert!(
            (c - want_c).abs() < 0.01,
            "W={w}: contiguous imbalance {c}, expected about {want_c}"
        );
        assert!(
            z < 1.01 && m < 1.02,
            "W={w}: zigzag {z}, mask-aware {m} (contiguous {c})"
        );
        // A compute-bound size (the 4096 one is latency-bound: every ring step costs a message).
        let pr = CpProblem {
            dim: 128,
            dim_v: 128,
            ..problem(Mask::Causal, 32768, 32, 8)
        };
        let req = PlanRequest {
            problem: &pr,
            world: w,
            link: NVLINK4,
            gpu: GPU_H100_SXM,
            elem_bytes: 2,
        };
        let p = plan(&req).unwrap();
        let best = &p.candidates[p.best];
        assert!(
            !(best.method == Method::Ring && best.partition == PartitionKind::Contiguous),
            "W={w}: chose {:?}",
            (best.method, best.partition)
        );
        let pc = candidate(&p, Method::Ring, PartitionKind::Contiguous).predicted_s;
        let pz = candidate(&p, Method::Ring, PartitionKind::Zigzag).predicted_s;
        assert!(
            pz < 0.8 * pc,
            "W={w}: predicted zigzag {pz} s vs contiguous {pc} s"
        );
    }
}

#[test]
fn work_is_conserved_and_layouts_cover_the_sequence() {
    let doc: Vec<i32> = (0..3072).map(|i: i32| i / 700).collect();
    for mask in [
        Mask::Causal,
        Mask::CausalDocument { doc },
        Mask::Local {
            left: 300,
            right: 0,
        },
        Mask::ChunkedCausal { chunk: 512 },
    ] {
        let pr = problem(mask.clone(), 3072, 8, 2);
        let total = MaskGeometry::new(&mask, 1, 8, 3072, 3072)
            .unwrap()
            .pairs(0..3072, 0..3072);
        for w in [2, 4, 8] {
            let p = plan(&PlanRequest {
                problem: &pr,
                world: w,
                link: IB_NDR,
                gpu: GPU_H100_SXM,
                elem_bytes: 2,
            })
            .unwrap();
            assert_eq!(p.candidates.len(), 4, "{:?}", p.ulysses_infeasible);
            for c in &p.candidates {
                let sum: u64 = c.ranks.iter().map(|r| r.pairs).sum();
                // Ulysses splits the work by heads: total / W each (8 heads, W | 8).
                assert_eq!(
                    sum, total,
                    "{mask:?} W={w} {:?} {:?}",
                    c.method, c.partition
                );
                let l = &c.layout;
                assert_eq!((l.q.len(), l.k.len(), l.q.world()), (3072, 3072, w));
                // Equal memory per rank within one piece.
                let (mx, mn) = (
                    (0..w).map(|r| l.q.count(r)).max().unwrap(),
                    (0..w).map(|r| l.q.count(r)).min().unwrap(),
                );
                assert!(
                    mx - mn <= 8,
                    "{mask:?} W={w} {:?}: shard sizes {mn}..{mx}",
                    c.partition
                );
                assert!(c.predicted_s > 0.0 && c.predicted_s.is_finite());
            }
            let ma = candidate(&p, Method::Ring, PartitionKind::MaskAware).imbalance;
            let co = candidate(&p, Method::Ring, PartitionKind::Contiguous).imbalance;
            assert!(
                ma <= co + 1e-9,
                "{mask:?} W={w}: mask-aware {ma} > contiguous {co}"
            );
        }
    }
}

#[test]
fn ulysses_infeasible_when_heads_do_not_split() {
    let pr = problem(Mask::Causal, 512, 6, 6);
    let p = plan(&PlanRequest {
        problem: &pr,
        world: 4,
        link: NVLINK4,
        gpu: GPU_H100_SXM,
        elem_bytes: 2,
    })
    .unwrap();
    assert!(p.candidates.iter().all(|c| c.method == Method::Ring));
    assert!(p.ulysses_infeasible.as_deref().unwrap().contains("Hq = 6"));
    assert!(matches!(
        plan(&PlanRequest {
            problem: &pr,
            world: 0,
            link: NVLINK4,
            gpu: GPU_H100_SXM,
            elem_bytes: 2
        }),
        Err(CpError::Invalid { field: "world", .. })
    ));
}
