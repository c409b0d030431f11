//! Event sourcing: the [`EventSourced`] trait, the journal's rows, recovery from the latest
//! snapshot and the events after it, and reading the journal back ([`Storage::events`]).
//!
//! An event-sourced actor's record is laid out in two spaces:
//! - [`Space::SNAPSHOT`] row 0, the journal's *head*: the last event's sequence number and
//!   the one the snapshot covers (the envelope's sequence is the next operation id, as a
//!   snapshot's is), rewritten by every commit that adds an event;
//! - [`Space::JOURNAL_SNAPSHOT`] row 0, the snapshot: the state after event `n` (`n` in its
//!   envelope's sequence; 0 for `init`'s state, written by the first commit);
//! - [`Space::JOURNAL`], the events, by sequence number from 1.
//!
//! A start reads the head and the snapshot with the rest of the record, then the events after
//! the snapshot, on the committer thread in one go; it refuses a gap, a snapshot the head does
//! not name, and an event `apply` refuses.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, Header, Kind, Place};
use crate::error::{DecodeError, DecodeReason, RecordRef, StoreError};
use crate::key::ActorKey;
use crate::model::{Persistent, Stored};
use crate::storage::Storage;
use crate::store::{Loaded, Row, Space};
use crate::transform::Transforms;

/// An actor whose journal of events is its truth.
///
/// Put `#[persistent(event_sourced)]` on the derive and implement this beside
/// [`crate::PersistentActor`]. The handler changes the state only through
/// [`crate::Tx::emit`], which runs [`apply`](Self::apply) at once (so the handler sees the new
/// state) and appends the event to the journal in the message's commit, with its operations
/// and replies: every promise of the snapshot mode holds unchanged. A message that emits
/// nothing and changes no operation writes nothing.
///
/// A start reads the latest snapshot and applies the events after it. Snapshots are written
/// every [`crate::Start::snapshot_every`] events (default [`DEFAULT_SNAPSHOT_EVERY`]); with
/// [`Retention::Light`] the events a snapshot covers are removed in its commit, with
/// [`Retention::Full`] (the default) they are kept as the actor's history, read with
/// [`Storage::events`].
///
/// ```ignore
/// impl EventSourced for Ledger {
///     type Event = Entry;
///     fn apply(state: &mut Balance, event: &Entry) -> Result<(), ActorProcessingErr> {
///         match event {
///             Entry::Credit(n) => state.0 += n,
///             Entry::Debit(n) if state.0 >= *n => state.0 -= n,
///             Entry::Debit(n) => return Err(format!("debit of {n} exceeds {}", state.0).into()),
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait EventSourced: Persistent {
    /// An event: what happened, stored in the journal (its postcard encoding).
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Changes `state` by `event`. Pure: the same state and event give the same result,
    /// with no side effects, since it runs again on every recovery.
    ///
    /// An `Err` refuses the event and must leave the state unchanged (check, then change).
    /// From [`crate::Tx::emit`] the refusal is the handler's to handle; on replay it fails the
    /// start with [`DecodeReason::EventRejected`] naming the key and the event's number.
    fn apply(
        state: &mut Self::State,
        event: &Self::Event,
    ) -> Result<(), ractor::ActorProcessingErr>;

    /// Decodes an event written by an older schema version (`stored.schema()`), as
    /// [`Persistent::migrate_state`] does for the state.
    /// `#[persistent(version = 3, event_sourced, migrate_events(1 = EventV1, 2 = EventV2))]`
    /// generates the chain of `From`s. Without one, the default reads the event as the current
    /// type only if that type's shape did not change ([`Stored::decode_unchanged`]): a changed
    /// event type without a migration is a typed error, never a guess.
    fn migrate_event(stored: Stored<'_>) -> Result<Self::Event, DecodeReason> {
        match Self::__migrate_event(stored) {
            Some(migrated) => migrated.and_then(|any| {
                any.downcast::<Self::Event>()
                    .map(|event| *event)
                    .map_err(|_| DecodeReason::NoMigration {
                        what: "event",
                        found: stored.schema(),
                        expected: stored.current_schema(),
                    })
            }),
            None => stored.decode_unchanged("event"),
        }
    }
}

/// An event migrated by the derive's chain, before [`EventSourced::migrate_event`] unboxes it.
/// Not public API.
#[doc(hidden)]
pub type AnyEvent = Box<dyn std::any::Any + Send>;

