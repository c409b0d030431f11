//! The derive's mistakes, one per file in `tests/ui/`, each with the errors it must show.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test --test compiletest`
//! and read every one before committing: each error must point at the token at fault.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
