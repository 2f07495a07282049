//! Section 13: varlen, paged and split-KV references against the dense reference run on each
//! sequence (gathered here, independently of `serving.rs`), plus the input errors.
#![allow(clippy::needless_range_loop)]

mod common;

use attnforge_reference::*;
use common::rng;
use half::{bf16, f16};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const HQ: usize = 4;
const HKV: usize = 2;
const D: usize = 5;
const DV: usize = 3;
const N_MASKS: usize = 15;
const N_SCORE_MODS: usize = 5;

/// The b-dependent user predicate (positions `i`, `j`).
fn pred(b: usize, h: usize, i: i64, j: i64) -> bool {
    j <= i + (b % 2) as i64 && (i - j + h as i64 + b as i64) % 3 != 1
}

/// The b-dependent user score function.
fn score_fn(s: f64, b: usize, h: usize, i: i64, j: i64) -> f64 {
    s + 0.25 * b as f64 - 0.05 * (h as f64 + 1.0) * (i - j).abs() as f64
}

/// Mask `kind` over the doc ids `doc`; `seq` = Some(b) builds the one-sequence mask whose
/// user predicate is called with batch `b` (the expectation), None the layout's mask.
fn mask(kind: usize, doc: &[i32], seq: Option<usize>) -> Mask {
    let doc = doc.to_vec();
    let p = |seq: Option<usize>| match seq {
        Some(b) => Mask::predicate(move |_, h, i, j| pred(b, h, i, j)),
        None => Mask::predicate(pred),
    };
    match kind {
        0 => Mask::Full,
        1 => Mask::Causal,
        2 => Mask::Local { left: 3, right: 1 },
        3 => Mask::PrefixLm { prefix: 2 },
        4 => Mask::Document { doc },
        5 => Mask::CausalDocument { doc },
        6 => Mask::ShareQuestion { doc },
        7 => Mask::GlobalLocal {
            window: 2,
            global: 1,
        },
        8 => Mask::BlockCausalDocument { doc, block: 3 },
        9 => Mask::Lambda {
            global: 1,
            local: 3,
        },
        10 => Mask::ChunkedCausal { chunk: 4 },
        11 => Mask::DilatedCausal {
            window: 2,
            dilation: 2,
        },
        12 => p(seq),
        13 => Mask::All(vec![Mask::Causal, Mask::Document { doc }]),
        _ => Mask::Any(vec![Mask::Local { left: 1, right: 0 }, p(seq)]),
    }
}

fn score_mod(kind: usize, seq: Option<usize>) -> ScoreMod {
    let f = |seq: Option<usize>| match seq {
        Some(b) => ScoreMod::function(move |s, _, h, i, j| score_fn(s, b, h, i, j)),
        None => ScoreMod::function(score_fn),
    };
    match kind {
        0 => ScoreMod::None,
        1 => ScoreMod::Softcap(2.0),
        2 => ScoreMod::Alibi(alibi_slopes(HQ)),
        3 => f(seq),
        _ => ScoreMod::Chain(vec![ScoreMod::Softcap(3.0), f(seq)]),
    }
}

fn sq_gt_sk_defined(mask_kind: usize, sm_kind: usize) -> bool {
    mask_kind <= 1 && sm_kind == 0
}

/// A packed batch: lengths, offsets, values (exact in every dtype after rounding) and doc ids.
struct Batch<T> {
    sq: Vec<usize>,
    sk: Vec<usize>,
    cu_q: Vec<i32>,
    cu_k: Vec<i32>,
    q: Packed<T>,
    k: Packed<T>,
    v: Packed<T>,
    doc: Vec<i32>,
}

fn offsets(lens: &[usize]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    cu
}

fn val<T: Element>(r: &mut ChaCha8Rng) -> T {
    T::from_f64(r.gen_range(-1.5..1.5))
}

fn batch<T: Element>(r: &mut ChaCha8Rng, sq: Vec<usize>, sk: Vec<usize>) -> Batch<T> {
    let (cu_q, cu_k) = (offsets(&sq), offsets(&sk));
    let (tq, tk) = (sq.iter().sum(), sk.iter().sum());
    let q = Packed::from_fn(tq, HQ, D, |_, _, _| val(r));
    let k = Packed::from_fn(tk, HKV, D, |_, _, _| val(r));
    let v = Packed::from_fn(tk, HKV, DV, |_, _, _| val(r));
    // sorted ids per sequence: 0 (the share_question question) first
    let mut doc = Vec::new();
    for &l in &sk {
        let mut ids: Vec<i32> = (0..l).map(|_| r.gen_range(0..3)).collect();
        ids.sort_unstable();
        doc.extend(ids);
    }
    Batch {
        sq,
        sk,
        cu_q,
        cu_k,
        q,
        k,
        v,
        doc,
    }
}

