//! Section 12: the analytic backward against central finite differences of the f64 forward
//! reference, for every static variant (element masks, block-sparse lists, score
//! modifications with their learnable parameters, LM-Infinite), plus empty rows,
//! determinism, metamorphic identities, the naive path and input errors.
//!
//! The loss is `L = sum(dout * out) + sum(dlse * lse)` over non-empty rows, so
//! `dL/dx` is exactly what `attention_backward` returns for upstream `(dout, dlse)`.
// Independent checks index arrays exactly as the formulas of variants.md do.
#![allow(clippy::needless_range_loop)]

use attnforge_reference::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn rand_t(r: &mut ChaCha8Rng, shape: Shape4, amp: f64) -> Tensor4<f64> {
    Tensor4::from_fn(shape, |_, _, _, _| r.gen_range(-amp..=amp))
}

/// The problem of one case: inputs, upstream gradients and the forward as a closure of
/// (q, k, v, score-parameter perturbation) so finite differences can re-run it.
struct Problem {
    q: Tensor4<f64>,
    k: Tensor4<f64>,
    v: Tensor4<f64>,
    dout: Tensor4<f64>,
    dlse: Option<Vec<f64>>,
}

impl Problem {
    fn new(
        r: &mut ChaCha8Rng,
        dims: (usize, usize, usize, usize, usize, usize, usize),
        amp: f64,
    ) -> Self {
        let (b, hq, hkv, sq, sk, d, dv) = dims;
        let q = rand_t(r, Shape4::new(b, hq, sq, d), amp);
        let k = rand_t(r, Shape4::new(b, hkv, sk, d), amp);
        let v = rand_t(r, Shape4::new(b, hkv, sk, dv), 1.0);
        let dout = rand_t(r, Shape4::new(b, hq, sq, dv), 1.0);
        let dlse = r
            .gen_bool(0.6)
            .then(|| (0..b * hq * sq).map(|_| r.gen_range(-1.0..=1.0)).collect());
        Self {
            q,
            k,
            v,
            dout,
            dlse,
        }
    }

    fn loss(&self, out: &AttnOutput) -> f64 {
        let mut l: f64 = out
            .out
            .iter()
            .zip(&self.dout.data)
            .map(|(o, g)| o * g)
            .sum();
        if let Some(dl) = &self.dlse {
            // an empty row's lse is the constant -inf: it contributes no gradient
            l += out
                .lse
                .iter()
                .zip(dl)
                .filter(|(x, _)| x.is_finite())
                .map(|(x, g)| x * g)
                .sum::<f64>();
        }
        l
    }

    /// `sum |terms of L|`: the magnitude that bounds the forward's rounding error in `L`.
    fn loss_magnitude(&self, out: &AttnOutput) -> f64 {
        let mut l: f64 = out
            .out
            .iter()
            .zip(&self.dout.data)
            .map(|(o, g)| (o * g).abs())
            .sum();
        if let Some(dl) = &self.dlse {
            l += out
                .lse
                .iter()
                .zip(dl)
                .filter(|(x, _)| x.is_finite())
                .map(|(x, g)| (x * g).abs())
                .sum::<f64>();
        }
        l
    }

    fn dlse(&self) -> Option<&[f64]> {
        self.dlse.as_deref()
    }
}

fn max_row_norm(t: &Tensor4<f64>) -> f64 {
    t.data
        .chunks(t.shape.dim)
        .map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt())
        .fold(1e-3, f64::max)
}

/// Analytic `an` against the central difference of `f` at every coordinate of `x`.
///
/// Step sizes are chosen, not guessed: `h` is given so that one step moves any score by at
/// most `EPS_SCORE` (1e-4). Then the truncation error of the central difference, `h^2/6 L'''`,
/// is about `EPS_SCORE^2 / 6 ~ 2e-9` relative to the gradient even when scores are ~1e3 (the
/// third derivative in the input grows with the same factor `scale * |k|` as the gradient,
/// cubed, and `h` divides it out), and the rounding error of `L`, a few ulps of
/// `sum |terms of L|`, divided by `2h`, is the absolute floor `atol`. Both are far below the
/// O(1) relative error of any wrong formula.
fn check_fd(
    what: &str,
    an: &[f64],
    x: &[f64],
    h: f64,
    mag: f64,
    mut f: impl FnMut(&[f64]) -> f64,
) -> Result<(), TestCaseError> {
    let atol = 256.0 * f64::EPSILON * mag / h;
    let mut xs = x.to_vec();
    let mut fd = Vec::with_capacity(x.len());
    for n in 0..x.len() {
        xs[n] = x[n] + h;
        let lp = f(&xs);
        xs[n] = x[n] - h;
        let lm = f(&xs);
        xs[n] = x[n];
        fd.push((lp - lm) / (2.0 * h));
    }
    let scale = an.iter().chain(&fd).fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = 1e-6 * scale + atol;
    for n in 0..x.len() {
        prop_assert!(an[n].is_finite(), "{what}[{n}] is {}", an[n]);
        prop_assert!(
            (an[n] - fd[n]).abs() <= tol,
            "{what}[{n}]: analytic {} vs finite difference {} (tol {tol:e}, max |grad| {scale:e})",
            an[n],
            fd[n]
        );
    }
    Ok(())
}

const EPS_SCORE: f64 = 1e-4;

/// A forward reference as a function of (q, k, v).
type Forward<'a> = dyn Fn(&Tensor4<f64>, &Tensor4<f64>, &Tensor4<f64>) -> AttnOutput + 'a;

