//! P1 on PostgreSQL: a batch whose statement fails on the server leaves nothing of itself,
//! not even the statements before the failing one (the writes and COMMIT go out pipelined;
//! the server must run them inside the batch's transaction, and turn the COMMIT into a
//! ROLLBACK).

use persist_core::{ActorCommit, ActorKey, Space, Store, StoreError};
use persist_postgres::{PostgresStore, TestCluster};

#[test]
fn a_batch_whose_statement_fails_leaves_nothing_of_itself() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let store = PostgresStore::open(options).unwrap();
    let k = ActorKey::new("atomic", "k");
    let epoch = store.open_actor(&k, &[]).unwrap().epoch;
    store
        .commit(&[ActorCommit::new(k.clone(), epoch)
            .put(Space::SNAPSHOT, 0, b"before".to_vec())
            .put(Space::OPS, 1, b"op1".to_vec())])
        .unwrap();
    // The server refuses any row with id 999 (the stored form of 999: its top bit flipped).
    let mut admin = postgres::Client::connect(&server.params(), postgres::NoTls).unwrap();
    let stored_999 = (999u64 ^ (1 << 63)) as i64;
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.ractor_persist_rows ADD CONSTRAINT no_999 CHECK (id <> {stored_999})"
        ))
        .unwrap();
    // A batch that deletes op 1, puts a new snapshot and op 999 (refused), raises the floor.
    let failed = store.commit(&[ActorCommit::new(k.clone(), epoch)
        .remove(Space::OPS, 1)
        .put(Space::SNAPSHOT, 0, b"after".to_vec())
        .put(Space::OPS, 999, b"op999".to_vec())
        .raise_floor(5_000)]);
    assert!(
        matches!(failed, Err(StoreError::Interrupted { .. })),
        "a refused statement fails the batch: {failed:?}"
    );
    let rows = store.read(&k, None, 0..=u64::MAX).unwrap();
    let found: Vec<(Space, u64, Vec<u8>)> =
        rows.into_iter().map(|r| (r.space, r.id, r.bytes)).collect();
    assert_eq!(
        found,
        vec![
            (Space::SNAPSHOT, 0, b"before".to_vec()),
            (Space::OPS, 1, b"op1".to_vec())
        ],
        "nothing of the failed batch is in the store"
    );
    let marks = store
        .scan()
        .unwrap()
        .into_iter()
        .find(|(key, _)| *key == k)
        .unwrap()
        .1;
    assert!(
        marks.floor < 5_000,
        "the failed batch raised the floor: {marks:?}"
    );
    // The same store writes the next batch.
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.ractor_persist_rows DROP CONSTRAINT no_999"
        ))
        .unwrap();
    store
        .commit(&[ActorCommit::new(k.clone(), epoch).put(Space::OPS, 999, b"op999".to_vec())])
        .unwrap();
}