/// Random lengths with zero-length query and key sequences; `Sq_b > Sk_b` only when `gt`.
fn lengths(r: &mut ChaCha8Rng, n: usize, max_k: usize, gt: bool) -> (Vec<usize>, Vec<usize>) {
    let mut sk: Vec<usize> = (0..n).map(|_| r.gen_range(1..=max_k)).collect();
    let mut sq: Vec<usize> = sk
        .iter()
        .map(|&k| {
            if gt {
                r.gen_range(0..=k + 3)
            } else {
                r.gen_range(0..=k)
            }
        })
        .collect();
    sq[0] = 0; // a sequence with keys but no queries
    sk[1] = 0; // a sequence with no keys
    sq[1] = if gt { 2 } else { 0 };
    (sq, sk)
}

fn rows_of(p: &Packed<impl Element>, range: std::ops::Range<usize>, heads: usize) -> Tensor4<f64> {
    Tensor4::from_fn(Shape4::new(1, heads, range.len(), p.dim), |_, h, s, d| {
        p.get(range.start + s, h, d)
    })
}

fn to_t<T: Element>(t: &Tensor4<f64>) -> Tensor4<T> {
    Tensor4::from_fn(t.shape, |b, h, s, d| T::from_f64(t.get(b, h, s, d)))
}

/// The dense reference on sequence `b`, gathered from the packed arrays by this test.
fn dense_seq<T: Element>(
    x: &Batch<T>,
    b: usize,
    mk: usize,
    sm: usize,
    opts: &AttnOptions,
) -> AttnOutput {
    let qr = x.cu_q[b] as usize..x.cu_q[b + 1] as usize;
    let kr = x.cu_k[b] as usize..x.cu_k[b + 1] as usize;
    if kr.is_empty() {
        return AttnOutput::empty(Shape4::new(1, HQ, qr.len(), DV));
    }
    let q = to_t::<T>(&rows_of(&x.q, qr, HQ));
    let k = to_t::<T>(&rows_of(&x.k, kr.clone(), HKV));
    let v = to_t::<T>(&rows_of(&x.v, kr.clone(), HKV));
    let m = mask(mk, &x.doc[kr], Some(b));
    attention(&q, &k, &v, &m, &score_mod(sm, Some(b)), opts).unwrap()
}

/// `got` (packed `[Tq, Hq, Dv]`, lse `[Hq, Tq]`) holds exactly `want` at rows `start..`.
fn assert_rows_exact(got: &VarlenOutput, start: usize, want: &AttnOutput, ctx: &str) {
    let (tq, sq) = (got.tokens, want.shape.seq);
    for h in 0..HQ {
        for i in 0..sq {
            let t = start + i;
            let lse = got.lse[h * tq + t];
            assert!(
                lse == want.lse_at(0, h, i) || (lse.is_nan() && want.lse_at(0, h, i).is_nan()),
                "{ctx}: lse token {t} head {h}: {lse} vs {}",
                want.lse_at(0, h, i)
            );
            for d in 0..DV {
                let o = got.out[(t * HQ + h) * DV + d];
                assert!(!o.is_nan(), "{ctx}: NaN");
                assert_eq!(
                    o,
                    want.row(0, h, i)[d],
                    "{ctx}: out token {t} head {h} d {d}"
                );
            }
        }
    }
}

fn varlen_vs_dense<T: Element>(seed: u64) {
    for precision in [Precision::F64, Precision::Naive] {
        let opts = AttnOptions {
            scale: None,
            precision,
        };
        for mk in 0..N_MASKS {
            for sm in 0..N_SCORE_MODS {
                let mut r = rng(seed * 1000 + (mk * 10 + sm) as u64);
                let (sq, sk) = lengths(&mut r, 5, 13, sq_gt_sk_defined(mk, sm));
                let x = batch::<T>(&mut r, sq, sk);
                let kv = VarlenKv {
                    k: &x.k,
                    v: &x.v,
                    cu_seqlens_k: &x.cu_k,
                };
                let got = varlen_attention(
                    &x.q,
                    &x.cu_q,
                    &kv,
                    &mask(mk, &x.doc, None),
                    &score_mod(sm, None),
                    &opts,
                )
                .unwrap_or_else(|e| panic!("mask {mk} sm {sm}: {e}"));
                assert_eq!((got.tokens, got.heads, got.dim), (x.q.tokens, HQ, DV));
                for b in 0..x.sq.len() {
                    let want = dense_seq(&x, b, mk, sm, &opts);
                    let ctx = format!(
                        "{:?} {precision:?} mask {mk} sm {sm} seq {b} (Sq {} Sk {})",
                        T::DTYPE,
                        x.sq[b],
                        x.sk[b]
                    );
                    assert_rows_exact(&got, x.cu_q[b] as usize, &want, &ctx);
                }
            }
        }
    }
}

#[test]
fn varlen_equals_per_sequence_dense_every_mask_score_mod_dtype() {
    varlen_vs_dense::<f32>(1);
    varlen_vs_dense::<f16>(2);
    varlen_vs_dense::<bf16>(3);
    varlen_vs_dense::<f64>(4);
}