/// Finite-difference check of dq, dk, dv (and nothing else) for a forward `fwd`.
fn check_qkv_grads(
    p: &Problem,
    g: &AttnGrads,
    scale: f64,
    fwd: &Forward<'_>,
) -> Result<(), TestCaseError> {
    let base = fwd(&p.q, &p.k, &p.v);
    let mag = p.loss_magnitude(&base) + 1.0;
    let hq = EPS_SCORE / (scale * max_row_norm(&p.k));
    let hk = EPS_SCORE / (scale * max_row_norm(&p.q));
    // L is linear in v: any step is exact up to rounding, a large one keeps rounding small.
    let hv = 1e-2;
    let with = |t: &Tensor4<f64>, xs: &[f64]| Tensor4 {
        data: xs.to_vec(),
        ..t.clone()
    };
    check_fd("dq", &g.dq.data, &p.q.data, hq, mag, |xs| {
        p.loss(&fwd(&with(&p.q, xs), &p.k, &p.v))
    })?;
    check_fd("dk", &g.dk.data, &p.k.data, hk, mag, |xs| {
        p.loss(&fwd(&p.q, &with(&p.k, xs), &p.v))
    })?;
    check_fd("dv", &g.dv.data, &p.v.data, hv, mag, |xs| {
        p.loss(&fwd(&p.q, &p.k, &with(&p.v, xs)))
    })
}

/// A mask of every built-in kind (sections 1, 2, 11), user predicates (one that empties
/// rows) and combinations.
const MASK_KINDS: usize = 16;

fn mask_case(kind: usize, r: &mut ChaCha8Rng, batch: usize, sk: usize) -> Mask {
    let mut doc: Vec<i32> = (0..batch * sk).map(|_| r.gen_range(0..3)).collect();
    doc.chunks_mut(sk).for_each(|c| c.sort_unstable());
    if r.gen_bool(0.5) {
        doc.truncate(sk);
    }
    let a = r.gen_range(0..=sk);
    let w = r.gen_range(0..=3usize);
    match kind {
        0 => Mask::Full,
        1 => Mask::Causal,
        2 => Mask::Local {
            left: r.gen_range(-1..=3),
            right: r.gen_range(-1..=2),
        },
        3 => Mask::PrefixLm { prefix: a },
        4 => Mask::Document { doc },
        5 => Mask::CausalDocument { doc },
        6 => Mask::ShareQuestion { doc },
        7 => Mask::GlobalLocal {
            window: w,
            global: r.gen_range(0..=2),
        },
        8 => Mask::BlockCausalDocument {
            doc,
            block: r.gen_range(1..=3),
        },
        9 => Mask::Lambda {
            global: r.gen_range(0..=2),
            local: r.gen_range(1..=3),
        },
        10 => Mask::ChunkedCausal {
            chunk: r.gen_range(1..=4),
        },
        11 => Mask::DilatedCausal {
            window: w,
            dilation: r.gen_range(1..=3),
        },
        // a user predicate that leaves every query at position 2 (and some others) empty
        12 => Mask::predicate(|_, h, i, j| i != 2 && (i + 2 * j + h as i64) % 3 != 0),
        13 => Mask::predicate(|b, h, i, j| (i - j).abs() <= 1 + ((b + h) % 2) as i64),
        14 => Mask::All(vec![Mask::Causal, Mask::Local { left: 2, right: 0 }]),
        _ => Mask::Any(vec![
            Mask::Local { left: 0, right: 0 },
            Mask::PrefixLm { prefix: 1 },
        ]),
    }
}

/// A smooth user score function with a learnable per-head table `a[h]` and a shared scalar
/// `c`: `s' = s + a[h] tanh(s / 4) - c ln(1 + |p - j|)`, with its hand-written derivatives.
fn user_fn(r: &mut ChaCha8Rng, hq: usize) -> DiffScoreFn {
    let params: Vec<f64> = (0..=hq).map(|_| r.gen_range(-1.0..=1.0)).collect();
    DiffScoreFn {
        value: Arc::new(|s, _, h, i, j, p| {
            s + p[h] * (s / 4.0).tanh() - p[p.len() - 1] * (1.0 + (i - j).abs() as f64).ln()
        }),
        d_score: Arc::new(|s, _, h, _, _, p| {
            let t = (s / 4.0).tanh();
            1.0 + p[h] * (1.0 - t * t) / 4.0
        }),
        d_params: Some(Arc::new(|s, _, h, i, j, p, out| {
            out.push((h, (s / 4.0).tanh()));
            out.push((p.len() - 1, -(1.0 + (i - j).abs() as f64).ln()));
        })),
        params,
    }
}

fn score_case(kind: usize, r: &mut ChaCha8Rng, hq: usize) -> DiffScoreMod {
    let slopes: Vec<f64> = alibi_slopes(hq)
        .iter()
        .map(|s| s * r.gen_range(0.5..2.0))
        .collect();
    match kind {
        0 => DiffScoreMod::None,
        1 => DiffScoreMod::Softcap(r.gen_range(0.5..4.0)),
        2 => DiffScoreMod::Alibi(slopes),
        3 => DiffScoreMod::Function(user_fn(r, hq)),
        _ => DiffScoreMod::Chain(vec![
            DiffScoreMod::Function(user_fn(r, hq)),
            DiffScoreMod::Softcap(r.gen_range(1.0..5.0)),
            DiffScoreMod::Alibi(slopes),
        ]),
    }
}

