attnforge::kernel! {
    pub A { mask: landmark(mem_freq: 63, mode: train), dtype: f16, head_dim: 64 }
    pub B { mask: topk, dtype: f16, head_dim: 64 }
}
fn main() {}
