//! 03: causal sliding-window attention (`sliding_window(w)` = `local(w, 0)`, w + 1 keys) in
//! bf16. The window is a kernel argument: the declared value is the default in `params()`
//! and can be changed at run time without recompiling.
//!
//! `cargo run --example 03_sliding_window`

use attnforge::codegen::check::MaskParams;
use attnforge::prelude::*;

attnforge::kernel! {
    /// Each query sees itself and the 24 keys before it.
    pub SlidingWindow { mask: sliding_window(24), causal: true, dtype: bf16, head_dim: 64 }
}

fn tensor(seq: usize, salt: usize) -> Tensor4<half::bf16> {
    Tensor4::from_fn(Shape4::new(1, 2, seq, 64), |_, h, i, d| {
        half::bf16::from_f32((((h * 5 + i * 7 + d * 3 + salt) % 11) as f32 - 5.0) / 5.0)
    })
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let inputs = Inputs::new(tensor(130, 0), tensor(130, 1), tensor(130, 2));
    let tile = SlidingWindow::default_tile();
    let params = SlidingWindow::params();
    let window = |left: i64| {
        MaskParams::new()
            .with("window_left", left)
            .with("window_right", 0)
    };
    assert_eq!(params.mask, Some(window(24)));
    let report = SlidingWindow::check(&tile, &inputs, &params, &Backend::sim())?;
    let c = report.counters.expect("simulator counters");
    println!(
        "{}: max |out - ref| = {:.3e}, visited {} of {} tiles",
        report.kernel,
        report.close.out.max_err,
        c.tiles_full + c.tiles_partial,
        report.dense_tiles.unwrap_or(0)
    );
    // A wider window at run time, same compiled kernel.
    let wide = params.with_mask(window(100));
    SlidingWindow::check(&tile, &inputs, &wide, &Backend::sim())?;
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
