attnforge::kernel! {
    pub A { family: landmark(mem_freq: 63, mode: inference), dtype: f16, head_dim: 64 }
    pub B { family: landmark(mem_freq: 63, mode: retrieval), dtype: f16, head_dim: 64 }
    pub C { family: landmark(mem_freq: 63, mode: retrieval(k: 4)), dtype: f16, head_dim: 64 }
    pub D { family: landmark(mem_freq: 63, mode: train(top_k: 4)), dtype: f16, head_dim: 64 }
    pub E { family: landmark(mem_freq: 63), dtype: f16, head_dim: 64 }
}
fn main() {}
