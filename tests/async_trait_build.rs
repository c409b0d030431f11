//! The derive in a build where ractor's `async-trait` feature is on.
//!
//! ractor's `Actor` trait takes one of two forms, chosen by ractor's `async-trait` feature:
//! native `async fn` (the default) or `#[async_trait]`. The derive emits the form that
//! persist-core's `async-trait` feature (the facade's `async-trait`) selects. Both forms must
//! compile and work.
//!
//! The async-trait form is checked in a separate crate, `tests/async-trait`, with a
//! `[workspace]` of its own, built here as a subprocess. It cannot live in the main
//! workspace: cargo unifies features, so enabling ractor's `async-trait` for any crate there
//! would switch every crate's expansion to `#[async_trait]`, and the native form, the one
//! most users get, would go untested.

use std::path::Path;
use std::process::Command;

#[test]
fn derive_compiles_and_works_with_ractors_async_trait_feature() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("tests/async-trait/Cargo.toml");
    // A target dir of its own under ours: the outer build holds the lock on its own dirs,
    // and the nested crate's feature set would otherwise evict the outer build's artifacts.
    let target = root.join("target/async-trait-check");
    // The environment is inherited, so CARGO_NET_OFFLINE (and the rest of cargo's
    // configuration) reaches the nested cargo as it reached ours.
    let out = Command::new(env!("CARGO"))
        .arg("test")
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "`cargo test --manifest-path {}` failed ({}).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        manifest.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}
