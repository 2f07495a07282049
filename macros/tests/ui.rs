//! trybuild UI tests: each `tests/ui/{mask,score}/*.rs` must fail with its pinned `.stderr`;
//! each `tests/ui/pass/*.rs` must build and run (it asserts on the function and its CUDA).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/mask/*.rs");
    t.compile_fail("tests/ui/score/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
