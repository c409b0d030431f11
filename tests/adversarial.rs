//! The edges, attacked: ids, shape-checked decodes, quarantine's scope, attempts, riders and
//! hooks, as a reviewer who set out to break them tried. Each test states the promise it tries
//! to break; the first five broke it before the fixes they led to.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Backend, Faults, Ledger, LedgerMsg, decode_error, golden_copy, ledger_key, patient,
    spawn_ledger,
};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, call};
use ractor_persist::{
    ActorCommit, ActorKey, DecodeReason, MemoryStore, Outcome, Pending, Persistent,
    PersistentActor, RecordRef, RedbStore, RetryPolicy, Space, Start, Storage, Store, Tx,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// helpers

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A well-formed format-1 envelope (valid checksum).
fn envelope(kind: u8, schema: u32, epoch: u64, seq: u64, fp: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RP");
    out.push(1);
    out.push(kind);
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&fp.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut c = out.clone();
    c.extend_from_slice(payload);
    let crc = crc32c(&c);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn fingerprint_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[24..32].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------
// 1. docs/durability.md's worked example: v1's `Account` is kept as `AccountV1`, v2 declares
//    `migrate(1 = AccountV1)`. The promise: the v1 snapshot migrates.

mod acct_v1 {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Account {
        pub balance: u64,
    }

    pub enum Msg {
        Deposit(u64, RpcReplyPort<u64>),
    }

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "account")]
    pub struct AccountActor;

    impl PersistentActor for AccountActor {
        type Msg = Msg;
        type State = Account;
        type Op = u8;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Account, ActorProcessingErr> {
            Ok(Account { balance: 0 })
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            Msg::Deposit(n, reply): Msg,
            a: &mut Account,
        ) -> Result<(), ActorProcessingErr> {
            a.balance += n;
            tx.reply(reply, a.balance);
            Ok(())
        }
    }
}

mod acct_v2 {
    use super::*;

    /// The old shape, verbatim, under a new name (as docs/durability.md says).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct AccountV1 {
        pub balance: u64,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Account {
        pub balance: u64,
        pub owner: String,
    }

    impl From<AccountV1> for Account {
        fn from(v1: AccountV1) -> Self {
            Account {
                balance: v1.balance,
                owner: String::new(),
            }
        }
    }

