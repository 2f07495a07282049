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

/// The input checks of exec (before any kernel or reference runs): each error names the
/// input field and carries a fix.
#[test]
fn input_errors_name_the_field_and_the_fix() {
    use attnforge_runtime::exec::{reference, ExecError};
    let x = Inputs::new(t(2, 2, 8, 64, 1), t(2, 2, 8, 64, 2), t(2, 2, 8, 64, 3));
    let spec = |m: Mask, s: ScoreMod| KernelSpec::new(DType::F32, HeadDim::D64, m, s);
    let questions = vec![0, 0, 1, 1, 0, 2, 2, 2];
    let cases: Vec<(KernelSpec, RunParams, &str, &str)> = vec![
        (
            spec(Mask::Document, ScoreMod::None),
            RunParams::default(),
            "doc",
            "needs per-token document ids",
        ),
        (
            spec(Mask::Document, ScoreMod::None),
            RunParams::default().with_doc(vec![0, 0, 1]),
            "doc",
            "3 ids, expected Sk = 8 or B*Sk = 16",
        ),
        (
            spec(Mask::ShareQuestion, ScoreMod::None),
            RunParams::default().with_doc(questions),
            "doc",
            "batch 0: doc id 0 (the question) is not a prefix",
        ),
        (
            spec(Mask::Full, ScoreMod::Alibi),
            RunParams {
                alibi_slopes: Some(vec![0.5]),
                ..RunParams::default()
            },
            "alibi_slopes",
            "1 slopes for 2 query heads",
        ),
        (
            spec(Mask::BlockSparse { mask: None }, ScoreMod::None),
            RunParams::default(),
            "block_lists",
            "needs explicit block lists",
        ),
        (
            spec(Mask::Causal, ScoreMod::None),
            RunParams {
                scale: Some(-1.0),
                ..RunParams::default()
            },
            "scale",
            "scale = -1",
        ),
    ];
    for (s, p, field, msg) in cases {
        match reference(&s, &x, &p, attnforge_reference::Precision::F64) {
            Err(ExecError::Input {
                field: f,
                message,
                fix,
            }) => {
                assert_eq!(f, field, "{}: {message}", s.canonical_name());
                assert!(message.contains(msg), "{}: {message}", s.canonical_name());
                assert!(!fix.is_empty());
            }
            other => panic!(
                "{}: expected an input error on `{field}`, got {other:?}",
                s.canonical_name()
            ),
        }
    }
    // LM-Infinite with a score modification: refused by the spec check, on `score`.
    let lminf = spec(Mask::LmInfinite, ScoreMod::Alibi);
    let p = RunParams::default().with_mask(
        MaskParams::new()
            .with("global_tokens", 1)
            .with("local_window", 2)
            .with("dist_limit", 4),
    );
    match reference(&lminf, &x, &p, attnforge_reference::Precision::F64) {
        Err(ExecError::Spec(e)) => assert_eq!(e[0].path, "score", "{e:?}"),
        other => panic!("lm_infinite + alibi: {other:?}"),
    }
}

/// A tile that fits sm_90's shared memory but not sm_80's (128x128, 3 stages, d128: 224 KiB)
/// runs on the simulator: the tuner's gate for sm_90 must not reject it with sm_80's limit
/// (it did, on an H200: docs/gpu-results/2026-12-04-NVIDIA-H200.md).
#[test]
fn simulator_runs_sm90_only_tiles() {
    let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None);
    let tile = TileConfig::new(128, 128, 8, 3);
    assert!(tile.valid(&spec, Arch::Sm80).is_err());
    assert!(tile.valid(&spec, Arch::Sm90).is_ok());
    let bf = |x: Tensor4<f32>| {
        let s = x.shape;
        Tensor4::from_fn(s, |b, h, i, j| half::bf16::from_f64(x.get(b, h, i, j)))
    };
    let x = Inputs::new(
        bf(t(1, 1, 131, 128, 4)),
        bf(t(1, 1, 140, 128, 5)),
        bf(t(1, 1, 140, 128, 6)),
    );
    let r = check(&spec, &tile, &x, &RunParams::default(), &Backend::sim()).unwrap();
    assert!(r.close.out.max_err < 2e-2, "{r:?}");
}
