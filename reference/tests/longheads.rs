//! Section 15 (LongHeads) against a brute force written here from the text of variants.md:
//! chunk summaries, chunk selection (forced chunks, ties), compressed RoPE positions, prefill
//! and decoding rows, lengths that are not chunk multiples, GQA.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::*;
use half::{bf16, f16};
use proptest::prelude::*;

fn rope_text(x: &[f64], t: usize, theta: f64) -> Vec<f64> {
    let d = x.len();
    let mut y = x.to_vec();
    for m in 0..d / 2 {
        let a = t as f64 * theta.powf(-2.0 * m as f64 / d as f64);
        y[m] = x[m] * a.cos() - x[m + d / 2] * a.sin();
        y[m + d / 2] = x[m + d / 2] * a.cos() + x[m] * a.sin();
    }
    y
}

struct Text {
    w: usize,
    m: usize,
    begin: usize,
    theta: f64,
}

impl Text {
    fn params(&self) -> LongHeadsParams {
        LongHeadsParams {
            chunk: self.w,
            chunks_per_query: self.m,
            begin: self.begin,
            theta: self.theta,
        }
    }

    /// r_c for (b, h) from the prefill queries.
    fn summary(
        &self,
        q: &Tensor4<f32>,
        k: &Tensor4<f32>,
        v: &Tensor4<f32>,
        b: usize,
        h: usize,
        c: usize,
    ) -> Vec<f64> {
        let g = h / (q.shape.heads / k.shape.heads);
        let d = q.shape.dim;
        let inv = 1.0 / (d as f64).sqrt();
        let toks: Vec<usize> = (c * self.w..(c + 1) * self.w).collect();
        let kt: Vec<Vec<f64>> = toks
            .iter()
            .map(|&i| rope_text(&row(k, b, g, i), i % self.w, self.theta))
            .collect();
        let mut cbar = vec![0.0; d];
        for &i in &toks {
            let qt = rope_text(&row(q, b, h, i), i % self.w, self.theta);
            let entries: Vec<(f64, Vec<f64>)> = toks
                .iter()
                .zip(&kt)
                .map(|(&j, kj)| (inv * dot(&qt, kj), row(v, b, g, j)))
                .collect();
            let (o, _) = softmax_out(&entries, d);
            for x in 0..d {
                cbar[x] += o[x] / self.w as f64;
            }
        }
        let entries: Vec<(f64, Vec<f64>)> = kt
            .iter()
            .map(|kj| (inv * dot(&cbar, kj), kj.clone()))
            .collect();
        softmax_out(&entries, d).0
    }

    /// Selected chunks for query vector `qv` at position t, with summaries `r(j)`.
    fn select(&self, qv: &[f64], t: usize, r: impl Fn(usize) -> Vec<f64>) -> Vec<usize> {
        let c = t / self.w;
        if t < self.begin {
            return (0..=c).collect();
        }
        let mut chosen = vec![0, c - 1, c];
        let mut picked: Vec<usize> = Vec::new();
        for _ in 0..self.m - 3 {
            let mut best: Option<(usize, f64)> = None;
            for j in 1..c.saturating_sub(1) {
                let s = dot(qv, &r(j));
                if !picked.contains(&j) && best.is_none_or(|(_, b)| s > b) {
                    best = Some((j, s));
                }
            }
            if let Some((j, _)) = best {
                picked.push(j);
            }
        }
        chosen.extend(picked);
        chosen.sort();
        chosen.dedup();
        chosen
    }

