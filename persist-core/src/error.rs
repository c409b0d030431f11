//! Errors: one enum per operation, and [`Error`] that every one converts into.
//!
//! All are `Error + Send + Sync + 'static`, so `?` turns them into ractor's
//! `ActorProcessingErr` inside handlers.

use std::fmt;

use crate::key::ActorKey;
use crate::store::Fence;

/// A boxed error from a backend or from user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a storage backend.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend's own error (I/O, the database engine).
    #[error("store `{store}`: {source}")]
    Backend {
        /// The store's name.
        store: String,
        /// What the backend said.
        #[source]
        source: BoxError,
    },
    /// The store's bytes are damaged; nothing was written.
    #[error("store `{store}` is corrupt: {detail}")]
    Corrupt {
        /// The store's name.
        store: String,
        /// What was found.
        detail: String,
    },
    /// Commits refused because newer instances of their actors took later epochs.
    #[error("{} commit(s) refused: a newer instance of the actor took over (stale epoch)", .0.len())]
    Fenced(Vec<Fence>),
    /// A commit failed earlier, so nobody knows what is on disk; writes are refused until the
    /// store is reopened.
    #[error("store `{store}` refuses writes after a failed commit ({cause}); reopen it")]
    Poisoned {
        /// The store's name.
        store: String,
        /// The failure that poisoned it.
        cause: String,
    },
    /// A call failed without harming the store: a server database rolled the transaction
    /// back, timed it out, or lost the connection. A commit that failed so may or may not have
    /// landed (the server may have committed it just before the connection was lost): a later
    /// load shows all of its batch or none of it. The store is not poisoned; it connects again
    /// for the next call.
    #[error(
        "store `{store}`: {source} (the store stays usable; a commit that failed so may or may not have landed)"
    )]
    Interrupted {
        /// The store's name.
        store: String,
        /// What the backend said.
        #[source]
        source: BoxError,
    },
    /// The backend does not implement this operation.
    #[error("store `{store}` does not support `{operation}`")]
    Unsupported {
        /// The store's name.
        store: String,
        /// The operation.
        operation: &'static str,
    },
    /// The store was closed with [`crate::Storage::close`].
    #[error("store `{store}` is closed")]
    Closed {
        /// The store's name.
        store: String,
    },
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(store: &str, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            store: store.to_owned(),
            source: source.into(),
        }
    }
}

/// Which record of an actor could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordRef {
    /// The state snapshot.
    Snapshot,
    /// The pending operation with this sequence number.
    Op(u64),
    /// The outgoing (not yet acknowledged) message with this id.
    Outgoing(u64),
    /// The sender's side of the channel with this id.
    Channel(u64),
    /// The inbox entry in this slot.
    Inbox(u64),
    /// The stored reply to an idempotent request, in this slot.
    Request(u64),
    /// The durable timer stored under this row id.
    Timer(u64),
    /// The journal event with this sequence number.
    Event(u64),
    /// The head of the event journal (its last event and the one its snapshot covers).
    JournalHead,
    /// The durable-map entry stored under this row id.
    MapEntry(u64),
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordRef::Snapshot => f.write_str("snapshot"),
            RecordRef::Op(seq) => write!(f, "pending operation #{seq}"),
            RecordRef::Outgoing(id) => write!(f, "outgoing message #{id}"),
            RecordRef::Channel(id) => write!(f, "channel #{id}"),
            RecordRef::Inbox(id) => write!(f, "inbox entry #{id}"),
            RecordRef::Request(id) => write!(f, "stored request reply #{id}"),
            RecordRef::Timer(id) => write!(f, "timer #{id}"),
            RecordRef::Event(seq) => write!(f, "journal event #{seq}"),
            RecordRef::JournalHead => f.write_str("journal head"),
            RecordRef::MapEntry(id) => write!(f, "map entry #{id}"),
        }
    }
}