/// What happens to the events a snapshot covers (ave-actors' two modes, by name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Keep every event: the journal is the actor's whole history, an audit trail that
    /// [`Storage::events`] reads from the first event. Recovery still starts from the latest
    /// snapshot. The default: nothing stored is removed unless asked.
    #[default]
    Full,
    /// Compact: the commit that writes a snapshot removes the events it covers, so the
    /// store holds the snapshot and the events after it. Smaller; the history is gone.
    Light,
}

/// The default number of events between two snapshots.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;

/// The runtime's handle on an event-sourced actor's types, emitted by the derive's
/// `event_sourced`. Not public API.
#[doc(hidden)]
pub struct JournalHooks<A: Persistent> {
    /// Decodes (or migrates) one stored event and applies it.
    pub(crate) replay: fn(&mut A::State, Stored<'_>) -> Result<(), DecodeReason>,
    /// The event type's shape fingerprint (0: unknown).
    pub(crate) shape: fn() -> u64,
}

impl<A: EventSourced> JournalHooks<A> {
    /// The hooks of `A`.
    pub fn of() -> Self {
        JournalHooks {
            replay: replay_one::<A>,
            shape: || crate::shape::shape_fingerprint::<A::Event>().unwrap_or(0),
        }
    }
}

/// Decodes one event (migrating an older one) and applies it.
fn replay_one<A: EventSourced>(
    state: &mut A::State,
    stored: Stored<'_>,
) -> Result<(), DecodeReason> {
    let event = if stored.schema() == stored.current_schema() {
        stored.decode::<A::Event>()?
    } else {
        A::migrate_event(stored)?
    };
    A::apply(state, &event).map_err(|e| DecodeReason::EventRejected {
        reason: e.to_string(),
    })
}

/// The payload of the journal's head row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadRow {
    /// The last event's sequence number (0: none yet).
    pub(crate) last: u64,
    /// The event the snapshot covers (0: `init`'s state).
    pub(crate) snapshot: u64,
    /// The last event removed by compaction ([`Retention::Light`]; 0: none): the journal
    /// holds the events after it. It never goes down.
    pub(crate) compacted: u64,
}

impl HeadRow {
    /// Whether the head's numbers can be a journal's: compacted <= snapshot <= last, with room
    /// for one more event (a forged or damaged head must never overflow an addition).
    pub(crate) fn is_ordered(&self) -> bool {
        self.compacted <= self.snapshot && self.snapshot <= self.last && self.last < u64::MAX
    }
}

/// The version of the head row's layout.
pub(crate) const HEAD_VERSION: u32 = 1;

/// The head row's id in [`Space::SNAPSHOT`].
pub(crate) const HEAD_ROW: u64 = 0;
/// The snapshot row's id in [`Space::JOURNAL_SNAPSHOT`].
pub(crate) const SNAPSHOT_ROW: u64 = 0;

/// An event-sourced actor's journal as the runtime keeps it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JournalState {
    /// What is stored: the head (all zero before the first commit).
    pub(crate) head: HeadRow,
    /// Whether the head was ever committed (the first commit writes `init`'s snapshot).
    pub(crate) stored: bool,
    pub(crate) every: u64,
    pub(crate) retention: Retention,
    pub(crate) event_shape: u64,
}

/// Where the events to read after `loaded`'s snapshot start (`None` when row 0 is not a
/// journal head, i.e. a snapshot-mode record or none). Row 0's kind byte is read unverified,
/// so a snapshot-mode load pays no second checksum; a damaged record reads its whole journal
/// and is refused by the decoding that follows.
pub(crate) fn tail_from(loaded: &Loaded) -> Option<u64> {
    let head = loaded.snapshot()?;
    if head.get(0..2) != Some(&b"RP"[..]) || head.get(3) != Some(&(Kind::JournalHead as u8)) {
        return None;
    }
    let snapshot = loaded
        .space(Space::JOURNAL_SNAPSHOT)
        .find(|(id, _)| *id == SNAPSHOT_ROW)
        .and_then(|(_, b)| envelope::verify(b, u32::MAX).ok())
        .map_or(0, |v| v.header.sequence);
    Some(snapshot.saturating_add(1))
}

