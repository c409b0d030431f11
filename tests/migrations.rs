//! Schema versions at run time: old records load through the declared chain of `From`s, a
//! record from a newer version or of a changed shape is a typed error, and nothing stored is
//! rewritten until the actor commits a change.
//!
//! Three actor types share the namespace `acct`, as one actor type would across releases:
//! `v1::Acct` (the first release), `v3::Acct` (two releases later, with migrations) and
//! `wide::Acct` (the first release's state with a field added but no version bump).

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef, SpawnErr, call};
use ractor_persist::{
    ActorKey, DecodeReason, LoadError, MemoryStore, Persistent, PersistentActor, RecordRef, Start,
    Storage,
};

const KEY: &str = "alice";

fn key() -> ActorKey {
    ActorKey::new("acct", KEY)
}

/// The first release: a balance, and a note per deposit kept until confirmed.
mod v1 {
    use ractor::{ActorProcessingErr, RpcReplyPort};
    use ractor_persist::{Outcome, Pending, Persistent, PersistentActor, Tx};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccountV1 {
        pub balance: u64,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NoteV1 {
        pub amount: u64,
    }

    pub enum Msg {
        Deposit(u64, RpcReplyPort<u64>),
        Get(RpcReplyPort<AccountV1>),
    }

    #[derive(Persistent)]
    #[persistent(name = "acct", version = 1)]
    pub struct Acct;

    impl PersistentActor for Acct {
        type Msg = Msg;
        type State = AccountV1;
        type Op = NoteV1;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<AccountV1, ActorProcessingErr> {
            Ok(AccountV1 { balance: 0 })
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: Msg,
            account: &mut AccountV1,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                Msg::Deposit(amount, reply) => {
                    account.balance += amount;
                    tx.push(NoteV1 { amount })?;
                    tx.reply(reply, account.balance);
                }
                Msg::Get(reply) => tx.reply(reply, account.clone()),
            }
            Ok(())
        }

        async fn perform(
            &self,
            _: &Pending<NoteV1>,
            _: &AccountV1,
        ) -> Result<Outcome, ActorProcessingErr> {
            // Stays stored, so a later release finds a v1 operation to migrate.
            Ok(Outcome::KeepUntilConfirmed)
        }
    }
}

/// Two releases later: the balance is signed, the account has an owner (version 2) and can
/// be frozen (version 3); a note carries a memo since version 3.
mod v3 {
    use std::sync::{Arc, Mutex};

    use ractor::{ActorProcessingErr, RpcReplyPort};
    use ractor_persist::{Outcome, Pending, Persistent, PersistentActor, Tx};
    use serde::{Deserialize, Serialize};

    use crate::v1::{AccountV1, NoteV1};

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccountV2 {
        pub balance: i128,
        pub owner: String,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccountV3 {
        pub balance: i128,
        pub owner: String,
        pub frozen: bool,
    }

    impl From<AccountV1> for AccountV2 {
        fn from(v1: AccountV1) -> Self {
            AccountV2 {
                balance: i128::from(v1.balance),
                owner: "(unnamed)".to_owned(),
            }
        }
    }

    impl From<AccountV2> for AccountV3 {
        fn from(v2: AccountV2) -> Self {
            AccountV3 {
                balance: v2.balance,
                owner: v2.owner,
                frozen: false,
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Note {
        pub amount: i128,
        pub memo: String,
    }

    impl From<NoteV1> for Note {
        fn from(v1: NoteV1) -> Self {
            Note {
                amount: i128::from(v1.amount),
                memo: "from v1".to_owned(),
            }
        }
    }

    pub enum Msg {
        Deposit(i128, RpcReplyPort<i128>),
        Open(String, RpcReplyPort<()>),
        Get(RpcReplyPort<AccountV3>),
    }

    /// Operations did not change in version 2, so `NoteV1` stands for it too (`From<T> for T`).
    #[derive(Clone, Default, Persistent)]
    #[persistent(
        name = "acct",
        version = 3,
        migrate(1 = AccountV1, 2 = AccountV2),
        migrate_ops(1 = NoteV1, 2 = NoteV1)
    )]
    pub struct Acct {
        pub performed: Arc<Mutex<Vec<Note>>>,
    }

    impl PersistentActor for Acct {
        type Msg = Msg;
        type State = AccountV3;
        type Op = Note;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<AccountV3, ActorProcessingErr> {
            Ok(AccountV3 {
                balance: 0,
                owner: String::new(),
                frozen: false,
            })
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: Msg,
            account: &mut AccountV3,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                Msg::Deposit(amount, reply) => {
                    account.balance += amount;
                    tx.push(Note {
                        amount,
                        memo: "deposit".to_owned(),
                    })?;
                    tx.reply(reply, account.balance);
                }
                Msg::Open(owner, reply) => {
                    account.owner = owner;
                    account.frozen = true;
                    tx.reply(reply, ());
                }
                Msg::Get(reply) => tx.reply(reply, account.clone()),
            }
            Ok(())
        }

        async fn perform(
            &self,
            op: &Pending<Note>,
            _: &AccountV3,
        ) -> Result<Outcome, ActorProcessingErr> {
            self.performed.lock().unwrap().push(op.op().clone());
            Ok(Outcome::Done)
        }
    }
}

/// The first release's state with a field added, and the version left at 1 by mistake.
mod wide {
    use ractor::ActorProcessingErr;
    use ractor_persist::{Persistent, PersistentActor, Tx};
    use serde::{Deserialize, Serialize};

