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

#[test]
fn readme_tells_how_to_fix_the_async_trait_and_cluster_errors() {
    let readme = include_str!("../README.md");
    let derive_docs = include_str!("../persist-derive/src/lib.rs");
    for (doc, needle) in [
        (
            readme,
            "error[E0195]: lifetime parameters or bounds on method `pre_start`",
        ),
        (readme, r#"features = ["async-trait"]"#),
        (readme, "impl ractor::Message for CounterMsg {}"),
        (derive_docs, "E0195"),
        (derive_docs, "`async-trait` feature"),
    ] {
        assert!(doc.contains(needle), "missing: {needle}");
    }
}

#[test]
fn readme_shows_the_move_store_one_liner_the_example_runs() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/move_store.rs");
    // Compared without whitespace: rustfmt lays the call out over four lines.
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    let line = squeeze(
        r#"transfer::copy(&RedbStore::open("bank.redb")?, &SqliteStore::open("bank.sqlite")?,)?;"#,
    );
    assert!(
        squeeze(readme).contains(&line),
        "README lacks the one-liner"
    );
    assert!(
        squeeze(example).contains(&line),
        "examples/move_store.rs lacks the one-liner"
    );
    for feature in [
        "`redb`",
        "`sqlite`",
        "`memory`",
        "`testkit`",
        "compression",
        "encryption",
    ] {
        assert!(readme.contains(feature), "README's tables lack {feature}");
    }
}

#[test]
fn readme_has_an_operating_it_section_that_links_the_operations_guide() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Operating it")
        .nth(1)
        .expect("an \"Operating it\" section")
        .split("\n## ")
        .next()
        .unwrap();
    assert!(section.contains("docs/operations.md"));
    assert!(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).exists()
    );
}
