//! Stores written by each released format must keep loading.
//!
//! `tests/golden/format1.redb` was written by envelope format 1 on redb format
//! `ractor-persist/redb/1`. To write the files of a new format (never to overwrite an old
//! one): `RACTOR_PERSIST_WRITE_GOLDEN=1 cargo test --test golden -- --ignored`.

mod common;

use std::path::{Path, PathBuf};

use common::{Ledger, LedgerMsg, golden_copy, ledger_key, spawn_ledger};
use ractor::{Actor, call};
use ractor_persist::{ActorCommit, RedbStore, Space, SpawnPersistent, Start, Storage, Store};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// What format 1's file holds: alice with 3 changes and 2 ops kept until confirmed (one of
/// them confirmed), bob with 1 change.
const ALICE_TOTAL: i64 = 1 + 20 + 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the golden files of the current format; see the module docs"]
async fn write_golden_files() {
    if std::env::var_os("RACTOR_PERSIST_WRITE_GOLDEN").is_none() {
        panic!("set RACTOR_PERSIST_WRITE_GOLDEN=1 to write the golden files");
    }
    let path = golden("format1.redb");
    assert!(!path.exists(), "golden files are never overwritten");
    let storage = Storage::new(RedbStore::open(&path).unwrap());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    call!(alice, LedgerMsg::AddKept, 1).unwrap();
    call!(alice, LedgerMsg::AddKept, 20).unwrap();
    call!(alice, LedgerMsg::AddKept, 300).unwrap();
    assert!(call!(alice, LedgerMsg::Confirm, 1).unwrap());
    let bob = spawn_ledger(&storage, "bob", Ledger::default()).await;
    call!(bob, LedgerMsg::Add, 7).unwrap();
    call!(bob, LedgerMsg::Peek).unwrap();
    alice.stop_and_wait(None, None).await.unwrap();
    bob.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_store_loads_with_its_state_and_pending_ops() {
    // Opening writes to a redb file, so each test works on a copy.
    let dir = tempfile::tempdir().unwrap();
    let copy = golden_copy(&dir);
    let storage = Storage::new(RedbStore::open(&copy).unwrap());
    let alice_actor = Ledger::default();
    let alice = spawn_ledger(&storage, "alice", alice_actor.clone()).await;
    assert_eq!(call!(alice, LedgerMsg::Peek).unwrap(), ALICE_TOTAL);
    assert_eq!(call!(alice, LedgerMsg::Pending).unwrap(), vec![0, 2]);
    let replayed: Vec<(u64, i64)> = alice_actor
        .performed()
        .iter()
        .map(|(id, n)| (id.seq(), n.total))
        .collect();
    assert_eq!(replayed, vec![(0, 1), (2, ALICE_TOTAL)]);
    let bob = spawn_ledger(&storage, "bob", Ledger::default()).await;
    assert_eq!(call!(bob, LedgerMsg::Peek).unwrap(), 7);
    // New ids go on from the stored sequence.
    call!(alice, LedgerMsg::AddKept, 1).unwrap();
    assert_eq!(call!(alice, LedgerMsg::Pending).unwrap(), vec![0, 2, 3]);
    alice.stop_and_wait(None, None).await.unwrap();
    bob.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_floors_keeps_ids_unique_across_a_delete() {
    // bob used op #0 (done and removed): only his snapshot's header knows it.
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(RedbStore::open(golden_copy(&dir)).unwrap());
    Ledger::delete_persistent(&storage, "bob").await.unwrap();
    let ledger = Ledger::default();
    let bob = spawn_ledger(&storage, "bob", ledger.clone()).await;
    assert_eq!(
        call!(bob, LedgerMsg::Add, 1).unwrap(),
        1,
        "starts from init"
    );
    call!(bob, LedgerMsg::Peek).unwrap();
    let seqs: Vec<u64> = ledger.performed().iter().map(|(id, _)| id.seq()).collect();
    assert_eq!(seqs, vec![1], "op #0 of the deleted bob is not reused");
    bob.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_floors_keeps_ids_unique_across_a_quarantine_and_a_restart() {
    // alice holds ops #0 and #2 and her header names #3 next; damage op #2.
    let dir = tempfile::tempdir().unwrap();
    let path = golden_copy(&dir);
    {
        let store = RedbStore::open(&path).unwrap();
        let key = ledger_key("alice");
        let epoch = store.open_actor(&key, &Space::RECORD).unwrap().epoch;
        store
            .commit(&[ActorCommit::new(key, epoch).put(Space::OPS, 2, b"damaged".to_vec())])
            .unwrap();
        store.close().unwrap();
    }
    let storage = Storage::new(RedbStore::open(&path).unwrap());
    let start = Start::new(&storage, "alice", ()).quarantine_undecodable();
    let (alice, _) = Actor::spawn(None, Ledger::default(), start).await.unwrap();
    assert_eq!(call!(alice, LedgerMsg::Peek).unwrap(), 0, "started fresh");
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    // Restarted before the fresh alice wrote anything: the quarantine wrote the floor.
    let storage = Storage::new(RedbStore::open(&path).unwrap());
    let alice = spawn_ledger(&storage, "alice", Ledger::default()).await;
    call!(alice, LedgerMsg::AddKept, 1).unwrap();
    assert_eq!(call!(alice, LedgerMsg::Pending).unwrap(), vec![3]);
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}
