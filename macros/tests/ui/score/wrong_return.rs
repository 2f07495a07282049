#[attnforge_macros::score]
fn keep(score: f32, q: u32, kv: u32) -> bool {
    score > 0.0
}

fn main() {}
