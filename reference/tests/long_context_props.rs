//! Sections 5-9 (LM-Infinite, landmark, HAX, CCA, top-k) checked against brute forces
//! written here directly from the text of variants.md, plus the section 10 identities.
// Brute forces index arrays exactly as the formulas of variants.md do.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::*;
use proptest::prelude::*;
use rand::Rng;

fn rope_text(x: &[f64], t: f64, theta: f64) -> Vec<f64> {
    let d = x.len();
    let mut y = x.to_vec();
    for m in 0..d / 2 {
        let a = t * theta.powf(-2.0 * m as f64 / d as f64);
        y[m] = x[m] * a.cos() - x[m + d / 2] * a.sin();
        y[m + d / 2] = x[m + d / 2] * a.cos() + x[m] * a.sin();
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Section 5 brute force; `L >= Sk` equals causal attention on rotated q/k.
    #[test]
    fn lm_infinite_matches_text(b in 1..=2usize, grp in 1..=2usize, sq in 1..=7usize, extra in 0..4usize,
                                half_d in 1..=3usize, g in 0..4usize, l in 0..6usize, dlim in 0..10usize, seed in any::<u64>()) {
        let (sk, d, theta) = (sq + extra, 2 * half_d, 100.0);
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(b, grp, sq, d), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(b, 1, sk, d), 1.0);
        let v = rand_tensor(&mut r, Shape4::new(b, 1, sk, 2), 1.0);
        let p = LmInfiniteParams { global: g, local: l, dist_limit: dlim, theta };
        let got = lm_infinite_attention(&q, &k, &v, &p, &AttnOptions::reference()).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let want = brute(&q, &k, &v, |bi, h, i, j| {
            let pos = i + extra;
            if j > pos { return None; }
            let (qi, kj) = (row(&q, bi, h, i), row(&k, bi, 0, j));
            if pos - j < l {
                Some(scale * dot(&rope_text(&qi, pos as f64, theta), &rope_text(&kj, j as f64, theta)))
            } else if j < g {
                Some(scale * dot(&rope_text(&qi, dlim.min(sk - 1) as f64, theta), &kj))
            } else { None }
        });
        assert_same(&got, &want, 1e-9, "lm_infinite");
        let big = LmInfiniteParams { local: sk + l, ..p };
        let lm = lm_infinite_attention(&q, &k, &v, &big, &AttnOptions::reference()).unwrap();
        let (qr, kr) = (rope_tensor(&q, extra as i64, theta).unwrap(), rope_tensor(&k, 0, theta).unwrap());
        let vr = Tensor4::from_fn(v.shape, |a, bb, c, dd| v.get(a, bb, c, dd));
        assert_same(&lm, &dense_attention(&qr, &kr, &vr, true, &AttnOptions::reference()).unwrap(), 1e-9, "L>=Sk");
    }

    /// Section 6 brute force (weights via one-hot values), both modes; retrieval with
    /// `top_k >= #blocks` equals training; landmarks get weight 0; weights sum to 1.
    #[test]
    fn landmark_matches_text(sq in 1..=12usize, extra in 0..5usize, mem_freq in 1..=3usize, top_k in 1..=4usize, seed in any::<u64>()) {
        let (sk, d) = (sq + extra, 3);
        let mut r = rng(seed);
        // Integer inputs times 0.37 keep landmark scores free of near-ties (exact ties break low).
        let q = int_tensor(&mut r, Shape4::new(1, 2, sq, d), 3);
        let k = int_tensor(&mut r, Shape4::new(1, 1, sk, d), 3);
        let v = one_hot(1, 1, sk);
        let o = AttnOptions::reference().with_scale(0.37);
        let bl = mem_freq + 1;
        for mode in [LandmarkMode::Training, LandmarkMode::Retrieval { top_k }] {
            let got = landmark_attention(&q, &k, &v, &LandmarkParams { mem_freq, mode }, &o).unwrap();
            for h in 0..2 { for i in 0..sq {
                let p = i + extra;
                let s = |j: usize| 0.37 * dot(&row(&q, 0, h, i), &row(&k, 0, 0, j));
                let c = p / bl;
                let lmk = |b: usize| b * bl + bl - 1;
                let mut blocks: Vec<usize> = (0..c).collect();
                if let LandmarkMode::Retrieval { top_k } = mode {
                    // Brute force: block b is kept when fewer than top_k blocks beat it.
                    blocks.retain(|&b| (0..c).filter(|&b2| s(lmk(b2)) > s(lmk(b)) || (s(lmk(b2)) == s(lmk(b)) && b2 < b)).count() < top_k);
                }
                let own: Vec<usize> = (c * bl..=p).filter(|j| j % bl != bl - 1).collect();
                let z: f64 = blocks.iter().map(|&b| s(lmk(b)).exp()).sum::<f64>() + own.iter().map(|&j| s(j).exp()).sum::<f64>();
                let mut w = vec![0.0; sk];
                for &j in &own { w[j] = s(j).exp() / z; }
                for &b in &blocks {
                    let inner: f64 = (b * bl..b * bl + bl - 1).map(|j| s(j).exp()).sum();
                    for j in b * bl..b * bl + bl - 1 { w[j] = s(lmk(b)).exp() / z * s(j).exp() / inner; }
                }
                let out = got.row(0, h, i);
                for j in 0..sk { prop_assert!((out[j] - w[j]).abs() < 1e-9, "{:?} h={} i={} j={}: {} vs {}", mode, h, i, j, out[j], w[j]); }
                prop_assert!((out.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                prop_assert!((got.lse_at(0, h, i) - z.ln()).abs() < 1e-9);
            }}
        }
        let blocks = sk / bl + 1;
        let t = landmark_attention(&q, &k, &v, &LandmarkParams { mem_freq, mode: LandmarkMode::Training }, &o).unwrap();
        let rr = landmark_attention(&q, &k, &v, &LandmarkParams { mem_freq, mode: LandmarkMode::Retrieval { top_k: blocks + top_k } }, &o).unwrap();
        assert_same(&t, &rr, 0.0, "retrieval with top_k >= blocks");
    }

    /// Section 7 brute force: preprocessing, codes, LSH and key-selection sets, union attention,
    /// for every sharing of hyperplanes and ks.
    #[test]
    fn hax_matches_text(b in 1..=2usize, hkv in 1..=2usize, grp in 1..=2usize, s in 1..=10usize, n in 1..=4usize,
                        nb in 1..=3usize, k_lsh in 0..4usize, k_ks in 0..4usize, sh_hp in 0..3usize, sh_ks in 0..3usize, seed in any::<u64>()) {
        prop_assume!(k_lsh + k_ks > 0);
        let hq = hkv * grp;
        let sharing = |x| [Sharing::Shared, Sharing::PerQueryHead, Sharing::PerKvHead][x];
        let heads = |x: usize| [1, hq, hkv][x];
        let mut r = rng(seed);
        let q2 = rand_tensor(&mut r, Shape4::new(b, hq, s, n), 1.0);
        let k2 = rand_tensor(&mut r, Shape4::new(b, hkv, s, n), 1.0);
        let x = one_hot(b, hkv, s);
        let hb = if r.gen_bool(0.5) { 1 } else { b };
        let hp = rand_tensor(&mut r, Shape4::new(hb, heads(sh_hp), n, nb), 1.0);
        let ks = rand_tensor(&mut r, Shape4::new(hb, heads(sh_ks), s, 1), 1.0);
        let params = HaxParams { k_lsh, k_ks, hyperplane_sharing: sharing(sh_hp), ks_sharing: sharing(sh_ks) };
        let inp = HaxInputs { q2: &q2, k2: &k2, x: &x, hyperplanes: &hp, ks: &ks };
        let got = hax_attention(&inp, &params, &AttnOptions::reference()).unwrap();
        let sets = hax_key_sets(&inp, &params, Precision::F64).unwrap();
        let pick = |sh: usize, h: usize| [0, h, h / grp][sh];
        // Text: centre columns, divide by max(norm, 1e-12), code = sum [x.Hp[:,t] > 0] 2^t.
        let codes = |t: &Tensor4<f32>, bi: usize, th: usize, h: usize| -> Vec<u32> {
            let mut rows: Vec<Vec<f64>> = (0..s).map(|i| row(t, bi, th, i)).collect();
            for c in 0..n {
                let mean = rows.iter().map(|r| r[c]).sum::<f64>() / s as f64;
                rows.iter_mut().for_each(|r| r[c] -= mean);
                let norm = rows.iter().map(|r| r[c] * r[c]).sum::<f64>().sqrt().max(1e-12);
                rows.iter_mut().for_each(|r| r[c] /= norm);
            }
            let hbi = if hb == 1 { 0 } else { bi };
            rows.iter().map(|xr| (0..nb).map(|tt| {
                let dp: f64 = (0..n).map(|m| xr[m] * hp.get(hbi, pick(sh_hp, h), m, tt)).sum();
                if dp > 0.0 { 1u32 << tt } else { 0 }
            }).sum()).collect()
        };
        let want = brute(&q2, &k2, &x, |bi, h, i, j| {
            if j > i { return None; }
            let (cq, ck) = (codes(&q2, bi, h, h), codes(&k2, bi, h / grp, h));
            let lsh: Vec<usize> = (0..=i).rev().filter(|&jj| cq[i] == ck[jj]).take(k_lsh).collect();
            let ksv = |jj: usize| ks.get(if hb == 1 { 0 } else { bi }, pick(sh_ks, h), jj, 0);
            let rank = (0..=i).filter(|&o| ksv(o) > ksv(j) || (ksv(o) == ksv(j) && o < j)).count();
            (lsh.contains(&j) || rank < k_ks).then(|| dot(&row(&q2, bi, h, i), &row(&k2, bi, h / grp, j)))
        });
        assert_same(&got, &want, 1e-9, "hax");
        for (rix, set) in sets.iter().enumerate() {
            let i = rix % s;
            let nz: Vec<usize> = (0..s).filter(|&j| want.out[rix * s + j] > 0.0).collect();
            prop_assert_eq!(set, &nz);
            if k_ks > 0 { prop_assert!(!set.is_empty()); }
            if k_ks > i { prop_assert_eq!(set.len(), i + 1); }
        }
    }

    /// Section 8 brute force; weights over the original tokens sum to 1 (one-hot values).
    #[test]
    fn cca_matches_text(grp in 1..=2usize, s in 1..=14usize, g in 1..=4usize, w in 0..6usize, d in 1..=3usize, seed in any::<u64>()) {
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(1, grp, s, d), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(1, 1, s, d), 1.0);
        let v = one_hot(1, 1, s);
        let got = cca_attention(&q, &k, &v, &CcaParams { group: g, window: w }, &AttnOptions::reference()).unwrap();
        let sc = 1.0 / (d as f64).sqrt();
        for h in 0..grp { for i in 0..s {
            let qi = row(&q, 0, h, i);
            let n_i = if i + 1 > w { (i + 1 - w) / g } else { 0 };
            let mut entries = Vec::new();
            for p in 0..n_i {
                let ql = row(&q, 0, h, (p + 1) * g - 1);
                let a: Vec<f64> = (0..g).map(|t| (sc * dot(&ql, &row(&k, 0, 0, p * g + t))).exp()).collect();
                let za: f64 = a.iter().sum();
                let mut kbar = vec![0.0; d];
                let mut vbar = vec![0.0; s];
                for t in 0..g {
                    for m in 0..d { kbar[m] += a[t] / za * k.get(0, 0, p * g + t, m); }
                    vbar[p * g + t] += a[t] / za;
                }
                entries.push((sc * dot(&qi, &kbar), vbar));
            }
            for c in n_i * g..=i { entries.push((sc * dot(&qi, &row(&k, 0, 0, c)), row(&v, 0, 0, c))); }
            let (o, l) = softmax_out(&entries, s);
            prop_assert_eq!(cca_core_count(i, &CcaParams { group: g, window: w }), n_i);
            for j in 0..s { prop_assert!((got.row(0, h, i)[j] - o[j]).abs() < 1e-9); }
            prop_assert!((got.lse_at(0, h, i) - l).abs() < 1e-9);
            prop_assert!((got.row(0, h, i).iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }}
    }

    /// Section 9 brute force; merging W and R by log-sum-exp equals the union; merging any
    /// two disjoint key sets equals attention over their union (section 10).
    #[test]
    fn topk_matches_text_and_merges(sq in 1..=3usize, extra in 0..10usize, start in 0..3usize, end in 0..3usize,
                                    kk in 1..=4usize, seed in any::<u64>()) {
        let (sk, d) = (sq + extra, 3);
        let mut r = rng(seed);
        let q = rand_tensor(&mut r, Shape4::new(1, 2, sq, d), 1.0);
        let k = rand_tensor(&mut r, Shape4::new(1, 1, sk, d), 1.0);
        let v = rand_tensor(&mut r, Shape4::new(1, 1, sk, 2), 1.0);
        let p = TopkParams { start, end, k: kk };
        let o = AttnOptions::reference();
        let got = topk_attention(&q, &k, &v, &p, &o).unwrap();
        let sets = topk_key_sets(&q, &k, &v, &p, Precision::F64).unwrap();
        let sc = 1.0 / (d as f64).sqrt();
        let want = brute(&q, &k, &v, |_, h, i, j| {
            let pos = i + extra;
            if j > pos { return None; }
            let in_w = |x: usize| x < start || (x + end > pos);
            let sd = |x: usize| dot(&row(&q, 0, h, i), &row(&k, 0, 0, x));
            let better = (0..=pos).filter(|&o| !in_w(o) && (sd(o) > sd(j) || (sd(o) == sd(j) && o < j))).count();
            (in_w(j) || better < kk).then(|| sc * sd(j))
        });
        assert_same(&got, &want, 1e-9, "topk");
        let ow = attention_over_keys(&q, &k, &v, &sets.static_keys, &o).unwrap();
        let or = attention_over_keys(&q, &k, &v, &sets.retrieved, &o).unwrap();
        assert_same(&lse_merge(&ow, &or).unwrap(), &got, 1e-12, "W/R merge");
        // Random disjoint split of every key.
        let mut a = Vec::new();
        let mut bset = Vec::new();
        for _ in 0..2 * sq {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for j in 0..sk { if r.gen_bool(0.5) { x.push(j) } else { y.push(j) } }
            a.push(x); bset.push(y);
        }
        let m = lse_merge(&attention_over_keys(&q, &k, &v, &a, &o).unwrap(), &attention_over_keys(&q, &k, &v, &bset, &o).unwrap()).unwrap();
        assert_same(&m, &dense_attention(&q, &k, &v, false, &o).unwrap(), 1e-12, "disjoint merge");
    }
}

/// A hand-checkable landmark case: mem_freq 1 (blocks of 2), query 3 at the last landmark.
#[test]
fn landmark_hand_case() {
    // q = 1, k_j = j (D = 1, scale 1): s_j = j.
    let q = Tensor4::from_vec(Shape4::new(1, 1, 4, 1), vec![1.0f32; 4]).unwrap();
    let k = Tensor4::from_vec(Shape4::new(1, 1, 4, 1), vec![0.0f32, 1.0, 2.0, 3.0]).unwrap();
    let v = one_hot(1, 1, 4);
    let o = AttnOptions::reference().with_scale(1.0);
    let r = landmark_attention(
        &q,
        &k,
        &v,
        &LandmarkParams {
            mem_freq: 1,
            mode: LandmarkMode::Training,
        },
        &o,
    )
    .unwrap();
    // Query 3 (block 1, itself a landmark): Main = {lmk 1} U {2}; Z = e^1 + e^2.
    let z = 1f64.exp() + 2f64.exp();
    let w = r.row(0, 0, 3);
    assert!((w[0] - 1f64.exp() / z).abs() < 1e-12); // all of block 0 goes to token 0
    assert_eq!(w[1], 0.0);
    assert!((w[2] - 2f64.exp() / z).abs() < 1e-12);
    assert_eq!(w[3], 0.0);
    assert!((r.lse_at(0, 0, 3) - z.ln()).abs() < 1e-12);
}
