#[attnforge::mask]
fn near(q: i32, kv: i32) -> bool { (q - kv).abs() < 8 }

attnforge::kernel! {
    pub K { mask: causal, score: near, dtype: f32, head_dim: 64 }
}
fn main() {}
