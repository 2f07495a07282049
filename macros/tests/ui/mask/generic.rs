#[attnforge_macros::mask]
fn generic<T: Into<u32>>(q: u32, kv: u32) -> bool {
    kv <= q
}

fn main() {}
