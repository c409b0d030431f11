//! The message cycle on ractor: load, handle, commit, reply, perform.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};

use crate::envelope::{self, Header, Kind};
use crate::error::{CommitError, DecodeError, DecodeReason, LoadError, RecordRef, StoreError};
use crate::key::ActorKey;
use crate::model::{OpId, Outcome, Pending, Persistent, PersistentActor};
use crate::shape::shape_fingerprint;
use crate::storage::Storage;
use crate::store::ActorCommit;
use crate::tx::Tx;

/// The start arguments of a persistent actor: where it lives and what `init` gets.
///
/// Pass it to ractor's `Actor::spawn` / `spawn_linked` when you need a name, a supervisor
/// or a handler value that is not `Default`.
pub struct Start<A: PersistentActor> {
    storage: Storage,
    key: String,
    args: A::Arguments,
    quarantine: bool,
}

impl<A: PersistentActor> Start<A> {
    /// Actor `key` on `storage`; `args` go to `init` if the store holds no state for it.
    pub fn new(storage: &Storage, key: impl Into<String>, args: A::Arguments) -> Self {
        Start {
            storage: storage.clone(),
            key: key.into(),
            args,
            quarantine: false,
        }
    }

    /// Opts in to starting fresh when the stored record cannot be decoded: the record is
    /// moved, with its original bytes and the reason, into the store's quarantine (see
    /// [`Storage::quarantined`]) and `init` builds a new state. Without it (the default) the
    /// spawn fails with the [`LoadError::Decode`] and nothing is touched.
    pub fn quarantine_undecodable(mut self) -> Self {
        self.quarantine = true;
        self
    }
}

/// The ractor state of a persistent actor: the user's state and what the runtime keeps.
pub struct Runtime<A: PersistentActor> {
    key: Arc<ActorKey>,
    storage: Storage,
    epoch: u64,
    schema: u32,
    /// Shape fingerprints of the state and op types (0: unknown), written into envelopes.
    state_shape: u64,
    op_shape: u64,
    state: A::State,
    /// The encoding of the last committed state, to detect change and to roll back to.
    committed: Vec<u8>,
    pending: BTreeMap<u64, Pending<A::Op>>,
    next_seq: u64,
    /// Operations whose last `perform` asked to be retried.
    retry: BTreeSet<u64>,
}

impl<A: PersistentActor> Runtime<A> {
    /// The actor's key.
    pub fn key(&self) -> &ActorKey {
        &self.key
    }

    /// The user's state, as last handled.
    pub fn state(&self) -> &A::State {
        &self.state
    }

    /// The pending operations, by sequence number.
    pub fn pending(&self) -> impl Iterator<Item = &Pending<A::Op>> {
        self.pending.values()
    }

    fn rollback(&mut self) -> Result<(), ActorProcessingErr> {
        self.state = envelope::payload(&self.committed).map_err(|reason| DecodeError {
            key: (*self.key).clone(),
            actor_type: std::any::type_name::<A>(),
            record: RecordRef::Snapshot,
            reason,
        })?;
        Ok(())
    }

    fn fail(&self, source: StoreError) -> CommitError {
        match source {
            StoreError::Fenced(f) if f.len() == 1 => CommitError::Fenced {
                key: (*self.key).clone(),
                epoch: f[0].epoch,
                current: f[0].current,
            },
            source => CommitError::Store {
                key: (*self.key).clone(),
                source,
            },
        }
    }
}

