//! The behaviour suite: every promise of the message cycle, run against every backend.

#[macro_use]
mod common;

use std::sync::atomic::Ordering;

use common::{Backend, Event, Faults, Gate, Ledger, LedgerMsg, ledger_key, spawn_ledger};
use ractor::{Actor, ActorProcessingErr, ActorStatus, RpcReplyPort, call};
use ractor_persist::{DecodeReason, LoadError, Persistent, PersistentActor, Start, StoreError, Tx};
use serde::{Deserialize, Serialize};

on_every_backend!(
    restart_restores_last_state_and_replays_pending_in_order_before_new_messages,
    op_whose_perform_never_ran_is_performed_after_restart_with_the_same_id,
    failed_commit_rolls_back_errors_the_caller_and_stores_nothing_partial,
    handler_error_rolls_back_sends_no_reply_and_runs_no_op,
    reply_and_op_wait_for_the_commit_to_return,
    unchanged_state_without_op_changes_writes_nothing,
    confirm_removes_exactly_the_confirmed_op_in_the_same_commit,
    resume_performs_pending_ops_again_in_order,
    second_spawn_of_a_key_fences_the_first,
    undecodable_snapshot_fails_the_spawn_with_a_typed_error_and_keeps_the_bytes,
    snapshot_of_another_type_is_refused,
);

async fn stop(actor: ractor::ActorRef<LedgerMsg>) {
    actor.stop_and_wait(None, None).await.unwrap();
}

