//! P5 end to end, through ractor: after a failed handler or a failed commit the state the
//! actor holds in memory is the stored one, as a reopened store shows.
//!
//! The actor stops after either failure and ractor drops its state, so memory is observed the
//! only way it can be from outside: the state's `Drop` reports its value, and the last report
//! is what the actor held when it stopped.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use common::{Backend, Faults};
use ractor::{Actor, ActorProcessingErr, RpcReplyPort, call};
use ractor_persist::{Persistent, PersistentActor, Start, Storage, Tx};
use serde::{Deserialize, Serialize};

on_every_backend!(
    memory_after_a_failed_handler_equals_the_reopened_store,
    memory_after_a_failed_commit_equals_the_reopened_store,
);

/// The last value each probe (by key) held when it was dropped.
static LAST_DROPPED: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    key: String,
    total: i64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut last = LAST_DROPPED.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(self.key.clone(), self.total);
    }
}

enum Msg {
    Add(i64, RpcReplyPort<i64>),
    AddThenFail(i64, RpcReplyPort<i64>),
    Peek(RpcReplyPort<i64>),
}

#[derive(Default, Persistent)]
#[persistent(name = "probe")]
struct ProbeActor;

impl PersistentActor for ProbeActor {
    type Msg = Msg;
    type State = Probe;
    type Op = ();
    type Arguments = String;

    async fn init(&self, key: String) -> Result<Probe, ActorProcessingErr> {
        Ok(Probe { key, total: 0 })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        probe: &mut Probe,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Add(n, reply) => {
                probe.total += n;
                tx.reply(reply, probe.total);
            }
            Msg::AddThenFail(n, reply) => {
                probe.total += n;
                tx.reply(reply, probe.total);
                return Err("the handler failed after changing the state".into());
            }
            Msg::Peek(reply) => tx.reply(reply, probe.total),
        }
        Ok(())
    }
}

/// The key of a probe unique to this test and backend.
fn probe_key(test: &str, b: &Backend) -> String {
    let backend = match b {
        Backend::Memory(_) => "memory",
        Backend::Redb(..) => "redb",
        Backend::Sqlite(..) => "sqlite",
        Backend::Postgres(..) => "postgres",
    };
    format!("{test}-{backend}")
}

/// Reopens the store and reads what it holds for `key`.
async fn stored_total(b: &Backend, key: &str) -> i64 {
    let storage = b.open(&Faults::default());
    let (a, _) = Actor::spawn(None, ProbeActor, Start::new(&storage, key, key.to_owned()))
        .await
        .unwrap();
    let total = call!(a, Msg::Peek).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    total
}

fn last_dropped(key: &str) -> Option<i64> {
    LAST_DROPPED.lock().unwrap().get(key).copied()
}

async fn memory_after_a_failed_handler_equals_the_reopened_store(b: Backend) {
    let key = probe_key("handler", &b);
    let storage: Storage = b.open(&Faults::default());
    let (a, handle) = Actor::spawn(None, ProbeActor, Start::new(&storage, &key, key.clone()))
        .await
        .unwrap();
    assert_eq!(call!(a, Msg::Add, 3).unwrap(), 3);
    assert!(call!(a, Msg::AddThenFail, 100).is_err());
    handle.await.unwrap();
    let in_memory = last_dropped(&key).expect("the state was dropped when the actor stopped");
    storage.close().await.unwrap();
    assert_eq!(in_memory, 3, "memory kept the failed handler's change");
    assert_eq!(in_memory, stored_total(&b, &key).await);
}

async fn memory_after_a_failed_commit_equals_the_reopened_store(b: Backend) {
    let key = probe_key("commit", &b);
    let faults = Faults::default();
    let storage = b.open(&faults);
    let (a, handle) = Actor::spawn(None, ProbeActor, Start::new(&storage, &key, key.clone()))
        .await
        .unwrap();
    assert_eq!(call!(a, Msg::Add, 3).unwrap(), 3);
    faults.fail_commits.store(true, Ordering::SeqCst);
    assert!(call!(a, Msg::Add, 10).is_err());
    handle.await.unwrap();
    let in_memory = last_dropped(&key).expect("the state was dropped when the actor stopped");
    assert!(
        storage.close().await.is_err(),
        "the failed commit poisoned the store"
    );
    assert_eq!(in_memory, 3, "memory kept the change whose commit failed");
    assert_eq!(in_memory, stored_total(&b, &key).await);
}