/// Loads the actor's record (taking a new epoch), or builds its first state with `init`.
pub async fn pre_start<A: Persistent>(
    actor: &A,
    _myself: ActorRef<A::Msg>,
    start: Start<A>,
) -> Result<Runtime<A>, ActorProcessingErr> {
    let key = Arc::new(ActorKey::new(A::NAME, start.key));
    let store_err = |source| LoadError::Store {
        key: (*key).clone(),
        source,
    };
    let loaded = start
        .storage
        .load((*key).clone())
        .await
        .map_err(store_err)?;
    let state_shape = shape_fingerprint::<A::State>().unwrap_or(0);
    let op_shape = shape_fingerprint::<A::Op>().unwrap_or(0);
    let (snapshot, pending) = match decode_record::<A>(&key, &loaded, state_shape, op_shape) {
        Ok(decoded) => decoded,
        Err(e) if start.quarantine => {
            // Opted in: keep the original bytes aside and start fresh. Sequence numbers go
            // on after every one the quarantined record used, so no op id is reused.
            start
                .storage
                .quarantine(&key, loaded.epoch, e.to_string(), &loaded)
                .await
                .map_err(store_err)?;
            let floor = loaded.ops.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
            let header_seq = loaded
                .snapshot
                .as_deref()
                .and_then(|b| envelope::open(b, Kind::Snapshot, u32::MAX).ok())
                .map_or(0, |(h, _)| h.sequence);
            (Err(floor.max(header_seq)), BTreeMap::new())
        }
        Err(e) => return Err(e.into()),
    };
    let (state, committed, mut next_seq) = match snapshot {
        Ok(loaded) => loaded,
        Err(next_seq) => {
            let state = actor.init(start.args).await?;
            let committed = envelope::to_payload(&state).map_err(|source| LoadError::Encode {
                key: (*key).clone(),
                source,
            })?;
            (state, committed, next_seq)
        }
    };
    if let Some(last) = pending.keys().next_back() {
        next_seq = next_seq.max(last + 1);
    }
    Ok(Runtime {
        key,
        storage: start.storage,
        epoch: loaded.epoch,
        schema: A::VERSION,
        state_shape,
        op_shape,
        state,
        committed,
        pending,
        next_seq,
        retry: BTreeSet::new(),
    })
}

/// The decoded snapshot (state, its current-version encoding, next sequence number), or the
/// first sequence number to use when there is none; and the pending operations.
type Decoded<A> = (
    Result<(<A as PersistentActor>::State, Vec<u8>, u64), u64>,
    BTreeMap<u64, Pending<<A as PersistentActor>::Op>>,
);

/// Decodes (and migrates) a loaded record without touching the store.
fn decode_record<A: Persistent>(
    key: &Arc<ActorKey>,
    loaded: &crate::store::Loaded,
    state_shape: u64,
    op_shape: u64,
) -> Result<Decoded<A>, LoadError> {
    let bad = |record, reason| {
        LoadError::Decode(DecodeError {
            key: (**key).clone(),
            actor_type: std::any::type_name::<A>(),
            record,
            reason,
        })
    };
    let snapshot = match &loaded.snapshot {
        Some(bytes) => {
            let (header, body) = envelope::open(bytes, Kind::Snapshot, A::VERSION)
                .map_err(|r| bad(RecordRef::Snapshot, r))?;
            let state = decode_versioned(A::VERSION, header, body, state_shape, A::migrate_state)
                .map_err(|r| bad(RecordRef::Snapshot, r))?;
            // After a migration the bytes differ from the stored ones: the next change
            // rewrites the snapshot in the current version.
            let committed = if header.schema == A::VERSION {
                body.to_vec()
            } else {
                envelope::to_payload(&state).map_err(|source| LoadError::Encode {
                    key: (**key).clone(),
                    source,
                })?
            };
            Ok((state, committed, header.sequence))
        }
        None => Err(0),
    };
    let mut pending = BTreeMap::new();
    for (seq, bytes) in &loaded.ops {
        let op = envelope::open(bytes, Kind::Op, A::VERSION)
            .and_then(|(header, body)| {
                decode_versioned(A::VERSION, header, body, op_shape, A::migrate_op)
            })
            .map_err(|r| bad(RecordRef::Op(*seq), r))?;
        pending.insert(
            *seq,
            Pending {
                id: OpId::new(key.clone(), *seq),
                op,
                attempts: 0,
            },
        );
    }
    Ok((snapshot, pending))
}

/// Decodes a payload of the current schema `version` (checking its shape) or migrates one of
/// an older schema.
fn decode_versioned<T: serde::de::DeserializeOwned>(
    version: u32,
    header: Header,
    body: &[u8],
    shape: u64,
    migrate: fn(u32, &[u8]) -> Result<T, DecodeReason>,
) -> Result<T, DecodeReason> {
    if header.schema < version {
        return migrate(header.schema, body);
    }
    // 0 is "unknown" (a type serde-reflection cannot trace): nothing to compare.
    if shape != 0 && header.fingerprint != 0 && header.fingerprint != shape {
        return Err(DecodeReason::ShapeChanged {
            type_name: std::any::type_name::<T>(),
            stored: header.fingerprint,
            expected: shape,
            version,
        });
    }
    envelope::payload(body)
}

