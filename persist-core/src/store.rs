//! The storage seam: what a backend must do, and nothing more.
//!
//! A backend stores, per actor key, *rows* in a few named [`Space`]s (the snapshot, the
//! pending operations, quarantined records, and whatever the runtime adds later), each row an
//! id and opaque bytes, plus two *marks*: the writer epoch and the sequence floor. Rows are
//! written and removed only inside an actor's commit, fenced by its epoch; they are read whole
//! or by a range of ids. Batching, ordering, retries, decoding, compression and encryption
//! live in persist-core, so a new feature is a new space that no backend has to know about.
//!
//! The whole contract is checked by the conformance kit (`persist_core::testkit`, behind the
//! `testkit` feature), which every backend of the workspace runs.

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::error::StoreError;
use crate::key::ActorKey;

/// The largest row a store must hold: the envelope's payload cap plus room for its header and
/// its transforms.
pub const MAX_ROW_LEN: usize = crate::envelope::MAX_PAYLOAD_LEN as usize + 4096;

/// A named space of an actor's rows.
///
/// A space is a small number that backends store as it is; persist-core gives it a meaning.
/// The spaces this build uses are the associated constants; the others are free for the
/// features to come (and for tests of a backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Space(u8);

impl Space {
    /// The actor's snapshot: one row, id 0, the latest committed state's envelope.
    pub const SNAPSHOT: Space = Space(0);
    /// Pending operations, by sequence number.
    pub const OPS: Space = Space(1);
    /// Records moved aside because they could not be decoded, by the epoch that moved them.
    /// Deleting an actor keeps them.
    pub const QUARANTINE: Space = Space(2);
    /// Messages to other persistent actors not yet acknowledged (the outbox), by the id the
    /// sender handed out.
    pub const OUTBOX: Space = Space(3);
    /// The sender's side of each channel it ever sent on: the destination and the last
    /// sequence number used, by channel id.
    pub const CHANNELS: Space = Space(4);
    /// The receiver's side of each channel (the inbox): the sender, its channel and the
    /// highest sequence applied, one row per sender.
    pub const INBOX: Space = Space(5);
    /// Replies to idempotent requests, kept for a repeat of the request, oldest first.
    pub const REQUESTS: Space = Space(6);
    /// Durable timers, by a row id the actor hands out: name, due time and payload.
    pub const TIMERS: Space = Space(7);
    /// The event journal of an event-sourced actor, by event sequence number (from 1).
    pub const JOURNAL: Space = Space(8);
    /// The entries of an actor's durable maps, one row each, by a row id the actor hands out.
    pub const MAPS: Space = Space(9);
    /// The state snapshot of an event-sourced actor: one row, id 0, whose envelope names the
    /// event it covers. (Its [`Space::SNAPSHOT`] row is the journal's head.)
    pub const JOURNAL_SNAPSHOT: Space = Space(10);

    /// The spaces that make up an actor's record: what a load reads and a delete or a
    /// quarantine removes. (Quarantined rows are evidence, not record.)
    pub const RECORD: [Space; 10] = [
        Space::SNAPSHOT,
        Space::OPS,
        Space::OUTBOX,
        Space::CHANNELS,
        Space::INBOX,
        Space::REQUESTS,
        Space::TIMERS,
        Space::JOURNAL,
        Space::MAPS,
        Space::JOURNAL_SNAPSHOT,
    ];

    /// The spaces an actor's start reads whole: its record but the journal, of which a start
    /// reads only the events after the snapshot.
    pub const LOADED: [Space; 9] = [
        Space::SNAPSHOT,
        Space::OPS,
        Space::OUTBOX,
        Space::CHANNELS,
        Space::INBOX,
        Space::REQUESTS,
        Space::TIMERS,
        Space::MAPS,
        Space::JOURNAL_SNAPSHOT,
    ];

    /// The space numbered `id`.
    pub const fn new(id: u8) -> Space {
        Space(id)
    }

    /// The space's number, as stored.
    pub const fn id(self) -> u8 {
        self.0
    }

    /// The name of a space this build uses, or `None`.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("snapshot"),
            1 => Some("ops"),
            2 => Some("quarantine"),
            3 => Some("outbox"),
            4 => Some("channels"),
            5 => Some("inbox"),
            6 => Some("requests"),
            7 => Some("timers"),
            8 => Some("journal"),
            9 => Some("maps"),
            10 => Some("journal snapshot"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "space {}", self.0),
        }
    }
}

/// One stored row: its space, its id within the space, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// The space the row lives in.
    pub space: Space,
    /// The row's id within its space (an operation's sequence number, for example).
    pub id: u64,
    /// The row's bytes, opaque to the store.
    pub bytes: Vec<u8>,
}

