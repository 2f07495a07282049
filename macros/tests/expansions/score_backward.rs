//! `#[score(backward)]`: the derivatives of a soft cap over a per-head distance penalty,
//! against their hand-derived formulas.
#[attnforge_macros::score(backward)]
fn capped(score: f32, h: u32, q: i32, kv: i32, slope: &[f32], cap: f32) -> f32 {
    let s = score - slope[h as usize] * ((q - kv).abs() as f32);
    cap * (s / cap).tanh()
}

/// Parameter names that the generated code also uses for its own locals.
#[attnforge_macros::score(backward)]
fn names(score: f32, h: u32, _q: u32, _kv: u32, off: f32, n: &[f32], theta: &[f32], out: u32) -> f32 {
    score * off + n[h as usize] - theta[0] * (out as f32)
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

pub fn main() {
    let slope = [0.5f32, 0.25, 0.125];
    let p = capped::Params::new(&slope, 2.0);
    let (score, h, q, kv) = (1.5f32, 1u32, 7i64, 3i64);
    let x = (score - 0.25 * 4.0) / 2.0;
    let t = x.tanh();
    // ds'/ds = 1 - tanh^2, ds'/dslope[h] = -|q - kv| (1 - tanh^2), ds'/dcap = tanh - x (1 - tanh^2).
    assert!(close(capped::d_score(score, 0, h, q, kv, &p), 1.0 - t * t));
    let mut out = Vec::new();
    capped::d_params(score, 0, h, q, kv, &p, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].0, 1, "slope[1] is element 1 of the learnable vector");
    assert!(close(out[0].1, -4.0 * (1.0 - t * t)), "{out:?}");
    assert_eq!(out[1].0, 3, "cap follows the three table elements");
    assert!(close(out[1].1, t - x * (1.0 - t * t)), "{out:?}");
    assert_eq!(capped::learnable(&p), vec![0.5, 0.25, 0.125, 2.0]);
    assert!(capped::BACKWARD_CUDA.contains(
        "float capped_grad_score(float score, int b, int h, long long q_pos, long long kv_pos, const float* slope, float cap)"
    ));
    assert!(capped::BACKWARD_CUDA.contains("long long capped_grad_slope_0_index("));
    assert!(capped::BACKWARD_CUDA.contains("float capped_grad_cap("));
    // The reference's form: the float parameters come from the learnable vector.
    let f = capped::host_score_diff(&p);
    assert_eq!(f.params, vec![0.5, 0.25, 0.125, 2.0]);
    let theta = [0.5, 0.0, 0.125, 2.0];
    assert!(close((f.value)(1.5, 0, 1, 7, 3, &theta) as f32, 2.0 * (0.75f32).tanh()));
    let mut g = Vec::new();
    (f.d_params.as_ref().expect("learnable"))(1.5, 0, 1, 7, 3, &theta, &mut g);
    assert_eq!(g.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
    // A learnable vector of the wrong length: NaN and an out-of-range index, no panic.
    assert!((f.value)(1.5, 0, 1, 7, 3, &[1.0]).is_nan());
    g.clear();
    (f.d_params.as_ref().expect("learnable"))(1.5, 0, 1, 7, 3, &[1.0], &mut g);
    assert_eq!(g[0].0, usize::MAX);
    let n = [1.0f32, 2.0];
    let f = names::host_score_diff(&names::Params::new(0.5, &n, &[3.0], 7));
    assert_eq!(f.params, vec![0.5, 1.0, 2.0, 3.0]);
    assert!(close((f.value)(2.0, 0, 1, 0, 0, &[0.5, 1.0, 2.0, 3.0]) as f32, 1.0 + 2.0 - 21.0));
    let mut g = Vec::new();
    (f.d_params.as_ref().expect("learnable"))(2.0, 0, 1, 0, 0, &[0.5, 1.0, 2.0, 3.0], &mut g);
    assert_eq!(g, vec![(0, 2.0), (2, 1.0), (3, -7.0)]);
}
