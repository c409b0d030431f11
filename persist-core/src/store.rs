//! The storage seam: what a backend must do, and nothing more.
//!
//! A backend stores opaque records (the runtime's envelopes) and one writer epoch per actor.
//! Batching, ordering, retries and decoding live in persist-core so every backend gets them.

use std::sync::Arc;

use crate::error::StoreError;
use crate::key::ActorKey;

/// One actor's stored record, read in one transaction together with a fresh writer epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The writer epoch taken by this load; every later commit of this instance carries it.
    pub epoch: u64,
    /// The key's sequence floor: no operation of the key may take a number below it (0 when
    /// none was stored). It outlives the record: delete and quarantine keep it.
    pub floor: u64,
    /// The snapshot envelope, if the actor was ever committed.
    pub snapshot: Option<Vec<u8>>,
    /// The pending operation envelopes, by ascending sequence number.
    pub ops: Vec<(u64, Vec<u8>)>,
}

/// What one message cycle of one actor writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorCommit {
    /// The actor written.
    pub key: Arc<ActorKey>,
    /// The writer epoch of the instance that produced this commit.
    pub epoch: u64,
    /// The new snapshot envelope, or `None` to keep the stored one.
    pub snapshot: Option<Vec<u8>>,
    /// Operation envelopes to insert, by sequence number.
    pub put_ops: Vec<(u64, Vec<u8>)>,
    /// Sequence numbers of operations to delete (absent ones are ignored).
    pub remove_ops: Vec<u64>,
    /// When `Some`, raises the key's sequence floor to this value (the next sequence number
    /// the actor will use) in the same transaction. A store keeps the highest floor it was
    /// given, through delete and quarantine, so that no operation id of a key ever repeats.
    pub floor: Option<u64>,
}

impl ActorCommit {
    /// Bytes this commit writes, for batch limits.
    pub fn byte_len(&self) -> usize {
        self.snapshot.as_ref().map_or(0, Vec::len)
            + self.put_ops.iter().map(|(_, b)| b.len() + 8).sum::<usize>()
            + self.remove_ops.len() * 8
            + self.floor.map_or(0, |_| 8)
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
/// Methods are synchronous and called from one dedicated thread per [`crate::Storage`], never
/// from a tokio worker. Implementations must be atomic: `commit` writes all of `batch` or none
/// of it, and is durable when it returns `Ok`.
///
/// Per key a store keeps, besides the record (snapshot and pending operations), a writer
/// epoch and a sequence floor. Neither is removed by [`Store::delete_actor`] or
/// [`Store::quarantine`]: a key's epochs and its operation ids never repeat, whatever
/// happened to its record.
pub trait Store: Send + Sync + 'static {
    /// A short name for errors, such as the file path.
    fn name(&self) -> &str;

    /// Atomically takes the next writer epoch for `key` and reads its record.
    fn open_actor(&self, key: &ActorKey) -> Result<Loaded, StoreError>;

    /// Writes every commit of `batch` in one atomic, durable transaction.
    ///
    /// Before writing, each commit's epoch is checked against the stored one; if any is stale,
    /// nothing is written and [`StoreError::Fenced`] lists every stale commit.
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError>;

    /// Deletes the snapshot and pending operations of `key` in one durable transaction and
    /// takes a new epoch for it, so that a running instance can no longer write. The key's
    /// sequence floor stays, raised to at least `floor` in the same transaction.
    fn delete_actor(&self, key: &ActorKey, floor: u64) -> Result<(), StoreError> {
        let _ = (key, floor);
        Err(self.unsupported("delete_actor"))
    }

    /// The keys in `namespace` that hold a snapshot, in order.
    fn list_keys(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        let _ = namespace;
        Err(self.unsupported("list_keys"))
    }

    /// Moves the record of `key` aside in one durable transaction: stores `blob` (the
    /// original bytes and the reason, encoded by the runtime) in a quarantine table under
    /// (`key`, `epoch`), deletes the snapshot and pending operations, and raises the key's
    /// sequence floor to at least `floor`. Refused with [`StoreError::Fenced`] unless `epoch`
    /// is the key's current epoch.
    fn quarantine(
        &self,
        key: &ActorKey,
        epoch: u64,
        blob: &[u8],
        floor: u64,
    ) -> Result<(), StoreError> {
        let _ = (key, epoch, blob, floor);
        Err(self.unsupported("quarantine"))
    }

    /// The quarantined records of `namespace`: (key, epoch, blob), in order.
    fn list_quarantined(&self, namespace: &str) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let _ = namespace;
        Err(self.unsupported("list_quarantined"))
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
    fn open_actor(&self, key: &ActorKey) -> Result<Loaded, StoreError> {
        (**self).open_actor(key)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        (**self).commit(batch)
    }
    fn delete_actor(&self, key: &ActorKey, floor: u64) -> Result<(), StoreError> {
        (**self).delete_actor(key, floor)
    }
    fn list_keys(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        (**self).list_keys(namespace)
    }
    fn quarantine(
        &self,
        key: &ActorKey,
        epoch: u64,
        blob: &[u8],
        floor: u64,
    ) -> Result<(), StoreError> {
        (**self).quarantine(key, epoch, blob, floor)
    }
    fn list_quarantined(&self, namespace: &str) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        (**self).list_quarantined(namespace)
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
