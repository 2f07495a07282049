attnforge::kernel! {
    pub Lm { family: landmark(mem_freq: 0, mode: retrieval(top_k: 2000)), dtype: f16, head_dim: 64 }
    pub Hx { family: hax(k_lsh: 0, k_ks: 0, hash_bits: 13), dtype: f16, head_dim: 64 }
    pub HxKs { family: hax(k_lsh: 32, k_ks: 5000, hash_bits: 8), dtype: f16, head_dim: 64 }
    pub Cc { family: cca(group: 0, window: -4), dtype: f16, head_dim: 64 }
    pub Tk { family: topk(sink: 4, recent: 64, k: 0), dtype: f16, head_dim: 64 }
    pub Rc { family: recycled(recycle_size: 0, stride: 0, threshold_milli: 1001, pool: 6), dtype: f16, head_dim: 64 }
    pub Dims { family: cca(group: 16, window: 1024), dtype: f64, head_dim: 96 }
}
fn main() {}
