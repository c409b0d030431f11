//! Delivery between persistent actors: letters, the postbox that hands them to running
//! actors, the refusals, redelivery, settlements and idempotent requests.
//!
//! A handler sends with [`crate::Tx::send`]. The message is stored in the sender's outbox
//! ([`crate::Space::OUTBOX`]) in the same commit as the sender's state, numbered on its
//! channel (one channel per sender and destination), and posted after the commit. The
//! receiver keeps, per sender, the channel and the highest sequence number it applied
//! ([`crate::Space::INBOX`], one small row per sender, written in the commit that applies the
//! message). It applies a message only if it is the next one of its channel, drops a
//! duplicate and acknowledges it again, and refuses one past a gap. The acknowledgement goes
//! back after the receiver's commit; the sender removes the acknowledged messages in a later
//! commit. Until then they are posted again on a timer ([`Redelivery`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{DecodeReason, RetryPolicyError};
use crate::key::ActorKey;
use crate::model::{OpId, RetryPolicy};

/// A letter between two persistent actors: a message on a channel, or the acknowledgement
/// of one. What a [`Courier`] carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Letter {
    pub(crate) from: ActorKey,
    pub(crate) to: ActorKey,
    pub(crate) channel: u64,
    pub(crate) seq: u64,
    pub(crate) body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// A message: the sender's id for it, the shape fingerprint of its type, its postcard
    /// bytes.
    Message {
        id: u64,
        fingerprint: u64,
        payload: Arc<[u8]>,
    },
    /// Every message of the channel up to `seq` was applied.
    Ack,
    /// Every message of the channel up to `seq` was applied, and a later one was refused
    /// because the next one is missing.
    Missing,
}

impl Letter {
    /// A message letter, as the runtime posts it: for transports that rebuild letters they
    /// carried, and for tests. `id` is the sender's id of the message, `payload` the postcard
    /// encoding of a value whose shape fingerprint is `fingerprint` (0: unknown).
    pub fn message(
        from: ActorKey,
        to: ActorKey,
        channel: u64,
        seq: u64,
        id: u64,
        fingerprint: u64,
        payload: Vec<u8>,
    ) -> Self {
        Letter {
            from,
            to,
            channel,
            seq,
            body: Body::Message {
                id,
                fingerprint,
                payload: payload.into(),
            },
        }
    }

    /// An acknowledgement from `from` (the receiver) to `to` (the sender): every message of
    /// `channel` up to `seq` was applied.
    pub fn ack(from: ActorKey, to: ActorKey, channel: u64, seq: u64) -> Self {
        Letter {
            from,
            to,
            channel,
            seq,
            body: Body::Ack,
        }
    }

    /// An acknowledgement that also says a later message was refused because message
    /// `seq + 1` is missing: the sender posts that one again at once.
    pub fn missing(from: ActorKey, to: ActorKey, channel: u64, seq: u64) -> Self {
        Letter {
            from,
            to,
            channel,
            seq,
            body: Body::Missing,
        }
    }

    /// Who posted it.
    pub fn from(&self) -> &ActorKey {
        &self.from
    }

    /// Who it is for.
    pub fn to(&self) -> &ActorKey {
        &self.to
    }

    /// The channel: an id the sender chose for its channel to this destination, unique
    /// forever among the sender's ids.
    pub fn channel(&self) -> u64 {
        self.channel
    }

    /// The message's sequence number on its channel (from 1), or for an acknowledgement the
    /// highest one applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether this is an acknowledgement (a plain one, or one that says the next message
    /// is missing).
    pub fn is_ack(&self) -> bool {
        matches!(self.body, Body::Ack | Body::Missing)
    }

    /// Whether this is an acknowledgement that says message `seq + 1` is missing.
    pub fn is_missing(&self) -> bool {
        matches!(self.body, Body::Missing)
    }

