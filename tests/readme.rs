//! The README shows the quickstart example; this keeps the two the same.

#[test]
fn readme_shows_the_quickstart_example_verbatim() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/quickstart.rs");
    assert!(
        readme.contains(example),
        "README.md's quickstart differs from examples/quickstart.rs"
    );
    assert!(readme.contains("cargo run --example quickstart"));
    assert!(readme.contains("cargo test --workspace"));
    let ci = include_str!("../.ci/run");
    assert!(
        ci.contains("cargo test --workspace\n"),
        ".ci/run runs the README's test command"
    );
}
