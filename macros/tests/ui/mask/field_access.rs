pub struct Window {
    pub left: u32,
}

#[attnforge_macros::mask]
fn windowed(q: u32, kv: u32, w: Window) -> bool {
    kv <= q && q - kv <= w.left
}

fn main() {}