/// Equal lengths: varlen equals one batched dense call, whose doc arrays (`B * Sk`) and user
/// functions see the batch index natively.
#[test]
fn varlen_equal_lengths_equals_batched_dense() {
    let (nb, sq, sk) = (3, 4, 9);
    for mk in 0..N_MASKS {
        for sm in [0, 2, 3] {
            let mut r = rng(77 + mk as u64);
            let x = batch::<f32>(&mut r, vec![sq; nb], vec![sk; nb]);
            let t4 = |p: &Packed<f32>, s: usize, h: usize| {
                Tensor4::from_fn(Shape4::new(nb, h, s, p.dim), |b, h, i, d| {
                    p.get(b * s + i, h, d) as f32
                })
            };
            let (q, k, v) = (t4(&x.q, sq, HQ), t4(&x.k, sk, HKV), t4(&x.v, sk, HKV));
            // the layout's mask (user predicate sees the real batch) on B * Sk doc ids
            let dense = attention(
                &q,
                &k,
                &v,
                &mask(mk, &x.doc, None),
                &score_mod(sm, None),
                &AttnOptions::reference(),
            )
            .unwrap();
            let kv = VarlenKv {
                k: &x.k,
                v: &x.v,
                cu_seqlens_k: &x.cu_k,
            };
            let got = varlen_attention(
                &x.q,
                &x.cu_q,
                &kv,
                &mask(mk, &x.doc, None),
                &score_mod(sm, None),
                &AttnOptions::reference(),
            )
            .unwrap();
            assert!(
                got.to_batched(nb, sq).unwrap() == dense,
                "mask {mk} sm {sm}"
            );
        }
    }
}

/// A paged copy of a packed batch: random page order, a shared prefix, unused garbage pages.
struct Paged<T> {
    k_cache: PagedCache<T>,
    v_cache: PagedCache<T>,
    table: Vec<i32>,
    max_pages: usize,
    seqlens: Vec<i32>,
    doc: Vec<i32>,
}

/// Build sequences whose second one shares the first `shared` full pages of the first,
/// then scatter them into pages of `ps`.
fn paged_batch<T: Element>(
    r: &mut ChaCha8Rng,
    ps: usize,
    sq: Vec<usize>,
    sk: Vec<usize>,
) -> (Batch<T>, Paged<T>) {
    let mut x = batch::<T>(r, sq, sk.clone());
    // shared prefix: sequence 1's first full pages are sequence 0's
    let shared = (sk[0] / ps).min(sk[1] / ps);
    let (o0, o1) = (x.cu_k[0] as usize, x.cu_k[1] as usize);
    for j in 0..shared * ps {
        for h in 0..HKV {
            for d in 0..D {
                x.k.data[((o1 + j) * HKV + h) * D + d] = x.k.data[((o0 + j) * HKV + h) * D + d];
            }
            for d in 0..DV {
                x.v.data[((o1 + j) * HKV + h) * DV + d] = x.v.data[((o0 + j) * HKV + h) * DV + d];
            }
        }
        x.doc[o1 + j] = x.doc[o0 + j];
    }
    // keep sequence 1's ids non-decreasing (share_question) without touching its shared prefix
    if shared > 0 {
        let last = x.doc[o1 + shared * ps - 1];
        for id in &mut x.doc[o1 + shared * ps..o1 + sk[1]] {
            *id = (*id).max(last);
        }
    }
    let pages: Vec<usize> = sk.iter().map(|&l| l.div_ceil(ps)).collect();
    let spare = 3;
    let num_pages = pages.iter().sum::<usize>() - shared + spare;
    let mut ids: Vec<usize> = (0..num_pages).collect();
    ids.shuffle(r);
    let max_pages = pages.iter().copied().max().unwrap_or(0) + r.gen_range(0..=2);
    let mut table = vec![-1i32; sk.len() * max_pages];
    let mut next = ids.into_iter();
    for b in 0..sk.len() {
        for p in 0..pages[b] {
            table[b * max_pages + p] = if b == 1 && p < shared {
                table[p]
            } else {
                next.next().unwrap() as i32
            };
        }
    }
    let garbage = T::from_f64(7.0);
    let mut kc = PagedCache::from_fn(num_pages, ps, HKV, D, |_, _, _, _| garbage);
    let mut vc = PagedCache::from_fn(num_pages, ps, HKV, DV, |_, _, _, _| garbage);
    let mut doc = vec![99i32; num_pages * ps];
    for b in 0..sk.len() {
        for j in 0..sk[b] {
            let page = table[b * max_pages + j / ps] as usize;
            let slot = page * ps + j % ps;
            let t = x.cu_k[b] as usize + j;
            kc.data[slot * HKV * D..(slot + 1) * HKV * D]
                .copy_from_slice(&x.k.data[t * HKV * D..(t + 1) * HKV * D]);
            vc.data[slot * HKV * DV..(slot + 1) * HKV * DV]
                .copy_from_slice(&x.v.data[t * HKV * DV..(t + 1) * HKV * DV]);
            doc[slot] = x.doc[t];
        }
    }
    let seqlens = sk.iter().map(|&l| l as i32).collect();
    (
        x,
        Paged {
            k_cache: kc,
            v_cache: vc,
            table,
            max_pages,
            seqlens,
            doc,
        },
    )
}

impl<T: Element> Paged<T> {
    fn kv(&self) -> PagedKv<'_, T> {
        PagedKv {
            k_cache: &self.k_cache,
            v_cache: &self.v_cache,
            block_table: &self.table,
            max_pages: self.max_pages,
            seqlens_k: &self.seqlens,
        }
    }
}

