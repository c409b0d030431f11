//! Inspecting and repairing a store without running its actors: what the admin tool
//! (`ractor-persist`, the persist-cli crate) and an application's own admin commands call.
//!
//! Everything here works on a [`Store`] directly, synchronously, and reads through the seam's
//! admin calls ([`Store::scan`], [`Store::keys`], [`Store::read`]). Reading takes no epoch and
//! writes nothing. The writing calls ([`requeue`], [`delete`], [`restore`]) check their input
//! first, with reads only, so a refused call writes nothing; then each takes a new writer
//! epoch for its key, which fences a running instance of the actor exactly as a newer
//! instance would, and writes one commit like any other.
//!
//! Records are shown as their envelope headers ([`RecordHeader`]) and payload bytes; the
//! typed decoders ([`decode_state`], [`decode_op`], [`decode_event`]) turn a payload into the
//! user's type with the same migrations an actor's load uses.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::envelope::{self, Kind, Place, Verified};
use crate::error::{DecodeReason, StoreError};
use crate::journal::EventSourced;
use crate::key::ActorKey;
use crate::model::{Persistent, Stored};
use crate::storage::{QuarantineBody, sequence_floor};
use crate::store::{ActorCommit, Marks, Row, Space, Store};
use crate::transform::Transforms;

/// A request the admin calls refused, or the store's failure; a refused request wrote
/// nothing.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No key of the store is in this namespace.
    #[error("no actor of the store is in namespace `{namespace}`")]
    NoNamespace {
        /// The namespace asked for.
        namespace: String,
    },
    /// The store holds no row of this actor (it was never committed, or it was deleted).
    #[error("the store holds no record of `{key}`")]
    NoActor {
        /// The actor asked for.
        key: ActorKey,
    },
    /// A requeue named an operation id that is not one of the actor's dead letters.
    #[error("operation #{id} of `{key}` is not a dead letter: {found}")]
    NotDeadLetter {
        /// The actor.
        key: ActorKey,
        /// The operation id (its sequence number).
        id: u64,
        /// What the store holds under that id instead.
        found: String,
    },
    /// A restore named a quarantined record that does not exist.
    #[error("`{key}` has no quarantined record moved aside by epoch {epoch}")]
    NoQuarantine {
        /// The actor.
        key: ActorKey,
        /// The epoch asked for.
        epoch: u64,
    },
    /// A restore would overwrite the actor's current record; delete it first if that is meant.
    #[error(
        "`{key}` has a record again ({rows} rows); restoring the quarantined one would overwrite \
         it (delete the current record first if that is meant)"
    )]
    RecordExists {
        /// The actor.
        key: ActorKey,
        /// The rows its current record has.
        rows: usize,
    },
    /// A record to rewrite is encrypted with a key the call was not given: pass the store's
    /// [`Transforms`] with its keyring.
    #[error(
        "{space} row #{id} of `{key}` is encrypted with key {key_id}, which was not given: \
         rewriting it needs the store's keyring (Admin::transforms)"
    )]
    NeedsKey {
        /// The actor.
        key: ActorKey,
        /// The record's space.
        space: Space,
        /// The record's row id.
        id: u64,
        /// The id of the key it is sealed with.
        key_id: u32,
    },
    /// The actor's record may not be changed this way.
    #[error("`{key}` cannot be edited: {reason}")]
    NotEditable {
        /// The actor.
        key: ActorKey,
        /// Why.
        reason: &'static str,
    },
    /// A value could not be encoded.
    #[error("the new state of `{key}` cannot be encoded: {source}")]
    Encode {
        /// The actor.
        key: ActorKey,
        /// postcard's error (a value over the size cap, for one).
        source: postcard::Error,
    },
    /// A record could not be read.
    #[error("{space} row #{id} of `{key}` cannot be read: {reason}")]
    Damaged {
        /// The actor.
        key: ActorKey,
        /// The record's space.
        space: Space,
        /// The record's row id.
        id: u64,
        /// Why.
        reason: DecodeReason,
    },
}

