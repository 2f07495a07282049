attnforge::kernel! {
    pub A { family: landmarks(mem_freq: 63, mode: train), dtype: bf16, head_dim: 128 }
    pub B { family: causal, dtype: f16, head_dim: 64 }
    pub C { family: landmark_train(mem_freq: 63), dtype: f16, head_dim: 64 }
    pub D { family: 3, dtype: f16, head_dim: 64 }
}
fn main() {}