/// Perturb the `n`-th learnable parameter (flat, chain order) of `m` to `x`.
fn set_param(m: &DiffScoreMod, n: &mut usize, x: f64) -> DiffScoreMod {
    let mut hit = |v: f64| {
        let r = if *n == 0 { x } else { v };
        *n = n.wrapping_sub(1);
        r
    };
    match m {
        DiffScoreMod::None => DiffScoreMod::None,
        DiffScoreMod::Softcap(c) => DiffScoreMod::Softcap(hit(*c)),
        DiffScoreMod::Alibi(s) => DiffScoreMod::Alibi(s.iter().map(|&v| hit(v)).collect()),
        DiffScoreMod::Function(f) => {
            DiffScoreMod::Function(f.with_params(f.params.iter().map(|&v| hit(v)).collect()))
        }
        DiffScoreMod::Chain(c) => {
            DiffScoreMod::Chain(c.iter().map(|m| set_param(m, n, x)).collect())
        }
    }
}

fn flat_params(m: &DiffScoreMod) -> Vec<f64> {
    match m {
        DiffScoreMod::None => vec![],
        DiffScoreMod::Softcap(c) => vec![*c],
        DiffScoreMod::Alibi(s) => s.clone(),
        DiffScoreMod::Function(f) => f.params.clone(),
        DiffScoreMod::Chain(c) => c.iter().flat_map(flat_params).collect(),
    }
}

fn flat_grads(g: &ScoreParamGrads) -> Vec<f64> {
    match g {
        ScoreParamGrads::None => vec![],
        ScoreParamGrads::Softcap(c) => vec![*c],
        ScoreParamGrads::Alibi(s) | ScoreParamGrads::Function(s) => s.clone(),
        ScoreParamGrads::Chain(c) => c.iter().flat_map(flat_grads).collect(),
    }
}

/// Finite differences of the score parameters. Every parameter moves a score by at most
/// `max(|s|/c, 1) * h` (softcap), `Sk * h` (ALiBi) or `ln(1 + Sk) * h` (the user function),
/// so `h = EPS_SCORE / (Sk + 1)` keeps the same truncation bound as for q and k.
fn check_param_grads(
    p: &Problem,
    g: &AttnGrads,
    sm: &DiffScoreMod,
    sk: usize,
    fwd: &dyn Fn(&ScoreMod) -> AttnOutput,
) -> Result<(), TestCaseError> {
    let theta = flat_params(sm);
    let an = flat_grads(&g.score_params);
    prop_assert_eq!(an.len(), theta.len());
    let mag = p.loss_magnitude(&g.forward) + 1.0;
    check_fd(
        "dtheta",
        &an,
        &theta,
        EPS_SCORE / (sk as f64 + 1.0),
        mag,
        |xs| {
            let n = xs.iter().zip(&theta).position(|(a, b)| a != b).unwrap_or(0);
            let m = set_param(sm, &mut n.clone(), xs[n]);
            p.loss(&fwd(&m.to_score_mod()))
        },
    )
}

/// Rows empty in the forward get exactly zero dq and nothing anywhere is NaN.
fn check_empty_rows(g: &AttnGrads) -> Result<(), TestCaseError> {
    let d = g.dq.shape.dim;
    for (r, lse) in g.forward.lse.iter().enumerate() {
        if *lse == f64::NEG_INFINITY {
            prop_assert!(
                g.dq.data[r * d..(r + 1) * d].iter().all(|x| *x == 0.0),
                "empty row {r} has dq != 0"
            );
        }
    }
    for t in [&g.dq, &g.dk, &g.dv] {
        prop_assert!(t.data.iter().all(|x| x.is_finite()));
    }
    Ok(())
}

fn dims_case(
    r: &mut ChaCha8Rng,
    sq_gt_sk: bool,
    even_d: bool,
) -> (usize, usize, usize, usize, usize, usize, usize) {
    let b = r.gen_range(1..=2);
    let hkv = r.gen_range(1..=2);
    let group = [1, 2, 4][r.gen_range(0..3)];
    let sk = r.gen_range(3..=9);
    let sq = if sq_gt_sk {
        r.gen_range(sk + 1..=sk + 4)
    } else {
        r.gen_range(1..=sk)
    };
    let d = if even_d {
        2 * r.gen_range(2..=6)
    } else {
        r.gen_range(4..=13)
    };
    let dv = r.gen_range(1..=5);
    (b, hkv * group, hkv, sq, sk, d, dv)
}

fn max_raw_score(q: &Tensor4<f64>, k: &Tensor4<f64>) -> f64 {
    let d = q.shape.dim;
    let scale = 1.0 / (d as f64).sqrt();
    q.data
        .chunks(d)
        .flat_map(|qr| {
            k.data
                .chunks(d)
                .map(move |kr| scale * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>())
        })
        .fold(0.0f64, |m, s| m.max(s.abs()))
}

