//! Section 4: block-sparse semantics, builders and the section 10 identities.
// Brute forces index arrays exactly as the formulas of variants.md do.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::*;
use proptest::prelude::*;

fn geom(b: usize, hq: usize, sq: usize, sk: usize, bq: usize, bk: usize) -> BlockGeometry {
    BlockGeometry {
        batch: b,
        q_heads: hq,
        q_len: sq,
        k_len: sk,
        block_q: bq,
        block_k: bk,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every block full == dense full; lists built from a mask == that mask (with a score mod).
    #[test]
    fn all_full_is_dense_and_built_lists_are_the_mask(
        b in 1..=2usize, hkv in 1..=2usize, grp in 1..=2usize, sq in 1..=7usize, extra in 0..4usize,
        d in 1..=4usize, bq in 1..=4usize, bk in 1..=4usize, seed in any::<u64>(), left in -1..4i64,
    ) {
        let (hq, sk) = (hkv * grp, sq + extra);
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(b, hq, sq, d), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(b, hkv, sk, d), 1.0);
        let v = rand_tensor(&mut r, Shape4::new(b, hkv, sk, 3), 1.0);
        let o = AttnOptions::reference();
        let g = geom(b, hq, sq, sk, bq, bk);
        let all: Vec<usize> = (0..g.k_blocks()).collect();
        let lists = BlockLists {
            batch: 1, heads: 1, q_blocks: g.q_blocks(), block_q: bq, block_k: bk,
            full: vec![all; g.q_blocks()], partial: vec![Vec::new(); g.q_blocks()],
        };
        // The mask is never evaluated for full blocks: pass one that allows nothing.
        let nothing = Mask::predicate(|_, _, _, _| false);
        let bs = block_sparse_attention(&q, &k, &v, &lists, &nothing, &ScoreMod::None, &o).unwrap();
        assert_same(&bs, &dense_attention(&q, &k, &v, false, &o).unwrap(), 0.0, "all full");

        let mask = Mask::Any(vec![Mask::Local { left, right: 0 }, Mask::predicate(|_, _, _, j| j < 1)]);
        let sm = ScoreMod::Softcap(2.0);
        let built = block_lists_from_mask(&mask, &g).unwrap();
        // Full/partial/absent rule, brute-forced from the text.
        let off = sk as i64 - sq as i64;
        for bi in 0..b { for h in 0..hq { for rb in 0..g.q_blocks() { for c in 0..g.k_blocks() {
            let mut cnt = 0; let mut total = 0;
            for i in rb * bq..(rb + 1) * bq { for j in c * bk..(c + 1) * bk {
                total += 1;
                if i < sq && j < sk {
                    let p = i as i64 + off;
                    let ok = ((left < 0 || j as i64 >= p - left) && j as i64 <= p) || j < 1;
                    if ok { cnt += 1; }
                }
            }}
            let in_full = built.full_at(bi, h, rb).contains(&c);
            let in_part = built.partial_at(bi, h, rb).contains(&c);
            prop_assert_eq!(in_full, cnt == total);
            prop_assert_eq!(in_part, cnt > 0 && cnt < total);
        }}}}
        let bs = block_sparse_attention(&q, &k, &v, &built, &mask, &sm, &o).unwrap();
        assert_same(&bs, &attention(&q, &k, &v, &mask, &sm, &o).unwrap(), 1e-12, "built lists");
        let (f, p) = built.tile_counts(b, hq);
        prop_assert_eq!(f + p, built.full.iter().chain(&built.partial).map(Vec::len).sum::<usize>());
    }

    /// Partial blocks evaluate the mask, unlisted blocks are skipped, extent-1 lists broadcast.
    #[test]
    fn list_semantics_by_brute_force(
        sq in 1..=6usize, extra in 0..3usize, bq in 1..=3usize, bk in 1..=3usize, seed in any::<u64>(),
    ) {
        let (b, hq, sk, d) = (2, 2, sq + extra, 3);
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(b, hq, sq, d), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(b, 1, sk, d), 1.0);
        let v = one_hot(b, 1, sk);
        let g = geom(b, hq, sq, sk, bq, bk);
        let (nq, nk) = (g.q_blocks(), g.k_blocks());
        // Per-batch lists, head extent 1: each block is full, partial or absent at random.
        let mut full = Vec::new();
        let mut partial = Vec::new();
        for _ in 0..b * nq {
            let (mut f, mut p) = (Vec::new(), Vec::new());
            for c in 0..nk {
                match rand::Rng::gen_range(&mut r, 0..3) { 0 => f.push(c), 1 => p.push(c), _ => {} }
            }
            full.push(f); partial.push(p);
        }
        let lists = BlockLists { batch: b, heads: 1, q_blocks: nq, block_q: bq, block_k: bk, full: full.clone(), partial: partial.clone() };
        let mask = Mask::predicate(|b, h, i, j| (i * 7 + j * 3 + b as i64 + h as i64) % 4 != 0);
        let got = block_sparse_attention(&q, &k, &v, &lists, &mask, &ScoreMod::None, &AttnOptions::reference()).unwrap();
        let off = (sk - sq) as i64;
        let scale = 1.0 / (d as f64).sqrt();
        let want = brute(&q, &k, &v, |bi, h, i, j| {
            let (rb, c) = (i / bq, j / bk);
            let p = i as i64 + off;
            let ok = full[bi * nq + rb].contains(&c)
                || (partial[bi * nq + rb].contains(&c) && (p * 7 + j as i64 * 3 + bi as i64 + h as i64) % 4 != 0);
            ok.then(|| scale * dot(&row(&q, bi, h, i), &row(&k, bi, 0, j)))
        });
        assert_same(&got, &want, 1e-12, "lists");
    }

    /// Random layout: exact count per query block, sorted, shared within a GQA group, seeded.
    #[test]
    fn random_layout(b in 1..=2usize, hkv in 1..=3usize, grp in 1..=3usize, sq in 1..=20usize,
                     extra in 0..20usize, bq in 1..=5usize, bk in 1..=5usize, rho in 0.0f64..=1.0, seed in any::<u64>()) {
        let g = geom(b, hkv * grp, sq, sq + extra, bq, bk);
        let l = random_block_lists(&g, hkv, rho, seed).unwrap();
        let nk = g.k_blocks();
        let keep = ((rho * nk as f64).floor() as usize).max(1);
        for bi in 0..b { for h in 0..hkv * grp { for r in 0..g.q_blocks() {
            let f = l.full_at(bi, h, r);
            prop_assert_eq!(f.len(), keep);
            prop_assert!(f.windows(2).all(|w| w[0] < w[1]) && f.iter().all(|&c| c < nk));
            prop_assert!(l.partial_at(bi, h, r).is_empty());
            prop_assert_eq!(f, l.full_at(bi, (h / grp) * grp, r));
        }}}
        prop_assert_eq!(&l, &random_block_lists(&g, hkv, rho, seed).unwrap());
    }

    /// BigBird lists, brute-forced from the text.
    #[test]
    fn bigbird_layout(sq in 1..=24usize, extra in 0..10usize, bq in 1..=4usize, bk in 1..=4usize, per_row in 0..3usize, seed in any::<u64>()) {
        let g = geom(1, 1, sq, sq + extra, bq, bk);
        let (nq, nk) = (g.q_blocks(), g.k_blocks());
        let mut r = rng(seed);
        let random: Vec<i64> = (0..nq * per_row).map(|_| rand::Rng::gen_range(&mut r, -1..nk as i64)).collect();
        let l = bigbird_block_lists(&g, &random, per_row).unwrap();
        for rb in 0..nq {
            let want: Vec<usize> = (0..nk).filter(|&c| {
                rb == 0 || rb == nq - 1 || c == 0 || c == nk - 1 || (rb as i64 - c as i64).abs() <= 1
                    || random[rb * per_row..(rb + 1) * per_row].contains(&(c as i64))
            }).collect();
            prop_assert_eq!(l.full_at(0, 0, rb), &want[..]);
        }
    }
}

#[test]
fn flex_arrays_round_trip() {
    let l = BlockLists::from_flex_arrays(
        (1, 1, 2),
        (2, 2),
        (&[1, 0], &[1, 9, 9, 9]),
        (&[1, 2], &[0, 9, 0, 1]),
    )
    .unwrap();
    assert_eq!(l.partial, vec![vec![1], vec![]]);
    assert_eq!(l.full, vec![vec![0], vec![0, 1]]);
    assert!(l.validate(1, 1, 4, 4).is_ok());
}
