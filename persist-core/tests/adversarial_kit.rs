//! Adversarial review of the storage seam's in-memory store and of export/import, at the level
//! of the `Store` trait (no runtime, no backend but `MemoryStore`).
//!
//! Each test asserts a promise of `docs/durability.md` ("The storage seam", "Export and
//! import") or of the `Store` contract in `persist-core/src/store.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use persist_core::transfer::{self, ImportMode, TransferError};
use persist_core::{ActorCommit, ActorKey, Marks, MemoryStore, Row, RowWrite, Space, Store};

fn k(ns: &str, key: &str) -> ActorKey {
    ActorKey::new(ns, key)
}

fn epoch(s: &dyn Store, key: &ActorKey) -> u64 {
    s.open_actor(key, &[]).unwrap().epoch
}

fn marks(s: &dyn Store, key: &ActorKey) -> Marks {
    s.scan()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, m)| m)
        .unwrap_or_default()
}

fn rows(s: &dyn Store, key: &ActorKey) -> Vec<Row> {
    s.read(key, None, 0..=u64::MAX).unwrap()
}

fn export_bytes(s: &dyn Store) -> Vec<u8> {
    let mut out = Vec::new();
    transfer::export(s, &mut out).expect("export");
    out
}

// ---------------------------------------------------------------------------------------------
// A hand-made export stream, with every checksum right, so that only the field under test lies.

struct Stream {
    bytes: Vec<u8>,
}

impl Stream {
    fn new() -> Self {
        let mut bytes = b"RPEXPORT".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        Stream { bytes }
    }

    fn record(&mut self, body: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(body);
        self.bytes
            .extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        self
    }

    fn actor_raw(&mut self, ns: &[u8], key: &[u8], epoch: u64, floor: u64) -> &mut Self {
        let mut body = vec![b'A'];
        body.extend_from_slice(&(ns.len() as u32).to_le_bytes());
        body.extend_from_slice(ns);
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(&epoch.to_le_bytes());
        body.extend_from_slice(&floor.to_le_bytes());
        self.record(&body)
    }

    fn actor(&mut self, ns: &str, key: &str, epoch: u64, floor: u64) -> &mut Self {
        self.actor_raw(ns.as_bytes(), key.as_bytes(), epoch, floor)
    }

    fn row(&mut self, space: u8, id: u64, bytes: &[u8]) -> &mut Self {
        let mut body = vec![b'R', space];
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(bytes);
        self.record(&body)
    }

    /// A row record whose length field claims `len` bytes, followed by no bytes at all.
    fn row_claiming(&mut self, space: u8, id: u64, len: u32) -> &mut Self {
        self.bytes.push(b'R');
        self.bytes.push(space);
        self.bytes.extend_from_slice(&id.to_le_bytes());
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self
    }

    fn end(&mut self, actors: u64, rows: u64) -> Vec<u8> {
        self.bytes.push(b'E');
        self.bytes.extend_from_slice(&actors.to_le_bytes());
        self.bytes.extend_from_slice(&rows.to_le_bytes());
        let whole = crc32c::crc32c(&self.bytes);
        self.bytes.extend_from_slice(&whole.to_le_bytes());
        std::mem::take(&mut self.bytes)
    }
}

fn import_into_empty(stream: &[u8]) -> (MemoryStore, Result<(), TransferError>) {
    let target = MemoryStore::new();
    let r = transfer::import(&target, &mut &stream[..], ImportMode::IntoEmpty).map(|_| ());
    (target, r)
}

fn assert_refused_and_nothing_written(what: &str, stream: &[u8]) -> TransferError {
    let (target, r) = import_into_empty(stream);
    let err = r.expect_err(what);
    assert!(
        matches!(
            err,
            TransferError::Corrupt { .. } | TransferError::Truncated { .. }
        ),
        "{what}: a typed stream error, got {err}"
    );
    assert!(
        target.scan().unwrap().is_empty(),
        "{what}: something written"
    );
    err
}

// ---------------------------------------------------------------------------------------------
// The memory store and empty ranges.

