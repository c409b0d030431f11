//! The conformance kit on SqliteStore: in memory, and on a file.

use persist_sqlite::SqliteStore;

persist_core::store_conformance!(in_memory, || SqliteStore::in_memory()
    .expect("an in-memory SQLite store"));

// Each check gets its own file. The directory goes when the closure returns; the open file
// lives on (unlinked) until the store is dropped, which is all a check needs.
persist_core::store_conformance!(on_a_file, || {
    let dir = tempfile::tempdir().expect("a temporary directory");
    SqliteStore::open(dir.path().join("kit.sqlite")).expect("a new SQLite store")
});
