#[attnforge_macros::mask]
fn parity(q: u32, kv: u32) -> bool {
    (q ^ kv).count_ones() % 2 == 0
}

fn main() {}