    use crate::v1::NoteV1;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccountWide {
        pub balance: u64,
        pub owner: String,
    }

    #[derive(Persistent)]
    #[persistent(name = "acct")]
    pub struct Acct;

    impl PersistentActor for Acct {
        type Msg = ();
        type State = AccountWide;
        type Op = NoteV1;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<AccountWide, ActorProcessingErr> {
            Ok(AccountWide {
                balance: 0,
                owner: String::new(),
            })
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            _: (),
            _: &mut AccountWide,
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }
}

async fn spawn<A>(
    storage: &Storage,
    actor: A,
) -> Result<(ActorRef<<A as PersistentActor>::Msg>, JoinHandle<()>), SpawnErr>
where
    A: Persistent<Arguments = ()> + Actor<Arguments = Start<A>, Msg = <A as PersistentActor>::Msg>,
{
    Actor::spawn(None, actor, Start::new(storage, KEY, ())).await
}

async fn stop<M: ractor::Message>((actor, handle): (ActorRef<M>, JoinHandle<()>)) {
    actor.stop(None);
    handle.await.unwrap();
}

/// What the first release leaves behind: a v1 snapshot (balance 7) and one pending v1 note.
async fn write_v1(store: &MemoryStore) {
    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v1::Acct).await.expect("spawn v1");
    assert_eq!(call!(acct.0, v1::Msg::Deposit, 7).unwrap(), 7);
    stop(acct).await;
    storage.close().await.unwrap();
}

/// The reason a spawn failed to decode the snapshot of `KEY`.
fn snapshot_decode_reason(err: SpawnErr) -> DecodeReason {
    let SpawnErr::StartupFailed(err) = err else {
        panic!("expected a startup failure, got {err}");
    };
    match err.downcast::<LoadError>().map(|e| *e) {
        Ok(LoadError::Decode(decode)) => {
            assert_eq!(decode.key, key());
            assert_eq!(decode.record, RecordRef::Snapshot);
            decode.reason
        }
        Ok(other) => panic!("expected a decode error, got {other}"),
        Err(other) => panic!("startup failed with another error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_state_loads_into_v3_through_the_chain() {
    let store = MemoryStore::new();
    write_v1(&store).await;

    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v3::Acct::default())
        .await
        .expect("spawn v3");
    assert_eq!(
        call!(acct.0, v3::Msg::Get).unwrap(),
        v3::AccountV3 {
            balance: 7,
            owner: "(unnamed)".to_owned(),
            frozen: false,
        }
    );
    stop(acct).await;
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_an_old_record_does_not_rewrite_it() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    let v1_bytes = store.snapshot(&key()).expect("a v1 snapshot");

    // Read by the new release without a change, then by the old release again.
    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v3::Acct::default())
        .await
        .expect("spawn v3");
    assert_eq!(call!(acct.0, v3::Msg::Get).unwrap().balance, 7);
    stop(acct).await;
    storage.close().await.unwrap();
    assert_eq!(store.snapshot(&key()), Some(v1_bytes));

    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v1::Acct).await.expect("v1 still loads");
    assert_eq!(call!(acct.0, v1::Msg::Get).unwrap().balance, 7);
    stop(acct).await;
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_migration_writes_v3_and_a_restart_loads_it_directly() {
    let store = MemoryStore::new();
    write_v1(&store).await;

    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v3::Acct::default())
        .await
        .expect("spawn v3");
    call!(acct.0, v3::Msg::Open, "alice".to_owned()).unwrap();
    assert_eq!(call!(acct.0, v3::Msg::Deposit, -10).unwrap(), -3);
    stop(acct).await;
    storage.close().await.unwrap();