/// Why a record's bytes were refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DecodeReason {
    /// Fewer bytes than an envelope header.
    #[error("{len} bytes is shorter than the {header}-byte envelope header")]
    TooShort {
        /// Bytes found.
        len: usize,
        /// Header size.
        header: usize,
    },
    /// The bytes do not start with this crate's magic: not our record.
    #[error("not a ractor-persist record (magic {found:02x?})")]
    BadMagic {
        /// The first bytes found.
        found: [u8; 2],
    },
    /// A newer (or unknown) envelope format.
    #[error("envelope format {found} is not supported (this build reads {supported})")]
    UnknownFormat {
        /// Format found.
        found: u8,
        /// Format this build reads.
        supported: u8,
    },
    /// A record with a transform this build does not know (a newer writer).
    #[error(
        "the record has transform flags {flags:#04x}; this build knows 0x01 (compressed) and 0x02 (encrypted)"
    )]
    UnknownTransform {
        /// The flags found.
        flags: u8,
    },
    /// An encrypted record whose key is not in the keyring (or no keyring is configured).
    #[error(
        "the record is encrypted with key id {key_id}, which the keyring does not hold \
         (configure it with Keyring::new or Keyring::with_old_key)"
    )]
    MissingKey {
        /// The id of the key that sealed the record.
        key_id: u32,
    },
    /// A record that is not encrypted, read by a storage that requires encryption
    /// ([`crate::Transforms::encrypt_only`]).
    #[error("the record is not encrypted, and this storage requires encryption")]
    NotEncrypted,
    /// An encrypted record that does not open with its key: a wrong key under that id, a
    /// changed byte, or a record moved from another actor or another sequence number.
    #[error(
        "the record does not decrypt with key id {key_id}: a wrong key under that id, a \
         changed byte, or a record moved from another actor or sequence"
    )]
    Decrypt {
        /// The id of the key tried.
        key_id: u32,
    },
    /// An intact record (its checksum holds) whose fields this build cannot make sense of: a
    /// stated length over this build's cap, transform fields cut short. Written by another
    /// build, or by a bug; not damage, so never quarantined.
    #[error("an intact record this build cannot read: {detail}")]
    Malformed {
        /// What does not fit.
        detail: String,
    },
    /// A compressed record that does not decompress to its stated length.
    #[error("the record does not decompress: {detail}")]
    Decompress {
        /// What went wrong.
        detail: String,
    },
    /// A record of another kind where this one was expected.
    #[error("expected a {expected} record, found kind {found}")]
    WrongKind {
        /// Kind expected.
        expected: &'static str,
        /// Kind byte found.
        found: u8,
    },
    /// The record was written by a schema version this code does not know.
    #[error("schema version {found} is newer than this code's version {expected}")]
    UnknownSchema {
        /// Version stored.
        found: u32,
        /// Version of the running code.
        expected: u32,
    },
    /// The record was written by an older schema and no migration from it is declared.
    #[error(
        "{what} of schema version {found} has no migration to version {expected}: declare one with #[persistent(migrate(...))]"
    )]
    NoMigration {
        /// "state" or "operation".
        what: &'static str,
        /// Version stored.
        found: u32,
        /// Version of the running code.
        expected: u32,
    },
    /// The record was written with another shape than the type it would be decoded as: the
    /// type changed without a version bump, or a version bump without a declared migration.
    #[error(
        "the record (schema version {stored_version}, shape fingerprint {stored:#018x}) does not have the shape of `{type_name}` (fingerprint {expected:#018x}), which this code (schema version {version}) would read it as; bump #[persistent(version = ..)] and declare the migration (migrate(...) or migrate_ops(...))"
    )]
    ShapeChanged {
        /// The type the record would have been decoded as.
        type_name: &'static str,
        /// The schema version stored with the record.
        stored_version: u32,
        /// The fingerprint stored with the record (0: unknown).
        stored: u64,
        /// The schema version of the running code.
        version: u32,
        /// The fingerprint of `type_name` in this build (0: unknown).
        expected: u64,
    },
    /// An operation record stored under another sequence number than the one in its envelope:
    /// a misfiled or misrestored record. Performing it would give it a second id.
    #[error("the record carries sequence {found}, but is stored as operation #{expected}")]
    SequenceMismatch {
        /// The row it is stored under.
        expected: u64,
        /// The sequence in its envelope.
        found: u64,
    },
    /// The declared length is over the cap.
    #[error("declared payload length {len} is over the cap of {max} bytes")]
    TooLarge {
        /// Length declared.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The declared length does not match the bytes present (truncation or trailing bytes).
    #[error("declared payload length {declared} but {actual} bytes follow the header")]
    LengthMismatch {
        /// Length declared.
        declared: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The checksum does not match: the bytes were damaged.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum stored.
        stored: u32,
        /// Checksum computed.
        computed: u32,
    },
    /// The payload is not a valid encoding of the expected type.
    #[error("payload does not decode as `{type_name}`: {source}")]
    Payload {
        /// The type expected.
        type_name: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The payload decoded but bytes were left over: another type, or damage.
    #[error("payload decodes as `{type_name}` but {count} bytes are left over")]
    TrailingBytes {
        /// The type expected.
        type_name: &'static str,
        /// Bytes left.
        count: usize,
    },
    /// A message from another persistent actor was encoded from a type of another shape
    /// than the one it is read as.
    #[error(
        "the message was sent as a type of shape {sent:#018x}, not `{type_name}` ({expected:#018x})"
    )]
    MessageShape {
        /// The type it was read as.
        type_name: &'static str,
        /// The fingerprint of the sender's type (0: unknown).
        sent: u64,
        /// The fingerprint of `type_name` (0: unknown).
        expected: u64,
    },
    /// The actor takes no messages from other persistent actors: its
    /// `PersistentActor::inbound` is the default.
    #[error(
        "`{actor_type}` takes no messages from other persistent actors (implement PersistentActor::inbound)"
    )]
    NotAccepted {
        /// The actor's type.
        actor_type: &'static str,
    },
    /// Two timer rows of one actor name the same timer (the runtime writes one per name):
    /// which one holds is unknown, so neither is taken.
    #[error("timer `{name}` is stored twice, also in timer #{other}")]
    DuplicateTimer {
        /// The timer's name.
        name: String,
        /// The other row naming it.
        other: u64,
    },
    /// The actor takes no durable timers: its `PersistentActor::timer` is the default.
    #[error("`{actor_type}` takes no durable timers (implement PersistentActor::timer)")]
    NoTimers {
        /// The actor's type.
        actor_type: &'static str,
    },
    /// `EventSourced::apply` refused a stored event on replay: the actor does not start from
    /// the state before it (a half-applied history), and nothing is overwritten.
    #[error("apply refused the event on replay: {reason}")]
    EventRejected {
        /// What `apply` said.
        reason: String,
    },
    /// The journal misses events: after event `after`, the next one stored is `found`
    /// (`None`: none, though the journal's head says there are events up to `last`).
    #[error(
        "the journal has a gap: event #{after} is followed by {}, but the journal runs to #{last}",
        found.map_or_else(|| "nothing".to_owned(), |s| format!("#{s}"))
    )]
    JournalGap {
        /// The last event in order.
        after: u64,
        /// The next one stored.
        found: Option<u64>,
        /// The last event the journal's head names.
        last: u64,
    },
    /// The journal holds event `found`, past the last one its head names (`last`): written
    /// by no commit of this record's history.
    #[error("the journal holds event #{found}, past its last event #{last}")]
    EventsPastHead {
        /// The last event the head names.
        last: u64,
        /// The event found past it.
        found: u64,
    },
    /// The snapshot and the journal do not agree: the snapshot covers events up to
    /// `snapshot`, the journal's head names `head` as the snapshot and `last` as its last event.
    #[error(
        "the snapshot covers the journal up to event #{snapshot}, but the journal's head names #{head} as the snapshot and #{last} as its last event"
    )]
    SnapshotMismatch {
        /// The event the stored snapshot covers.
        snapshot: u64,
        /// The snapshot event the head names.
        head: u64,
        /// The journal's last event.
        last: u64,
    },
    /// An event-sourced actor's record has events or a journal head but no snapshot, or a
    /// journal head where a snapshot-mode actor expects its state (or the other way round).
    #[error("{0}")]
    WrongModel(&'static str),
    /// Two rows of durable map `map` hold the same key (this one and row `other`): which
    /// holds is unknown, so neither is taken.
    #[error("map `{map}` holds this entry's key twice, also in map entry #{other}")]
    DuplicateEntry {
        /// The map's name.
        map: String,
        /// The other row holding the key.
        other: u64,
    },
    /// A durable map's entry was written with other key and value types than the ones it is
    /// read as.
    #[error(
        "map `{map}` was written with key and value types of fingerprint {stored:#018x}, read as types of fingerprint {expected:#018x}"
    )]
    MapTypes {
        /// The map's name.
        map: String,
        /// The fingerprint stored.
        stored: u64,
        /// The fingerprint of the types asked for.
        expected: u64,
    },
}

