attnforge::kernel! {
    pub K { mask: document, dtype: f32, head_dim: 64, sparse_block: 32, tune: { block_m: [64], block_n: [32] } }
}
fn main() {}
