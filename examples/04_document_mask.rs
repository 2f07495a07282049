//! 04: a user mask written in Rust with `#[attnforge::mask]` (causal attention inside
//! documents) plus tanh softcapping, declared with `kernel!`, run on the CPU simulator and
//! checked against the f64 reference. The same Rust function decides the reference's
//! mask and the host-side block lists; its CUDA translation decides the kernel's.
//!
//! `cargo run --example 04_document_mask`

use attnforge::prelude::*;

/// Key `kv` is visible to query `q` when it is not in the future and in the same document.
#[attnforge::mask]
pub fn doc_causal(q: u32, kv: u32, doc: &[u32]) -> bool {
    kv <= q && doc[q as usize] == doc[kv as usize]
}

attnforge::kernel! {
    /// Causal attention inside documents, with tanh softcapping.
    pub DocSoftcap {
        mask: doc_causal,
        score: softcap(30.0),
        dtype: bf16,
        head_dim: 64,
        sparse_block: 64,
        tune: { block_m: [32, 64], block_n: [32, 64], warps: [4] },
    }
}

fn tensor(heads: usize, seq: usize, salt: usize) -> Tensor4<half::bf16> {
    Tensor4::from_fn(Shape4::new(1, heads, seq, 64), |_, h, i, d| {
        half::bf16::from_f32((((h * 7 + i * 13 + d * 5 + salt) % 17) as f32 - 8.0) / 8.0)
    })
}

/// Builds, simulates and checks the kernel; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let seq = 150;
    let doc: Vec<u32> = (0..seq as u32).map(|i| i / 40).collect();
    let inputs = Inputs::new(tensor(2, seq, 0), tensor(2, seq, 3), tensor(2, seq, 9));
    let params = DocSoftcap::params(&doc_causal::Params::new(&doc));
    let tile = DocSoftcap::default_tile();
    assert_eq!(DocSoftcap::search_space().len(), 4);
    let report = DocSoftcap::check(&tile, &inputs, &params, &Backend::sim())?;
    let c = report.counters.expect("simulator counters");
    println!(
        "{}: max |out - ref| = {:.3e}, tiles full/partial {}/{} of {}",
        report.kernel,
        report.close.out.max_err,
        c.tiles_full,
        c.tiles_partial,
        report.dense_tiles.unwrap_or(0)
    );
    // Block lists skip whole tiles: fewer visited than a dense kernel would.
    assert!(c.tiles_full + c.tiles_partial < report.dense_tiles.unwrap_or(0));
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