/// The header of a stored record, as [`inspect`] reads it from the envelope.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The envelope format: 1 plain, 2 with transforms.
    pub format: u8,
    /// The record kind's number.
    pub kind: u8,
    /// What the kind holds ("snapshot", "operation", "dead-letter operation", ...).
    pub kind_name: &'static str,
    /// The schema version it was written with.
    pub schema: u32,
    /// The epoch of the instance that wrote it.
    pub epoch: u64,
    /// Its sequence number: an operation's id, an event's number, a snapshot's next
    /// operation id.
    pub sequence: u64,
    /// The shape fingerprint of the payload's type (0: unknown).
    pub fingerprint: u64,
    /// Whether the body is compressed (LZ4).
    pub compressed: bool,
    /// The id of the key the body is encrypted with, if it is.
    pub encrypted: Option<u32>,
    /// The stored body's length in bytes (after the transforms).
    pub body_len: usize,
}

impl RecordHeader {
    fn of(v: &Verified<'_>) -> RecordHeader {
        RecordHeader {
            format: v.format(),
            kind: v.kind as u8,
            kind_name: v.kind.name(),
            schema: v.header.schema,
            epoch: v.epoch(),
            sequence: v.header.sequence,
            fingerprint: v.header.fingerprint,
            compressed: v.compressed(),
            encrypted: v.key_id(),
            body_len: v.body_len(),
        }
    }

    /// Whether the record is a pending operation (performed at the next start).
    pub fn is_pending_op(&self) -> bool {
        [Kind::Op, Kind::RetriedOp, Kind::WaitingOp]
            .iter()
            .any(|k| *k as u8 == self.kind)
    }

    /// Whether the record is a dead letter (an operation set aside, not performed).
    pub fn is_dead_letter(&self) -> bool {
        self.kind == Kind::DeadOp as u8 || self.kind == Kind::CountedDeadOp as u8
    }
}

/// Checks a record's envelope (magic, format, lengths, checksum, kind) and reads its header,
/// without undoing its transforms: no key is needed. The schema version is not compared with
/// any code's.
pub fn inspect(bytes: &[u8]) -> Result<RecordHeader, DecodeReason> {
    envelope::verify(bytes, u32::MAX).map(|v| RecordHeader::of(&v))
}

/// A record's payload with its transforms undone, split from what the runtime keeps before an
/// operation.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The record's header.
    pub header: RecordHeader,
    /// The failed attempts of a retried or dead operation.
    pub attempts: Option<u32>,
    /// When a waiting operation's retry is due, in milliseconds since the Unix epoch.
    pub due_ms: Option<u64>,
    /// The value's postcard bytes.
    pub value: Vec<u8>,
}

/// Opens the record stored as row `id` of `key` and returns its payload; an encrypted one
/// needs the keyring in `transforms` ([`DecodeReason::MissingKey`] otherwise).
pub fn payload(
    key: &ActorKey,
    id: u64,
    bytes: &[u8],
    transforms: &Transforms,
) -> Result<Payload, DecodeReason> {
    let v = envelope::verify(bytes, u32::MAX)?;
    let header = RecordHeader::of(&v);
    // What the runtime reads, it reads with the store's transforms: `require_encryption`
    // refuses a plain record here as it would there.
    let body: Cow<'_, [u8]> = v.payload(transforms, Place { key, id })?;
    let (attempts, due_ms, value) = match v.kind {
        Kind::RetriedOp | Kind::CountedDeadOp => {
            let (n, op) = envelope::split_attempts(&body)?;
            (Some(n), None, op.to_vec())
        }
        Kind::WaitingOp => {
            let (n, due, op) = envelope::split_waiting(&body)?;
            (Some(n), Some(due), op.to_vec())
        }
        _ => (None, None, body.into_owned()),
    };
    Ok(Payload {
        header,
        attempts,
        due_ms,
        value,
    })
}

/// The state of `A` stored in a snapshot record (an event-sourced actor's state snapshot
/// too), through `A`'s migrations as a load reads it.
pub fn decode_state<A: Persistent>(payload: &Payload) -> Result<A::State, DecodeReason> {
    if payload.header.kind != Kind::Snapshot as u8 {
        return Err(DecodeReason::WrongKind {
            expected: Kind::Snapshot.name(),
            found: payload.header.kind,
        });
    }
    versioned(payload, A::VERSION, A::migrate_state)
}

