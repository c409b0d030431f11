//! The transaction context a handler writes its effects into.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::delivery::{
    Channel, FirstRequest, Mail, Once, RequestRefused, RequestRow, Settled, Settlement,
};
use crate::error::{
    CommitError, EventError, MapError, NotDeadLetter, OverCapacity, RequeueError, SendError,
};
use crate::journal::EventSourced;
use crate::key::ActorKey;
use crate::map::DurableMap;
use crate::model::{Control, OpId, Pending, Persistent, PersistentActor};
use crate::timer::{Fired, Timer, TimerChange, TimerError, Timers};

type Reply = Box<dyn FnOnce() + Send>;

/// What one message's handler asked for. Nothing here takes effect unless the commit succeeds.
///
/// * [`push`](Tx::push) an operation: it is committed with the state and performed after.
/// * [`confirm`](Tx::confirm) a pending operation: it is removed in the same commit.
/// * [`reply`](Tx::reply) to a caller: the reply leaves only after the commit returned.
/// * [`resume`](Tx::resume) pending operations: they are performed again after the commit.
/// * [`send`](Tx::send) a message to another persistent actor: it is stored in the outbox
///   with the commit, delivered after it, and applied there exactly once in effect.
/// * [`settlement`](Tx::settlement): a future of how an operation or message ends, for the
///   caller to wait on.
/// * [`once`](Tx::once): apply a request from outside once, and answer repeats with the
///   first reply.
/// * [`set_timer_after`](Tx::set_timer_after), [`set_timer_at`](Tx::set_timer_at),
///   [`cancel_timer`](Tx::cancel_timer): durable timers, set and cancelled in the commit, fired
///   later as a message ([`fired`](Tx::fired) names the one being handled).
pub struct Tx<'a, A: PersistentActor> {
    key: &'a Arc<ActorKey>,
    myself: &'a ActorRef<A::Msg>,
    pending: &'a BTreeMap<u64, Pending<A::Op>>,
    dead: &'a BTreeMap<u64, Pending<A::Op>>,
    mail: &'a Mail,
    received: Option<&'a OpId>,
    timers: &'a Timers,
    fired: Option<&'a FiredRow>,
    max_pending: usize,
    /// The sequence number the first event emitted gets.
    first_event: u64,
    maps: &'a mut crate::map::MapSet,
    parts: TxParts<A::Op>,
}

/// The timer whose firing a message cycle handles: its name and row.
pub(crate) struct FiredRow {
    pub(crate) name: String,
    pub(crate) row: u64,
}

/// A message a handler sent, numbered on its channel.
pub(crate) struct Sent {
    pub(crate) id: u64,
    pub(crate) to: ActorKey,
    pub(crate) channel: u64,
    pub(crate) seq: u64,
    pub(crate) fingerprint: u64,
    pub(crate) payload: Vec<u8>,
}

/// What a [`Tx`] collected, taken apart by the runtime after the handler returned.
pub(crate) struct TxParts<Op> {
    pub(crate) pushed: Vec<(u64, Op)>,
    pub(crate) confirmed: BTreeSet<u64>,
    pub(crate) replies: Vec<Reply>,
    pub(crate) resumed: BTreeSet<u64>,
    pub(crate) requeued: BTreeSet<u64>,
    pub(crate) unknown_confirms: usize,
    /// The next id to hand out (operations, messages, channels, stored replies).
    pub(crate) next_seq: u64,
    /// The events emitted, encoded, in order (event-sourced actors).
    pub(crate) events: Vec<Vec<u8>>,
    /// What delivery asked for, allocated only when a handler uses it: the message cycle's
    /// future stays small for the messages that do not.
    pub(crate) extra: Option<Box<TxExtra>>,
}

/// The delivery part of what a [`Tx`] collected.
#[derive(Default)]
pub(crate) struct TxExtra {
    pub(crate) sent: Vec<Sent>,
    /// The channels this message sent on, with their new last sequence numbers.
    pub(crate) channels: HashMap<ActorKey, Channel>,
    pub(crate) watch: Vec<(u64, oneshot::Sender<Settled>)>,
    /// Replies to idempotent requests to store, by the slot handed out.
    pub(crate) requests: Vec<(u64, RequestRow)>,
    pub(crate) refusals: Vec<crate::delivery::Refusal>,
    /// Request keys answered [`Once::First`] in this message.
    pub(crate) firsts: Vec<String>,
    /// Timers set and cancelled, in order.
    pub(crate) timers: Vec<TimerChange>,
}