/// Performs every operation left pending by the previous incarnation, in sequence order,
/// before the first new message.
pub async fn post_start<A: Persistent>(
    actor: &A,
    _myself: ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    let all: Vec<u64> = rt.pending.keys().copied().collect();
    perform(actor, rt, all).await
}

/// One message cycle: handle, commit if anything changed, reply, perform.
pub async fn handle<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    msg: A::Msg,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    let mut tx = Tx::new(&rt.key, &myself, &rt.pending, rt.next_seq);
    let handled = actor.handle(&mut tx, msg, &mut rt.state).await;
    let parts = tx.into_parts();
    if let Err(e) = handled {
        rt.rollback()?;
        return Err(e);
    }
    let encoded = match envelope::to_payload(&rt.state) {
        Ok(bytes) => bytes,
        Err(source) => {
            rt.rollback()?;
            return Err(CommitError::Encode {
                key: (*rt.key).clone(),
                what: "state",
                source,
            }
            .into());
        }
    };
    let changed = encoded != rt.committed;
    if changed || !parts.pushed.is_empty() || !parts.confirmed.is_empty() {
        let next_seq = rt.next_seq + parts.pushed.len() as u64;
        let mut put_ops = Vec::with_capacity(parts.pushed.len());
        for (seq, op) in &parts.pushed {
            match envelope::to_payload(op) {
                Ok(p) => {
                    let head = Header {
                        schema: rt.schema,
                        sequence: *seq,
                        fingerprint: rt.op_shape,
                    };
                    put_ops.push((*seq, envelope::wrap(Kind::Op, head, rt.epoch, &p)));
                }
                Err(source) => {
                    rt.rollback()?;
                    return Err(CommitError::Encode {
                        key: (*rt.key).clone(),
                        what: "operation",
                        source,
                    }
                    .into());
                }
            }
        }
        // The snapshot carries the next sequence number, so ids are never reused even after
        // every operation was removed.
        let head = Header {
            schema: rt.schema,
            sequence: next_seq,
            fingerprint: rt.state_shape,
        };
        let snapshot = (changed || !parts.pushed.is_empty())
            .then(|| envelope::wrap(Kind::Snapshot, head, rt.epoch, &encoded));
        let commit = ActorCommit {
            key: rt.key.clone(),
            epoch: rt.epoch,
            snapshot,
            put_ops,
            remove_ops: parts.confirmed.iter().copied().collect(),
        };
        if let Err(source) = rt.storage.commit(commit).await {
            // Replies and operations are dropped with `parts`: callers see an error.
            rt.rollback()?;
            return Err(rt.fail(source).into());
        }
        rt.committed = encoded;
        rt.next_seq = next_seq;
        for seq in &parts.confirmed {
            rt.pending.remove(seq);
            rt.retry.remove(seq);
        }
    }
    for reply in parts.replies {
        reply();
    }
    let mut order: Vec<u64> = Vec::with_capacity(parts.pushed.len());
    for (seq, op) in parts.pushed {
        rt.pending.insert(
            seq,
            Pending {
                id: OpId::new(rt.key.clone(), seq),
                op,
                attempts: 0,
            },
        );
        order.push(seq);
    }
    // Resumed and retried operations were committed before this message's: they go first.
    let mut again: BTreeSet<u64> = parts.resumed;
    again.extend(std::mem::take(&mut rt.retry));
    let order: Vec<u64> = again.into_iter().chain(order).collect();
    perform(actor, rt, order).await
}

