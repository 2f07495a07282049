#[attnforge_macros::score]
fn hyper(score: f32, q: u32, kv: u32) -> f32 {
    score.sinh()
}

fn main() {}
