//! `kernel!` with `backward: true`: the item has the backward kernels' CUDA and their
//! simulator run checked against the reference (variants.md section 12); without it the
//! item has no backward methods. The compile errors are UI tests
//! (macros/tests/ui/kernel/backward_*.rs).

use attnforge::codegen::backward::BackwardTile;
use attnforge::exec::Backend;
use attnforge::exec_backward::Upstream;
use attnforge::prelude::*;

attnforge::kernel! {
    /// Causal, tanh softcap, GQA: a learnable scalar parameter.
    pub CausalSoftcap {
        causal: true, score: softcap(5.0), dtype: f32, head_dim: 64, gqa: true, backward: true,
        tune: { block_m: [32], block_n: [32], warps: [4] },
    }
}

// `backward: true` is visible as a constant.
const _: () = assert!(CausalSoftcap::BACKWARD);

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn backward_true_gives_the_backward_kernels_and_their_check() {
    let k = CausalSoftcap::backward_cuda(&BackwardTile::default()).unwrap();
    let name = CausalSoftcap::name();
    assert_eq!(k.delta.name, format!("{name}_bwd_delta"));
    assert_eq!(k.dkdv.name, format!("{name}_bwd_dkdv"));
    assert_eq!(k.dq.name, format!("{name}_bwd_dq"));
    let (b, hq, hkv, sq, sk, d) = (1, 2, 1, 24, 40, 64);
    let t = |h, s, seed| {
        Tensor4::from_vec(Shape4::new(b, h, s, d), values(b * h * s * d, seed)).unwrap()
    };
    let x = Inputs::new(t(hq, sq, 1), t(hkv, sk, 2), t(hkv, sk, 3));
    let dout = t(hq, sq, 4);
    let dlse = values(b * hq * sq, 5);
    let up = Upstream {
        dout: &dout,
        dlse: Some(&dlse),
    };
    let params = CausalSoftcap::params();
    let tile = CausalSoftcap::default_tile();
    let (grads, checks) = CausalSoftcap::check_backward(
        &tile,
        &BackwardTile::default(),
        &x,
        up,
        &params,
        &Backend::sim(),
    )
    .unwrap();
    assert_eq!(checks.len(), 4, "dq, dk, dv, score_params: {checks:?}");
    assert!(checks.iter().all(|c| c.passed()), "{checks:?}");
    let r = CausalSoftcap::reference_backward(&x, up, &params).unwrap();
    assert_eq!(grads.dk.shape, r.dk.shape);
    assert!(r.dq.data.iter().any(|v| v.abs() > 1e-3));
}
