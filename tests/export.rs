//! Export and import: a store written by the runtime (snapshots, pending operations, a dead
//! letter, a quarantined record, a deleted actor's marks, a space no feature uses yet) moves
//! between backends and back with the same bytes; a bad stream, or a store that is not empty,
//! imports nothing.

#[macro_use]
mod common;

use std::path::Path;

use common::{Ledger, LedgerMsg, ledger_key, spawn_ledger};
use ractor::{Actor, call};
use ractor_persist::{
    ActorCommit, ActorKey, ImportMode, MemoryStore, RedbStore, Space, SpawnPersistent, SqliteStore,
    Start, Storage, Store, TransferError, export, import, transfer,
};

/// Builds a store through the runtime, with every kind of record and mark in it.
async fn build_source(path: &Path) {
    let storage = Storage::new(RedbStore::open(path).unwrap());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    call!(alice, LedgerMsg::AddKept, 1).unwrap();
    call!(alice, LedgerMsg::AddKept, 2).unwrap();
    call!(alice, LedgerMsg::Add, 5).unwrap();
    let bob = spawn_ledger(&storage, "bob", Ledger::default()).await;
    call!(bob, LedgerMsg::AddKept, 3).unwrap();
    let carol = spawn_ledger(&storage, "carol ü 🦀", Ledger::default()).await;
    call!(carol, LedgerMsg::AddKept, 4).unwrap();
    for a in [alice, bob, carol] {
        a.stop_and_wait(None, None).await.unwrap();
    }
    // Bob is deleted: only his marks stay.
    Ledger::delete_persistent(&storage, "bob").await.unwrap();
    storage.close().await.unwrap();

    // Carol's snapshot is damaged and quarantined on request; she starts again.
    let store = RedbStore::open(path).unwrap();
    let carol_key = ledger_key("carol ü 🦀");
    let epoch = store.open_actor(&carol_key, &[]).unwrap().epoch;
    let dave = ActorKey::new("", "dave");
    let dave_epoch = store.open_actor(&dave, &[]).unwrap().epoch;
    store
        .commit(&[
            ActorCommit::new(carol_key, epoch).put(Space::SNAPSHOT, 0, b"damaged".to_vec()),
            // Rows the runtime does not read: a dead letter's bytes, a space no feature uses.
            ActorCommit::new(dave, dave_epoch)
                .put(Space::OPS, 7, b"a dead letter, kind 5".to_vec())
                .put(Space::new(42), u64::MAX, vec![0xff; 3000])
                .raise_floor(4096),
        ])
        .unwrap();
    store.close().unwrap();
    let storage = Storage::new(RedbStore::open(path).unwrap());
    let start = Start::new(&storage, "carol ü 🦀", ()).quarantine_undecodable();
    let (carol, _) = Actor::spawn(None, Ledger::default(), start).await.unwrap();
    call!(carol, LedgerMsg::AddKept, 10).unwrap();
    carol.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

fn export_bytes(store: &dyn Store) -> Vec<u8> {
    let mut out = Vec::new();
    export(store, &mut out).expect("export");
    out
}

/// The source store's stream, built once per test.
async fn source_stream(dir: &tempfile::TempDir) -> Vec<u8> {
    let path = dir.path().join("source.redb");
    build_source(&path).await;
    let store = RedbStore::open(&path).unwrap();
    let bytes = export_bytes(&store);
    store.close().unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_through_other_backends_gives_the_same_bytes_and_the_same_actors() {
    let dir = tempfile::tempdir().unwrap();
    let a = source_stream(&dir).await;

    // redb -> memory -> redb.
    let memory = MemoryStore::new();
    let stats = import(&memory, &mut &a[..], ImportMode::IntoEmpty).unwrap();
    assert_eq!(
        (stats.actors, stats.bytes),
        (4, a.len() as u64),
        "{stats:?}"
    );
    let b = export_bytes(&memory);
    assert_eq!(a, b, "memory exports what redb exported");
    let back = dir.path().join("back.redb");
    {
        let store = RedbStore::open(&back).unwrap();
        import(&store, &mut &b[..], ImportMode::IntoEmpty).unwrap();
        assert_eq!(
            export_bytes(&store),
            a,
            "redb -> memory -> redb, byte for byte"
        );
        store.close().unwrap();
    }

    // redb -> SQLite -> redb, through files as a user would.
    let lite = dir.path().join("moved.sqlite");
    {
        let store = SqliteStore::open(&lite).unwrap();
        import(&store, &mut &a[..], ImportMode::IntoEmpty).unwrap();
        assert_eq!(export_bytes(&store), a, "SQLite exports what redb exported");
        store.close().unwrap();
    }
    let again = dir.path().join("again.redb");
    {
        let (from, to) = (
            SqliteStore::open(&lite).unwrap(),
            RedbStore::open(&again).unwrap(),
        );
        transfer::copy(&from, &to).unwrap();
        assert_eq!(
            export_bytes(&to),
            a,
            "redb -> SQLite -> redb, byte for byte"
        );
        to.close().unwrap();
    }

    // The actors come back as they were, on SQLite and on the redb copy of the SQLite copy.
    let storage = Storage::new(SqliteStore::open(&lite).unwrap());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    assert_eq!(call!(alice, LedgerMsg::Peek).unwrap(), 8);
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let storage = Storage::new(RedbStore::open(&again).unwrap());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    assert_eq!(call!(alice, LedgerMsg::Peek).unwrap(), 8);
    assert_eq!(call!(alice, LedgerMsg::Pending).unwrap().len(), 2);
    let q = storage.quarantined("ledger").await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].snapshot.as_deref(), Some(&b"damaged"[..]));
    assert_eq!(
        storage.list("ledger").await.unwrap(),
        vec!["alice", "carol ü 🦀"]
    );
    // Bob's marks came along: a new bob takes ids above the deleted one's.
    let bob = spawn_ledger(&storage, "bob", Ledger::default()).await;
    assert_eq!(call!(bob, LedgerMsg::Peek).unwrap(), 0, "bob was deleted");
    call!(bob, LedgerMsg::AddKept, 1).unwrap();
    assert!(
        call!(bob, LedgerMsg::Pending).unwrap()[0] >= 1,
        "ids do not repeat"
    );
    for a in [alice, bob] {
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_level_export_and_import_move_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = source_stream(&dir).await;
    let from = Storage::new(RedbStore::open(dir.path().join("source.redb")).unwrap());
    let (w, r) = std::sync::mpsc::channel::<Vec<u8>>();
    struct Sink(std::sync::mpsc::Sender<Vec<u8>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.send(b.to_vec()).unwrap();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let stats = from.export(Sink(w)).await.unwrap();
    let streamed: Vec<u8> = r.iter().flatten().collect();
    assert_eq!(streamed, a);
    assert_eq!(stats.bytes, a.len() as u64);
    from.close().await.unwrap();
    let memory = MemoryStore::new();
    let to = Storage::new(memory.clone());
    to.import(std::io::Cursor::new(a.clone()), ImportMode::IntoEmpty)
        .await
        .unwrap();
    to.close().await.unwrap();
    assert_eq!(export_bytes(&memory), a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_a_store_that_is_not_empty_is_refused_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let a = source_stream(&dir).await;
    let target = MemoryStore::new();
    let storage = Storage::new(target.clone());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    call!(alice, LedgerMsg::Add, 100).unwrap();
    let zed = spawn_ledger(&storage, "zed", Ledger::default()).await;
    call!(zed, LedgerMsg::AddKept, 1).unwrap();
    for a in [alice, zed] {
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
    let before = export_bytes(&target);

    let err = import(&target, &mut &a[..], ImportMode::IntoEmpty).unwrap_err();
    let TransferError::NotEmpty { keys, first, .. } = &err else {
        panic!("expected NotEmpty, got {err}")
    };
    assert_eq!((*keys, first), (2, &ledger_key("alice")));
    assert!(err.to_string().contains("ImportMode::Replace"), "{err}");
    assert_eq!(export_bytes(&target), before, "nothing written");

    // Asked: the stream's keys replace the stored ones; zed stays.
    import(&target, &mut &a[..], ImportMode::Replace).unwrap();
    let storage = Storage::new(target.clone());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    assert_eq!(
        call!(alice, LedgerMsg::Peek).unwrap(),
        8,
        "alice is the stream's"
    );
    let zed = spawn_ledger(&storage, "zed", Ledger::default()).await;
    assert_eq!(call!(zed, LedgerMsg::Peek).unwrap(), 1, "zed is untouched");
    for a in [alice, zed] {
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_stream_is_a_typed_error_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = source_stream(&dir).await;
    let target = MemoryStore::new();
    for len in 0..a.len() {
        let err = import(&target, &mut &a[..len], ImportMode::IntoEmpty)
            .expect_err("a truncated stream must be refused");
        match err {
            TransferError::Truncated { offset, .. } => assert_eq!(offset, len as u64),
            TransferError::NotAStream { .. } if len < 8 => {}
            other => panic!("cut at {len}: {other}"),
        }
        assert!(target.scan().unwrap().is_empty(), "cut at {len}: written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stream_is_a_typed_error_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = source_stream(&dir).await;
    let target = MemoryStore::new();
    // Every byte, one bit at a time (the bit moves with the position).
    for i in 0..a.len() {
        let mut bad = a.clone();
        bad[i] ^= 1 << (i % 8);
        let err = import(&target, &mut &bad[..], ImportMode::IntoEmpty)
            .expect_err("a damaged stream must be refused");
        assert!(
            matches!(
                err,
                TransferError::Corrupt { .. }
                    | TransferError::Truncated { .. }
                    | TransferError::NotAStream { .. }
                    | TransferError::UnsupportedVersion { .. }
            ),
            "flip at {i}: {err}"
        );
        assert!(target.scan().unwrap().is_empty(), "flip at {i}: written");
    }
    // A damaged row names its place and its actor.
    let at = a.windows(7).position(|w| w == b"damaged").unwrap();
    let mut bad = a.clone();
    bad[at] ^= 0x20;
    let err = import(&target, &mut &bad[..], ImportMode::IntoEmpty).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("carol ü 🦀") && text.contains("row (quarantine") && text.contains("byte"),
        "the record's own checksum names it: {text}"
    );
}

#[test]
fn foreign_bytes_another_version_and_trailing_bytes_are_refused() {
    let target = MemoryStore::new();
    let mut empty = Vec::new();
    export(&MemoryStore::new(), &mut empty).unwrap();

    let err = import(
        &target,
        &mut &b"SQLite format 3\0"[..],
        ImportMode::IntoEmpty,
    )
    .unwrap_err();
    assert!(
        matches!(&err, TransferError::NotAStream { found } if found == b"S"),
        "{err}"
    );

    let mut v2 = empty.clone();
    v2[8] = 2;
    let err = import(&target, &mut &v2[..], ImportMode::IntoEmpty).unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );

    let mut trailing = empty.clone();
    trailing.push(0);
    let err = import(&target, &mut &trailing[..], ImportMode::IntoEmpty).unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");

    import(&target, &mut &empty[..], ImportMode::IntoEmpty).expect("an empty store's stream");
    assert!(target.scan().unwrap().is_empty());
}
