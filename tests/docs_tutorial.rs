//! The tutorial page embeds `examples/04_document_mask.rs` verbatim (the example itself runs in
//! `tests/macro_examples.rs`): fail when the two drift apart.

#[test]
fn tutorial_code_is_the_tested_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/tutorial.md")).expect("docs/tutorial.md");
    let example =
        std::fs::read_to_string(root.join("examples/04_document_mask.rs")).expect("example 04");
    let start = page.find("```rust\n").expect("a rust code block") + "```rust\n".len();
    let end = start + page[start..].find("```").expect("end of the code block");
    assert_eq!(
        &page[start..end],
        example,
        "docs/tutorial.md differs from examples/04"
    );
}
