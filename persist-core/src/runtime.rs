//! The message cycle on ractor: load, handle, commit, reply, perform.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};

use crate::envelope::{self, Kind};
use crate::error::{CommitError, DecodeError, LoadError, RecordRef, StoreError};
use crate::key::ActorKey;
use crate::model::{OpId, Outcome, Pending, Persistent, PersistentActor};
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
}

impl<A: PersistentActor> Start<A> {
    /// Actor `key` on `storage`; `args` go to `init` if the store holds no state for it.
    pub fn new(storage: &Storage, key: impl Into<String>, args: A::Arguments) -> Self {
        Start {
            storage: storage.clone(),
            key: key.into(),
            args,
        }
    }
}

/// The ractor state of a persistent actor: the user's state and what the runtime keeps.
pub struct Runtime<A: PersistentActor> {
    key: Arc<ActorKey>,
    storage: Storage,
    epoch: u64,
    schema: u32,
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
    let loaded = start
        .storage
        .load((*key).clone())
        .await
        .map_err(|source| LoadError::Store {
            key: (*key).clone(),
            source,
        })?;
    let bad = |record, reason| {
        LoadError::Decode(DecodeError {
            key: (*key).clone(),
            record,
            reason,
        })
    };
    let (state, committed, mut next_seq) = match &loaded.snapshot {
        Some(bytes) => {
            let (header, body) = envelope::open(bytes, Kind::Snapshot, A::VERSION)
                .map_err(|r| bad(RecordRef::Snapshot, r))?;
            let state = envelope::payload(body).map_err(|r| bad(RecordRef::Snapshot, r))?;
            (state, body.to_vec(), header.sequence)
        }
        None => {
            let state = actor.init(start.args).await?;
            let committed = envelope::to_payload(&state).map_err(|source| LoadError::Encode {
                key: (*key).clone(),
                source,
            })?;
            (state, committed, 0)
        }
    };
    let mut pending = BTreeMap::new();
    for (seq, bytes) in &loaded.ops {
        let (_, op) = envelope::decode(bytes, Kind::Op, A::VERSION)
            .map_err(|r| bad(RecordRef::Op(*seq), r))?;
        pending.insert(
            *seq,
            Pending {
                id: OpId::new(key.clone(), *seq),
                op,
                attempts: 0,
            },
        );
        next_seq = next_seq.max(seq + 1);
    }
    Ok(Runtime {
        key,
        storage: start.storage,
        epoch: loaded.epoch,
        schema: A::VERSION,
        state,
        committed,
        pending,
        next_seq,
        retry: BTreeSet::new(),
    })
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
                Ok(p) => put_ops.push((
                    *seq,
                    envelope::wrap(Kind::Op, rt.schema, rt.epoch, *seq, &p),
                )),
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
        let snapshot = (changed || !parts.pushed.is_empty())
            .then(|| envelope::wrap(Kind::Snapshot, rt.schema, rt.epoch, next_seq, &encoded));
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
