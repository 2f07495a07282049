#[attnforge_macros::score]
fn bias(s: u32, q: u32, kv: u32) -> f32 {
    s as f32
}

fn main() {}
