//! `kernel!` with `layout:` (variants.md section 13): the item's spec carries the layout, its
//! CUDA is the serving kernel, and `simulate` / `reference` / `check` take serving inputs
//! (packed queries, keys packed or in a paged cache). The compile errors are UI tests
//! (macros/tests/ui/kernel/layout_*.rs).

use attnforge::codegen::spec::Layout;
use attnforge::exec_serving::{ServingInputs, ServingKeys};
use attnforge::prelude::*;
use attnforge::reference::Packed;
use half::bf16;

attnforge::kernel! {
    /// Causal GQA on a paged cache, with a softcap.
    pub PagedCausal {
        causal: true, score: softcap(30.0), dtype: bf16, head_dim: 64, gqa: true, layout: paged,
    }
    /// Sliding window over packed sequences (string spelling of the layout).
    pub VarlenWindow {
        mask: local(5, 0), dtype: f32, head_dim: 64, layout: "varlen",
        tune: { block_m: [32], block_n: [32], warps: [4] },
    }
    /// Decoding on a paged cache: split-KV with the log-sum-exp merge.
    pub Decode { causal: true, dtype: f16, head_dim: 128, gqa: true, layout: decode }
}

fn unit(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    ((*seed >> 40) as f64 / (1u64 << 24) as f64) * 4.0 - 2.0
}

fn cu(lens: &[usize]) -> Vec<i32> {
    let mut c = vec![0i32];
    for &l in lens {
        c.push(c.last().unwrap() + l as i32);
    }
    c
}

/// Paged inputs: three sequences (one without queries), pages in reverse order with page 0
/// shared by every sequence as a common prefix.
fn paged<T: attnforge::reference::Element>(
    sq: &[usize],
    sk: &[usize],
    (hq, hkv, d, page): (usize, usize, usize, usize),
) -> ServingInputs<T> {
    let mut s = 0xC0FFEE_u64;
    let q = Packed::from_fn(sq.iter().sum(), hq, d, |_, _, _| T::from_f64(unit(&mut s)));
    let mut s = 0x5EED_u64;
    ServingInputs::shared_prefix_paged(q, cu(sq), sk, (page, hkv), || T::from_f64(unit(&mut s)))
}

#[test]
fn the_layout_is_part_of_the_spec_and_the_kernel() {
    assert_eq!(PagedCausal::spec().layout, Layout::Paged);
    assert_eq!(VarlenWindow::spec().layout, Layout::Varlen);
    assert_eq!(Decode::spec().layout, Layout::Decode);
    let names = [PagedCausal::name(), VarlenWindow::name(), Decode::name()];
    for (n, tag) in names.iter().zip(["paged", "varlen", "decode"]) {
        assert!(n.contains(tag), "{n} does not name its layout `{tag}`");
    }
    let k = PagedCausal::cuda(&PagedCausal::default_tile()).unwrap();
    assert!(
        k.source.contains("block_table"),
        "the paged kernel reads no block table"
    );
}

#[test]
fn paged_item_checks_against_the_reference() {
    // Sq_b != Sk_b, a sequence without queries, lengths off the tile grid, page size 16.
    let x = paged::<bf16>(&[37, 0, 5], &[70, 16, 41], (4, 2, 64, 16));
    let p = PagedCausal::params();
    let tile = PagedCausal::default_tile();
    let cfg = SimConfig::new(Schedule::Reverse);
    PagedCausal::check(&tile, &x, &p, &cfg).unwrap();
    let want = PagedCausal::reference(&x, &p).unwrap();
    assert_eq!((want.tokens, want.heads, want.dim), (42, 4, 64));
    let run = PagedCausal::simulate(&tile, &x, &p).unwrap();
    assert_eq!(run.output.out.len(), want.out.len());
    assert!(run.blocks > 0);
}

#[test]
fn varlen_item_checks_against_the_reference() {
    let mut s = 7u64;
    let (sq, sk) = ([9usize, 33], [9usize, 50]);
    let (tq, tk) = (sq.iter().sum(), sk.iter().sum());
    let mut packed = |t| Packed::from_fn(t, 3, 64, |_, _, _| unit(&mut s) as f32);
    let x = ServingInputs {
        q: packed(tq),
        cu_seqlens_q: cu(&sq),
        keys: ServingKeys::Varlen {
            k: packed(tk),
            v: packed(tk),
            cu_seqlens_k: cu(&sk),
        },
    };
    let cfg = SimConfig::new(Schedule::Forward);
    VarlenWindow::check(
        &VarlenWindow::default_tile(),
        &x,
        &VarlenWindow::params(),
        &cfg,
    )
    .unwrap();
}

#[test]
fn decode_item_splits_and_merges() {
    let x = paged::<half::f16>(&[1, 3], &[300, 77], (8, 2, 128, 32));
    let mut p = Decode::params();
    p.num_splits = Some(3);
    let cfg = SimConfig::new(Schedule::Forward);
    Decode::check(&Decode::default_tile(), &x, &p, &cfg).unwrap();
    // Bad layout arrays are an error naming the array, before any launch.
    let mut bad = x.clone();
    if let ServingKeys::Paged { block_table, .. } = &mut bad.keys {
        block_table[1] = 999;
    }
    let e = Decode::simulate(&Decode::default_tile(), &bad, &p).unwrap_err();
    assert!(e.to_string().contains("block_table"), "{e}");
}
