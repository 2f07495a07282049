#[attnforge_macros::mask(fast)]
fn causal(q: u32, kv: u32) -> bool {
    kv <= q
}

fn main() {}