/// Runs one masked case with q, k entries in `[-1.5, 1.5]`, or, with `large_scores`,
/// q rescaled so that the largest raw score `|scale q.k|` is exactly 1000.
fn masked_case(
    seed: u64,
    mask_kind: usize,
    score_kind: usize,
    large_scores: bool,
) -> Result<(), TestCaseError> {
    let mut r = rng(seed);
    let dims = dims_case(&mut r, false, false);
    let (b, hq, _, _, sk, d, _) = dims;
    let mut p = Problem::new(&mut r, dims, 1.5);
    if large_scores {
        let f = 1000.0 / max_raw_score(&p.q, &p.k);
        p.q.data.iter_mut().for_each(|x| *x *= f);
        prop_assert!((max_raw_score(&p.q, &p.k) - 1000.0).abs() < 1e-6);
    }
    let mask = mask_case(mask_kind, &mut r, b, sk);
    let sm = score_case(score_kind, &mut r, hq);
    let opts = AttnOptions::reference();
    let variant = BackwardVariant::Masked {
        mask: &mask,
        score_mod: &sm,
    };
    let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &variant, &opts).unwrap();
    check_empty_rows(&g)?;
    let fsm = sm.to_score_mod();
    let scale = 1.0 / (d as f64).sqrt();
    check_qkv_grads(&p, &g, scale, &|q, k, v| {
        attention(q, k, v, &mask, &fsm, &opts).unwrap()
    })?;
    check_param_grads(&p, &g, &sm, sk, &|m| {
        attention(&p.q, &p.k, &p.v, &mask, m, &opts).unwrap()
    })?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every mask kind x every score modification (softcap, ALiBi, a user function with a
    /// per-head table, a chain of all three), GQA groups 1/2/4, Sq <= Sk, odd D.
    #[test]
    fn fd_masks_and_score_mods(seed in any::<u64>(), mask_kind in 0..MASK_KINDS, score_kind in 0usize..5) {
        masked_case(seed, mask_kind, score_kind, false)?;
    }

    /// Scores of magnitude 1e3 (the largest is exactly 1000): the steps scale with
    /// `1 / (scale |k|)`, so finite differences stay meaningful (see `check_fd`).
    #[test]
    fn fd_large_scores(seed in any::<u64>(), mask_kind in 0..MASK_KINDS, score_kind in 0usize..5) {
        masked_case(seed, mask_kind, score_kind, true)?;
    }

    /// `full` and `causal` with Sq > Sk (causal rows with p(i) < 0 are empty).
    #[test]
    fn fd_sq_longer_than_sk(seed in any::<u64>(), causal in any::<bool>()) {
        let mut r = rng(seed);
        let dims = dims_case(&mut r, true, false);
        let p = Problem::new(&mut r, dims, 1.5);
        let mask = if causal { Mask::Causal } else { Mask::Full };
        let opts = AttnOptions::reference();
        let sm = DiffScoreMod::None;
        let variant = BackwardVariant::Masked { mask: &mask, score_mod: &sm };
        let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &variant, &opts).unwrap();
        check_empty_rows(&g)?;
        if causal {
            prop_assert!(g.forward.lse.contains(&f64::NEG_INFINITY));
        }
        let scale = 1.0 / (dims.5 as f64).sqrt();
        check_qkv_grads(&p, &g, scale, &|q, k, v| attention(q, k, v, &mask, &ScoreMod::None, &opts).unwrap())?;
    }

    /// Block-sparse lists (random full-only layouts, and lists built from a mask, with
    /// partial blocks evaluated through the mask), with score modifications.
    #[test]
    fn fd_block_sparse(seed in any::<u64>(), mask_kind in 0..MASK_KINDS, score_kind in 0usize..5, random in any::<bool>()) {
        let mut r = rng(seed);
        let dims = dims_case(&mut r, false, false);
        let (b, hq, hkv, sq, sk, d, _) = dims;
        let p = Problem::new(&mut r, dims, 1.5);
        let mask = mask_case(mask_kind, &mut r, b, sk);
        let geom = BlockGeometry { batch: b, q_heads: hq, q_len: sq, k_len: sk, block_q: r.gen_range(1..=3), block_k: r.gen_range(1..=4) };
        let lists = if random {
            random_block_lists(&geom, hkv, r.gen_range(0.0..=1.0), seed).unwrap()
        } else {
            block_lists_from_mask(&mask, &geom).unwrap()
        };
        let sm = score_case(score_kind, &mut r, hq);
        let opts = AttnOptions::reference();
        let variant = BackwardVariant::BlockSparse { lists: &lists, mask: &mask, score_mod: &sm };
        let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &variant, &opts).unwrap();
        check_empty_rows(&g)?;
        let fsm = sm.to_score_mod();
        let scale = 1.0 / (d as f64).sqrt();
        check_qkv_grads(&p, &g, scale, &|q, k, v| block_sparse_attention(q, k, v, &lists, &mask, &fsm, &opts).unwrap())?;
        check_param_grads(&p, &g, &sm, sk, &|m| block_sparse_attention(&p.q, &p.k, &p.v, &lists, &mask, m, &opts).unwrap())?;
    }

    /// LM-Infinite: gradients through RoPE at p(i), at j, and at Deff for the clamped
    /// global keys (small G, L, Dlim so that every branch occurs), GQA, Sq <= Sk.
    #[test]
    fn fd_lm_infinite(seed in any::<u64>(), amp in prop_oneof![Just(1.5), Just(12.0)]) {
        let mut r = rng(seed);
        let dims = dims_case(&mut r, false, true);
        let (_, _, _, _, sk, d, _) = dims;
        let p = Problem::new(&mut r, dims, amp);
        let params = LmInfiniteParams {
            global: r.gen_range(0..=2),
            local: r.gen_range(1..=3),
            dist_limit: r.gen_range(1..=sk + 1),
            theta: [10000.0, 10.0][r.gen_range(0..2)],
        };
        let opts = AttnOptions::reference();
        let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &BackwardVariant::LmInfinite(&params), &opts).unwrap();
        check_empty_rows(&g)?;
        prop_assert_eq!(&g.score_params, &ScoreParamGrads::None);
        let scale = 1.0 / (d as f64).sqrt();
        check_qkv_grads(&p, &g, scale, &|q, k, v| lm_infinite_attention(q, k, v, &params, &opts).unwrap())?;
    }
}

