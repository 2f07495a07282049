attnforge::kernel! {
    pub K { mask: lm_infinite(4, 64, 64), dtype: f32, head_dim: 256, tune: { block_m: [128], block_n: [128], warps: [8] } }
}
fn main() {}
