attnforge::kernel! {
    pub Lm {
        family: landmark(mem_freq: 63, mode: train),
        dtype: f16,
        head_dim: 64,
        mask: causal,
        score: softcap(30.0),
        causal: true,
        gqa: true,
        scale: 0.125,
        sparse_block: 64,
        tune: { block_m: [64] },
        window: 4,
        family: cca(group: 16, window: 1024),
    }
    pub NoTypes { family: lse_merge }
}
fn main() {}