impl DecodeReason {
    /// Whether the bytes themselves are damaged: too short, not an envelope, a length that
    /// does not add up, or a checksum that does not match. Only damage may be quarantined
    /// (see [`crate::Start::quarantine_undecodable`]); an intact record this code cannot read
    /// (a newer format, schema or kind, a changed shape, a missing migration, a payload that
    /// does not decode as the type) is never moved aside: it fails the spawn.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            DecodeReason::TooShort { .. }
                | DecodeReason::BadMagic { .. }
                | DecodeReason::TooLarge { .. }
                | DecodeReason::LengthMismatch { .. }
                | DecodeReason::Checksum { .. }
        )
    }
}

/// A stored record that could not be decoded. Nothing was overwritten.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the {record} of `{key}` (actor type `{actor_type}`): {reason}")]
pub struct DecodeError {
    /// The actor whose record failed.
    pub key: ActorKey,
    /// The actor's Rust type.
    pub actor_type: &'static str,
    /// Which record.
    pub record: RecordRef,
    /// What was wrong.
    #[source]
    pub reason: DecodeReason,
}

/// Why a persistent actor could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store could not be read.
    #[error("cannot load `{key}`: {source}")]
    Store {
        /// The actor.
        key: ActorKey,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A stored record could not be decoded; the stored bytes are untouched.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The state returned by `init` could not be encoded.
    #[error("cannot encode the initial state of `{key}`: {source}")]
    Encode {
        /// The actor.
        key: ActorKey,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
}

/// Why a message's commit failed. The actor rolled back and stopped.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The store failed the write; the message's replies were dropped.
    #[error("commit of `{key}` failed: {source}")]
    Store {
        /// The actor.
        key: ActorKey,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A newer instance of the same actor took over; this one may not write.
    #[error(
        "commit of `{key}` refused: epoch {epoch} is stale, the store holds {current} (another instance of this actor is running)"
    )]
    Fenced {
        /// The actor.
        key: ActorKey,
        /// This instance's epoch.
        epoch: u64,
        /// The store's epoch.
        current: u64,
    },
    /// The state or an operation could not be encoded.
    #[error("cannot encode the {what} of `{key}`: {source}")]
    Encode {
        /// The actor.
        key: ActorKey,
        /// "state" or "operation".
        what: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// A handler or a commit of this instance failed before and its stored state could not
    /// be read back, so its state in memory may not be the stored one: it handles nothing
    /// more. (Under ractor the actor has stopped with the first error; spawning it again
    /// loads the stored state.)
    #[error(
        "`{key}` failed earlier and its stored state could not be read back: its state in memory may not be the stored one; spawn it again to load that"
    )]
    FailedBefore {
        /// The actor.
        key: ActorKey,
    },
}