/// The operation of `A` stored in an operation or dead-letter record, through `A`'s
/// operation migrations.
pub fn decode_op<A: Persistent>(payload: &Payload) -> Result<A::Op, DecodeReason> {
    if !(payload.header.is_pending_op() || payload.header.is_dead_letter()) {
        return Err(DecodeReason::WrongKind {
            expected: Kind::Op.name(),
            found: payload.header.kind,
        });
    }
    versioned(payload, A::VERSION, A::migrate_op)
}

/// The event of `A` stored in a journal record, through `A`'s event migrations.
pub fn decode_event<A: EventSourced>(payload: &Payload) -> Result<A::Event, DecodeReason> {
    if payload.header.kind != Kind::Event as u8 {
        return Err(DecodeReason::WrongKind {
            expected: Kind::Event.name(),
            found: payload.header.kind,
        });
    }
    versioned(payload, A::VERSION, A::migrate_event)
}

fn versioned<T: serde::de::DeserializeOwned + 'static>(
    payload: &Payload,
    version: u32,
    migrate: fn(Stored<'_>) -> Result<T, DecodeReason>,
) -> Result<T, DecodeReason> {
    let h = &payload.header;
    if h.schema > version {
        return Err(DecodeReason::UnknownSchema {
            found: h.schema,
            expected: version,
        });
    }
    let stored = Stored::new(h.schema, h.fingerprint, version, &payload.value);
    if h.schema == version {
        stored.decode()
    } else {
        migrate(stored)
    }
}

/// The namespaces of the store, each with how many keys it holds anything of.
pub fn namespaces(store: &dyn Store) -> Result<Vec<(String, usize)>, StoreError> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for (key, _) in store.scan()? {
        *out.entry(key.namespace().to_owned()).or_default() += 1;
    }
    Ok(out.into_iter().collect())
}

/// What an actor's stored record amounts to, as [`actors`] lists it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorSummary {
    /// The actor.
    pub key: ActorKey,
    /// Its marks: the last epoch handed out and the sequence floor.
    pub marks: Marks,
    /// Rows of its record (quarantined ones apart).
    pub rows: usize,
    /// Bytes of those rows.
    pub bytes: u64,
    /// How its state is kept: "snapshot", "event-sourced", or "none" (no state row).
    pub model: &'static str,
    /// Pending operations.
    pub pending: usize,
    /// Dead letters.
    pub dead: usize,
    /// Records moved to its quarantine.
    pub quarantined: usize,
    /// Rows that fail [`verify`]'s checks (an encrypted body is checked by its checksum only).
    pub damaged: usize,
}

impl ActorSummary {
    fn of(key: ActorKey, marks: Marks, rows: &[Row]) -> ActorSummary {
        let mut s = ActorSummary {
            key,
            marks,
            rows: 0,
            bytes: 0,
            model: "none",
            pending: 0,
            dead: 0,
            quarantined: 0,
            damaged: 0,
        };
        for row in rows {
            if row.space == Space::QUARANTINE {
                s.quarantined += 1;
                continue;
            }
            s.rows += 1;
            s.bytes += row.bytes.len() as u64;
            // The checks of `verify`, but for the body of an encrypted record (no key here).
            let Ok(h) = inspect(&row.bytes) else {
                s.damaged += 1;
                continue;
            };
            if check_row(&s.key, row, &Transforms::none()).is_err() {
                s.damaged += 1;
            }
            if row.space == Space::SNAPSHOT {
                s.model = if h.kind == Kind::JournalHead as u8 {
                    "event-sourced"
                } else {
                    "snapshot"
                };
            } else if row.space == Space::OPS {
                s.pending += usize::from(h.is_pending_op());
                s.dead += usize::from(h.is_dead_letter());
            }
        }
        s
    }
}

/// Every actor of `namespace` that holds a row, with its counts, in key order.
pub fn actors(store: &dyn Store, namespace: &str) -> Result<Vec<ActorSummary>, AdminError> {
    let keys: Vec<(ActorKey, Marks)> = store
        .scan()?
        .into_iter()
        .filter(|(k, _)| k.namespace() == namespace)
        .collect();
    if keys.is_empty() {
        return Err(AdminError::NoNamespace {
            namespace: namespace.to_owned(),
        });
    }
    let mut out = Vec::new();
    for (key, marks) in keys {
        let rows = store.read(&key, None, 0..=u64::MAX)?;
        if !rows.is_empty() {
            out.push(ActorSummary::of(key, marks, &rows));
        }
    }
    Ok(out)
}

