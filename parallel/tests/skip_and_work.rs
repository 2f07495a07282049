//! The exact work counts and the skip decisions against brute force over `Mask::allowed`.

mod common;

use std::ops::Range;

use attnforge_parallel::*;
use attnforge_reference::{Mask, Precision};
use common::*;

fn brute_pairs(mask: &Mask, s: Sizes, rows: Range<usize>, keys: Range<usize>) -> u64 {
    let off = s.sk as i64 - s.sq as i64;
    let mut n = 0;
    for b in 0..s.batch {
        for h in 0..s.hq {
            for i in rows.clone() {
                for j in keys.clone() {
                    n += mask.allowed(b, h, i as i64 + off, j as i64, s.sk) as u64;
                }
            }
        }
    }
    n
}

#[test]
fn pair_counts_equal_brute_force_on_every_range() {
    for (sq, sk) in [(23, 23), (11, 23)] {
        let s = Sizes {
            batch: 2,
            hq: 3,
            hkv: 1,
            sq,
            sk,
            d: 1,
            dv: 1,
        };
        let mut masks = masks(sk, 2);
        masks.extend([
            Mask::Local { left: 0, right: 0 },
            Mask::Local { left: 2, right: -1 },
            Mask::Lambda {
                global: 0,
                local: 1,
            },
            Mask::Lambda {
                global: 30,
                local: 0,
            },
            Mask::GlobalLocal {
                window: 0,
                global: 0,
            },
            Mask::ChunkedCausal { chunk: 1 },
            Mask::ChunkedCausal { chunk: usize::MAX },
            Mask::DilatedCausal {
                window: 0,
                dilation: 1,
            },
            Mask::DilatedCausal {
                window: 5,
                dilation: 3,
            },
            Mask::PrefixLm { prefix: 40 },
            Mask::ShareQuestion {
                doc: docs(sk).into_iter().map(|d| d.max(1) - 1).collect(),
            },
        ]);
        for mask in &masks {
            let g = MaskGeometry::new(mask, s.batch, s.hq, sq, sk).unwrap();
            for r0 in 0..=sq {
                for r1 in r0..=sq {
                    for (k0, k1) in [
                        (0, sk),
                        (0, 1),
                        (3, 9),
                        (7, 8),
                        (10, sk),
                        (sk - 1, sk),
                        (5, 5),
                    ] {
                        assert_eq!(
                            g.pairs(r0..r1, k0..k1),
                            brute_pairs(mask, s, r0..r1, k0..k1),
                            "{mask:?} rows {r0}..{r1} keys {k0}..{k1} (Sq {sq}, Sk {sk})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn skipped_blocks_have_no_allowed_pair_and_needed_ones_do() {
    let s = Sizes {
        batch: 2,
        hq: 2,
        hkv: 1,
        sq: 40,
        sk: 40,
        d: 2,
        dv: 2,
    };
    let mut skipped_total = 0;
    for mask in masks(s.sk, 2) {
        let p = problem(&mask, s);
        for w in [2, 4, 8] {
            for (lname, layout) in layouts(s, w) {
                let needs = layout.block_needs(&p).unwrap();
                for (qr, row) in needs.iter().enumerate() {
                    for (kr, &need) in row.iter().enumerate() {
                        let brute: u64 = layout
                            .q
                            .ranges(qr)
                            .iter()
                            .flat_map(|a| {
                                layout
                                    .k
                                    .ranges(kr)
                                    .iter()
                                    .map(|b| brute_pairs(&mask, s, a.clone(), b.clone()))
                            })
                            .sum();
                        assert_eq!(need, brute > 0, "{mask:?} W={w} {lname}: block (q rank {qr}, k rank {kr}) has {brute} allowed pairs");
                        skipped_total += usize::from(!need);
                    }
                }
                // The ring's own count of skipped steps is the needs matrix's.
                let x = inputs::<f64>(s, 3);
                let (_, stats) = run_forward(
                    Algo::Ring,
                    &ReferenceEngine {
                        precision: Precision::F64,
                    },
                    &p,
                    &layout,
                    &x,
                )
                .unwrap();
                for (r, st) in stats.iter().enumerate() {
                    let want = needs[r].iter().filter(|&&n| !n).count();
                    assert_eq!(st.skipped, want, "{mask:?} W={w} {lname} rank {r}");
                    assert_eq!(st.computed + st.skipped, w);
                }
            }
        }
    }
    // The masks leave many blocks empty (causal, local, chunked, documents ...).
    assert!(skipped_total > 100, "only {skipped_total} blocks skipped");
}

#[test]
fn skipped_blocks_are_never_sent() {
    // Causal, W = 4, contiguous: rank r needs the keys of ranks 0..=r; rank 3 sends to nobody.
    let s = Sizes {
        batch: 1,
        hq: 1,
        hkv: 1,
        sq: 16,
        sk: 16,
        d: 2,
        dv: 2,
    };
    let p = problem(&Mask::Causal, s);
    let layout = Layout {
        q: Partition::contiguous(16, 4).unwrap(),
        k: Partition::contiguous(16, 4).unwrap(),
    };
    let x = inputs::<f64>(s, 5);
    let (_, stats) = run_forward(Algo::Ring, &ReferenceEngine::default(), &p, &layout, &x).unwrap();
    let kv_bytes = 4 * (2 + 2) * 8; // 4 keys of K and V, D = Dv = 2, f64
    let sent: Vec<usize> = stats.iter().map(|s| s.bytes_sent).collect();
    assert_eq!(sent, vec![3 * kv_bytes, 2 * kv_bytes, kv_bytes, 0]);
    let skipped: Vec<usize> = stats.iter().map(|s| s.skipped).collect();
    assert_eq!(skipped, vec![3, 2, 1, 0]);
}
