//! One user mask, three deciders: the Rust function (`#[mask]`), the host block-list
//! builder (fed by the same function through the companion's `host_mask`), and the CUDA
//! translation inside the kernel on the simulator. Values are one-hot per key (`v_j = e_j`),
//! so output row `i` is the softmax weights: `out[i][j] > 0` exactly when the kernel let
//! query `i` see key `j`. Random shapes and parameters; every decision must agree.

use attnforge::codegen::blocks::build_block_lists;
use attnforge::codegen::spec::BlockSize;
use attnforge::prelude::*;
use proptest::prelude::*;

/// A pseudo-random pattern with arithmetic, wrapping products, comparisons and an array.
#[attnforge::mask]
pub fn hashed(q: u32, kv: u32, seed: u32, keep: u32, tag: &[u32]) -> bool {
    let hsh = (q * 73 + kv * 151 + seed) * 2053;
    (hsh >> 5) % 100 < keep || (kv == q && tag[q as usize] % 2 != 1)
}

attnforge::kernel! {
    /// The property's kernel: 128 keys fit the one-hot values of head_dim 128.
    pub Hashed {
        mask: hashed,
        dtype: f32,
        head_dim: 128,
        sparse_block: 32,
        tune: { block_m: [32], block_n: [32], warps: [4] },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn rust_builder_and_kernel_agree(
        sk in 1usize..=128,
        dq in 0usize..40,
        seed in 0u32..1000,
        keep in 0u32..=100,
        tag_seed in 0u32..1000,
    ) {
        let sq = sk.saturating_sub(dq).max(1);
        let off = (sk - sq) as i64;
        let tag: Vec<u32> = (0..sk as u32).map(|i| i.wrapping_mul(tag_seed) >> 3).collect();
        let p = hashed::Params::new(seed, keep, &tag);
        let rust = |i: usize, j: usize| hashed(i as u32 + off as u32, j as u32, seed, keep, &tag);

        // Builder (variants.md section 4): full = all 32 x 32 elements in range and allowed,
        // partial = some allowed but not full, absent = none.
        let host = hashed::host_mask(&p);
        let lists = build_block_lists(1, 1, sq, sk, BlockSize { q: 32, k: 32 }, |_, _, qp, kv| host(0, 0, qp, kv));
        for r in 0..sq.div_ceil(32) {
            for c in 0..sk.div_ceil(32) {
                let (mut any, mut all) = (false, true);
                for i in r * 32..((r + 1) * 32).min(sq) {
                    for j in c * 32..((c + 1) * 32).min(sk) {
                        let a = rust(i, j);
                        any |= a;
                        all &= a;
                    }
                }
                let full = lists.full(0, 0, r).contains(&(c as i32));
                let partial = lists.partial(0, 0, r).contains(&(c as i32));
                let complete = (r + 1) * 32 <= sq && (c + 1) * 32 <= sk;
                prop_assert_eq!(full, all && complete, "block ({}, {}) full", r, c);
                prop_assert_eq!(partial, any && !(all && complete), "block ({}, {}) partial", r, c);
            }
        }

        // Kernel: one-hot values reveal the allowed set per row.
        let q = Tensor4::from_fn(Shape4::new(1, 1, sq, 128), |_, _, i, d| ((i * 7 + d * 3) % 5) as f32 * 0.1);
        let k = Tensor4::from_fn(Shape4::new(1, 1, sk, 128), |_, _, j, d| ((j * 11 + d) % 7) as f32 * 0.1);
        let v = Tensor4::from_fn(Shape4::new(1, 1, sk, 128), |_, _, j, d| if j == d { 1.0 } else { 0.0 });
        let inputs = Inputs::new(q, k, v);
        let params = Hashed::params(&p);
        let run = Hashed::simulate(&Hashed::default_tile(), &inputs, &params).unwrap();
        for i in 0..sq {
            let row = run.output.row(0, 0, i);
            let mut n = 0;
            for (j, &o) in row.iter().enumerate().take(sk) {
                let a = rust(i, j);
                n += usize::from(a);
                prop_assert_eq!(o > 0.0, a, "query {} key {}: out {}", i, j, o);
            }
            prop_assert_eq!(run.output.lse_at(0, 0, i) == f64::NEG_INFINITY, n == 0, "row {} empty", i);
        }
        // And the kernel agrees with the reference as a whole.
        Hashed::check(&Hashed::default_tile(), &inputs, &params, &Backend::sim()).unwrap();
    }
}
