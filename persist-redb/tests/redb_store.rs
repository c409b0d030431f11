//! RedbStore against the `Store` contract: atomic, durable, fenced batches, and refusal of
//! files that are not ours.

use std::path::Path;
use std::sync::Arc;

use persist_core::{ActorCommit, ActorKey, Fence, Space, Store, StoreError};
use persist_redb::{FormatError, RedbStore};
use redb::{ReadableDatabase, TableDefinition};

fn key(namespace: &str, key: &str) -> Arc<ActorKey> {
    Arc::new(ActorKey::new(namespace, key))
}

fn commit(
    key: &Arc<ActorKey>,
    epoch: u64,
    snapshot: Option<&[u8]>,
    put_ops: &[(u64, &[u8])],
    remove_ops: &[u64],
) -> ActorCommit {
    let mut c = ActorCommit::new(key.clone(), epoch);
    if let Some(s) = snapshot {
        c = c.put(Space::SNAPSHOT, 0, s.to_vec());
    }
    for (s, b) in put_ops {
        c = c.put(Space::OPS, *s, b.to_vec());
    }
    for s in remove_ops {
        c = c.remove(Space::OPS, *s);
    }
    c
}

fn seqs(ops: &[(u64, Vec<u8>)]) -> Vec<u64> {
    ops.iter().map(|(s, _)| *s).collect()
}

fn format_error(e: &StoreError) -> Option<&FormatError> {
    match e {
        StoreError::Backend { source, .. } => source.downcast_ref(),
        _ => None,
    }
}

/// Opens `path`, expects a refusal, and checks the file's bytes did not change.
fn assert_refused_unchanged(path: &Path) -> StoreError {
    let before = std::fs::read(path).unwrap();
    let err = RedbStore::open(path).expect_err("a file that is not ours must be refused");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "a refused file must not be modified"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the file: {err}"
    );
    err
}

#[test]
fn committed_record_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let alice = key("account", "alice");
    {
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.name(), path.display().to_string());
        let loaded = store.open_actor(&alice, &Space::RECORD).unwrap();
        assert_eq!(
            (loaded.snapshot().map(<[u8]>::to_vec), loaded.ops()),
            (None, vec![])
        );
        store
            .commit(&[commit(
                &alice,
                loaded.epoch,
                Some(b"state"),
                &[(1, b"op1"), (2, b"op2")],
                &[],
            )])
            .unwrap();
        store.close().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let loaded = store.open_actor(&alice, &Space::RECORD).unwrap();
    assert_eq!(
        loaded.snapshot().map(<[u8]>::to_vec).as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(
        loaded.ops(),
        vec![(1, b"op1".to_vec()), (2, b"op2".to_vec())]
    );
}

#[test]
fn open_actor_takes_a_new_epoch_each_time_and_a_later_commit_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let bob = key("account", "bob");
    {
        let store = RedbStore::open(&path).unwrap();
        let epochs: Vec<u64> = (0..3)
            .map(|_| store.open_actor(&bob, &Space::RECORD).unwrap().epoch)
            .collect();
        assert_eq!(epochs, [1, 2, 3]);
        store
            .commit(&[commit(&bob, 3, Some(b"s"), &[], &[])])
            .unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.open_actor(&bob, &Space::RECORD).unwrap().epoch, 4);
}

#[test]
fn stale_epoch_commit_is_fenced_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (a, b) = (key("account", "a"), key("account", "b"));
    {
        let store = RedbStore::open(&path).unwrap();
        let old = store.open_actor(&a, &Space::RECORD).unwrap().epoch;
        let new = store.open_actor(&a, &Space::RECORD).unwrap().epoch;
        let b_epoch = store.open_actor(&b, &Space::RECORD).unwrap().epoch;
        let batch = [
            commit(&b, b_epoch, Some(b"b state"), &[(1, b"b op")], &[]),
            commit(&a, old, Some(b"stale"), &[(1, b"stale op")], &[]),
            commit(&a, new, Some(b"fresh"), &[(1, b"fresh op")], &[]),
        ];
        let err = store.commit(&batch).unwrap_err();
        let StoreError::Fenced(fences) = err else {
            panic!("expected Fenced, got {err}");
        };
        assert_eq!(
            fences,
            [Fence {
                index: 1,
                key: (*a).clone(),
                epoch: old,
                current: new,
            }]
        );
        // Nothing of the batch was written, not even its valid commits.
        for k in [&a, &b] {
            let loaded = store.open_actor(k, &Space::RECORD).unwrap();
            assert_eq!(
                (loaded.snapshot().map(<[u8]>::to_vec), loaded.ops()),
                (None, vec![]),
                "{k}"
            );
        }
    }
    let store = RedbStore::open(&path).unwrap();
    for k in [&a, &b] {
        let loaded = store.open_actor(k, &Space::RECORD).unwrap();
        assert_eq!(
            (loaded.snapshot().map(<[u8]>::to_vec), loaded.ops()),
            (None, vec![]),
            "{k}"
        );
    }
}