async fn restart_restores_last_state_and_replays_pending_in_order_before_new_messages(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let first = Ledger::default();
    let acct = spawn_ledger(&storage, "alice", first.clone()).await;
    let mut expect = 0;
    for n in 1..=5 {
        expect += n;
        assert_eq!(call!(acct, LedgerMsg::AddKept, n).unwrap(), expect);
        assert_eq!(call!(acct, LedgerMsg::Add, 100).unwrap(), expect + 100);
        expect += 100;
    }
    // Ops run after the reply; the next message is handled after they ran.
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), expect);
    // Kept ops are 0, 2, 4, 6, 8; done ops were removed.
    assert_eq!(first.performed().len(), 10);
    stop(acct).await;
    storage.close().await.unwrap();

    let storage = b.open(&faults);
    let second = Ledger::default();
    let acct = spawn_ledger(&storage, "alice", second.clone()).await;
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), expect);
    let events = second.events();
    let replayed: Vec<u64> = second.performed().iter().map(|(id, _)| id.seq()).collect();
    // The done op of the last message may be replayed too: its removal rides on a later commit.
    let kept: Vec<u64> = replayed.iter().copied().filter(|s| s % 2 == 0).collect();
    assert_eq!(kept, vec![0, 2, 4, 6, 8], "kept ops replayed in order");
    assert!(
        replayed.windows(2).all(|w| w[0] < w[1]),
        "replay in sequence order: {replayed:?}"
    );
    assert_eq!(
        events.last(),
        Some(&Event::Handled),
        "replay before the first message"
    );
    assert_eq!(events.iter().filter(|e| **e == Event::Handled).count(), 1);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn op_whose_perform_never_ran_is_performed_after_restart_with_the_same_id(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let first = Ledger::default();
    first.hang.store(true, Ordering::SeqCst);
    let (acct, handle) = Actor::spawn(None, first.clone(), Start::new(&storage, "bob", ()))
        .await
        .unwrap();
    // The reply means committed; the op's perform then never finishes: the crash window.
    assert_eq!(call!(acct, LedgerMsg::Add, 7).unwrap(), 7);
    acct.kill();
    handle.await.unwrap();
    assert!(first.performed().is_empty());
    storage.close().await.unwrap();

    let storage = b.open(&faults);
    let second = Ledger::default();
    let acct = spawn_ledger(&storage, "bob", second.clone()).await;
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), 7);
    let performed = second.performed();
    assert_eq!(performed.len(), 1);
    assert_eq!(performed[0].0.actor(), &ledger_key("bob"));
    assert_eq!(performed[0].0.seq(), 0);
    assert_eq!(performed[0].1.total, 7);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn failed_commit_rolls_back_errors_the_caller_and_stores_nothing_partial(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let first = Ledger::default();
    let (acct, handle) = Actor::spawn(None, first.clone(), Start::new(&storage, "carol", ()))
        .await
        .unwrap();
    assert_eq!(call!(acct, LedgerMsg::AddKept, 1).unwrap(), 1);
    faults.fail_commits.store(true, Ordering::SeqCst);
    assert!(
        call!(acct, LedgerMsg::AddKept, 10).is_err(),
        "a failed commit is never a success"
    );
    handle.await.unwrap();
    assert_eq!(acct.get_status(), ActorStatus::Stopped);
    assert!(
        first.performed().iter().all(|(_, n)| n.total != 11),
        "no op of the failed message ran"
    );
    // After a failed write nobody knows what is on disk: the store refuses further writes.
    faults.fail_commits.store(false, Ordering::SeqCst);
    let err = Actor::spawn(None, Ledger::default(), Start::new(&storage, "dave", ()))
        .await
        .map(|_| ())
        .expect_err("a poisoned store takes no new writers");
    assert!(load_error(err).to_string().contains("reopen"));
    let closed = storage.close().await;
    assert!(
        matches!(closed, Err(StoreError::Poisoned { .. })),
        "{closed:?}"
    );

    let raw = b.raw(&ledger_key("carol"));
    assert_eq!(
        raw.ops().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0]
    );
    let storage = b.open(&faults);
    let second = Ledger::default();
    let acct = spawn_ledger(&storage, "carol", second.clone()).await;
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), 1);
    assert_eq!(call!(acct, LedgerMsg::Pending).unwrap(), vec![0]);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn handler_error_rolls_back_sends_no_reply_and_runs_no_op(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let first = Ledger::default();
    let (acct, handle) = Actor::spawn(None, first.clone(), Start::new(&storage, "erin", ()))
        .await
        .unwrap();
    assert_eq!(call!(acct, LedgerMsg::Add, 3).unwrap(), 3);
    call!(acct, LedgerMsg::Peek).unwrap();
    let commits = faults.commits();
    assert!(call!(acct, LedgerMsg::AddThenFail, 100).is_err());
    handle.await.unwrap();
    assert_eq!(faults.commits(), commits, "a failed handler writes nothing");
    assert!(first.performed().iter().all(|(_, n)| n.total != 103));
    storage.close().await.unwrap();

    let storage = b.open(&faults);
    let acct = spawn_ledger(&storage, "erin", Ledger::default()).await;
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), 3);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn reply_and_op_wait_for_the_commit_to_return(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let ledger = Ledger::default();
    let acct = spawn_ledger(&storage, "frank", ledger.clone()).await;
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *faults.gate.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let (port, mut reply) = ractor::concurrency::oneshot();
    acct.send_message(LedgerMsg::Add(5, RpcReplyPort::from(port)))
        .unwrap();
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    // The commit is inside the store now and has not returned.
    assert!(
        reply.try_recv().is_err(),
        "reply left before the commit returned"
    );
    assert!(
        ledger.performed().is_empty(),
        "op ran before the commit returned"
    );
    release.send(()).unwrap();
    assert_eq!(reply.await.unwrap(), 5);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn unchanged_state_without_op_changes_writes_nothing(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let acct = spawn_ledger(&storage, "gina", Ledger::default()).await;
    assert_eq!(call!(acct, LedgerMsg::AddKept, 1).unwrap(), 1);
    let before = faults.commits();
    assert_eq!(before, 1);
    for _ in 0..100 {
        assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), 1);
        assert!(!call!(acct, LedgerMsg::Confirm, 42).unwrap());
    }
    assert_eq!(
        faults.commits(),
        before,
        "no store writes for unchanged messages"
    );
    assert_eq!(call!(acct, LedgerMsg::AddKept, 1).unwrap(), 2);
    assert_eq!(faults.commits(), before + 1);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn confirm_removes_exactly_the_confirmed_op_in_the_same_commit(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let acct = spawn_ledger(&storage, "hal", Ledger::default()).await;
    for n in 1..=3 {
        call!(acct, LedgerMsg::AddKept, n).unwrap();
    }
    let commits = faults.commits();
    assert!(call!(acct, LedgerMsg::Confirm, 1).unwrap());
    assert_eq!(
        faults.commits(),
        commits + 1,
        "one commit for the confirmation"
    );
    assert!(
        !call!(acct, LedgerMsg::Confirm, 1).unwrap(),
        "second confirm is a no-op"
    );
    assert_eq!(call!(acct, LedgerMsg::Pending).unwrap(), vec![0, 2]);
    stop(acct).await;
    storage.close().await.unwrap();

    let raw = b.raw(&ledger_key("hal"));
    assert_eq!(
        raw.ops().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 2]
    );
    let storage = b.open(&faults);
    let second = Ledger::default();
    let acct = spawn_ledger(&storage, "hal", second.clone()).await;
    call!(acct, LedgerMsg::Peek).unwrap();
    let seqs: Vec<u64> = second.performed().iter().map(|(id, _)| id.seq()).collect();
    assert_eq!(seqs, vec![0, 2]);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn resume_performs_pending_ops_again_in_order(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let ledger = Ledger::default();
    let acct = spawn_ledger(&storage, "ivy", ledger.clone()).await;
    for n in 1..=3 {
        call!(acct, LedgerMsg::AddKept, n).unwrap();
    }
    call!(acct, LedgerMsg::Peek).unwrap();
    ledger.log.lock().unwrap().clear();
    let commits = faults.commits();
    assert_eq!(call!(acct, LedgerMsg::Resume).unwrap(), 3);
    call!(acct, LedgerMsg::Peek).unwrap();
    assert_eq!(faults.commits(), commits, "resume itself writes nothing");
    let seqs: Vec<u64> = ledger.performed().iter().map(|(id, _)| id.seq()).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    stop(acct).await;
    storage.close().await.unwrap();
}

