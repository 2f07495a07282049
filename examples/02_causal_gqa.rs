//! 02: causal grouped-query attention in f16 (4 query heads share 2 kv heads). `causal: true`
//! on the full mask gives the causal family; `Sq < Sk` shows bottom-right alignment.
//!
//! `cargo run --example 02_causal_gqa`

use attnforge::prelude::*;

attnforge::kernel! {
    /// Causal GQA attention.
    pub CausalGqa {
        causal: true,
        gqa: true,
        dtype: f16,
        head_dim: 64,
        tune: { block_m: [16, 32], block_n: [32], warps: [2, 4] },
    }
}

fn tensor(heads: usize, seq: usize, salt: usize) -> Tensor4<half::f16> {
    Tensor4::from_fn(Shape4::new(1, heads, seq, 64), |_, h, i, d| {
        half::f16::from_f32((((h * 5 + i * 11 + d * 3 + salt) % 13) as f32 - 6.0) / 6.0)
    })
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(CausalGqa::name(), "flash_fwd_causal_d64_f16_gqa");
    let inputs = Inputs::new(tensor(4, 50, 0), tensor(2, 90, 2), tensor(2, 90, 7));
    for tile in CausalGqa::search_space() {
        let report = CausalGqa::check(&tile, &inputs, &CausalGqa::params(), &Backend::sim())?;
        println!(
            "{}: max |out - ref| = {:.3e}",
            report.kernel, report.close.out.max_err
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
