//! 10: the two masks of variants.md section 11, declared like every built-in mask:
//! Llama 4's chunked attention `chunked_causal(C)` (each query sees the earlier keys of its
//! own chunk of C positions) and Longformer's dilated window `dilated_causal(w, d)` (the
//! `w + 1` keys at distances `0, d, ..., w d`). Sq != Sk and lengths that are not tile
//! multiples; the parameters are kernel arguments, changed at run time without recompiling.
//!
//! `cargo run --example 10_chunked_dilated`

use attnforge::codegen::check::MaskParams;
use attnforge::prelude::*;

attnforge::kernel! {
    /// Chunks of 48 positions (bf16, d 128).
    pub Chunked { mask: chunked_causal(48), dtype: bf16, head_dim: 128 }
}

attnforge::kernel! {
    /// Seven keys, three positions apart (f16, d 64).
    pub Dilated { mask: dilated_causal(6, 3), dtype: f16, head_dim: 64 }
}

fn inputs<T: attnforge::reference::Element>(sq: usize, sk: usize, d: usize) -> Inputs<T> {
    let t = |seq: usize, salt: usize| {
        Tensor4::from_fn(Shape4::new(2, 2, seq, d), |b, h, i, c| {
            T::from_f64(((b * 3 + h * 5 + i * 7 + c * 3 + salt) % 13) as f64 / 4.0 - 1.5)
        })
    };
    Inputs::new(t(sq, 0), t(sk, 1), t(sk, 2))
}

/// Builds, simulates and checks both kernels; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let x = inputs::<half::bf16>(70, 133, 128);
    let params = Chunked::params();
    assert_eq!(params.mask, Some(MaskParams::new().with("chunk_size", 48)));
    let report = Chunked::check(&Chunked::default_tile(), &x, &params, &Backend::sim())?;
    println!(
        "{}: max |out - ref| = {:.3e}",
        report.kernel, report.close.out.max_err
    );
    // A chunk that does not divide the tiles, same compiled kernel.
    let odd = params.with_mask(MaskParams::new().with("chunk_size", 17));
    Chunked::check(&Chunked::default_tile(), &x, &odd, &Backend::sim())?;

    let x = inputs::<half::f16>(90, 101, 64);
    let params = Dilated::params();
    let report = Dilated::check(&Dilated::default_tile(), &x, &params, &Backend::sim())?;
    println!(
        "{}: max |out - ref| = {:.3e}",
        report.kernel, report.close.out.max_err
    );
    // d = 1 is the causal sliding window of w + 1 keys (full tiles appear).
    let dense = params.with_mask(MaskParams::new().with("window", 40).with("dilation", 1));
    Dilated::check(&Dilated::default_tile(), &x, &dense, &Backend::sim())?;
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
