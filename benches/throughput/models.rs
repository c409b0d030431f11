//! State models: a 64 KiB state with one field changed per message, kept three ways (a
//! snapshot-mode state, an event-sourced state, a durable map), measured in the same run for
//! bytes written and CPU per message; and the recovery of an event-sourced actor of 10,000
//! events with and without snapshots.

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, EventSourced, Loaded, MemoryStore, PersistentActor, RedbStore, Row,
    RowWrite, Space, Start, Storage, Store, StoreError, Tx,
};
use serde::{Deserialize, Serialize};

use crate::measure::{count, cpu_time, dur};

/// Slots in the wide state: about 64 KiB encoded.
pub const SLOTS: usize = 1225;
/// Bytes of each slot's memo.
const MEMO: usize = 48;

/// One slot of the wide state: a balance (the field a message changes) and a memo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub balance: u64,
    pub memo: Vec<u8>,
}

/// The 64 KiB state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wide {
    pub slots: Vec<Slot>,
}

fn slot(i: usize) -> Slot {
    Slot {
        balance: i as u64 * 1_000_003,
        memo: (0..MEMO).map(|b| (b * 31 + i) as u8).collect(),
    }
}

fn wide() -> Wide {
    Wide {
        slots: (0..SLOTS).map(slot).collect(),
    }
}

pub enum Msg {
    /// Adds 1 to the balance of slot `i`.
    Credit(usize, RpcReplyPort<u64>),
    /// Emits `n` credits in one message (to build a long journal quickly).
    Many(usize, RpcReplyPort<u64>),
    Sum(RpcReplyPort<u64>),
}

/// The snapshot mode: the whole state is encoded and written by every message.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "bench_snapshot")]
pub struct SnapshotMode;

impl PersistentActor for SnapshotMode {
    type Msg = Msg;
    type State = Wide;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Wide, ActorProcessingErr> {
        Ok(wide())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        st: &mut Wide,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Credit(i, port) => {
                let s = &mut st.slots[i % SLOTS];
                s.balance += 1;
                tx.reply(port, s.balance);
            }
            Msg::Many(..) => unreachable!("only the event-sourced actor takes Many"),
            Msg::Sum(port) => tx.reply(port, st.slots.iter().map(|s| s.balance).sum()),
        }
        Ok(())
    }
}

/// What happened to a slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credited {
    pub slot: u32,
    pub amount: u64,
}

/// The event-sourced mode: a message appends one small event.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "bench_events", event_sourced)]
pub struct EventMode;

impl PersistentActor for EventMode {
    type Msg = Msg;
    type State = Wide;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Wide, ActorProcessingErr> {
        Ok(wide())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        st: &mut Wide,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Credit(i, port) => {
                let slot = (i % SLOTS) as u32;
                tx.emit(st, Credited { slot, amount: 1 })?;
                tx.reply(port, st.slots[slot as usize].balance);
            }
            Msg::Many(n, port) => {
                for i in 0..n {
                    let slot = (i % SLOTS) as u32;
                    tx.emit(st, Credited { slot, amount: 1 })?;
                }
                tx.reply(port, n as u64);
            }
            Msg::Sum(port) => tx.reply(port, st.slots.iter().map(|s| s.balance).sum()),
        }
        Ok(())
    }
}

impl EventSourced for EventMode {
    type Event = Credited;

    fn apply(st: &mut Wide, e: &Credited) -> Result<(), ActorProcessingErr> {
        let s = st.slots.get_mut(e.slot as usize).ok_or("no such slot")?;
        s.balance += e.amount;
        Ok(())
    }
}

/// The durable map: the slots are map entries; the state is a counter of fills.
#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "bench_map")]
pub struct MapMode;

impl PersistentActor for MapMode {
    type Msg = Msg;
    type State = u64;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn post_start(
        &self,
        tx: &mut Tx<'_, Self>,
        filled: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        if *filled == 0 {
            let map = tx.map::<u32, Slot>("slots")?;
            for i in 0..SLOTS {
                map.insert(i as u32, slot(i));
            }
            *filled = 1;
        }
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        _: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        let map = tx.map::<u32, Slot>("slots")?;
        match msg {
            Msg::Credit(i, port) => {
                let k = (i % SLOTS) as u32;
                map.update(&k, |s| s.balance += 1);
                let b = map.get(&k).map_or(0, |s| s.balance);
                tx.reply(port, b);
            }
            Msg::Many(..) => unreachable!("only the event-sourced actor takes Many"),
            Msg::Sum(port) => {
                let sum = map.iter().map(|(_, s)| s.balance).sum();
                tx.reply(port, sum);
            }
        }
        Ok(())
    }
}

/// A memory store that counts the bytes put.
#[derive(Clone)]
struct Counting {
    inner: MemoryStore,
    bytes: Arc<AtomicU64>,
}

impl Store for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        let put: usize = batch
            .iter()
            .flat_map(|c| &c.writes)
            .map(|w| match w {
                RowWrite::Put { bytes, .. } => bytes.len(),
                RowWrite::Delete { .. } => 0,
            })
            .sum();
        self.bytes.fetch_add(put as u64, Ordering::Relaxed);
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

/// Bytes and CPU per message of one model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub bytes: f64,
    pub cpu_us: f64,
}

