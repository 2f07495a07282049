#[attnforge_macros::mask]
fn forgot(q: u32, kv: u32) {}

fn main() {}
