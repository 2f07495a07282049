//! 01: dense (full) attention in f32, declared with `kernel!` and the default tuning
//! space, run on the CPU simulator and checked against the f64 reference.
//!
//! `cargo run --example 01_dense`

use attnforge::prelude::*;

attnforge::kernel! {
    /// Plain softmax attention over every key.
    pub Dense { mask: full, dtype: f32, head_dim: 64 }
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let t = |salt: usize| {
        Tensor4::from_fn(Shape4::new(2, 2, 70, 64), move |b, h, i, d| {
            (((b * 3 + h * 7 + i * 13 + d * 5 + salt) % 19) as f32 - 9.0) / 9.0
        })
    };
    let inputs = Inputs::new(t(0), t(4), t(11));
    assert!(!Dense::search_space().is_empty());
    assert!(Dense::cuda(&Dense::default_tile())?
        .source
        .contains(&Dense::name()));
    let report = Dense::check(
        &Dense::default_tile(),
        &inputs,
        &Dense::params(),
        &Backend::sim(),
    )?;
    println!(
        "{}: max |out - ref| = {:.3e}",
        report.kernel, report.close.out.max_err
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
