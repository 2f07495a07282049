//! 05: built-in score modifications: tanh softcapping (the cap is declared and travels into
//! `params()`) and ALiBi (standard slopes by default, or given at run time). One `kernel!`
//! may declare several kernels.
//!
//! `cargo run --example 05_softcap_alibi`

use attnforge::prelude::*;

attnforge::kernel! {
    /// Causal attention with `30 * tanh(s / 30)` (Gemma-2 style).
    pub Softcap { mask: causal, score: softcap(30.0), dtype: f32, head_dim: 64 }

    /// Bidirectional attention with ALiBi position biases.
    pub Alibi { mask: full, score: alibi, dtype: f16, head_dim: 64, scale: 0.5 }
}

/// Builds, simulates and checks both kernels; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Large scores so the cap matters.
    let t = |salt: usize| {
        Tensor4::from_fn(Shape4::new(1, 3, 60, 64), move |_, h, i, d| {
            (((h * 5 + i * 7 + d * 3 + salt) % 11) as f32 - 5.0) * 1.5
        })
    };
    let inputs = Inputs::new(t(0), t(1), t(2));
    assert_eq!(Softcap::params().softcap, Some(30.0));
    let r = Softcap::check(
        &Softcap::default_tile(),
        &inputs,
        &Softcap::params(),
        &Backend::sim(),
    )?;
    println!(
        "{}: max |out - ref| = {:.3e}",
        r.kernel, r.close.out.max_err
    );

    let h = |salt: usize| {
        Tensor4::from_fn(Shape4::new(1, 3, 60, 64), move |_, h, i, d| {
            half::f16::from_f32((((h * 5 + i * 7 + d * 3 + salt) % 11) as f32 - 5.0) / 5.0)
        })
    };
    let inputs = Inputs::new(h(0), h(1), h(2));
    let r = Alibi::check(
        &Alibi::default_tile(),
        &inputs,
        &Alibi::params(),
        &Backend::sim(),
    )?;
    println!(
        "{}: max |out - ref| = {:.3e}",
        r.kernel, r.close.out.max_err
    );
    let mut custom = Alibi::params();
    custom.alibi_slopes = Some(vec![0.5, 0.25, 0.125]);
    Alibi::check(&Alibi::default_tile(), &inputs, &custom, &Backend::sim())?;
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
