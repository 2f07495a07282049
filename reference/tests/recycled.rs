//! Section 16 (Recycled Attention) against an independent step-by-step model written here from
//! the text of variants.md: schedule, key sets (full, partial, eviction order) and every
//! step's output as exact attention over its key set.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::*;
use half::{bf16, f16};
use proptest::prelude::*;

/// The section 16 schedule from the text (per batch element).
fn model_kinds(q_raw: &Tensor4<f32>, b: usize, stride: usize, thr: f64) -> Vec<StepKind> {
    let (hq, steps, d) = (q_raw.shape.heads, q_raw.shape.seq, q_raw.shape.dim);
    let mean = |t: usize| -> Vec<f64> {
        (0..d)
            .map(|x| (0..hq).map(|h| q_raw.get(b, h, t, x)).sum::<f64>() / hq as f64)
            .collect()
    };
    let mut kinds = Vec::new();
    let mut full_q = mean(0);
    for t in 0..steps {
        let kind = if t == 0 {
            StepKind::Full
        } else if t % stride == 0 {
            let (a, c) = (mean(t), &full_q);
            let cos = dot(&a, c) / (dot(&a, &a).sqrt() * dot(c, c).sqrt());
            if cos > thr {
                StepKind::Partial
            } else {
                StepKind::Full
            }
        } else {
            StepKind::Partial
        };
        if kind == StepKind::Full {
            full_q = mean(t);
        }
        kinds.push(kind);
    }
    kinds
}

/// Per step: kinds per b, key sets per (b, g), and the brute-force output over them.
struct ModelStep {
    kinds: Vec<StepKind>,
    keys: Vec<Vec<usize>>,
    recycled: Vec<Vec<usize>>,
    out: AttnOutput,
}