/// One actor's marks and every row (its quarantine too), by ascending (space, id).
pub fn record(store: &dyn Store, key: &ActorKey) -> Result<(Marks, Vec<Row>), AdminError> {
    let rows = store.read(key, None, 0..=u64::MAX)?;
    if rows.is_empty() {
        return Err(AdminError::NoActor { key: key.clone() });
    }
    let marks = marks_of(store, key)?;
    Ok((marks, rows))
}

fn marks_of(store: &dyn Store, key: &ActorKey) -> Result<Marks, StoreError> {
    Ok(store
        .scan()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, m)| m)
        .unwrap_or_default())
}

/// A dead letter, as [`dead_letters`] lists it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The actor that holds it.
    pub key: ActorKey,
    /// The operation's id (its sequence number): what [`requeue`] takes.
    pub id: u64,
    /// Its envelope header.
    pub header: RecordHeader,
    /// The failed attempts recorded with it, if it was counted (and readable).
    pub attempts: Option<u32>,
    /// The stored record's bytes.
    pub bytes: Vec<u8>,
}

/// The dead letters of the actors of `namespace` (every namespace when `None`), by key and id.
/// A record whose envelope does not check is not listed here; [`verify`] names it.
pub fn dead_letters(
    store: &dyn Store,
    namespace: Option<&str>,
    transforms: &Transforms,
) -> Result<Vec<DeadLetter>, AdminError> {
    let keys: Vec<ActorKey> = match namespace {
        Some(ns) => {
            let keys = store.keys(ns, Space::OPS)?;
            if keys.is_empty() && !store.scan()?.iter().any(|(k, _)| k.namespace() == ns) {
                return Err(AdminError::NoNamespace {
                    namespace: ns.to_owned(),
                });
            }
            keys.into_iter().map(|k| ActorKey::new(ns, k)).collect()
        }
        None => store.scan()?.into_iter().map(|(k, _)| k).collect(),
    };
    let mut out = Vec::new();
    for key in keys {
        for row in store.read(&key, Some(Space::OPS), 0..=u64::MAX)? {
            let Ok(header) = inspect(&row.bytes) else {
                continue;
            };
            if header.is_dead_letter() {
                let attempts = payload(&key, row.id, &row.bytes, transforms)
                    .ok()
                    .and_then(|p| p.attempts);
                out.push(DeadLetter {
                    key: key.clone(),
                    id: row.id,
                    header,
                    attempts,
                    bytes: row.bytes,
                });
            }
        }
    }
    Ok(out)
}

/// What a writing admin call changed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The actor written.
    pub key: ActorKey,
    /// The writer epoch the call took (a running instance with an older one is fenced).
    pub epoch: u64,
    /// Rows written.
    pub written: usize,
    /// Rows removed.
    pub removed: usize,
}

/// Puts dead letter `id` of `key` back among its pending operations, with no failed attempts,
/// as [`crate::Tx::requeue`] does: the actor performs it at its next start.
///
/// Refused, writing nothing, when `id` is not a dead letter ([`AdminError::NotDeadLetter`]),
/// when the record does not check, or when it is encrypted and `transforms` lacks its key
/// (the rewritten record is sealed with `transforms`, so give the store's own).
pub fn requeue(
    store: &dyn Store,
    key: &ActorKey,
    id: u64,
    transforms: &Transforms,
) -> Result<Changed, AdminError> {
    let current = |rows: Vec<Row>| -> Result<Payload, AdminError> {
        let row = rows.into_iter().find(|r| r.id == id);
        let Some(row) = row else {
            return Err(AdminError::NotDeadLetter {
                key: key.clone(),
                id,
                found: "the actor has no operation with this id".to_owned(),
            });
        };
        let p = payload(key, id, &row.bytes, transforms).map_err(|reason| match reason {
            DecodeReason::MissingKey { key_id } => AdminError::NeedsKey {
                key: key.clone(),
                space: Space::OPS,
                id,
                key_id,
            },
            reason => AdminError::Damaged {
                key: key.clone(),
                space: Space::OPS,
                id,
                reason,
            },
        })?;
        if !p.header.is_dead_letter() {
            return Err(AdminError::NotDeadLetter {
                key: key.clone(),
                id,
                found: if p.header.is_pending_op() {
                    "it is still pending".to_owned()
                } else {
                    format!("the row holds a record of kind {}", p.header.kind)
                },
            });
        }
        Ok(p)
    };
    if store.read(key, None, 0..=u64::MAX)?.is_empty() {
        return Err(AdminError::NoActor { key: key.clone() });
    }
    let (epoch, p) = under_new_epoch(store, key, &[Space::OPS], current)?;
    let head = envelope::Header {
        schema: p.header.schema,
        sequence: id,
        fingerprint: p.header.fingerprint,
    };
    let bytes = envelope::seal(
        Kind::Op,
        head,
        epoch,
        &p.value,
        transforms,
        Place { key, id },
    );
    store.commit(&[ActorCommit::new(key.clone(), epoch).put(Space::OPS, id, bytes)])?;
    Ok(Changed {
        key: key.clone(),
        epoch,
        written: 1,
        removed: 0,
    })
}

