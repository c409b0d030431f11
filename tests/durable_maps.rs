//! Durable maps: keyed collections kept beside the state, stored one row per entry, written
//! per changed entry in the message's commit, read from memory, undone with a failed message.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

#[macro_use]
mod common;

use common::{Backend, Faults};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, DecodeReason, Loaded, MapError, MemoryStore, PersistentActor, RecordRef,
    Row, RowWrite, Space, SpawnPersistent, Start, Storage, Store, StoreError, Tx,
};
use serde::{Deserialize, Serialize};

/// The actor's own state: small, and unchanged by map writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    messages: u64,
}

enum Msg {
    /// Inserts keys `from..to`, each with the value `key * 2`.
    Fill(u64, u64, RpcReplyPort<usize>),
    Set(u64, u64, RpcReplyPort<bool>),
    Bump(u64, RpcReplyPort<bool>),
    Remove(u64, RpcReplyPort<bool>),
    /// Sets a value, then fails: the change must not stay.
    SetThenFail(u64, u64),
    Get(u64, RpcReplyPort<Option<u64>>),
    Len(RpcReplyPort<usize>),
    /// Takes map "balances" with other types.
    WrongTypes(RpcReplyPort<String>),
    LongName(RpcReplyPort<String>),
    Count(RpcReplyPort<u64>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "mapped")]
struct Mapped;

impl PersistentActor for Mapped {
    type Msg = Msg;
    type State = Meta;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Meta, ActorProcessingErr> {
        Ok(Meta::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        meta: &mut Meta,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Fill(from, to, port) => {
                meta.messages += 1;
                let map = tx.map::<u64, u64>("balances")?;
                for k in from..to {
                    map.insert(k, k * 2);
                }
                let len = map.len();
                tx.reply(port, len);
            }
            Msg::Set(k, v, port) => {
                let replaced = tx.map::<u64, u64>("balances")?.insert(k, v);
                tx.reply(port, replaced);
            }
            Msg::Bump(k, port) => {
                let found = tx.map::<u64, u64>("balances")?.update(&k, |v| *v += 1);
                tx.reply(port, found);
            }
            Msg::Remove(k, port) => {
                let removed = tx.map::<u64, u64>("balances")?.remove(&k);
                tx.reply(port, removed);
            }
            Msg::SetThenFail(k, v) => {
                tx.map::<u64, u64>("balances")?.insert(k, v);
                return Err("failed after the change".into());
            }
            Msg::Get(k, port) => {
                let v = tx.map::<u64, u64>("balances")?.get(&k).copied();
                tx.reply(port, v);
            }
            Msg::Len(port) => {
                let len = tx.map::<u64, u64>("balances")?.len();
                tx.reply(port, len);
            }
            Msg::WrongTypes(port) => {
                tx.map::<u64, u64>("balances")?;
                let err = tx.map::<String, u64>("balances").err();
                tx.reply(port, err.map(|e| e.to_string()).unwrap_or_default());
            }
            Msg::LongName(port) => {
                let name = "n".repeat(ractor_persist::MAX_MAP_NAME + 1);
                let err = tx.map::<u64, u64>(&name).err();
                let text = match err {
                    Some(MapError::NameTooLong { max, .. }) => format!("too long, max {max}"),
                    other => format!("{other:?}"),
                };
                tx.reply(port, text);
            }
            Msg::Count(port) => tx.reply(port, meta.messages),
        }
        Ok(())
    }
}

/// Every commit's writes, in order.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<Vec<RowWrite>>>>);

impl Written {
    fn last(&self) -> Vec<RowWrite> {
        self.0.lock().unwrap().last().cloned().unwrap_or_default()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Counting<S> {
    inner: S,
    written: Written,
}

impl<S: Store> Store for Counting<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        let mut w = self.written.0.lock().unwrap();
        for c in batch {
            w.push(c.writes.clone());
        }
        drop(w);
        self.inner.commit(batch)
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.inner.read(key, space, ids)
    }
}

