//! 07: LM-Infinite Lambda attention with a distance limit (variants.md section 5):
//! `lm_infinite(G, L, Dlim)` on un-rotated q/k; RoPE happens inside the kernel.
//!
//! `cargo run --example 07_lm_infinite`

use attnforge::prelude::*;

attnforge::kernel! {
    /// 4 global tokens, a 32-token window, distance limit 40.
    pub LmInfinite { mask: lm_infinite(4, 32, 40), dtype: f32, head_dim: 64 }
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let t = |salt: usize| {
        Tensor4::from_fn(Shape4::new(1, 2, 120, 64), move |_, h, i, d| {
            (((h * 5 + i * 7 + d * 3 + salt) % 11) as f32 - 5.0) / 5.0
        })
    };
    let inputs = Inputs::new(t(0), t(1), t(2));
    let r = LmInfinite::check(
        &LmInfinite::default_tile(),
        &inputs,
        &LmInfinite::params(),
        &Backend::sim(),
    )?;
    println!(
        "{}: max |out - ref| = {:.3e}",
        r.kernel, r.close.out.max_err
    );
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