/// Reads the events after the snapshot into `loaded` (on the committer thread, right after the
/// record was read): nothing for a snapshot-mode record.
pub(crate) fn read_tail(
    store: &dyn crate::Store,
    key: &ActorKey,
    mut loaded: Loaded,
) -> Result<Loaded, StoreError> {
    if let Some(from) = tail_from(&loaded) {
        let events = store.read(key, Some(Space::JOURNAL), from..=u64::MAX)?;
        // No commit of this storage comes between the two reads, but one of another process
        // sharing the store (PostgreSQL) may: then the head moved, a newer writer holds the
        // actor, and this instance is fenced, not looking at a damaged journal.
        let head = store
            .read(key, Some(Space::SNAPSHOT), HEAD_ROW..=HEAD_ROW)?
            .into_iter()
            .next()
            .map(|r| r.bytes);
        if head.as_deref() != loaded.snapshot() {
            let written_by = head
                .as_deref()
                .and_then(|b| b.get(8..16))
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            return Err(StoreError::Fenced(vec![crate::store::Fence {
                index: 0,
                key: key.clone(),
                epoch: loaded.epoch,
                current: written_by.max(loaded.epoch.saturating_add(1)),
            }]));
        }
        loaded.rows.extend(events);
    }
    Ok(loaded)
}

/// An event-sourced record as recovered: the state, the head, and the snapshot's encoding.
pub(crate) struct Recovered<S> {
    pub(crate) state: S,
    pub(crate) head: HeadRow,
}

/// Rebuilds an event-sourced actor's state from its loaded rows: the snapshot, then every
/// event after it, in order. `Ok(None)` when the actor was never committed.
pub(crate) fn recover<A: Persistent>(
    key: &ActorKey,
    loaded: &Loaded,
    transforms: &Transforms,
    hooks: &JournalHooks<A>,
) -> Result<Option<Recovered<A::State>>, (RecordRef, DecodeReason)> {
    let snapshot_row = loaded
        .space(Space::JOURNAL_SNAPSHOT)
        .find(|(id, _)| *id == SNAPSHOT_ROW)
        .map(|(_, b)| b);
    let mut events = loaded.space(Space::JOURNAL).peekable();
    let Some(head_bytes) = loaded.snapshot() else {
        if snapshot_row.is_some() || events.peek().is_some() {
            return Err((
                RecordRef::JournalHead,
                DecodeReason::WrongModel("the journal has events or a snapshot but no head"),
            ));
        }
        return Ok(None);
    };
    let kind = envelope::verify(head_bytes, u32::MAX)
        .map_err(|r| (RecordRef::JournalHead, r))?
        .kind;
    if kind == Kind::Snapshot {
        return Err((
            RecordRef::Snapshot,
            DecodeReason::WrongModel(
                "a snapshot-mode state is stored where this event-sourced actor keeps its journal head",
            ),
        ));
    }
    if kind != Kind::JournalHead {
        return Err((
            RecordRef::JournalHead,
            DecodeReason::WrongKind {
                expected: "journal head",
                found: kind as u8,
            },
        ));
    }
    let place = Place { key, id: HEAD_ROW };
    let (_, body) = envelope::open(
        head_bytes,
        Kind::JournalHead,
        HEAD_VERSION,
        transforms,
        place,
    )
    .map_err(|r| (RecordRef::JournalHead, r))?;
    let head: HeadRow = envelope::payload(&body).map_err(|r| (RecordRef::JournalHead, r))?;
    let Some(snapshot_bytes) = snapshot_row else {
        return Err((
            RecordRef::Snapshot,
            DecodeReason::WrongModel("the journal has a head but no snapshot"),
        ));
    };
    let place = Place {
        key,
        id: SNAPSHOT_ROW,
    };
    let (header, body) = envelope::open(
        snapshot_bytes,
        Kind::Snapshot,
        A::VERSION,
        transforms,
        place,
    )
    .map_err(|r| (RecordRef::Snapshot, r))?;
    if !head.is_ordered() || header.sequence != head.snapshot {
        return Err((
            RecordRef::Snapshot,
            DecodeReason::SnapshotMismatch {
                snapshot: header.sequence,
                head: head.snapshot,
                last: head.last,
            },
        ));
    }
    let mut state = decode_state::<A>(header, &body).map_err(|r| (RecordRef::Snapshot, r))?;
    for (seq, bytes) in in_order(events, head.snapshot + 1, &head)? {
        let stored = open_event(key, seq, bytes, A::VERSION, transforms)?;
        (hooks.replay)(&mut state, stored.as_stored::<A>())
            .map_err(|r| (RecordRef::Event(seq), r))?;
    }
    Ok(Some(Recovered { state, head }))
}

/// A stored event: its number and its envelope.
type Event<'a> = (u64, &'a [u8]);

