#[attnforge_macros::mask]
fn mutated(q: u32, kv: u32) -> bool {
    let mut lo = q;
    lo -= 4;
    kv >= lo && kv <= q
}

fn main() {}
