#[attnforge_macros::mask]
fn matched(q: u32, kv: u32) -> bool {
    match q {
        0 => kv == 0,
        _ => kv <= q,
    }
}

fn main() {}