fn paged_vs_varlen<T: Element>(seed: u64, ps: usize, max_k: usize, max_q: usize) {
    for mk in 0..N_MASKS {
        for sm in [0, 2, 4] {
            let mut r = rng(seed * 100 + (mk * 10 + sm) as u64);
            let gt = sq_gt_sk_defined(mk, sm);
            // lengths: partially filled last pages, a zero-key sequence, chunked prefill
            let mut sk: Vec<usize> = (0..4).map(|_| r.gen_range(1..=max_k)).collect();
            sk[0] = sk[0].max(2 * ps + 1).min(max_k.max(2 * ps + 1));
            sk[2] = 0;
            let sq: Vec<usize> = sk
                .iter()
                .map(|&k| r.gen_range(0..=(k.min(max_q) + if gt { 2 } else { 0 })))
                .collect();
            let (x, p) = paged_batch::<T>(&mut r, ps, sq, sk);
            for precision in [Precision::F64, Precision::Naive] {
                let opts = AttnOptions {
                    scale: None,
                    precision,
                };
                let varlen = varlen_attention(
                    &x.q,
                    &x.cu_q,
                    &VarlenKv {
                        k: &x.k,
                        v: &x.v,
                        cu_seqlens_k: &x.cu_k,
                    },
                    &mask(mk, &x.doc, None),
                    &score_mod(sm, None),
                    &opts,
                )
                .unwrap();
                let paged = paged_attention(
                    &x.q,
                    &x.cu_q,
                    &p.kv(),
                    &mask(mk, &p.doc, None),
                    &score_mod(sm, None),
                    &opts,
                )
                .unwrap_or_else(|e| panic!("ps {ps} mask {mk} sm {sm}: {e}"));
                assert!(
                    paged == varlen,
                    "{:?} ps {ps} mask {mk} sm {sm} {precision:?}: paged != varlen",
                    T::DTYPE
                );
                if mk == 0 && precision == Precision::F64 {
                    let VarlenKeys {
                        k,
                        v,
                        cu_seqlens_k: cu,
                    } = gather_paged_kv(&p.kv()).unwrap();
                    let bits =
                        |p: &Packed<T>| -> Vec<f64> { p.data.iter().map(|e| e.to_f64()).collect() };
                    assert_eq!(cu, x.cu_k);
                    assert_eq!((k.tokens, k.heads, k.dim), (x.k.tokens, HKV, D));
                    assert_eq!((v.tokens, v.heads, v.dim), (x.v.tokens, HKV, DV));
                    assert_eq!(bits(&k), bits(&x.k));
                    assert_eq!(bits(&v), bits(&x.v));
                }
            }
        }
    }
}

#[test]
fn paged_equals_varlen_on_the_same_keys() {
    paged_vs_varlen::<f32>(1, 1, 11, 6);
    paged_vs_varlen::<bf16>(2, 2, 12, 6);
    paged_vs_varlen::<f16>(3, 4, 19, 5);
    paged_vs_varlen::<f32>(4, 16, 40, 3);
}

#[test]
fn paged_page_size_1024_partial_pages() {
    // 2049 keys: two full pages shared with sequence 1 and one key on a third page
    let mut r = rng(1024);
    let sk = vec![2049, 2100, 0, 700];
    let sq = vec![3, 1, 0, 2];
    let (x, p) = paged_batch::<bf16>(&mut r, 1024, sq, sk);
    assert_eq!(p.table[p.max_pages], p.table[0], "sequence 1 shares page 0");
    assert_eq!(
        p.table[p.max_pages + 1],
        p.table[1],
        "sequence 1 shares page 1"
    );
    for (mk, sm) in [(1, 0), (4, 0), (12, 3)] {
        let m = |doc: &[i32]| mask(mk, doc, None);
        let opts = AttnOptions::naive();
        let varlen = varlen_attention(
            &x.q,
            &x.cu_q,
            &VarlenKv {
                k: &x.k,
                v: &x.v,
                cu_seqlens_k: &x.cu_k,
            },
            &m(&x.doc),
            &score_mod(sm, None),
            &opts,
        )
        .unwrap();
        let paged = paged_attention(
            &x.q,
            &x.cu_q,
            &p.kv(),
            &m(&p.doc),
            &score_mod(sm, None),
            &opts,
        )
        .unwrap();
        assert!(paged == varlen, "mask {mk}");
        for b in 0..4 {
            assert_rows_exact(
                &paged,
                x.cu_q[b] as usize,
                &dense_seq(&x, b, mk, sm, &opts),
                &format!("mask {mk} seq {b}"),
            );
        }
    }
}