/// Runs `check` on `key`'s rows of `spaces` read without an epoch, so that a refusal writes
/// nothing; then takes a new epoch with the same read ([`Store::open_actor`], which fences a
/// running instance) and runs `check` again, since another writer may have come between.
/// Returns the epoch and what the second check found. The writing calls' two phases.
fn under_new_epoch<T>(
    store: &dyn Store,
    key: &ActorKey,
    spaces: &[Space],
    check: impl Fn(Vec<Row>) -> Result<T, AdminError>,
) -> Result<(u64, T), AdminError> {
    let mut rows = Vec::new();
    for &space in spaces {
        rows.extend(store.read(key, Some(space), 0..=u64::MAX)?);
    }
    check(rows)?;
    let loaded = store.open_actor(key, spaces)?;
    Ok((loaded.epoch, check(loaded.rows)?))
}

/// Deletes the record of `key`, as [`crate::Storage::delete`] does: every row of its record
/// in one commit, the sequence floor raised past every id it used. Its quarantined records
/// stay. Refused, writing nothing, when the store holds no record of `key`.
pub fn delete(store: &dyn Store, key: &ActorKey) -> Result<Changed, AdminError> {
    let record = record_rows(store, key)?;
    if record == 0 {
        return Err(AdminError::NoActor { key: key.clone() });
    }
    let epoch = delete_record(store, key)?;
    Ok(Changed {
        key: key.clone(),
        epoch,
        written: 0,
        removed: record,
    })
}

/// Takes a new epoch for `key` and removes its record in one commit; returns the epoch. What
/// [`crate::Storage::delete`] runs.
pub(crate) fn delete_record(store: &dyn Store, key: &ActorKey) -> Result<u64, StoreError> {
    // Reading the record also takes a new epoch, fencing a running instance at once.
    let loaded = store.open_actor(key, &Space::RECORD)?;
    let commit = ActorCommit::new(key.clone(), loaded.epoch)
        .clear_record()
        .raise_floor(sequence_floor(&loaded));
    store.commit(&[commit])?;
    Ok(loaded.epoch)
}

/// How many rows of its record (not its quarantine) `key` holds.
fn record_rows(store: &dyn Store, key: &ActorKey) -> Result<usize, StoreError> {
    Ok(store
        .read(key, None, 0..=u64::MAX)?
        .iter()
        .filter(|r| r.space != Space::QUARANTINE)
        .count())
}

/// A record moved aside by a load that could not decode it, as [`quarantined`] lists it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// The actor.
    pub key: ActorKey,
    /// The epoch of the instance that moved it aside: what [`restore`] takes.
    pub epoch: u64,
    /// Why it could not be decoded.
    pub reason: String,
    /// The rows it kept, as (space, id, stored bytes).
    pub rows: Vec<(Space, u64, Vec<u8>)>,
}