/// A case where the far (clamped, `Deff`) branch certainly carries weight, so a wrong
/// rotation there cannot hide behind random draws.
#[test]
fn fd_lm_infinite_far_branch() {
    let mut r = rng(7);
    let p = Problem::new(&mut r, (1, 2, 1, 5, 9, 6, 3), 1.5);
    let params = LmInfiniteParams {
        global: 2,
        local: 2,
        dist_limit: 4,
        theta: 10.0,
    };
    let opts = AttnOptions::reference();
    let g = attention_backward(
        &p.q,
        &p.k,
        &p.v,
        &p.dout,
        p.dlse(),
        &BackwardVariant::LmInfinite(&params),
        &opts,
    )
    .unwrap();
    check_qkv_grads(&p, &g, 1.0 / 6f64.sqrt(), &|q, k, v| {
        lm_infinite_attention(q, k, v, &params, &opts).unwrap()
    })
    .unwrap();
}

/// Empty rows (a predicate leaving rows empty, and causal with Sq > Sk): dq rows exactly 0,
/// keys that no query sees get dk = dv = 0 exactly, a non-zero dlse on an empty row changes
/// nothing, and nothing is NaN, in both precisions.
#[test]
fn empty_rows_zero_gradients() {
    let mut r = rng(11);
    let p = Problem::new(&mut r, (2, 4, 2, 6, 8, 5, 3), 2.0);
    // query position 5 (row 3) sees nothing; key 7 is seen by no one
    let mask = Mask::predicate(|_, _, i, j| i != 5 && j != 7 && j <= i + 1);
    let sm = DiffScoreMod::Chain(vec![
        DiffScoreMod::Softcap(3.0),
        DiffScoreMod::Alibi(alibi_slopes(4)),
    ]);
    for opts in [AttnOptions::reference(), AttnOptions::naive()] {
        let variant = BackwardVariant::Masked {
            mask: &mask,
            score_mod: &sm,
        };
        let dlse: Vec<f64> = (0..2 * 4 * 6).map(|n| n as f64 * 0.1 - 2.0).collect();
        let g =
            attention_backward(&p.q, &p.k, &p.v, &p.dout, Some(&dlse), &variant, &opts).unwrap();
        for b in 0..2 {
            for h in 0..4 {
                assert_eq!(g.forward.lse_at(b, h, 3), f64::NEG_INFINITY);
                for d in 0..5 {
                    assert_eq!(g.dq.get(b, h, 3, d), 0.0);
                }
            }
            for h in 0..2 {
                for d in 0..5 {
                    assert_eq!(g.dk.get(b, h, 7, d), 0.0);
                }
                for d in 0..3 {
                    assert_eq!(g.dv.get(b, h, 7, d), 0.0);
                }
            }
        }
        for t in [&g.dq, &g.dk, &g.dv] {
            assert!(t.data.iter().all(|x| x.is_finite()));
            assert!(t.data.iter().any(|x| *x != 0.0));
        }
        assert!(flat_grads(&g.score_params).iter().all(|x| x.is_finite()));
    }
    // every row empty (causal, Sq > Sk, only rows with p(i) < 0): all gradients zero
    let q = Tensor4::from_fn(Shape4::new(1, 1, 3, 4), |_, _, s, d| (s + d) as f64);
    let kv = Tensor4::from_fn(Shape4::new(1, 1, 1, 4), |_, _, _, d| d as f64);
    let dout = Tensor4::from_fn(Shape4::new(1, 1, 3, 4), |_, _, _, _| 1.0);
    let sm = DiffScoreMod::None;
    let variant = BackwardVariant::Masked {
        mask: &Mask::Causal,
        score_mod: &sm,
    };
    let g = attention_backward(
        &q,
        &kv,
        &kv,
        &dout,
        Some(&[1.0, 1.0, 1.0]),
        &variant,
        &AttnOptions::reference(),
    )
    .unwrap();
    assert!(
        g.dq.data[..8].iter().all(|x| *x == 0.0),
        "rows at p(i) = -2, -1 are empty"
    );
    assert!(g.dq.data[8..].iter().all(|x| x.is_finite()));
}

fn bits(g: &AttnGrads) -> Vec<u64> {
    [&g.dq, &g.dk, &g.dv]
        .iter()
        .flat_map(|t| t.data.iter().map(|x| x.to_bits()))
        .chain(flat_grads(&g.score_params).iter().map(|x| x.to_bits()))
        .collect()
}

