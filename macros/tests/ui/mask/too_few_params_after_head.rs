#[attnforge_macros::mask]
fn head_only(b: u32, h: u32, q: u32) -> bool {
    q > h
}

fn main() {}
