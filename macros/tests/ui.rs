//! trybuild UI tests: each `tests/ui/{mask,score,kernel}/*.rs` must fail with its pinned
//! `.stderr`; each `tests/ui/{pass,kernel_pass}/*.rs` must build and run (it asserts on the
//! function and its CUDA, or on the generated kernel item).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/mask/*.rs");
    t.compile_fail("tests/ui/score/*.rs");
    t.compile_fail("tests/ui/kernel/*.rs");
    t.pass("tests/ui/pass/*.rs");
    t.pass("tests/ui/kernel_pass/*.rs");
}
