#[attnforge::score]
fn bias(score: f32, _q: u32, _kv: u32) -> f32 { score + 1.0 }

attnforge::kernel! {
    pub K { mask: bias, dtype: f32, head_dim: 64 }
}
fn main() {}
