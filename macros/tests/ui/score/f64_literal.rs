#[attnforge_macros::score]
fn halve(score: f32, q: u32, kv: u32) -> f32 {
    (score as f64 * 0.5f64) as f32
}

fn main() {}
