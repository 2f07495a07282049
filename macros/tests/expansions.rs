//! The macros' expansions that must build and run: each file under `tests/expansions/` is a
//! module whose `main` asserts on what the macros generated (the function and its CUDA, the
//! companion items, the generated kernel item). The cases that must fail to compile are the
//! trybuild tests of `tests/ui.rs`.

// The cases are macro input in the DSL's Rust subset (`h % 2`, not `is_multiple_of`; every
// index parameter a predicate may take) and check the generated constants where a user reads
// them, at run time.
#![allow(
    clippy::manual_is_multiple_of,
    clippy::assertions_on_constants,
    clippy::too_many_arguments
)]

macro_rules! case {
    ($name:ident, $path:literal) => {
        #[path = $path]
        mod $name;

        #[test]
        fn $name() {
            $name::main();
        }
    };
}

case!(control_flow, "expansions/control_flow.rs");
case!(doc_causal, "expansions/doc_causal.rs");
case!(score_backward, "expansions/score_backward.rs");
case!(softcap, "expansions/softcap.rs");
case!(visibility, "expansions/visibility.rs");
case!(declare, "expansions/declare.rs");
case!(dynamic, "expansions/dynamic.rs");
case!(dynamic_longheads, "expansions/dynamic_longheads.rs");
