//! The user's side: the [`PersistentActor`] trait and the types its methods see.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ractor::{ActorProcessingErr, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