    /// The postcard bytes of the message; `None` for an acknowledgement. With
    /// [`fingerprint`](Self::fingerprint) and [`message_id`](Self::message_id), what a
    /// transport carries to rebuild the letter with [`Letter::message`].
    pub fn payload(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Message { payload, .. } => Some(payload),
            Body::Ack | Body::Missing => None,
        }
    }

    /// The shape fingerprint of the message's type (0: unknown); `None` for an
    /// acknowledgement.
    pub fn fingerprint(&self) -> Option<u64> {
        match &self.body {
            Body::Message { fingerprint, .. } => Some(*fingerprint),
            Body::Ack | Body::Missing => None,
        }
    }

    /// The sender's id of the message (what its `send` returned); `None` for an
    /// acknowledgement.
    pub fn message_id(&self) -> Option<OpId> {
        match &self.body {
            Body::Message { id, .. } => Some(OpId::new(self.from.clone(), *id)),
            Body::Ack | Body::Missing => None,
        }
    }
}

/// Carries letters between persistent actors. The default hands each letter to the
/// destination's mailbox at once ([`Postbox::deliver`]); a courier may instead carry it over
/// a network, or (in tests) drop, duplicate, delay or reorder it: the runtime posts again
/// what was not acknowledged and applies each message once.
///
/// A courier between nodes also hears which actors run here ([`Courier::registered`],
/// [`Courier::unregistered`]), to tell the other nodes where to carry their letters, and
/// wakes the senders whose letters were lost with a link when it comes back
/// ([`Postbox::wake`]).
pub trait Courier: Send + Sync + 'static {
    /// Carries `letter`, now or later, to `postbox.deliver` (or to another node's postbox).
    fn carry(&self, letter: Letter, postbox: &Postbox);

    /// Actor `key` now takes letters on this postbox (it started here). Called once per
    /// registration, in the order of the registrations and removals of the key, with the
    /// postbox's lock held: it must be quick and must not call back into the postbox. The
    /// default does nothing.
    fn registered(&self, key: &ActorKey) {
        let _ = key;
    }

    /// Actor `key` no longer takes letters on this postbox (it stopped, failed or was
    /// killed). Same rules as [`Courier::registered`]. The default does nothing.
    fn unregistered(&self, key: &ActorKey) {
        let _ = key;
    }
}

/// What the postbox hands an actor's mailbox.
pub(crate) enum Wire {
    Letter(Letter),
    /// A destination that this actor found missing is running now.
    Arrived(ActorKey),
}

/// Hands a wire to one actor's mailbox; false when the actor is gone.
pub(crate) type Slot = Arc<dyn Fn(Wire) -> bool + Send + Sync>;

/// The persistent actors running on one [`crate::Storage`], by key, and the letters between
/// them. Cheap to clone; [`crate::Storage::postbox`] gives it.
#[derive(Clone)]
pub struct Postbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    courier: Option<Arc<dyn Courier>>,
}

#[derive(Default)]
struct State {
    /// Running actors that take letters: their epoch and their mailbox.
    actors: HashMap<ActorKey, (u64, Slot)>,
    /// Destinations that were missing, and the senders to tell when they start.
    waiting: HashMap<ActorKey, BTreeSet<ActorKey>>,
    refusals: VecDeque<Refusal>,
    refused: u64,
    /// Registries by the namespace they serve: a letter to one of their actors that is not
    /// running activates it.
    activators: HashMap<String, Activator>,
}

/// Activates an actor that is not running (a registry's hook).
pub(crate) type Activator = Arc<dyn Fn(&ActorKey) + Send + Sync>;

/// How many refusals [`Postbox::refusals`] keeps.
const KEPT_REFUSALS: usize = 1024;

impl fmt::Debug for Postbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postbox").finish_non_exhaustive()
    }
}