#[allow(clippy::too_many_arguments)]
fn model(
    q: &Tensor4<f32>,
    q_raw: &Tensor4<f32>,
    k: &Tensor4<f32>,
    v: &Tensor4<f32>,
    kk: Option<usize>,
    stride: usize,
    thr: f64,
    pool: usize,
) -> Vec<ModelStep> {
    let (bn, hq, steps, d) = (q.shape.batch, q.shape.heads, q.shape.seq, q.shape.dim);
    let (hkv, sk, dv) = (k.shape.heads, k.shape.seq, v.shape.dim);
    let grp = hq / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    let p0 = sk - steps;
    let kk = kk.unwrap_or(std::cmp::max(1, (p0 + 1) / 8));
    let mut res: Vec<ModelStep> = (0..steps)
        .map(|_| ModelStep {
            kinds: vec![],
            keys: vec![vec![]; bn * hkv],
            recycled: vec![vec![]; bn * hkv],
            out: AttnOutput::empty(Shape4::new(bn, hq, 1, dv)),
        })
        .collect();
    for b in 0..bn {
        let kinds = model_kinds(q_raw, b, stride, thr);
        let mut ranked: Vec<Vec<usize>> = vec![vec![]; hkv];
        let mut last_full = 0;
        for t in 0..steps {
            let p = p0 + t;
            res[t].kinds.push(kinds[t]);
            for g in 0..hkv {
                let set: Vec<usize> = if kinds[t] == StepKind::Full {
                    // Weights of every query head of the group over j <= p, max, pool, rank.
                    let mut score = vec![0.0f64; p + 1];
                    for h in g * grp..(g + 1) * grp {
                        let s: Vec<f64> = (0..=p)
                            .map(|j| (scale * dot(&row(q, b, h, t), &row(k, b, g, j))).exp())
                            .collect();
                        let z: f64 = s.iter().sum();
                        for j in 0..=p {
                            score[j] = score[j].max(s[j] / z);
                        }
                    }
                    let pooled: Vec<f64> = (0..=p)
                        .map(|j| {
                            let lo = j as i64 - (pool / 2) as i64;
                            let hi = j + pool / 2;
                            (0..=p)
                                .filter(|&x| x as i64 >= lo && x <= hi)
                                .map(|x| score[x])
                                .fold(0.0, f64::max)
                        })
                        .collect();
                    let mut order = Vec::new();
                    for _ in 0..kk {
                        let mut best: Option<usize> = None;
                        for j in 0..=p {
                            if pooled[j] > 0.0
                                && !order.contains(&j)
                                && best.is_none_or(|x| pooled[j] > pooled[x])
                            {
                                best = Some(j);
                            }
                        }
                        if let Some(j) = best {
                            order.push(j);
                        }
                    }
                    ranked[g] = order;
                    (0..=p).collect()
                } else {
                    let new: Vec<usize> = (last_full + 1..=p).collect();
                    let keep = kk.saturating_sub(new.len());
                    let mut s: Vec<usize> = ranked[g].iter().take(keep).copied().collect();
                    s.extend(new);
                    s.sort();
                    s
                };
                for h in g * grp..(g + 1) * grp {
                    let entries: Vec<(f64, Vec<f64>)> = set
                        .iter()
                        .map(|&j| {
                            (
                                scale * dot(&row(q, b, h, t), &row(k, b, g, j)),
                                row(v, b, g, j),
                            )
                        })
                        .collect();
                    let (o, l) = softmax_out(&entries, dv);
                    let r = b * hq + h;
                    res[t].out.out[r * dv..(r + 1) * dv].copy_from_slice(&o);
                    res[t].out.lse[r] = l;
                }
                res[t].keys[b * hkv + g] = set;
                res[t].recycled[b * hkv + g] = ranked[g].clone();
            }
            if kinds[t] == StepKind::Full {
                last_full = p;
            }
        }
    }
    res
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every step's kind, key set, keys read and output equal the independent model; the
    /// output is exact attention over the step's key set.
    #[test]
    fn driver_matches_model(b in 1..=2usize, hkv in 1..=2usize, grp in 1..=3usize, steps in 1..=12usize,
                            cache in 1..=30usize, stride in 1..=4usize,
                            thr in prop::sample::select(vec![-2.0, 0.0, 0.3, 0.9, 2.0]),
                            kk in prop::option::of(1..=8usize), pool in prop::sample::select(vec![1usize, 3, 7]),
                            seed in any::<u64>()) {
        let (hq, sk, d) = (hkv * grp, cache + steps, 4);
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(b, hq, steps, d), 2.0);
        let q_raw = rand_tensor(&mut r, Shape4::new(b, hq, steps, d), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(b, hkv, sk, d), 2.0);
        let v = rand_tensor(&mut r, Shape4::new(b, hkv, sk, 3), 1.0);
        let p = RecycledParams { recycle_size: kk, stride, threshold: thr, pool };
        let got = recycled_attention(&q, &q_raw, &k, &v, &p, &AttnOptions::reference()).unwrap();
        let want = model(&q, &q_raw, &k, &v, kk, stride, thr, pool);
        prop_assert_eq!(got.len(), steps);
        let sched = recycled_schedule(&q_raw, &p).unwrap();
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(&g.kinds, &w.kinds, "step {} kinds", t);
            prop_assert_eq!(&sched[t], &w.kinds, "step {} schedule", t);
            prop_assert_eq!(&g.keys, &w.keys, "step {} keys", t);
            prop_assert_eq!(&g.recycled, &w.recycled, "step {} recycled set", t);
            prop_assert_eq!(g.keys_read, w.keys.iter().map(Vec::len).sum::<usize>());
            assert_same(&g.out, &w.out, 1e-10, &format!("step {t}"));
        }
    }
}

