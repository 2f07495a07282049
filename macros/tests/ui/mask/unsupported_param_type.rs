#[attnforge_macros::mask]
fn widened(q: u32, kv: u32, window: f64, doc: &Vec<u32>) -> bool {
    kv <= q
}

fn main() {}