    pub enum Msg {
        Get(RpcReplyPort<u64>),
    }

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "account", version = 2, migrate(1 = AccountV1))]
    pub struct AccountActor;

    impl PersistentActor for AccountActor {
        type Msg = Msg;
        type State = Account;
        type Op = u8;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Account, ActorProcessingErr> {
            Ok(Account {
                balance: 0,
                owner: String::new(),
            })
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            Msg::Get(reply): Msg,
            a: &mut Account,
        ) -> Result<(), ActorProcessingErr> {
            tx.reply(reply, a.balance);
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_worked_example_migration_with_the_old_type_renamed_loads() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, _) = Actor::spawn(
        None,
        acct_v1::AccountActor,
        Start::new(&storage, "alice", ()),
    )
    .await
    .unwrap();
    assert_eq!(call!(a, acct_v1::Msg::Deposit, 42).unwrap(), 42);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    let storage = Storage::new(store.clone());
    let spawned = Actor::spawn(
        None,
        acct_v2::AccountActor,
        Start::new(&storage, "alice", ()),
    )
    .await;
    match spawned {
        Ok((a, _)) => {
            assert_eq!(call!(a, acct_v2::Msg::Get).unwrap(), 42);
            a.stop_and_wait(None, None).await.unwrap();
        }
        Err(e) => {
            let e = decode_error(e);
            panic!("the documented migration (old type kept as `AccountV1`) fails: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Ids never repeat: a store written before floors existed, bob's snapshot damaged in its
//    payload only (header intact), quarantine opted in. bob used op #0.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_store_payload_damage_quarantine_keeps_ids_unique() {
    let dir = tempfile::tempdir().unwrap();
    let path = golden_copy(&dir);
    let key = ledger_key("bob");
    {
        let store = RedbStore::open(&path).unwrap();
        let loaded = store.open_actor(&key, &Space::RECORD).unwrap();
        assert_eq!(loaded.floor, 0, "a legacy store has no floor");
        assert!(loaded.ops().is_empty());
        let mut snap = loaded.snapshot().unwrap().to_vec();
        assert_eq!(u64::from_le_bytes(snap[16..24].try_into().unwrap()), 1);
        // Damage the last payload byte only: the header (and its sequence) is intact.
        let last = snap.len() - 1;
        snap[last] ^= 0x40;
        store
            .commit(&[ActorCommit::new(key.clone(), loaded.epoch).put(Space::SNAPSHOT, 0, snap)])
            .unwrap();
        store.close().unwrap();
    }
    let storage = Storage::new(RedbStore::open(&path).unwrap());
    let ledger = Ledger::default();
    let (bob, _) = Actor::spawn(
        None,
        ledger.clone(),
        Start::new(&storage, "bob", ()).quarantine_undecodable(),
    )
    .await
    .unwrap();
    call!(bob, LedgerMsg::Add, 1).unwrap();
    call!(bob, LedgerMsg::Peek).unwrap();
    bob.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let seqs: Vec<u64> = ledger.performed().iter().map(|(id, _)| id.seq()).collect();
    assert_eq!(
        seqs,
        vec![1],
        "bob's op #0 (named by the intact header of the damaged snapshot) was reused"
    );
}

// ---------------------------------------------------------------------------------------
// Actors for attempts / dead letters / panics / hooks

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub n: u32,
}

const DONE: u8 = 0;
const RETRY: u8 = 2;
const PANIC: u8 = 4;

pub enum FMsg {
    Push(u32, RpcReplyPort<u64>),
    Dead(RpcReplyPort<Vec<(u64, u32)>>),
    Pending(RpcReplyPort<Vec<(u64, u32)>>),
}

#[derive(Clone, Default, Persistent)]
#[persistent(name = "flaky")]
pub struct Flaky {
    mode: Arc<AtomicU8>,
    performed: Arc<Mutex<Vec<(u64, u32)>>>,
    /// post_start pushes an op, changes the state, then fails when set.
    start_fails: Arc<AtomicBool>,
}

impl Flaky {
    fn with(mode: u8) -> Self {
        let f = Flaky::default();
        f.mode.store(mode, Ordering::SeqCst);
        f
    }
}

impl PersistentActor for Flaky {
    type Msg = FMsg;
    type State = u32;
    type Op = Note;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
        Ok(0)
    }

    async fn post_start(
        &self,
        tx: &mut Tx<'_, Self>,
        s: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        if self.start_fails.load(Ordering::SeqCst) {
            *s += 1000;
            tx.push(Note { n: 999 })?;
            return Err("post_start failed on purpose".into());
        }
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: FMsg,
        s: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FMsg::Push(n, reply) => {
                *s += 1;
                let id = tx.push(Note { n })?;
                tx.reply(reply, id.seq());
            }
            FMsg::Dead(reply) => {
                let d = tx
                    .dead_letters()
                    .map(|p| (p.id().seq(), p.attempts()))
                    .collect();
                tx.reply(reply, d);
            }
            FMsg::Pending(reply) => {
                let d = tx.pending().map(|p| (p.id().seq(), p.attempts())).collect();
                tx.reply(reply, d);
            }
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Note>, _: &u32) -> Result<Outcome, ActorProcessingErr> {
        self.performed
            .lock()
            .unwrap()
            .push((op.id().seq(), op.attempts()));
        match self.mode.load(Ordering::SeqCst) {
            DONE => Ok(Outcome::Done),
            PANIC => panic!("perform panicked on purpose"),
            _ => Ok(Outcome::Retry),
        }
    }
}

async fn spawn_flaky(
    storage: &Storage,
    key: &str,
    f: Flaky,
    attempts: u32,
) -> Result<(ActorRef<FMsg>, JoinHandle<()>), SpawnErr> {
    Actor::spawn(
        None,
        f,
        Start::new(storage, key, ()).retry_policy(patient(attempts)),
    )
    .await
}

// 3. Pending::attempts is "kept across restarts"; a dead letter's count is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letters_attempt_count_survives_a_restart() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, _) = spawn_flaky(&storage, "d", Flaky::with(RETRY), 2)
        .await
        .unwrap();
    call!(a, FMsg::Push, 1).unwrap();
    // One failed attempt: pending with 1.
    assert_eq!(call!(a, FMsg::Pending).unwrap(), vec![(0, 1)]);
    a.stop_and_wait(None, None).await.unwrap();
    // The retry waits its hour across a restart, but never longer than the current policy's
    // longest delay: restarted with no delay, it is performed at start, fails again: 2 =
    // max, a dead letter.
    let now = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 2).unwrap();
    let (a, _) = Actor::spawn(
        None,
        Flaky::with(RETRY),
        Start::new(&storage, "d", ()).retry_policy(now),
    )
    .await
    .unwrap();
    let before = call!(a, FMsg::Dead).unwrap();
    assert_eq!(before, vec![(0, 2)]);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let storage = Storage::new(store.clone());
    let (a, _) = spawn_flaky(&storage, "d", Flaky::with(RETRY), 2)
        .await
        .unwrap();
    let after = call!(a, FMsg::Dead).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert_eq!(
        after, before,
        "a dead letter's failed attempts are forgotten by a restart"
    );
}

