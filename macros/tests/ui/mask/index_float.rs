#[attnforge_macros::mask]
fn doc_float(q: u32, kv: u32, doc: &[u32]) -> bool {
    doc[q as f32] == doc[kv as usize]
}

fn main() {}