#[test]
fn removal_of_absent_ops_is_ignored() {
    let store = RedbStore::in_memory().unwrap();
    let k = key("account", "carol");
    let epoch = store.open_actor(&k, &Space::RECORD).unwrap().epoch;
    store
        .commit(&[commit(&k, epoch, None, &[(5, b"five")], &[])])
        .unwrap();
    store
        .commit(&[commit(&k, epoch, None, &[], &[1, 5, 99])])
        .unwrap();
    let loaded = store.open_actor(&k, &Space::RECORD).unwrap();
    assert_eq!(
        (loaded.snapshot().map(<[u8]>::to_vec), loaded.ops()),
        (None, vec![])
    );
}

#[test]
fn ops_come_back_in_sequence_order() {
    let store = RedbStore::in_memory().unwrap();
    let k = key("account", "dave");
    let epoch = store.open_actor(&k, &Space::RECORD).unwrap().epoch;
    store
        .commit(&[commit(
            &k,
            epoch,
            None,
            &[(10, b"ten"), (2, b"two"), (7, b"seven")],
            &[],
        )])
        .unwrap();
    store
        .commit(&[commit(
            &k,
            epoch,
            None,
            &[(u64::MAX, b"max"), (0, b"zero")],
            &[],
        )])
        .unwrap();
    let loaded = store.open_actor(&k, &Space::RECORD).unwrap();
    assert_eq!(seqs(&loaded.ops()), [0, 2, 7, 10, u64::MAX]);
    assert_eq!(loaded.ops()[1].1, b"two");
}

#[test]
fn ops_never_include_another_actors() {
    let store = RedbStore::in_memory().unwrap();
    // Keys that share prefixes, within and across namespaces.
    let keys = [
        key("ns", "a"),
        key("ns", "ab"),
        key("ns", ""),
        key("nsa", "b"),
        key("n", "sa"),
        key("other", "a"),
    ];
    let mut batch = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let epoch = store.open_actor(k, &Space::RECORD).unwrap().epoch;
        let tag = k.to_string().into_bytes();
        batch.push(commit(k, epoch, Some(&tag), &[(i as u64, &tag)], &[]));
    }
    store.commit(&batch).unwrap();
    for (i, k) in keys.iter().enumerate() {
        let loaded = store.open_actor(k, &Space::RECORD).unwrap();
        let tag = k.to_string().into_bytes();
        assert_eq!(
            loaded.snapshot().map(<[u8]>::to_vec).as_ref(),
            Some(&tag),
            "{k}"
        );
        assert_eq!(loaded.ops(), vec![(i as u64, tag)], "{k}");
    }
}

