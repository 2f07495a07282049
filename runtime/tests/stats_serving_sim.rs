//! Attention statistics outputs of the varlen and paged prefill kernels on the simulator
//! (variants.md sections 13 and 14, docs/statistics.md): against the serving reference on
//! one-hot values by the oracle of section 0, page sizes 1 and 16 and a final page that is
//! not full, shuffled page tables, GQA, empty sequences and empty rows (causal Sq_b > Sk_b),
//! every dtype; asking for statistics leaves `out` and `lse` bit-identical.

use attnforge_reference::{Element, Packed, PagedCache};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::{Layout, StatReduce, StatsSpec};
use attnforge_runtime::exec::RunParams;
use attnforge_runtime::exec_serving::{
    self, check_stats, simulate_stats, stats_row_keys, ServingInputs, ServingKeys,
};
use attnforge_runtime::exec_stats::StatsReport;
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};
use half::{bf16, f16};

const HQ: usize = 4;
const HKV: usize = 2;

/// Deterministic values in [-amp, amp) (xorshift64).
fn gen(seed: u64, amp: f64) -> impl FnMut() -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        amp * (2.0 * ((x >> 11) as f64 / (1u64 << 53) as f64) - 1.0)
    }
}

fn packed<T: Element>(tokens: usize, heads: usize, d: usize, seed: u64, amp: f64) -> Packed<T> {
    let mut g = gen(seed, amp);
    Packed::from_fn(tokens, heads, d, |_, _, _| T::from_f64(g()))
}

fn offsets(lens: &[usize]) -> Vec<i32> {
    let mut o = vec![0i32];
    for &l in lens {
        o.push(o.last().unwrap() + l as i32);
    }
    o
}

/// Sequences `(Sq_b, Sk_b)` as packed varlen inputs.
fn varlen<T: Element>(seqs: &[(usize, usize)], d: usize, amp: f64) -> ServingInputs<T> {
    varlen_heads(seqs, d, amp, (HQ, HKV))
}

fn varlen_heads<T: Element>(
    seqs: &[(usize, usize)],
    d: usize,
    amp: f64,
    (hq, hkv): (usize, usize),
) -> ServingInputs<T> {
    let (sq, sk): (Vec<usize>, Vec<usize>) = seqs.iter().copied().unzip();
    let (tq, tk) = (sq.iter().sum(), sk.iter().sum());
    ServingInputs {
        q: packed(tq, hq, d, 1, amp),
        cu_seqlens_q: offsets(&sq),
        keys: ServingKeys::Varlen {
            k: packed(tk, hkv, d, 2, amp),
            v: packed(tk, hkv, d, 3, 1.0),
            cu_seqlens_k: offsets(&sk),
        },
    }
}

/// Sequences `(Sq_b, Sk_b)` in a paged cache of `page_size`: every sequence gets its pages
/// from a reversed pool (the table is not the identity), one spare page at the end.
fn paged<T: Element>(seqs: &[(usize, usize)], d: usize, page_size: usize) -> ServingInputs<T> {
    paged_amp(seqs, d, page_size, 1.0)
}

fn paged_amp<T: Element>(
    seqs: &[(usize, usize)],
    d: usize,
    page_size: usize,
    amp: f64,
) -> ServingInputs<T> {
    let pages: Vec<usize> = seqs.iter().map(|s| s.1.div_ceil(page_size)).collect();
    let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
    let num_pages = pages.iter().sum::<usize>() + 1;
    let mut next = num_pages;
    let mut table = vec![0i32; seqs.len() * max_pages];
    for (b, &n) in pages.iter().enumerate() {
        for p in 0..n {
            next -= 1;
            table[b * max_pages + p] = next as i32;
        }
    }
    let cache = |seed, amp| {
        let mut g = gen(seed, amp);
        PagedCache::from_fn(num_pages, page_size, HKV, d, |_, _, _, _| T::from_f64(g()))
    };
    let sq: Vec<usize> = seqs.iter().map(|s| s.0).collect();
    ServingInputs {
        q: packed(sq.iter().sum(), HQ, d, 1, amp),
        cu_seqlens_q: offsets(&sq),
        keys: ServingKeys::Paged {
            k_cache: cache(2, amp),
            v_cache: cache(3, 1.0),
            block_table: table,
            max_pages,
            seqlens_k: seqs.iter().map(|s| s.1 as i32).collect(),
        },
    }
}

