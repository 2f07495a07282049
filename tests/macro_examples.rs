//! Runs every numbered example (`examples/NN_*.rs`): each example's `run()` builds its kernels
//! with the macros and checks them on the CPU simulator against the f64 reference (example 11:
//! a `#[score(backward)]` function's parameter gradients against finite differences).
//! (`cargo test` builds the examples but does not run them.)

macro_rules! example {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            #[path = $file]
            #[allow(dead_code)]
            mod ex;
            ex::run().unwrap_or_else(|e| panic!("{}: {e}", $file));
        }
    };
}

example!(ex01_dense, "../examples/01_dense.rs");
example!(ex02_causal_gqa, "../examples/02_causal_gqa.rs");
example!(ex03_sliding_window, "../examples/03_sliding_window.rs");
example!(ex04_document_mask, "../examples/04_document_mask.rs");
example!(ex05_softcap_alibi, "../examples/05_softcap_alibi.rs");
example!(ex06_block_sparse, "../examples/06_block_sparse.rs");
example!(ex07_lm_infinite, "../examples/07_lm_infinite.rs");
example!(ex08_custom_score, "../examples/08_custom_score.rs");
example!(ex09_dynamic, "../examples/09_dynamic.rs");
example!(ex10_chunked_dilated, "../examples/10_chunked_dilated.rs");
example!(ex11_learnable_table, "../examples/11_learnable_table.rs");
