const WINDOW: u32 = 128;

#[attnforge_macros::mask]
fn sliding(q: u32, kv: u32) -> bool {
    kv <= q && q - kv < WINDOW
}

fn main() {}