/// The events of `rows` (by ascending number) from `from` to the head's last, each there once
/// and in order; rows below `from` (history a snapshot covers) are passed over. An event
/// missing is a gap, one past the head's last is refused.
fn in_order<'a>(
    rows: impl IntoIterator<Item = Event<'a>>,
    from: u64,
    head: &HeadRow,
) -> Result<Vec<Event<'a>>, (RecordRef, DecodeReason)> {
    let mut events = Vec::new();
    let mut expected = from;
    for (seq, bytes) in rows.into_iter().filter(|(seq, _)| *seq >= from) {
        if seq > head.last {
            return Err((
                RecordRef::Event(seq),
                DecodeReason::EventsPastHead {
                    last: head.last,
                    found: seq,
                },
            ));
        }
        if seq != expected {
            return Err((
                RecordRef::Event(expected),
                DecodeReason::JournalGap {
                    after: expected - 1,
                    found: Some(seq),
                    last: head.last,
                },
            ));
        }
        events.push((seq, bytes));
        expected += 1;
    }
    if expected <= head.last {
        return Err((
            RecordRef::Event(expected),
            DecodeReason::JournalGap {
                after: expected - 1,
                found: None,
                last: head.last,
            },
        ));
    }
    Ok(events)
}

/// Decodes a snapshot's state: the current version (only with the current shape) or an
/// older one through the state's migration.
pub(crate) fn decode_state<A: Persistent>(
    header: Header,
    body: &[u8],
) -> Result<A::State, DecodeReason> {
    let stored = Stored::new(header.schema, header.fingerprint, A::VERSION, body);
    if header.schema == A::VERSION {
        stored.decode()
    } else {
        A::migrate_state(stored)
    }
}

/// An opened event envelope.
struct OpenEvent<'a> {
    header: Header,
    body: Cow<'a, [u8]>,
}

impl OpenEvent<'_> {
    fn as_stored<A: Persistent>(&self) -> Stored<'_> {
        Stored::new(
            self.header.schema,
            self.header.fingerprint,
            A::VERSION,
            &self.body,
        )
    }
}

/// Opens event `seq`'s envelope (refusing a schema newer than `version`) and checks that it
/// says it is event `seq`.
fn open_event<'a>(
    key: &ActorKey,
    seq: u64,
    bytes: &'a [u8],
    version: u32,
    transforms: &Transforms,
) -> Result<OpenEvent<'a>, (RecordRef, DecodeReason)> {
    let place = Place { key, id: seq };
    let (header, body) = envelope::open(bytes, Kind::Event, version, transforms, place)
        .map_err(|r| (RecordRef::Event(seq), r))?;
    if header.sequence != seq {
        return Err((
            RecordRef::Event(seq),
            DecodeReason::SequenceMismatch {
                expected: seq,
                found: header.sequence,
            },
        ));
    }
    Ok(OpenEvent { header, body })
}

/// Why [`Storage::events`] could not read a journal.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The store could not be read.
    #[error("cannot read the journal of `{key}`: {source}")]
    Store {
        /// The actor.
        key: ActorKey,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A stored record could not be decoded; nothing was changed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The events asked for were removed by compaction ([`Retention::Light`]): the journal
    /// now starts at `first` (the head keeps the last event compacted, so a missing event
    /// that compaction did not remove is a gap, never this).
    #[error("the journal of `{key}` was compacted: it starts at event #{first}, not #{from}")]
    Compacted {
        /// The actor.
        key: ActorKey,
        /// The first event asked for.
        from: u64,
        /// The first event stored.
        first: u64,
    },
}

/// One stored event as read without the actor's types ([`Storage::journal`]): for tools
/// such as an admin CLI, which show a journal they cannot decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// The event's sequence number.
    pub seq: u64,
    /// The schema version it was written with.
    pub schema: u32,
    /// The shape fingerprint of its type (0: unknown).
    pub fingerprint: u64,
    /// Its postcard payload, checked (checksum) and with its transforms undone.
    pub payload: Vec<u8>,
}

