#[attnforge_macros::mask]
fn with_closure(q: u32, kv: u32) -> bool {
    let near = |a: u32, b: u32| a - b < 8;
    kv <= q
}

fn main() {}