/// Eviction order by hand: one head, scores fixed by `q . k_j = 4 a_j`, K = 4, no check step.
#[test]
fn eviction_drops_lowest_recycled_first() {
    let a = [0.1, 3.0, 0.5, 2.0, 1.0, 2.5, 0.2, 0.0];
    let (steps, sk) = (6, 13);
    let q = Tensor4::from_fn(Shape4::new(1, 1, steps, 2), |_, _, _, d| {
        if d == 0 {
            4.0f32
        } else {
            0.0
        }
    });
    let k = Tensor4::from_fn(Shape4::new(1, 1, sk, 2), |_, _, s, d| {
        if d == 0 && s < a.len() {
            a[s] as f32
        } else {
            0.0
        }
    });
    let p = RecycledParams {
        recycle_size: Some(4),
        stride: 100,
        threshold: 0.85,
        pool: 1,
    };
    let got = recycled_attention(&q, &q, &k, &k, &p, &AttnOptions::reference()).unwrap();
    let keys: Vec<Vec<usize>> = got.iter().map(|s| s.keys[0].clone()).collect();
    assert_eq!(keys[0], (0..=7).collect::<Vec<_>>());
    assert!(got.iter().all(|s| s.recycled == [vec![1, 5, 3, 4]]));
    // Recycled order: 1 (3.0), 5 (2.5), 3 (2.0), 4 (1.0); the lowest goes first.
    assert_eq!(keys[1], vec![1, 3, 5, 8]);
    assert_eq!(keys[2], vec![1, 5, 8, 9]);
    assert_eq!(keys[3], vec![1, 8, 9, 10]);
    assert_eq!(keys[4], vec![8, 9, 10, 11]);
    // New keys are never dropped, even past K.
    assert_eq!(keys[5], vec![8, 9, 10, 11, 12]);
    assert_eq!(got[5].keys_read, 5);
    assert!(got.iter().skip(1).all(|s| s.kinds == [StepKind::Partial]));
}

/// The schedule: strictly above the threshold stays partial (cos exactly 1.0 with threshold
/// 1.0 is full), `q_full` moves to the last full step, a zero query forces a full step,
/// defaults.
#[test]
fn schedule_rules() {
    use StepKind::{Full as F, Partial as P};
    let e = |t: usize, d: usize| -> f32 {
        match t {
            0 => (d == 0) as u8 as f32,
            5 => 0.0,
            _ => (d == 1) as u8 as f32,
        }
    };
    let q_raw = Tensor4::from_fn(Shape4::new(1, 2, 8, 4), |_, _, t, d| e(t, d));
    let sched = |stride, threshold| {
        let p = RecycledParams {
            stride,
            threshold,
            ..RecycledParams::default()
        };
        recycled_schedule(&q_raw, &p)
            .unwrap()
            .into_iter()
            .map(|k| k[0])
            .collect::<Vec<_>>()
    };
    // Stride 2: t = 2 compares e1 with e0 (cos 0): full; t = 4, 6 compare e1 with e1: partial.
    assert_eq!(sched(2, 0.5), vec![F, P, F, P, P, P, P, P]);
    // Threshold 1.0: cos exactly 1 is not strictly above.
    assert_eq!(sched(2, 1.0), vec![F, P, F, P, F, P, F, P]);
    // Stride 5: step 5 has a zero mean query: full.
    assert_eq!(sched(5, -2.0), vec![F, P, P, P, P, F, P, P]);
    assert_eq!(
        RecycledParams::default(),
        RecycledParams {
            recycle_size: None,
            stride: 10,
            threshold: 0.85,
            pool: 7
        }
    );
    // Default K = max(1, cache length at step 0 / 8): 37 keys at step 0 -> 4.
    let q = Tensor4::from_fn(Shape4::new(1, 1, 2, 2), |_, _, t, d| (t + d) as f32);
    let k = Tensor4::from_fn(Shape4::new(1, 1, 38, 2), |_, _, s, d| {
        ((s * 7 + d) % 5) as f32
    });
    let p = RecycledParams::default();
    let got = recycled_attention(&q, &q, &k, &k, &p, &AttnOptions::reference()).unwrap();
    assert_eq!(got[1].keys_read, 4);
    let k = Tensor4::from_fn(Shape4::new(1, 1, 5, 2), |_, _, s, d| (s + d) as f32);
    let got = recycled_attention(&q, &q, &k, &k, &p, &AttnOptions::reference()).unwrap();
    assert_eq!(
        got[1].keys_read, 1,
        "at least one key when the cache is under 8"
    );
}