impl Postbox {
    pub(crate) fn new(courier: Option<Arc<dyn Courier>>) -> Self {
        Postbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                courier,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed: every change
        // is one insert or remove.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `letter` to the running actor it is addressed to. Returns false when no actor
    /// of that key runs on this storage: the letter is dropped, and the sender of a message
    /// is told when the destination starts, so it posts again then.
    pub fn deliver(&self, letter: Letter) -> bool {
        let mut letter = letter;
        loop {
            let found = {
                let mut state = self.state();
                match state.actors.get(&letter.to) {
                    Some((epoch, slot)) => Ok((*epoch, slot.clone())),
                    None => {
                        let mut activate = None;
                        if !letter.is_ack() {
                            let (to, from) = (letter.to.clone(), letter.from.clone());
                            activate = state.activators.get(to.namespace()).cloned();
                            state.waiting.entry(to).or_default().insert(from);
                        }
                        Err(activate)
                    }
                }
            };
            let (epoch, slot) = match found {
                Ok(found) => found,
                Err(activate) => {
                    // The sender is told when the destination registers, and posts again.
                    if let Some(activate) = activate {
                        activate(&letter.to);
                    }
                    return false;
                }
            };
            let kept = letter.clone();
            if slot(Wire::Letter(letter)) {
                return true;
            }
            // The actor stopped without unregistering (it failed or was killed).
            letter = kept;
            let mut state = self.state();
            if state
                .actors
                .get(&letter.to)
                .is_some_and(|(e, _)| *e == epoch)
            {
                state.actors.remove(&letter.to);
                self.tell_courier(|c| c.unregistered(&letter.to));
            }
        }
    }

    /// Posts `letter` through the courier, or delivers it directly without one.
    pub(crate) fn post(&self, letter: Letter) {
        match &self.shared.courier {
            Some(courier) => courier.carry(letter, self),
            None => {
                self.deliver(letter);
            }
        }
    }

    /// Makes actor `key` (writer `epoch`) reachable, and tells the senders waiting for it.
    pub(crate) fn register(&self, key: &ActorKey, epoch: u64, slot: Slot) {
        let slots: Vec<Slot> = {
            let mut state = self.state();
            if state.actors.get(key).is_some_and(|(e, _)| *e > epoch) {
                // A newer instance of the key registered first: this one is stale (the
                // store fences its writes) and takes no letters.
                return;
            }
            state.actors.insert(key.clone(), (epoch, slot));
            self.tell_courier(|c| c.registered(key));
            let waiting: Vec<ActorKey> = state
                .waiting
                .remove(key)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default();
            waiting
                .iter()
                .filter_map(|w| state.actors.get(w).map(|(_, s)| s.clone()))
                .collect()
        };
        for slot in slots {
            slot(Wire::Arrived(key.clone()));
        }
    }

    /// Makes letters to a not-running actor of `namespace` call `activate` (a registry).
    pub(crate) fn set_activator(&self, namespace: &str, activate: Activator) {
        self.state()
            .activators
            .insert(namespace.to_owned(), activate);
    }

    /// Removes actor `key` if `epoch` is still the registered one.
    pub(crate) fn unregister(&self, key: &ActorKey, epoch: u64) {
        let mut state = self.state();
        if state.actors.get(key).is_some_and(|(e, _)| *e == epoch) {
            state.actors.remove(key);
            self.tell_courier(|c| c.unregistered(key));
        }
    }

    /// Tells the courier, if there is one, that a key started or stopped taking letters.
    fn tell_courier(&self, tell: impl FnOnce(&dyn Courier)) {
        if let Some(courier) = &self.shared.courier {
            tell(&**courier);
        }
    }

    /// Whether an actor of `key` is registered (it may have stopped since).
    pub fn is_running(&self, key: &ActorKey) -> bool {
        self.state().actors.contains_key(key)
    }

    /// Tells the running actor `sender` to post again, now, every message in its outbox
    /// for `destination` (as when a missing destination starts on this storage): for a
    /// courier that lost letters with a link and learns the link is back. Messages already
    /// acknowledged are not in the outbox, and a message applied before is only
    /// acknowledged again, so a wake too many costs posts, never a second effect. Returns
    /// false when no actor of key `sender` runs here (it posts its outbox when it starts).
    pub fn wake(&self, sender: &ActorKey, destination: &ActorKey) -> bool {
        let slot = self.state().actors.get(sender).map(|(_, s)| s.clone());
        slot.is_some_and(|slot| slot(Wire::Arrived(destination.clone())))
    }

    /// Records and logs a refusal.
    pub(crate) fn refuse(&self, refusal: Refusal) {
        tracing::warn!(target: "ractor_persist::delivery", %refusal, "letter refused");
        let mut state = self.state();
        state.refused += 1;
        if state.refusals.len() == KEPT_REFUSALS {
            state.refusals.pop_front();
        }
        state.refusals.push_back(refusal);
    }

    /// The most recent refusals (up to 1,024), oldest first. Each was also logged with
    /// `tracing` at warn level.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.state().refusals.iter().cloned().collect()
    }

