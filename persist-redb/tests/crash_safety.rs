//! Regressions found by the crash tests (`tests/crash_*.rs` of the workspace): the first create
//! is atomic, and damage redb does not notice on its own is refused at open.

use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use persist_core::{ActorCommit, ActorKey, Space, Store, StoreError};
use persist_redb::redb::backends::FileBackend;
use persist_redb::redb::{BackendError, StorageBackend};
use persist_redb::{FormatError, RedbStore};

/// The real file, with every operation from number `fail_from` on failing.
#[derive(Debug)]
struct FailFrom {
    inner: FileBackend,
    ops: Arc<AtomicU64>,
    fail_from: u64,
}

impl FailFrom {
    fn check(&self) -> io::Result<()> {
        if self.ops.fetch_add(1, Ordering::SeqCst) >= self.fail_from {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
}

impl StorageBackend for FailFrom {
    fn len(&self) -> io::Result<u64> {
        self.check()?;
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.check()?;
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

fn open_failing_from(
    path: &std::path::Path,
    fail_from: u64,
) -> (Result<RedbStore, StoreError>, u64) {
    let ops = Arc::new(AtomicU64::new(0));
    let counter = ops.clone();
    let result = RedbStore::open_wrapped(path, move |inner| FailFrom {
        inner,
        ops: counter.clone(),
        fail_from,
    });
    (result, ops.load(Ordering::SeqCst))
}

#[test]
fn a_first_create_cut_at_any_step_leaves_no_file_or_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (store, total) = open_failing_from(&dir.path().join("dry.redb"), u64::MAX);
    store.unwrap();
    assert!(total > 10, "a create does some I/O: {total}");
    for n in 0..total {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let (result, _) = open_failing_from(&path, n);
        assert!(
            result.is_err(),
            "operation {n} failed, yet the open succeeded"
        );
        // Before the redb in-place create was replaced, a cut here left a file of zeros that
        // every later open refused as "not a redb database".
        let store = RedbStore::open(&path)
            .unwrap_or_else(|e| panic!("after a create cut at operation {n}: {e}"));
        let k = ActorKey::new("t", "k");
        let loaded = store.open_actor(&k, &Space::RECORD).unwrap();
        assert_eq!(loaded.rows, vec![], "cut at {n}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != "store.redb")
            .collect();
        assert!(leftovers.is_empty(), "cut at {n} left {leftovers:?}");
    }
}

#[test]
fn a_leftover_temporary_file_of_a_cut_create_does_not_stop_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    std::fs::write(dir.path().join(".store.redb.create-1-0"), vec![0; 8192]).unwrap();
    RedbStore::open(&path).unwrap();
}

#[test]
fn a_flipped_bit_in_a_key_is_refused_at_open_not_a_missing_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let k = Arc::new(ActorKey::new("account", "alice-with-a-long-key"));
    {
        let store = RedbStore::open(&path).unwrap();
        let epoch = store.open_actor(&k, &Space::RECORD).unwrap().epoch;
        store
            .commit(&[ActorCommit::new(k.clone(), epoch).put(
                Space::SNAPSHOT,
                0,
                b"alice's state".to_vec(),
            )])
            .unwrap();
        store.close().unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"alice-with-a-long-key";
    let hits: Vec<usize> = (0..bytes.len() - needle.len())
        .filter(|&i| &bytes[i..i + needle.len()] == needle)
        .collect();
    assert!(!hits.is_empty(), "the key is stored as it is");
    // Flip a bit in every stored copy of the key: each table holding it now holds another key.
    for i in hits {
        bytes[i] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();
    // redb does not verify a page when it reads it, and our envelope does not cover the key:
    // without the integrity check on open, the store opened and alice had no record at all.
    let err = RedbStore::open(&path)
        .and_then(|s| s.open_actor(&k, &Space::RECORD))
        .expect_err("a damaged key must not read as a missing record");
    assert!(
        matches!(err, StoreError::Corrupt { .. } | StoreError::Backend { .. }),
        "{err}"
    );
    assert!(!matches!(
        &err,
        StoreError::Backend { source, .. } if source.downcast_ref::<FormatError>().is_some()
    ));
}
