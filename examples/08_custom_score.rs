//! 08: a user score function written in Rust with `#[attnforge::score]`: a per-head
//! distance penalty with a run-time parameter, on a causal mask. The reference calls the
//! Rust function; the kernel runs its CUDA translation.
//!
//! `cargo run --example 08_custom_score`

use attnforge::prelude::*;

/// `score - slope * (h + 1) * |q - kv|`, clamped from below.
#[attnforge::score]
pub fn head_distance(score: f32, h: u32, q: i32, kv: i32, slope: f32) -> f32 {
    let d = (q - kv).abs() as f32;
    (score - slope * (h + 1) as f32 * d).max(-40.0)
}

attnforge::kernel! {
    /// Causal attention with a per-head distance penalty.
    pub HeadDistance {
        mask: causal,
        score: head_distance,
        dtype: bf16,
        head_dim: 64,
        tune: { block_m: [32], block_n: [32, 64], warps: [4] },
    }
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let t = |salt: usize| {
        Tensor4::from_fn(Shape4::new(1, 2, 80, 64), move |_, h, i, d| {
            half::bf16::from_f32((((h * 5 + i * 7 + d * 3 + salt) % 11) as f32 - 5.0) / 5.0)
        })
    };
    let inputs = Inputs::new(t(0), t(1), t(2));
    let params = HeadDistance::params(&head_distance::Params::new(0.05));
    for tile in HeadDistance::search_space() {
        let r = HeadDistance::check(&tile, &inputs, &params, &Backend::sim())?;
        println!(
            "{}: max |out - ref| = {:.3e}",
            r.kernel, r.close.out.max_err
        );
    }
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