/// Performs the operations `seqs`, in that order, and queues the removal of those done.
async fn perform<A: Persistent>(
    actor: &A,
    rt: &mut Runtime<A>,
    seqs: Vec<u64>,
) -> Result<(), ActorProcessingErr> {
    let mut done = Vec::new();
    let mut result = Ok(());
    for seq in seqs {
        let Some(p) = rt.pending.get_mut(&seq) else {
            continue;
        };
        p.attempts += 1;
        match actor.perform(p, &rt.state).await {
            Ok(Outcome::Done) => {
                rt.pending.remove(&seq);
                done.push(seq);
            }
            Ok(Outcome::KeepUntilConfirmed) => {}
            Ok(Outcome::Retry) => {
                rt.retry.insert(seq);
            }
            Err(e) => {
                // The operation stays pending and is performed again after a restart.
                result = Err(e);
                break;
            }
        }
    }
    if !done.is_empty() {
        rt.storage.ride(ActorCommit {
            key: rt.key.clone(),
            epoch: rt.epoch,
            snapshot: None,
            put_ops: Vec::new(),
            remove_ops: done,
        });
    }
    result
}

#[cfg(test)]
mod tests {
    //! P5 from the inside: after a failed handler or a failed commit, the state in memory is
    //! the stored one. (The actor stops after either, so only the runtime can be asked.)

    use std::sync::atomic::{AtomicBool, Ordering};

    use ractor::ActorProcessingErr;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::{Loaded, Store};

    #[derive(Default)]
    struct Acc;

    enum AccMsg {
        Add(u32),
        AddThenFail(u32),
    }

    impl PersistentActor for Acc {
        type Msg = AccMsg;
        type State = Vec<u32>;
        type Op = u32;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Vec<u32>, ActorProcessingErr> {
            Ok(vec![1])
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: AccMsg,
            state: &mut Vec<u32>,
        ) -> Result<(), ActorProcessingErr> {
            let (AccMsg::Add(n) | AccMsg::AddThenFail(n)) = msg;
            state.push(n);
            tx.push(n);
            match msg {
                AccMsg::Add(_) => Ok(()),
                AccMsg::AddThenFail(_) => Err("failed on purpose".into()),
            }
        }
    }

    impl Persistent for Acc {
        const NAME: &'static str = "acc";
    }
    crate::__impl_actor!(Acc);

    #[derive(Clone, Default)]
    struct Flaky {
        inner: MemoryStore,
        fail: std::sync::Arc<AtomicBool>,
    }

    impl Store for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn open_actor(&self, key: &ActorKey) -> Result<Loaded, StoreError> {
            self.inner.open_actor(key)
        }
        fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::backend("flaky", "injected"));
            }
            self.inner.commit(batch)
        }
    }

    use crate::envelope::decode;

    fn stored(store: &MemoryStore) -> Vec<u32> {
        let bytes = store
            .snapshot(&ActorKey::new("acc", "k"))
            .expect("a snapshot");
        decode::<Vec<u32>>(&bytes, Kind::Snapshot, 1).unwrap().1
    }

    #[tokio::test]
    async fn failed_handler_and_failed_commit_leave_memory_equal_to_the_store() {
        let store = Flaky::default();
        let storage = Storage::new(store.clone());
        let (myself, _) = ractor::Actor::spawn(None, Acc, Start::new(&storage, "probe", ()))
            .await
            .unwrap();
        let mut rt = pre_start(&Acc, myself.clone(), Start::new(&storage, "k", ()))
            .await
            .unwrap();
        handle(&Acc, myself.clone(), AccMsg::Add(2), &mut rt)
            .await
            .unwrap();
        assert_eq!(stored(&store.inner), vec![1, 2]);

        let err = handle(&Acc, myself.clone(), AccMsg::AddThenFail(3), &mut rt).await;
        assert!(err.is_err());
        assert_eq!(
            rt.state(),
            &stored(&store.inner),
            "handler error rolled back"
        );

        store.fail.store(true, Ordering::SeqCst);
        let err = handle(&Acc, myself.clone(), AccMsg::Add(4), &mut rt).await;
        let err = err.expect_err("commit failed");
        assert!(err.downcast_ref::<CommitError>().is_some(), "{err}");
        assert_eq!(
            rt.state(),
            &stored(&store.inner),
            "failed commit rolled back"
        );
        assert_eq!(
            rt.pending().count(),
            0,
            "the failed message's op was dropped"
        );
        assert!(store.inner.ops(&ActorKey::new("acc", "k")).len() <= 1);
        myself.stop(None);
    }
}
