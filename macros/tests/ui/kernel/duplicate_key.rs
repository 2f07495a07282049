attnforge::kernel! {
    pub K { mask: causal, dtype: bf16, head_dim: 128, dtype: f16 }
}
fn main() {}
