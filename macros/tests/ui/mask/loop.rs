#[attnforge_macros::mask]
fn windowed(q: u32, kv: u32) -> bool {
    let w = 4;
    for _ in 0..w {}
    kv <= q
}

fn main() {}
