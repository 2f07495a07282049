//! Shared helpers for the property tests: seeded tensors, one-hot values and an
//! independent brute-force softmax written from the text of variants.md section 0.
#![allow(dead_code)]

use attnforge_reference::{AttnOutput, Shape4, Tensor4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeded RNG.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in `[-amp, amp]`.
pub fn rand_tensor(rng: &mut ChaCha8Rng, shape: Shape4, amp: f64) -> Tensor4<f32> {
    Tensor4::from_fn(shape, |_, _, _, _| rng.gen_range(-amp..=amp) as f32)
}

/// Small integers in `[-r, r]` (exact in every dtype): inputs with exact ties.
pub fn int_tensor(rng: &mut ChaCha8Rng, shape: Shape4, r: i32) -> Tensor4<f32> {
    Tensor4::from_fn(shape, |_, _, _, _| rng.gen_range(-r..=r) as f32)
}

/// `v[b, h, j] = e_j` with `Dv = Sk`: the output row is then the weight vector.
pub fn one_hot(batch: usize, heads: usize, sk: usize) -> Tensor4<f32> {
    Tensor4::from_fn(Shape4::new(batch, heads, sk, sk), |_, _, s, d| {
        if s == d {
            1.0
        } else {
            0.0
        }
    })
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn row(t: &Tensor4<f32>, b: usize, h: usize, s: usize) -> Vec<f64> {
    (0..t.shape.dim).map(|d| t.get(b, h, s, d)).collect()
}

/// Softmax over `(score, value)` pairs, straight from the definition (no max trick
/// beyond what f64 needs): returns `(out, lse)`; an empty list gives `(0, -inf)`.
pub fn softmax_out(entries: &[(f64, Vec<f64>)], dv: usize) -> (Vec<f64>, f64) {
    if entries.is_empty() {
        return (vec![0.0; dv], f64::NEG_INFINITY);
    }
    let m = entries
        .iter()
        .map(|e| e.0)
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = entries.iter().map(|e| (e.0 - m).exp()).sum();
    let mut out = vec![0.0; dv];
    for (s, v) in entries {
        let w = (s - m).exp() / z;
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
    (out, m + z.ln())
}

/// Brute-force attention: `score(b, h, i, j)` gives the score of an allowed key or None.
pub fn brute(
    q: &Tensor4<f32>,
    k: &Tensor4<f32>,
    v: &Tensor4<f32>,
    score: impl Fn(usize, usize, usize, usize) -> Option<f64>,
) -> AttnOutput {
    let (b, hq, sq, dv) = (q.shape.batch, q.shape.heads, q.shape.seq, v.shape.dim);
    let group = hq / k.shape.heads;
    let mut res = AttnOutput::empty(Shape4::new(b, hq, sq, dv));
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..sq {
                let entries: Vec<(f64, Vec<f64>)> = (0..k.shape.seq)
                    .filter_map(|j| score(bi, h, i, j).map(|s| (s, row(v, bi, h / group, j))))
                    .collect();
                let (o, l) = softmax_out(&entries, dv);
                let r = (bi * hq + h) * sq + i;
                res.out[r * dv..(r + 1) * dv].copy_from_slice(&o);
                res.lse[r] = l;
            }
        }
    }
    res
}

/// Assert two results agree to `tol` (relative to max(1, |x|)); empty rows must match exactly.
pub fn assert_same(a: &AttnOutput, b: &AttnOutput, tol: f64, ctx: &str) {
    assert_eq!(a.shape, b.shape, "{ctx}: shape");
    for (r, (x, y)) in a.lse.iter().zip(&b.lse).enumerate() {
        if *x == f64::NEG_INFINITY || *y == f64::NEG_INFINITY {
            assert_eq!(x, y, "{ctx}: lse row {r} emptiness");
        } else {
            assert!(
                (x - y).abs() <= tol * x.abs().max(1.0),
                "{ctx}: lse row {r}: {x} vs {y}"
            );
        }
    }
    for (n, (x, y)) in a.out.iter().zip(&b.out).enumerate() {
        assert!(!x.is_nan() && !y.is_nan(), "{ctx}: NaN at {n}");
        assert!(
            (x - y).abs() <= tol * x.abs().max(1.0),
            "{ctx}: out[{n}]: {x} vs {y}"
        );
    }
}
