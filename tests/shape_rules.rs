//! No guessed decodes: a stored record is read as the current type only when its shape
//! fingerprint matches; otherwise a typed error names the key, the record, both schema
//! versions and both fingerprints. And quarantine is for damaged bytes only: an intact record
//! of a newer schema or of another shape always fails the spawn and is never moved aside.
//!
//! Four releases of one actor share the namespace `wallet`: `v1` (a `Credit` operation),
//! `v2` (a `Refund` variant added at the front of the operation enum, a state migration but
//! no operation migration), `v2_ops_unchanged` (a state migration, the operation type kept),
//! and `v2_no_state_migration` (a changed state and no migration at all).

mod common;

use std::sync::{Arc, Mutex};

use common::decode_error;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, call};
use ractor_persist::{
    ActorKey, DecodeReason, MemoryStore, Outcome, Pending, Persistent, PersistentActor, RecordRef,
    Start, Storage, Tx, shape_fingerprint,
};
use serde::{Deserialize, Serialize};

const KEY: &str = "w";

fn key() -> ActorKey {
    ActorKey::new("wallet", KEY)
}

/// What every release's `perform` saw, as text.
type Performed = Arc<Mutex<Vec<String>>>;

mod v1 {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WalletV1 {
        pub balance: u64,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum OpV1 {
        Credit(u64),
    }

    pub enum Msg {
        Deposit(u64, RpcReplyPort<u64>),
    }

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "wallet", version = 1)]
    pub struct Wallet {
        pub performed: Performed,
    }

    impl PersistentActor for Wallet {
        type Msg = Msg;
        type State = WalletV1;
        type Op = OpV1;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<WalletV1, ActorProcessingErr> {
            Ok(WalletV1 { balance: 0 })
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            Msg::Deposit(n, reply): Msg,
            w: &mut WalletV1,
        ) -> Result<(), ActorProcessingErr> {
            w.balance += n;
            tx.push(OpV1::Credit(n))?;
            tx.reply(reply, w.balance);
            Ok(())
        }

        async fn perform(
            &self,
            op: &Pending<OpV1>,
            _: &WalletV1,
        ) -> Result<Outcome, ActorProcessingErr> {
            self.performed
                .lock()
                .unwrap()
                .push(format!("{:?}", op.op()));
            // Stays stored, so the next release finds a v1 operation.
            Ok(Outcome::KeepUntilConfirmed)
        }
    }
}

/// The state gained an owner; the operation enum gained `Refund` *at the front*, so the v1
/// bytes of `Credit(5)` are also the v2 bytes of `Refund(5)`.
mod v2 {
    use super::*;
    use crate::v1::WalletV1;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Wallet2 {
        pub balance: u64,
        pub owner: String,
    }

    impl From<WalletV1> for Wallet2 {
        fn from(v1: WalletV1) -> Self {
            Wallet2 {
                balance: v1.balance,
                owner: String::new(),
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Op {
        Refund(u64),
        Credit(u64),
    }

    pub enum Msg {
        Get(RpcReplyPort<Wallet2>),
        /// Changes the state, so that a version-2 snapshot is written.
        Touch(RpcReplyPort<()>),
    }

    /// The handler of every version-2 release.
    pub fn handle(msg: Msg, w: &mut Wallet2) {
        match msg {
            Msg::Get(reply) => {
                let _ = reply.send(w.clone());
            }
            Msg::Touch(reply) => {
                w.owner = "touched".into();
                let _ = reply.send(());
            }
        }
    }

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "wallet", version = 2, migrate(1 = WalletV1))]
    pub struct Wallet {
        pub performed: Performed,
    }

    impl PersistentActor for Wallet {
        type Msg = Msg;
        type State = Wallet2;
        type Op = Op;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Wallet2, ActorProcessingErr> {
            Ok(WalletV1 { balance: 0 }.into())
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            msg: Msg,
            w: &mut Wallet2,
        ) -> Result<(), ActorProcessingErr> {
            handle(msg, w);
            Ok(())
        }

        async fn perform(
            &self,
            op: &Pending<Op>,
            _: &Wallet2,
        ) -> Result<Outcome, ActorProcessingErr> {
            self.performed
                .lock()
                .unwrap()
                .push(format!("{:?}", op.op()));
            Ok(Outcome::Done)
        }
    }
}

/// Version 2 with the same operation type as version 1: no operation migration needed.
mod v2_ops_unchanged {
    use super::*;
    use crate::v1::{OpV1, WalletV1};
    use crate::v2::Wallet2;

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "wallet", version = 2, migrate(1 = WalletV1))]
    pub struct Wallet {
        pub performed: Performed,
    }

    impl PersistentActor for Wallet {
        type Msg = crate::v2::Msg;
        type State = Wallet2;
        type Op = OpV1;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Wallet2, ActorProcessingErr> {
            Ok(WalletV1 { balance: 0 }.into())
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            msg: crate::v2::Msg,
            w: &mut Wallet2,
        ) -> Result<(), ActorProcessingErr> {
            crate::v2::handle(msg, w);
            Ok(())
        }

        async fn perform(
            &self,
            op: &Pending<OpV1>,
            _: &Wallet2,
        ) -> Result<Outcome, ActorProcessingErr> {
            self.performed
                .lock()
                .unwrap()
                .push(format!("{:?}", op.op()));
            Ok(Outcome::Done)
        }
    }
}

/// Version 2 with a changed state and no migration declared for it.
mod v2_no_state_migration {
    use super::*;
    use crate::v1::OpV1;
    use crate::v2::Wallet2;

    #[derive(Clone, Default, Persistent)]
    #[persistent(name = "wallet", version = 2)]
    pub struct Wallet;