// 4. "Attempts survive a restart, so a crash loop cannot retry forever": a perform that
//    panics (ractor would turn the panic into an actor failure) is the classic crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_perform_crash_loop_ends_in_a_dead_letter() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let f = Flaky::with(PANIC);
    let (a, h) = spawn_flaky(&storage, "p", f.clone(), 2).await.unwrap();
    call!(a, FMsg::Push, 1).unwrap();
    h.await.unwrap();
    // Restart until an incarnation survives its start (its replay no longer panics).
    let mut restarts = 0;
    let dead = loop {
        restarts += 1;
        assert!(
            restarts <= 3,
            "still crash-looping after {restarts} restarts"
        );
        let (a, h) = spawn_flaky(&storage, "p", f.clone(), 2).await.unwrap();
        match call!(a, FMsg::Dead) {
            Ok(dead) => {
                a.stop_and_wait(None, None).await.unwrap();
                break dead;
            }
            Err(_) => h.await.unwrap(),
        }
    };
    storage.close().await.unwrap();
    assert_eq!(
        restarts, 2,
        "one restart replays and panics, the next finds a dead letter"
    );
    assert_eq!(
        dead,
        vec![(0, 2)],
        "a dead letter after two failed (panicking) attempts"
    );
    assert_eq!(*f.performed.lock().unwrap(), vec![(0, 0), (0, 1)]);
}

// 5. An envelope's sequence must be the row it is stored under; a misfiled record (a copy of
//    op #0 under #7) must not be performed again under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_record_filed_under_another_sequence_is_refused() {
    let b = Backend::memory();
    let storage = b.open(&Faults::default());
    let a = spawn_ledger(&storage, "mis", Ledger::default()).await;
    call!(a, LedgerMsg::AddKept, 5).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let key = ledger_key("mis");
    let raw = b.raw(&key);
    assert_eq!(raw.ops().len(), 1);
    b.plant_op(&key, 7, raw.ops()[0].1.clone());

    let storage = b.open(&Faults::default());
    let ledger = Ledger::default();
    let spawned = Actor::spawn(None, ledger.clone(), Start::new(&storage, "mis", ())).await;
    match spawned {
        Ok((a, _)) => {
            call!(a, LedgerMsg::Peek).unwrap();
            a.stop_and_wait(None, None).await.unwrap();
            let performed: Vec<(u64, i64)> = ledger
                .performed()
                .iter()
                .map(|(id, n)| (id.seq(), n.total))
                .collect();
            panic!("a record whose header says #0 was accepted as #7 and performed: {performed:?}");
        }
        Err(e) => {
            let e = decode_error(e);
            assert_eq!(e.record, RecordRef::Op(7), "{e}");
        }
    }
}

// 6. Bad bytes: a kind-4 record (retried op) with a valid checksum but a broken attempt
//    count, or none at all: a typed error naming key and op, no panic, not quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_retried_op_records_are_typed_errors_not_panics_nor_damage() {
    let fp = ractor_persist::shape_fingerprint::<common::Notify>().unwrap_or(0);
    let notify = postcard::to_stdvec(&common::Notify {
        total: 3,
        keep: true,
    })
    .unwrap();
    let mut overflowing = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
    overflowing.extend_from_slice(&notify);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty payload", envelope(4, 1, 1, 3, fp, &[])),
        ("attempts only", envelope(4, 1, 1, 3, fp, &[5])),
        (
            "attempt count overflows u32",
            envelope(4, 1, 1, 3, fp, &overflowing),
        ),
        (
            "kind 4 in the snapshot slot",
            envelope(4, 1, 1, 3, fp, &notify),
        ),
        ("kind 9", envelope(9, 1, 1, 3, fp, &notify)),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let b = Backend::memory();
        let name = format!("bad{i}");
        let key = ledger_key(&name);
        let storage = b.open(&Faults::default());
        let a = spawn_ledger(&storage, &name, Ledger::default()).await;
        call!(a, LedgerMsg::Add, 1).unwrap();
        a.stop_and_wait(None, None).await.unwrap();
        storage.close().await.unwrap();
        let snapshot_slot = what.contains("snapshot");
        if snapshot_slot {
            b.plant_snapshot(&key, bytes.clone());
        } else {
            b.plant_op(&key, 3, bytes.clone());
        }
        let before = b.raw(&key);
        let storage = b.open(&Faults::default());
        let res = Actor::spawn(
            None,
            Ledger::default(),
            Start::new(&storage, &name, ()).quarantine_undecodable(),
        )
        .await;
        let e = decode_error(res.map(|_| ()).expect_err(what));
        storage.close().await.unwrap();
        assert_eq!(e.key, key, "{what}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&name), "{what}: {msg}");
        if snapshot_slot {
            assert_eq!(e.record, RecordRef::Snapshot, "{what}");
        } else {
            assert_eq!(e.record, RecordRef::Op(3), "{what}");
            assert!(msg.contains("#3"), "{what}: {msg}");
        }
        assert!(
            !e.reason.is_damage(),
            "{what}: intact bytes counted as damage: {e}"
        );
        let after = b.raw(&key);
        assert_eq!(before.snapshot(), after.snapshot(), "{what}: moved");
        assert_eq!(before.ops(), after.ops(), "{what}: moved");
    }
}