/// Two runs give bit-identical gradients (f64 and the naive f16 path), GQA and a chain.
#[test]
fn deterministic() {
    let mut r = rng(3);
    let p = Problem::new(&mut r, (2, 4, 1, 7, 9, 6, 4), 2.0);
    let sm = score_case(4, &mut r, 4);
    let mask = Mask::Causal;
    let variant = BackwardVariant::Masked {
        mask: &mask,
        score_mod: &sm,
    };
    let a = attention_backward(
        &p.q,
        &p.k,
        &p.v,
        &p.dout,
        p.dlse(),
        &variant,
        &AttnOptions::reference(),
    )
    .unwrap();
    let b = attention_backward(
        &p.q,
        &p.k,
        &p.v,
        &p.dout,
        p.dlse(),
        &variant,
        &AttnOptions::reference(),
    )
    .unwrap();
    assert_eq!(bits(&a), bits(&b));
    let h = |t: &Tensor4<f64>| {
        Tensor4::from_fn(t.shape, |b, hh, s, d| {
            half::f16::from_f64(t.get(b, hh, s, d))
        })
    };
    let (q, k, v, dout) = (h(&p.q), h(&p.k), h(&p.v), h(&p.dout));
    let a =
        attention_backward(&q, &k, &v, &dout, p.dlse(), &variant, &AttnOptions::naive()).unwrap();
    let b =
        attention_backward(&q, &k, &v, &dout, p.dlse(), &variant, &AttnOptions::naive()).unwrap();
    assert_eq!(bits(&a), bits(&b));
}

/// Independent softmax weights `P[b, h, i, j]` of full attention.
fn full_weights(q: &Tensor4<f64>, k: &Tensor4<f64>, b: usize, h: usize, i: usize) -> Vec<f64> {
    let group = q.shape.heads / k.shape.heads;
    let scale = 1.0 / (q.shape.dim as f64).sqrt();
    let s: Vec<f64> = (0..k.shape.seq)
        .map(|j| {
            scale
                * (0..q.shape.dim)
                    .map(|d| q.get(b, h, i, d) * k.get(b, h / group, j, d))
                    .sum::<f64>()
        })
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
    s.iter().map(|x| (x - m).exp() / z).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Metamorphic: for full attention `dV = P^T dO` summed over the GQA group, with `P`
    /// computed here independently.
    #[test]
    fn dv_is_pt_dout(seed in any::<u64>()) {
        let mut r = rng(seed);
        let longer = r.gen_bool(0.3);
        let dims = dims_case(&mut r, longer, false);
        let p = Problem::new(&mut r, dims, 2.0);
        let (b, hq, hkv, sq, sk, _, dv) = dims;
        let sm = DiffScoreMod::None;
        let variant = BackwardVariant::Masked { mask: &Mask::Full, score_mod: &sm };
        let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &variant, &AttnOptions::reference()).unwrap();
        let mut want = vec![0.0; b * hkv * sk * dv];
        for bi in 0..b {
            for h in 0..hq {
                for i in 0..sq {
                    let w = full_weights(&p.q, &p.k, bi, h, i);
                    for j in 0..sk {
                        for d in 0..dv {
                            want[((bi * hkv + h / (hq / hkv)) * sk + j) * dv + d] += w[j] * p.dout.get(bi, h, i, d);
                        }
                    }
                }
            }
        }
        for (n, (a, w)) in g.dv.data.iter().zip(&want).enumerate() {
            prop_assert!((a - w).abs() <= 1e-12 * (1.0 + w.abs()), "dv[{n}] {a} vs {w}");
        }
    }

    /// Metamorphic: shifting every key by a constant vector shifts each row's scores by a
    /// constant, which softmax ignores and lse absorbs, so for any mask with ALiBi (an
    /// additive modification) `sum_j dK_j = scale * sum_i dlse_i q_i` (non-empty rows,
    /// summed over the group) — it needs `sum_j dS'[i,j] = dlse_i`, i.e. the Delta term.
    #[test]
    fn key_shift_invariance(seed in any::<u64>(), mask_kind in 0..MASK_KINDS, alibi in any::<bool>()) {
        let mut r = rng(seed);
        let dims = dims_case(&mut r, false, false);
        let p = Problem::new(&mut r, dims, 2.0);
        let (b, hq, hkv, sq, sk, d, _) = dims;
        let mask = mask_case(mask_kind, &mut r, b, sk);
        let sm = if alibi { DiffScoreMod::Alibi(alibi_slopes(hq)) } else { DiffScoreMod::None };
        let variant = BackwardVariant::Masked { mask: &mask, score_mod: &sm };
        let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &variant, &AttnOptions::reference()).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        for bi in 0..b {
            for kh in 0..hkv {
                for dd in 0..d {
                    let got: f64 = (0..sk).map(|j| g.dk.get(bi, kh, j, dd)).sum();
                    let mut want = 0.0;
                    for h in kh * (hq / hkv)..(kh + 1) * (hq / hkv) {
                        for i in 0..sq {
                            if g.forward.lse_at(bi, h, i).is_finite() {
                                let dl = p.dlse.as_ref().map_or(0.0, |v| v[(bi * hq + h) * sq + i]);
                                want += scale * dl * p.q.get(bi, h, i, dd);
                            }
                        }
                    }
                    let mag: f64 = (0..sk).map(|j| g.dk.get(bi, kh, j, dd).abs()).sum::<f64>() + 1.0;
                    prop_assert!((got - want).abs() <= 1e-12 * mag, "sum_j dk = {got}, want {want}");
                }
            }
        }
    }
}

