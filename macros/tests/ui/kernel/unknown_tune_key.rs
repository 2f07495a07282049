attnforge::kernel! {
    pub K { mask: full, dtype: f32, head_dim: 64, tune: { block_k: [64], stages: [1, 2] } }
}
fn main() {}
