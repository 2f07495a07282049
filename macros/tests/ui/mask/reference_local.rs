#[attnforge_macros::mask]
fn by_ref(q: u32, kv: u32) -> bool {
    let r = &q;
    kv <= *r
}

fn main() {}
