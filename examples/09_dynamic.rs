//! 09: the data-dependent families (variants.md sections 6-9) through `kernel!`'s
//! `family:` key: landmark retrieval, HAX, CCA, top-k decoding and the log-sum-exp merge.
//! Each generated item runs its whole pipeline (selection kernels, then gather-attention)
//! on the CPU simulator and compares it with the f64 reference; the counters show how many
//! keys the attention kernels visited.
//!
//! `cargo run --example 09_dynamic`

use attnforge::kernels::exec_dynamic::{DynCheckReport, DynInputs, HaxExtra};
use attnforge::prelude::*;
use attnforge::reference::{attention_over_keys, AttnOptions, Sharing};

attnforge::kernel! {
    /// Landmark attention, retrieval mode: blocks of 8 tokens (7 + landmark), the 2 blocks
    /// with the best landmark scores per query.
    pub Landmark {
        family: landmark(mem_freq: 7, mode: retrieval(top_k: 2)),
        dtype: f16,
        head_dim: 64,
    }
    /// HAX: 8 most recent same-bucket keys (4 hyperplanes: 16 buckets) + the 8 best
    /// key-selection scores.
    pub Hax { family: hax(k_lsh: 8, k_ks: 8, hash_bits: 4), dtype: f16, head_dim: 64 }
    /// CCA: groups of 4 pooled into core tokens, a local window of 16 raw tokens.
    pub Cca { family: cca(group: 4, window: 16), dtype: bf16, head_dim: 64 }
    /// Top-k decoding: 2 sink tokens, the 8 most recent keys and the 8 best by q.k.
    pub Topk { family: topk(sink: 2, recent: 8, k: 8), dtype: f16, head_dim: 64 }
    /// The log-sum-exp merge of two partial results.
    pub Merge { family: lse_merge, dtype: f16, head_dim: 64 }
}

/// Deterministic values, multiples of 1/8 in [-1, 1] (exact in every dtype).
fn tensor<T: attnforge::reference::Element>(heads: usize, seq: usize, salt: usize) -> Tensor4<T> {
    Tensor4::from_fn(Shape4::new(1, heads, seq, 64), move |_, h, i, d| {
        T::from_f64((((h * 13 + i * 7 + d * 3 + salt * 5 + (i * d) % 7) % 17) as f64 - 8.0) / 8.0)
    })
}

fn show(r: &DynCheckReport) {
    println!(
        "{}: max |out - ref| = {:.3e}, keys gathered {}, select work {}",
        r.pipeline, r.close.out.max_err, r.run.counters.keys_gathered, r.run.counters.select_work
    );
}

/// Builds, simulates and checks every pipeline; an error on any mismatch.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Backend::sim();
    // Landmark: 2 query heads sharing 1 kv head (GQA), 64 tokens = 8 blocks.
    let x = DynInputs::new(tensor(2, 64, 0), tensor(1, 64, 1), tensor(1, 64, 2));
    show(&Landmark::check(&x, &sim)?);

    // HAX: hyperplanes [1, 1, 64, 4] and key-selection scores [1, 1, S, 1], shared by heads.
    let s = 48;
    let mut x = DynInputs::new(tensor(1, s, 3), tensor(1, s, 4), tensor(1, s, 5));
    x.hax = Some(HaxExtra {
        hyperplanes: Tensor4::from_fn(Shape4::new(1, 1, 64, 4), |_, _, d, t| {
            ((d * 29 + t * 11) % 23) as f32 / 11.0 - 1.0
        }),
        ks: Tensor4::from_fn(Shape4::new(1, 1, s, 1), |_, _, i, _| ((i * 37) % 19) as f32),
        hyperplane_sharing: Sharing::Shared,
        ks_sharing: Sharing::Shared,
    });
    show(&Hax::check(&x, &sim)?);

    // CCA: 64 tokens, window 16: (64 - 16) / 4 = 12 pooled groups.
    let x = DynInputs::new(tensor(2, 64, 6), tensor(2, 64, 7), tensor(2, 64, 8));
    show(&Cca::check(&x, &sim)?);

    // Top-k: 2 decoding queries over 96 cached keys.
    let x = DynInputs::new(tensor(2, 2, 9), tensor(2, 96, 10), tensor(2, 96, 11));
    let r = Topk::check(&x, &sim)?;
    show(&r);
    assert!(r.run.counters.keys_gathered <= 2 * 2 * (2 + 8 + 8));

    // Merge: two partial results over disjoint key sets (f64 reference partials).
    let (q, k, v) = (
        tensor::<f32>(1, 4, 12),
        tensor(1, 40, 13),
        tensor(1, 40, 14),
    );
    let evens: Vec<Vec<usize>> = (0..4).map(|_| (0..40).step_by(2).collect()).collect();
    let odds: Vec<Vec<usize>> = (0..4).map(|_| (1..40).step_by(2).collect()).collect();
    let a = attention_over_keys(&q, &k, &v, &evens, &AttnOptions::reference())?;
    let b = attention_over_keys(&q, &k, &v, &odds, &AttnOptions::reference())?;
    show(&Merge::check(&a, &b, &sim)?);
    Ok(())
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