    /// How many letters and requests were refused since the storage started.
    pub fn refused(&self) -> u64 {
        self.state().refused
    }
}

/// A letter or a request refused. None of them changes the receiver's state; each is logged
/// and kept in [`Postbox::refusals`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A first message from a sender that is not the first of its channel: the receiver has
    /// no inbox entry for the sender (it never heard from it, or its record was deleted).
    #[error(
        "`{to}` refused message {seq} of channel {channel} from unknown sender `{from}`: a \
         channel starts at 1"
    )]
    UnknownSender {
        /// The sender.
        from: ActorKey,
        /// The receiver.
        to: ActorKey,
        /// The channel.
        channel: u64,
        /// The sequence number received.
        seq: u64,
    },
    /// A message past a gap (a sequence number from the future): the receiver applies each
    /// channel in order and waits for the missing one, which the sender posts again.
    #[error(
        "`{to}` refused message {seq} of channel {channel} from `{from}`: the next one is \
         {expected}"
    )]
    Gap {
        /// The sender.
        from: ActorKey,
        /// The receiver.
        to: ActorKey,
        /// The channel.
        channel: u64,
        /// The sequence number received.
        seq: u64,
        /// The sequence number the receiver applies next.
        expected: u64,
    },
    /// A message on a channel older than the one the receiver follows for that sender: left
    /// over from a deleted incarnation of the sender.
    #[error(
        "`{to}` refused message {seq} of old channel {channel} from `{from}`: it follows \
         channel {current}"
    )]
    StaleChannel {
        /// The sender.
        from: ActorKey,
        /// The receiver.
        to: ActorKey,
        /// The channel of the message.
        channel: u64,
        /// The sequence number received.
        seq: u64,
        /// The channel the receiver follows.
        current: u64,
    },
    /// An acknowledgement of a channel the sender does not have, or of a message it never
    /// sent.
    #[error(
        "`{to}` refused an acknowledgement from `{from}` of message {seq} on channel {channel}: it sent no such message"
    )]
    AckForNothing {
        /// The receiver that acknowledged.
        from: ActorKey,
        /// The sender it was addressed to.
        to: ActorKey,
        /// The channel.
        channel: u64,
        /// The sequence number acknowledged.
        seq: u64,
    },
    /// A message this receiver cannot read as one of its messages
    /// ([`crate::PersistentActor::inbound`] refused it). It stays in the sender's outbox and
    /// is posted again, so a deploy that can read it applies it.
    #[error("`{to}` cannot read message {seq} of channel {channel} from `{from}`: {reason}")]
    Unreadable {
        /// The sender.
        from: ActorKey,
        /// The receiver.
        to: ActorKey,
        /// The channel.
        channel: u64,
        /// The sequence number received.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A request key seen before with a different payload ([`crate::Tx::once`]).
    #[error("`{actor}` refused request `{request}`: the key was used before with another payload")]
    RequestKeyReused {
        /// The actor.
        actor: ActorKey,
        /// The request key.
        request: String,
    },
}

/// When the runtime posts again a message that was not acknowledged, and performs again an
/// operation kept until confirmation ([`crate::Outcome::KeepUntilConfirmed`]).
///
/// The n-th redelivery waits `initial * 2^(n-1)`, capped at `max`, minus up to `jitter` of
/// it at random. Redeliveries never give up and never count as failed attempts. The default:
/// `initial` 500 ms, `max` 30 s, `jitter` 0.2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Redelivery {
    policy: RetryPolicy,
}