fn spec(dtype: DType, d: HeadDim, mask: Mask, layout: Layout) -> KernelSpec {
    KernelSpec::new(dtype, d, mask, ScoreMod::None)
        .with_gqa()
        .with_layout(layout)
        .with_stats(StatsSpec {
            reduce: StatReduce::Max,
            pool: Some(3),
            top_k: Some(7),
        })
}

fn check<T: Element + SimElem>(
    s: &KernelSpec,
    x: &ServingInputs<T>,
    p: &RunParams,
    seqs: &[(usize, usize)],
) -> StatsReport {
    let tile = default_tile(s, Arch::Sm80).expect("a default tile");
    check_tile(s, &tile, x, p, seqs)
}

fn check_tile<T: Element + SimElem>(
    s: &KernelSpec,
    tile: &TileConfig,
    x: &ServingInputs<T>,
    p: &RunParams,
    seqs: &[(usize, usize)],
) -> StatsReport {
    let hq = x.q.heads;
    let r = check_stats(s, tile, x, p)
        .unwrap_or_else(|e| panic!("{} {seqs:?} {p:?}: {e}", s.canonical_name()));
    // each head's key_mass sums to the sequence's non-empty rows (causal: min(Sq_b, Sk_b));
    // keys past Sk_b carry nothing
    let row = stats_row_keys(x);
    for (b, &(sq, sk)) in seqs.iter().enumerate() {
        for h in 0..hq {
            let m = &r.run.key_mass[(b * hq + h) * row..(b * hq + h + 1) * row];
            let total: f32 = m.iter().sum();
            let rows = sq.min(sk) as f32;
            assert!(
                (total - rows).abs() <= 1e-3 * rows.max(1.0),
                "{seqs:?} b {b} h {h}: {total}"
            );
            assert!(
                m[sk..].iter().all(|&v| v == 0.0),
                "{seqs:?} b {b}: mass past Sk_b"
            );
        }
    }
    r
}

/// Varlen, causal, every dtype: an empty sequence, Sq_b > Sk_b (empty rows), lengths off the
/// tile grid, several query blocks.
#[test]
fn varlen_causal_every_dtype() {
    let seqs = [(37, 45), (0, 9), (90, 41), (70, 133), (1, 1)];
    let s = |dt| spec(dt, HeadDim::D64, Mask::Causal, Layout::Varlen);
    let p = RunParams::default();
    check(&s(DType::F32), &varlen::<f32>(&seqs, 64, 1.0), &p, &seqs);
    check(&s(DType::F16), &varlen::<f16>(&seqs, 64, 4.0), &p, &seqs);
    check(&s(DType::Bf16), &varlen::<bf16>(&seqs, 64, 1.0), &p, &seqs);
}

/// Paged, causal: page sizes 1 and 16, final pages not full, a shuffled table, every dtype.
#[test]
fn paged_causal_page_sizes() {
    let seqs = [(20, 37), (0, 5), (33, 16), (50, 21)];
    let s = |dt| spec(dt, HeadDim::D64, Mask::Causal, Layout::Paged);
    let p = RunParams::default();
    check(&s(DType::Bf16), &paged::<bf16>(&seqs, 64, 16), &p, &seqs);
    check(&s(DType::F16), &paged::<f16>(&seqs, 64, 1), &p, &seqs);
    check(&s(DType::F32), &paged::<f32>(&seqs, 64, 16), &p, &seqs);
}