/// The quarantined records of `namespace` (every namespace when `None`), by key and epoch.
pub fn quarantined(
    store: &dyn Store,
    namespace: Option<&str>,
) -> Result<Vec<QuarantineEntry>, AdminError> {
    let keys: Vec<ActorKey> = match namespace {
        Some(ns) => {
            if !store.scan()?.iter().any(|(k, _)| k.namespace() == ns) {
                return Err(AdminError::NoNamespace {
                    namespace: ns.to_owned(),
                });
            }
            store
                .keys(ns, Space::QUARANTINE)?
                .into_iter()
                .map(|k| ActorKey::new(ns, k))
                .collect()
        }
        None => store.scan()?.into_iter().map(|(k, _)| k).collect(),
    };
    let mut out = Vec::new();
    for key in keys {
        for row in store.read(&key, Some(Space::QUARANTINE), 0..=u64::MAX)? {
            out.push(quarantine_row(&key, row)?);
        }
    }
    Ok(out)
}

/// Decodes one row of `key`'s quarantine; a row that does not decode is
/// [`AdminError::Damaged`].
pub fn quarantine_row(key: &ActorKey, row: Row) -> Result<QuarantineEntry, AdminError> {
    let body = QuarantineBody::decode(&row.bytes).map_err(|e| AdminError::Damaged {
        key: key.clone(),
        space: Space::QUARANTINE,
        id: row.id,
        reason: DecodeReason::Malformed {
            detail: format!("not a quarantined record: {e}"),
        },
    })?;
    let mut rows: Vec<(Space, u64, Vec<u8>)> = Vec::new();
    if let Some(s) = body.snapshot {
        rows.push((Space::SNAPSHOT, 0, s));
    }
    rows.extend(body.ops.into_iter().map(|(id, b)| (Space::OPS, id, b)));
    rows.extend(
        body.rows
            .into_iter()
            .map(|(space, id, b)| (Space::new(space), id, b)),
    );
    rows.sort_by_key(|r| (r.0, r.1));
    Ok(QuarantineEntry {
        key: key.clone(),
        epoch: row.id,
        reason: body.reason,
        rows,
    })
}

/// Puts the record that the instance of `epoch` quarantined back in place of `key`'s record,
/// and removes it from the quarantine, in one commit: the undo of a quarantine, byte for byte.
/// Only damaged records are quarantined, so a start that is still opted in to quarantine moves
/// a record that is still damaged aside again, and one that is not fails on it: restore a
/// record to inspect it in place, to export it, or after its bytes were repaired elsewhere.
///
/// Refused, writing nothing, when there is no such quarantined record
/// ([`AdminError::NoQuarantine`]) or when the actor has a record again
/// ([`AdminError::RecordExists`]: delete it first if it is to be replaced).
pub fn restore(store: &dyn Store, key: &ActorKey, epoch: u64) -> Result<Changed, AdminError> {
    let find = |rows: Vec<Row>| -> Result<QuarantineEntry, AdminError> {
        let held = rows.iter().filter(|r| r.space != Space::QUARANTINE).count();
        if held > 0 {
            return Err(AdminError::RecordExists {
                key: key.clone(),
                rows: held,
            });
        }
        match rows
            .into_iter()
            .find(|r| r.space == Space::QUARANTINE && r.id == epoch)
        {
            Some(row) => quarantine_row(key, row),
            None => Err(AdminError::NoQuarantine {
                key: key.clone(),
                epoch,
            }),
        }
    };
    let mut spaces = Space::RECORD.to_vec();
    spaces.push(Space::QUARANTINE);
    let (taken, entry) = under_new_epoch(store, key, &spaces, find)?;
    let mut commit = ActorCommit::new(key.clone(), taken).remove(Space::QUARANTINE, epoch);
    let written = entry.rows.len();
    for (space, id, bytes) in entry.rows {
        commit = commit.put(space, id, bytes);
    }
    store.commit(&[commit])?;
    Ok(Changed {
        key: key.clone(),
        epoch: taken,
        written,
        removed: 1,
    })
}

/// A record [`verify`] found bad.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// The actor.
    pub key: ActorKey,
    /// The record's space.
    pub space: Space,
    /// The record's row id.
    pub id: u64,
    /// What is wrong.
    pub reason: String,
}

/// What [`verify`] read and what it found.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Keys read.
    pub keys: usize,
    /// Rows read.
    pub rows: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Records that failed a check, in (key, space, id) order.
    pub bad: Vec<BadRecord>,
}

