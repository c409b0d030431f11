//! Deleting and listing actors, quarantine on request, and one process per store file.

#[macro_use]
mod common;

use common::{Backend, Faults, Ledger, LedgerMsg, ledger_key, spawn_ledger};
use ractor::{Actor, call};
use ractor_persist::{LoadError, RedbStore, SpawnPersistent, Start, StoreError};

on_every_backend!(
    delete_removes_state_and_pending_ops_at_once_and_fences_a_running_instance,
    list_names_the_keys_of_one_namespace,
    quarantine_on_request_keeps_the_original_bytes_and_starts_fresh,
);

async fn delete_removes_state_and_pending_ops_at_once_and_fences_a_running_instance(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let (acct, handle) = Actor::spawn(None, Ledger::default(), Start::new(&storage, "del", ()))
        .await
        .unwrap();
    for n in 1..=3 {
        call!(acct, LedgerMsg::AddKept, n).unwrap();
    }
    let keep = spawn_ledger(&storage, "keep", Ledger::default()).await;
    call!(keep, LedgerMsg::AddKept, 5).unwrap();

    Ledger::delete_persistent(&storage, "del").await.unwrap();
    // The running instance may not write after the delete.
    assert!(call!(acct, LedgerMsg::Add, 1).is_err());
    handle.await.unwrap();
    keep.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    let raw = b.raw(&ledger_key("del"));
    assert_eq!(raw.snapshot(), None, "snapshot deleted");
    assert!(raw.ops().is_empty(), "pending ops deleted");
    let other = b.raw(&ledger_key("keep"));
    assert!(
        other.snapshot().is_some() && other.ops().len() == 1,
        "others untouched"
    );

    let storage = b.open(&faults);
    let fresh = Ledger::default();
    let acct = spawn_ledger(&storage, "del", fresh.clone()).await;
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), 0, "starts from init");
    assert!(
        fresh.performed().is_empty(),
        "no op of the deleted actor comes back"
    );
    acct.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

async fn list_names_the_keys_of_one_namespace(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    for key in ["carol", "alice", "bob"] {
        let a = spawn_ledger(&storage, key, Ledger::default()).await;
        call!(a, LedgerMsg::Add, 1).unwrap();
        a.stop_and_wait(None, None).await.unwrap();
    }
    // Spawned but never changed: no state stored, not listed.
    let idle = spawn_ledger(&storage, "idle", Ledger::default()).await;
    idle.stop_and_wait(None, None).await.unwrap();
    assert_eq!(
        Ledger::list_persistent(&storage).await.unwrap(),
        vec!["alice", "bob", "carol"]
    );
    assert!(storage.list("another").await.unwrap().is_empty());
    Ledger::delete_persistent(&storage, "bob").await.unwrap();
    assert_eq!(
        Ledger::list_persistent(&storage).await.unwrap(),
        vec!["alice", "carol"]
    );
    storage.close().await.unwrap();
}

async fn quarantine_on_request_keeps_the_original_bytes_and_starts_fresh(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let a = spawn_ledger(&storage, "q", Ledger::default()).await;
    call!(a, LedgerMsg::AddKept, 4).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let damaged = b"not a ledger at all".to_vec();
    b.plant_snapshot(&ledger_key("q"), damaged.clone());
    let op_bytes = b.raw(&ledger_key("q")).ops();
    assert_eq!(op_bytes.len(), 1);

    // The default: the spawn fails and nothing moves.
    let storage = b.open(&faults);
    let err = Actor::spawn(None, Ledger::default(), Start::new(&storage, "q", ()))
        .await
        .map(|_| ())
        .expect_err("undecodable");
    let ractor::SpawnErr::StartupFailed(e) = err else {
        panic!("unexpected {err}")
    };
    assert!(matches!(
        e.downcast_ref::<LoadError>(),
        Some(LoadError::Decode(_))
    ));
    assert!(storage.quarantined("ledger").await.unwrap().is_empty());

    // Opted in: the record moves aside whole and the actor starts from init.
    let fresh = Ledger::default();
    let start = Start::new(&storage, "q", ()).quarantine_undecodable();
    let (a, _) = Actor::spawn(None, fresh.clone(), start).await.unwrap();
    assert_eq!(call!(a, LedgerMsg::Peek).unwrap(), 0);
    assert!(
        fresh.performed().is_empty(),
        "ops of the quarantined record do not run"
    );
    assert_eq!(call!(a, LedgerMsg::AddKept, 1).unwrap(), 1);
    let pending = call!(a, LedgerMsg::Pending).unwrap();
    assert!(
        pending[0] > op_bytes[0].0,
        "op ids are not reused after a quarantine"
    );
    a.stop_and_wait(None, None).await.unwrap();
    let q = storage.quarantined("ledger").await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].key, ledger_key("q"));
    assert_eq!(
        q[0].snapshot.as_deref(),
        Some(&damaged[..]),
        "original bytes kept"
    );
    assert_eq!(q[0].ops, op_bytes);
    assert!(q[0].reason.contains("ledger/q"), "{}", q[0].reason);
    storage.close().await.unwrap();
}

const CHILD_PATH: &str = "RACTOR_PERSIST_CHILD_STORE";

#[test]
fn a_second_process_on_the_same_file_gets_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.redb");
    let held = RedbStore::open(&path).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "second_process_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_PATH, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("child: refused:"), "{stdout}");
    assert!(
        stdout.contains(&path.display().to_string()),
        "names the file: {stdout}"
    );
    drop(held);
}

#[test]
#[ignore = "run by a_second_process_on_the_same_file_gets_a_typed_error as a child process"]
fn second_process_child() {
    let path = std::env::var(CHILD_PATH).expect("run by the parent test");
    match RedbStore::open(&path) {
        Ok(_) => panic!("a second process opened a held store"),
        Err(e @ StoreError::Backend { .. }) => println!("child: refused: {e}"),
        Err(e) => panic!("not the expected error: {e:?}"),
    }
}
