//! Small API promises a user relies on: a named spawn, ids and pending operations built in a
//! unit test, the redb format error reachable from the facade, and what a `call!` caller sees
//! when the handler fails.

#[macro_use]
mod common;

use common::{Book, Ledger, LedgerMsg, Notify, ledger_key};
use ractor::{MessagingErr, RactorErr, call};
use ractor_persist::{
    FormatError, MemoryStore, OpId, Outcome, Pending, PersistentActor, RedbStore, SpawnPersistent,
    Storage, StoreError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_spawn_registers_the_actor_under_its_name() {
    let storage = Storage::new(MemoryStore::new());
    let (a, _) = Ledger::spawn_persistent_named("ledger-of-alice", &storage, "alice", ())
        .await
        .unwrap();
    let found = ractor::registry::where_is("ledger-of-alice").expect("registered");
    assert_eq!(found.get_id(), a.get_id());
    assert_eq!(call!(a, LedgerMsg::Add, 2).unwrap(), 2);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test]
async fn perform_can_be_unit_tested_with_an_id_built_by_hand() {
    let ledger = Ledger::default();
    let id = OpId::new(ledger_key("alice"), 41);
    assert_eq!(id.to_string(), "ledger/alice#41");
    let op = Pending::new(
        id.clone(),
        Notify {
            total: 5,
            keep: true,
        },
    )
    .with_attempts(2);
    assert_eq!(op.attempts(), 2);
    let outcome = ledger.perform(&op, &Book::default()).await.unwrap();
    assert_eq!(outcome, Outcome::KeepUntilConfirmed);
    assert_eq!(
        ledger.performed(),
        vec![(
            id,
            Notify {
                total: 5,
                keep: true
            }
        )]
    );
}

#[test]
fn the_redb_format_error_is_reachable_from_the_facade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.redb");
    std::fs::write(&path, b"").unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    let StoreError::Backend { source, .. } = &err else {
        panic!("expected a backend error, got {err}");
    };
    assert!(
        matches!(
            source.downcast_ref::<FormatError>(),
            Some(FormatError::EmptyFile)
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_reaches_a_call_as_a_closed_reply_channel() {
    let storage = Storage::new(MemoryStore::new());
    let (a, handle) = Ledger::spawn_persistent(&storage, "bob", ()).await.unwrap();
    let err = call!(a, LedgerMsg::AddThenFail, 1).unwrap_err();
    assert!(
        matches!(err, RactorErr::Messaging(MessagingErr::ChannelClosed)),
        "{err:?}"
    );
    handle.await.unwrap();
    storage.close().await.unwrap();
}