impl Default for Redelivery {
    fn default() -> Self {
        Redelivery::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Redelivery {
    /// Redelivery after `initial`, doubling up to `max` (an `initial` under 1 ms counts as
    /// 1 ms), with the default jitter (0.2).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let policy = RetryPolicy::new(initial, max.max(initial), u32::MAX)
            .expect("u32::MAX attempts is valid");
        Redelivery { policy }
    }

    /// The same policy with `jitter`, from 0.0 to 1.0 (NaN or outside is refused).
    pub fn with_jitter(self, jitter: f64) -> Result<Self, RetryPolicyError> {
        Ok(Redelivery {
            policy: self.policy.with_jitter(jitter)?,
        })
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.policy.initial()
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.policy.max()
    }

    /// The delay before redelivery number `n` (1-based), given a random `unit` in 0..1.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        self.policy
            .delay(n, unit)
            .max(Duration::from_millis(1).min(self.policy.initial()))
    }
}

/// How an operation or a message ended, as a [`Settlement`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// The operation's `perform` returned [`crate::Outcome::Done`].
    Done,
    /// A later message confirmed the operation ([`crate::Tx::confirm`]).
    Confirmed,
    /// The receiver applied the message and its commit was durable (it acknowledged it).
    Delivered,
    /// The operation failed too often and was set aside as a dead letter.
    DeadLetter,
    /// Nothing with that id was pending when the settlement was asked for, and it is not
    /// among the last 128 messages this instance of the actor saw acknowledged: it settled
    /// before (an operation performed or confirmed earlier, a message acknowledged long
    /// before or before a restart), or never existed. Ask for the settlement in the message
    /// that pushes or sends, to hear how it ends.
    NotPending,
    /// The actor stopped (or failed) first. The operation or message is still pending in the
    /// store and settles after a restart, but this settlement will not hear of it.
    Stopped,
}

/// A future of how an operation or message ends: [`crate::Tx::settlement`] makes one, and a
/// handler usually sends it back in its reply, so the caller waits without polling.
pub struct Settlement {
    inner: SettlementInner,
}

enum SettlementInner {
    Now(Settled),
    Later(oneshot::Receiver<Settled>),
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            SettlementInner::Now(s) => f.debug_tuple("Settlement").field(s).finish(),
            SettlementInner::Later(_) => f.write_str("Settlement(..)"),
        }
    }
}

impl Settlement {
    pub(crate) fn now(settled: Settled) -> Self {
        Settlement {
            inner: SettlementInner::Now(settled),
        }
    }

    pub(crate) fn later(rx: oneshot::Receiver<Settled>) -> Self {
        Settlement {
            inner: SettlementInner::Later(rx),
        }
    }

    /// Waits until the operation or message settles.
    pub async fn wait(self) -> Settled {
        match self.inner {
            SettlementInner::Now(s) => s,
            SettlementInner::Later(rx) => rx.await.unwrap_or(Settled::Stopped),
        }
    }
}

impl IntoFuture for Settlement {
    type Output = Settled;
    type IntoFuture = Pin<Box<dyn Future<Output = Settled> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

/// A message another persistent actor sent with [`crate::Tx::send`], as the receiver's
/// [`crate::PersistentActor::inbound`] sees it before it becomes one of its messages.
#[derive(Clone, Debug)]
pub struct Inbound {
    id: OpId,
    fingerprint: u64,
    payload: Arc<[u8]>,
}

impl Inbound {
    pub(crate) fn new(id: OpId, fingerprint: u64, payload: Arc<[u8]>) -> Self {
        Inbound {
            id,
            fingerprint,
            payload,
        }
    }

    /// The sender.
    pub fn from(&self) -> &ActorKey {
        self.id.actor()
    }

    /// The sender's id of the message.
    pub fn id(&self) -> &OpId {
        &self.id
    }

    /// The shape fingerprint of the type the sender encoded (0: unknown).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Decodes the message as exactly one `T`, only if `T` has the shape of the type the
    /// sender encoded (equal fingerprints, or unknown on both sides); otherwise
    /// [`DecodeReason::MessageShape`].
    pub fn decode<T: DeserializeOwned + 'static>(&self) -> Result<T, DecodeReason> {
        let expected = crate::shape::shape_fingerprint::<T>().unwrap_or(0);
        if expected != self.fingerprint {
            return Err(DecodeReason::MessageShape {
                type_name: std::any::type_name::<T>(),
                sent: self.fingerprint,
                expected,
            });
        }
        crate::envelope::payload(&self.payload)
    }
}

