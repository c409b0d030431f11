//! Event-sourced actors: events appended in the message's commit, recovery from the latest
//! snapshot plus the events after it, compaction, migrations of old events, the journal read
//! back in order, and the bad input a start refuses (a rejected event, a gap, a snapshot that
//! disagrees with the journal).

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[macro_use]
mod common;

use common::{Backend, Faults, decode_error};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, DecodeReason, EventError, EventSourced, JournalError, Loaded, Marks,
    MemoryStore, PersistentActor, RecordRef, Retention, Row, Space, SpawnPersistent, Start,
    Storage, Store, StoreError, Stored, Tx,
};
use serde::{Deserialize, Serialize};

/// The account's state, built only from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    balance: u64,
    deposits: u64,
    withdrawals: u64,
    /// Every amount in order: a state whose equality says the events were applied in order.
    trail: Vec<i64>,
}

/// What happened to an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Entry {
    Deposited(u64),
    Withdrew(u64),
}

/// Whether `apply` refuses withdrawals of exactly 13 (to plant a refusal on replay).
static STRICT: AtomicBool = AtomicBool::new(false);

fn apply_entry(state: &mut Account, event: &Entry) -> Result<(), ActorProcessingErr> {
    match *event {
        Entry::Deposited(n) => {
            state.balance += n;
            state.deposits += 1;
            state.trail.push(n as i64);
        }
        Entry::Withdrew(n) => {
            if n > state.balance {
                return Err(
                    format!("withdrawal of {n} exceeds the balance {}", state.balance).into(),
                );
            }
            if n == 13 && STRICT.load(Ordering::SeqCst) {
                return Err("13 is refused".into());
            }
            state.balance -= n;
            state.withdrawals += 1;
            state.trail.push(-(n as i64));
        }
    }
    Ok(())
}

enum Msg {
    Deposit(u64, RpcReplyPort<u64>),
    Withdraw(u64, RpcReplyPort<Result<u64, String>>),
    /// Emits a deposit, then fails the handler: nothing may stay.
    DepositThenFail(u64),
    Get(RpcReplyPort<Account>),
    /// Deposits and pushes an op; replies with the op's sequence number.
    DepositNoted(u64, RpcReplyPort<u64>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "es_account", event_sourced)]
struct Ledger;

impl PersistentActor for Ledger {
    type Msg = Msg;
    type State = Account;
    type Op = u64;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Account, ActorProcessingErr> {
        Ok(Account::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        state: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Deposit(n, port) => {
                tx.emit(state, Entry::Deposited(n))?;
                tx.reply(port, state.balance);
            }
            Msg::Withdraw(n, port) => match tx.emit(state, Entry::Withdrew(n)) {
                Ok(_) => tx.reply(port, Ok(state.balance)),
                Err(EventError::Rejected { source, .. }) => tx.reply(port, Err(source.to_string())),
                Err(e) => return Err(e.into()),
            },
            Msg::DepositThenFail(n) => {
                tx.emit(state, Entry::Deposited(n))?;
                return Err("the handler failed after emitting".into());
            }
            Msg::Get(port) => tx.reply(port, state.clone()),
            Msg::DepositNoted(n, port) => {
                tx.emit(state, Entry::Deposited(n))?;
                let id = tx.push(n)?;
                tx.reply(port, id.seq());
            }
        }
        Ok(())
    }
}

impl EventSourced for Ledger {
    type Event = Entry;

    fn apply(state: &mut Account, event: &Entry) -> Result<(), ActorProcessingErr> {
        apply_entry(state, event)
    }
}

/// The amounts a test sends: deposits, and every fourth a withdrawal (some refused).
fn script(n: u64) -> Vec<(bool, u64)> {
    (0..n)
        .map(|i| (i % 4 == 3, (i * 7919 + 11) % 97 + 1))
        .collect()
}

async fn drive(actor: &ActorRef<Msg>, steps: &[(bool, u64)]) {
    for (withdraw, n) in steps {
        if *withdraw {
            let _ = call!(actor, Msg::Withdraw, *n).unwrap();
        } else {
            call!(actor, Msg::Deposit, *n).unwrap();
        }
    }
}