#[test]
fn one_actor_twice_in_a_batch_is_applied_in_order() {
    let store = RedbStore::in_memory().unwrap();
    let k = key("account", "erin");
    let epoch = store.open_actor(&k, &Space::RECORD).unwrap().epoch;
    store
        .commit(&[commit(&k, epoch, Some(b"v1"), &[(1, b"a"), (2, b"b")], &[])])
        .unwrap();
    store
        .commit(&[
            commit(&k, epoch, None, &[], &[1, 2]),
            commit(&k, epoch, Some(b"v2"), &[(2, b"b again"), (3, b"c")], &[]),
        ])
        .unwrap();
    let loaded = store.open_actor(&k, &Space::RECORD).unwrap();
    assert_eq!(
        loaded.snapshot().map(<[u8]>::to_vec).as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(
        loaded.ops(),
        vec![(2, b"b again".to_vec()), (3, b"c".to_vec())]
    );
}

#[test]
fn empty_batch_is_a_no_op() {
    let store = RedbStore::in_memory().unwrap();
    store.commit(&[]).unwrap();
}

#[test]
fn empty_file_is_refused_not_taken_for_a_new_store() {
    // A store file is never empty (the first create links a complete file into place), so an
    // empty one is a store that lost its bytes: making it a new, empty store would hide that.
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = assert_refused_unchanged(file.path());
    assert!(
        matches!(format_error(&err), Some(FormatError::EmptyFile)),
        "{err}"
    );
}

#[test]
fn second_open_of_an_open_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let first = RedbStore::open(&path).unwrap();
    let err = RedbStore::open(&path).expect_err("the file is held by the first store");
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // The first store is unharmed.
    let k = key("account", "gus");
    let epoch = first.open_actor(&k, &Space::RECORD).unwrap().epoch;
    first
        .commit(&[commit(&k, epoch, Some(b"s"), &[], &[])])
        .unwrap();
}

#[test]
fn foreign_redb_file_is_refused_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("balances"))
            .unwrap()
            .insert("alice", 10)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = assert_refused_unchanged(&path);
    assert!(
        matches!(format_error(&err), Some(FormatError::Foreign { tables }) if tables == &["balances"]),
        "{err}"
    );
    // The other program's data is still there.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn
        .open_table(TableDefinition::<&str, u64>::new("balances"))
        .unwrap();
    assert_eq!(
        redb::ReadableTable::get(&table, "alice")
            .unwrap()
            .unwrap()
            .value(),
        10
    );
}

#[test]
fn unknown_format_marker_is_refused_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, &[u8]>::new("ractor_persist.meta"))
            .unwrap()
            .insert("format", &b"ractor-persist/redb/2"[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let err = assert_refused_unchanged(&path);
    assert!(
        matches!(
            format_error(&err),
            Some(FormatError::UnknownFormat { found: Some(found), .. }) if found == "ractor-persist/redb/2"
        ),
        "{err}"
    );
}

#[test]
fn file_of_random_bytes_is_refused_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.bin");
    // A fixed pseudo-random pattern (xorshift), so a failure is reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let err = assert_refused_unchanged(&path);
    assert!(
        matches!(format_error(&err), Some(FormatError::NotRedb { .. })),
        "{err}"
    );
}

#[test]
fn damaged_store_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let k = key("account", "hal");
    {
        let store = RedbStore::open(&path).unwrap();
        let epoch = store.open_actor(&k, &Space::RECORD).unwrap().epoch;
        store
            .commit(&[commit(&k, epoch, Some(&[7; 5000]), &[(1, &[8; 100])], &[])])
            .unwrap();
    }
    // Overwrite every page after the header page with garbage.
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i as u8).wrapping_mul(31) ^ 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let result = RedbStore::open(&path).and_then(|store| store.open_actor(&k, &Space::RECORD));
    let err = result.expect_err("a damaged store must not load");
    assert!(
        matches!(err, StoreError::Corrupt { .. } | StoreError::Backend { .. }),
        "{err}"
    );
}

#[test]
fn store_left_open_by_a_crash_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let image = dir.path().join("crashed.redb");
    let k = key("account", "ivy");
    let store = RedbStore::open(&path).unwrap();
    let epoch = store.open_actor(&k, &Space::RECORD).unwrap().epoch;
    store
        .commit(&[commit(&k, epoch, Some(b"durable"), &[(1, b"op")], &[])])
        .unwrap();
    // An uncommitted epoch claim after the last durable commit.
    store.open_actor(&k, &Space::RECORD).unwrap();
    // The bytes a power loss would leave: the store was never closed.
    std::fs::copy(&path, &image).unwrap();
    drop(store);

    let store = RedbStore::open(&image).unwrap();
    let loaded = store.open_actor(&k, &Space::RECORD).unwrap();
    assert!(loaded.epoch > epoch);
    assert_eq!(
        loaded.snapshot().map(<[u8]>::to_vec).as_deref(),
        Some(&b"durable"[..])
    );
    assert_eq!(loaded.ops(), vec![(1, b"op".to_vec())]);
}