/// What [`crate::Tx::once`] found out about an idempotent request.
pub enum Once<V> {
    /// The first time this key is seen: do the work, then answer with
    /// [`crate::Tx::reply_once`], which stores the reply with the commit.
    First(FirstRequest<V>),
    /// A repeat of a request already applied: its first reply was sent to the port again
    /// (after this message's cycle). Do nothing else.
    Repeated,
    /// Refused: the key was used before with another payload, or the stored reply cannot be
    /// read as `V`. The port is handed back so the handler can answer.
    Refused(RpcReplyPort<V>, RequestRefused),
}

impl<V> fmt::Debug for Once<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Once::First(r) => f.debug_tuple("First").field(&r.key).finish(),
            Once::Repeated => f.write_str("Repeated"),
            Once::Refused(_, e) => f.debug_tuple("Refused").field(e).finish(),
        }
    }
}

/// A request seen for the first time: answer it with [`crate::Tx::reply_once`].
pub struct FirstRequest<V> {
    pub(crate) key: String,
    pub(crate) digest: u64,
    pub(crate) port: RpcReplyPort<V>,
}

impl<V> FirstRequest<V> {
    /// The request key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Why [`crate::Tx::once`] refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestRefused {
    /// The key was used before with a different payload.
    #[error("request key `{key}` was used before with a different payload")]
    KeyReused {
        /// The request key.
        key: String,
    },
    /// The stored reply cannot be read as the reply type (its shape changed).
    #[error("the stored reply to request `{key}` cannot be read: {reason}")]
    StoredReply {
        /// The request key.
        key: String,
        /// Why.
        reason: DecodeReason,
    },
    /// The same key was asked for twice in one message, before the first was answered.
    #[error("request `{key}` was asked for twice in one message")]
    AskedTwice {
        /// The request key.
        key: String,
    },
    /// The payload could not be encoded to compare it with the first one.
    #[error("the payload of request `{key}` cannot be encoded: {reason}")]
    Encode {
        /// The request key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The default number of request replies an actor keeps (see
/// [`crate::Start::request_retention`]).
pub const DEFAULT_REQUEST_RETENTION: usize = 1024;

/// A stable 64-bit digest (FNV-1a) of a request's payload.
pub(crate) fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// The rows the runtime keeps in its spaces (postcard payloads of runtime envelopes).

/// An outbox row ([`crate::Space::OUTBOX`], id: the message id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OutgoingRow {
    pub(crate) to: ActorKey,
    pub(crate) channel: u64,
    pub(crate) seq: u64,
    pub(crate) fingerprint: u64,
    pub(crate) payload: Vec<u8>,
}

/// A channel row ([`crate::Space::CHANNELS`], id: the channel id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ChannelRow {
    pub(crate) to: ActorKey,
    pub(crate) last: u64,
}

/// An inbox row ([`crate::Space::INBOX`], id: a slot the receiver handed out).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InboxRow {
    pub(crate) from: ActorKey,
    pub(crate) channel: u64,
    pub(crate) applied: u64,
}

/// A stored reply ([`crate::Space::REQUESTS`], id: handed out in order, so the lowest is the
/// oldest).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RequestRow {
    pub(crate) key: String,
    pub(crate) digest: u64,
    pub(crate) fingerprint: u64,
    pub(crate) reply: Vec<u8>,
}

// What the runtime keeps in memory for one actor.

/// The sender's side of a channel: its id and the last sequence number used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Channel {
    pub(crate) id: u64,
    pub(crate) last: u64,
}

/// A message in the outbox, and when it is posted again.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) to: ActorKey,
    pub(crate) channel: u64,
    pub(crate) seq: u64,
    pub(crate) fingerprint: u64,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) due: Instant,
    pub(crate) posts: u32,
}

/// The receiver's side of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InboxEntry {
    pub(crate) slot: u64,
    pub(crate) channel: u64,
    pub(crate) applied: u64,
}

/// A stored reply to a request.
#[derive(Clone, Debug)]
pub(crate) struct StoredReply {
    pub(crate) digest: u64,
    pub(crate) fingerprint: u64,
    pub(crate) reply: Vec<u8>,
}

