//! 11: a score function with a learnable per-head table, differentiated by the macro.
//! `#[attnforge::score(backward)]` derives `ds'/ds` and `ds'/dparam` symbolically from the
//! body; `host_score_diff` packages them for the f64 reference backward. The table and cap
//! gradients are checked here against central finite differences of the forward loss; then
//! the generated backward kernels (`kernel! { .., backward: true }`, the derivatives' CUDA
//! from the same macro) compute them on the simulator and are checked against that reference.
//!
//! `cargo run --example 11_learnable_table`

use attnforge::codegen::backward::BackwardTile;
use attnforge::exec::{Backend, Inputs};
use attnforge::exec_backward::Upstream;
use attnforge::reference::{
    attention, attention_backward, AttnOptions, BackwardVariant, DiffScoreMod, Mask,
    ScoreParamGrads, Shape4, Tensor4,
};

/// A per-head distance penalty `slope[h] |q - kv|` plus a per-head bias, then a learnable
/// tanh soft cap.
#[attnforge::score(backward)]
pub fn capped_bias(
    score: f32,
    h: u32,
    q: i32,
    kv: i32,
    slope: &[f32],
    bias: &[f32],
    cap: f32,
) -> f32 {
    let d = (q - kv).abs() as f32;
    let s = score - slope[h as usize] * d + bias[h as usize];
    cap * (s / cap).tanh()
}

attnforge::kernel! {
    /// Causal attention with the learnable score function, GQA (4 query heads, 2 kv heads),
    /// and its backward kernels.
    pub LearnableTable {
        causal: true, score: capped_bias, dtype: f32, head_dim: 64, gqa: true, backward: true,
        tune: { block_m: [32], block_n: [32], warps: [4] },
    }
}

const HEADS: usize = 4;
/// Parameter step: a power of two, so `theta +- STEP` is exact in the function's `f32`.
const STEP: f64 = 1.0 / 128.0;

/// The loss `L = sum(dO * out)` whose gradient the backward computes (no `dlse`).
fn loss(out: &[f64], dout: &Tensor4<f32>) -> f64 {
    out.iter()
        .zip(&dout.data)
        .map(|(o, g)| o * f64::from(*g))
        .sum()
}

/// Runs the backward and the finite differences; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let shape = Shape4::new(2, HEADS, 12, 8);
    let kv_shape = Shape4::new(2, HEADS / 2, 12, 8);
    let t = |sh: Shape4, salt: usize| {
        Tensor4::from_fn(sh, move |b, h, i, d| {
            (((b * 13 + h * 5 + i * 7 + d * 3 + salt) % 17) as f32 - 8.0) / 6.0
        })
    };
    let (q, k, v) = (t(shape, 0), t(kv_shape, 1), t(kv_shape, 2));
    let dout = Tensor4::from_fn(shape, |b, h, i, d| {
        ((b + 2 * h + 3 * i + 5 * d) % 8) as f32 / 8.0 - 0.375
    });
    let slope = [0.25f32, 0.125, 0.0625, 0.5];
    let bias = [0.5f32, -0.25, 1.0, -0.75];
    let diff = capped_bias::host_score_diff(&capped_bias::Params::new(&slope, &bias, 3.0));
    // The learnable vector: the slope table, the bias table, then the cap.
    assert_eq!(diff.params.len(), 2 * HEADS + 1);
    let (mask, opts) = (Mask::Causal, AttnOptions::reference());
    let sm = DiffScoreMod::Function(diff.clone());
    let variant = BackwardVariant::Masked {
        mask: &mask,
        score_mod: &sm,
    };
    let grads = attention_backward(&q, &k, &v, &dout, None, &variant, &opts)?;
    let ScoreParamGrads::Function(analytic) = grads.score_params else {
        return Err("expected the user function's parameter gradients".into());
    };
    let max = analytic.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    let mut worst = 0.0f64;
    for (i, g) in analytic.iter().enumerate() {
        let at = |delta: f64| -> Result<f64, Box<dyn std::error::Error>> {
            let mut theta = diff.params.clone();
            theta[i] += delta;
            let sm = DiffScoreMod::Function(diff.with_params(theta)).to_score_mod();
            Ok(loss(&attention(&q, &k, &v, &mask, &sm, &opts)?.out, &dout))
        };
        let fd = (at(STEP)? - at(-STEP)?) / (2.0 * STEP);
        let err = (g - fd).abs();
        worst = worst.max(err / max);
        println!("dL/dtheta[{i}]: symbolic {g:+.6e}, finite difference {fd:+.6e}");
        // Truncation (STEP^2) and the function's f32 rounding bound the difference.
        if err > 2e-3 * max + 1e-5 {
            return Err(format!("dL/dtheta[{i}]: symbolic {g} vs finite difference {fd}").into());
        }
    }
    // Every table element is used by its head: a zero gradient would not test much.
    if analytic.iter().any(|g| g.abs() < 1e-3 * max) {
        return Err(format!("degenerate gradients {analytic:?}").into());
    }
    println!("table and cap gradients match finite differences (worst {worst:.2e} of the largest)");
    kernels(&slope, &bias)
}

/// The generated backward kernels on the simulator: dq, dk, dv and the gradient of every
/// table element and of the cap against the f64 reference (tolerance of variants.md section 0).
fn kernels(slope: &[f32], bias: &[f32]) -> Result<(), Box<dyn std::error::Error>> {
    let (b, sq, sk, d) = (1, 37, 70, 64);
    let t = |h: usize, s: usize, salt: usize| {
        Tensor4::from_fn(Shape4::new(b, h, s, d), move |_, h, i, c| {
            (((h * 5 + i * 7 + c * 3 + salt) % 17) as f32 - 8.0) / 24.0
        })
    };
    let x = Inputs::new(t(HEADS, sq, 0), t(HEADS / 2, sk, 1), t(HEADS / 2, sk, 2));
    let dout = t(HEADS, sq, 3);
    let params = LearnableTable::params(&capped_bias::Params::new(slope, bias, 3.0));
    let up = Upstream {
        dout: &dout,
        dlse: None,
    };
    let tile = LearnableTable::default_tile();
    let (grads, checks) = LearnableTable::check_backward(
        &tile,
        &BackwardTile::default(),
        &x,
        up,
        &params,
        &Backend::sim(),
    )?;
    let ScoreParamGrads::Function(theta) = &grads.score_params else {
        return Err("expected the learnable vector's gradient from the kernels".into());
    };
    if theta.len() != 2 * HEADS + 1 || checks.len() != 4 {
        return Err(format!(
            "{} parameter gradients, {} checks",
            theta.len(),
            checks.len()
        )
        .into());
    }
    for c in &checks {
        println!(
            "kernels: {} max error {:.2e} (bound {:.2e})",
            c.name, c.max_err, c.bound
        );
    }
    println!("kernel table and cap gradients: {theta:.4?}");
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