// 7. Hooks: post_start that changed state and pushed, then failed, commits nothing and
//    performs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_post_start_commits_nothing_and_performs_nothing() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, _) = spawn_flaky(&storage, "h", Flaky::with(DONE), 3)
        .await
        .unwrap();
    call!(a, FMsg::Push, 1).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    // Write the queued removal of the done op before looking.
    storage.close().await.unwrap();
    let storage = Storage::new(store.clone());
    let key = ActorKey::new("flaky", "h");
    let before = (store.snapshot(&key), store.ops(&key));
    let f = Flaky::with(DONE);
    f.start_fails.store(true, Ordering::SeqCst);
    // ractor runs post_start after the spawn returned: the failure ends the actor's task.
    let (_, h) = spawn_flaky(&storage, "h", f.clone(), 3).await.unwrap();
    h.await.unwrap();
    storage.close().await.unwrap();
    assert!(f.performed.lock().unwrap().is_empty(), "performed");
    assert_eq!((store.snapshot(&key), store.ops(&key)), before, "written");
}

// 8. Older-version kind-4 records go through the op migration, keeping their count; without
//    a migration and with a changed op type they are a typed error.
mod note_v2 {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Note2 {
        pub n: u32,
        pub tag: String,
    }

    impl From<Note> for Note2 {
        fn from(v: Note) -> Self {
            Note2 {
                n: v.n,
                tag: "migrated".into(),
            }
        }
    }

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "flaky", version = 2, migrate_ops(1 = Note))]
    pub struct Flaky2 {
        pub seen: Arc<Mutex<Vec<(u64, u32, Note2)>>>,
    }

    impl PersistentActor for Flaky2 {
        type Msg = ();
        type State = u32;
        type Op = Note2;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            _: (),
            _: &mut u32,
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn perform(
            &self,
            op: &Pending<Note2>,
            _: &u32,
        ) -> Result<Outcome, ActorProcessingErr> {
            self.seen
                .lock()
                .unwrap()
                .push((op.id().seq(), op.attempts(), op.op().clone()));
            Ok(Outcome::KeepUntilConfirmed)
        }
    }

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "flaky", version = 2)]
    pub struct Flaky2NoMigration;

    impl PersistentActor for Flaky2NoMigration {
        type Msg = ();
        type State = u32;
        type Op = Note2;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            _: (),
            _: &mut u32,
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_retried_ops_migrate_with_their_count_or_fail_typed() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (a, _) = spawn_flaky(&storage, "m", Flaky::with(RETRY), 5)
        .await
        .unwrap();
    call!(a, FMsg::Push, 7).unwrap();
    assert_eq!(call!(a, FMsg::Pending).unwrap(), vec![(0, 1)]);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let key = ActorKey::new("flaky", "m");
    assert_eq!(
        store.ops(&key)[0].1[3],
        11,
        "a kind-11 record: the count and the retry's instant"
    );
    let snapshot_fp = fingerprint_of(&store.snapshot(&key).unwrap());
    assert_ne!(snapshot_fp, 0);

    let storage = Storage::new(store.clone());
    let err = Actor::spawn(
        None,
        note_v2::Flaky2NoMigration,
        Start::new(&storage, "m", ()).quarantine_undecodable(),
    )
    .await
    .map(|_| ())
    .expect_err("v1 op read as v2 without a migration");
    let e = decode_error(err);
    assert_eq!(e.record, RecordRef::Op(0));
    assert!(matches!(e.reason, DecodeReason::ShapeChanged { .. }), "{e}");
    assert_eq!(store.ops(&key).len(), 1, "not moved");

    let v2 = note_v2::Flaky2::default();
    // A policy with no delay: the waiting retry is performed at start.
    let now = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 5).unwrap();
    let (a, _) = Actor::spawn(
        None,
        v2.clone(),
        Start::new(&storage, "m", ()).retry_policy(now),
    )
    .await
    .unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let seen = v2.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            0,
            1,
            note_v2::Note2 {
                n: 7,
                tag: "migrated".into()
            }
        )]
    );
}