/// A key's marks: numbers a store keeps beside its rows, which never go down and which
/// outlive every row (a delete or a quarantine keeps them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Marks {
    /// The last writer epoch handed out (0: never opened).
    pub epoch: u64,
    /// The sequence floor: no operation of the key takes a number below it (0: none).
    pub floor: u64,
}

/// One actor's rows, read in one transaction together with a fresh writer epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The writer epoch taken by this load; every later commit of this instance carries it.
    pub epoch: u64,
    /// The key's sequence floor: no operation of the key may take a number below it (0 when
    /// none was stored). It outlives the record: delete and quarantine keep it.
    pub floor: u64,
    /// The rows of the spaces asked for, by ascending (space, id).
    pub rows: Vec<Row>,
}

impl Loaded {
    /// The rows of `space`, by ascending id.
    pub fn space(&self, space: Space) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.rows
            .iter()
            .filter(move |r| r.space == space)
            .map(|r| (r.id, r.bytes.as_slice()))
    }

    /// The snapshot envelope, if the actor was ever committed.
    pub fn snapshot(&self) -> Option<&[u8]> {
        self.space(Space::SNAPSHOT)
            .find(|(id, _)| *id == 0)
            .map(|(_, b)| b)
    }

    /// The pending operation envelopes, by ascending sequence number.
    pub fn ops(&self) -> Vec<(u64, Vec<u8>)> {
        self.space(Space::OPS)
            .map(|(s, b)| (s, b.to_vec()))
            .collect()
    }
}

/// One change to an actor's rows, inside its commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowWrite {
    /// Inserts the row, or replaces the one with the same space and id.
    Put {
        /// The row's space.
        space: Space,
        /// The row's id.
        id: u64,
        /// The row's bytes.
        bytes: Vec<u8>,
    },
    /// Removes every row of `space` whose id is in `first..=last` (absent ones are ignored).
    Delete {
        /// The space.
        space: Space,
        /// The first id removed.
        first: u64,
        /// The last id removed.
        last: u64,
    },
}

/// What one message cycle of one actor writes.
///
/// Writes are applied in order, so a `Delete` followed by a `Put` of the same id leaves the
/// row put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorCommit {
    /// The actor written.
    pub key: Arc<ActorKey>,
    /// The writer epoch of the instance that produced this commit; checked before anything is
    /// written.
    pub epoch: u64,
    /// The row changes, applied in order.
    pub writes: Vec<RowWrite>,
    /// Raises the key's marks to at least these, in the same transaction (0 leaves a mark as
    /// it is; a mark never goes down). The runtime raises the floor ahead of the ids it hands
    /// out; an import also restores the epoch.
    pub raise: Marks,
}

impl ActorCommit {
    /// A commit of `key` at `epoch` that changes nothing yet.
    pub fn new(key: impl Into<Arc<ActorKey>>, epoch: u64) -> Self {
        ActorCommit {
            key: key.into(),
            epoch,
            writes: Vec::new(),
            raise: Marks::default(),
        }
    }

    /// Adds a put of row `id` of `space`.
    pub fn put(mut self, space: Space, id: u64, bytes: Vec<u8>) -> Self {
        self.writes.push(RowWrite::Put { space, id, bytes });
        self
    }

    /// Adds a removal of row `id` of `space`.
    pub fn remove(mut self, space: Space, id: u64) -> Self {
        self.writes.push(RowWrite::Delete {
            space,
            first: id,
            last: id,
        });
        self
    }

    /// Adds a removal of every row of `space`.
    pub fn clear(mut self, space: Space) -> Self {
        self.writes.push(RowWrite::Delete {
            space,
            first: 0,
            last: u64::MAX,
        });
        self
    }

    /// Adds a removal of every row of the actor's record ([`Space::RECORD`]): what a delete
    /// and a quarantine remove.
    pub fn clear_record(mut self) -> Self {
        for space in Space::RECORD {
            self = self.clear(space);
        }
        self
    }

    /// Raises the key's sequence floor to at least `floor`.
    pub fn raise_floor(mut self, floor: u64) -> Self {
        self.raise.floor = self.raise.floor.max(floor);
        self
    }

    /// Bytes this commit writes, for batch limits.
    pub fn byte_len(&self) -> usize {
        self.writes
            .iter()
            .map(|w| match w {
                RowWrite::Put { bytes, .. } => bytes.len() + 9,
                RowWrite::Delete { .. } => 17,
            })
            .sum::<usize>()
            + if self.raise == Marks::default() {
                0
            } else {
                16
            }
    }
}

