//! The user's side: the [`PersistentActor`] trait and the types its methods see.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef, Message, SupervisionEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeReason, RetryPolicyError};
use crate::key::ActorKey;
use crate::tx::Tx;

/// The logic of a durable actor. Put `#[derive(Persistent)]` on the type and implement this.
///
/// The runtime calls [`handle`](Self::handle) for each message with a [`Tx`] that collects
/// new operations, confirmations and deferred replies. When the handler returns, the new
/// state and the operations are committed together; only then do replies leave and do the
/// operations run, through [`perform`](Self::perform).
pub trait PersistentActor: Sized + Send + Sync + 'static {
    /// The message type; the actor's `ActorRef<Msg>` is an ordinary ractor ref.
    type Msg: Message;
    /// The durable state. Its postcard encoding is what is stored.
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// An operation (side effect) the handler asks for, stored until it is done.
    type Op: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What `spawn_persistent` passes to [`init`](Self::init).
    type Arguments: Send + 'static;

    /// Builds the first state. Called only when the store holds no snapshot for the key.
    fn init(
        &self,
        args: Self::Arguments,
    ) -> impl Future<Output = Result<Self::State, ActorProcessingErr>> + Send;

    /// Handles one message: changes `state`, and asks for effects through `tx`. Performs no
    /// side effects itself.
    ///
    /// An `Err` rolls the state back to the last commit, drops what `tx` collected, and stops
    /// the actor, as an error from a ractor handler does. A caller waiting in `call!` then
    /// gets ractor's error for a dropped reply port (`RactorErr::Messaging`, "channel
    /// closed"), not the handler's error: a reply port carries only its own type. To tell a
    /// caller why a request was refused, make the reply type a `Result`, reply `Err(..)` and
    /// return `Ok(())` with the state unchanged; the actor keeps running and nothing is
    /// written.
    fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send;

    /// Performs a committed operation. Must be idempotent: after a crash it runs again with
    /// the same [`OpId`]. The default does nothing and reports [`Outcome::Done`].
    fn perform(
        &self,
        op: &Pending<Self::Op>,
        state: &Self::State,
    ) -> impl Future<Output = Result<Outcome, ActorProcessingErr>> + Send {
        let _ = (op, state);
        async { Ok(Outcome::Done) }
    }

    /// Runs once the actor has started, after its record was loaded (or `init` built the
    /// first state), before the first message: the place to start timers, subscribe to output
    /// ports or join process groups with `tx.myself()`. It is handled like a message: a
    /// changed state, pushed operations and confirmations are committed before anything is
    /// performed, and the operations left pending by the previous incarnation are performed
    /// again after that commit, before this hook's own. An `Err` fails the start. The default
    /// does nothing (ractor's `post_start`).
    fn post_start(
        &self,
        tx: &mut Tx<'_, Self>,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        let _ = (tx, state);
        async { Ok(()) }
    }

    /// Handles a supervision event from a linked child, like a message: a changed state and
    /// the operations pushed are committed before anything is performed.
    ///
    /// The default is ractor's: the actor stops when a child terminates or fails. Override it
    /// to keep a persistent supervisor running (restart the child, record the event).
    fn handle_supervisor_evt(
        &self,
        tx: &mut Tx<'_, Self>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        let _ = state;
        if let SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..) = event {
            tx.myself().stop(None);
        }
        async { Ok(()) }
    }

    /// Runs after the actor stopped (not after a failure or a kill, as in ractor), with the
    /// state as last committed. Nothing it does is committed. The default does nothing.
    fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        let _ = (myself, state);
        async { Ok(()) }
    }

    /// Takes a runtime [`Control`] message out of the actor's message type, if the type has a
    /// variant for it; other messages go back to the caller untouched. With
    /// [`wrap_control`](Self::wrap_control) this lets the runtime wake the actor for retries
    /// and lets [`crate::SpawnPersistent::resume`] reach it from outside.
    ///
    /// ```ignore
    /// enum AccountMsg { Deposit(u64, RpcReplyPort<u64>), Persist(Control<Effect>) }
    /// fn control(msg: AccountMsg) -> Result<Control<Effect>, AccountMsg> {
    ///     match msg { AccountMsg::Persist(c) => Ok(c), other => Err(other) }
    /// }
    /// fn wrap_control(c: Control<Effect>) -> Option<AccountMsg> { Some(AccountMsg::Persist(c)) }
    /// ```
    fn control(msg: Self::Msg) -> Result<Control<Self::Op>, Self::Msg> {
        Err(msg)
    }

    /// Wraps a runtime [`Control`] message in the actor's message type; `None` (the default)
    /// when the type has no variant for it. Then retries wait for the next message,
    /// [`crate::SpawnPersistent::resume`] is refused, and the actor can neither send to nor
    /// receive from other persistent actors ([`Tx::send`]).
    fn wrap_control(control: Control<Self::Op>) -> Option<Self::Msg> {
        let _ = control;
        None
    }

    /// Turns a message another persistent actor sent with [`Tx::send`] into one of this
    /// actor's messages, which [`handle`](Self::handle) then handles like any other (with
    /// [`Tx::received`] telling where it came from). The runtime calls it only for the next
    /// message of its channel, so each message is handled once in effect: a duplicate is
    /// dropped before, and the inbox entry that records it is written in the handler's
    /// commit.
    ///
    /// An `Err` refuses the message ([`crate::Refusal::Unreadable`]): nothing is applied, and
    /// the sender keeps it and posts it again later. The default refuses every message
    /// ([`DecodeReason::NotAccepted`]).
    ///
    /// ```ignore
    /// fn inbound(msg: Inbound) -> Result<AccountMsg, DecodeReason> {
    ///     Ok(AccountMsg::Credit(msg.decode()?))
    /// }
    /// ```
    fn inbound(msg: crate::delivery::Inbound) -> Result<Self::Msg, DecodeReason> {
        let _ = msg;
        Err(DecodeReason::NotAccepted {
            actor_type: std::any::type_name::<Self>(),
        })
    }

    /// Turns a due durable timer (set with [`Tx::set_timer_after`] or [`Tx::set_timer_at`])
    /// into one of this actor's messages, which [`handle`](Self::handle) then handles like any
    /// other, with [`Tx::fired`] naming the timer. The timer is removed in that message's
    /// commit: a crash before it fires the timer again (at least once, same name).
    ///
    /// It is also called when the timer is set, to refuse there a payload it would not take.
    /// The default refuses every timer ([`DecodeReason::NoTimers`]).
    ///
    /// ```ignore
    /// fn timer(fired: Fired) -> Result<ChannelMsg, DecodeReason> {
    ///     Ok(ChannelMsg::Expire(fired.decode()?))
    /// }
    /// ```
    fn timer(fired: crate::timer::Fired) -> Result<Self::Msg, DecodeReason> {
        let _ = fired;
        Err(DecodeReason::NoTimers {
            actor_type: std::any::type_name::<Self>(),
        })
    }
}

