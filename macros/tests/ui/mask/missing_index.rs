#[attnforge_macros::mask]
fn only_query(q: u32) -> bool {
    q > 3
}

fn main() {}