    // Migrated again from v1 bytes, it would be "(unnamed)", not frozen, and 7.
    let expected = v3::AccountV3 {
        balance: -3,
        owner: "alice".to_owned(),
        frozen: true,
    };
    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v3::Acct::default())
        .await
        .expect("restart v3");
    assert_eq!(call!(acct.0, v3::Msg::Get).unwrap(), expected);
    stop(acct).await;
    storage.close().await.unwrap();

    // And the first release now meets a record it cannot read.
    let storage = Storage::new(store.clone());
    let err = spawn(&storage, v1::Acct)
        .await
        .expect_err("v1 cannot read v3");
    assert!(matches!(
        snapshot_decode_reason(err),
        DecodeReason::UnknownSchema {
            found: 3,
            expected: 1
        }
    ));
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_ops_are_migrated_through_migrate_ops() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    assert_eq!(store.ops(&key()).len(), 1, "the v1 note is still pending");

    let storage = Storage::new(store.clone());
    let actor = v3::Acct::default();
    let performed = actor.performed.clone();
    let acct = spawn(&storage, actor).await.expect("spawn v3");
    // Pending operations are performed before the first message.
    call!(acct.0, v3::Msg::Get).unwrap();
    assert_eq!(
        *performed.lock().unwrap(),
        [v3::Note {
            amount: 7,
            memo: "from v1".to_owned(),
        }]
    );
    stop(acct).await;
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_a_newer_version_fails_the_spawn_and_is_left_unchanged() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let acct = spawn(&storage, v3::Acct::default())
        .await
        .expect("spawn v3");
    call!(acct.0, v3::Msg::Deposit, 5).unwrap();
    stop(acct).await;
    storage.close().await.unwrap();
    let v3_bytes = store.snapshot(&key()).expect("a v3 snapshot");
    let v3_ops = store.ops(&key());

    let storage = Storage::new(store.clone());
    let err = spawn(&storage, v1::Acct)
        .await
        .expect_err("v1 cannot read v3");
    let reason = snapshot_decode_reason(err);
    assert!(
        matches!(
            reason,
            DecodeReason::UnknownSchema {
                found: 3,
                expected: 1
            }
        ),
        "{reason}"
    );
    storage.close().await.unwrap();
    assert_eq!(store.snapshot(&key()), Some(v3_bytes));
    assert_eq!(store.ops(&key()), v3_ops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbumped_shape_change_fails_the_spawn_naming_both_fingerprints() {
    let store = MemoryStore::new();
    write_v1(&store).await;
    let v1_bytes = store.snapshot(&key()).expect("a v1 snapshot");

    let storage = Storage::new(store.clone());
    let err = spawn(&storage, wide::Acct)
        .await
        .expect_err("the wider state cannot read v1 bytes");
    match snapshot_decode_reason(err) {
        DecodeReason::ShapeChanged {
            type_name,
            stored_version,
            stored,
            version,
            expected,
        } => {
            assert_eq!(stored_version, 1);
            assert!(type_name.ends_with("AccountWide"), "{type_name}");
            assert_eq!(
                Some(stored),
                ractor_persist::shape_fingerprint::<v1::AccountV1>()
            );
            assert_eq!(
                Some(expected),
                ractor_persist::shape_fingerprint::<wide::AccountWide>()
            );
            assert_eq!(version, 1);
        }
        other => panic!("expected a shape change, got {other}"),
    }
    storage.close().await.unwrap();
    assert_eq!(store.snapshot(&key()), Some(v1_bytes));
}
