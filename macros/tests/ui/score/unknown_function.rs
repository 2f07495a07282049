fn helper(x: f32) -> f32 {
    x * 2.0
}

#[attnforge_macros::score]
fn doubled(score: f32, q: u32, kv: u32) -> f32 {
    helper(score)
}

fn main() {}