impl<'a, A: PersistentActor> Tx<'a, A> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        key: &'a Arc<ActorKey>,
        myself: &'a ActorRef<A::Msg>,
        pending: &'a BTreeMap<u64, Pending<A::Op>>,
        dead: &'a BTreeMap<u64, Pending<A::Op>>,
        mail: &'a Mail,
        received: Option<&'a OpId>,
        timers: &'a Timers,
        fired: Option<&'a FiredRow>,
        max_pending: usize,
        next_seq: u64,
        first_event: u64,
        maps: &'a mut crate::map::MapSet,
    ) -> Self {
        Tx {
            key,
            myself,
            pending,
            dead,
            mail,
            received,
            timers,
            fired,
            max_pending,
            first_event,
            maps,
            parts: TxParts {
                pushed: Vec::new(),
                confirmed: BTreeSet::new(),
                replies: Vec::new(),
                resumed: BTreeSet::new(),
                requeued: BTreeSet::new(),
                unknown_confirms: 0,
                next_seq,
                events: Vec::new(),
                extra: None,
            },
        }
    }

    /// The delivery part, allocated on first use.
    fn extra(&mut self) -> &mut TxExtra {
        self.parts.extra.get_or_insert_with(Box::default)
    }

    /// Hands out the next id.
    fn next_id(&mut self) -> u64 {
        let id = self.parts.next_seq;
        self.parts.next_seq += 1;
        id
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
        let seq = self.next_id();
        self.parts.pushed.push((seq, op));
        Ok(OpId::shared(self.key.clone(), seq))
    }

    /// Refuses one more pending operation when the actor holds its maximum, counting what
    /// this message pushed, re-queued and confirmed.
    fn room(&self) -> Result<(), OverCapacity> {
        let pending = self.pending.len()
            + self.mail.outbox.len()
            + self.parts.pushed.len()
            + self.parts.extra.as_ref().map_or(0, |e| e.sent.len())
            + self.parts.requeued.len()
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

    /// Sends `msg` to the persistent actor `to` (on this storage, or wherever the storage's
    /// [`crate::Courier`] carries it), exactly once in effect, and returns its id.
    ///
    /// The message is stored in this actor's outbox in this message's commit, numbered on
    /// the channel from this actor to `to`, and posted after the commit. The receiver applies
    /// it (through its [`PersistentActor::inbound`] and `handle`) only if it is the next of
    /// the channel, records that in its own commit, and acknowledges it; the acknowledgement
    /// removes it from the outbox. Until then it is posted again on the actor's
    /// [`crate::Redelivery`] timer and after every restart; a destination that is not running
    /// yet gets it when it starts. [`settlement`](Self::settlement) waits for the
    /// acknowledgement.
    ///
    /// Refused, adding nothing: a message that does not encode, an actor whose message type
    /// has no control variant (acknowledgements could not reach it), or one that holds its
    /// maximum of pending operations and messages ([`crate::Start::max_pending`]).
    pub fn send<M>(&mut self, to: ActorKey, msg: &M) -> Result<OpId, SendError>
    where
        M: Serialize + DeserializeOwned + 'static,
    {
        if A::wrap_control(Control::RedeliverDue).is_none() {
            return Err(SendError::NoControlVariant {
                actor_type: std::any::type_name::<A>(),
            });
        }
        self.room()?;
        let payload = crate::envelope::to_payload(msg).map_err(|source| SendError::Encode {
            key: (**self.key).clone(),
            to: to.clone(),
            source,
        })?;
        let fingerprint = crate::shape::shape_fingerprint::<M>().unwrap_or(0);
        let id = self.next_id();
        let known = self
            .parts
            .extra
            .as_ref()
            .and_then(|e| e.channels.get(&to))
            .or(self.mail.channels.get(&to))
            .copied();
        let channel = match known {
            Some(channel) => channel,
            None => Channel {
                id: self.next_id(),
                last: 0,
            },
        };
        let channel = Channel {
            last: channel.last + 1,
            ..channel
        };
        let extra = self.extra();
        extra.channels.insert(to.clone(), channel);
        extra.sent.push(crate::tx::Sent {
            id,
            to,
            channel: channel.id,
            seq: channel.last,
            fingerprint,
            payload,
        });
        Ok(OpId::shared(self.key.clone(), id))
    }

    /// [`send`](Self::send) to the actor of type `B` under `key`.
    pub fn send_to<B, M>(&mut self, key: &str, msg: &M) -> Result<OpId, SendError>
    where
        B: Persistent,
        M: Serialize + DeserializeOwned + 'static,
    {
        self.send(ActorKey::new(B::NAME, key), msg)
    }

    /// The messages this actor sent that are not acknowledged yet, by id, with their
    /// destinations (the ones this message sends are not among them).
    pub fn outgoing(&self) -> impl Iterator<Item = (OpId, &ActorKey)> {
        let key = self.key;
        self.mail
            .outbox
            .iter()
            .map(move |(id, o)| (OpId::shared(key.clone(), *id), &o.to))
    }

    /// The sender's id of the message being handled, when it came from another persistent
    /// actor through [`send`](Self::send); `None` otherwise.
    pub fn received(&self) -> Option<&OpId> {
        self.received
    }

    /// A future of how the operation or message `id` of this actor ends: performed
    /// ([`Settled::Done`]), confirmed, acknowledged by its receiver, or set aside as a dead
    /// letter. Ids pushed or sent by this message count. Hand it to the caller in the reply;
    /// it resolves without polling. If the actor stops first it resolves to
    /// [`Settled::Stopped`] (the id is still pending in the store).
    pub fn settlement(&mut self, id: &OpId) -> Settlement {
        if id.actor() != &**self.key {
            return Settlement::now(Settled::NotPending);
        }
        let seq = id.seq();
        if self.dead.contains_key(&seq) && !self.parts.requeued.contains(&seq) {
            return Settlement::now(Settled::DeadLetter);
        }
        let (tx, rx) = oneshot::channel();
        self.extra().watch.push((seq, tx));
        Settlement::later(rx)
    }

    /// Applies a request from outside at most once: `key` names it (a client's idempotency
    /// key), `payload` is what it asks (compared with the first request of the key by a
    /// 64-bit digest of its encoding), `port` is where the reply goes.
    ///
    /// * [`Once::First`]: do the work, then answer with [`reply_once`](Self::reply_once); the
    ///   reply is stored in this message's commit.
    /// * [`Once::Repeated`]: a repeat (a caller that timed out and tried again): the first
    ///   reply goes to `port` after this message, and nothing else should change.
    /// * [`Once::Refused`]: the key was used with another payload (also logged and counted
    ///   as a [`crate::Refusal::RequestKeyReused`]), or the stored reply does not read as
    ///   `V`; the port comes back to answer with.
    ///
    /// The actor keeps the replies of its last [`crate::Start::request_retention`] requests
    /// (1,024 by default). A repeat of an older request is not recognised: it reads as
    /// [`Once::First`] and is applied again.
    pub fn once<P, V>(&mut self, key: &str, payload: &P, port: RpcReplyPort<V>) -> Once<V>
    where
        P: Serialize + ?Sized,
        V: Serialize + DeserializeOwned + Send + 'static,
    {
        let bytes = match postcard::to_stdvec(payload) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = RequestRefused::Encode {
                    key: key.to_owned(),
                    reason: e.to_string(),
                };
                return Once::Refused(port, reason);
            }
        };
        let digest = crate::delivery::digest(&bytes);
        let stored = self
            .parts
            .extra
            .iter()
            .flat_map(|e| e.requests.iter())
            .map(|(_, r)| r)
            .find(|r| r.key == key)
            .map(|r| (r.digest, r.fingerprint, r.reply.as_slice()))
            .or_else(|| {
                self.mail
                    .requests
                    .get(key)
                    .map(|r| (r.digest, r.fingerprint, r.reply.as_slice()))
            });
        let Some((first, fingerprint, reply)) = stored else {
            let asked = self.parts.extra.as_ref().map(|e| e.firsts.as_slice());
            if asked.unwrap_or_default().iter().any(|k| k == key) {
                // Already answered `First` in this message and not replied to yet: a second
                // application would apply it twice.
                let reason = RequestRefused::AskedTwice {
                    key: key.to_owned(),
                };
                return Once::Refused(port, reason);
            }
            self.extra().firsts.push(key.to_owned());
            return Once::First(FirstRequest {
                key: key.to_owned(),
                digest,
                port,
            });
        };
        if first != digest {
            let actor = (**self.key).clone();
            self.extra()
                .refusals
                .push(crate::delivery::Refusal::RequestKeyReused {
                    actor,
                    request: key.to_owned(),
                });
            let reason = RequestRefused::KeyReused {
                key: key.to_owned(),
            };
            return Once::Refused(port, reason);
        }
        let expected = crate::shape::shape_fingerprint::<V>().unwrap_or(0);
        let value = if expected == fingerprint {
            crate::envelope::payload::<V>(reply)
        } else {
            Err(crate::error::DecodeReason::MessageShape {
                type_name: std::any::type_name::<V>(),
                sent: fingerprint,
                expected,
            })
        };
        match value {
            Ok(value) => {
                self.reply(port, value);
                Once::Repeated
            }
            Err(reason) => Once::Refused(
                port,
                RequestRefused::StoredReply {
                    key: key.to_owned(),
                    reason,
                },
            ),
        }
    }

    /// Answers a request seen for the first time ([`once`](Self::once)): `value` is stored
    /// with this message's commit (for repeats) and sent once the commit returned. Fails,
    /// storing nothing, when `value` does not encode.
    pub fn reply_once<V>(&mut self, first: FirstRequest<V>, value: V) -> Result<(), CommitError>
    where
        V: Serialize + DeserializeOwned + Send + 'static,
    {
        let reply = crate::envelope::to_payload(&value).map_err(|source| CommitError::Encode {
            key: (**self.key).clone(),
            what: "request reply",
            source,
        })?;
        let slot = self.next_id();
        self.extra().requests.push((
            slot,
            RequestRow {
                key: first.key,
                digest: first.digest,
                fingerprint: crate::shape::shape_fingerprint::<V>().unwrap_or(0),
                reply,
            },
        ));
        self.reply(first.port, value);
        Ok(())
    }

    /// Sets the durable timer `name` to fire `after` from now, with `payload`; it replaces a
    /// timer of the same name. The timer is committed with this message; when it is due the
    /// actor's [`PersistentActor::timer`] makes a message of it, handled like any other, and
    /// its removal is committed with that message (at least once, never before its instant:
    /// see `docs/durability.md`).
    ///
    /// Refused, setting nothing: a delay that overflows the clock
    /// ([`TimerError::Overflow`]), a payload that does not encode, a payload the actor's
    /// `timer` would refuse, or an actor whose message type has no control variant.
    pub fn set_timer_after<M>(
        &mut self,
        name: &str,
        after: std::time::Duration,
        payload: &M,
    ) -> Result<(), TimerError>
    where
        M: Serialize + DeserializeOwned + 'static,
    {
        let overflow = || TimerError::Overflow {
            key: (**self.key).clone(),
            name: name.to_owned(),
            after,
        };
        let at = std::time::SystemTime::now()
            .checked_add(after)
            .ok_or_else(overflow)?;
        let due = crate::timer::to_ms_ceil(at).ok_or_else(overflow)?;
        self.set_timer(name, due, payload)
    }

    /// Sets the durable timer `name` to fire at the wall-clock instant `at` (at once if it is
    /// past), with `payload`; see [`set_timer_after`](Self::set_timer_after).
    pub fn set_timer_at<M>(
        &mut self,
        name: &str,
        at: std::time::SystemTime,
        payload: &M,
    ) -> Result<(), TimerError>
    where
        M: Serialize + DeserializeOwned + 'static,
    {
        let due = crate::timer::to_ms_ceil(at).ok_or_else(|| TimerError::Overflow {
            key: (**self.key).clone(),
            name: name.to_owned(),
            after: at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        })?;
        self.set_timer(name, due, payload)
    }

    fn set_timer<M>(&mut self, name: &str, due: u64, payload: &M) -> Result<(), TimerError>
    where
        M: Serialize + DeserializeOwned + 'static,
    {
        if A::wrap_control(Control::TimerDue).is_none() {
            return Err(TimerError::NoControlVariant {
                actor_type: std::any::type_name::<A>(),
            });
        }
        let payload =
            crate::envelope::to_payload(payload).map_err(|source| TimerError::Encode {
                key: (**self.key).clone(),
                name: name.to_owned(),
                source,
            })?;
        // The stored row (name, instant, payload) must fit the cap too, or the commit would
        // fail on it.
        let fingerprint = crate::shape::shape_fingerprint::<M>().unwrap_or(0);
        let row = crate::timer::TimerRow {
            name: name.to_owned(),
            due,
            fingerprint,
            payload,
        };
        if let Err(source) = crate::envelope::to_payload(&row) {
            return Err(TimerError::Encode {
                key: (**self.key).clone(),
                name: name.to_owned(),
                source,
            });
        }
        let timer = Timer {
            row: 0,
            due,
            fingerprint,
            payload: row.payload.into(),
        };
        // Refused now rather than when it fires, where it could only stop the actor.
        let fired = Fired::new((**self.key).clone(), name.to_owned(), &timer);
        if let Err(reason) = A::timer(fired) {
            return Err(TimerError::NotAccepted {
                key: (**self.key).clone(),
                name: name.to_owned(),
                reason,
            });
        }
        let timer = Timer {
            row: self.next_id(),
            ..timer
        };
        self.extra().timers.push(TimerChange::Set {
            name: name.to_owned(),
            timer,
        });
        Ok(())
    }

    /// Cancels the durable timer `name` in this message's commit: it never fires (unless a
    /// crash comes before the commit, when it was never cancelled). Cancelling a timer set
    /// earlier in this message cancels it too. [`TimerError::Unknown`] when no timer of that
    /// name is set (the one being handled no longer is).
    pub fn cancel_timer(&mut self, name: &str) -> Result<(), TimerError> {
        if self.timer(name).is_none() {
            return Err(TimerError::Unknown {
                key: (**self.key).clone(),
                name: name.to_owned(),
            });
        }
        self.extra().timers.push(TimerChange::Cancel {
            name: name.to_owned(),
        });
        Ok(())
    }

    /// When the durable timer `name` is due, as of this message (its sets and cancels
    /// included); `None` if no such timer is set.
    pub fn timer(&self, name: &str) -> Option<std::time::SystemTime> {
        let changed = self.parts.extra.iter().flat_map(|x| x.timers.iter().rev());
        if let Some(change) = changed.into_iter().find(|c| c.name() == name) {
            return match change {
                TimerChange::Set { timer, .. } => Some(crate::timer::from_ms(timer.due)),
                TimerChange::Cancel { .. } => None,
            };
        }
        self.timers
            .get(name)
            .filter(|t| self.fired.is_none_or(|f| f.row != t.row))
            .map(|t| crate::timer::from_ms(t.due))
    }

    /// The durable timers set, as of this message, by name, with when they are due.
    pub fn timers(&self) -> Vec<(String, std::time::SystemTime)> {
        let mut names: BTreeSet<&str> = self.timers.keys().map(String::as_str).collect();
        names.extend(
            self.parts
                .extra
                .iter()
                .flat_map(|x| x.timers.iter().map(TimerChange::name)),
        );
        names
            .into_iter()
            .filter_map(|n| Some((n.to_owned(), self.timer(n)?)))
            .collect()
    }

    /// The name of the durable timer whose firing this message is, if it is one.
    pub fn fired(&self) -> Option<&str> {
        self.fired.map(|f| f.name.as_str())
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

    /// Durable map `name`, with keys `K` and values `V`: a keyed collection kept beside the
    /// state, stored one row per entry, of which a commit writes only the entries this
    /// message changed (see [`DurableMap`]). Its entries are loaded with the actor and
    /// decoded on the first call; reads are from memory.
    ///
    /// Fails if a stored entry does not decode as `(K, V)` ([`MapError::Decode`], nothing is
    /// changed), if this instance already took the map with other types, or if the name is
    /// longer than [`crate::MAX_MAP_NAME`] bytes.
    ///
    /// ```ignore
    /// let seen = tx.map::<OpId, u64>("seen")?;
    /// if !seen.contains_key(&id) { seen.insert(id, amount); }
    /// ```
    pub fn map<K, V>(&mut self, name: &str) -> Result<&mut DurableMap<K, V>, MapError>
    where
        K: Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.maps
            .get::<K, V>(self.key, std::any::type_name::<A>(), name)
    }
}