async fn spawn(storage: &Storage, key: &str, every: u64, retention: Retention) -> ActorRef<Msg> {
    let start = Start::new(storage, key, ())
        .snapshot_every(every)
        .retention(retention);
    Actor::spawn(None, Ledger, start).await.unwrap().0
}

async fn state(actor: &ActorRef<Msg>) -> Account {
    call!(actor, Msg::Get).unwrap()
}

/// The state the journal's events build from `init`'s, folded by hand.
fn fold(events: &[(u64, Entry)]) -> Account {
    let mut state = Account::default();
    for (_, e) in events {
        apply_entry(&mut state, e).unwrap();
    }
    state
}

/// Recovery from the latest snapshot and the events after it equals the fold of the whole
/// journal over `init`'s state, on every backend; the events read back are numbered 1..=n.
async fn snapshot_and_tail_equal_the_whole_journal(backend: Backend) {
    let faults = Faults::default();
    let storage = backend.open(&faults);
    let steps = script(53);
    let a = spawn(&storage, "alice", 10, Retention::Full).await;
    drive(&a, &steps).await;
    let before = state(&a).await;
    a.stop_and_wait(None, None).await.unwrap();
    let events = storage.events::<Ledger>("alice", 1).await.unwrap();
    let numbers: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        fold(&events),
        before,
        "the whole journal folds to the state"
    );
    storage.close().await.unwrap();
    drop(storage);

    // The snapshot covers 50 of the events; a start applies the 3 after it (or fewer if
    // some withdrawals were refused and emitted nothing).
    let raw = backend.raw(&ActorKey::new("es_account", "alice"));
    assert_eq!(raw.space(Space::JOURNAL).count(), events.len());
    let storage = backend.open(&faults);
    let a = spawn(&storage, "alice", 10, Retention::Full).await;
    assert_eq!(state(&a).await, before, "snapshot + tail = whole journal");
    // And from the events after a point on, for a projection.
    let tail = storage.events::<Ledger>("alice", 40).await.unwrap();
    assert_eq!(tail[..], events[39..]);
    a.stop_and_wait(None, None).await.unwrap();
}

