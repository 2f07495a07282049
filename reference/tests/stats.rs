//! Section 14 statistics (key_mass, key_score, top_keys) checked against brute forces written
//! here from the text of variants.md, plus metamorphic properties.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::*;
use half::{bf16, f16};
use proptest::prelude::*;

/// Weights `P[b][h][i][j]` straight from section 0: softmax of the allowed scores, 0 elsewhere.
fn brute_weights(
    q: &Tensor4<f32>,
    k: &Tensor4<f32>,
    allowed: impl Fn(usize, i64, i64) -> bool,
) -> Vec<Vec<Vec<Vec<f64>>>> {
    let (bn, hq, sq, d) = (q.shape.batch, q.shape.heads, q.shape.seq, q.shape.dim);
    let sk = k.shape.seq;
    let group = hq / k.shape.heads;
    let scale = 1.0 / (d as f64).sqrt();
    (0..bn)
        .map(|b| {
            (0..hq)
                .map(|h| {
                    (0..sq)
                        .map(|i| {
                            let p = i as i64 + sk as i64 - sq as i64;
                            let s: Vec<Option<f64>> = (0..sk)
                                .map(|j| {
                                    allowed(b, p, j as i64).then(|| {
                                        scale * dot(&row(q, b, h, i), &row(k, b, h / group, j))
                                    })
                                })
                                .collect();
                            let z: f64 = s.iter().flatten().map(|x| x.exp()).sum();
                            s.iter().map(|x| x.map_or(0.0, |x| x.exp() / z)).collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// key_mass equals the brute-force column sums of P; each head's key_mass sums to its
    /// number of non-empty rows (causal with Sq > Sk has empty rows); key_score is the sum or
    /// the max over the GQA group, then the clipped max-pool; `out`/`lse` are unchanged.
    #[test]
    fn key_mass_and_score_match_text(b in 1..=2usize, hkv in 1..=2usize, grp in 1..=3usize, sq in 1..=7usize,
                                     sk in 1..=9usize, causal in any::<bool>(), reduce_max in any::<bool>(),
                                     kp in prop::sample::select(vec![1usize, 3, 5, 7]), seed in any::<u64>()) {
        let hq = hkv * grp;
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(b, hq, sq, 4), 1.5);
        let k = rand_tensor(&mut r, Shape4::new(b, hkv, sk, 4), 1.5);
        let v = rand_tensor(&mut r, Shape4::new(b, hkv, sk, 3), 1.0);
        let mask = if causal { Mask::Causal } else { Mask::Full };
        let reduce = if reduce_max { StatReduce::Max } else { StatReduce::Sum };
        let params = StatsParams { reduce, pool: Some(kp), top_k: 3 };
        let opts = AttnOptions::reference();
        let (out, st) = attention_stats(&q, &k, &v, &mask, &ScoreMod::None, &params, &opts).unwrap();
        prop_assert_eq!(&out, &attention(&q, &k, &v, &mask, &ScoreMod::None, &opts).unwrap());
        let p = brute_weights(&q, &k, |_, i, j| !causal || j <= i);
        for bi in 0..b {
            for h in 0..hq {
                let nonempty = (0..sq).filter(|&i| !causal || i as i64 + sk as i64 - sq as i64 >= 0).count();
                let total: f64 = st.mass(bi, h).iter().sum();
                prop_assert!(close(total, nonempty as f64, 1e-12), "sum of key_mass {} vs {} rows", total, nonempty);
                for j in 0..sk {
                    let want: f64 = (0..sq).map(|i| p[bi][h][i][j]).sum();
                    prop_assert!(close(st.mass(bi, h)[j], want, 1e-12), "key_mass[{},{},{}]", bi, h, j);
                }
            }
            for g in 0..hkv {
                let reduced: Vec<f64> = (0..sk).map(|j| {
                    let vals = (g * grp..(g + 1) * grp).map(|h| (0..sq).map(|i| p[bi][h][i][j]).sum::<f64>());
                    if reduce_max { vals.fold(f64::NEG_INFINITY, f64::max) } else { vals.sum() }
                }).collect();
                for j in 0..sk {
                    let lo = j.saturating_sub(kp / 2);
                    let hi = (j + kp / 2).min(sk - 1);
                    let want = reduced[lo..=hi].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    prop_assert!(close(st.score(bi, g)[j], want, 1e-12), "key_score[{},{},{}]", bi, g, j);
                }
            }
        }
    }

    /// top_keys on integer inputs (exact ties): the K largest positive key_score, descending,
    /// ties by lower index, -1 padded; checked by an independent selection (repeated argmax).
    #[test]
    fn top_keys_match_text(hkv in 1..=2usize, grp in 1..=2usize, sq in 1..=4usize, sk in 1..=10usize,
                           top_k in 1..=12usize, local in 0..4i64, seed in any::<u64>()) {
        let hq = hkv * grp;
        let mut r = rng(seed);
        let q = int_tensor(&mut r, Shape4::new(1, hq, sq.min(sk), 2), 1);
        let k = int_tensor(&mut r, Shape4::new(1, hkv, sk, 2), 1);
        let mask = Mask::Local { left: local, right: 0 };
        let params = StatsParams { reduce: StatReduce::Max, pool: None, top_k };
        let (_, st) = attention_stats(&q, &k, &k, &mask, &ScoreMod::None, &params, &AttnOptions::reference()).unwrap();
        for g in 0..hkv {
            let s = st.score(0, g);
            let mut taken = vec![false; sk];
            let mut want = Vec::new();
            for _ in 0..top_k {
                let mut best: Option<usize> = None;
                for j in 0..sk {
                    if !taken[j] && s[j] > 0.0 && best.is_none_or(|b| s[j] > s[b]) {
                        best = Some(j);
                    }
                }
                match best {
                    Some(j) => { taken[j] = true; want.push(j as i64); }
                    None => want.push(-1),
                }
            }
            prop_assert_eq!(st.top(0, g), &want[..]);
        }
    }
}

/// The clipped max-pool at both ends and in the middle, written out by hand.
#[test]
fn max_pool_window_edges() {
    let x = [5.0, 0.0, 0.0, 1.0, 0.0, 0.0, 3.0];
    assert_eq!(
        max_pool_1d(&x, 3).unwrap(),
        vec![5.0, 5.0, 1.0, 1.0, 1.0, 3.0, 3.0]
    );
    assert_eq!(
        max_pool_1d(&x, 5).unwrap(),
        vec![5.0, 5.0, 5.0, 1.0, 3.0, 3.0, 3.0]
    );
    assert_eq!(max_pool_1d(&x, 1).unwrap(), x.to_vec());
    // A window wider than the row: every entry is the row maximum.
    assert_eq!(max_pool_1d(&[0.5, 2.0, 1.0], 7).unwrap(), vec![2.0; 3]);
    assert_eq!(max_pool_1d(&[4.0], 7).unwrap(), vec![4.0]);
    let e = max_pool_1d(&x, 4).unwrap_err();
    assert!(e.to_string().contains("StatsParams::pool"), "{e}");
    let q = Tensor4::from_fn(Shape4::new(1, 1, 2, 2), |_, _, s, d| (s + d) as f32);
    let p = StatsParams {
        reduce: StatReduce::Sum,
        pool: Some(6),
        top_k: 1,
    };
    let e = attention_stats(
        &q,
        &q,
        &q,
        &Mask::Full,
        &ScoreMod::None,
        &p,
        &AttnOptions::reference(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("odd"), "{e}");
}

/// Tie rule with all-equal scores, K larger than the candidates, zero scores never eligible.
#[test]
fn top_keys_ties_and_padding() {
    assert_eq!(top_keys(&[0.25; 5], 3), vec![0, 1, 2]);
    assert_eq!(top_keys(&[0.0, 2.0, 0.0, 1.0], 5), vec![1, 3, -1, -1, -1]);
    assert_eq!(top_keys(&[1.0, 3.0, 3.0, 2.0, 3.0], 4), vec![1, 2, 4, 3]);
    assert_eq!(top_keys(&[0.0; 3], 2), vec![-1, -1]);
    // q = 0: every allowed key has the same weight; ranking keeps the lowest indices.
    let q = Tensor4::from_fn(Shape4::new(1, 2, 1, 4), |_, _, _, _| 0.0f32);
    let k = Tensor4::from_fn(Shape4::new(1, 1, 6, 4), |_, _, s, d| (s * d) as f32);
    let p = StatsParams {
        reduce: StatReduce::Sum,
        pool: None,
        top_k: 4,
    };
    let (_, st) = attention_stats(
        &q,
        &k,
        &k,
        &Mask::Full,
        &ScoreMod::None,
        &p,
        &AttnOptions::reference(),
    )
    .unwrap();
    assert_eq!(st.top(0, 0), &[0, 1, 2, 3]);
    assert!(st.score(0, 0).iter().all(|&s| close(s, 2.0 / 6.0, 1e-14)));
}

/// Rows without an allowed key contribute nothing: causal with Sq > Sk (rows at p < 0), and
/// a mask with no key at all (every key_mass 0, every top_keys entry -1).
#[test]
fn empty_rows_contribute_nothing() {
    let q = Tensor4::from_fn(Shape4::new(1, 2, 5, 2), |_, h, s, d| {
        (h + s + d) as f32 * 0.3
    });
    let k = Tensor4::from_fn(Shape4::new(1, 1, 3, 2), |_, _, s, d| (s * d) as f32 * 0.5);
    let p = StatsParams {
        reduce: StatReduce::Max,
        pool: Some(3),
        top_k: 5,
    };
    let opts = AttnOptions::reference();
    let (out, st) = attention_stats(&q, &k, &k, &Mask::Causal, &ScoreMod::None, &p, &opts).unwrap();
    // Rows 0 and 1 sit at p = -2, -1: empty; rows 2..5 see 1, 2, 3 keys.
    assert_eq!(out.lse[0], f64::NEG_INFINITY);
    for h in 0..2 {
        assert!(close(st.mass(0, h).iter().sum::<f64>(), 3.0, 1e-12));
        // Key 0 is seen by three rows, with weight 1 in the row at p = 0.
        assert!(st.mass(0, h)[0] > 1.0);
    }
    let none = Mask::Any(vec![]);
    let (_, st) = attention_stats(&k, &k, &k, &none, &ScoreMod::None, &p, &opts).unwrap();
    assert!(st.key_mass.iter().all(|&m| m == 0.0));
    assert_eq!(st.top(0, 0), &[-1; 5]);
}

/// Statistics of a score-modified, document-masked call equal the ones computed from the
/// weights of the same call on one-hot values, and the one-hot route covers LM-Infinite.
#[test]
fn weights_route_agrees_with_direct_route() {
    let mut r = rng(7);
    let q = rand_tensor(&mut r, Shape4::new(2, 4, 6, 4), 1.0);
    let k = rand_tensor(&mut r, Shape4::new(2, 2, 6, 4), 1.0);
    let v = rand_tensor(&mut r, Shape4::new(2, 2, 6, 2), 1.0);
    let mask = Mask::CausalDocument {
        doc: vec![0, 0, 1, 1, 1, 2],
    };
    let sm = ScoreMod::Chain(vec![
        ScoreMod::Softcap(2.0),
        ScoreMod::Alibi(alibi_slopes(4)),
    ]);
    let p = StatsParams {
        reduce: StatReduce::Sum,
        pool: Some(3),
        top_k: 4,
    };
    let opts = AttnOptions::reference();
    let (_, direct) = attention_stats(&q, &k, &v, &mask, &sm, &p, &opts).unwrap();
    let w = attention(&q, &k, &one_hot_values::<f32>(2, 2, 6), &mask, &sm, &opts).unwrap();
    let via = key_stats_from_weights(&w, 2, &p).unwrap();
    assert_eq!(direct.top_keys, via.top_keys);
    for (a, b) in direct.key_score.iter().zip(&via.key_score) {
        assert!(close(*a, *b, 1e-12));
    }
    let lm = LmInfiniteParams {
        global: 1,
        local: 2,
        dist_limit: 4,
        theta: 100.0,
    };
    let w = lm_infinite_attention(&q, &k, &one_hot_values::<f32>(2, 2, 6), &lm, &opts).unwrap();
    let st = key_stats_from_weights(&w, 2, &p).unwrap();
    for h in 0..4 {
        assert!(close(st.mass(1, h).iter().sum::<f64>(), 6.0, 1e-12));
        // Keys 1..=3 are outside the window of row 5 (distance >= 2) and not global.
        assert!(st.mass(1, h)[0] > 0.0);
    }
    assert!(key_stats_from_weights(&w, 3, &p).is_err());
    // Section 4: block-sparse lists built from a mask give that mask's statistics.
    let local = Mask::Local { left: 2, right: 0 };
    let geom = BlockGeometry {
        batch: 2,
        q_heads: 4,
        q_len: 6,
        k_len: 6,
        block_q: 2,
        block_k: 2,
    };
    let lists = block_lists_from_mask(&local, &geom).unwrap();
    let onehot = one_hot_values::<f32>(2, 2, 6);
    let w =
        block_sparse_attention(&q, &k, &onehot, &lists, &local, &ScoreMod::None, &opts).unwrap();
    let via = key_stats_from_weights(&w, 2, &p).unwrap();
    let (_, direct) = attention_stats(&q, &k, &v, &local, &ScoreMod::None, &p, &opts).unwrap();
    assert_eq!(direct.top_keys, via.top_keys);
    for (a, b) in direct.key_mass.iter().zip(&via.key_mass) {
        assert!(close(*a, *b, 1e-12));
    }
}

fn naive_case<T: Element>(tol: f64) {
    let mut r = rng(11);
    let conv =
        |t: Tensor4<f32>| Tensor4::from_fn(t.shape, |b, h, s, d| T::from_f64(t.get(b, h, s, d)));
    let q = conv(rand_tensor(&mut r, Shape4::new(1, 4, 5, 8), 1.0));
    let k = conv(rand_tensor(&mut r, Shape4::new(1, 2, 9, 8), 1.0));
    let v = conv(rand_tensor(&mut r, Shape4::new(1, 2, 9, 4), 1.0));
    let p = StatsParams {
        reduce: StatReduce::Max,
        pool: Some(3),
        top_k: 9,
    };
    let mask = Mask::Local { left: 4, right: 1 };
    let (n_out, n) = attention_stats(
        &q,
        &k,
        &v,
        &mask,
        &ScoreMod::None,
        &p,
        &AttnOptions::naive(),
    )
    .unwrap();
    let (_, f) = attention_stats(
        &q,
        &k,
        &v,
        &mask,
        &ScoreMod::None,
        &p,
        &AttnOptions::reference(),
    )
    .unwrap();
    assert_eq!(
        n_out,
        attention(&q, &k, &v, &mask, &ScoreMod::None, &AttnOptions::naive()).unwrap()
    );
    let err = n
        .key_mass
        .iter()
        .zip(&f.key_mass)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err <= tol, "{:?}: naive key_mass error {err}", T::DTYPE);
    // The naive path is f32 arithmetic: not bit-identical to f64, but close.
    assert!(n.key_mass.iter().all(|x| (*x as f32) as f64 == *x));
    for h in 0..4 {
        assert!(close(n.mass(0, h).iter().sum::<f64>(), 5.0, 1e-5));
    }
}

/// The naive (f32) path of every dtype stays within f32 rounding of the f64 statistics.
#[test]
fn naive_path_every_dtype() {
    naive_case::<f32>(1e-5);
    naive_case::<f16>(1e-5);
    naive_case::<bf16>(1e-5);
    naive_case::<f64>(1e-5);
}
