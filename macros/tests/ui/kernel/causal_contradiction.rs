attnforge::kernel! {
    pub A { mask: prefix_lm(16), causal: true, dtype: f32, head_dim: 64 }
    pub B { mask: local(8, 4), causal: true, dtype: f32, head_dim: 64 }
    pub C { mask: causal_document, causal: false, dtype: f32, head_dim: 64 }
}
fn main() {}
