//! The atomic-dQ backward (FlashAttention-2's form, `BackwardTile::atomic_dq`, a tuner option)
//! on the simulator against the f64 reference with the tolerance rule of variants.md section 0,
//! and the default backward staying deterministic (section 12).

use attnforge_reference::{Element, Shape4, Tensor4};
use attnforge_runtime::codegen::backward::{emit_backward, BackwardTile};
use attnforge_runtime::codegen::prelude::*;
use attnforge_runtime::exec::{Backend, Inputs, RunParams};
use attnforge_runtime::exec_backward::{check_backward, simulate_backward, Upstream};
use attnforge_runtime::sim::{Schedule, SimConfig, SimElem};

mod inputs;
use inputs::normal;

/// `(batch, hq, hkv, sq, sk, sigma)`.
type Case = (usize, usize, usize, usize, usize, f64);

fn inputs<T: Element>(c: Case, d: usize, seed: u64) -> (Inputs<T>, Tensor4<T>) {
    let (b, hq, hkv, sq, sk, sigma) = c;
    (
        Inputs::new(
            normal::<T>(Shape4::new(b, hq, sq, d), sigma, seed),
            normal::<T>(Shape4::new(b, hkv, sk, d), sigma, seed ^ 0xA5A5),
            normal::<T>(Shape4::new(b, hkv, sk, d), 1.0, seed ^ 0x5A5A),
        ),
        normal::<T>(Shape4::new(b, hq, sq, d), 1.0, seed ^ 0x3C3C),
    )
}

/// Checks the atomic variant of `tile` against the reference (dlse on), after asserting that
/// the emitted kernels are the atomic ones.
fn check<T: Element + SimElem>(spec: &KernelSpec, tile: BackwardTile, c: Case, p: &RunParams) {
    let tile = tile.atomic();
    let k = emit_backward(spec, &tile, Arch::Sm80).expect("atomic tile is valid");
    assert!(
        k.dkdv.source.contains("af_bwd_dq_atomic{})"),
        "atomic dK/dV"
    );
    assert!(k.dq.source.contains("af_bwd_dq_convert<Tile>(args, grads)"));
    let (x, dout) = inputs::<T>(c, spec.head_dim.get(), 7);
    let dlse: Vec<f32> = (0..c.0 * c.1 * c.3)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
        .collect();
    let up = Upstream {
        dout: &dout,
        dlse: Some(&dlse),
    };
    let fwd = default_tile(spec, Arch::Sm80).expect("forward tile");
    let backend = Backend::Sim(SimConfig::new(Schedule::Forward));
    match check_backward(spec, &fwd, &tile, &x, up, p, &backend) {
        Ok((_, checks)) => eprintln!("{} {}: {checks:?}", spec.canonical_name(), tile.suffix()),
        Err(e) => panic!("{} {} {c:?}: {e}", spec.canonical_name(), tile.suffix()),
    }
}

/// Causal GQA with Sq != Sk (neither a tile multiple), bf16 d 128 (32-query steps, two warps
/// per 16-row slab of dQ) and f16 d 64 (64-query steps), scores up to ~10.
#[test]
fn atomic_dq_causal_gqa_matches_reference() {
    let bf = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None).with_gqa();
    check::<half::bf16>(
        &bf,
        BackwardTile::new(64, 64, 4),
        (1, 4, 2, 77, 100, 1.0),
        &RunParams::default(),
    );
    let f = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Causal, ScoreMod::None).with_gqa();
    check::<half::f16>(
        &f,
        BackwardTile::new(64, 64, 4),
        (2, 2, 1, 90, 61, 3.0),
        &RunParams::default(),
    );
}

/// The other tensor-core tiles (32 x 32 / 2 warps, 128 x 128 / 8 warps) and a local mask with
/// partial tiles on both sides.
#[test]
fn atomic_dq_other_tiles_and_masks() {
    let p = RunParams {
        mask: Some(
            MaskParams::new()
                .with("window_left", 21)
                .with("window_right", 3),
        ),
        ..RunParams::default()
    };
    let local = KernelSpec::new(DType::Bf16, HeadDim::D64, Mask::Local, ScoreMod::None);
    check::<half::bf16>(
        &local,
        BackwardTile::new(32, 32, 2),
        (1, 2, 2, 70, 95, 1.0),
        &p,
    );
    let full = KernelSpec::new(DType::F16, HeadDim::D64, Mask::Full, ScoreMod::None).with_gqa();
    check::<half::f16>(
        &full,
        BackwardTile::new(128, 128, 8),
        (1, 2, 1, 150, 131, 1.0),
        &RunParams::default(),
    );
}

/// Where the atomic dQ does not apply, `valid` names `backward_tile.atomic_dq` and the fix:
/// f32 (FMA form) and a learnable score parameter (softcap), whose gradient only the
/// deterministic dQ kernel sums.
#[test]
fn atomic_dq_refused_where_it_does_not_apply() {
    let t = BackwardTile::new(64, 64, 4).atomic();
    for spec in [
        KernelSpec::new(DType::F32, HeadDim::D64, Mask::Causal, ScoreMod::None),
        KernelSpec::new(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::Softcap),
    ] {
        let errs = t.valid(&spec, Arch::Sm80).expect_err("refused");
        let text = format!("{errs:?}");
        assert!(text.contains("backward_tile.atomic_dq"), "{text}");
        assert!(text.contains("atomic_dq = false"), "{text}");
    }
    // a forward tile carrying the backward tuner's flag is refused, not ignored
    let spec = KernelSpec::new(DType::Bf16, HeadDim::D64, Mask::Causal, ScoreMod::None);
    let fwd = TileConfig {
        atomic_dq: true,
        ..TileConfig::new(64, 64, 4, 2)
    };
    let errs = format!("{:?}", fwd.valid(&spec, Arch::Sm80).expect_err("refused"));
    assert!(errs.contains("tile.atomic_dq"), "{errs}");
}

/// The default tile is never atomic, and its gradients are bit-identical under two simulator
/// thread schedules (bf16 d 128 causal GQA: the tensor-core kernels).
#[test]
fn default_backward_is_deterministic() {
    let spec = KernelSpec::new(DType::Bf16, HeadDim::D128, Mask::Causal, ScoreMod::None).with_gqa();
    let tile = BackwardTile::for_spec(&spec);
    assert!(!tile.atomic_dq, "the default backward is deterministic");
    let c = (1, 4, 1, 70, 99, 1.0);
    let (x, dout) = inputs::<half::bf16>(c, 128, 5);
    let fwd = default_tile(&spec, Arch::Sm80).unwrap();
    let up = Upstream {
        dout: &dout,
        dlse: None,
    };
    let [a, b, _] = Schedule::standard(11);
    let run = |s| {
        simulate_backward(
            &spec,
            &fwd,
            &tile,
            &x,
            up,
            &RunParams::default(),
            &SimConfig::new(s),
        )
        .unwrap()
    };
    let (g1, g2) = (run(a), run(b));
    let bits = |t: &Tensor4<f64>| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&g1.dq), bits(&g2.dq));
    assert_eq!(bits(&g1.dk), bits(&g2.dk));
    assert_eq!(bits(&g1.dv), bits(&g2.dv));
    assert!(
        g1.dq.data.iter().any(|&v| v != 0.0),
        "a non-trivial gradient"
    );
}
