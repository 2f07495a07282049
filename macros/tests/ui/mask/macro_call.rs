#[attnforge_macros::mask]
fn noisy(q: u32, kv: u32) -> bool {
    println!("{q} {kv}");
    kv <= q
}

fn main() {}
