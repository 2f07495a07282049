// Every error is reported at once, and the function itself is still emitted (so `main`
// compiles its call without a cascade of "cannot find function" errors).
#[attnforge_macros::mask]
fn three_mistakes(q: u32, kv: u32, doc: &[u32]) -> bool {
    let d = doc.len();
    let s = vec![1u32];
    kv <= q && q.rotate_left(1) > 0
}

fn main() {
    let _ = three_mistakes(1, 0, &[0, 0]);
}
