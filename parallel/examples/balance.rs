//! Prints the planner's balance table (docs/context-parallel.md):
//! `cargo run -p attnforge-parallel --example balance`.
//!
//! Problem: B = 1, Hq = 32, Hkv = 8, D = Dv = 128, S = 65536, bf16. Imbalance is max / mean
//! of the exact allowed (query, key) pairs per rank; times are *predicted* by the planner's
//! cost model (forward only), not measured.

use std::sync::Arc;

use attnforge_parallel::*;
use attnforge_reference::Mask;

/// Document lengths of a long-tailed mix, deterministic: half short (128-1023 tokens),
/// 35% medium (1024-8191), 15% long (8192-32767), cut to `s` tokens in total.
fn doc_mix(s: usize) -> Vec<i32> {
    let mut state = 0x5EED_u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut ids = Vec::with_capacity(s);
    let mut id = 0;
    while ids.len() < s {
        let u = next() % 100;
        let (lo, hi): (u64, u64) = if u < 50 {
            (128, 1024)
        } else if u < 85 {
            (1024, 8192)
        } else {
            (8192, 32768)
        };
        let len = (lo + next() % (hi - lo)) as usize;
        ids.extend(std::iter::repeat_n(id, len.min(s - ids.len())));
        id += 1;
    }
    ids
}

fn main() -> Result<(), CpError> {
    let s = 65536;
    let docs = doc_mix(s);
    let masks = [
        ("causal", Mask::Causal),
        ("document (doc mix)", Mask::Document { doc: docs.clone() }),
        (
            "causal_document (doc mix)",
            Mask::CausalDocument { doc: docs },
        ),
        (
            "local(4095, 0)",
            Mask::Local {
                left: 4095,
                right: 0,
            },
        ),
        (
            "lambda_mask(64, 4096)",
            Mask::Lambda {
                global: 64,
                local: 4096,
            },
        ),
        ("chunked_causal(8192)", Mask::ChunkedCausal { chunk: 8192 }),
    ];
    println!("| mask | W | imbalance contiguous | zigzag | mask-aware | ring blocks skipped (c / z / m) | chosen, NVLink 4 | predicted | chosen, IB NDR | predicted |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, mask) in masks {
        let problem = CpProblem {
            mask: Arc::new(mask),
            batch: 1,
            heads_q: 32,
            heads_kv: 8,
            sq: s,
            sk: s,
            dim: 128,
            dim_v: 128,
            scale: None,
        };
        for w in [2, 4, 8] {
            let plans: Vec<Plan> = [NVLINK4, IB_NDR]
                .into_iter()
                .map(|link| {
                    plan(&PlanRequest {
                        problem: &problem,
                        world: w,
                        link,
                        gpu: GPU_H100_SXM,
                        elem_bytes: 2,
                    })
                })
                .collect::<Result<_, _>>()?;
            let ring = |k: PartitionKind| {
                plans[0]
                    .candidates
                    .iter()
                    .find(|c| c.method == Method::Ring && c.partition == k)
                    .expect("ring candidates are always present")
            };
            let (c, z, m) = (
                ring(PartitionKind::Contiguous),
                ring(PartitionKind::Zigzag),
                ring(PartitionKind::MaskAware),
            );
            let skipped = |x: &PlanCandidate| x.ranks.iter().map(|r| r.skipped).sum::<usize>();
            let chosen = |p: &Plan| {
                let b = &p.candidates[p.best];
                (
                    format!("{:?} {:?}", b.method, b.partition),
                    b.predicted_s * 1e3,
                )
            };
            let (nv, nvt) = chosen(&plans[0]);
            let (ib, ibt) = chosen(&plans[1]);
            println!(
                "| {name} | {w} | {:.3} | {:.3} | {:.3} | {} / {} / {} of {} | {nv} | {nvt:.2} ms | {ib} | {ibt:.2} ms |",
                c.imbalance,
                z.imbalance,
                m.imbalance,
                skipped(c),
                skipped(z),
                skipped(m),
                w * w
            );
        }
    }
    Ok(())
}
