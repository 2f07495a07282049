//! The GPU path of the serving layouts (`exec_serving::run_cuda` / `check_cuda`): bad layout
//! arrays are refused before the GPU is touched (on any machine); without a GPU a valid run
//! reports "no GPU" as `ExecError::Cuda`; on a GPU (the device check's `gpu_tests` and part
//! `sv` of gpu/run.sh) a split decode with its merge, a decode without splits and a paged
//! prefill are compared with the per-sequence reference.

use attnforge_reference::{Packed, PagedCache};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::codegen::spec::Layout;
use attnforge_runtime::exec::{ExecError, RunParams};
use attnforge_runtime::exec_serving::{self, ServingInputs, ServingKeys};
use attnforge_runtime::gpu_available;
use half::bf16;

mod inputs;
use inputs::Rng;

/// Three sequences of `sq` tokens (the second without queries) over 300, 77 and 16 keys in a
/// paged cache of 16-key pages, pages in reverse order with page 0 shared.
fn paged(sq: &[usize; 3], hq: usize, hkv: usize, d: usize) -> ServingInputs<bf16> {
    let mut rng = Rng(0x5EED);
    let sk = [300usize, 77, 16];
    let page = 16;
    let pages: Vec<usize> = sk.iter().map(|k| k.div_ceil(page)).collect();
    let max_pages = pages.iter().copied().max().unwrap();
    let num_pages = pages.iter().sum::<usize>() + 1;
    let mut table = vec![-1i32; 3 * max_pages];
    let mut next = num_pages;
    for (b, &n) in pages.iter().enumerate() {
        for i in 0..n {
            table[b * max_pages + i] = if i == 0 {
                0
            } else {
                next -= 1;
                next as i32
            };
        }
    }
    let mut cache = || {
        PagedCache::from_fn(num_pages, page, hkv, d, |_, _, _, _| {
            bf16::from_f32(rng.unit() * 4.0 - 2.0)
        })
    };
    let (k_cache, v_cache) = (cache(), cache());
    let tq = sq.iter().sum();
    let q = Packed::from_fn(tq, hq, d, |_, _, _| bf16::from_f32(rng.unit() * 4.0 - 2.0));
    let mut cu = vec![0i32];
    for &s in sq {
        cu.push(cu.last().unwrap() + s as i32);
    }
    ServingInputs {
        q,
        cu_seqlens_q: cu,
        keys: ServingKeys::Paged {
            k_cache,
            v_cache,
            block_table: table,
            max_pages,
            seqlens_k: sk.iter().map(|&k| k as i32).collect(),
        },
    }
}

fn causal(layout: Layout) -> KernelSpec {
    let mut s = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
    s.gqa = true;
    s.with_layout(layout)
}

#[test]
fn bad_layout_arrays_are_refused_before_the_gpu() {
    let spec = causal(Layout::Decode);
    let tile = default_tile(&spec, Arch::Sm80).unwrap();
    let mut x = paged(&[1, 0, 3], 8, 2, 128);
    if let ServingKeys::Paged { block_table, .. } = &mut x.keys {
        block_table[0] = 10_000;
    }
    let p = RunParams::default().with_num_splits(3);
    let e = exec_serving::run_cuda(&spec, &tile, &x, &p, 0, 0).unwrap_err();
    assert!(
        !matches!(e, ExecError::Cuda(_)),
        "checked before the GPU: {e}"
    );
    assert!(e.to_string().contains("block_table"), "{e}");
}

#[test]
fn decode_and_paged_prefill_on_the_gpu_or_no_gpu() {
    let runs = [
        (causal(Layout::Decode), [1, 0, 3], Some(3)),
        (causal(Layout::Decode), [2, 0, 1], Some(1)),
        (causal(Layout::Paged), [37, 0, 5], None),
    ];
    for (spec, sq, splits) in runs {
        let tile = default_tile(&spec, Arch::Sm80).unwrap();
        let x = paged(&sq, 8, 2, 128);
        let p = RunParams {
            num_splits: splits,
            ..RunParams::default()
        };
        match exec_serving::check_cuda(&spec, &tile, &x, &p, 0) {
            Ok(r) => {
                assert!(gpu_available());
                println!("{}: max error {:.3e}", r.name, r.close.out.max_err);
            }
            Err(ExecError::Cuda(m)) if !gpu_available() => {
                println!("serving_cuda: {m}; the GPU path was not exercised on this machine");
            }
            Err(e) => panic!("{}: {e}", spec.canonical_name()),
        }
    }
}