on_every_backend!(snapshot_and_tail_equal_the_whole_journal);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_snapshots_replays_the_whole_journal_to_the_same_state() {
    let store = MemoryStore::new();
    let steps = script(40);
    let storage = Storage::new(store.clone());
    let with = spawn(&storage, "with", 4, Retention::Full).await;
    let without = spawn(&storage, "without", u64::MAX, Retention::Full).await;
    drive(&with, &steps).await;
    drive(&without, &steps).await;
    with.stop_and_wait(None, None).await.unwrap();
    without.stop_and_wait(None, None).await.unwrap();
    let with = spawn(&storage, "with", 4, Retention::Full).await;
    let without = spawn(&storage, "without", u64::MAX, Retention::Full).await;
    let (a, b) = (state(&with).await, state(&without).await);
    assert_eq!(a, b);
    assert_eq!(a, fold(&storage.events::<Ledger>("with", 1).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_retention_compacts_and_keeps_the_state() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, "light", 5, Retention::Light).await;
    let steps: Vec<(bool, u64)> = (1..=23).map(|n| (false, n)).collect();
    drive(&a, &steps).await;
    let before = state(&a).await;
    a.stop_and_wait(None, None).await.unwrap();
    let key = ActorKey::new("es_account", "light");
    let journal: Vec<u64> = store
        .read(&key, Some(Space::JOURNAL), 0..=u64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        journal,
        vec![21, 22, 23],
        "events up to the snapshot at 20 are gone"
    );
    let a = spawn(&storage, "light", 5, Retention::Light).await;
    assert_eq!(state(&a).await, before, "compaction keeps the state");
    match storage.events::<Ledger>("light", 1).await {
        Err(JournalError::Compacted {
            first: 21, from: 1, ..
        }) => {}
        other => panic!("expected Compacted from 21, got {other:?}"),
    }
    let tail = storage.events::<Ledger>("light", 21).await.unwrap();
    assert_eq!(
        tail,
        vec![
            (21, Entry::Deposited(21)),
            (22, Entry::Deposited(22)),
            (23, Entry::Deposited(23))
        ]
    );
    a.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_emits_nothing_writes_nothing_and_a_failed_one_leaves_nothing() {
    let faults = Faults::default();
    let backend = Backend::memory();
    let storage = backend.open(&faults);
    let a = spawn(&storage, "quiet", 100, Retention::Full).await;
    call!(a, Msg::Deposit, 5).unwrap();
    let commits = faults.commits();
    let refused = call!(a, Msg::Withdraw, 1000).unwrap();
    assert!(refused.is_err(), "apply refused the overdraft");
    let _ = state(&a).await;
    assert_eq!(faults.commits(), commits, "no event, no op: no write (P6)");
    let _ = a.cast(Msg::DepositThenFail(9));
    // The handler's failure stops the actor (as ractor does); its event is gone with it.
    while a.get_status() != ractor::ActorStatus::Stopped {
        tokio::task::yield_now().await;
    }
    let a = spawn(&storage, "quiet", 100, Retention::Full).await;
    assert_eq!(state(&a).await.balance, 5);
    let events = storage.events::<Ledger>("quiet", 1).await.unwrap();
    assert_eq!(events, vec![(1, Entry::Deposited(5))]);
}

// ---- An older event version migrates ---------------------------------------------------

/// Version 1 of the event: deposits only, in cents as a u32.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum EntryV1 {
    Deposited(u32),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Total(u64);

enum V1Msg {
    Deposit(u32, RpcReplyPort<u64>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "versioned", event_sourced)]
struct LedgerV1;

impl PersistentActor for LedgerV1 {
    type Msg = V1Msg;
    type State = Total;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Total, ActorProcessingErr> {
        Ok(Total(0))
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: V1Msg,
        state: &mut Total,
    ) -> Result<(), ActorProcessingErr> {
        let V1Msg::Deposit(n, port) = msg;
        tx.emit(state, EntryV1::Deposited(n))?;
        tx.reply(port, state.0);
        Ok(())
    }
}

impl EventSourced for LedgerV1 {
    type Event = EntryV1;

    fn apply(state: &mut Total, event: &EntryV1) -> Result<(), ActorProcessingErr> {
        let EntryV1::Deposited(n) = event;
        state.0 += u64::from(*n);
        Ok(())
    }
}

/// Version 2: the same journal, events now carry a memo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum EntryV2 {
    Deposited { amount: u64, memo: String },
}

enum V2Msg {
    Deposit(u64, RpcReplyPort<u64>),
    Get(RpcReplyPort<u64>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "versioned", version = 2, event_sourced)]
struct LedgerV2;

impl PersistentActor for LedgerV2 {
    type Msg = V2Msg;
    type State = Total;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Total, ActorProcessingErr> {
        Ok(Total(0))
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: V2Msg,
        state: &mut Total,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            V2Msg::Deposit(amount, port) => {
                let memo = "v2".to_owned();
                tx.emit(state, EntryV2::Deposited { amount, memo })?;
                tx.reply(port, state.0);
            }
            V2Msg::Get(port) => tx.reply(port, state.0),
        }
        Ok(())
    }
}

impl EventSourced for LedgerV2 {
    type Event = EntryV2;

    fn apply(state: &mut Total, event: &EntryV2) -> Result<(), ActorProcessingErr> {
        let EntryV2::Deposited { amount, .. } = event;
        state.0 += amount;
        Ok(())
    }