/// `RowWrite::Delete` "removes every row of `space` whose id is in `first..=last` (absent ones
/// are ignored)": an empty range (`first > last`, as a computed `a..=b-1` gives) removes
/// nothing. It must not panic inside the store.
#[test]
fn memory_a_delete_of_an_empty_range_removes_nothing_and_does_not_panic() {
    let s = MemoryStore::new();
    let key = k("t", "empty-range");
    let e = epoch(&s, &key);
    s.commit(&[ActorCommit::new(key.clone(), e)
        .put(Space::OPS, 4, b"four".to_vec())
        .put(Space::new(7), 4, b"seven".to_vec())])
        .unwrap();
    for space in [Space::OPS, Space::new(7)] {
        let mut c = ActorCommit::new(key.clone(), e);
        c.writes.push(RowWrite::Delete {
            space,
            first: 5,
            last: 3,
        });
        let r = catch_unwind(AssertUnwindSafe(|| s.commit(&[c])));
        assert!(
            matches!(r, Ok(Ok(()))),
            "an empty range on {space} must be a no-op, got {}",
            match r {
                Ok(Err(e)) => e.to_string(),
                Err(_) => "a panic".to_owned(),
                Ok(Ok(())) => unreachable!(),
            }
        );
    }
    assert_eq!(rows(&s, &key).len(), 2, "nothing removed");
}

/// `read(key, space, ids)` with an empty range reads nothing; it must not panic.
#[test]
fn memory_a_read_of_an_empty_range_is_empty_and_does_not_panic() {
    let s = MemoryStore::new();
    let key = k("t", "empty-read");
    let e = epoch(&s, &key);
    s.commit(&[ActorCommit::new(key.clone(), e).put(Space::OPS, 4, b"four".to_vec())])
        .unwrap();
    #[allow(clippy::reversed_empty_ranges)]
    let r = catch_unwind(AssertUnwindSafe(|| s.read(&key, Some(Space::OPS), 9..=2)));
    assert!(
        matches!(&r, Ok(Ok(v)) if v.is_empty()),
        "a read of an empty range must be empty (it panicked: {})",
        r.is_err()
    );
}

/// `commit` "writes all of its batch or none of it". A batch whose second commit carries a
/// write the memory store cannot apply (here, an empty delete range that panics inside
/// `BTreeMap::range`) must not leave the first commit written: the `Storage` committer catches
/// the panic (`StoreError::Corrupt`), so the store is left with half a batch.
#[test]
fn memory_a_batch_is_all_or_nothing_even_when_a_later_write_fails() {
    let s = MemoryStore::new();
    let (a, b) = (k("t", "half-a"), k("t", "half-b"));
    let (ea, eb) = (epoch(&s, &a), epoch(&s, &b));
    let mut second = ActorCommit::new(b.clone(), eb);
    second.writes.push(RowWrite::Delete {
        space: Space::OPS,
        first: 10,
        last: 1,
    });
    let batch = [
        ActorCommit::new(a.clone(), ea).put(Space::SNAPSHOT, 0, b"first".to_vec()),
        second,
    ];
    let r = catch_unwind(AssertUnwindSafe(|| s.commit(&batch)));
    let written = !rows(&s, &a).is_empty();
    let ok = matches!(r, Ok(Ok(())));
    assert!(
        ok || !written,
        "the batch failed ({}) but its first commit was written: half a batch",
        if r.is_err() { "panic" } else { "error" }
    );
}