/// Reads every row of the store and checks it: every envelope's magic, format, lengths,
/// checksum and kind; that the kind belongs in the space it is stored in; that an operation's
/// or an event's sequence number is its row id; that every quarantined record decodes; and,
/// with `transforms`, that every transformed body opens (decompresses, and decrypts when the
/// keyring is given; an encrypted body without its key is checked by its checksum only).
///
/// `progress` is told (keys done, keys in all) after each key. The backend's own integrity
/// check is the store's open (redb verifies every page's checksum, SQLite runs its
/// `quick_check` and every row's checksum).
pub fn verify(
    store: &dyn Store,
    transforms: &Transforms,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<VerifyReport, StoreError> {
    let keys = store.scan()?;
    let total = keys.len();
    let mut report = VerifyReport::default();
    for (done, (key, _)) in keys.into_iter().enumerate() {
        report.keys += 1;
        for row in store.read(&key, None, 0..=u64::MAX)? {
            report.rows += 1;
            report.bytes += row.bytes.len() as u64;
            if let Err(reason) = check_row(&key, &row, transforms) {
                report.bad.push(BadRecord {
                    key: key.clone(),
                    space: row.space,
                    id: row.id,
                    reason,
                });
            }
        }
        progress(done + 1, total);
    }
    Ok(report)
}

/// The kinds a space may hold.
fn kinds_of(space: Space) -> Option<&'static [Kind]> {
    Some(match space {
        Space::SNAPSHOT => &[Kind::Snapshot, Kind::JournalHead],
        Space::OPS => &[
            Kind::Op,
            Kind::RetriedOp,
            Kind::WaitingOp,
            Kind::DeadOp,
            Kind::CountedDeadOp,
        ],
        Space::OUTBOX => &[Kind::Outgoing],
        Space::CHANNELS => &[Kind::Channel],
        Space::INBOX => &[Kind::Inbox],
        Space::REQUESTS => &[Kind::Request],
        Space::TIMERS => &[Kind::Timer],
        Space::JOURNAL => &[Kind::Event],
        Space::MAPS => &[Kind::MapEntry],
        Space::JOURNAL_SNAPSHOT => &[Kind::Snapshot],
        _ => return None,
    })
}