    fn migrate_event(stored: Stored<'_>) -> Result<EntryV2, DecodeReason> {
        match stored.schema() {
            1 => {
                let EntryV1::Deposited(n) = stored.decode_declared::<EntryV1>()?;
                Ok(EntryV2::Deposited {
                    amount: u64::from(n),
                    memo: "migrated".to_owned(),
                })
            }
            _ => stored.decode_unchanged("event"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_an_older_version_migrates() {
    let storage = Storage::new(MemoryStore::new());
    // Snapshots never come after the first commit's: the start replays every v1 event.
    fn start<A: PersistentActor<Arguments = ()>>(s: &Storage) -> Start<A> {
        Start::new(s, "m", ()).snapshot_every(u64::MAX)
    }
    let (v1, _) = Actor::spawn(None, LedgerV1, start(&storage)).await.unwrap();
    for n in [3, 4, 5] {
        call!(v1, V1Msg::Deposit, n).unwrap();
    }
    v1.stop_and_wait(None, None).await.unwrap();
    let (v2, _) = Actor::spawn(None, LedgerV2, start(&storage)).await.unwrap();
    assert_eq!(
        call!(v2, V2Msg::Get).unwrap(),
        12,
        "v1 events replayed through the migration"
    );
    assert_eq!(call!(v2, V2Msg::Deposit, 10).unwrap(), 22);
    v2.stop_and_wait(None, None).await.unwrap();
    let events = storage.events::<LedgerV2>("m", 1).await.unwrap();
    let memos: Vec<String> = events
        .iter()
        .map(|(_, EntryV2::Deposited { memo, .. })| memo.clone())
        .collect();
    assert_eq!(memos, ["migrated", "migrated", "migrated", "v2"]);
    // The old code refuses the newer events rather than guessing.
    let err = Actor::spawn(None, LedgerV1, start(&storage))
        .await
        .unwrap_err();
    let err = decode_error(err);
    assert!(
        matches!(err.reason, DecodeReason::UnknownSchema { .. }),
        "{err}"
    );
}

// ---- Bad input: a start refuses, naming the key and the event ---------------------------

/// Writes `n` deposits of 1..=n (and a withdrawal of 13 at `n + 1` when asked) to `key`,
/// snapshotting every `every`, and stops.
async fn history(store: &MemoryStore, key: &str, n: u64, every: u64, thirteen: bool) {
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, key, every, Retention::Full).await;
    let steps: Vec<(bool, u64)> = (1..=n).map(|i| (false, i)).collect();
    drive(&a, &steps).await;
    if thirteen {
        call!(a, Msg::Withdraw, 13).unwrap().unwrap();
    }
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

/// Changes rows of `key` behind the runtime's back (taking an epoch as a writer would).
fn tamper(store: &MemoryStore, key: &str, f: impl FnOnce(ActorCommit, &Loaded) -> ActorCommit) {
    let key = ActorKey::new("es_account", key);
    let loaded = store.open_actor(&key, &Space::RECORD).unwrap();
    let commit = f(ActorCommit::new(key, loaded.epoch), &loaded);
    store.commit(&[commit]).unwrap();
}

async fn start_error(store: &MemoryStore, key: &str) -> ractor_persist::DecodeError {
    let storage = Storage::new(store.clone());
    let err = Actor::spawn(None, Ledger, Start::new(&storage, key, ()))
        .await
        .unwrap_err();
    decode_error(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_apply_refuses_on_replay_fails_the_start_naming_key_and_sequence() {
    let store = MemoryStore::new();
    history(&store, "strict", 6, 1000, true).await;
    STRICT.store(true, Ordering::SeqCst);
    let err = start_error(&store, "strict").await;
    STRICT.store(false, Ordering::SeqCst);
    assert_eq!(err.key, ActorKey::new("es_account", "strict"));
    assert_eq!(err.record, RecordRef::Event(7));
    assert!(
        matches!(&err.reason, DecodeReason::EventRejected { reason } if reason.contains("13")),
        "{err}"
    );
    assert!(err.to_string().contains("journal event #7"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_with_a_gap_is_refused() {
    let store = MemoryStore::new();
    history(&store, "gap", 15, 10, false).await;
    tamper(&store, "gap", |c, _| c.remove(Space::JOURNAL, 12));
    let err = start_error(&store, "gap").await;
    assert_eq!(err.record, RecordRef::Event(12));
    assert!(
        matches!(
            err.reason,
            DecodeReason::JournalGap {
                after: 11,
                found: Some(13),
                last: 15
            }
        ),
        "{err}"
    );
    // The reader refuses it too.
    let storage = Storage::new(store.clone());
    assert!(matches!(
        storage.events::<Ledger>("gap", 1).await,
        Err(JournalError::Decode(_))
    ));
    // A journal missing its last events (the head says 15) is a gap as well.
    let store = MemoryStore::new();
    history(&store, "short", 15, 10, false).await;
    tamper(&store, "short", |c, _| c.remove(Space::JOURNAL, 15));
    let err = start_error(&store, "short").await;
    assert!(
        matches!(
            err.reason,
            DecodeReason::JournalGap {
                after: 14,
                found: None,
                last: 15
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_disagrees_with_the_journal_is_refused() {
    // The snapshot of another history (covering 10 events) planted beside a head that names
    // the one at 20.
    let store = MemoryStore::new();
    history(&store, "older", 12, 10, false).await;
    history(&store, "newer", 25, 10, false).await;
    let older = store
        .read(
            &ActorKey::new("es_account", "older"),
            Some(Space::JOURNAL_SNAPSHOT),
            0..=0,
        )
        .unwrap()
        .remove(0)
        .bytes;
    tamper(&store, "newer", |c, _| {
        c.put(Space::JOURNAL_SNAPSHOT, 0, older)
    });
    let err = start_error(&store, "newer").await;
    assert_eq!(err.record, RecordRef::Snapshot);
    assert!(
        matches!(
            err.reason,
            DecodeReason::SnapshotMismatch {
                snapshot: 10,
                head: 20,
                last: 25
            }
        ),
        "{err}"
    );
    // A head without a snapshot, and events without a head, are refused as well.
    tamper(&store, "newer", |c, _| c.remove(Space::JOURNAL_SNAPSHOT, 0));
    let err = start_error(&store, "newer").await;
    assert!(matches!(err.reason, DecodeReason::WrongModel(_)), "{err}");
    tamper(&store, "older", |c, _| c.remove(Space::SNAPSHOT, 0));
    let err = start_error(&store, "older").await;
    assert!(matches!(err.reason, DecodeReason::WrongModel(_)), "{err}");
    // Nothing was overwritten by the refused starts.
    let key = ActorKey::new("es_account", "newer");
    assert_eq!(
        store
            .read(&key, Some(Space::JOURNAL), 0..=u64::MAX)
            .unwrap()
            .len(),
        25
    );
}

// ---- A snapshot-mode actor and an event-sourced one do not read each other ---------------

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "es_account")]
struct SnapshotLedger;

impl PersistentActor for SnapshotLedger {
    type Msg = Msg;
    type State = Account;
    type Op = u64;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Account, ActorProcessingErr> {
        Ok(Account::default())
    }

    async fn handle(
        &self,
        _: &mut Tx<'_, Self>,
        _: Msg,
        _: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// `SnapshotLedger` implements `EventSourced` without the derive's `event_sourced`: its
/// events would never be journaled, so `emit` refuses.
impl EventSourced for SnapshotLedger {
    type Event = Entry;

    fn apply(state: &mut Account, event: &Entry) -> Result<(), ActorProcessingErr> {
        apply_entry(state, event)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_mode_actor_refuses_a_journal_and_the_other_way_round() {
    let store = MemoryStore::new();
    history(&store, "mixed", 3, 10, false).await;
    let storage = Storage::new(store.clone());
    let err = SnapshotLedger::spawn_persistent(&storage, "mixed", ())
        .await
        .unwrap_err();
    let err = decode_error(err);
    assert!(matches!(err.reason, DecodeReason::WrongModel(_)), "{err}");
    assert_eq!(err.record, RecordRef::Snapshot);
}

#[test]
fn emit_refuses_an_actor_not_derived_as_event_sourced() {
    assert!(<SnapshotLedger as ractor_persist::Persistent>::__journal().is_none());
    let _ = (Marks::default(), Arc::new(()));
}

/// A store whose reads of the journal fail, to show a start does not begin from a default
/// state when its journal cannot be read.
struct NoJournal(MemoryStore);

impl Store for NoJournal {
    fn name(&self) -> &str {
        "no-journal"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.0.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        self.0.commit(batch)
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        if space == Some(Space::JOURNAL) {
            return Err(StoreError::backend(
                "no-journal",
                "the journal cannot be read",
            ));
        }
        self.0.read(key, space, ids)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_read_fails_the_start() {
    let store = MemoryStore::new();
    history(&store, "unread", 4, 10, false).await;
    let storage = Storage::new(NoJournal(store.clone()));
    let err = Actor::spawn(None, Ledger, Start::new(&storage, "unread", ()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the journal cannot be read"),
        "{err}"
    );
}

/// Operation ids go on where they stopped after a restart: journal event numbers are
/// numbered apart and do not push them on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_ids_stay_contiguous_across_restarts() {
    let storage = Storage::new(MemoryStore::new());
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let a = spawn(&storage, "ids", 4, Retention::Full).await;
        for n in 0..5 {
            call!(a, Msg::Deposit, n).unwrap();
        }
        seqs.push(call!(a, Msg::DepositNoted, 1).unwrap());
        seqs.push(call!(a, Msg::DepositNoted, 2).unwrap());
        a.stop_and_wait(None, None).await.unwrap();
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
}

// ---- The derive's event migrations: `migrate_events(1 = .., 2 = ..)` ---------------------

impl From<EntryV1> for EntryV2 {
    fn from(e: EntryV1) -> EntryV2 {
        let EntryV1::Deposited(n) = e;
        EntryV2::Deposited {
            amount: u64::from(n),
            memo: "from v1".to_owned(),
        }
    }
}

/// Version 3: amounts carry their currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum EntryV3 {
    Deposited {
        amount: u64,
        currency: String,
        memo: String,
    },
}

impl From<EntryV2> for EntryV3 {
    fn from(e: EntryV2) -> EntryV3 {
        let EntryV2::Deposited { amount, memo } = e;
        EntryV3::Deposited {
            amount,
            currency: "EUR".to_owned(),
            memo,
        }
    }
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(
    name = "versioned",
    version = 3,
    event_sourced,
    migrate_events(1 = EntryV1, 2 = EntryV2)
)]
struct LedgerV3;

impl PersistentActor for LedgerV3 {
    type Msg = V2Msg;
    type State = Total;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Total, ActorProcessingErr> {
        Ok(Total(0))
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: V2Msg,
        state: &mut Total,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            V2Msg::Deposit(amount, port) => {
                let (currency, memo) = ("CHF".to_owned(), "v3".to_owned());
                tx.emit(
                    state,
                    EntryV3::Deposited {
                        amount,
                        currency,
                        memo,
                    },
                )?;
                tx.reply(port, state.0);
            }
            V2Msg::Get(port) => tx.reply(port, state.0),
        }
        Ok(())
    }
}

impl EventSourced for LedgerV3 {
    type Event = EntryV3;

    fn apply(state: &mut Total, event: &EntryV3) -> Result<(), ActorProcessingErr> {
        let EntryV3::Deposited { amount, .. } = event;
        state.0 += amount;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_derived_event_migrations_walk_every_older_version_up() {
    let storage = Storage::new(MemoryStore::new());
    fn start<A: PersistentActor<Arguments = ()>>(s: &Storage) -> Start<A> {
        Start::new(s, "chain", ()).snapshot_every(u64::MAX)
    }
    let (v1, _) = Actor::spawn(None, LedgerV1, start(&storage)).await.unwrap();
    call!(v1, V1Msg::Deposit, 1).unwrap();
    v1.stop_and_wait(None, None).await.unwrap();
    let (v2, _) = Actor::spawn(None, LedgerV2, start(&storage)).await.unwrap();
    call!(v2, V2Msg::Deposit, 20).unwrap();
    v2.stop_and_wait(None, None).await.unwrap();
    let (v3, _) = Actor::spawn(None, LedgerV3, start(&storage)).await.unwrap();
    assert_eq!(call!(v3, V2Msg::Get).unwrap(), 21);
    assert_eq!(call!(v3, V2Msg::Deposit, 300).unwrap(), 321);
    v3.stop_and_wait(None, None).await.unwrap();
    let events = storage.events::<LedgerV3>("chain", 1).await.unwrap();
    let seen: Vec<(u64, String, String)> = events
        .into_iter()
        .map(
            |(
                _,
                EntryV3::Deposited {
                    amount,
                    currency,
                    memo,
                },
            )| (amount, currency, memo),
        )
        .collect();
    assert_eq!(
        seen,
        [
            (1, "EUR".to_owned(), "from v1".to_owned()),
            (20, "EUR".to_owned(), "v2".to_owned()),
            (300, "CHF".to_owned(), "v3".to_owned()),
        ]
    );
    // The raw journal, for a tool without the types: the versions as written.
    let raw = storage
        .journal(&ActorKey::new("versioned", "chain"), 1)
        .await
        .unwrap();
    let versions: Vec<(u64, u32)> = raw.iter().map(|e| (e.seq, e.schema)).collect();
    assert_eq!(versions, [(1, 1), (2, 2), (3, 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_missing_its_first_events_is_a_gap_not_a_compaction() {
    let store = MemoryStore::new();
    history(&store, "lost-start", 15, 10, false).await;
    tamper(&store, "lost-start", |c, _| {
        c.remove(Space::JOURNAL, 1)
            .remove(Space::JOURNAL, 2)
            .remove(Space::JOURNAL, 3)
    });
    let storage = Storage::new(store.clone());
    match storage.events::<Ledger>("lost-start", 1).await {
        Err(JournalError::Decode(e)) => assert!(
            matches!(
                e.reason,
                DecodeReason::JournalGap {
                    after: 0,
                    found: Some(4),
                    ..
                }
            ),
            "{e}"
        ),
        other => panic!("expected a gap, got {other:?}"),
    }
    // A start needs only the events after the snapshot at 10: it goes on.
    let a = spawn(&storage, "lost-start", 10, Retention::Full).await;
    assert_eq!(state(&a).await.balance, (1..=15).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_past_the_journals_head_is_refused() {
    let store = MemoryStore::new();
    history(&store, "past", 5, 10, false).await;
    let key = ActorKey::new("es_account", "past");
    let fifth = store
        .read(&key, Some(Space::JOURNAL), 5..=5)
        .unwrap()
        .remove(0)
        .bytes;
    tamper(&store, "past", |c, _| c.put(Space::JOURNAL, 6, fifth));
    let err = start_error(&store, "past").await;
    assert_eq!(err.record, RecordRef::Event(6));
    assert!(
        matches!(
            err.reason,
            DecodeReason::EventsPastHead { last: 5, found: 6 }
        ),
        "{err}"
    );
    let storage = Storage::new(store.clone());
    assert!(matches!(
        storage.events::<Ledger>("past", 1).await,
        Err(JournalError::Decode(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_at_every_event_writes_no_event_row_at_all() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, "every", 1, Retention::Light).await;
    drive(&a, &script(12)).await;
    let before = state(&a).await;
    a.stop_and_wait(None, None).await.unwrap();
    let key = ActorKey::new("es_account", "every");
    assert_eq!(
        store
            .read(&key, Some(Space::JOURNAL), 0..=u64::MAX)
            .unwrap()
            .len(),
        0,
        "each event was covered by its own commit's snapshot"
    );
    let a = spawn(&storage, "every", 1, Retention::Light).await;
    assert_eq!(state(&a).await, before);
    assert!(matches!(
        storage.events::<Ledger>("every", 1).await,
        Err(JournalError::Compacted { .. })
    ));
}

/// A store shared with another process: a newer writer commits between the record's read and
/// the journal's (as a node of a shared PostgreSQL may).
struct Racing {
    inner: MemoryStore,
    race: AtomicBool,
}

impl Store for Racing {
    fn name(&self) -> &str {
        "racing"
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        self.inner.commit(batch)
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        if space == Some(Space::JOURNAL) && self.race.swap(false, Ordering::SeqCst) {
            let epoch = self.inner.open_actor(key, &[]).unwrap().epoch;
            let last = self
                .inner
                .read(key, Some(Space::JOURNAL), 0..=u64::MAX)
                .unwrap()
                .pop()
                .unwrap();
            let newer = ActorCommit::new(key.clone(), epoch)
                .put(Space::JOURNAL, last.id + 1, last.bytes)
                .put(Space::SNAPSHOT, 0, b"the newer writer's head".to_vec());
            self.inner.commit(&[newer]).unwrap();
        }
        self.inner.read(key, space, ids)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_writer_between_the_two_reads_of_a_start_fences_it_rather_than_damages_it() {
    let store = MemoryStore::new();
    history(&store, "raced", 6, 10, false).await;
    let storage = Storage::new(Racing {
        inner: store.clone(),
        race: AtomicBool::new(true),
    });
    let err = Actor::spawn(None, Ledger, Start::new(&storage, "raced", ()))
        .await
        .unwrap_err();
    let ractor::SpawnErr::StartupFailed(err) = err else {
        panic!("expected a startup failure, got {err}");
    };
    match err.downcast::<ractor_persist::LoadError>().map(|e| *e) {
        Ok(ractor_persist::LoadError::Store {
            source: StoreError::Fenced(f),
            ..
        }) => assert!(f[0].current > f[0].epoch, "{f:?}"),
        other => panic!("expected the start to be fenced, got {other:?}"),
    }
}
