//! The conformance kit on PostgresStore, each check in a schema of its own on the shared
//! throwaway server (or `PERSIST_PG_URL`).

use persist_postgres::{PostgresStore, TestCluster};

#[test]
fn the_conformance_kit_passes_on_postgres() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    persist_core::testkit::check(|| {
        PostgresStore::open(server.options()).expect("a new PostgreSQL store")
    });
}