/// Any error of this crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// See [`DecodeError`].
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// See [`LoadError`].
    #[error(transparent)]
    Load(#[from] LoadError),
    /// See [`CommitError`].
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// `Tx::push` refused an operation: the actor holds its maximum of pending operations.
///
/// Nothing was added and nothing is lost; turn it into a reply ("over capacity") or let `?`
/// fail the message (the state rolls back).
#[derive(Debug, thiserror::Error)]
#[error(
    "`{key}` already holds {pending} pending operations, its maximum of {max}: the operation was not added"
)]
pub struct OverCapacity {
    /// The actor.
    pub key: ActorKey,
    /// Operations pending, counting this message's.
    pub pending: usize,
    /// The configured maximum.
    pub max: usize,
}

/// A [`crate::RetryPolicy`] that makes no sense was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// The jitter is NaN or outside 0.0..=1.0.
    #[error("retry jitter must be a number from 0.0 to 1.0, got {0}")]
    Jitter(f64),
    /// `max_attempts` is 0: an operation would be a dead letter before its first retry.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
}

/// `Tx::requeue` refused to put a dead letter back among the pending operations; nothing
/// changed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    /// The id is not one of the actor's dead letters.
    #[error(transparent)]
    NotDeadLetter(#[from] NotDeadLetter),
    /// The actor already holds its maximum of pending operations.
    #[error(transparent)]
    OverCapacity(#[from] OverCapacity),
}

/// `Tx::requeue` was given an id that is not one of the actor's dead letters.
#[derive(Debug, thiserror::Error)]
#[error("operation {id} is not a dead letter of `{key}`")]
pub struct NotDeadLetter {
    /// The actor.
    pub key: ActorKey,
    /// The id given.
    pub id: crate::model::OpId,
}

/// [`crate::Tx::send`] refused a message; nothing was added.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message could not be encoded.
    #[error("`{key}` cannot encode a message to `{to}`: {source}")]
    Encode {
        /// The sender.
        key: ActorKey,
        /// The destination.
        to: ActorKey,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The sender's message type has no control variant, so acknowledgements could not
    /// reach it (see `PersistentActor::control`).
    #[error(
        "`{actor_type}` cannot send to persistent actors: its message type has no control variant (implement PersistentActor::control and wrap_control)"
    )]
    NoControlVariant {
        /// The sender's type.
        actor_type: &'static str,
    },
    /// The actor already holds its maximum of pending operations and messages.
    #[error(transparent)]
    OverCapacity(#[from] OverCapacity),
}

