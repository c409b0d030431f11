//! [`MemoryStore`]: the in-memory backend, for tests and examples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::StoreError;
use crate::key::ActorKey;
use std::ops::RangeInclusive;

use crate::store::{
    ActorCommit, Loaded, Marks, Row, RowWrite, Space, Store, check_epochs, next_epoch,
};

#[derive(Default)]
struct Tables {
    /// Every row, by (key, space, id).
    rows: BTreeMap<(ActorKey, Space, u64), Vec<u8>>,
    /// Epochs and floors; never removed.
    marks: BTreeMap<ActorKey, Marks>,
}

impl Tables {
    fn marks(&self, key: &ActorKey) -> Marks {
        self.marks.get(key).copied().unwrap_or_default()
    }

    fn range(
        &self,
        key: &ActorKey,
        space: Space,
        ids: RangeInclusive<u64>,
    ) -> impl Iterator<Item = (&(ActorKey, Space, u64), &Vec<u8>)> + '_ {
        // A reversed range holds nothing (BTreeMap::range would panic on it).
        let (first, last) = (*ids.start(), *ids.end());
        let bounds =
            (first <= last).then(|| ((key.clone(), space, first), (key.clone(), space, last)));
        bounds
            .into_iter()
            .flat_map(move |(lo, hi)| self.rows.range(lo..=hi))
    }

    fn read(&self, key: &ActorKey, spaces: &[Space], ids: RangeInclusive<u64>) -> Vec<Row> {
        let mut spaces = spaces.to_vec();
        spaces.sort();
        spaces.dedup();
        spaces
            .into_iter()
            .flat_map(|space| {
                self.range(key, space, ids.clone())
                    .map(|((_, space, id), b)| Row {
                        space: *space,
                        id: *id,
                        bytes: b.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
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
        self.tables()
            .rows
            .get(&(key.clone(), Space::SNAPSHOT, 0))
            .cloned()
    }

    /// The stored pending operation envelopes of `key`, by sequence number.
    pub fn ops(&self, key: &ActorKey) -> Vec<(u64, Vec<u8>)> {
        self.tables()
            .range(key, Space::OPS, 0..=u64::MAX)
            .map(|((_, _, s), b)| (*s, b.clone()))
            .collect()
    }

    /// Replaces the snapshot bytes of `key`, bypassing every check (to test damage).
    pub fn put_raw_snapshot(&self, key: &ActorKey, bytes: Vec<u8>) {
        self.tables()
            .rows
            .insert((key.clone(), Space::SNAPSHOT, 0), bytes);
    }

    /// Sets the sequence floor of `key`, bypassing the rule that a floor never goes down (to
    /// test that the conformance kit catches a store that breaks it).
    pub fn force_floor(&self, key: &ActorKey, floor: u64) {
        self.tables().marks.entry(key.clone()).or_default().floor = floor;
    }

    /// Replaces one pending operation's bytes, bypassing every check (to test damage).
    pub fn put_raw_op(&self, key: &ActorKey, seq: u64, bytes: Vec<u8>) {
        self.tables()
            .rows
            .insert((key.clone(), Space::OPS, seq), bytes);
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &str {
        "memory"
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        let mut t = self.tables();
        let marks = t.marks(key);
        let epoch = next_epoch(self.name(), key, marks.epoch)?;
        t.marks.entry(key.clone()).or_default().epoch = epoch;
        Ok(Loaded {
            epoch,
            floor: marks.floor,
            rows: t.read(key, spaces, 0..=u64::MAX),
        })
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        let mut t = self.tables();
        let fences = check_epochs(batch, |k| Ok(t.marks(k).epoch))?;
        if !fences.is_empty() {
            return Err(StoreError::Fenced(fences));
        }
        let odd_snapshot = batch
            .iter()
            .flat_map(|c| &c.writes)
            .any(|w| matches!(w, RowWrite::Put { space: Space::SNAPSHOT, id, .. } if *id != 0));
        if odd_snapshot {
            return Err(self.unsupported("a snapshot row with an id other than 0"));
        }
        // Nothing below can fail, so the batch is applied whole.
        for c in batch {
            for w in &c.writes {
                match w {
                    RowWrite::Put { space, id, bytes } => {
                        t.rows
                            .insert(((*c.key).clone(), *space, *id), bytes.clone());
                    }
                    RowWrite::Delete { space, first, last } => {
                        let doomed: Vec<_> = t
                            .range(&c.key, *space, *first..=*last)
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            t.rows.remove(&k);
                        }
                    }
                }
            }
            if c.raise != Marks::default() {
                let m = t.marks.entry((*c.key).clone()).or_default();
                m.epoch = m.epoch.max(c.raise.epoch);
                m.floor = m.floor.max(c.raise.floor);
            }
        }
        Ok(())
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        let t = self.tables();
        Ok(match space {
            Some(space) => t.read(key, &[space], ids),
            None => {
                let mut rows: Vec<Row> = t
                    .rows
                    .iter()
                    .filter(|((k, _, id), _)| k == key && ids.contains(id))
                    .map(|((_, space, id), b)| Row {
                        space: *space,
                        id: *id,
                        bytes: b.clone(),
                    })
                    .collect();
                rows.sort();
                rows
            }
        })
    }

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        let t = self.tables();
        let mut keys: Vec<String> = t
            .rows
            .keys()
            .filter(|(k, s, _)| *s == space && k.namespace() == namespace)
            .map(|(k, _, _)| k.key().to_owned())
            .collect();
        keys.dedup();
        Ok(keys)
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        let t = self.tables();
        let mut all: BTreeMap<ActorKey, Marks> = t.marks.clone();
        for (k, _, _) in t.rows.keys() {
            all.entry(k.clone()).or_default();
        }
        Ok(all.into_iter().collect())
    }
}
