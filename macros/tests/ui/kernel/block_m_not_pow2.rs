attnforge::kernel! {
    pub K { mask: causal, dtype: f16, head_dim: 64, tune: { block_m: [40, 64], block_n: [64] } }
}
fn main() {}
