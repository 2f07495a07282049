attnforge::kernel! {
    pub Missing { family: hax(k_lsh: 32, hash_bits: 8), dtype: f16, head_dim: 64 }
    pub Unknown { family: cca(group: 16, window: 1024, stride: 2), dtype: f16, head_dim: 64 }
    pub Duplicate { family: topk(sink: 4, recent: 64, k: 64, k: 32), dtype: f16, head_dim: 64 }
    pub Positional { family: cca(16, 1024), dtype: f16, head_dim: 64 }
    pub NoParams { family: topk, dtype: f16, head_dim: 64 }
    pub MergeArgs { family: lse_merge(k: 2), dtype: f16, head_dim: 64 }
    pub NotLiteral { family: topk(sink: SINK, recent: 64, k: 64, split: 1), dtype: f16, head_dim: 64 }
}
fn main() {}
