//! [`MemoryStore`]: the in-memory backend, for tests and examples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::StoreError;
use crate::key::ActorKey;
use crate::store::{ActorCommit, Fence, Loaded, Store, check_epochs};

#[derive(Default)]
struct Tables {
    quarantine: BTreeMap<(ActorKey, u64), Vec<u8>>,
    snapshots: BTreeMap<ActorKey, Vec<u8>>,
    ops: BTreeMap<ActorKey, BTreeMap<u64, Vec<u8>>>,
    epochs: BTreeMap<ActorKey, u64>,
    /// Sequence floors; like epochs, never removed.
    floors: BTreeMap<ActorKey, u64>,
}

impl Tables {
    fn raise_floor(&mut self, key: &ActorKey, floor: u64) {
        let f = self.floors.entry(key.clone()).or_default();
        *f = (*f).max(floor);
    }
}

/// A store in memory. Clones share the same data, so a test can keep one clone to look at
/// (or damage) what a [`crate::Storage`] wrote, and open a new `Storage` on it as a
/// "restart".
#[derive(Clone, Default)]
pub struct MemoryStore {
    tables: Arc<Mutex<Tables>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // No code path panics while holding the lock half-way through a change.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored snapshot envelope of `key`.
    pub fn snapshot(&self, key: &ActorKey) -> Option<Vec<u8>> {
        self.tables().snapshots.get(key).cloned()
    }

    /// The stored pending operation envelopes of `key`, by sequence number.
    pub fn ops(&self, key: &ActorKey) -> Vec<(u64, Vec<u8>)> {
        self.tables()
            .ops
            .get(key)
            .map(|m| m.iter().map(|(s, b)| (*s, b.clone())).collect())
            .unwrap_or_default()
    }

    /// Replaces the snapshot bytes of `key`, bypassing every check (to test damage).
    pub fn put_raw_snapshot(&self, key: &ActorKey, bytes: Vec<u8>) {
        self.tables().snapshots.insert(key.clone(), bytes);
    }

    /// Replaces one pending operation's bytes, bypassing every check (to test damage).
    pub fn put_raw_op(&self, key: &ActorKey, seq: u64, bytes: Vec<u8>) {
        self.tables()
            .ops
            .entry(key.clone())
            .or_default()
            .insert(seq, bytes);
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &str {
        "memory"
    }

    fn open_actor(&self, key: &ActorKey) -> Result<Loaded, StoreError> {
        let mut t = self.tables();
        let epoch = t.epochs.get(key).copied().unwrap_or(0) + 1;
        t.epochs.insert(key.clone(), epoch);
        Ok(Loaded {
            epoch,
            floor: t.floors.get(key).copied().unwrap_or(0),
            snapshot: t.snapshots.get(key).cloned(),
            ops: t
                .ops
                .get(key)
                .map(|m| m.iter().map(|(s, b)| (*s, b.clone())).collect())
                .unwrap_or_default(),
        })
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        let mut t = self.tables();
        let fences = check_epochs(batch, |k| Ok(t.epochs.get(k).copied().unwrap_or(0)))?;
        if !fences.is_empty() {
            return Err(StoreError::Fenced(fences));
        }
        // Nothing below can fail, so the batch is applied whole.
        let next = &mut *t;
        for c in batch {
            if let Some(s) = &c.snapshot {
                next.snapshots.insert((*c.key).clone(), s.clone());
            }
            let ops = next.ops.entry((*c.key).clone()).or_default();
            for (seq, bytes) in &c.put_ops {
                ops.insert(*seq, bytes.clone());
            }
            for seq in &c.remove_ops {
                ops.remove(seq);
            }
            if ops.is_empty() {
                next.ops.remove(&*c.key);
            }
            if let Some(floor) = c.floor {
                next.raise_floor(&c.key, floor);
            }
        }
        Ok(())
    }

    fn delete_actor(&self, key: &ActorKey, floor: u64) -> Result<(), StoreError> {
        let mut t = self.tables();
        t.snapshots.remove(key);
        t.ops.remove(key);
        t.raise_floor(key, floor);
        *t.epochs.entry(key.clone()).or_default() += 1;
        Ok(())
    }

    fn list_keys(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tables()
            .snapshots
            .keys()
            .filter(|k| k.namespace() == namespace)
            .map(|k| k.key().to_owned())
            .collect())
    }

    fn quarantine(
        &self,
        key: &ActorKey,
        epoch: u64,
        blob: &[u8],
        floor: u64,
    ) -> Result<(), StoreError> {
        let mut t = self.tables();
        let current = t.epochs.get(key).copied().unwrap_or(0);
        if current != epoch {
            return Err(StoreError::Fenced(vec![Fence {
                index: 0,
                key: key.clone(),
                epoch,
                current,
            }]));
        }
        t.quarantine.insert((key.clone(), epoch), blob.to_vec());
        t.snapshots.remove(key);
        t.ops.remove(key);
        t.raise_floor(key, floor);
        Ok(())
    }

    fn list_quarantined(&self, namespace: &str) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        Ok(self
            .tables()
            .quarantine
            .iter()
            .filter(|((k, _), _)| k.namespace() == namespace)
            .map(|((k, e), b)| (k.key().to_owned(), *e, b.clone()))
            .collect())
    }
}