/// The memory store's `keys` deduplicates keys whose rows interleave spaces and namespaces
/// that are prefixes of each other, in bytewise order.
#[test]
fn memory_keys_lists_each_key_once_whatever_its_spaces() {
    let s = MemoryStore::new();
    let keys = [
        k("a", "x"),
        k("a", "x\0"),
        k("a", ""),
        k("a\0", "x"),
        k("ab", "x"),
        k("", "x"),
    ];
    let mut batch = Vec::new();
    for key in &keys {
        let e = epoch(&s, key);
        let mut c = ActorCommit::new(key.clone(), e);
        for space in [0u8, 1, 3, 4, 200] {
            for id in [0, 7, u64::MAX] {
                // The snapshot space holds id 0 only.
                if space != 0 || id == 0 {
                    c = c.put(Space::new(space), id, vec![space]);
                }
            }
        }
        batch.push(c);
    }
    s.commit(&batch).unwrap();
    for space in [0u8, 1, 3, 4, 200] {
        assert_eq!(
            s.keys("a", Space::new(space)).unwrap(),
            vec!["", "x", "x\0"],
            "space {space}"
        );
        assert_eq!(s.keys("a\0", Space::new(space)).unwrap(), vec!["x"]);
        assert!(s.keys("a", Space::new(5)).unwrap().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Import checks the whole stream before it writes anything.

/// A stream whose records are each valid but whose whole lies: the counts, a duplicated actor,
/// rows out of order or duplicated, a row before any actor, a key that is not UTF-8, an unknown
/// tag. Each is a typed error and nothing is written.
#[test]
fn a_stream_of_valid_records_that_lie_together_is_refused_whole() {
    let good = Stream::new()
        .actor("ns", "a", 3, 10)
        .row(0, 0, b"snap")
        .row(1, 5, b"op")
        .end(1, 2);
    let (target, r) = import_into_empty(&good);
    r.expect("the honest stream imports");
    assert_eq!(rows(&target, &k("ns", "a")).len(), 2);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an end record counting fewer rows",
            Stream::new()
                .actor("ns", "a", 3, 10)
                .row(0, 0, b"snap")
                .row(1, 5, b"op")
                .end(1, 1),
        ),
        (
            "an end record counting more actors",
            Stream::new().actor("ns", "a", 3, 10).end(2, 0),
        ),
        (
            "an actor twice",
            Stream::new()
                .actor("ns", "a", 3, 10)
                .actor("ns", "a", 4, 10)
                .end(2, 0),
        ),
        (
            "actors out of order",
            Stream::new()
                .actor("ns", "b", 3, 10)
                .actor("ns", "a", 3, 10)
                .end(2, 0),
        ),
        (
            "rows out of order",
            Stream::new()
                .actor("ns", "a", 3, 10)
                .row(1, 5, b"op")
                .row(0, 0, b"snap")
                .end(1, 2),
        ),
        (
            "ids out of order within a space",
            Stream::new()
                .actor("ns", "a", 3, 10)
                .row(1, u64::MAX, b"op")
                .row(1, 5, b"op")
                .end(1, 2),
        ),
        (
            "a row twice",
            Stream::new()
                .actor("ns", "a", 3, 10)
                .row(1, 5, b"op")
                .row(1, 5, b"other")
                .end(1, 2),
        ),
        (
            "a row before any actor",
            Stream::new()
                .row(0, 0, b"snap")
                .actor("ns", "a", 3, 10)
                .end(1, 1),
        ),
        (
            "a namespace that is not UTF-8",
            Stream::new().actor_raw(b"\xff\xfe", b"a", 1, 1).end(1, 0),
        ),
        (
            "an unknown tag",
            Stream::new()
                .actor("ns", "a", 3, 10)
                .record(b"Zjunk")
                .end(1, 0),
        ),
        ("no end record", {
            let mut s = Stream::new();
            s.actor("ns", "a", 3, 10);
            s.bytes.clone()
        }),
    ];
    for (what, stream) in cases {
        assert_refused_and_nothing_written(what, &stream);
    }
}

/// A length field of 4 GiB (a row) or of 4 GiB (a key) is a typed error before any allocation
/// of that size: the reader caps a row at `MAX_ROW_LEN` and a key at 1 MiB. (A giant claim
/// must not become a 4 GiB `Vec`; this test would abort with an allocation failure or be
/// killed if it did.)
#[test]
fn a_giant_length_in_a_stream_is_a_typed_error_not_an_allocation() {
    let row = Stream::new()
        .actor("ns", "a", 1, 1)
        .row_claiming(1, 0, u32::MAX)
        .bytes
        .clone();
    let err = assert_refused_and_nothing_written("a 4 GiB row", &row);
    assert!(
        matches!(&err, TransferError::Corrupt { detail, .. } if detail.contains("4294967295")),
        "{err}"
    );
    let mut key = Stream::new();
    key.bytes.push(b'A');
    key.bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = assert_refused_and_nothing_written("a 4 GiB namespace", &key.bytes);
    assert!(matches!(err, TransferError::Corrupt { .. }), "{err}");
}

/// "Keys with marks and no row (a deleted actor) are exported too": the converse must hold for
/// import, or export, import, export is not the same stream. An actor record with no row and
/// no mark is accepted by import (and counted), yet nothing of it is stored, so the next
/// export drops it: the stream should be refused as one no export writes.
#[test]
fn an_actor_with_nothing_to_store_is_refused_not_silently_dropped() {
    let stream = Stream::new()
        .actor("ns", "ghost", 0, 0)
        .actor("ns", "real", 2, 0)
        .row(0, 0, b"snap")
        .end(2, 1);
    let (target, r) = import_into_empty(&stream);
    match r {
        Err(TransferError::Corrupt { .. }) => {
            assert!(
                target.scan().unwrap().is_empty(),
                "refused, nothing written"
            )
        }
        Err(e) => panic!("an unexpected error: {e}"),
        Ok(()) => assert_eq!(
            export_bytes(&target),
            stream,
            "imported (2 actors counted), but the store keeps only {:?}: export, import, \
             export is not the same stream",
            target.scan().unwrap()
        ),
    }
}

/// Export writes every key a store holds, whatever its length; import must read back what
/// export wrote. A key longer than import's 1 MiB cap exports fine and then cannot be imported:
/// a store that cannot be moved, found out only at the import.
#[test]
fn every_key_an_export_writes_can_be_imported() {
    let s = MemoryStore::new();
    let long = "k".repeat((1 << 20) + 1);
    let key = k("ns", &long);
    let e = epoch(&s, &key);
    s.commit(&[ActorCommit::new(key.clone(), e).put(Space::SNAPSHOT, 0, b"x".to_vec())])
        .unwrap();
    let mut out = Vec::new();
    match transfer::export(&s, &mut out) {
        // Refusing at export time, with a typed error, is fine too.
        Err(e) => eprintln!("export refused: {e}"),
        Ok(_) => {
            let (target, r) = import_into_empty(&out);
            r.unwrap_or_else(|e| panic!("export wrote a stream import refuses: {e}"));
            assert_eq!(rows(&target, &key).len(), 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Import modes.

/// `IntoEmpty` refuses "unless the store holds nothing at all (no row, no mark)": a store
/// whose only content is an epoch taken by a load is not empty.
#[test]
fn a_store_with_only_marks_is_not_empty() {
    let stream = Stream::new()
        .actor("ns", "a", 1, 0)
        .row(0, 0, b"x")
        .end(1, 1);
    let target = MemoryStore::new();
    epoch(&target, &k("other", "b"));
    let err = transfer::import(&target, &mut &stream[..], ImportMode::IntoEmpty).unwrap_err();
    assert!(
        matches!(err, TransferError::NotEmpty { keys: 1, .. }),
        "{err}"
    );
    assert!(rows(&target, &k("ns", "a")).is_empty());
}

/// `Replace`: "for each key of the stream, its stored rows are replaced by the stream's, and
/// its marks are raised to the stream's (never lowered). Keys not in the stream are left
/// alone." Rows of every space go, quarantine and spaces 3..255 included; marks stay at their
/// maximum.
#[test]
fn replace_replaces_rows_of_every_space_and_never_lowers_a_mark() {
    let target = MemoryStore::new();
    let (a, other) = (k("ns", "a"), k("ns", "b"));
    let e = epoch(&target, &a);
    let eo = epoch(&target, &other);
    target
        .commit(&[
            ActorCommit::new(a.clone(), e)
                .put(Space::SNAPSHOT, 0, b"old".to_vec())
                .put(Space::OPS, 3, b"old op".to_vec())
                .put(Space::QUARANTINE, 1, b"old evidence".to_vec())
                .put(Space::new(42), 9, b"old inbox".to_vec())
                .put(Space::new(255), u64::MAX, b"old".to_vec())
                .raise_floor(5000),
            ActorCommit::new(other.clone(), eo).put(Space::SNAPSHOT, 0, b"b".to_vec()),
        ])
        .unwrap();
    for _ in 0..5 {
        epoch(&target, &a);
    }
    let before = marks(&target, &a);
    assert_eq!(
        before,
        Marks {
            epoch: 6,
            floor: 5000
        }
    );
    let stream = Stream::new()
        .actor("ns", "a", 2, 100)
        .row(0, 0, b"new")
        .row(1, 7, b"new op")
        .end(1, 2);
    transfer::import(&target, &mut &stream[..], ImportMode::Replace).unwrap();
    assert_eq!(
        rows(&target, &a),
        vec![
            Row {
                space: Space::SNAPSHOT,
                id: 0,
                bytes: b"new".to_vec()
            },
            Row {
                space: Space::OPS,
                id: 7,
                bytes: b"new op".to_vec()
            },
        ],
        "the stream's rows, and only them"
    );
    let after = marks(&target, &a);
    assert!(
        after.epoch >= before.epoch && after.floor >= before.floor,
        "a mark went down: {before:?} -> {after:?}"
    );
    assert_eq!(rows(&target, &other).len(), 1, "another key untouched");
}

/// The import's own doc: "each imported key's epoch is raised to at least the exported one, so
/// an instance running there would be fenced". An instance that took its epoch before a
/// `Replace` import must not be able to commit over the imported rows afterwards, whatever the
/// stream's epoch: otherwise the running instance (which still holds the old state in memory)
/// silently overwrites what was just imported, the two-writers case P7 rules out.
/// `Storage::delete` fences by taking a new epoch; `Replace` only raises to the stream's,
/// which may be lower than the running instance's.
#[test]
fn replace_fences_an_instance_that_opened_before_it() {
    let target = MemoryStore::new();
    let a = k("ns", "a");
    for _ in 0..3 {
        epoch(&target, &a);
    }
    let live = epoch(&target, &a); // 4: the instance running on the target
    target
        .commit(&[ActorCommit::new(a.clone(), live).put(Space::SNAPSHOT, 0, b"live".to_vec())])
        .unwrap();
    // The stream was exported from a store where the key's epoch is lower.
    let stream = Stream::new()
        .actor("ns", "a", 2, 0)
        .row(0, 0, b"imported")
        .end(1, 1);
    transfer::import(&target, &mut &stream[..], ImportMode::Replace).unwrap();
    let late = target.commit(&[ActorCommit::new(a.clone(), live).put(
        Space::SNAPSHOT,
        0,
        b"stale".to_vec(),
    )]);
    assert!(
        late.is_err(),
        "the instance that opened before the import wrote over it: the snapshot is now {:?}",
        String::from_utf8_lossy(&target.snapshot(&a).unwrap())
    );
    assert_eq!(target.snapshot(&a).unwrap(), b"imported");
}

/// Keys with NUL, empty strings, namespaces that are prefixes of each other; rows in spaces
/// 3..=255 and ids at 0, 2^63 and `u64::MAX`: export, import into an empty store, export again
/// gives the same bytes, and every row and mark is back.
#[test]
fn odd_keys_spaces_and_ids_round_trip_byte_for_byte() {
    let s = MemoryStore::new();
    let keys = [
        k("", ""),
        k("", "\0"),
        k("a", ""),
        k("a", "\0"),
        k("a\0", ""),
        k("ab", "x"),
        k("ü", "🦀"),
    ];
    let mut batch = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let e = epoch(&s, key);
        let mut c = ActorCommit::new(key.clone(), e).raise_floor(u64::MAX - i as u64);
        for space in [0u8, 1, 2, 3, 128, 255] {
            for id in [0, 1 << 63, u64::MAX] {
                if space == 0 && id != 0 {
                    continue;
                }
                c = c.put(Space::new(space), id, vec![space, i as u8]);
            }
        }
        batch.push(c);
    }
    // A key with marks only.
    let deleted = k("a", "deleted");
    let e = epoch(&s, &deleted);
    batch.push(ActorCommit::new(deleted.clone(), e).raise_floor(77));
    s.commit(&batch).unwrap();
    let a = export_bytes(&s);
    let copy = MemoryStore::new();
    transfer::import(&copy, &mut &a[..], ImportMode::IntoEmpty).unwrap();
    assert_eq!(export_bytes(&copy), a);
    assert_eq!(copy.scan().unwrap(), s.scan().unwrap());
    for key in &keys {
        assert_eq!(rows(&copy, key), rows(&s, key), "{key:?}");
    }
    assert_eq!(
        marks(&copy, &deleted),
        Marks {
            epoch: 1,
            floor: 77
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Holes in the conformance kit: stores that break the contract and still pass.

/// A store whose `read(key, None, ids)` ignores `ids` (returns every id of every space),
/// while `read(key, Some(space), ids)` honours them. The contract: "the rows of `key` in
/// `space` with ids in `ids` ...; `space` `None` reads every space". The kit reads every space
/// only with the full range, so it cannot tell.
struct IgnoresRangeOfEverySpace(MemoryStore);

impl Store for IgnoresRangeOfEverySpace {
    fn name(&self) -> &str {
        "ignores-range"
    }
    fn open_actor(
        &self,
        key: &ActorKey,
        spaces: &[Space],
    ) -> Result<persist_core::Loaded, persist_core::StoreError> {
        self.0.open_actor(key, spaces)
    }
    fn commit(&self, batch: &[ActorCommit]) -> Result<(), persist_core::StoreError> {
        self.0.commit(batch)
    }
    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<Row>, persist_core::StoreError> {
        match space {
            None => self.0.read(key, None, 0..=u64::MAX),
            Some(_) => self.0.read(key, space, ids),
        }
    }
    fn keys(&self, ns: &str, space: Space) -> Result<Vec<String>, persist_core::StoreError> {
        self.0.keys(ns, space)
    }
    fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, persist_core::StoreError> {
        self.0.scan()
    }
}

#[test]
fn the_kit_fails_a_store_whose_read_of_every_space_ignores_the_range() {
    let failed: Vec<_> =
        persist_core::testkit::run(|| IgnoresRangeOfEverySpace(MemoryStore::new()))
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(name, _)| name)
            .collect();
    assert!(
        !failed.is_empty(),
        "the kit passed a store whose read(key, None, 5..=6) returns ids outside 5..=6"
    );
}

/// A stream with a snapshot row of an id other than 0 (which no backend holds) is refused by
/// the reader, for every backend alike, and writes nothing.
#[test]
fn a_stream_with_a_snapshot_row_other_than_id_0_is_refused() {
    let source = MemoryStore::new();
    let key = ActorKey::new("t", "k");
    let e = source.open_actor(&key, &[]).unwrap().epoch;
    source
        .commit(&[ActorCommit::new(key.clone(), e).put(Space::new(9), 7, b"s".to_vec())])
        .unwrap();
    let mut stream = Vec::new();
    persist_core::export(&source, &mut stream).unwrap();
    // The row record: tag 'R', space 9, id 7. Make it the snapshot space and re-seal both
    // checksums, as a hand-made stream would be.
    let at = stream
        .windows(10)
        .position(|w| w[0] == b'R' && w[1] == 9 && w[2] == 7)
        .unwrap();
    stream[at + 1] = 0;
    let record_len = 1 + 1 + 8 + 4 + 1;
    let crc = crc32c::crc32c(&stream[at..at + record_len]);
    stream[at + record_len..at + record_len + 4].copy_from_slice(&crc.to_le_bytes());
    let end = stream.len() - 4;
    let whole = crc32c::crc32c(&stream[..end]);
    stream[end..].copy_from_slice(&whole.to_le_bytes());
    let target = MemoryStore::new();
    let err = transfer::import(&target, &mut &stream[..], ImportMode::IntoEmpty).unwrap_err();
    assert!(err.to_string().contains("snapshot row with id 7"), "{err}");
    assert!(target.scan().unwrap().is_empty());
}
