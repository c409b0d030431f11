//! The transaction context a handler writes its effects into.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};

use crate::error::{NotDeadLetter, OverCapacity, RequeueError};
use crate::key::ActorKey;
use crate::model::{OpId, Pending, PersistentActor};

type Reply = Box<dyn FnOnce() + Send>;

/// What one message's handler asked for. Nothing here takes effect unless the commit succeeds.
///
/// * [`push`](Tx::push) an operation: it is committed with the state and performed after.
/// * [`confirm`](Tx::confirm) a pending operation: it is removed in the same commit.
/// * [`reply`](Tx::reply) to a caller: the reply leaves only after the commit returned.
/// * [`resume`](Tx::resume) pending operations: they are performed again after the commit.
pub struct Tx<'a, A: PersistentActor> {
    key: &'a Arc<ActorKey>,
    myself: &'a ActorRef<A::Msg>,
    pending: &'a BTreeMap<u64, Pending<A::Op>>,
    dead: &'a BTreeMap<u64, Pending<A::Op>>,
    max_pending: usize,
    next_seq: u64,
    parts: TxParts<A::Op>,
}

/// What a [`Tx`] collected, taken apart by the runtime after the handler returned.
pub(crate) struct TxParts<Op> {
    pub(crate) pushed: Vec<(u64, Op)>,
    pub(crate) confirmed: BTreeSet<u64>,
    pub(crate) replies: Vec<Reply>,
    pub(crate) resumed: BTreeSet<u64>,
    pub(crate) requeued: BTreeSet<u64>,
    pub(crate) unknown_confirms: usize,
}

impl<'a, A: PersistentActor> Tx<'a, A> {
    pub(crate) fn new(
        key: &'a Arc<ActorKey>,
        myself: &'a ActorRef<A::Msg>,
        pending: &'a BTreeMap<u64, Pending<A::Op>>,
        dead: &'a BTreeMap<u64, Pending<A::Op>>,
        max_pending: usize,
        next_seq: u64,
    ) -> Self {
        Tx {
            key,
            myself,
            pending,
            dead,
            max_pending,
            next_seq,
            parts: TxParts {
                pushed: Vec::new(),
                confirmed: BTreeSet::new(),
                replies: Vec::new(),
                resumed: BTreeSet::new(),
                requeued: BTreeSet::new(),
                unknown_confirms: 0,
            },
        }
    }

    pub(crate) fn into_parts(self) -> TxParts<A::Op> {
        self.parts
    }

    /// The key of the actor handling the message.
    pub fn key(&self) -> &ActorKey {
        self.key
    }

    /// The actor's own ref.
    pub fn myself(&self) -> &ActorRef<A::Msg> {
        self.myself
    }

    /// Adds an operation; it is committed with the state and then performed. Returns its id,
    /// or [`OverCapacity`] (adding nothing) when the actor already holds its maximum of
    /// pending operations (see [`crate::Start::max_pending`]).
    pub fn push(&mut self, op: A::Op) -> Result<OpId, OverCapacity> {
        self.room()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.parts.pushed.push((seq, op));
        Ok(OpId::shared(self.key.clone(), seq))
    }

    /// Refuses one more pending operation when the actor holds its maximum, counting what
    /// this message pushed, re-queued and confirmed.
    fn room(&self) -> Result<(), OverCapacity> {
        let pending = self.pending.len() + self.parts.pushed.len() + self.parts.requeued.len()
            - self.parts.confirmed.len();
        if pending >= self.max_pending {
            return Err(OverCapacity {
                key: (**self.key).clone(),
                pending,
                max: self.max_pending,
            });
        }
        Ok(())
    }

    /// The operations that failed too often and were set aside (dead letters), by sequence
    /// number. They are kept in the store and not performed until re-queued.
    pub fn dead_letters(&self) -> impl Iterator<Item = &Pending<A::Op>> {
        self.dead.values()
    }

    /// Puts a dead letter back among the pending operations, in this message's commit; it is
    /// performed again after the commit with a fresh attempt count.
    ///
    /// Refused, changing nothing, when `id` is not a dead letter of this actor, or when the
    /// actor already holds its maximum of pending operations ([`crate::Start::max_pending`]):
    /// a re-queued operation counts like a pushed one. Re-queueing the same id twice in one
    /// message is one re-queue.
    pub fn requeue(&mut self, id: &OpId) -> Result<(), RequeueError> {
        if id.actor() != &**self.key || !self.dead.contains_key(&id.seq()) {
            return Err(NotDeadLetter {
                key: (**self.key).clone(),
                id: id.clone(),
            }
            .into());
        }
        if self.parts.requeued.contains(&id.seq()) {
            return Ok(());
        }
        self.room()?;
        self.parts.requeued.insert(id.seq());
        Ok(())
    }

    /// How many confirmations of this message named an operation that is not pending.
    pub fn unknown_confirms(&self) -> usize {
        self.parts.unknown_confirms
    }

    /// The operations committed earlier and still pending, by sequence number.
    pub fn pending(&self) -> impl Iterator<Item = &Pending<A::Op>> {
        self.pending.values()
    }

    /// Confirms (removes) a pending operation in this message's commit.
    ///
    /// Returns `false`, and changes nothing, when no such operation is pending: confirming an
    /// unknown or already confirmed id is not an error.
    pub fn confirm(&mut self, id: &OpId) -> bool {
        let known = id.actor() == &**self.key && self.pending.contains_key(&id.seq());
        if known {
            self.parts.confirmed.insert(id.seq());
        } else {
            self.parts.unknown_confirms += 1;
        }
        known
    }

    /// Confirms every pending operation for which `pred` holds; returns how many.
    pub fn confirm_where(&mut self, pred: impl FnMut(&Pending<A::Op>) -> bool) -> usize {
        mark(self.pending, &mut self.parts.confirmed, pred)
    }

    /// Performs every pending operation for which `pred` holds again after this message's
    /// commit, in sequence order (for example those addressed to a peer that reconnected).
    pub fn resume(&mut self, pred: impl FnMut(&Pending<A::Op>) -> bool) -> usize {
        mark(self.pending, &mut self.parts.resumed, pred)
    }

    /// Sends `value` to the caller once this message's commit has returned.
    ///
    /// If the handler returns `Err` or the commit fails, the port is dropped, so the caller
    /// gets ractor's error for a closed reply channel, never a success (see
    /// [`PersistentActor::handle`] for telling a caller why).
    pub fn reply<V: Send + 'static>(&mut self, port: RpcReplyPort<V>, value: V) {
        self.parts.replies.push(Box::new(move || {
            // The caller may have timed out and gone; that is the caller's business.
            let _ = port.send(value);
        }));
    }
}

/// Adds to `set` the pending operations for which `pred` holds; returns how many were new.
fn mark<Op>(
    pending: &BTreeMap<u64, Pending<Op>>,
    set: &mut BTreeSet<u64>,
    mut pred: impl FnMut(&Pending<Op>) -> bool,
) -> usize {
    let before = set.len();
    set.extend(pending.iter().filter(|(_, p)| pred(p)).map(|(seq, _)| *seq));
    set.len() - before
}
