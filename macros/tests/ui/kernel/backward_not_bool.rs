attnforge::kernel! {
    pub K { causal: true, dtype: f32, head_dim: 64, backward: yes }
}
fn main() {}