fn bytes_of(writes: &[RowWrite]) -> usize {
    writes
        .iter()
        .map(|w| match w {
            RowWrite::Put { bytes, .. } => bytes.len(),
            RowWrite::Delete { .. } => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_100000_entries_writes_one_entry_per_commit() {
    let store = MemoryStore::new();
    let written = Written::default();
    let storage = Storage::new(Counting {
        inner: store.clone(),
        written: written.clone(),
    });
    let (a, _) = Mapped::spawn_persistent(&storage, "big", ()).await.unwrap();
    for chunk in 0..10 {
        let len = call!(a, Msg::Fill, chunk * 10_000, (chunk + 1) * 10_000).unwrap();
        assert_eq!(len, (chunk as usize + 1) * 10_000);
    }
    let fill_bytes = bytes_of(&written.last());
    for (i, k) in [500u64, 99_999, 42].into_iter().enumerate() {
        let before = written.count();
        let replaced = call!(a, Msg::Set, k, 7 + i as u64).unwrap();
        assert!(replaced);
        assert_eq!(written.count(), before + 1, "one commit per message");
        let last = written.last();
        assert_eq!(last.len(), 1, "one write: the changed entry, {last:?}");
        let RowWrite::Put { space, bytes, .. } = &last[0] else {
            panic!("expected a put, got {last:?}");
        };
        assert_eq!(*space, Space::MAPS);
        println!(
            "one entry of a 100,000-entry map changed: {} bytes written (filling 10,000 entries wrote {fill_bytes})",
            bytes.len()
        );
        assert!(bytes.len() < 128, "{} bytes for one entry", bytes.len());
    }
    // An update in place and a removal write one row each, too.
    assert!(call!(a, Msg::Bump, 500).unwrap());
    assert!(matches!(
        written.last()[..],
        [RowWrite::Put {
            space: Space::MAPS,
            ..
        }]
    ));
    assert!(call!(a, Msg::Remove, 77).unwrap());
    assert!(matches!(
        written.last()[..],
        [RowWrite::Delete { space: Space::MAPS, first, last }] if first == last
    ));
    // Setting an entry to the value it holds, or a read, writes nothing.
    let before = written.count();
    assert!(call!(a, Msg::Set, 42, 9).unwrap());
    assert_eq!(
        written.count(),
        before,
        "an entry set to its own value costs no write"
    );
    assert_eq!(call!(a, Msg::Get, 500).unwrap(), Some(8));
    assert_eq!(written.count(), before);
    a.stop_and_wait(None, None).await.unwrap();

    let (a, _) = Mapped::spawn_persistent(&storage, "big", ()).await.unwrap();
    assert_eq!(call!(a, Msg::Len).unwrap(), 99_999);
    assert_eq!(call!(a, Msg::Get, 500).unwrap(), Some(8));
    assert_eq!(call!(a, Msg::Get, 99_999).unwrap(), Some(8));
    assert_eq!(call!(a, Msg::Get, 42).unwrap(), Some(9));
    assert_eq!(call!(a, Msg::Get, 77).unwrap(), None);
    assert_eq!(call!(a, Msg::Get, 12_345).unwrap(), Some(24_690));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_leaves_the_map_as_committed() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, _) = Mapped::spawn_persistent(&storage, "undo", ())
        .await
        .unwrap();
    call!(a, Msg::Fill, 0, 10).unwrap();
    let _ = a.cast(Msg::SetThenFail(3, 1000));
    let _ = a.cast(Msg::SetThenFail(50, 1000));
    while a.get_status() != ractor::ActorStatus::Stopped {
        tokio::task::yield_now().await;
    }
    let key = ActorKey::new("mapped", "undo");
    let rows = store.read(&key, Some(Space::MAPS), 0..=u64::MAX).unwrap();
    assert_eq!(rows.len(), 10, "nothing of the failed message was written");
    let (a, _) = Mapped::spawn_persistent(&storage, "undo", ())
        .await
        .unwrap();
    assert_eq!(call!(a, Msg::Get, 3).unwrap(), Some(6));
    assert_eq!(call!(a, Msg::Get, 50).unwrap(), None);
    assert_eq!(call!(a, Msg::Len).unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_read_as_other_types_is_refused_and_kept() {
    let storage = Storage::new(MemoryStore::new());
    let (a, _) = Mapped::spawn_persistent(&storage, "types", ())
        .await
        .unwrap();
    call!(a, Msg::Fill, 0, 3).unwrap();
    let text = call!(a, Msg::WrongTypes).unwrap();
    assert!(text.contains("already uses map `balances`"), "{text}");
    let text = call!(a, Msg::LongName).unwrap();
    assert_eq!(
        text,
        format!("too long, max {}", ractor_persist::MAX_MAP_NAME)
    );
    a.stop_and_wait(None, None).await.unwrap();

    // A new instance whose first use of the map asks for other types: a typed error naming the
    // entry, and the entries stay (the same instance then reads them with the right types).
    #[derive(Default, ractor_persist::Persistent)]
    #[persistent(name = "mapped")]
    struct Retyped;
    impl PersistentActor for Retyped {
        type Msg = RpcReplyPort<(String, usize)>;
        type State = Meta;
        type Op = ();
        type Arguments = ();
        async fn init(&self, _: ()) -> Result<Meta, ActorProcessingErr> {
            Ok(Meta::default())
        }
        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            port: RpcReplyPort<(String, usize)>,
            _: &mut Meta,
        ) -> Result<(), ActorProcessingErr> {
            let err = match tx.map::<String, String>("balances") {
                Err(MapError::Decode(e)) => {
                    assert!(matches!(e.record, RecordRef::MapEntry(_)));
                    assert!(
                        matches!(&e.reason, DecodeReason::MapTypes { map, .. } if map == "balances")
                    );
                    e.to_string()
                }
                other => format!("unexpected: {:?}", other.map(|m| m.len())),
            };
            let len = tx.map::<u64, u64>("balances")?.len();
            tx.reply(port, (err, len));
            Ok(())
        }
    }
    let (b, _) = Retyped::spawn_persistent(&storage, "types", ())
        .await
        .unwrap();
    let (err, len) = call!(b, |port| port).unwrap();
    assert!(
        err.contains("map `balances`") && err.contains("`mapped/types`"),
        "{err}"
    );
    assert_eq!(len, 3);
}

/// Inserts, updates and removals survive a reopen of the store, on every backend, and cost one
/// row each.
async fn map_changes_survive_a_reopen(backend: Backend) {
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let (a, _) = Mapped::spawn_persistent(&storage, "reopen", ())
        .await
        .unwrap();
    call!(a, Msg::Fill, 0, 200).unwrap();
    assert!(call!(a, Msg::Set, 5, 55).unwrap());
    assert!(!call!(a, Msg::Set, 1000, 1).unwrap());
    assert!(call!(a, Msg::Bump, 6).unwrap());
    assert!(call!(a, Msg::Remove, 7).unwrap());
    assert!(!call!(a, Msg::Remove, 7).unwrap());
    assert_eq!(
        call!(a, Msg::Count).unwrap(),
        1,
        "the state changed only once"
    );
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    drop(storage);
    let raw = backend.raw(&ActorKey::new("mapped", "reopen"));
    assert_eq!(raw.space(Space::MAPS).count(), 200);
    let storage = backend.open(&faults);
    let start = Start::new(&storage, "reopen", ());
    let (a, _): (ActorRef<Msg>, _) = Actor::spawn(None, Mapped, start).await.unwrap();
    assert_eq!(call!(a, Msg::Len).unwrap(), 200);
    assert_eq!(call!(a, Msg::Get, 5).unwrap(), Some(55));
    assert_eq!(call!(a, Msg::Get, 6).unwrap(), Some(13));
    assert_eq!(call!(a, Msg::Get, 7).unwrap(), None);
    assert_eq!(call!(a, Msg::Get, 1000).unwrap(), Some(1));
    a.stop_and_wait(None, None).await.unwrap();
}

on_every_backend!(map_changes_survive_a_reopen);
