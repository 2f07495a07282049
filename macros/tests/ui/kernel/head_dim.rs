attnforge::kernel! {
    pub K { mask: causal, dtype: bf16, head_dim: 96 }
}
fn main() {}