impl Storage {
    /// The events of event-sourced actor `key` (of type `A`), in order, from sequence number
    /// `from` (1 for the first) to the last committed one, each with its number: for
    /// projections and audits. Older events are migrated as a start would.
    ///
    /// Reads the store, not a running actor: it sees every committed event, on every backend.
    /// An empty list if the journal holds nothing from `from` on;
    /// [`JournalError::Compacted`] if the events asked for were compacted away.
    pub async fn events<A: EventSourced>(
        &self,
        key: &str,
        from: u64,
    ) -> Result<Vec<(u64, A::Event)>, JournalError> {
        let key = ActorKey::new(A::NAME, key);
        let actor_type = std::any::type_name::<A>();
        let entries = self.journal_of(&key, from, A::VERSION, actor_type).await?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let stored = Stored::new(e.schema, e.fingerprint, A::VERSION, &e.payload);
            let event = if e.schema == A::VERSION {
                stored.decode::<A::Event>()
            } else {
                A::migrate_event(stored)
            }
            .map_err(|reason| DecodeError {
                key: key.clone(),
                actor_type,
                record: RecordRef::Event(e.seq),
                reason,
            })?;
            out.push((e.seq, event));
        }
        Ok(out)
    }

    /// The events of actor `key` from `from` on, as stored, without decoding their payloads:
    /// what [`Storage::events`] reads, for a tool that does not know the actor's types. The
    /// same checks hold (envelopes, order, no gap, compaction reported).
    pub async fn journal(
        &self,
        key: &ActorKey,
        from: u64,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        self.journal_of(key, from, u32::MAX, "(not known to the reader)")
            .await
    }

    /// Reads and checks the journal of `key` from `from` on, refusing event schemas above
    /// `version`.
    async fn journal_of(
        &self,
        key: &ActorKey,
        from: u64,
        version: u32,
        actor_type: &'static str,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        let from = from.max(1);
        let (head, rows) =
            self.read_journal(key, from)
                .await
                .map_err(|source| JournalError::Store {
                    key: key.clone(),
                    source,
                })?;
        let transforms = self.transforms();
        let bad = |(record, reason)| DecodeError {
            key: key.clone(),
            actor_type,
            record,
            reason,
        };
        let Some(head) = head else {
            return Ok(Vec::new());
        };
        let place = Place { key, id: HEAD_ROW };
        let (_, body) = envelope::open(&head, Kind::JournalHead, HEAD_VERSION, transforms, place)
            .map_err(|r| bad((RecordRef::JournalHead, r)))?;
        let head: HeadRow =
            envelope::payload(&body).map_err(|r| bad((RecordRef::JournalHead, r)))?;
        if !head.is_ordered() {
            return Err(JournalError::Decode(bad((
                RecordRef::JournalHead,
                DecodeReason::SnapshotMismatch {
                    snapshot: head.compacted,
                    head: head.snapshot,
                    last: head.last,
                },
            ))));
        }
        if from <= head.compacted {
            return Err(JournalError::Compacted {
                key: key.clone(),
                from,
                first: head.compacted + 1,
            });
        }
        let rows = rows.iter().map(|r| (r.id, &r.bytes[..]));
        let events = in_order(rows, from, &head).map_err(bad)?;
        let mut out = Vec::with_capacity(events.len());
        for (seq, bytes) in events {
            let open = open_event(key, seq, bytes, version, transforms).map_err(bad)?;
            out.push(JournalEntry {
                seq,
                schema: open.header.schema,
                fingerprint: open.header.fingerprint,
                payload: open.body.into_owned(),
            });
        }
        Ok(out)
    }
}

/// Reads the head row and the journal's rows from `from` in one call on the committer
/// thread.
///
/// The head is read again after the rows: a writer of another process sharing the store may
/// commit between the reads, and rows read against a head they do not match would look like a
/// damaged journal. The read is tried again until the head holds still (a few times at most).
pub(crate) fn read_journal_rows(
    store: &dyn crate::Store,
    key: &ActorKey,
    from: u64,
) -> Result<(Option<Vec<u8>>, Vec<Row>), StoreError> {
    let head_of = |store: &dyn crate::Store| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(store
            .read(key, Some(Space::SNAPSHOT), HEAD_ROW..=HEAD_ROW)?
            .into_iter()
            .next()
            .map(|r| r.bytes))
    };
    let mut head = head_of(store)?;
    for _ in 0..JOURNAL_READ_TRIES {
        let rows = store.read(key, Some(Space::JOURNAL), from..=u64::MAX)?;
        let again = head_of(store)?;
        if again == head {
            return Ok((head, rows));
        }
        head = again;
    }
    Err(StoreError::Interrupted {
        store: store.name().to_owned(),
        source: format!(
            "the journal of `{key}` changed under each of {JOURNAL_READ_TRIES} reads (another process is writing it)"
        )
        .into(),
    })
}

/// How many times a journal read is tried while another process keeps writing the journal.
const JOURNAL_READ_TRIES: usize = 8;