/// Sends `msgs` credits, one at a time, to a fresh actor of `A` on a counting memory store.
async fn cost<A>(actor: A, msgs: usize) -> Cost
where
    A: ractor::Actor<Msg = Msg, Arguments = Start<A>> + PersistentActor<Arguments = ()>,
{
    let bytes = Arc::new(AtomicU64::new(0));
    let storage = Storage::new(Counting {
        inner: MemoryStore::new(),
        bytes: bytes.clone(),
    });
    // Snapshots every 1,000 events, in the measured run as in production.
    let start = Start::new(&storage, "wide", ());
    let (a, h) = Actor::spawn(None, actor, start).await.expect("spawn");
    // Warm up: the first commits write the first state (and the map's entries).
    for i in 0..50 {
        call!(a, Msg::Credit, i).expect("credit");
    }
    let (b0, c0) = (bytes.load(Ordering::Relaxed), cpu_time());
    for i in 0..msgs {
        call!(a, Msg::Credit, i * 7).expect("credit");
    }
    let (b1, c1) = (bytes.load(Ordering::Relaxed), cpu_time());
    a.stop(None);
    h.await.expect("stopped");
    storage.close().await.expect("close");
    Cost {
        bytes: (b1 - b0) as f64 / msgs as f64,
        cpu_us: (c1 - c0) * 1e6 / msgs as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Recovery times (spawn to first reply) of an event-sourced actor of `events` events on
/// redb: with a snapshot every 1,000 events, and with none after the first.
async fn recovery(dir: &Path, events: usize, reps: usize) -> (Vec<Duration>, Vec<Duration>) {
    let path = dir.join("models-recovery.redb");
    let storage = Storage::new(RedbStore::open(&path).expect("open redb"));
    let mut times = (Vec::new(), Vec::new());
    for (key, every) in [("snapshots", 1_000u64), ("none", u64::MAX)] {
        let start = Start::new(&storage, key, ()).snapshot_every(every);
        let (a, h) = Actor::spawn(None, EventMode, start).await.expect("spawn");
        for _ in 0..events / 100 {
            call!(a, Msg::Many, 100).expect("many");
        }
        a.stop(None);
        h.await.expect("stopped");
        for _ in 0..reps {
            let t = Instant::now();
            let start = Start::new(&storage, key, ()).snapshot_every(every);
            let (a, h) = Actor::spawn(None, EventMode, start).await.expect("respawn");
            let sum = call!(a, Msg::Sum).expect("sum");
            let took = t.elapsed();
            assert!(sum > 0);
            a.stop(None);
            h.await.expect("stopped");
            if every == 1_000 {
                times.0.push(took);
            } else {
                times.1.push(took);
            }
        }
    }
    storage.close().await.expect("close");
    times
}

/// The section: prints the figures and their targets.
pub async fn section(dir: &Path, quick: bool, reps: usize) {
    let msgs = if quick { 1_000 } else { 5_000 };
    let encoded = postcard::to_stdvec(&wide()).expect("encode").len();
    println!(
        "\n== 10. state models: a {} KiB state ({SLOTS} slots of a u64 balance and a {MEMO}-byte memo), one balance changed per message, {msgs} messages one at a time on a MemoryStore that counts the bytes put; medians of {reps}",
        encoded / 1024
    );
    let mut runs: [Vec<Cost>; 3] = Default::default();
    for _ in 0..reps {
        runs[0].push(cost(SnapshotMode, msgs).await);
        runs[1].push(cost(EventMode, msgs).await);
        runs[2].push(cost(MapMode, msgs).await);
    }
    let med = |i: usize| Cost {
        bytes: median(runs[i].iter().map(|c| c.bytes).collect()),
        cpu_us: median(runs[i].iter().map(|c| c.cpu_us).collect()),
    };
    let (snap, events, map) = (med(0), med(1), med(2));
    for (name, c) in [
        ("snapshot mode (baseline)", snap),
        ("event-sourced (snapshot every 1,000 events)", events),
        ("durable map (one entry per slot)", map),
    ] {
        println!(
            "{name:<44} {:>9} B written/msg  {:>8} µs CPU/msg  (bytes x{:.1} fewer, CPU x{:.1} less than snapshot mode)",
            count(c.bytes),
            format!("{:.1}", c.cpu_us),
            snap.bytes / c.bytes.max(1e-9),
            snap.cpu_us / c.cpu_us.max(1e-9),
        );
    }
    for (name, c) in [("event-sourced", events), ("durable map", map)] {
        crate::verdict(
            &format!("{name}: bytes fewer than snapshot mode"),
            snap.bytes / c.bytes.max(1e-9),
            10.0,
            "x",
        );
        crate::verdict(
            &format!("{name}: CPU less than snapshot mode"),
            snap.cpu_us / c.cpu_us.max(1e-9),
            5.0,
            "x",
        );
    }
    let events_n = 10_000;
    let (with, without) = recovery(dir, events_n, reps.max(3)).await;
    let p50 = |v: &[Duration]| crate::measure::percentile(v, 0.5);
    println!(
        "recovery of an event-sourced actor of {} events on redb (spawn to first reply, warm page cache, medians of {}): with a snapshot every 1,000 events (the latest covers all of them) {} | without snapshots (the whole journal applied) {} | x{:.1}",
        count(events_n as f64),
        with.len(),
        dur(p50(&with)),
        dur(p50(&without)),
        p50(&without).as_secs_f64() / p50(&with).as_secs_f64().max(1e-12),
    );
}