/// Decoding with a dense q `[B, Hq, 1, D]`: one row per sequence at position `Sk_b - 1`.
#[test]
fn paged_decode_with_dense_q() {
    let mut r = rng(5);
    let sk = vec![9, 1, 17, 32];
    let (x, p) = paged_batch::<f32>(&mut r, 8, vec![1; 4], sk.clone());
    let q = Tensor4::from_fn(Shape4::new(4, HQ, 1, D), |b, h, _, d| {
        x.q.get(b, h, d) as f32
    });
    let (qp, cu) = pack_dense(&q).unwrap();
    assert_eq!(cu, vec![0, 1, 2, 3, 4]);
    assert_eq!(qp, x.q);
    for mk in [1, 2, 9, 11] {
        let got = paged_attention(
            &qp,
            &cu,
            &p.kv(),
            &mask(mk, &p.doc, None),
            &ScoreMod::None,
            &AttnOptions::reference(),
        )
        .unwrap()
        .to_batched(4, 1)
        .unwrap();
        for b in 0..4 {
            let want = dense_seq(&x, b, mk, 0, &AttnOptions::reference());
            for h in 0..HQ {
                assert_eq!(got.row(b, h, 0), want.row(0, h, 0), "mask {mk} seq {b}");
                assert_eq!(got.lse_at(b, h, 0), want.lse_at(0, h, 0));
            }
        }
    }
}

#[test]
fn split_kv_ranges_cut_as_documented() {
    let s = |n, a| SplitKv {
        num_splits: n,
        align: a,
    };
    assert_eq!(
        split_kv_ranges(10, s(3, 1)).unwrap(),
        vec![0..4, 4..8, 8..10]
    );
    assert_eq!(
        split_kv_ranges(10, s(3, 8)).unwrap(),
        vec![0..8, 8..10, 10..10]
    );
    assert_eq!(
        split_kv_ranges(3, s(5, 1)).unwrap(),
        vec![0..1, 1..2, 2..3, 3..3, 3..3]
    );
    assert_eq!(split_kv_ranges(0, s(2, 4)).unwrap(), vec![0..0, 0..0]);
    assert_eq!(split_kv_ranges(7, s(1, 16)).unwrap(), vec![0..7]);
    let e = split_kv_ranges(7, s(0, 1)).unwrap_err();
    assert_eq!(e.path(), Some("SplitKv::num_splits"));
    let e = split_kv_ranges(7, s(2, 0)).unwrap_err();
    assert_eq!(e.path(), Some("SplitKv::align"));
}

fn max_abs_diff(a: &VarlenOutput, b: &VarlenOutput) -> f64 {
    assert_eq!(a.lse.len(), b.lse.len());
    let mut m: f64 = 0.0;
    for (x, y) in a.lse.iter().zip(&b.lse) {
        if *x == f64::NEG_INFINITY || *y == f64::NEG_INFINITY {
            assert_eq!(x, y, "empty rows must match exactly");
        } else {
            m = m.max((x - y).abs());
        }
    }
    for (x, y) in a.out.iter().zip(&b.out) {
        assert!(!x.is_nan());
        m = m.max((x - y).abs());
    }
    m
}

#[test]
fn split_kv_decode_equals_unsplit() {
    split_vs_unsplit::<f32>(6);
    split_vs_unsplit::<f16>(7);
    split_vs_unsplit::<bf16>(8);
}

fn split_vs_unsplit<T: Element>(seed: u64) {
    let mut r = rng(seed);
    let sk = vec![37, 5, 0, 64, 130];
    let sq = vec![1, 2, 0, 4, 16];
    let (x, p) = paged_batch::<T>(&mut r, 16, sq, sk);
    let splits = [(1, 1), (2, 1), (3, 16), (7, 1), (40, 1), (4, 32)];
    for mk in 0..N_MASKS {
        for sm in 0..N_SCORE_MODS {
            let m = mask(mk, &p.doc, None);
            let s = score_mod(sm, None);
            let kv = KvLayout::Paged(p.kv());
            let unsplit =
                serving_attention(&x.q, &x.cu_q, &kv, &m, &s, &AttnOptions::reference()).unwrap();
            for &(n, a) in &splits {
                let split = SplitKv {
                    num_splits: n,
                    align: a,
                };
                let got = split_kv_attention(
                    &x.q,
                    &x.cu_q,
                    &kv,
                    split,
                    &m,
                    &s,
                    &AttnOptions::reference(),
                )
                .unwrap();
                let diff = max_abs_diff(&got, &unsplit);
                assert!(diff <= 1e-12, "mask {mk} sm {sm} splits {n}/{a}: {diff}");
            }
            // the naive split path stays within the tolerance rule of the unsplit reference
            let naive_unsplit =
                serving_attention(&x.q, &x.cu_q, &kv, &m, &s, &AttnOptions::naive()).unwrap();
            let split = SplitKv {
                num_splits: 3,
                align: 16,
            };
            let naive_split =
                split_kv_attention(&x.q, &x.cu_q, &kv, split, &m, &s, &AttnOptions::naive())
                    .unwrap();
            let tol = Tolerance::for_dtype(T::DTYPE);
            assert_close(
                &naive_split.to_attn_output(),
                &unsplit.to_attn_output(),
                &naive_unsplit.to_attn_output(),
                tol.rtol,
                tol.atol,
            )
            .unwrap_or_else(|e| panic!("{:?} mask {mk} sm {sm}: {e}", T::DTYPE));
        }
    }
}