    /// Output row at position t over the selected chunks, keys at compressed positions.
    #[allow(clippy::too_many_arguments)]
    fn row_out(
        &self,
        qv: &[f64],
        t: usize,
        chunks: &[usize],
        k: &Tensor4<f32>,
        v: &Tensor4<f32>,
        b: usize,
        g: usize,
        scale: f64,
    ) -> (Vec<f64>, f64) {
        let keys: Vec<usize> = chunks
            .iter()
            .flat_map(|&c| c * self.w..((c + 1) * self.w).min(t + 1))
            .collect();
        let n = keys.len();
        let qt = rope_text(qv, n - 1, self.theta);
        let entries: Vec<(f64, Vec<f64>)> = keys
            .iter()
            .enumerate()
            .map(|(m, &j)| {
                (
                    scale * dot(&qt, &rope_text(&row(k, b, g, j), m, self.theta)),
                    row(v, b, g, j),
                )
            })
            .collect();
        softmax_out(&entries, v.shape.dim)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Prefill: summaries, selection and output against the brute force, on lengths that are
    /// not chunk multiples, GQA, small M (forced chunks dominate) and large M.
    #[test]
    fn prefill_matches_text(b in 1..=2usize, hkv in 1..=2usize, grp in 1..=2usize, w in 1..=4usize,
                            bm in 1..=2usize, m in 3..=6usize, s in 1..=26usize, half_d in 1..=2usize,
                            seed in any::<u64>()) {
        let (hq, d) = (hkv * grp, 2 * half_d);
        let text = Text { w, m, begin: w * bm, theta: 100.0 };
        let mut rg = rng(seed);
        let q = rand_tensor(&mut rg, Shape4::new(b, hq, s, d), 1.5);
        let k = rand_tensor(&mut rg, Shape4::new(b, hkv, s, d), 1.5);
        let v = rand_tensor(&mut rg, Shape4::new(b, hkv, s, d), 1.0);
        let p = text.params();
        let r = longheads_summaries(&q, &k, &v, &p, Precision::F64).unwrap();
        prop_assert_eq!(r.shape, Shape4::new(b, hq, s / w, d));
        let sel = longheads_chunks(&q, &r, s, &p, Precision::F64).unwrap();
        let got = longheads_prefill(&q, &k, &v, &p, &AttnOptions::reference()).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let mut want = AttnOutput::empty(got.shape);
        for bi in 0..b {
            for h in 0..hq {
                let rs: Vec<Vec<f64>> = (0..s / w).map(|c| text.summary(&q, &k, &v, bi, h, c)).collect();
                for c in 0..s / w {
                    for x in 0..d {
                        prop_assert!((r.get(bi, h, c, x) - rs[c][x]).abs() < 1e-12, "r[{},{},{},{}]", bi, h, c, x);
                    }
                }
                for t in 0..s {
                    let qv = row(&q, bi, h, t);
                    let chunks = text.select(&qv, t, |j| rs[j].clone());
                    let idx = (bi * hq + h) * s + t;
                    prop_assert_eq!(&sel[idx], &chunks, "row {}", idx);
                    let (o, l) = text.row_out(&qv, t, &chunks, &k, &v, bi, h / grp, scale);
                    want.out[idx * d..(idx + 1) * d].copy_from_slice(&o);
                    want.lse[idx] = l;
                }
            }
        }
        assert_same(&got, &want, 1e-10, "longheads prefill");
    }
}

/// Forced chunks `0, c-1, c`, ties by lower index (all-equal summaries), M larger than the
/// candidates, and the own chunk only up to t.
#[test]
fn selection_forced_chunks_and_ties() {
    let (w, s, d) = (2, 14, 2);
    let p = LongHeadsParams {
        chunk: w,
        chunks_per_query: 4,
        begin: 2,
        theta: 100.0,
    };
    let q = Tensor4::from_fn(Shape4::new(1, 1, 2, d), |_, _, _, x| (x == 0) as u8 as f32);
    // All-equal (zero) summaries: the one free chunk is the lowest candidate, 1.
    let zero = Tensor4::from_fn(Shape4::new(1, 1, 7, d), |_, _, _, _| 0.0f64);
    let sel = longheads_chunks(&q, &zero, s, &p, Precision::F64).unwrap();
    // Rows at t = 12 (c = 6) and 13 (c = 6).
    assert_eq!(sel, vec![vec![0, 1, 5, 6], vec![0, 1, 5, 6]]);
    // Chunk 3 scores highest; 0 and 5 score lowest but are forced.
    let r = Tensor4::from_fn(Shape4::new(1, 1, 7, d), |_, _, c, x| {
        if x == 0 {
            [-9.0, 1.0, 2.0, 5.0, 2.0, -9.0, -9.0][c]
        } else {
            0.0
        }
    });
    let sel = longheads_chunks(&q, &r, s, &p, Precision::F64).unwrap();
    assert_eq!(sel[1], vec![0, 3, 5, 6]);
    // Tie between chunks 2 and 4 for the second free slot: the lower index wins.
    let p5 = LongHeadsParams {
        chunks_per_query: 5,
        ..p
    };
    assert_eq!(
        longheads_chunks(&q, &r, s, &p5, Precision::F64).unwrap()[1],
        vec![0, 2, 3, 5, 6]
    );
    // M beyond the candidates: every chunk.
    let p_all = LongHeadsParams {
        chunks_per_query: 40,
        ..p
    };
    assert_eq!(
        longheads_chunks(&q, &r, s, &p_all, Precision::F64).unwrap()[1],
        (0..=6).collect::<Vec<_>>()
    );
    // Small positions: c = 1 selects {0, 1} (c - 1 = 0); t < B selects every chunk.
    let q1 = Tensor4::from_fn(Shape4::new(1, 1, 1, d), |_, _, _, x| x as f32);
    assert_eq!(
        longheads_chunks(&q1, &zero, 4, &p, Precision::F64).unwrap(),
        vec![vec![0, 1]]
    );
    let p_late = LongHeadsParams { begin: 8, ..p };
    assert_eq!(
        longheads_chunks(&q1, &zero, 8, &p_late, Precision::F64).unwrap(),
        vec![vec![0, 1, 2, 3]]
    );
}

/// With `B >= Sk`, or with M covering every chunk, LongHeads is causal attention on q and k
/// rotated at their true positions (the compressed positions are then the true ones).
#[test]
fn degenerate_cases_equal_causal_rope() {
    let mut rg = rng(3);
    let (s, d) = (13, 4);
    let q = rand_tensor(&mut rg, Shape4::new(2, 4, s, d), 1.0);
    let k = rand_tensor(&mut rg, Shape4::new(2, 2, s, d), 1.0);
    let v = rand_tensor(&mut rg, Shape4::new(2, 2, s, d), 1.0);
    let opts = AttnOptions::reference();
    let (qr, kr) = (
        rope_tensor(&q, 0, 100.0).unwrap(),
        rope_tensor(&k, 0, 100.0).unwrap(),
    );
    let vr = Tensor4::from_fn(v.shape, |a, b, c, x| v.get(a, b, c, x));
    let causal = dense_attention(&qr, &kr, &vr, true, &opts).unwrap();
    for p in [
        LongHeadsParams {
            chunk: 3,
            chunks_per_query: 3,
            begin: 15,
            theta: 100.0,
        },
        LongHeadsParams {
            chunk: 2,
            chunks_per_query: 9,
            begin: 2,
            theta: 100.0,
        },
    ] {
        let got = longheads_prefill(&q, &k, &v, &p, &opts).unwrap();
        assert_same(&got, &causal, 1e-10, &format!("{p:?}"));
    }
    // A real selection (M = 3, B = 2) differs from causal.
    let p = LongHeadsParams {
        chunk: 2,
        chunks_per_query: 3,
        begin: 2,
        theta: 100.0,
    };
    let got = longheads_prefill(&q, &k, &v, &p, &opts).unwrap();
    assert!(got
        .lse
        .iter()
        .zip(&causal.lse)
        .any(|(a, b)| (a - b).abs() > 1e-6));
}

/// Decoding rows with summaries from a shorter prefix equal the same rows of the prefill.
#[test]
fn decoding_rows_equal_prefill_rows() {
    let mut rg = rng(9);
    let (s, d, w) = (23, 4, 3);
    let q = rand_tensor(&mut rg, Shape4::new(1, 2, s, d), 1.5);
    let k = rand_tensor(&mut rg, Shape4::new(1, 1, s, d), 1.5);
    let v = rand_tensor(&mut rg, Shape4::new(1, 1, s, d), 1.0);
    let p = LongHeadsParams {
        chunk: w,
        chunks_per_query: 4,
        begin: 6,
        theta: 100.0,
    };
    let opts = AttnOptions::reference();
    let full = longheads_prefill(&q, &k, &v, &p, &opts).unwrap();
    let cut = |t: &Tensor4<f32>, r: std::ops::Range<usize>| {
        Tensor4::from_fn(Shape4::new(1, t.shape.heads, r.len(), d), |_, h, i, x| {
            t.get(0, h, r.start + i, x) as f32
        })
    };
    // Prefix of 18 tokens: 6 complete chunks, enough for rows at t <= 23 (c <= 7).
    let r = longheads_summaries(
        &cut(&q, 0..18),
        &cut(&k, 0..18),
        &cut(&v, 0..18),
        &p,
        Precision::F64,
    )
    .unwrap();
    assert_eq!(r.shape.seq, 6);
    let dec = longheads_attention(&cut(&q, 20..23), &k, &v, &r, &p, &opts).unwrap();
    for h in 0..2 {
        for i in 0..3 {
            assert_eq!(dec.lse_at(0, h, i), full.lse_at(0, h, 20 + i));
            assert_eq!(dec.row(0, h, i), full.row(0, h, 20 + i));
        }
    }
    // Summaries that stop too early are an error naming r.seq.
    let short = longheads_summaries(
        &cut(&q, 0..15),
        &cut(&k, 0..15),
        &cut(&v, 0..15),
        &p,
        Precision::F64,
    )
    .unwrap();
    let e = longheads_attention(&cut(&q, 20..23), &k, &v, &short, &p, &opts).unwrap_err();
    assert!(e.to_string().contains("r.seq"), "{e}");
}

/// Bad parameters and shapes are errors naming the field.
#[test]
fn input_errors() {
    let x = Tensor4::from_fn(Shape4::new(1, 1, 8, 4), |_, _, s, d| (s + d) as f32);
    let ok = LongHeadsParams {
        chunk: 2,
        chunks_per_query: 3,
        begin: 4,
        theta: 100.0,
    };
    let opts = AttnOptions::reference();
    let err = |p: LongHeadsParams| {
        longheads_prefill(&x, &x, &x, &p, &opts)
            .unwrap_err()
            .to_string()
    };
    assert!(err(LongHeadsParams { chunk: 0, ..ok }).contains("chunk"));
    assert!(err(LongHeadsParams {
        chunks_per_query: 2,
        ..ok
    })
    .contains("chunks_per_query"));
    assert!(err(LongHeadsParams { begin: 5, ..ok }).contains("begin"));
    assert!(err(LongHeadsParams { begin: 0, ..ok }).contains("begin"));
    assert!(err(LongHeadsParams { theta: -1.0, ..ok }).contains("theta"));
    let odd = Tensor4::from_fn(Shape4::new(1, 1, 8, 3), |_, _, s, d| (s + d) as f32);
    assert!(longheads_prefill(&odd, &odd, &odd, &ok, &opts)
        .unwrap_err()
        .to_string()
        .contains("even"));
    let v2 = Tensor4::from_fn(Shape4::new(1, 1, 8, 2), |_, _, s, d| (s + d) as f32);
    assert!(longheads_summaries(&x, &x, &v2, &ok, Precision::F64)
        .unwrap_err()
        .to_string()
        .contains("v.dim"));
    let q2 = Tensor4::from_fn(Shape4::new(1, 1, 2, 4), |_, _, s, d| (s + d) as f32);
    assert!(longheads_summaries(&q2, &x, &x, &ok, Precision::F64).is_err());
    let r = longheads_summaries(&x, &x, &x, &ok, Precision::F64).unwrap();
    let r_bad = Tensor4::from_fn(Shape4::new(1, 2, 4, 4), |_, _, _, _| 0.0f64);
    assert!(longheads_attention(&q2, &x, &x, &r_bad, &ok, &opts)
        .unwrap_err()
        .to_string()
        .contains("r.shape"));
    assert!(longheads_attention(&q2, &x, &x, &r, &ok, &opts).is_ok());
}

fn naive_case<T: Element>(tol: f64) {
    let mut rg = rng(21);
    let conv =
        |t: Tensor4<f32>| Tensor4::from_fn(t.shape, |b, h, s, d| T::from_f64(t.get(b, h, s, d)));
    let (s, d) = (19, 8);
    let q = conv(rand_tensor(&mut rg, Shape4::new(1, 4, s, d), 1.0));
    let k = conv(rand_tensor(&mut rg, Shape4::new(1, 2, s, d), 1.0));
    let v = conv(rand_tensor(&mut rg, Shape4::new(1, 2, s, d), 1.0));
    let p = LongHeadsParams {
        chunk: 2,
        chunks_per_query: 4,
        begin: 4,
        theta: 100.0,
    };
    let rn = longheads_summaries(&q, &k, &v, &p, Precision::Naive).unwrap();
    let rf = longheads_summaries(&q, &k, &v, &p, Precision::F64).unwrap();
    assert_eq!(
        longheads_chunks(&q, &rn, s, &p, Precision::Naive).unwrap(),
        longheads_chunks(&q, &rf, s, &p, Precision::F64).unwrap(),
        "{:?}: selection",
        T::DTYPE
    );
    let n = longheads_prefill(&q, &k, &v, &p, &AttnOptions::naive()).unwrap();
    let f = longheads_prefill(&q, &k, &v, &p, &AttnOptions::reference()).unwrap();
    let err = n
        .out
        .iter()
        .zip(&f.out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err > 0.0 || T::DTYPE == DType::F64 || T::DTYPE == DType::F32,
        "{:?}: naive rounds",
        T::DTYPE
    );
    assert!(err <= tol, "{:?}: naive error {err}", T::DTYPE);
    assert!(
        n.out.iter().all(|x| T::from_f64(*x).to_f64() == *x),
        "{:?}: out rounded to the dtype",
        T::DTYPE
    );
}

/// The naive path of every dtype: same chunk selection as f64, output within the dtype's
/// rounding of the f64 reference and rounded to the dtype.
#[test]
fn naive_path_every_dtype() {
    naive_case::<f32>(1e-5);
    naive_case::<f16>(5e-3);
    naive_case::<bf16>(4e-2);
    naive_case::<f64>(1e-5);
}
