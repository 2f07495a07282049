attnforge::kernel! {
    pub K { mask: causal, dtype: bf16, head_dim: 128, blocksize: 64 }
}
fn main() {}