/// LM-Infinite on packed sequences (both rotated branches; Sq_b <= Sk_b) and a local window
/// on a paged cache.
#[test]
fn lm_infinite_varlen_and_local_paged() {
    let seqs = [(30, 70), (45, 45), (9, 130)];
    let s = spec(DType::Bf16, HeadDim::D128, Mask::LmInfinite, Layout::Varlen);
    let p = RunParams::default().with_mask(
        MaskParams::new()
            .with("global_tokens", 3)
            .with("local_window", 17)
            .with("dist_limit", 40)
            .with("rope_theta", 500.0),
    );
    check(&s, &varlen::<bf16>(&seqs, 128, 1.0), &p, &seqs);
    let s = spec(DType::F16, HeadDim::D64, Mask::Local, Layout::Paged);
    let p = RunParams::default().with_mask(
        MaskParams::new()
            .with("window_left", 20)
            .with("window_right", 0),
    );
    check(&s, &paged::<f16>(&seqs, 64, 16), &p, &seqs);
}

/// Asking for statistics leaves `out` and `lse` bit-identical (varlen and paged).
#[test]
fn out_and_lse_are_unchanged() {
    let seqs = [(37, 45), (0, 9), (90, 41)];
    for (layout, x) in [
        (Layout::Varlen, varlen::<bf16>(&seqs, 64, 1.0)),
        (Layout::Paged, paged::<bf16>(&seqs, 64, 16)),
    ] {
        let with = spec(DType::Bf16, HeadDim::D64, Mask::Causal, layout);
        let mut plain = with.clone();
        plain.stats = None;
        let tile = default_tile(&plain, Arch::Sm80).expect("tile");
        assert_eq!(tile, default_tile(&with, Arch::Sm80).expect("tile"));
        let cfg = SimConfig::new(Schedule::Forward);
        let p = RunParams::default();
        let a = exec_serving::simulate(&plain, &tile, &x, &p, &cfg).expect("plain");
        let b = simulate_stats(&with, &tile, &x, &p, &cfg).expect("stats");
        let a = a.output.to_attn_output();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.out), bits(&b.output.out), "{layout:?} out");
        assert_eq!(bits(&a.lse), bits(&b.output.lse), "{layout:?} lse");
    }
}

/// Decode on a paged cache, every dtype: 1 and 5 tokens (rows of two heads share a block),
/// splits 1, 2 and 3 (the sweep reads the merged lse), page sizes 16 and 1, key lengths off
/// the tile and page grid, a sequence without tokens; without splits also Sq_b > Sk_b and a
/// sequence without keys (empty rows); f16 at large magnitudes (inputs x8).
#[test]
fn decode_paged_every_dtype_and_split() {
    let s = |dt| spec(dt, HeadDim::D64, Mask::Causal, Layout::Decode);
    let seqs = [(1, 37), (5, 130), (0, 20), (3, 3)];
    let p = |n| RunParams::default().with_num_splits(n);
    check(&s(DType::Bf16), &paged::<bf16>(&seqs, 64, 16), &p(3), &seqs);
    check(
        &s(DType::F16),
        &paged_amp::<f16>(&seqs, 64, 1, 8.0),
        &p(2),
        &seqs,
    );
    let seqs = [(1, 37), (5, 130), (4, 2), (2, 0), (0, 20)];
    check(&s(DType::F32), &paged::<f32>(&seqs, 64, 16), &p(1), &seqs);
}

