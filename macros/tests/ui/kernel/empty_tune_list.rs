attnforge::kernel! {
    pub K { mask: causal, dtype: f16, head_dim: 64, tune: { block_m: [], warps: [4, 4] } }
}
fn main() {}