fn check_row(key: &ActorKey, row: &Row, transforms: &Transforms) -> Result<(), String> {
    if row.space == Space::QUARANTINE {
        return quarantine_row(key, row.clone())
            .map(drop)
            .map_err(|e| match e {
                AdminError::Damaged { reason, .. } => reason.to_string(),
                e => e.to_string(),
            });
    }
    let v = envelope::verify(&row.bytes, u32::MAX).map_err(|e| e.to_string())?;
    let Some(kinds) = kinds_of(row.space) else {
        return Err(format!("{} is not a space this build uses", row.space));
    };
    if !kinds.contains(&v.kind) {
        return Err(format!(
            "a {} record in the {} space",
            v.kind.name(),
            row.space
        ));
    }
    let numbered = matches!(row.space, Space::OPS | Space::JOURNAL);
    if numbered && v.header.sequence != row.id {
        return Err(format!(
            "the record says it is #{}, stored as #{}",
            v.header.sequence, row.id
        ));
    }
    if v.key_id().is_none() || transforms.keys.is_some() {
        // Opens the body and splits what the runtime keeps before an operation (attempts,
        // a retry's instant), as a load would.
        payload(key, row.id, &row.bytes, transforms).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Counts of one namespace, as [`stats`] gives them.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: String,
    /// Keys with a record.
    pub actors: usize,
    /// Keys with marks only (deleted, or quarantined with no record since).
    pub marks_only: usize,
    /// Rows of the records.
    pub rows: usize,
    /// Bytes of those rows.
    pub bytes: u64,
    /// Pending operations.
    pub pending: usize,
    /// Dead letters.
    pub dead: usize,
    /// Quarantined records.
    pub quarantined: usize,
    /// Rows that fail [`verify`]'s checks (an encrypted body is checked by its checksum only).
    pub damaged: usize,
}

/// Counts per namespace, in namespace order.
pub fn stats(store: &dyn Store) -> Result<Vec<NamespaceStats>, StoreError> {
    let mut out: BTreeMap<String, NamespaceStats> = BTreeMap::new();
    for (key, marks) in store.scan()? {
        let rows = store.read(&key, None, 0..=u64::MAX)?;
        let ns = key.namespace().to_owned();
        let s = ActorSummary::of(key, marks, &rows);
        let n = out.entry(ns.clone()).or_insert_with(|| NamespaceStats {
            namespace: ns,
            ..NamespaceStats::default()
        });
        if s.rows == 0 {
            n.marks_only += 1;
        } else {
            n.actors += 1;
        }
        n.rows += s.rows;
        n.bytes += s.bytes;
        n.pending += s.pending;
        n.dead += s.dead;
        n.quarantined += s.quarantined;
        n.damaged += s.damaged;
    }
    Ok(out.into_values().collect())
}

/// Replaces the state of the snapshot-mode actor `key` of type `A` with `state`, in one commit
/// under a new epoch (a running instance is fenced), keeping its pending operations and
/// everything else of its record: the edit an operator makes when a state must be corrected
/// by hand. The state is encoded in `A`'s current schema version, sealed with `transforms`.
///
/// Refused, writing nothing, when the actor has no state ([`AdminError::NoActor`]), when its
/// state is encrypted and `transforms` has no keyring ([`AdminError::NeedsKey`]), when it
/// is event-sourced (its state is its journal's: send it a message that emits the correcting
/// event instead), or when its stored state is of a newer schema version than `A`'s
/// ([`AdminError::Damaged`] with [`DecodeReason::UnknownSchema`]) or one `A` cannot decode (of
/// another shape, damaged: [`AdminError::Damaged`]): a build that cannot read the record may
/// not replace it.
pub fn replace_state<A: Persistent>(
    store: &dyn Store,
    key: &ActorKey,
    state: &A::State,
    transforms: &Transforms,
) -> Result<Changed, AdminError> {
    let check = |rows: Vec<Row>| -> Result<RecordHeader, AdminError> {
        let Some(row) = rows
            .into_iter()
            .find(|r| r.space == Space::SNAPSHOT && r.id == 0)
        else {
            return Err(AdminError::NoActor { key: key.clone() });
        };
        let damaged = |reason| AdminError::Damaged {
            key: key.clone(),
            space: Space::SNAPSHOT,
            id: 0,
            reason,
        };
        let header = inspect(&row.bytes).map_err(damaged)?;
        if header.kind != Kind::Snapshot as u8 {
            return Err(AdminError::NotEditable {
                key: key.clone(),
                reason: "it is event-sourced: its state is the fold of its journal; send it a \
                         message that emits the correcting event",
            });
        }
        // A sealed state is replaced by a sealed one: without the keyring, the new state
        // would be written in plain text, which a store that requires encryption refuses.
        if let (Some(key_id), None) = (header.encrypted, &transforms.keys) {
            return Err(AdminError::NeedsKey {
                key: key.clone(),
                space: Space::SNAPSHOT,
                id: 0,
                key_id,
            });
        }
        if header.schema > A::VERSION {
            return Err(damaged(DecodeReason::UnknownSchema {
                found: header.schema,
                expected: A::VERSION,
            }));
        }
        // A build that cannot read the state (another shape, no migration, damage) may not
        // replace it: the application's own build could be the one that reads it.
        let stored = payload(key, 0, &row.bytes, transforms).map_err(damaged)?;
        decode_state::<A>(&stored).map_err(damaged)?;
        Ok(header)
    };
    let value = envelope::to_payload(state).map_err(|source| AdminError::Encode {
        key: key.clone(),
        source,
    })?;
    let (epoch, old) = under_new_epoch(store, key, &[Space::SNAPSHOT], check)?;
    let head = envelope::Header {
        schema: A::VERSION,
        sequence: old.sequence,
        fingerprint: crate::shape::shape_fingerprint::<A::State>().unwrap_or(0),
    };
    let place = Place { key, id: 0 };
    let bytes = envelope::seal(Kind::Snapshot, head, epoch, &value, transforms, place);
    store.commit(&[ActorCommit::new(key.clone(), epoch).put(Space::SNAPSHOT, 0, bytes)])?;
    Ok(Changed {
        key: key.clone(),
        epoch,
        written: 1,
        removed: 0,
    })
}
