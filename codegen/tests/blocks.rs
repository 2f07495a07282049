//! Block lists and tile classification vs brute force.

use attnforge_codegen::blocks::classify_lminf_tile;
use attnforge_codegen::masks::MaskParams;
use attnforge_codegen::prelude::*;
use proptest::prelude::*;

fn brute(m: &HostMask, plo: i64, phi: i64, c0: i64, c1: i64) -> TileKind {
    let (mut n, mut tot) = (0, 0);
    for p in plo..=phi {
        for j in c0..=c1 {
            tot += 1;
            n += usize::from(m.allowed(0, 0, p, j));
        }
    }
    if n == 0 {
        TileKind::Skip
    } else if n == tot {
        TileKind::Full
    } else {
        TileKind::Partial
    }
}

/// A table mask with the given parameter values.
fn hm(tag: &str, values: &[(&str, i64)]) -> HostMask {
    let p = values
        .iter()
        .fold(MaskParams::new(), |p, (n, v)| p.with(n, *v));
    HostMask::new(BuiltinMask::from_tag(tag).unwrap(), &p)
}

fn analytic_mask() -> impl Strategy<Value = HostMask> {
    prop_oneof![
        Just(hm("full", &[])),
        Just(hm("causal", &[])),
        (-3i64..40, -3i64..40).prop_map(|(left, right)| hm(
            "local",
            &[("window_left", left), ("window_right", right)]
        )),
        (0i64..60).prop_map(|prefix_len| hm("prefix_lm", &[("prefix_len", prefix_len)])),
        (0i64..30, 0i64..20).prop_map(|(window, global_tokens)| hm(
            "global_local",
            &[("window", window), ("global_tokens", global_tokens)]
        )),
        (0i64..20, 0i64..40).prop_map(|(global_tokens, local_window)| hm(
            "lambda_mask",
            &[
                ("global_tokens", global_tokens),
                ("local_window", local_window)
            ]
        )),
    ]
}

fn doc_mask() -> impl Strategy<Value = (HostMask, usize)> {
    (prop::collection::vec(0i32..3, 1..90), 0usize..4, 1i64..20).prop_map(|(steps, kind, bc)| {
        // non-decreasing doc ids starting at 0 (share_question needs a 0 prefix)
        let mut acc = 0;
        let doc: Vec<i32> = steps
            .iter()
            .map(|s| {
                acc += i32::from(*s == 0);
                acc
            })
            .collect();
        let seq_k = doc.len();
        let m = match kind {
            0 => hm("document", &[]),
            1 => hm("causal_document", &[]),
            2 => hm("share_question", &[]),
            _ => hm("block_causal_document", &[("doc_block", bc)]),
        };
        (m.with_doc(doc, seq_k), seq_k)
    })
}