/// Each partial is the attention over its key range alone (checked for `full` against
/// `attention_over_keys`, an independent key-set path), and their merge is the split result.
#[test]
fn split_kv_partials_are_key_range_attention() {
    let mut r = rng(8);
    let x = batch::<f32>(&mut r, vec![2, 1, 3], vec![10, 33, 3]);
    let kv = KvLayout::Varlen(VarlenKv {
        k: &x.k,
        v: &x.v,
        cu_seqlens_k: &x.cu_k,
    });
    let split = SplitKv {
        num_splits: 4,
        align: 4,
    };
    let opts = AttnOptions::reference();
    let parts = split_kv_partials(
        &x.q,
        &x.cu_q,
        &kv,
        split,
        &Mask::Full,
        &ScoreMod::None,
        &opts,
    )
    .unwrap();
    assert_eq!(parts.len(), 4);
    for b in 0..3 {
        let qr = x.cu_q[b] as usize..x.cu_q[b + 1] as usize;
        let kr = x.cu_k[b] as usize..x.cu_k[b + 1] as usize;
        let q = to_t::<f32>(&rows_of(&x.q, qr.clone(), HQ));
        let k = to_t::<f32>(&rows_of(&x.k, kr.clone(), HKV));
        let v = to_t::<f32>(&rows_of(&x.v, kr.clone(), HKV));
        let chunk = kr.len().div_ceil(4).div_ceil(4) * 4;
        for s in 0..4 {
            let lo = (s * chunk).min(kr.len());
            let hi = ((s + 1) * chunk).min(kr.len());
            let keys = vec![(lo..hi).collect::<Vec<_>>(); HQ * qr.len()];
            let want = attention_over_keys(&q, &k, &v, &keys, &opts).unwrap();
            assert_rows_exact(&parts[s], qr.start, &want, &format!("seq {b} split {s}"));
        }
    }
    let merged = merge_partials(&parts).unwrap();
    let direct = split_kv_attention(
        &x.q,
        &x.cu_q,
        &kv,
        split,
        &Mask::Full,
        &ScoreMod::None,
        &opts,
    )
    .unwrap();
    assert!(merged == direct);
}

#[test]
fn split_kv_rejects_more_queries_than_keys() {
    let mut r = rng(9);
    let x = batch::<f32>(&mut r, vec![1, 4], vec![3, 2]);
    let kv = KvLayout::Varlen(VarlenKv {
        k: &x.k,
        v: &x.v,
        cu_seqlens_k: &x.cu_k,
    });
    let split = SplitKv {
        num_splits: 2,
        align: 1,
    };
    let opts = AttnOptions::reference();
    // defined unsplit (causal, rows with p(i) < 0 empty) ...
    let unsplit =
        serving_attention(&x.q, &x.cu_q, &kv, &Mask::Causal, &ScoreMod::None, &opts).unwrap();
    assert_eq!(
        unsplit.lse_at(1, 0),
        f64::NEG_INFINITY,
        "row at p = -2 is empty"
    );
    assert!(unsplit.lse_at(4, 0).is_finite());
    // ... but split-KV decoding needs Sq_b <= Sk_b
    let e = split_kv_attention(
        &x.q,
        &x.cu_q,
        &kv,
        split,
        &Mask::Causal,
        &ScoreMod::None,
        &opts,
    )
    .unwrap_err();
    assert_eq!(e.path(), Some("cu_seqlens_q[2]"));
    assert!(e.to_string().contains("sequence 1"), "{e}");
}

/// `Sq_b > Sk_b`: defined for full/causal without a score mod (also with `Sk_b = 0`), an error
/// naming the sequence otherwise.
#[test]
fn sq_greater_than_sk_defined_only_where_section_0_says() {
    let mut r = rng(10);
    let x = batch::<f32>(&mut r, vec![1, 3, 2], vec![2, 0, 4]);
    let kv = VarlenKv {
        k: &x.k,
        v: &x.v,
        cu_seqlens_k: &x.cu_k,
    };
    let opts = AttnOptions::reference();
    for m in [Mask::Full, Mask::Causal] {
        let got = varlen_attention(&x.q, &x.cu_q, &kv, &m, &ScoreMod::None, &opts).unwrap();
        for t in 1..4 {
            for h in 0..HQ {
                assert_eq!(got.lse_at(t, h), f64::NEG_INFINITY, "no keys: empty row");
                assert_eq!(got.row(t, h), &[0.0; DV]);
            }
        }
    }
    let e = varlen_attention(
        &x.q,
        &x.cu_q,
        &kv,
        &Mask::Local { left: 1, right: 0 },
        &ScoreMod::None,
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ServingError::Sequence {
                seq: 1,
                source: RefError::QueryLongerThanKeys { .. }
            }
        ),
        "{e:?}"
    );
    let e = varlen_attention(
        &x.q,
        &x.cu_q,
        &kv,
        &Mask::Causal,
        &ScoreMod::Softcap(5.0),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(e, ServingError::Sequence { seq: 1, .. }), "{e:?}");
    assert!(e.to_string().starts_with("sequence 1: "), "{e}");
}

fn small<T: Element>() -> (Batch<T>, Paged<T>) {
    let mut r = rng(11);
    paged_batch::<T>(&mut r, 4, vec![2, 1, 0], vec![6, 9, 0])
}

