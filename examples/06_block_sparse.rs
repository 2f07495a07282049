//! 06: block-sparse attention (FlexAttention BlockMask semantics). The block lists are a
//! run-time input; partial blocks evaluate a `#[mask]` function (`block_sparse(pred)`).
//!
//! `cargo run --example 06_block_sparse`

use attnforge::codegen::blocks::build_block_lists;
use attnforge::prelude::*;

/// Keys at an even distance from the query.
#[attnforge::mask]
pub fn even_distance(q: i32, kv: i32) -> bool {
    (q - kv) % 2 == 0
}

attnforge::kernel! {
    /// Block-sparse attention, 32 x 32 blocks, `even_distance` inside partial blocks.
    pub Sparse {
        mask: block_sparse(even_distance),
        dtype: f32,
        head_dim: 64,
        sparse_block: 32,
        tune: { block_m: [32], block_n: [32], warps: [2, 4] },
    }
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (heads, seq) = (2, 96);
    let t = |salt: usize| {
        Tensor4::from_fn(Shape4::new(1, heads, seq, 64), move |_, h, i, d| {
            (((h * 5 + i * 7 + d * 3 + salt) % 11) as f32 - 5.0) / 5.0
        })
    };
    let inputs = Inputs::new(t(0), t(1), t(2));
    // A pattern: diagonal blocks partial (the predicate decides), the first column full,
    // everything else skipped.
    let lists = build_block_lists(1, 1, seq, seq, BlockSize { q: 32, k: 32 }, |_, _, i, j| {
        j < 32 || (i / 32 == j / 32 && (i - j) % 2 == 0)
    });
    let mut params = Sparse::params(&even_distance::Params::new());
    params.block_lists = Some(lists);
    let r = Sparse::check(&Sparse::default_tile(), &inputs, &params, &Backend::sim())?;
    let c = r.counters.expect("simulator counters");
    println!(
        "{}: max |out - ref| = {:.3e}, tiles full/partial {}/{} of {}",
        r.kernel,
        r.close.out.max_err,
        c.tiles_full,
        c.tiles_partial,
        r.dense_tiles.unwrap_or(0)
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