proptest! {
    #[test]
    fn analytic_classifier_is_exact(m in analytic_mask(), plo in -10i64..80, h in 0i64..40, c0 in 0i64..100, w in 0i64..40) {
        let (phi, c1) = (plo + h, c0 + w);
        prop_assert_eq!(classify_tile(&m, plo, phi, c0, c1), Some(brute(&m, plo, phi, c0, c1)), "{:?}", m);
    }

    #[test]
    fn lminf_classifier_is_exact(g in 0i64..20, l in 0i64..40, plo in 0i64..80, h in 0i64..40, c0 in 0i64..100, w in 0i64..40) {
        let (phi, c1) = (plo + h, c0 + w);
        let mut n_near = 0; let mut n_far = 0; let mut tot = 0;
        for p in plo..=phi { for j in c0..=c1 {
            tot += 1;
            if j <= p && p - j < l { n_near += 1 } else if j <= p && j < g { n_far += 1 }
        }}
        let want = if n_near + n_far == 0 { TileKind::Skip } else if n_near == tot || n_far == tot { TileKind::Full } else { TileKind::Partial };
        prop_assert_eq!(classify_lminf_tile(plo, phi, c0, c1, g, l), want);
    }

    #[test]
    fn builder_matches_brute_force((m, sk) in doc_mask(), sq_cut in 0usize..90, bq in prop::sample::select(vec![1usize, 4, 16, 32]),
                                    bk in prop::sample::select(vec![1usize, 8, 32])) {
        let sq = 1 + sq_cut % sk;
        let bs = BlockSize { q: bq, k: bk };
        let l = build_block_lists(1, 1, sq, sk, bs, |b, h, p, j| m.allowed(b, h, p, j));
        validate_block_lists(&l, 3, 5, sq, sk, bs).unwrap();
        let shift = sk as i64 - sq as i64;
        for r in 0..sq.div_ceil(bq) {
            for c in 0..sk.div_ceil(bk) {
                let (mut n, mut tot) = (0, 0);
                for i in r * bq..(r + 1) * bq {
                    for j in c * bk..(c + 1) * bk {
                        tot += 1;
                        if i < sq && j < sk && m.allowed(0, 0, i as i64 + shift, j as i64) { n += 1 }
                    }
                }
                let full = l.full(0, 0, r).contains(&(c as i32));
                let part = l.partial(0, 0, r).contains(&(c as i32));
                prop_assert_eq!(full, n == tot);
                prop_assert_eq!(part, n > 0 && n < tot);
            }
        }
    }

    /// The backward's transposed lists, per (batch, head): key block `c` lists query block
    /// `r` as full (partial) exactly when row `r` lists `c` as full (partial), ascending;
    /// built per batch and head from a doc mask with a head-dependent cut, so a transposition
    /// that mixes batches or heads fails.
    #[test]
    fn transposed_lists_swap_rows_and_columns((m, sk) in doc_mask(), sq_cut in 0usize..90,
                                              bq in prop::sample::select(vec![1usize, 4, 16]),
                                              bk in prop::sample::select(vec![1usize, 8, 32])) {
        let sq = 1 + sq_cut % sk;
        let bs = BlockSize { q: bq, k: bk };
        let l = build_block_lists(2, 3, sq, sk, bs, |b, h, p, j| {
            m.allowed(b, h, p, j) && (j + b as i64 + h as i64) % 5 != 0
        });
        validate_block_lists(&l, 2, 3, sq, sk, bs).unwrap();
        let t = l.transposed();
        let (rows, cols) = (sq.div_ceil(bq), sk.div_ceil(bk));
        prop_assert_eq!((t.batches, t.heads, t.rows, t.cols), (2, 3, cols, rows));
        validate_block_lists(&t, 2, 3, sk, sq, BlockSize { q: bk, k: bq }).unwrap();
        for b in 0..2 {
            for h in 0..3 {
                for c in 0..cols {
                    let want_full: Vec<i32> = (0..rows as i32)
                        .filter(|&r| l.full(b, h, r as usize).contains(&(c as i32)))
                        .collect();
                    let want_part: Vec<i32> = (0..rows as i32)
                        .filter(|&r| l.partial(b, h, r as usize).contains(&(c as i32)))
                        .collect();
                    prop_assert_eq!(t.full(b, h, c), &want_full[..]);
                    prop_assert_eq!(t.partial(b, h, c), &want_part[..]);
                }
            }
        }
        let back = t.transposed();
        for b in 0..2 {
            for h in 0..3 {
                for r in 0..rows {
                    prop_assert_eq!(back.full(b, h, r), l.full(b, h, r));
                    prop_assert_eq!(back.partial(b, h, r), l.partial(b, h, r));
                }
            }
        }
    }

    #[test]
    fn builder_agrees_with_classifier_for_analytic_masks(m in analytic_mask(), sq in 1usize..70, extra in 0usize..30) {
        let sk = sq + extra;
        let bs = BlockSize { q: 16, k: 8 };
        let l = build_block_lists(1, 1, sq, sk, bs, |b, h, p, j| m.allowed(b, h, p, j));
        let shift = sk as i64 - sq as i64;
        for r in 0..sq.div_ceil(16) {
            for c in 0..sk.div_ceil(8) {
                let (i1, j1) = (((r + 1) * 16).min(sq), ((c + 1) * 8).min(sk));
                let k = classify_tile(&m, (r * 16) as i64 + shift, i1 as i64 - 1 + shift, (c * 8) as i64, j1 as i64 - 1).unwrap();
                let complete = i1 == (r + 1) * 16 && j1 == (c + 1) * 8;
                let listed_full = l.full(0, 0, r).contains(&(c as i32));
                let listed_part = l.partial(0, 0, r).contains(&(c as i32));
                prop_assert_eq!(listed_full, k == TileKind::Full && complete);
                prop_assert_eq!(listed_part, k == TileKind::Partial || (k == TileKind::Full && !complete));
            }
        }
    }
}

#[test]
fn validation_reports_every_list_error() {
    let bs = BlockSize { q: 32, k: 32 };
    // 1 batch, 2 heads, 2 rows, 3 key blocks (seq_k = 90)
    let rows = vec![
        (vec![0, 0], vec![]),  // duplicate
        (vec![2, 1], vec![1]), // unsorted, and 1 in both lists
        (vec![3], vec![]),     // out of range
        (vec![], vec![-1]),    // negative
    ];
    let l = BlockLists::from_rows(1, 2, 2, 3, &rows);
    let e = validate_block_lists(&l, 4, 2, 64, 90, bs).unwrap_err();
    let p: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        p,
        [
            "block_lists.full_idx[0][0][0][1]",
            "block_lists.full_idx[0][0][1][1]",
            "block_lists.partial_idx[0][0][1][0]",
            "block_lists.full_idx[0][1][0][0]",
            "block_lists.partial_idx[0][1][1][0]",
        ]
    );
    // extents: heads 2 is neither 1 nor heads_q; rows do not match seq_q
    let e = validate_block_lists(&l, 4, 8, 200, 90, bs).unwrap_err();
    let p: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(p, ["block_lists.heads", "block_lists.rows"]);
    let mut bad = l.clone();
    bad.full_num[0] = 9;
    let e = validate_block_lists(&bad, 1, 2, 64, 90, bs).unwrap_err();
    assert!(e.iter().any(|e| e.path == "block_lists.full_num[0][0][0]"));
}

#[test]
fn broadcast_lists() {
    let l = build_block_lists(1, 1, 64, 64, BlockSize { q: 32, k: 32 }, |_, _, p, j| {
        j <= p
    });
    for (b, h) in [(0, 0), (3, 7)] {
        assert_eq!(l.full(b, h, 1), &[0]);
        assert_eq!(l.partial(b, h, 1), &[1]);
    }
    validate_block_lists(&l, 4, 8, 64, 64, BlockSize { q: 32, k: 32 }).unwrap();
}
