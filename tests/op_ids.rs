//! Operation ids never repeat for a key, whatever happened to its record: a delete, a
//! quarantine, a restart right after a quarantine, a quarantined snapshot whose header is
//! itself damaged. A receiver that remembers an old id would drop a new operation that reused
//! it as a duplicate.

#[macro_use]
mod common;

use common::{Backend, Faults, Ledger, LedgerMsg, ledger_key, spawn_ledger};
use ractor::{Actor, call};
use ractor_persist::{SpawnPersistent, Start, Storage};

on_every_backend!(
    op_ids_never_repeat_after_a_delete_and_a_respawn,
    op_ids_never_repeat_after_a_quarantine_and_a_restart_before_the_first_write,
    op_ids_never_repeat_after_quarantining_a_snapshot_whose_header_is_damaged,
);

/// Runs `adds` done operations and one kept one on `key`, closes the store (so every done
/// operation's removal is written) and returns the sequence numbers used.
async fn use_ids(b: &Backend, key: &str, adds: i64) -> Vec<u64> {
    let storage = b.open(&Faults::default());
    let ledger = Ledger::default();
    let a = spawn_ledger(&storage, key, ledger.clone()).await;
    call!(a, LedgerMsg::AddKept, 1).unwrap();
    for n in 0..adds {
        call!(a, LedgerMsg::Add, n).unwrap();
    }
    call!(a, LedgerMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    ledger.performed().iter().map(|(id, _)| id.seq()).collect()
}

/// Spawns `key` (with `start` options), adds once, and returns the new operation's number.
async fn next_id(
    storage: &Storage,
    key: &str,
    start: impl FnOnce(Start<Ledger>) -> Start<Ledger>,
) -> u64 {
    let ledger = Ledger::default();
    let (a, _) = Actor::spawn(None, ledger.clone(), start(Start::new(storage, key, ())))
        .await
        .expect("spawn");
    call!(a, LedgerMsg::Add, 1).unwrap();
    call!(a, LedgerMsg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    let performed = ledger.performed();
    performed.last().expect("the new op ran").0.seq()
}

async fn op_ids_never_repeat_after_a_delete_and_a_respawn(b: Backend) {
    let used = use_ids(&b, "del", 3).await;
    assert_eq!(used, vec![0, 1, 2, 3]);
    let storage = b.open(&Faults::default());
    Ledger::delete_persistent(&storage, "del").await.unwrap();
    let next = next_id(&storage, "del", |s| s).await;
    assert!(
        next > *used.iter().max().unwrap(),
        "op #{next} after a delete reuses an id of the deleted actor ({used:?})"
    );
    storage.close().await.unwrap();
    // And the floor was durable: a second delete of a record that never pushed keeps it.
    let storage = b.open(&Faults::default());
    Ledger::delete_persistent(&storage, "del").await.unwrap();
    assert!(next_id(&storage, "del", |s| s).await > next);
    storage.close().await.unwrap();
}

async fn op_ids_never_repeat_after_a_quarantine_and_a_restart_before_the_first_write(b: Backend) {
    // Op 0 stays pending; 1..=3 are done and removed. The snapshot stays intact.
    let used = use_ids(&b, "q1", 3).await;
    let key = ledger_key("q1");
    let ops = b.raw(&key).ops();
    assert_eq!(ops.len(), 1, "only the kept op is stored");
    b.plant_op(&key, ops[0].0, b"a damaged operation".to_vec());

    let storage = b.open(&Faults::default());
    // Opted in: the damaged record is moved aside; this instance stops before any write.
    let (a, _) = Actor::spawn(
        None,
        Ledger::default(),
        Start::new(&storage, "q1", ()).quarantine_undecodable(),
    )
    .await
    .expect("quarantined and started fresh");
    assert_eq!(call!(a, LedgerMsg::Peek).unwrap(), 0);
    a.stop_and_wait(None, None).await.unwrap();
    assert_eq!(storage.quarantined("ledger").await.unwrap().len(), 1);
    storage.close().await.unwrap();

    // A restart: the record is gone, but the floor was written with the quarantine.
    let storage = b.open(&Faults::default());
    let next = next_id(&storage, "q1", |s| s).await;
    assert!(
        next > *used.iter().max().unwrap(),
        "op #{next} after a quarantine and a restart reuses an id ({used:?})"
    );
    storage.close().await.unwrap();
}

async fn op_ids_never_repeat_after_quarantining_a_snapshot_whose_header_is_damaged(b: Backend) {
    // Every op but the kept one was removed, so only the snapshot's header knew the next id.
    let used = use_ids(&b, "q2", 5).await;
    let key = ledger_key("q2");
    let mut raw = b.raw(&key);
    // The kept op is confirmed away, so no stored op tells the used ids either.
    let storage = b.open(&Faults::default());
    let a = spawn_ledger(&storage, "q2", Ledger::default()).await;
    assert!(call!(a, LedgerMsg::Confirm, raw.ops()[0].0).unwrap());
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    raw = b.raw(&key);
    assert!(raw.ops().is_empty());
    // Damage the header's sequence field (bytes 16..24) to 0: the checksum fails, and the
    // field, read unverified, no longer tells the ids used. Only the stored floor does.
    let mut snapshot = raw.snapshot().expect("a snapshot").to_vec();
    snapshot[16..24].fill(0);
    b.plant_snapshot(&key, snapshot);

    let storage = b.open(&Faults::default());
    let next = next_id(&storage, "q2", |s| s.quarantine_undecodable()).await;
    assert!(
        next > *used.iter().max().unwrap(),
        "op #{next} after quarantining a snapshot with a damaged header reuses an id ({used:?})"
    );
    assert_eq!(storage.quarantined("ledger").await.unwrap().len(), 1);
    storage.close().await.unwrap();
}