    impl PersistentActor for Wallet {
        type Msg = ();
        type State = Wallet2;
        type Op = OpV1;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Wallet2, ActorProcessingErr> {
            Ok(Wallet2 {
                balance: 0,
                owner: String::new(),
            })
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            _: (),
            _: &mut Wallet2,
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }
}

async fn spawn<A>(
    storage: &Storage,
    actor: A,
    quarantine: bool,
) -> Result<(ActorRef<<A as PersistentActor>::Msg>, JoinHandle<()>), SpawnErr>
where
    A: Persistent<Arguments = ()> + Actor<Arguments = Start<A>, Msg = <A as PersistentActor>::Msg>,
{
    let start = Start::new(storage, KEY, ());
    let start = if quarantine {
        start.quarantine_undecodable()
    } else {
        start
    };
    Actor::spawn(None, actor, start).await
}

/// What version 1 leaves behind: balance 5 and one pending `Credit(5)` (operation #0).
async fn write_v1(store: &MemoryStore) {
    let storage = Storage::new(store.clone());
    let (a, _) = spawn(&storage, v1::Wallet::default(), false)
        .await
        .expect("spawn v1");
    assert_eq!(call!(a, v1::Msg::Deposit, 5).unwrap(), 5);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_op_of_another_shape_is_a_typed_error_not_performed_as_the_new_type() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    let before = (store.snapshot(&key()), store.ops(&key()));

    let storage = Storage::new(store.clone());
    let v2 = v2::Wallet::default();
    let err = spawn(&storage, v2.clone(), false)
        .await
        .map(|_| ())
        .expect_err("a v1 Credit must not be read as a v2 Op");
    assert!(
        v2.performed.lock().unwrap().is_empty(),
        "performed {:?}",
        v2.performed.lock().unwrap()
    );
    let e = decode_error(err);
    assert_eq!(e.key, key());
    assert_eq!(e.record, RecordRef::Op(0));
    match &e.reason {
        DecodeReason::ShapeChanged {
            type_name,
            stored_version,
            stored,
            version,
            expected,
        } => {
            assert!(type_name.ends_with("v2::Op"), "{type_name}");
            assert_eq!(*stored_version, 1);
            assert_eq!(*version, 2);
            assert_eq!(Some(*stored), shape_fingerprint::<v1::OpV1>());
            assert_eq!(Some(*expected), shape_fingerprint::<v2::Op>());
        }
        other => panic!("expected ShapeChanged, got {other}"),
    }
    let text = e.to_string();
    for needle in ["wallet/w", "operation #0", "version 1", "version 2"] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
    storage.close().await.unwrap();
    assert_eq!(
        (store.snapshot(&key()), store.ops(&key())),
        before,
        "untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_op_of_the_same_shape_needs_no_op_migration() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    let storage = Storage::new(store.clone());
    let actor = v2_ops_unchanged::Wallet::default();
    let (a, _) = spawn(&storage, actor.clone(), false)
        .await
        .expect("same op shape: loads");
    assert_eq!(call!(a, v2::Msg::Get).unwrap().balance, 5);
    assert_eq!(*actor.performed.lock().unwrap(), ["Credit(5)"]);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_state_of_another_shape_without_a_migration_is_a_typed_error() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    let storage = Storage::new(store.clone());
    let err = spawn(&storage, v2_no_state_migration::Wallet, false)
        .await
        .map(|_| ())
        .expect_err("a v1 state must not be read as the v2 state");
    let e = decode_error(err);
    assert_eq!(e.record, RecordRef::Snapshot);
    assert!(
        matches!(
            e.reason,
            DecodeReason::ShapeChanged {
                stored_version: 1,
                version: 2,
                ..
            }
        ),
        "{e}"
    );
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_never_moves_aside_a_record_of_a_newer_schema() {
    // Version 2 writes its own snapshot over version 1's record ...
    let store = MemoryStore::new();
    write_v2_state(&store).await;
    let before = (store.snapshot(&key()), store.ops(&key()));
    assert!(before.0.is_some());

    // ... and a rolled-back deploy of version 1, with quarantine on, must fail, not reset.
    let storage = Storage::new(store.clone());
    let err = spawn(&storage, v1::Wallet::default(), true)
        .await
        .map(|_| ())
        .expect_err("version 1 cannot read version 2");
    let e = decode_error(err);
    assert!(
        matches!(
            e.reason,
            DecodeReason::UnknownSchema {
                found: 2,
                expected: 1
            }
        ),
        "{e}"
    );
    assert!(storage.quarantined("wallet").await.unwrap().is_empty());
    storage.close().await.unwrap();
    assert_eq!(
        (store.snapshot(&key()), store.ops(&key())),
        before,
        "untouched"
    );
}

/// Version 1 writes, then version 2 migrates the record and commits a change: the snapshot is
/// of schema 2, the pending `Credit(5)` still of schema 1.
async fn write_v2_state(store: &MemoryStore) {
    write_v1(store).await;
    let storage = Storage::new(store.clone());
    let (a, _) = spawn(&storage, v2_ops_unchanged::Wallet::default(), false)
        .await
        .expect("spawn v2");
    call!(a, v2::Msg::Touch).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_never_moves_aside_a_record_of_another_shape() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    let before = (store.snapshot(&key()), store.ops(&key()));
    let storage = Storage::new(store.clone());
    let err = spawn(&storage, v2_no_state_migration::Wallet, true)
        .await
        .map(|_| ())
        .expect_err("a shape mismatch fails the spawn even with quarantine on");
    assert!(matches!(
        decode_error(err).reason,
        DecodeReason::ShapeChanged { .. }
    ));
    assert!(storage.quarantined("wallet").await.unwrap().is_empty());
    storage.close().await.unwrap();
    assert_eq!(
        (store.snapshot(&key()), store.ops(&key())),
        before,
        "untouched"
    );
}
