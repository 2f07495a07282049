//! trybuild UI tests: each `tests/ui/{mask,score,kernel}/*.rs` must fail with its pinned
//! `.stderr`. The cases that must build and run are ordinary tests (`tests/expansions.rs`):
//! with only failing cases trybuild runs `cargo check`, not a full build of every dependency.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/mask/*.rs");
    t.compile_fail("tests/ui/score/*.rs");
    t.compile_fail("tests/ui/kernel/*.rs");
}