async fn second_spawn_of_a_key_fences_the_first(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let (old, old_handle) = Actor::spawn(None, Ledger::default(), Start::new(&storage, "jo", ()))
        .await
        .unwrap();
    assert_eq!(call!(old, LedgerMsg::Add, 1).unwrap(), 1);
    let new = spawn_ledger(&storage, "jo", Ledger::default()).await;
    assert!(
        call!(old, LedgerMsg::Add, 1000).is_err(),
        "the stale instance may not write"
    );
    old_handle.await.unwrap();
    assert_eq!(call!(new, LedgerMsg::Add, 1).unwrap(), 2);
    stop(new).await;
    storage.close().await.unwrap();

    let storage = b.open(&faults);
    let acct = spawn_ledger(&storage, "jo", Ledger::default()).await;
    assert_eq!(call!(acct, LedgerMsg::Peek).unwrap(), 2);
    stop(acct).await;
    storage.close().await.unwrap();
}

fn load_error(e: ractor::SpawnErr) -> LoadError {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => match inner.downcast::<LoadError>() {
            Ok(e) => *e,
            Err(other) => panic!("startup failed with another error: {other}"),
        },
        other => panic!("unexpected spawn error {other}"),
    }
}

async fn undecodable_snapshot_fails_the_spawn_with_a_typed_error_and_keeps_the_bytes(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let acct = spawn_ledger(&storage, "kim", Ledger::default()).await;
    call!(acct, LedgerMsg::Add, 9).unwrap();
    stop(acct).await;
    storage.close().await.unwrap();
    let good = b.raw(&ledger_key("kim")).snapshot().unwrap().to_vec();

    let mut damaged: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"definitely not a record".to_vec()),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("trailing", [good.clone(), vec![0]].concat()),
        ("empty", Vec::new()),
    ];
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    damaged.push(("flipped", flipped));
    let mut newer = good.clone();
    newer[2] = 3;
    damaged.push(("newer format", newer));

    for (what, bytes) in damaged {
        b.plant_snapshot(&ledger_key("kim"), bytes.clone());
        let storage = b.open(&faults);
        let err = Actor::spawn(None, Ledger::default(), Start::new(&storage, "kim", ()))
            .await
            .map(|_| ())
            .expect_err(what);
        match load_error(err) {
            LoadError::Decode(d) => {
                assert_eq!(d.key, ledger_key("kim"), "{what}");
                assert!(d.to_string().contains("ledger/kim"), "{what}: {d}");
                if what == "newer format" {
                    assert!(matches!(
                        d.reason,
                        DecodeReason::UnknownFormat { found: 3, .. }
                    ));
                }
            }
            other => panic!("{what}: expected a decode error, got {other}"),
        }
        storage.close().await.unwrap();
        assert_eq!(
            b.raw(&ledger_key("kim")).snapshot().unwrap().to_vec(),
            bytes,
            "{what}: bytes kept"
        );
    }
}

/// Another actor type that (by mistake) shares the ledger's namespace.
#[derive(Default, Persistent)]
#[persistent(name = "ledger")]
struct Impostor;

#[derive(Serialize, Deserialize)]
struct Wide {
    words: Vec<String>,
    extra: [u64; 4],
}

impl PersistentActor for Impostor {
    type Msg = RpcReplyPort<()>;
    type State = Wide;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Wide, ActorProcessingErr> {
        Ok(Wide {
            words: vec!["alpha".into(), "beta".into()],
            extra: [u64::MAX; 4],
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        port: RpcReplyPort<()>,
        wide: &mut Wide,
    ) -> Result<(), ActorProcessingErr> {
        wide.words.push("gamma".into());
        tx.reply(port, ());
        Ok(())
    }
}

async fn snapshot_of_another_type_is_refused(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let (imp, _) = Impostor::spawn(None, Impostor, Start::new(&storage, "lee", ()))
        .await
        .unwrap();
    ractor::call!(imp, |port| port).unwrap();
    imp.stop_and_wait(None, None).await.unwrap();
    let err = Actor::spawn(None, Ledger::default(), Start::new(&storage, "lee", ()))
        .await
        .map(|_| ())
        .expect_err("another type's snapshot must not load");
    match load_error(err) {
        LoadError::Decode(d) => assert_eq!(d.key, ledger_key("lee")),
        other => panic!("expected a decode error, got {other}"),
    }
    storage.close().await.unwrap();
}
