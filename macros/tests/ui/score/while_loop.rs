#[attnforge_macros::score]
fn decay(score: f32, q: u32, kv: u32) -> f32 {
    let d = q - kv;
    while d > 0 {}
    score
}

fn main() {}
