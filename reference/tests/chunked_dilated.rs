//! Section 11: `chunked_causal(C)` and `dilated_causal(w, d)`, checked against the text of
//! variants.md written out again here without the reference's arithmetic: a chunk is found
//! by counting the chunk boundaries below a position, the dilated key set by stepping back
//! `d` positions at a time.

mod common;

use attnforge_reference::*;
use common::*;

/// The chunk of position `x >= 0`: how many chunk boundaries `C, 2C, ...` lie at or below it.
fn chunk_of(x: i64, c: u128) -> usize {
    (1..=x).filter(|t| (*t as u128).is_multiple_of(c)).count()
}

/// `chunked_causal(C)` from the text: `j <= p` and both in the same chunk.
fn chunked_text(p: i64, j: i64, c: u128) -> bool {
    j >= 0 && j <= p && chunk_of(j, c) == chunk_of(p, c)
}

/// `dilated_causal(w, d)` from the text: the keys `p, p - d, ..., p - w d` (those >= 0).
fn dilated_text(p: i64, j: i64, w: u128, d: u128) -> bool {
    let mut key = p as i128;
    let mut steps = 0u128;
    while key >= 0 {
        if key == j as i128 {
            return true;
        }
        if steps == w {
            return false;
        }
        steps += 1;
        key -= d as i128;
    }
    false
}

/// A mask written from the text: `(query position, key position) -> allowed`.
type TextMask = Box<dyn Fn(i64, i64) -> bool>;

/// Chunk lengths at the range edges (1, the sequence lengths around them, beyond any
/// position, the largest values) and in between.
fn chunks(sk: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (1..=sk + 2).collect();
    c.extend([i64::MAX as usize, i64::MAX as usize + 1, usize::MAX]);
    c
}

/// `(w, d)` pairs: every small one, plus the largest values of each.
fn dilations(sk: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for w in 0..=sk + 1 {
        for d in 1..=sk + 1 {
            v.push((w, d));
        }
    }
    for big in [i64::MAX as usize, usize::MAX] {
        v.extend([(big, 1), (0, big), (1, big), (big, big), (big, 2)]);
    }
    v
}