/// Which pending operations a [`Control::Resume`] performs again.
pub type ResumeFilter<Op> = Box<dyn Fn(&Pending<Op>) -> bool + Send + Sync>;

/// A message the runtime handles itself, carried in a variant of the actor's message type
/// (see [`PersistentActor::control`]).
pub enum Control<Op> {
    /// Perform again, in sequence order, every pending operation for which the filter holds
    /// (for example those addressed to a peer that just reconnected).
    Resume(ResumeFilter<Op>),
    /// Operations waiting for a retry may be due: perform those whose backoff ran out.
    RetryDue,
    /// A letter from another persistent actor (a message or an acknowledgement).
    Letter(crate::delivery::Letter),
    /// Messages not acknowledged and operations kept until confirmation may be due for
    /// redelivery.
    RedeliverDue,
    /// A destination this actor could not reach before is running now: post its messages.
    Arrived(ActorKey),
    /// Durable timers may be due: fire those whose instant the wall clock has reached.
    TimerDue,
}

impl<Op> fmt::Debug for Control<Op> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Resume(_) => f.write_str("Control::Resume(..)"),
            Control::RetryDue => f.write_str("Control::RetryDue"),
            Control::Letter(l) => f.debug_tuple("Control::Letter").field(l).finish(),
            Control::RedeliverDue => f.write_str("Control::RedeliverDue"),
            Control::Arrived(k) => f.debug_tuple("Control::Arrived").field(k).finish(),
            Control::TimerDue => f.write_str("Control::TimerDue"),
        }
    }
}

