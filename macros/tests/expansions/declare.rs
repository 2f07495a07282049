//! The generated item: spec, name, search space (declared lists filtered by `valid()`),
//! CUDA per tile, typed run-time parameters with the user function's values and twin.
use attnforge::exec::UserValue;

#[attnforge::mask]
fn doc_causal(q: u32, kv: u32, doc: &[u32]) -> bool {
    kv <= q && doc[q as usize] == doc[kv as usize]
}

attnforge::kernel! {
    /// Causal attention inside documents, with tanh softcapping.
    pub DocSoftcap {
        mask: doc_causal, score: softcap(30.0), dtype: bf16, head_dim: 128, gqa: true,
        tune: { block_m: [64, 128], block_n: [64, 128], warps: [4, 8] },
    }
    pub(crate) Plain { causal: true, dtype: f16, head_dim: 64 }
}

pub fn main() {
    let spec = DocSoftcap::spec();
    assert!(spec.gqa);
    assert_eq!(DocSoftcap::name(), "flash_fwd_mask_doc_causal_softcap_d128_bf16_gqa");
    let space = DocSoftcap::search_space();
    assert!(!space.is_empty() && space.len() <= 8);
    for t in &space {
        assert!(t.valid(&spec, attnforge::codegen::tile::Arch::Sm80).is_ok());
        let k = DocSoftcap::cuda(t).unwrap();
        assert!(k.source.contains("bool doc_causal(int b, int h, long long q_pos"));
    }
    let doc = [0u32, 0, 1, 1];
    let p = DocSoftcap::params(&doc_causal::Params::new(&doc));
    assert_eq!(p.softcap, Some(30.0));
    assert_eq!(p.user.get("doc"), Some(&UserValue::Ints(vec![0, 0, 1, 1])));
    let twin = p.host_mask.as_ref().unwrap();
    assert!(twin(0, 0, 1, 0) && !twin(0, 0, 2, 1) && !twin(0, 0, 0, 1));
    assert_eq!(Plain::name(), "flash_fwd_causal_d64_f16");
    assert_eq!(Plain::search_space(), attnforge::codegen::tile::default_search_space(&Plain::spec(), attnforge::codegen::tile::Arch::Sm80));
}