impl<A: EventSourced> Tx<'_, A> {
    /// Applies `event` to `state` with [`EventSourced::apply`] and appends it to the journal
    /// in this message's commit; returns its sequence number. The state in memory is the new
    /// one at once; the event is durable, and the replies and operations of the message leave,
    /// only after the commit.
    ///
    /// If `apply` refuses, nothing is applied or appended ([`EventError::Rejected`]); an
    /// actor not derived with `#[persistent(event_sourced)]` is refused
    /// ([`EventError::NotEventSourced`]), as its events would not be journaled.
    pub fn emit(&mut self, state: &mut A::State, event: A::Event) -> Result<u64, EventError> {
        let seq = self.first_event + self.parts.events.len() as u64;
        if A::__journal().is_none() {
            return Err(EventError::NotEventSourced {
                actor_type: std::any::type_name::<A>(),
            });
        }
        let payload = crate::envelope::to_payload(&event).map_err(|source| EventError::Encode {
            key: (**self.key).clone(),
            seq,
            source,
        })?;
        A::apply(state, &event).map_err(|source| EventError::Rejected {
            key: (**self.key).clone(),
            seq,
            source,
        })?;
        self.parts.events.push(payload);
        Ok(seq)
    }

    /// The number of events this message emitted so far.
    pub fn emitted(&self) -> usize {
        self.parts.events.len()
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