fn run_paged(
    x: &Batch<f32>,
    cu_q: &[i32],
    kv: &PagedKv<'_, f32>,
    mask: &Mask,
) -> Result<VarlenOutput, ServingError> {
    paged_attention(
        &x.q,
        cu_q,
        kv,
        mask,
        &ScoreMod::None,
        &AttnOptions::reference(),
    )
}

#[track_caller]
fn expect_path(r: Result<VarlenOutput, ServingError>, path: &str, words: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.path(), Some(path), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(path) && msg.contains(words) && msg.contains("fix"),
        "{msg}"
    );
}

#[test]
fn layout_errors_name_the_array_and_index() {
    let (x, p) = small::<f32>();
    let full = Mask::Full;
    let ok = run_paged(&x, &x.cu_q, &p.kv(), &full);
    assert!(ok.is_ok(), "{ok:?}");
    // cu_seqlens_q
    expect_path(run_paged(&x, &[], &p.kv(), &full), "cu_seqlens_q", "empty");
    expect_path(
        run_paged(&x, &[1, 2, 3, 3], &p.kv(), &full),
        "cu_seqlens_q[0]",
        "first offset",
    );
    expect_path(
        run_paged(&x, &[0, 2, 1, 3], &p.kv(), &full),
        "cu_seqlens_q[2]",
        "non-decreasing",
    );
    expect_path(
        run_paged(&x, &[0, 2, 3, 2], &p.kv(), &full),
        "cu_seqlens_q[3]",
        "non-decreasing",
    );
    expect_path(
        run_paged(&x, &[0, 1, 2, 2], &p.kv(), &full),
        "cu_seqlens_q[3]",
        "packed length",
    );
    expect_path(
        run_paged(&x, &[0, 3], &p.kv(), &full),
        "seqlens_k",
        "one key length per sequence",
    );
    // block table: out of range where read, short rows, wrong length
    let mut bad = p.table.clone();
    bad[p.max_pages + 2] = p.k_cache.num_pages as i32; // sequence 1, page 2 (keys 8..9)
    let kv = PagedKv {
        block_table: &bad,
        ..p.kv()
    };
    expect_path(
        run_paged(&x, &x.cu_q, &kv, &full),
        "block_table[1][2]",
        "[0, num_pages)",
    );
    bad[p.max_pages + 2] = -1;
    let kv = PagedKv {
        block_table: &bad,
        ..p.kv()
    };
    expect_path(
        run_paged(&x, &x.cu_q, &kv, &full),
        "block_table[1][2]",
        "is page -1",
    );
    // entries past ceil(Sk_b / page_size) are never read: -1 or garbage is fine
    let mut unread = p.table.clone();
    for b in 0..3 {
        for i in (p.seqlens[b] as usize).div_ceil(4)..p.max_pages {
            unread[b * p.max_pages + i] = if b == 0 { -1 } else { i32::MAX };
        }
    }
    let kv = PagedKv {
        block_table: &unread,
        ..p.kv()
    };
    assert_eq!(run_paged(&x, &x.cu_q, &kv, &full), ok);
    let short = [9, 10];
    let kv = PagedKv {
        block_table: &short,
        ..p.kv()
    };
    expect_path(
        run_paged(&x, &x.cu_q, &kv, &full),
        "block_table",
        "[B, max_pages]",
    );
    // seqlens_k: negative, more keys than the row holds
    let too_long = [6, (4 * p.max_pages + 1) as i32, 0];
    let kv = PagedKv {
        seqlens_k: &too_long,
        ..p.kv()
    };
    expect_path(
        run_paged(&x, &x.cu_q, &kv, &full),
        "seqlens_k[1]",
        "widen block_table",
    );
    let negative = [6, 9, -1];
    let kv = PagedKv {
        seqlens_k: &negative,
        ..p.kv()
    };
    expect_path(run_paged(&x, &x.cu_q, &kv, &full), "seqlens_k[2]", ">= 0");
    // page sizes: 3 (not a power of two), 2048 (too large)
    for ps in [3usize, 2048] {
        let c = PagedCache::from_fn(1, ps, HKV, D, |_, _, _, _| 0.0f32);
        let cv = PagedCache::from_fn(1, ps, HKV, DV, |_, _, _, _| 0.0f32);
        let kv = PagedKv {
            k_cache: &c,
            v_cache: &cv,
            block_table: &[0, 0, 0],
            max_pages: 1,
            seqlens_k: &[1, 1, 0],
        };
        expect_path(
            run_paged(&x, &x.cu_q, &kv, &full),
            "k_cache.page_size",
            "power of two",
        );
    }
    // caches of different pages; buffers of the wrong length
    let cv = PagedCache::from_fn(p.k_cache.num_pages + 1, 4, HKV, DV, |_, _, _, _| 0.0f32);
    let kv = PagedKv {
        v_cache: &cv,
        ..p.kv()
    };
    expect_path(
        run_paged(&x, &x.cu_q, &kv, &full),
        "v_cache.num_pages",
        "same pages",
    );
    let mut ck = p.k_cache.clone();
    ck.data.pop();
    let kv = PagedKv {
        k_cache: &ck,
        ..p.kv()
    };
    expect_path(run_paged(&x, &x.cu_q, &kv, &full), "k_cache.data", "needs");
    // doc ids must be paged like the keys
    let m = Mask::Document { doc: x.doc.clone() };
    expect_path(
        run_paged(&x, &x.cu_q, &p.kv(), &m),
        "Mask::Document::doc",
        "paged like the keys",
    );
}

