#[attnforge_macros::score(grad)]
fn plain(score: f32, _q: u32, _kv: u32) -> f32 {
    score
}

fn main() {}