/// How many acknowledged messages an actor remembers (in memory) for settlements asked for
/// after the fact.
pub(crate) const RECENT_SETTLED: usize = 128;

/// An actor's [`Mail`], allocated on first use: most actors never send, receive, wait for a
/// settlement or keep an operation until confirmation, and should not carry its maps.
/// Reading an unallocated one reads an empty `Mail`.
#[derive(Default)]
pub(crate) struct MailBox(Option<Box<Mail>>);

impl MailBox {
    /// Keeps `mail` only if it holds something.
    pub(crate) fn new(mail: Mail) -> Self {
        let empty = mail.outbox.is_empty()
            && mail.channels.is_empty()
            && mail.inbox.is_empty()
            && mail.requests.is_empty();
        MailBox((!empty).then(|| Box::new(mail)))
    }

    /// Tells whoever waits for `id` how it ended, allocating nothing when no one does and
    /// nothing needs remembering.
    pub(crate) fn settle(&mut self, id: u64, how: Settled) {
        if how == Settled::Delivered || self.watchers.contains_key(&id) {
            std::ops::DerefMut::deref_mut(self).settle(id, how);
        }
    }
}

impl std::ops::Deref for MailBox {
    type Target = Mail;

    fn deref(&self) -> &Mail {
        static EMPTY: std::sync::LazyLock<Mail> = std::sync::LazyLock::new(Mail::default);
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for MailBox {
    fn deref_mut(&mut self) -> &mut Mail {
        self.0.get_or_insert_with(Box::default)
    }
}

/// An actor's delivery state: outbox, channels, inbox, stored replies, operations kept until
/// confirmation, and who waits for what to settle.
#[derive(Default)]
pub(crate) struct Mail {
    pub(crate) outbox: BTreeMap<u64, Outgoing>,
    pub(crate) channels: HashMap<ActorKey, Channel>,
    pub(crate) inbox: HashMap<ActorKey, InboxEntry>,
    pub(crate) requests: HashMap<String, StoredReply>,
    /// Stored replies by slot: the lowest is the oldest.
    pub(crate) request_order: BTreeMap<u64, String>,
    /// Operations kept until confirmation: when they are performed again, and how many
    /// redeliveries they had.
    pub(crate) kept: BTreeMap<u64, (Instant, u32)>,
    pub(crate) watchers: HashMap<u64, Vec<oneshot::Sender<Settled>>>,
    /// How the last [`RECENT_SETTLED`] ids settled, for settlements asked for late.
    pub(crate) recent: VecDeque<(u64, Settled)>,
    /// Channels recovering from a gap: the last number a receiver said was followed by a
    /// missing message (each number brings the missing message once; while recovering, each
    /// acknowledgement that removes messages posts the next one).
    pub(crate) recovering: HashMap<u64, u64>,
    /// When the redelivery timer armed last fires.
    pub(crate) timer: Option<Instant>,
    /// The earliest redelivery scheduled since the timer was last armed (so arming does not
    /// scan the outbox on every message).
    pub(crate) scheduled: Option<Instant>,
}

impl Mail {
    /// Tells whoever waits for `id` how it ended; remembers an acknowledged message for a
    /// settlement asked for later (an acknowledgement can overtake the question).
    pub(crate) fn settle(&mut self, id: u64, how: Settled) {
        if how == Settled::Delivered {
            if self.recent.len() == RECENT_SETTLED {
                self.recent.pop_front();
            }
            self.recent.push_back((id, how));
        }
        if let Some(waiters) = self.watchers.remove(&id) {
            for w in waiters {
                let _ = w.send(how);
            }
        }
    }

    /// Notes a redelivery scheduled at `at`, for the timer.
    pub(crate) fn schedule(&mut self, at: Instant) {
        self.scheduled = Some(self.scheduled.map_or(at, |s| s.min(at)));
    }

    /// When the earliest redelivery is due (a scan of the outbox and the kept operations).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let outbox = self.outbox.values().map(|o| o.due).min();
        let kept = self.kept.values().map(|(at, _)| *at).min();
        match (outbox, kept) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
