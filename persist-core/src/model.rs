//! The user's side: the [`PersistentActor`] trait and the types its methods see.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorProcessingErr, Message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DecodeReason;
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
    /// side effects itself. An `Err` rolls the state back and stops the actor.
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
    /// when the type has no variant for it. Then retries wait for the next message, and
    /// [`crate::SpawnPersistent::resume`] is refused.
    fn wrap_control(control: Control<Self::Op>) -> Option<Self::Msg> {
        let _ = control;
        None
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
}

impl<Op> fmt::Debug for Control<Op> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Resume(_) => f.write_str("Control::Resume(..)"),
            Control::RetryDue => f.write_str("Control::RetryDue"),
        }
    }
}

/// When to perform an operation again after [`Outcome::Retry`], and when to give up.
///
/// The n-th retry waits `initial * 2^(n-1)`, capped at `max`, minus up to `jitter` of it
/// (chosen at random), so peers that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The fraction of each delay taken off at random, from 0.0 to 1.0.
    pub jitter: f64,
    /// After this many attempts in one incarnation of the actor the operation becomes a dead
    /// letter: kept in the store, no longer performed, listable and re-queueable.
    pub max_attempts: u32,
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
    /// A policy with these delays and attempts, and the default jitter.
    pub fn new(initial: Duration, max: Duration, max_attempts: u32) -> Self {
        RetryPolicy {
            initial,
            max,
            max_attempts,
            ..Self::default()
        }
    }

    /// The same policy with `jitter` (clamped to 0.0..=1.0).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The delay before retry number `attempt` (1-based), given a random `unit` in 0..1.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let doubling = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
        let full = self.initial.as_secs_f64() * doubling;
        let capped = full.min(self.max.as_secs_f64());
        Duration::from_secs_f64(capped * (1.0 - self.jitter * unit.clamp(0.0, 1.0)))
    }
}

/// What the derive implements: the stable identity of a persistent actor type and the
/// migrations of its stored records.
pub trait Persistent: PersistentActor {
    /// The storage namespace (`#[persistent(name = "...")]`, default the type name).
    const NAME: &'static str;
    /// The schema version written into every record (`#[persistent(version = N)]`, default 1).
    const VERSION: u32 = 1;

    /// Decodes a snapshot written by the older schema `version` into the current state
    /// (`#[persistent(migrate(1 = StateV1, 2 = StateV2))]` generates the chain of `From`s).
    fn migrate_state(version: u32, payload: &[u8]) -> Result<Self::State, DecodeReason> {
        let _ = payload;
        Err(DecodeReason::NoMigration {
            what: "state",
            found: version,
            expected: Self::VERSION,
        })
    }

    /// Decodes an operation written by the older schema `version`. By default operations
    /// are taken to be unchanged across versions (`#[persistent(migrate_ops(...))]` changes
    /// that).
    fn migrate_op(version: u32, payload: &[u8]) -> Result<Self::Op, DecodeReason> {
        let _ = version;
        crate::envelope::payload(payload)
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
    /// Failed for now: keep it pending and perform it again later (on the next message,
    /// `resume` or restart).
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
    pub(crate) fn new(actor: Arc<ActorKey>, seq: u64) -> Self {
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
    /// The operation's stable id.
    pub fn id(&self) -> &OpId {
        &self.id
    }

    /// The operation.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// How many times `perform` was called for it in this incarnation of the actor, this
    /// call included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}