#[test]
fn varlen_errors_name_the_array_and_index() {
    let mut r = rng(12);
    let x = batch::<f32>(&mut r, vec![1, 2], vec![3, 4]);
    let opts = AttnOptions::reference();
    let run = |cu_q: &[i32], cu_k: &[i32], k: &Packed<f32>, v: &Packed<f32>, m: &Mask| {
        varlen_attention(
            &x.q,
            cu_q,
            &VarlenKv {
                k,
                v,
                cu_seqlens_k: cu_k,
            },
            m,
            &ScoreMod::None,
            &opts,
        )
    };
    let full = Mask::Full;
    assert!(run(&x.cu_q, &x.cu_k, &x.k, &x.v, &full).is_ok());
    expect_path(
        run(&x.cu_q, &[0, 3, 6], &x.k, &x.v, &full),
        "cu_seqlens_k[2]",
        "packed length",
    );
    expect_path(
        run(&x.cu_q, &[0, 4, 3], &x.k, &x.v, &full),
        "cu_seqlens_k[2]",
        "non-decreasing",
    );
    expect_path(
        run(&x.cu_q, &[0, 7], &x.k, &x.v, &full),
        "cu_seqlens_k",
        "B + 1",
    );
    expect_path(
        run(&x.cu_q, &[-1, 3, 7], &x.k, &x.v, &full),
        "cu_seqlens_k[0]",
        "first offset",
    );
    let v1 = Packed::from_fn(6, HKV, DV, |_, _, _| 0.0f32);
    expect_path(
        run(&x.cu_q, &x.cu_k, &x.k, &v1, &full),
        "v.tokens",
        "rows and heads",
    );
    let k3 = Packed::from_fn(7, 3, D, |_, _, _| 0.0f32);
    let v3 = Packed::from_fn(7, 3, DV, |_, _, _| 0.0f32);
    expect_path(run(&x.cu_q, &x.cu_k, &k3, &v3, &full), "k.heads", "divide");
    let kd = Packed::from_fn(7, HKV, D + 1, |_, _, _| 0.0f32);
    expect_path(
        run(&x.cu_q, &x.cu_k, &kd, &x.v, &full),
        "k.dim",
        "head dimension",
    );
    let m = Mask::Document { doc: vec![0; 6] };
    expect_path(
        run(&x.cu_q, &x.cu_k, &x.k, &x.v, &m),
        "Mask::Document::doc",
        "[Tk]",
    );
    let e = Packed::<f32>::from_vec(2, 2, 2, vec![0.0; 7]).unwrap_err();
    assert_eq!(e.path(), Some("Packed::data"));
    // share_question: the question must be a prefix of each sequence's ids
    let m = Mask::ShareQuestion {
        doc: vec![0, 1, 1, 0, 0, 1, 0],
    };
    let e = run(&x.cu_q, &x.cu_k, &x.k, &x.v, &m).unwrap_err();
    assert!(
        matches!(
            e,
            ServingError::Sequence {
                seq: 1,
                source: RefError::QuestionNotPrefix { pos: 3, .. }
            }
        ),
        "{e:?}"
    );
}

/// Random garbage offsets, tables and lengths: an error or a result, never a panic.
#[test]
fn bad_layouts_never_panic() {
    let (x, p) = small::<f32>();
    let mut r = rng(13);
    let (mut n_ok, mut n_err) = (0, 0);
    for _ in 0..3000 {
        let mut cu_q = x.cu_q.clone();
        let mut table = p.table.clone();
        let mut seqlens = p.seqlens.clone();
        let pick = |r: &mut ChaCha8Rng| {
            [-2, -1, 0, 1, 2, 3, 5, 9, 12, 40, i32::MAX, i32::MIN][r.gen_range(0..12)]
        };
        match r.gen_range(0..4) {
            0 => {
                let i = r.gen_range(0..cu_q.len());
                cu_q[i] = pick(&mut r);
            }
            1 => {
                let i = r.gen_range(0..table.len());
                table[i] = pick(&mut r);
            }
            2 => {
                let i = r.gen_range(0..seqlens.len());
                seqlens[i] = pick(&mut r);
            }
            _ => cu_q.truncate(r.gen_range(0..cu_q.len())),
        }
        let kv = PagedKv {
            block_table: &table,
            seqlens_k: &seqlens,
            ..p.kv()
        };
        let m = Mask::CausalDocument { doc: p.doc.clone() };
        let split = SplitKv {
            num_splits: 3,
            align: 2,
        };
        match split_kv_attention(
            &x.q,
            &cu_q,
            &KvLayout::Paged(kv),
            split,
            &m,
            &ScoreMod::None,
            &AttnOptions::reference(),
        ) {
            Ok(_) => n_ok += 1,
            Err(_) => n_err += 1,
        }
    }
    assert!(n_ok > 100 && n_err > 100, "{n_ok} ok, {n_err} errors");
}