/// [`crate::Tx::emit`] refused an event; nothing was applied or added.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// `EventSourced::apply` refused the event: the state is as it was.
    #[error("`{key}` refused event #{seq}: {source}")]
    Rejected {
        /// The actor.
        key: ActorKey,
        /// The sequence number the event would have had.
        seq: u64,
        /// What `apply` said.
        #[source]
        source: BoxError,
    },
    /// The event could not be encoded.
    #[error("`{key}` cannot encode event #{seq}: {source}")]
    Encode {
        /// The actor.
        key: ActorKey,
        /// The sequence number the event would have had.
        seq: u64,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The actor implements `EventSourced` but was not derived with
    /// `#[persistent(event_sourced)]`: its events would not be journaled.
    #[error("`{actor_type}` is not event-sourced: add #[persistent(event_sourced)] to its derive")]
    NotEventSourced {
        /// The actor's type.
        actor_type: &'static str,
    },
}

/// [`crate::Tx::map`] could not hand out a durable map.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A stored entry of the map could not be decoded as the types asked for.
    #[error(transparent)]
    Decode(Box<DecodeError>),
    /// The map was already taken in this instance with other key and value types.
    #[error("`{key}` already uses map `{map}` with other types than `{types}`")]
    OtherTypes {
        /// The actor.
        key: ActorKey,
        /// The map's name.
        map: String,
        /// The types asked for now.
        types: &'static str,
    },
    /// The map's name is longer than [`crate::MAX_MAP_NAME`] bytes.
    #[error("`{key}`: the map name `{map}` is longer than {max} bytes")]
    NameTooLong {
        /// The actor.
        key: ActorKey,
        /// The name given.
        map: String,
        /// The longest name taken.
        max: usize,
    },
}

/// `resume` could not reach the actor.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The actor's message type has no variant for runtime control messages: implement
    /// `PersistentActor::control` and `wrap_control`, or resume from a handler with `Tx::resume`.
    #[error(
        "`{actor_type}` cannot be resumed from outside: its message type has no control variant (implement PersistentActor::control and wrap_control)"
    )]
    NoControlVariant {
        /// The actor's type.
        actor_type: &'static str,
    },
    /// The actor is not running.
    #[error("the actor is not running: {0}")]
    NotRunning(String),
}
