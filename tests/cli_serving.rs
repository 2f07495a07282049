//! `attnforge check --layout varlen|paged`: catalog variants in the serving layouts on the
//! simulator, the variants a layout cannot serve listed as SKIP with the reason, and the
//! serving layouts refused on a GPU backend.

mod cli_common;

use cli_common::*;

#[test]
fn check_runs_catalog_variants_in_the_serving_layouts() {
    for layout in ["varlen", "paged"] {
        let o = run(&[
            "check",
            "flash_fwd_causal_d64_f16",
            "flash_fwd_local_softcap_d64_f16",
            "--layout",
            layout,
        ]);
        let t = text(&o);
        assert!(o.status.success(), "{layout}: {t}");
        assert!(
            t.contains(&format!("PASS flash_fwd_causal_d64_f16_{layout}__")),
            "{t}"
        );
        assert!(
            t.contains(&format!("PASS flash_fwd_local_softcap_d64_f16_{layout}__")),
            "{t}"
        );
        assert!(t.contains("2 kernels passed"), "{t}");
    }
}

#[test]
fn check_lists_what_a_layout_cannot_serve() {
    let o = run(&["check", "flash_fwd_document_d128_bf16", "--layout", "paged"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("SKIP flash_fwd_document_d128_bf16"), "{t}");
    assert!(t.contains("read through the page table"), "{t}");
    assert!(t.contains("0 kernels passed, 1 skipped"), "{t}");
}

#[test]
fn serving_layouts_are_refused_on_a_gpu_backend() {
    let o = run(&[
        "check",
        "flash_fwd_causal_d64_f16",
        "--layout",
        "varlen",
        "--backend",
        "cuda",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--backend sim"), "{}", text(&o));
}