/// A commit refused because a newer instance of the same actor took a later epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// Position of the refused commit in the batch.
    pub index: usize,
    /// The actor whose commit was refused.
    pub key: ActorKey,
    /// The epoch the commit carried.
    pub epoch: u64,
    /// The epoch the store holds now.
    pub current: u64,
}

/// A storage backend.
///
/// Methods are synchronous and called by one thread at a time per [`crate::Storage`]: its
/// committer thread, or an actor writing its own commit on a tokio worker while the store is
/// idle (see [`crate::StorageConfig::inline_when_idle`]).
///
/// Per key a store keeps rows (in [`Space`]s) and [`Marks`] (the writer epoch and the
/// sequence floor). Marks never go down and are never removed: a key's epochs and its
/// operation ids never repeat, whatever happened to its rows.
///
/// The contract, in full (the conformance kit checks each point):
/// - [`Store::commit`] writes all of its batch or none of it, and is durable when it returns
///   `Ok`. If any commit's epoch differs from the stored one, nothing is written and
///   [`StoreError::Fenced`] lists every stale commit by its index (the runtime then writes
///   the others again without them).
/// - [`Store::open_actor`] takes the next epoch and reads the floor and the rows of the
///   spaces asked for, in one transaction, after every commit that returned.
/// - Rows come back by ascending (space, id); ids are compared as unsigned numbers.
/// - Keys are any UTF-8 (namespace and key alike, empty included), rows any bytes up to
///   [`MAX_ROW_LEN`].
pub trait Store: Send + Sync + 'static {
    /// A short name for errors, such as the file path.
    fn name(&self) -> &str;

    /// Atomically takes the next writer epoch for `key` (stored epoch + 1) and reads its
    /// floor and every row of `spaces`.
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError>;

    /// Writes every commit of `batch` in one atomic, durable transaction.
    ///
    /// Before writing, each commit's epoch is checked against the stored one; if any is stale,
    /// nothing is written and [`StoreError::Fenced`] lists every stale commit.
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError>;

    /// The rows of `key` in `space` with ids in `ids`, by ascending id; `space` `None` reads
    /// every space, by ascending (space, id). Takes no epoch.
    ///
    /// This and the two methods below serve the admin calls (list, quarantined, export); a
    /// store that only runs actors may leave them to their default, which fails with
    /// [`StoreError::Unsupported`].
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        let _ = (key, space, ids);
        Err(self.unsupported("read"))
    }

    /// The keys of `namespace` with at least one row in `space`, in ascending order.
    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        let _ = (namespace, space);
        Err(self.unsupported("keys"))
    }

    /// Every key the store holds anything of (a row or a mark), in every namespace, in
    /// ascending order, with its marks. For export.
    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        Err(self.unsupported("scan"))
    }

    /// The longest actor key (namespace and key together, in bytes) this backend takes, if it
    /// has a limit; `None` (the default) for none. The registry ([`crate::Entities`]) refuses
    /// longer keys before activating anything.
    fn max_key_len(&self) -> Option<usize> {
        None
    }

    /// The error of an operation this backend does not implement.
    fn unsupported(&self, operation: &'static str) -> StoreError {
        StoreError::Unsupported {
            store: self.name().to_owned(),
            operation,
        }
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        (**self).open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        (**self).commit(batch)
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        (**self).read(key, space, ids)
    }
    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        (**self).keys(namespace, space)
    }
    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        (**self).scan()
    }
    fn max_key_len(&self) -> Option<usize> {
        (**self).max_key_len()
    }
}

/// Checks every commit's epoch with `current` and returns the stale ones, for backends.
pub fn check_epochs(
    batch: &[ActorCommit],
    mut current: impl FnMut(&ActorKey) -> Result<u64, StoreError>,
) -> Result<Vec<Fence>, StoreError> {
    let mut fences = Vec::new();
    for (index, c) in batch.iter().enumerate() {
        let now = current(&c.key)?;
        if now != c.epoch {
            fences.push(Fence {
                index,
                key: (*c.key).clone(),
                epoch: c.epoch,
                current: now,
            });
        }
    }
    Ok(fences)
}

/// The next epoch after `current`, or the error of an exhausted one, for backends.
pub fn next_epoch(store: &str, key: &ActorKey, current: u64) -> Result<u64, StoreError> {
    current.checked_add(1).ok_or_else(|| StoreError::Corrupt {
        store: store.to_owned(),
        detail: format!("the writer epoch of `{key}` is exhausted ({current})"),
    })
}
