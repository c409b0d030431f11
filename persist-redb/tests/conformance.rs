//! The conformance kit on RedbStore: in memory, and on a file.

use persist_redb::RedbStore;

persist_core::store_conformance!(in_memory, || RedbStore::in_memory()
    .expect("an in-memory redb store"));

// Each check gets its own file. The directory goes when the closure returns; the open file
// lives on (unlinked) until the store is dropped, which is all a check needs.
persist_core::store_conformance!(on_a_file, || {
    let dir = tempfile::tempdir().expect("a temporary directory");
    RedbStore::open(dir.path().join("kit.redb")).expect("a new redb store")
});
