attnforge::kernel! {
    pub K { mask: dilated(2), score: softcap, dtype: f32, head_dim: 64 }
}
fn main() {}