/// When to perform an operation again after [`Outcome::Retry`] (or a failed `perform`), and
/// when to give up.
///
/// The n-th retry waits `initial * 2^(n-1)`, capped at `max`, minus up to `jitter` of it
/// (chosen at random), so peers that failed together do not retry together. After
/// `max_attempts` failed attempts the operation becomes a dead letter.
///
/// The default: `initial` 100 ms, `max` 30 s, `jitter` 0.2, `max_attempts` 10. A policy is
/// valid by construction: [`RetryPolicy::new`] and [`RetryPolicy::with_jitter`] refuse what
/// would make no sense (no attempt at all, a jitter outside 0.0..=1.0 or NaN) with a
/// [`RetryPolicyError`], and [`RetryPolicy::delay`] never panics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    initial: Duration,
    max: Duration,
    jitter: f64,
    max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            jitter: 0.2,
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// A policy with these delays and attempts, and the default jitter (0.2).
    ///
    /// `max_attempts` is how many failed attempts (a `perform` that returned
    /// [`Outcome::Retry`] or `Err`) an operation gets before it becomes a dead letter; 0 is
    /// refused. An `initial` above `max` is allowed: every delay is then `max`.
    pub fn new(
        initial: Duration,
        max: Duration,
        max_attempts: u32,
    ) -> Result<Self, RetryPolicyError> {
        if max_attempts == 0 {
            return Err(RetryPolicyError::NoAttempts);
        }
        Ok(RetryPolicy {
            initial,
            max,
            max_attempts,
            ..Self::default()
        })
    }

    /// The same policy with `jitter`, the fraction of each delay taken off at random: a
    /// number from 0.0 to 1.0. NaN or a value outside that range is refused.
    pub fn with_jitter(mut self, jitter: f64) -> Result<Self, RetryPolicyError> {
        if !(0.0..=1.0).contains(&jitter) {
            return Err(RetryPolicyError::Jitter(jitter));
        }
        self.jitter = jitter;
        Ok(self)
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The fraction of each delay taken off at random, from 0.0 to 1.0.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Failed attempts before an operation becomes a dead letter (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before retry number `attempt` (1-based), given a random `unit` in 0..1
    /// (clamped; NaN counts as 0). Never more than `max`, never a panic.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let doubling = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
        let full = self.initial.as_secs_f64() * doubling;
        let capped = full.min(self.max.as_secs_f64());
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let secs = capped * (1.0 - self.jitter * unit);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// What the derive implements: the stable identity of a persistent actor type and the
/// migrations of its stored records.
pub trait Persistent: PersistentActor {
    /// The storage namespace (`#[persistent(name = "...")]`, default the type name).
    const NAME: &'static str;
    /// The schema version written into every record (`#[persistent(version = N)]`, default 1).
    const VERSION: u32 = 1;

    /// Decodes a snapshot written by an older schema version (`stored.schema()`) into the
    /// current state. `#[persistent(migrate(1 = StateV1, 2 = StateV2))]` generates the chain
    /// of `From`s.
    ///
    /// The default reads the record as the current state type only if the state's shape did
    /// not change ([`Stored::decode_unchanged`]): a version bump for the operations alone needs
    /// no state migration, and a changed state without one is a typed error, never a guess.
    fn migrate_state(stored: Stored<'_>) -> Result<Self::State, DecodeReason> {
        stored.decode_unchanged("state")
    }

    /// Decodes an operation written by an older schema version. `#[persistent(migrate_ops(...))]`
    /// generates the chain.
    ///
    /// The default reads it as the current operation type only if that type's shape did not
    /// change ([`Stored::decode_unchanged`]): an operation type changed without a declared
    /// migration is a typed error naming both versions and both fingerprints, never a guess.
    fn migrate_op(stored: Stored<'_>) -> Result<Self::Op, DecodeReason> {
        stored.decode_unchanged("operation")
    }

    /// The actor's journal hooks if it is event-sourced (`#[persistent(event_sourced)]`
    /// emits them); `None` for a snapshot-mode actor. Not public API.
    #[doc(hidden)]
    fn __journal() -> Option<crate::journal::JournalHooks<Self>> {
        None
    }

    /// The event migration `#[persistent(migrate_events(...))]` generates, boxed (this
    /// trait does not know the event type); `None` without one. Not public API: see
    /// [`crate::EventSourced::migrate_event`].
    #[doc(hidden)]
    fn __migrate_event(
        stored: Stored<'_>,
    ) -> Option<Result<crate::journal::AnyEvent, DecodeReason>> {
        let _ = stored;
        None
    }
}

/// A stored record's payload as a migration sees it: the schema version and the shape
/// fingerprint it was written with, and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    schema: u32,
    fingerprint: u64,
    current: u32,
    payload: &'a [u8],
}

impl<'a> Stored<'a> {
    pub(crate) fn new(schema: u32, fingerprint: u64, current: u32, payload: &'a [u8]) -> Self {
        Stored {
            schema,
            fingerprint,
            current,
            payload,
        }
    }

    /// The schema version the record was written with.
    pub fn schema(&self) -> u32 {
        self.schema
    }

    /// The shape fingerprint the record was written with (0: unknown).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The schema version of the running code.
    pub fn current_schema(&self) -> u32 {
        self.current
    }

    /// The postcard payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Decodes the payload as exactly one `T`, only if `T` has the shape the record was
    /// written with: equal fingerprints, or unknown (0) on both sides. Otherwise
    /// [`DecodeReason::ShapeChanged`] names both versions and both fingerprints.
    pub fn decode<T: DeserializeOwned + 'static>(&self) -> Result<T, DecodeReason> {
        let expected = crate::shape::shape_fingerprint::<T>().unwrap_or(0);
        if expected != self.fingerprint {
            return Err(DecodeReason::ShapeChanged {
                type_name: std::any::type_name::<T>(),
                stored_version: self.schema,
                stored: self.fingerprint,
                version: self.current,
                expected,
            });
        }
        crate::envelope::payload(self.payload)
    }

    /// Decodes the payload as exactly one `T` without comparing shapes: for the type declared
    /// for the record's schema version (what `#[persistent(migrate(..))]` generates). The
    /// declaration is the user's word for what the version's records hold, so the old type may
    /// be kept under another name (`AccountV1` for the old `Account`), which changes its
    /// fingerprint; a wrong declaration is still refused if the bytes do not decode as it.
    pub fn decode_declared<T: DeserializeOwned>(&self) -> Result<T, DecodeReason> {
        crate::envelope::payload(self.payload)
    }

    /// Reads a record of an older schema version as the current type `T`, taken to be
    /// unchanged: allowed when the fingerprints match. When both are unknown (0, a type
    /// serde-reflection cannot trace) nothing proves the type unchanged, so this is
    /// [`DecodeReason::NoMigration`] for `what` ("state" or "operation"): declare the
    /// migration, even if it names the current type.
    pub fn decode_unchanged<T: DeserializeOwned + 'static>(
        &self,
        what: &'static str,
    ) -> Result<T, DecodeReason> {
        let expected = crate::shape::shape_fingerprint::<T>().unwrap_or(0);
        if expected == 0 && self.fingerprint == 0 && self.schema != self.current {
            return Err(DecodeReason::NoMigration {
                what,
                found: self.schema,
                expected: self.current,
            });
        }
        self.decode()
    }
}