/// Bad parameters and shapes are errors naming the field.
#[test]
fn input_errors() {
    let q = Tensor4::from_fn(Shape4::new(1, 1, 2, 2), |_, _, t, d| (t + d) as f32);
    let k = Tensor4::from_fn(Shape4::new(1, 1, 6, 2), |_, _, s, d| (s + d) as f32);
    let run = |p: RecycledParams| {
        recycled_attention(&q, &q, &k, &k, &p, &AttnOptions::reference())
            .unwrap_err()
            .to_string()
    };
    let d = RecycledParams::default();
    assert!(run(RecycledParams { stride: 0, ..d }).contains("stride"));
    assert!(run(RecycledParams { pool: 6, ..d }).contains("pool"));
    assert!(run(RecycledParams {
        threshold: f64::NAN,
        ..d
    })
    .contains("threshold"));
    assert!(run(RecycledParams {
        recycle_size: Some(0),
        ..d
    })
    .contains("recycle_size"));
    let q3 = Tensor4::from_fn(Shape4::new(1, 1, 3, 2), |_, _, t, d| (t + d) as f32);
    let e = recycled_attention(&q, &q3, &k, &k, &d, &AttnOptions::reference()).unwrap_err();
    assert!(e.to_string().contains("q_raw"), "{e}");
    let e = recycled_attention(&k, &k, &q, &q, &d, &AttnOptions::reference()).unwrap_err();
    assert!(e.to_string().contains("Sq"), "{e}");
}

fn naive_case<T: Element>() {
    let mut r = rng(5);
    let conv =
        |t: Tensor4<f32>| Tensor4::from_fn(t.shape, |b, h, s, d| T::from_f64(t.get(b, h, s, d)));
    let q = conv(int_tensor(&mut r, Shape4::new(2, 4, 9, 8), 2));
    let q_raw = conv(rand_tensor(&mut r, Shape4::new(2, 4, 9, 8), 1.0));
    let k = conv(int_tensor(&mut r, Shape4::new(2, 2, 40, 8), 2));
    let v = conv(rand_tensor(&mut r, Shape4::new(2, 2, 40, 4), 1.0));
    let p = RecycledParams {
        recycle_size: Some(6),
        stride: 3,
        threshold: 0.2,
        pool: 3,
    };
    let naive = recycled_attention(&q, &q_raw, &k, &v, &p, &AttnOptions::naive()).unwrap();
    let exact = recycled_attention(&q, &q_raw, &k, &v, &p, &AttnOptions::reference()).unwrap();
    let tol = Tolerance::for_dtype(T::DTYPE);
    for (t, (n, e)) in naive.iter().zip(&exact).enumerate() {
        assert_eq!(n.kinds, e.kinds, "{:?} step {t}", T::DTYPE);
        let sets: KeySets = (0..8)
            .map(|r| n.keys[(r / 4) * 2 + (r % 4) / 2].clone())
            .collect();
        let qt = Tensor4::from_fn(Shape4::new(2, 4, 1, 8), |b, h, _, d| {
            T::from_f64(q.get(b, h, t, d))
        });
        let want = attention_over_keys(&qt, &k, &v, &sets, &AttnOptions::naive()).unwrap();
        assert_eq!(
            n.out,
            want,
            "{:?} step {t}: naive out over its key set",
            T::DTYPE
        );
        let reference = attention_over_keys(&qt, &k, &v, &sets, &AttnOptions::reference()).unwrap();
        assert!(
            assert_close(&n.out, &reference, &n.out, tol.rtol, tol.atol).is_ok(),
            "{:?} step {t}",
            T::DTYPE
        );
    }
}

/// The naive path of every dtype: each step's output is the naive attention over that step's
/// key set, within the tolerance rule of the f64 reference over the same set; GQA, batch 2.
#[test]
fn naive_path_every_dtype() {
    naive_case::<f32>();
    naive_case::<f16>();
    naive_case::<bf16>();
    naive_case::<f64>();
}