#[test]
fn allowed_matches_the_text_on_every_small_grid() {
    for sk in 1..=13usize {
        for sq in 1..=sk {
            let off = (sk - sq) as i64;
            for c in chunks(sk) {
                let m = Mask::ChunkedCausal { chunk: c };
                m.validate(2, sq, sk).unwrap();
                for i in 0..sq as i64 {
                    let p = i + off;
                    for j in 0..sk as i64 {
                        assert_eq!(
                            m.allowed(1, 0, p, j, sk),
                            chunked_text(p, j, c as u128),
                            "chunked_causal({c}) sq={sq} sk={sk} p={p} j={j}"
                        );
                    }
                }
            }
            for (w, d) in dilations(sk) {
                let m = Mask::DilatedCausal {
                    window: w,
                    dilation: d,
                };
                m.validate(2, sq, sk).unwrap();
                for i in 0..sq as i64 {
                    let p = i + off;
                    for j in 0..sk as i64 {
                        assert_eq!(
                            m.allowed(1, 0, p, j, sk),
                            dilated_text(p, j, w as u128, d as u128),
                            "dilated_causal({w}, {d}) sq={sq} sk={sk} p={p} j={j}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn hand_written_key_sets() {
    let keys =
        |m: &Mask, p: i64| -> Vec<i64> { (0..40).filter(|&j| m.allowed(0, 0, p, j, 40)).collect() };
    // chunks of 4: [0, 4), [4, 8), ...; position 9 sees 8 and 9, position 8 only itself
    let c4 = Mask::ChunkedCausal { chunk: 4 };
    assert_eq!(keys(&c4, 9), vec![8, 9]);
    assert_eq!(keys(&c4, 8), vec![8]);
    assert_eq!(keys(&c4, 7), vec![4, 5, 6, 7]);
    assert_eq!(keys(&Mask::ChunkedCausal { chunk: 1 }, 5), vec![5]);
    // w = 3 steps of d = 5 back from 17: 17, 12, 7, 2 (w + 1 keys)
    let d = |window, dilation| Mask::DilatedCausal { window, dilation };
    assert_eq!(keys(&d(3, 5), 17), vec![2, 7, 12, 17]);
    assert_eq!(keys(&d(3, 5), 16), vec![1, 6, 11, 16]);
    // near the start fewer keys exist
    assert_eq!(keys(&d(3, 5), 9), vec![4, 9]);
    assert_eq!(keys(&d(0, 7), 9), vec![9]);
    assert_eq!(keys(&d(2, 1), 9), vec![7, 8, 9]);
}

/// The attention of both masks equals the brute-force softmax over the text's key sets,
/// with `Sq < Sk` (bottom-right positions), GQA and a softcap; one-hot values make the
/// output row the weight vector, so each row's weights must sum to 1: no row is empty.
#[test]
fn attention_matches_brute_force_and_no_row_is_empty() {
    let o = AttnOptions::reference();
    let mut r = rng(11);
    for (sq, sk) in [
        (1usize, 1usize),
        (5, 5),
        (3, 11),
        (11, 11),
        (1, 17),
        (7, 16),
    ] {
        let (b, hq, hkv, dim) = (2, 4, 2, 3);
        let q = rand_tensor(&mut r, Shape4::new(b, hq, sq, dim), 1.5);
        let k = rand_tensor(&mut r, Shape4::new(b, hkv, sk, dim), 1.5);
        let v = one_hot(b, hkv, sk);
        let scale = 1.0 / (dim as f64).sqrt();
        let off = (sk - sq) as i64;
        let cases: Vec<(Mask, TextMask)> = vec![
            (
                Mask::ChunkedCausal { chunk: 1 },
                Box::new(|p, j| chunked_text(p, j, 1)),
            ),
            (
                Mask::ChunkedCausal { chunk: 4 },
                Box::new(|p, j| chunked_text(p, j, 4)),
            ),
            (
                Mask::ChunkedCausal { chunk: sk },
                Box::new(move |p, j| chunked_text(p, j, sk as u128)),
            ),
            (
                Mask::DilatedCausal {
                    window: 0,
                    dilation: 1,
                },
                Box::new(|p, j| dilated_text(p, j, 0, 1)),
            ),
            (
                Mask::DilatedCausal {
                    window: 2,
                    dilation: 3,
                },
                Box::new(|p, j| dilated_text(p, j, 2, 3)),
            ),
            (
                Mask::DilatedCausal {
                    window: usize::MAX,
                    dilation: 2,
                },
                Box::new(|p, j| dilated_text(p, j, u128::MAX, 2)),
            ),
        ];
        for softcap in [false, true] {
            let sm = if softcap {
                ScoreMod::Softcap(0.8)
            } else {
                ScoreMod::None
            };
            for (mask, text) in &cases {
                let got = attention(&q, &k, &v, mask, &sm, &o).unwrap();
                let want = brute(&q, &k, &v, |bi, h, i, j| {
                    let (p, j) = (i as i64 + off, j as i64);
                    text(p, j).then(|| {
                        let s = scale * dot(&row(&q, bi, h, i), &row(&k, bi, h / 2, j as usize));
                        if softcap {
                            0.8 * (s / 0.8).tanh()
                        } else {
                            s
                        }
                    })
                });
                let ctx = format!("{mask:?} softcap={softcap} sq={sq} sk={sk}");
                assert_same(&got, &want, 1e-9, &ctx);
                for (rix, lse) in got.lse.iter().enumerate() {
                    assert!(lse.is_finite(), "{ctx}: row {rix} is empty");
                    let s: f64 = got.out[rix * sk..(rix + 1) * sk].iter().sum();
                    assert!((s - 1.0).abs() < 1e-12, "{ctx}: row {rix} weights sum {s}");
                }
            }
        }
    }
}

/// Rows left empty by an intersection are zero with `lse = -inf` (never NaN); the others
/// keep the new mask's keys.
#[test]
fn empty_rows_in_an_intersection() {
    let o = AttnOptions::reference();
    let mut r = rng(5);
    let (sq, sk) = (6usize, 9usize);
    let q = rand_tensor(&mut r, Shape4::new(1, 1, sq, 2), 1.0);
    let k = rand_tensor(&mut r, Shape4::new(1, 1, sk, 2), 1.0);
    let v = one_hot(1, 1, sk);
    for m in [
        Mask::ChunkedCausal { chunk: 3 },
        Mask::DilatedCausal {
            window: 2,
            dilation: 2,
        },
    ] {
        // odd query positions see nothing
        let both = Mask::All(vec![m.clone(), Mask::predicate(|_, _, p, _| p % 2 == 0)]);
        let res = attention(&q, &k, &v, &both, &ScoreMod::None, &o).unwrap();
        let alone = attention(&q, &k, &v, &m, &ScoreMod::None, &o).unwrap();
        for i in 0..sq {
            let p = i + sk - sq;
            if p % 2 == 1 {
                assert_eq!(res.lse_at(0, 0, i), f64::NEG_INFINITY, "{m:?} row {i}");
                assert!(res.row(0, 0, i).iter().all(|x| *x == 0.0), "{m:?} row {i}");
            } else {
                assert_eq!(res.lse_at(0, 0, i), alone.lse_at(0, 0, i), "{m:?} row {i}");
                assert_eq!(res.row(0, 0, i), alone.row(0, 0, i), "{m:?} row {i}");
            }
        }
    }
}

/// Section 10 style identities: `chunked_causal(C >= Sk)` and `dilated_causal(w >= Sk, 1)`
/// are causal, `dilated_causal(w, 1)` is `local(w, 0)`, `chunked_causal(1)` and
/// `dilated_causal(0, d)` are the diagonal only.
#[test]
fn identities_with_existing_masks() {
    let o = AttnOptions::reference();
    let mut r = rng(7);
    for (sq, sk) in [(4usize, 4usize), (3, 10), (10, 10)] {
        let q = rand_tensor(&mut r, Shape4::new(1, 2, sq, 3), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(1, 1, sk, 3), 1.0);
        let v = rand_tensor(&mut r, Shape4::new(1, 1, sk, 2), 1.0);
        let run = |m: &Mask| attention(&q, &k, &v, m, &ScoreMod::None, &o).unwrap();
        let causal = run(&Mask::Causal);
        for c in [sk, sk + 1, usize::MAX] {
            assert_same(
                &causal,
                &run(&Mask::ChunkedCausal { chunk: c }),
                0.0,
                "chunked == causal",
            );
        }
        let dil = |window, dilation| Mask::DilatedCausal { window, dilation };
        assert_same(&causal, &run(&dil(sk, 1)), 0.0, "dilated(Sk, 1) == causal");
        for w in 0..4usize {
            let local = Mask::Local {
                left: w as i64,
                right: 0,
            };
            assert_same(
                &run(&local),
                &run(&dil(w, 1)),
                0.0,
                "dilated(w, 1) == local(w, 0)",
            );
        }
        let diag = run(&Mask::predicate(|_, _, p, j| p == j));
        assert_same(
            &diag,
            &run(&Mask::ChunkedCausal { chunk: 1 }),
            0.0,
            "chunked(1)",
        );
        assert_same(&diag, &run(&dil(0, 3)), 0.0, "dilated(0, d)");
    }
}

#[test]
fn bad_parameters_and_sq_gt_sk_are_named_errors() {
    let o = AttnOptions::reference();
    let t = |s: usize| Tensor4::from_fn(Shape4::new(1, 1, s, 2), |_, _, _, _| 0.5f32);
    let (q, k) = (t(4), t(4));
    let e = attention(
        &q,
        &k,
        &k,
        &Mask::ChunkedCausal { chunk: 0 },
        &ScoreMod::None,
        &o,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("Mask::ChunkedCausal::chunk") && e.contains(">= 1"),
        "{e}"
    );
    let zero_d = Mask::DilatedCausal {
        window: 3,
        dilation: 0,
    };
    let e = attention(&q, &k, &k, &zero_d, &ScoreMod::None, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Mask::DilatedCausal::dilation") && e.contains(">= 1"),
        "{e}"
    );
    // inside a combination too
    let e = attention(
        &q,
        &k,
        &k,
        &Mask::All(vec![Mask::Causal, zero_d]),
        &ScoreMod::None,
        &o,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Mask::DilatedCausal::dilation"), "{e}");
    // w = 0 and the largest values are valid
    let ok = [
        Mask::DilatedCausal {
            window: 0,
            dilation: 1,
        },
        Mask::DilatedCausal {
            window: usize::MAX,
            dilation: usize::MAX,
        },
        Mask::ChunkedCausal { chunk: usize::MAX },
    ];
    for m in &ok {
        attention(&q, &k, &k, m, &ScoreMod::None, &o).unwrap();
    }
    // Sq > Sk is an input error naming the mask
    let q5 = t(5);
    for (m, name) in [
        (Mask::ChunkedCausal { chunk: 2 }, "chunked_causal"),
        (
            Mask::DilatedCausal {
                window: 1,
                dilation: 1,
            },
            "dilated_causal",
        ),
    ] {
        let e = attention(&q5, &k, &k, &m, &ScoreMod::None, &o).unwrap_err();
        assert!(matches!(e, RefError::QueryLongerThanKeys { .. }), "{e:?}");
        assert!(e.to_string().contains(name), "{e}");
    }
}
