//! The sketch: the function stays callable and its CUDA is reachable by name.
use attnforge_macros::mask;

#[mask]
fn doc_causal(q: u32, kv: u32, doc: &[u32]) -> bool {
    kv <= q && doc[q as usize] == doc[kv as usize]
}

pub fn main() {
    let doc = [0u32, 0, 0, 1, 1, 2];
    assert!(doc_causal(2, 0, &doc));
    assert!(!doc_causal(0, 2, &doc));
    assert!(!doc_causal(3, 2, &doc));
    assert!(doc_causal(4, 3, &doc));

    assert_eq!(doc_causal::NAME, "doc_causal");
    assert_eq!(doc_causal::KIND, "mask");
    assert_eq!(doc_causal::PARAMS, &[("doc", "&[u32]")]);
    assert!(!doc_causal::HAS_BATCH && !doc_causal::HAS_HEAD);
    assert!(doc_causal::CUDA.contains(
        "__device__ __forceinline__ bool doc_causal(int b, int h, long long q_pos, long long kv_pos, const unsigned* doc)"
    ));
    assert!(doc_causal::CUDA.contains("const unsigned q = ((unsigned)q_pos);"));
    assert!(doc_causal::CUDA.contains(
        "return ((kv <= q) && (doc[((long long)((unsigned long long)q))] == doc[((long long)((unsigned long long)kv))]));"
    ));

    // The uniform call used by the reference and the block-list builder.
    let p = doc_causal::Params::new(&doc);
    for q in 0..6i64 {
        for kv in 0..6i64 {
            assert_eq!(
                doc_causal::eval(0, 0, q, kv, &p),
                doc_causal(q as u32, kv as u32, &doc)
            );
        }
    }
}