/// With `K` at least the cache length every step attends every key `j <= p_t`: the driver
/// equals causal attention row by row (section 10 style identity); the default `K` does not.
#[test]
fn recycling_everything_equals_causal() {
    let mut r = rng(13);
    let (steps, sk) = (12, 40);
    let q = rand_tensor(&mut r, Shape4::new(2, 4, steps, 8), 2.0);
    let k = rand_tensor(&mut r, Shape4::new(2, 2, sk, 8), 2.0);
    let v = rand_tensor(&mut r, Shape4::new(2, 2, sk, 4), 1.0);
    let opts = AttnOptions::reference();
    let causal = dense_attention(&q, &k, &v, true, &opts).unwrap();
    let p = RecycledParams {
        recycle_size: Some(sk),
        stride: 5,
        ..RecycledParams::default()
    };
    for (t, s) in recycled_attention(&q, &q, &k, &v, &p, &opts)
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(s.keys_read, 2 * 2 * (sk - steps + t + 1), "step {t}");
        for b in 0..2 {
            for h in 0..4 {
                let (a, c) = (s.out.row(b, h, 0), causal.row(b, h, t));
                assert!(
                    a.iter().zip(c).all(|(x, y)| (x - y).abs() < 1e-12),
                    "step {t}"
                );
            }
        }
    }
    let small = recycled_attention(&q, &q, &k, &v, &RecycledParams::default(), &opts).unwrap();
    assert!(small[1].keys_read < 2 * 2 * (sk - steps + 2));
}

/// The size of issue 20's check (64 decode steps on a 4096-token cache, GQA 4/2, D = 64):
/// every step equals exact attention over its key set, computed here per row; the schedule
/// mixes both kinds. Prints the keys read and the gap to full attention (a quality figure).
#[test]
fn sixty_four_steps_on_a_4096_cache() {
    let mut r = rng(17);
    let (steps, sk, d) = (64, 4096, 64);
    let q = rand_tensor(&mut r, Shape4::new(1, 4, steps, d), 1.0);
    // Queries drift slowly, with a jump at step 30: the check at 30 runs a full step.
    let q_raw = Tensor4::from_fn(Shape4::new(1, 4, steps, d), |_, h, t, x| {
        let base = if t < 30 {
            (x % 5) as f32
        } else {
            (x % 3) as f32 - 1.0
        };
        base + 0.01 * ((h + t + x) % 7) as f32
    });
    let k = rand_tensor(&mut r, Shape4::new(1, 2, sk, d), 1.0);
    let v = rand_tensor(&mut r, Shape4::new(1, 2, sk, 8), 1.0);
    let opts = AttnOptions::reference();
    let got = recycled_attention(&q, &q_raw, &k, &v, &RecycledParams::default(), &opts).unwrap();
    let full: Vec<usize> = (0..steps)
        .filter(|&t| got[t].kinds[0] == StepKind::Full)
        .collect();
    assert_eq!(full, vec![0, 30]);
    let causal = dense_attention(&q, &k, &v, true, &opts).unwrap();
    let (mut read, mut gap) = (0usize, 0.0f64);
    let scale = 1.0 / (d as f64).sqrt();
    for (t, s) in got.iter().enumerate() {
        read += s.keys_read;
        for h in 0..4 {
            let qr = row(&q, 0, h, t);
            let entries: Vec<(f64, Vec<f64>)> = s.keys[h / 2]
                .iter()
                .map(|&j| {
                    (
                        scale * dot(&qr, &row(&k, 0, h / 2, j)),
                        row(&v, 0, h / 2, j),
                    )
                })
                .collect();
            let (o, l) = softmax_out(&entries, 8);
            let got_row = s.out.row(0, h, 0);
            assert!((s.out.lse_at(0, h, 0) - l).abs() < 1e-10, "step {t} lse");
            for x in 0..8 {
                assert!((got_row[x] - o[x]).abs() < 1e-10, "step {t} out");
                gap = gap.max((got_row[x] - causal.row(0, h, t)[x]).abs());
            }
        }
    }
    let dense: usize = (0..steps).map(|t| 2 * (sk - steps + t + 1)).sum();
    eprintln!(
        "recycled: 64 steps on a 4096 cache: keys read {read} of {dense} dense ({:.3}), max |out - full attention| {gap:.3e}",
        read as f64 / dense as f64
    );
    assert!(read < dense / 4);
}