/// The naive same-precision path: close to f64 for f32 inputs, further for bf16, its values
/// are representable in the input dtype, empty rows stay exact zeros, and parameter
/// gradients come back as f32 values.
#[test]
fn naive_path_error_scale() {
    let mut r = rng(5);
    let p = Problem::new(&mut r, (1, 4, 2, 7, 9, 8, 5), 2.0);
    let mask = Mask::Local { left: 3, right: 1 };
    let sm = DiffScoreMod::Chain(vec![
        DiffScoreMod::Softcap(4.0),
        DiffScoreMod::Alibi(alibi_slopes(4)),
    ]);
    let variant = BackwardVariant::Masked {
        mask: &mask,
        score_mod: &sm,
    };
    let max_err = |a: &AttnGrads, b: &AttnGrads| {
        [(&a.dq, &b.dq), (&a.dk, &b.dk), (&a.dv, &b.dv)]
            .iter()
            .flat_map(|(x, y)| x.data.iter().zip(&y.data).map(|(u, v)| (u - v).abs()))
            .fold(0.0f64, f64::max)
    };
    fn conv<T: Element>(t: &Tensor4<f64>) -> Tensor4<T> {
        Tensor4::from_fn(t.shape, |b, h, s, d| T::from_f64(t.get(b, h, s, d)))
    }
    fn run<T: Element>(p: &Problem, v: &BackwardVariant<'_>, opts: AttnOptions) -> AttnGrads {
        attention_backward(
            &conv::<T>(&p.q),
            &conv::<T>(&p.k),
            &conv::<T>(&p.v),
            &conv::<T>(&p.dout),
            p.dlse(),
            v,
            &opts,
        )
        .unwrap()
    }
    let r32 = run::<f32>(&p, &variant, AttnOptions::reference());
    let n32 = run::<f32>(&p, &variant, AttnOptions::naive());
    let rb = run::<half::bf16>(&p, &variant, AttnOptions::reference());
    let nb = run::<half::bf16>(&p, &variant, AttnOptions::naive());
    let (e32, eb) = (max_err(&n32, &r32), max_err(&nb, &rb));
    assert!(e32 > 0.0 && e32 < 1e-5, "f32 naive error {e32}");
    assert!(
        eb > 100.0 * e32 && eb < 0.5,
        "bf16 naive error {eb} vs f32 {e32}"
    );
    for t in [&nb.dq, &nb.dk, &nb.dv] {
        assert!(
            t.data
                .iter()
                .all(|x| half::bf16::from_f64(*x).to_f64() == *x),
            "naive bf16 gradients are bf16 values"
        );
    }
    for x in flat_grads(&nb.score_params) {
        assert_eq!(x as f32 as f64, x, "parameter gradients are f32");
    }
}

/// Bad input is an error naming the field, never a panic.
#[test]
fn errors_name_the_field() {
    let mut r = rng(9);
    let p = Problem::new(&mut r, (1, 2, 1, 3, 5, 4, 2), 1.0);
    let sm = DiffScoreMod::None;
    let causal = BackwardVariant::Masked {
        mask: &Mask::Causal,
        score_mod: &sm,
    };
    let opts = AttnOptions::reference();
    let bad = Tensor4::from_fn(Shape4::new(1, 2, 4, 2), |_, _, _, _| 0.0);
    let e = attention_backward(&p.q, &p.k, &p.v, &bad, None, &causal, &opts).unwrap_err();
    assert!(e.to_string().contains("dout.seq"), "{e}");
    let mut nan = p.dout.clone();
    nan.data[3] = f64::NAN;
    let e = attention_backward(&p.q, &p.k, &p.v, &nan, None, &causal, &opts).unwrap_err();
    assert!(
        e.to_string().contains("`dout`") && e.to_string().contains("NaN"),
        "{e}"
    );
    let e =
        attention_backward(&p.q, &p.k, &p.v, &p.dout, Some(&[0.0; 5]), &causal, &opts).unwrap_err();
    assert!(e.to_string().contains("dlse"), "{e}");
    let e = attention_backward(
        &p.q,
        &p.k,
        &p.v,
        &p.dout,
        Some(&[0.0, 1.0, f64::INFINITY, 0.0, 0.0, 0.0]),
        &causal,
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("dlse"), "{e}");
    let e = DiffScoreMod::from_builtin(&ScoreMod::function(|s, _, _, _, _| s)).unwrap_err();
    assert!(e.to_string().contains("derivative"), "{e}");
    assert!(matches!(
        DiffScoreMod::from_builtin(&ScoreMod::Chain(vec![
            ScoreMod::Softcap(2.0),
            ScoreMod::Alibi(vec![0.5])
        ])),
        Ok(DiffScoreMod::Chain(_))
    ));
    let mut f = DiffScoreFn::new(|s, _, _, _, _| s, |_, _, _, _, _| 1.0).with_params(vec![1.0]);
    f.d_params = Some(Arc::new(|_, _, _, _, _, _, out| out.push((3, 1.0))));
    let fm = DiffScoreMod::Function(f.clone());
    let v = BackwardVariant::Masked {
        mask: &Mask::Causal,
        score_mod: &fm,
    };
    let e = attention_backward(&p.q, &p.k, &p.v, &p.dout, None, &v, &opts).unwrap_err();
    assert!(e.to_string().contains("d_params"), "{e}");
    let fm = DiffScoreMod::Function(f.with_params(vec![f64::NAN]));
    let v = BackwardVariant::Masked {
        mask: &Mask::Causal,
        score_mod: &fm,
    };
    let e = attention_backward(&p.q, &p.k, &p.v, &p.dout, None, &v, &opts).unwrap_err();
    assert!(e.to_string().contains("params"), "{e}");
    // the forward's own validation applies: Sq > Sk only for full/causal without a score mod
    let q_long = Tensor4::from_fn(Shape4::new(1, 2, 6, 4), |_, _, _, _| 0.5);
    let dout_long = Tensor4::from_fn(Shape4::new(1, 2, 6, 2), |_, _, _, _| 0.5);
    let local = BackwardVariant::Masked {
        mask: &Mask::Local { left: 1, right: 0 },
        score_mod: &sm,
    };
    let e = attention_backward(&q_long, &p.k, &p.v, &dout_long, None, &local, &opts).unwrap_err();
    assert!(matches!(e, RefError::QueryLongerThanKeys { .. }), "{e}");
}

