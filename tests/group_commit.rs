//! Group commit through actors: a failed batch fails and rolls back every actor in it.

#[macro_use]
mod common;

use std::sync::atomic::Ordering;

use common::{Backend, Faults, Gate, Ledger, LedgerMsg, spawn_ledger};
use ractor::{RpcReplyPort, call};

async fn failed_batch_fails_every_actor_in_it_and_each_rolls_back(b: Backend) {
    let faults = Faults::default();
    let storage = b.open(&faults);
    let mut actors = Vec::new();
    for i in 0..8 {
        let a = spawn_ledger(&storage, &format!("acct{i}"), Ledger::default()).await;
        assert_eq!(call!(a, LedgerMsg::Add, 10).unwrap(), 10);
        actors.push(a);
    }
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *faults.gate.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    // Actor 0's commit is held inside the store; it will succeed.
    let (port, first) = ractor::concurrency::oneshot();
    actors[0]
        .send_message(LedgerMsg::Add(1, RpcReplyPort::from(port)))
        .unwrap();
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    // Everything queued behind it fails.
    faults.fail_commits.store(true, Ordering::SeqCst);
    let mut replies = Vec::new();
    for a in &actors[1..] {
        let (port, rx) = ractor::concurrency::oneshot();
        a.send_message(LedgerMsg::Add(5, RpcReplyPort::from(port)))
            .unwrap();
        replies.push(rx);
    }
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap(), 11);
    for rx in replies {
        assert!(
            rx.await.is_err(),
            "no actor of a failed batch is told success"
        );
    }
    for a in &actors[1..] {
        assert!(call!(a, LedgerMsg::Peek).is_err(), "the actor stopped");
    }
    actors[0].stop_and_wait(None, None).await.unwrap();
    assert!(storage.close().await.is_err(), "the store was poisoned");

    faults.fail_commits.store(false, Ordering::SeqCst);
    let storage = b.open(&faults);
    for i in 0..8 {
        let a = spawn_ledger(&storage, &format!("acct{i}"), Ledger::default()).await;
        let expect = if i == 0 { 11 } else { 10 };
        assert_eq!(call!(a, LedgerMsg::Peek).unwrap(), expect, "acct{i}");
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}

on_every_backend!(failed_batch_fails_every_actor_in_it_and_each_rolls_back);
