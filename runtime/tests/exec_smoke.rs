//! Smoke test of the exec layer: a few catalog kernels on the simulator vs the reference.
use attnforge_reference::{Shape4, Tensor4};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{check, Backend, Inputs, RunParams};

fn t(b: usize, h: usize, s: usize, d: usize, seed: u64) -> Tensor4<f32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    Tensor4::from_fn(Shape4::new(b, h, s, d), |_, _, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    })
}

#[test]
fn causal_and_local_f32() {
    for (mask, mp) in [
        (Mask::Causal, None),
        (
            Mask::Local,
            Some(
                MaskParams::new()
                    .with("window_left", 5)
                    .with("window_right", 2),
            ),
        ),
    ] {
        let spec = KernelSpec::new(DType::F32, HeadDim::D64, mask, ScoreMod::None);
        let tile = default_tile(&spec, Arch::Sm80).unwrap();
        let x = Inputs::new(t(1, 2, 37, 64, 1), t(1, 2, 45, 64, 2), t(1, 2, 45, 64, 3));
        let p = RunParams {
            mask: mp,
            ..RunParams::default()
        };
        let r = check(&spec, &tile, &x, &p, &Backend::sim()).unwrap();
        assert!(r.close.out.max_err < 1e-4, "{r:?}");
    }
}

#[test]
fn run_cuda_without_a_gpu_is_a_clean_error() {
    let spec = KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let tile = default_tile(&spec, Arch::Sm80).unwrap();
    let x = Inputs::new(t(1, 1, 5, 64, 1), t(1, 1, 5, 64, 2), t(1, 1, 5, 64, 3));
    let r = attnforge_runtime::exec::run_cuda(&spec, &tile, &x, &RunParams::default(), 0);
    if attnforge_runtime::gpu_available() {
        let out = r.expect("GPU run");
        let want = attnforge_runtime::exec::reference(
            &spec,
            &x,
            &RunParams::default(),
            attnforge_reference::Precision::F64,
        )
        .unwrap();
        let max = out
            .out
            .iter()
            .zip(&want.out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(max < 1e-4, "GPU output differs from the reference by {max}");
    } else {
        match r {
            Err(attnforge_runtime::exec::ExecError::Cuda(m)) => assert!(!m.is_empty()),
            other => panic!("expected ExecError::Cuda without a GPU, got {other:?}"),
        }
    }
}
