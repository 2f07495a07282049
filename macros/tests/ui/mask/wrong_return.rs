#[attnforge_macros::mask]
fn not_a_predicate(q: u32, kv: u32) -> u32 {
    q - kv
}

fn main() {}
