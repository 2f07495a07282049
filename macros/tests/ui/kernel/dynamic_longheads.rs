attnforge::kernel! {
    pub Few { family: longheads(chunk: 256, chunks_per_query: 2, begin: 4096, theta: 10000), dtype: f16, head_dim: 64 }
    pub Begin { family: longheads(chunk: 256, chunks_per_query: 16, begin: 1000, theta: 10000), dtype: f16, head_dim: 64 }
    pub Missing { family: longheads(chunk: 256, chunks_per_query: 16, begin: 4096), dtype: f16, head_dim: 64 }
}
fn main() {}
