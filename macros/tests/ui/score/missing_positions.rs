#[attnforge_macros::score]
fn alibi(score: f32, h: u32, q: u32) -> f32 {
    score - q as f32
}

fn main() {}
