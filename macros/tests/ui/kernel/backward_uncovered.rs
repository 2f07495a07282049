#[attnforge::score]
fn halve(score: f32, _q: i64, _kv: i64) -> f32 {
    score * 0.5
}

attnforge::kernel! {
    pub K { mask: causal, score: halve, dtype: f32, head_dim: 64, backward: true }
}
fn main() {}
