//! Bytes a receiver writes per commit as the number of its senders grows: the runtime's
//! inbox (one row per sender touched) beside the way before it, a `Seen` kept in the state
//! (encoded whole with every commit).

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, Control, DecodeReason, Delivery, Inbound, Loaded, Marks, MemoryStore,
    OpId, Persistent, PersistentActor, Row, RowWrite, Seen, Space, SpawnPersistent, Storage, Store,
    StoreError, Tx,
};
use serde::{Deserialize, Serialize};

/// A store that counts the bytes written for one actor key.
#[derive(Clone)]
struct Counting {
    inner: MemoryStore,
    key: ActorKey,
    bytes: Arc<AtomicU64>,
    commits: Arc<AtomicU64>,
}

impl Store for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        for c in batch.iter().filter(|c| c.key.as_ref() == &self.key) {
            let put: usize = c
                .writes
                .iter()
                .map(|w| match w {
                    RowWrite::Put { bytes, .. } => bytes.len(),
                    RowWrite::Delete { .. } => 0,
                })
                .sum();
            if put > 0 {
                self.bytes.fetch_add(put as u64, Ordering::Relaxed);
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
        }
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

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.inner.keys(namespace, space)
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.inner.scan()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Note(u64);

pub enum RelayMsg {
    Send(String, u64),
    Persist(Control<()>),
}

/// Sends notes to the sink with `Tx::send`.
#[derive(Default, Persistent)]
#[persistent(name = "relay")]
pub struct Relay;

impl PersistentActor for Relay {
    type Msg = RelayMsg;
    type State = u64;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: RelayMsg,
        sent: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        if let RelayMsg::Send(to, n) = msg {
            *sent += 1;
            tx.send_to::<Sink, _>(&to, &Note(n))?;
        }
        Ok(())
    }

    fn control(msg: RelayMsg) -> Result<Control<()>, RelayMsg> {
        match msg {
            RelayMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<()>) -> Option<RelayMsg> {
        Some(RelayMsg::Persist(c))
    }
}

pub enum SinkMsg {
    /// A note from a relay, through the runtime's inbox.
    Note,
    /// A note carrying the sender's op id, deduplicated with `Seen` in the state.
    Seen(OpId),
    Count(RpcReplyPort<u64>),
    Persist(Control<()>),
}

#[derive(Default, Serialize, Deserialize)]
pub struct SinkState {
    applied: u64,
    seen: Seen,
}

/// Applies notes: from relays through the runtime's inbox, or deduplicated with `Seen`.
#[derive(Default, Persistent)]
#[persistent(name = "sink")]
pub struct Sink;

impl PersistentActor for Sink {
    type Msg = SinkMsg;
    type State = SinkState;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<SinkState, ActorProcessingErr> {
        Ok(SinkState::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: SinkMsg,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Note => state.applied += 1,
            SinkMsg::Seen(id) => {
                if state.seen.record(&id) == Delivery::New {
                    state.applied += 1;
                }
            }
            SinkMsg::Count(reply) => tx.reply(reply, state.applied),
            SinkMsg::Persist(_) => {}
        }
        Ok(())
    }

    fn control(msg: SinkMsg) -> Result<Control<()>, SinkMsg> {
        match msg {
            SinkMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<()>) -> Option<SinkMsg> {
        Some(SinkMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<SinkMsg, DecodeReason> {
        msg.decode::<Note>().map(|_| SinkMsg::Note)
    }
}

/// Waits until the sink applied `n` notes (a condition poll: each call is handled after the
/// notes already in its mailbox).
async fn until_applied(sink: &ActorRef<SinkMsg>, n: u64) {
    loop {
        if call!(sink, SinkMsg::Count).expect("count") >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Bytes per receiver commit: (runtime inbox, `Seen` in the state), with `senders` senders
/// known to the receiver and `msgs` messages applied, each from one sender.
pub async fn bytes_per_commit(senders: usize, msgs: usize) -> (f64, f64) {
    let key = ActorKey::new("sink", "r");
    let counting = Counting {
        inner: MemoryStore::new(),
        key,
        bytes: Arc::default(),
        commits: Arc::default(),
    };
    let storage = Storage::new(counting.clone());
    let (sink, _) = Sink::spawn_persistent(&storage, "r", ())
        .await
        .expect("spawn the sink");
    let mut relays = Vec::with_capacity(senders);
    for s in 0..senders {
        let (relay, _) = Relay::spawn_persistent(&storage, format!("s{s:04}"), ())
            .await
            .expect("spawn a relay");
        relay
            .send_message(RelayMsg::Send("r".into(), 0))
            .expect("send");
        relays.push(relay);
    }
    until_applied(&sink, senders as u64).await;
    let (b0, c0) = (
        counting.bytes.load(Ordering::Relaxed),
        counting.commits.load(Ordering::Relaxed),
    );
    for m in 0..msgs {
        relays[m % senders]
            .send_message(RelayMsg::Send("r".into(), m as u64))
            .expect("send");
        // One at a time: each commit of the receiver applies one message.
        until_applied(&sink, (senders + m + 1) as u64).await;
    }
    let inbox = (counting.bytes.load(Ordering::Relaxed) - b0) as f64
        / (counting.commits.load(Ordering::Relaxed) - c0) as f64;
    for relay in relays {
        relay.stop_and_wait(None, None).await.expect("stop");
    }
    sink.stop_and_wait(None, None).await.expect("stop");

    storage.close().await.expect("close");

    // The baseline: every sender known to a `Seen` in the receiver's state, on a store of
    // its own.
    let seen_store = Counting {
        inner: MemoryStore::new(),
        key: ActorKey::new("sink", "r"),
        bytes: Arc::default(),
        commits: Arc::default(),
    };
    let storage = Storage::new(seen_store.clone());
    let (sink, _) = Sink::spawn_persistent(&storage, "r", ())
        .await
        .expect("spawn");
    for s in 0..senders {
        let id = OpId::new(ActorKey::new("relay", format!("s{s:04}")), 1);
        sink.send_message(SinkMsg::Seen(id)).expect("send");
    }
    until_applied(&sink, senders as u64).await;
    let (b0, c0) = (
        seen_store.bytes.load(Ordering::Relaxed),
        seen_store.commits.load(Ordering::Relaxed),
    );
    for m in 0..msgs {
        let id = OpId::new(
            ActorKey::new("relay", format!("s{:04}", m % senders)),
            2 + m as u64,
        );
        sink.send_message(SinkMsg::Seen(id)).expect("send");
    }
    until_applied(&sink, (senders + msgs) as u64).await;
    let seen = (seen_store.bytes.load(Ordering::Relaxed) - b0) as f64
        / (seen_store.commits.load(Ordering::Relaxed) - c0) as f64;
    sink.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");
    (inbox, seen)
}
