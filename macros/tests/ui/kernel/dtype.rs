attnforge::kernel! {
    pub K { mask: causal, dtype: f64, head_dim: 64 }
}
fn main() {}
