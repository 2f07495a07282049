attnforge::kernel! {
    pub K { mask: lm_infinite(4, 64, 64), dtype: f32, head_dim: 64, backward: true }
}
fn main() {}
