// An integer computed from the score, turned back into a float, is a step function.
#[attnforge_macros::score(backward)]
fn rounded(score: f32, h: u32, _q: u32, _kv: u32, t: &[f32]) -> f32 {
    let k = score as i32;
    t[h as usize] * score + k as f32
}

fn main() {}