/// What became of a performed operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the operation is removed (the removal rides on a later commit).
    Done,
    /// Keep it pending until a later message confirms it with [`Tx::confirm`]; it is
    /// performed again on every restart and [`Tx::resume`].
    KeepUntilConfirmed,
    /// Failed for now: keep it pending and perform it again after the policy's backoff
    /// (see [`RetryPolicy`]). Counts as a failed attempt; after `max_attempts` of them the
    /// operation becomes a dead letter.
    Retry,
}

/// The stable identity of one operation: its actor and its sequence number.
///
/// The same operation keeps the same id across crashes and resends, so a receiver can use
/// it to drop duplicates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    actor: Arc<ActorKey>,
    seq: u64,
}

impl OpId {
    /// The id of operation `seq` of `actor`. The runtime hands out ids itself (see
    /// [`crate::Tx::push`]); this is for unit tests of `perform` and of receivers, and for
    /// ids rebuilt from elsewhere (an `OpId` is also `Deserialize`).
    pub fn new(actor: ActorKey, seq: u64) -> Self {
        OpId {
            actor: Arc::new(actor),
            seq,
        }
    }

    pub(crate) fn shared(actor: Arc<ActorKey>, seq: u64) -> Self {
        OpId { actor, seq }
    }

    /// The actor that produced the operation.
    pub fn actor(&self) -> &ActorKey {
        &self.actor
    }

    /// The operation's sequence number, unique and increasing within its actor.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.actor, self.seq)
    }
}

/// A committed operation that has not been confirmed done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending<Op> {
    pub(crate) id: OpId,
    pub(crate) op: Op,
    pub(crate) attempts: u32,
}

impl<Op> Pending<Op> {
    /// A pending operation with no failed attempts, for unit tests of `perform`.
    pub fn new(id: OpId, op: Op) -> Self {
        Pending {
            id,
            op,
            attempts: 0,
        }
    }

    /// The same operation with `attempts` failed attempts behind it, for unit tests.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// The operation's stable id.
    pub fn id(&self) -> &OpId {
        &self.id
    }

    /// The operation.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// How many earlier performs of it failed: returned [`Outcome::Retry`] or `Err` (0 on a
    /// first try). Replays after a restart, resumes and `KeepUntilConfirmed` do not count.
    /// Kept across restarts: the count is written with the actor's next commit.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}
