#[attnforge::mask]
fn doc_eq(q: u32, kv: u32, doc: &[u32]) -> bool { doc[q as usize] == doc[kv as usize] }

attnforge::kernel! {
    pub K { mask: doc_eq, dtype: f32, head_dim: 100 }
}

fn main() {
    // The item exists despite the error: these uses add no errors.
    let _ = K::params(&doc_eq::Params::new(&[0, 0]));
    let _ = K::search_space();
}
