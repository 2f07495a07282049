attnforge::kernel! {
    pub A { mask: prefix_lm(-3), dtype: f32, head_dim: 64 }
    pub B { mask: causal, score: softcap(-1.0), dtype: f32, head_dim: 64, scale: -2.0 }
}
fn main() {}
