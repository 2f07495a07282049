//! The GPU path of the serving layouts (`exec_serving::run_cuda` / `check_cuda`): bad layout
//! arrays are refused before the GPU is touched (on any machine); without a GPU a valid run
//! reports "no GPU" as `ExecError::Cuda`; on a GPU (the device check's `gpu_tests` and part
//! `sv` of gpu/run.sh) a split decode with its merge, a decode without splits and a paged
//! prefill are compared with the per-sequence reference.

use attnforge_reference::Packed;
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
    let mut value = || bf16::from_f32(rng.unit() * 4.0 - 2.0);
    let q = Packed::from_fn(sq.iter().sum(), hq, d, |_, _, _| value());
    let mut cu = vec![0i32];
    for &s in sq {
        cu.push(cu.last().unwrap() + s as i32);
    }
    ServingInputs::shared_prefix_paged(q, cu, &[300, 77, 16], (16, hkv), value)
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
