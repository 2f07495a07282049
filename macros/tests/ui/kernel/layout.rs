attnforge::kernel! {
    pub A { causal: true, dtype: f16, head_dim: 64, layout: pages }
    pub B { mask: document, dtype: f32, head_dim: 64, layout: paged }
    pub C { causal: true, dtype: f32, head_dim: 64, layout: "varlen", backward: true }
}
fn main() {}