/// The naive path is exactly the FlashAttention-2 backward in f32 described in
/// `docs/backward.md`, written here again from that text: f32 sequential dot products,
/// `P = exp(s - lse)` from the naive forward's f32 lse, `P` rounded to f16 for `P^T dO`,
/// `dS` rounded to f16 for `dS K` and `dS^T Q`, `scale` applied at the end, results rounded
/// to f16. Bit-exact, so dropping any one rounding fails.
#[test]
fn naive_path_is_the_fa2_model() {
    use half::f16;
    let mut r = rng(21);
    let p = Problem::new(&mut r, (1, 2, 1, 5, 7, 8, 4), 2.0);
    let h = |t: &Tensor4<f64>| {
        Tensor4::from_fn(t.shape, |b, hh, s, d| f16::from_f64(t.get(b, hh, s, d)))
    };
    let (q, k, v, dout) = (h(&p.q), h(&p.k), h(&p.v), h(&p.dout));
    let dlse: Vec<f64> = (0..10).map(|n| n as f64 * 0.25 - 1.0).collect();
    let sm = DiffScoreMod::None;
    let variant = BackwardVariant::Masked {
        mask: &Mask::Causal,
        score_mod: &sm,
    };
    let g = attention_backward(
        &q,
        &k,
        &v,
        &dout,
        Some(&dlse),
        &variant,
        &AttnOptions::naive(),
    )
    .unwrap();
    let f = |t: &Tensor4<f16>, hh: usize, s: usize| -> Vec<f32> {
        (0..t.shape.dim)
            .map(|d| t.get(0, hh, s, d) as f32)
            .collect()
    };
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0.0f32, |acc, (x, y)| acc + x * y);
    let r16 = |x: f32| f16::from_f32(x).to_f32();
    let scale = (1.0 / 8f64.sqrt()) as f32;
    let (mut dq, mut dk, mut dv) = (
        vec![0.0f32; 2 * 5 * 8],
        vec![0.0f32; 7 * 8],
        vec![0.0f32; 7 * 4],
    );
    for hh in 0..2 {
        for i in 0..5 {
            let lse = g.forward.lse_at(0, hh, i) as f32;
            let o: Vec<f32> = g.forward.row(0, hh, i).iter().map(|&x| x as f32).collect();
            let do_i = f(&dout, hh, i);
            let delta = dot(&do_i, &o);
            let dl = dlse[hh * 5 + i] as f32;
            for j in 0..=i + 2 {
                let s = scale * dot(&f(&q, hh, i), &f(&k, 0, j));
                let pij = (s - lse).exp();
                for d in 0..4 {
                    dv[j * 4 + d] += r16(pij) * do_i[d];
                }
                let ds = r16(pij * (dot(&do_i, &f(&v, 0, j)) - delta + dl));
                for d in 0..8 {
                    dq[(hh * 5 + i) * 8 + d] += ds * f(&k, 0, j)[d];
                    dk[j * 8 + d] += ds * f(&q, hh, i)[d];
                }
            }
        }
    }
    let fin =
        |x: &[f32], s: f32| -> Vec<f64> { x.iter().map(|&y| f64::from(r16(s * y))).collect() };
    assert_eq!(g.dq.data, fin(&dq, scale));
    assert_eq!(g.dk.data, fin(&dk, scale));
    assert_eq!(g.dv.data, fin(&dv, 1.0));
}

/// A user score function may send scores to -inf: a row whose every allowed score is -inf
/// is empty (zero gradient, no NaN), and a -inf entry in a non-empty row has P = 0 and
/// contributes nothing even where its derivative is not finite.
#[test]
fn minus_infinity_scores() {
    let mut r = rng(13);
    let p = Problem::new(&mut r, (1, 2, 1, 4, 6, 4, 3), 1.0);
    // position 3 (row 1) gets -inf everywhere; key 0 gets -inf for every other row
    let f = DiffScoreFn::new(
        |s, _, _, i, j| {
            if i == 3 || j == 0 {
                f64::NEG_INFINITY
            } else {
                s
            }
        },
        |_, _, _, i, j| if i == 3 || j == 0 { f64::INFINITY } else { 1.0 },
    );
    let sm = DiffScoreMod::Function(f);
    let variant = BackwardVariant::Masked {
        mask: &Mask::Causal,
        score_mod: &sm,
    };
    for opts in [AttnOptions::reference(), AttnOptions::naive()] {
        let g = attention_backward(&p.q, &p.k, &p.v, &p.dout, p.dlse(), &variant, &opts).unwrap();
        for t in [&g.dq, &g.dk, &g.dv] {
            assert!(t.data.iter().all(|x| x.is_finite()), "{:?}", t.data);
        }
        for hh in 0..2 {
            assert_eq!(g.forward.lse_at(0, hh, 1), f64::NEG_INFINITY);
            assert!((0..4).all(|d| g.dq.get(0, hh, 1, d) == 0.0));
        }
        assert!((0..4).all(|d| g.dk.get(0, 0, 0, d) == 0.0));
        assert!(g.dq.data.iter().any(|x| *x != 0.0));
    }
}