/// Decode over packed keys (`decode_varlen`) with a local window and softcap: the element
/// mask and the score modification run per packed row, at the row's own head and position;
/// a GQA group of 4 with a 16-row tile, so one head's rows lie in two row blocks (5 tokens:
/// head 3 is packed rows 15..19).
#[test]
fn decode_varlen_masks_and_split_heads() {
    let seqs = [(5, 70), (1, 1), (16, 45), (0, 3)];
    let s = KernelSpec::new(DType::Bf16, HeadDim::D64, Mask::Local, ScoreMod::Softcap)
        .with_gqa()
        .with_layout(Layout::DecodeVarlen)
        .with_stats(StatsSpec {
            reduce: StatReduce::Sum,
            pool: Some(5),
            top_k: Some(9),
        });
    let p = RunParams::default()
        .with_mask(
            MaskParams::new()
                .with("window_left", 20)
                .with("window_right", 0),
        )
        .with_softcap(5.0)
        .with_num_splits(3);
    let x = varlen_heads::<bf16>(&seqs, 64, 2.0, (8, 2));
    let tile = TileConfig::new(16, 64, 1, 2);
    check_tile(&s, &tile, &x, &p, &seqs);
    let causal = spec(
        DType::Bf16,
        HeadDim::D64,
        Mask::Causal,
        Layout::DecodeVarlen,
    );
    let p = RunParams::default().with_num_splits(2);
    check_tile(&causal, &tile, &x, &p, &seqs);
}

/// Asking for statistics leaves a decode run's `out` and `lse` bit-identical (merged from 3
/// splits on a paged cache, and unsplit over packed keys).
#[test]
fn decode_out_and_lse_are_unchanged() {
    let seqs = [(1, 37), (5, 130), (0, 9)];
    for (layout, x, splits) in [
        (Layout::Decode, paged::<bf16>(&seqs, 64, 16), 3),
        (Layout::DecodeVarlen, varlen::<bf16>(&seqs, 64, 1.0), 1),
    ] {
        let with = spec(DType::Bf16, HeadDim::D64, Mask::Causal, layout);
        let mut plain = with.clone();
        plain.stats = None;
        let tile = default_tile(&plain, Arch::Sm80).expect("tile");
        assert_eq!(tile, default_tile(&with, Arch::Sm80).expect("tile"));
        let cfg = SimConfig::new(Schedule::Forward);
        let p = RunParams::default().with_num_splits(splits);
        let a = exec_serving::simulate(&plain, &tile, &x, &p, &cfg).expect("plain");
        let b = simulate_stats(&with, &tile, &x, &p, &cfg).expect("stats");
        let a = a.output.to_attn_output();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.out), bits(&b.output.out), "{layout:?} out");
        assert_eq!(bits(&a.lse), bits(&b.output.lse), "{layout:?} lse");
    }
}

/// A batch without query rows: statistics all 0 and `top_keys` all -1 (no launch of the
/// forward); a page shared by two sequences at different key positions has no one-hot value
/// in the reference: an input error naming the block-table entry, never a panic.
#[test]
fn empty_batches_and_shared_pages() {
    let seqs = [(0, 9), (0, 30)];
    let s = spec(DType::F32, HeadDim::D64, Mask::Causal, Layout::Varlen);
    let r = check(
        &s,
        &varlen::<f32>(&seqs, 64, 1.0),
        &RunParams::default(),
        &seqs,
    );
    assert!(r.run.key_mass.iter().all(|&v| v == 0.0));
    assert!(r.run.top_keys.iter().all(|&t| t == -1));
    // sequence 1's second page is sequence 0's first: slot positions 0.. and 16..
    let mut x = paged::<f32>(&[(3, 16), (3, 20)], 64, 16);
    if let ServingKeys::Paged {
        block_table,
        max_pages,
        ..
    } = &mut x.keys
    {
        block_table[*max_pages + 1] = block_table[0];
    }
    let s = spec(DType::F32, HeadDim::D64, Mask::Causal, Layout::Paged);
    let tile = default_tile(&s, Arch::Sm80).expect("tile");
    let e = check_stats(&s, &tile, &x, &RunParams::default()).expect_err("shared page refused");
    assert!(e.to_string().contains("block_table[1][1]"), "{e}");
}
