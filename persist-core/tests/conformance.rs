//! The conformance kit on the in-memory store, and on stores broken on purpose: the kit must
//! pass the first and fail each of the others.

use std::ops::RangeInclusive;

use persist_core::testkit;
use persist_core::{
    ActorCommit, ActorKey, Loaded, Marks, MemoryStore, Row, RowWrite, Space, Store, StoreError,
};

persist_core::store_conformance!(memory, MemoryStore::new);

/// How a broken store breaks the contract.
#[derive(Clone, Copy, Debug)]
enum Bug {
    /// Writes every commit whatever its epoch.
    IgnoresEpochs,
    /// Writes commit by commit, each in its own transaction: a stale one is refused after the
    /// ones before it were written (half a batch).
    HalfBatch,
    /// Lowers a mark when told a lower value.
    LowersMarks,
    /// Ignores the range of a delete and removes the whole space.
    DeletesTooMuch,
    /// Reads every space on a load, asked for or not.
    LoadsEverySpace,
    /// Forgets the floor when every row of a key is removed.
    FloorGoesWithTheRows,
}

struct Broken {
    inner: MemoryStore,
    bug: Bug,
}

impl Store for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        if let Bug::LoadsEverySpace = self.bug {
            let mut l = self.inner.open_actor(key, spaces)?;
            l.rows = self.inner.read(key, None, 0..=u64::MAX)?;
            return Ok(l);
        }
        self.inner.open_actor(key, spaces)
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        match self.bug {
            Bug::IgnoresEpochs => {
                let current = self.inner.scan()?;
                let batch: Vec<ActorCommit> = batch
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        c.epoch = current
                            .iter()
                            .find(|(k, _)| *k == *c.key)
                            .map_or(0, |(_, m)| m.epoch);
                        c
                    })
                    .collect();
                self.inner.commit(&batch)
            }
            Bug::HalfBatch => {
                let mut fences = Vec::new();
                for (i, c) in batch.iter().enumerate() {
                    if let Err(StoreError::Fenced(f)) = self.inner.commit(std::slice::from_ref(c)) {
                        fences.extend(f.into_iter().map(|mut f| {
                            f.index = i;
                            f
                        }));
                    }
                }
                if fences.is_empty() {
                    Ok(())
                } else {
                    Err(StoreError::Fenced(fences))
                }
            }
            Bug::LowersMarks => {
                self.inner.commit(batch)?;
                // Set the floor to the last value given, lower or not.
                for c in batch.iter().filter(|c| c.raise.floor > 0) {
                    let marks = self.marks(&c.key)?;
                    if c.raise.floor < marks.floor {
                        self.inner.force_floor(&c.key, c.raise.floor);
                    }
                }
                Ok(())
            }
            Bug::DeletesTooMuch => {
                let batch: Vec<ActorCommit> = batch
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        for w in &mut c.writes {
                            if let RowWrite::Delete { first, last, .. } = w {
                                (*first, *last) = (0, u64::MAX);
                            }
                        }
                        c
                    })
                    .collect();
                self.inner.commit(&batch)
            }
            Bug::FloorGoesWithTheRows => {
                self.inner.commit(batch)?;
                for c in batch {
                    if self.inner.read(&c.key, None, 0..=u64::MAX)?.is_empty() {
                        self.inner.force_floor(&c.key, 0);
                    }
                }
                Ok(())
            }
            Bug::LoadsEverySpace => self.inner.commit(batch),
        }
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.inner.read(key, space, ids)
    }

    fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
        self.inner.keys(namespace, space)
    }

    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
        self.inner.scan()
    }
}

impl Broken {
    fn marks(&self, key: &ActorKey) -> Result<Marks, StoreError> {
        Ok(self
            .inner
            .scan()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or(Marks::default(), |(_, m)| m))
    }
}

#[test]
fn every_broken_store_fails_the_kit() {
    for bug in [
        Bug::IgnoresEpochs,
        Bug::HalfBatch,
        Bug::LowersMarks,
        Bug::DeletesTooMuch,
        Bug::LoadsEverySpace,
        Bug::FloorGoesWithTheRows,
    ] {
        let results = testkit::run(|| Broken {
            inner: MemoryStore::new(),
            bug,
        });
        let failed: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect();
        assert!(!failed.is_empty(), "the kit passed a store that {bug:?}");
        eprintln!("kit: a store that {bug:?} fails {failed:?}");
    }
}

#[test]
fn the_kit_passes_the_memory_store_and_says_which_check_failed_otherwise() {
    testkit::check(MemoryStore::new);
    let panic = std::panic::catch_unwind(|| {
        testkit::check(|| Broken {
            inner: MemoryStore::new(),
            bug: Bug::HalfBatch,
        })
    })
    .expect_err("a broken store fails the kit");
    let text = panic.downcast_ref::<String>().expect("a message");
    assert!(
        text.contains("a_stale_epoch_writes_nothing_of_the_batch"),
        "{text}"
    );
}

#[test]
fn the_checks_of_the_macro_are_the_checks_of_the_kit() {
    // The macro lists the checks by name; a check added to CHECKS but not to the macro
    // would silently not run in the per-check form.
    let source = include_str!("../src/testkit.rs");
    let macro_body = &source[source.find("macro_rules! store_conformance").unwrap()..];
    let macro_body = &macro_body[..macro_body.find("(@tests $make:expr").unwrap()];
    for (name, _) in testkit::CHECKS {
        assert!(
            macro_body.contains(name),
            "{name} is not in store_conformance!"
        );
    }
}
