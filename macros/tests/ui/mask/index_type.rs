#[attnforge_macros::mask]
fn float_positions(q: f32, kv: u32) -> bool {
    kv as f32 <= q
}

fn main() {}
