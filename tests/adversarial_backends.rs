//! Adversarial review of the storage seam on redb, export/import through a running `Storage`,
//! and the record transforms (compression, encryption) through the runtime.
//!
//! Each test asserts a promise of `docs/durability.md` ("The storage seam", "Compression and
//! encryption at rest", "Export and import", "Fencing and ownership") or of the `Store`
//! contract in `persist-core/src/store.rs`.

#[macro_use]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{Faults, Ledger, LedgerMsg, decode_error, spawn_ledger};
use ractor::{Actor, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, DecodeReason, ImportMode, Keyring, MemoryStore, Outcome, Pending,
    Persistent, PersistentActor, RedbStore, Row, RowWrite, Space, SpawnPersistent, Start, Storage,
    StorageConfig, Store, StoreError, TransferError, Transforms, Tx, export, import,
};

// ---------------------------------------------------------------------------------------------
// The largest single allocation made by this thread while tracking is on (a giant length must
// be a typed error, never a giant allocation).

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, LARGEST.with(|l| l.get()))
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// A small actor whose state is text, so a state can be made compressible or secret.

#[derive(Clone, Default, Persistent)]
#[persistent(name = "memo")]
struct Memo;

enum MemoMsg {
    Set(String, RpcReplyPort<()>),
    Get(RpcReplyPort<String>),
    Push(String, RpcReplyPort<()>),
}

impl PersistentActor for Memo {
    type Msg = MemoMsg;
    type State = String;
    type Op = String;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<String, ractor::ActorProcessingErr> {
        Ok(String::new())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: MemoMsg,
        state: &mut String,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            MemoMsg::Set(text, reply) => {
                *state = text;
                tx.reply(reply, ());
            }
            MemoMsg::Get(reply) => tx.reply(reply, state.clone()),
            MemoMsg::Push(op, reply) => {
                tx.push(op)?;
                tx.reply(reply, ());
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        _: &Pending<String>,
        _: &String,
    ) -> Result<Outcome, ractor::ActorProcessingErr> {
        Ok(Outcome::KeepUntilConfirmed)
    }
}

fn memo(key: &str) -> ActorKey {
    ActorKey::new("memo", key)
}

fn with(store: &MemoryStore, transforms: Transforms) -> Storage {
    Storage::with_config(store.clone(), StorageConfig::with_transforms(transforms))
}

async fn spawn_memo(storage: &Storage, key: &str) -> ActorRef<MemoMsg> {
    Actor::spawn(None, Memo, Start::new(storage, key, ()))
        .await
        .expect("spawn the memo")
        .0
}

/// Writes `text` as the state of memo `key` (and pushes `ops`), then stops.
async fn write_memo(
    store: &MemoryStore,
    transforms: Transforms,
    key: &str,
    text: &str,
    ops: &[&str],
) {
    let storage = with(store, transforms);
    let a = spawn_memo(&storage, key).await;
    call!(a, MemoMsg::Set, text.to_owned()).unwrap();
    for op in ops {
        call!(a, MemoMsg::Push, (*op).to_owned()).unwrap();
    }
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

/// Spawns memo `key` with quarantine on, under `transforms`: its state, or the decode error;
/// and what was quarantined.
async fn open_with_quarantine(
    store: &MemoryStore,
    transforms: Transforms,
    key: &str,
) -> (Result<String, DecodeReason>, usize) {
    let storage = with(store, transforms);
    let start = Start::new(&storage, key, ()).quarantine_undecodable();
    let result = match Actor::spawn(None, Memo, start).await {
        Ok((a, _)) => {
            let s = call!(a, MemoMsg::Get).unwrap();
            a.stop_and_wait(None, None).await.unwrap();
            Ok(s)
        }
        Err(e) => Err(decode_error(e).reason),
    };
    let quarantined = storage.quarantined("memo").await.unwrap().len();
    storage.close().await.unwrap();
    (result, quarantined)
}

/// CRC-32C, bit by bit, to re-seal a record after changing a byte on purpose.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Re-seals the checksum of a format 2 record (bytes 0..36 and 40..).
fn fix_v2_checksum(record: &mut [u8]) {
    let crc = crc32c(&[&record[..36], &record[40..]].concat());
    record[36..40].copy_from_slice(&crc.to_le_bytes());
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn export_bytes(store: &dyn Store) -> Vec<u8> {
    let mut out = Vec::new();
    export(store, &mut out).expect("export");
    out
}

fn epoch(s: &dyn Store, key: &ActorKey) -> u64 {
    s.open_actor(key, &[]).unwrap().epoch
}

fn ids(rows: &[Row]) -> Vec<(u8, u64)> {
    rows.iter().map(|r| (r.space.id(), r.id)).collect()
}

// ---------------------------------------------------------------------------------------------
// redb's mapping of spaces onto tables.

/// An empty delete range (`first > last`) removes nothing, in every table redb maps a space
/// to (the ops table's single-id path and range path, the quarantine table, the rows table);
/// an empty read range reads nothing. No panic, no error, nothing else touched.
#[test]
fn redb_empty_ranges_remove_and_read_nothing_in_every_table() {
    let s = RedbStore::in_memory().unwrap();
    let key = ActorKey::new("t", "k");
    let e = epoch(&s, &key);
    let mut c = ActorCommit::new(key.clone(), e).put(Space::SNAPSHOT, 0, b"s".to_vec());
    for space in [
        Space::OPS,
        Space::QUARANTINE,
        Space::new(3),
        Space::new(255),
    ] {
        for id in [0, 4, 5, u64::MAX] {
            c = c.put(space, id, vec![space.id()]);
        }
    }
    s.commit(&[c]).unwrap();
    let before = s.read(&key, None, 0..=u64::MAX).unwrap();
    for space in [
        Space::SNAPSHOT,
        Space::OPS,
        Space::QUARANTINE,
        Space::new(3),
        Space::new(255),
    ] {
        for (first, last) in [(5, 4), (u64::MAX, 0), (1, 0)] {
            let mut c = ActorCommit::new(key.clone(), e);
            c.writes.push(RowWrite::Delete { space, first, last });
            let r = catch_unwind(AssertUnwindSafe(|| s.commit(&[c])));
            assert!(
                matches!(r, Ok(Ok(()))),
                "delete {first}..={last} of {space}: {:?}",
                r.map(|r| r.map_err(|e| e.to_string()))
            );
            #[allow(clippy::reversed_empty_ranges)]
            let read = catch_unwind(AssertUnwindSafe(|| s.read(&key, Some(space), first..=last)));
            assert!(
                matches!(&read, Ok(Ok(v)) if v.is_empty()),
                "read {first}..={last} of {space}"
            );
        }
    }
    assert_eq!(s.read(&key, None, 0..=u64::MAX).unwrap(), before);
}

/// A delete of one id (`first == last`) and of a range, in each table, removes exactly that;
/// a delete of the snapshot space by a range that starts above 0 keeps the snapshot.
#[test]
fn redb_single_id_and_range_deletes_remove_exactly_their_ids() {
    let s = RedbStore::in_memory().unwrap();
    let key = ActorKey::new("t", "k");
    let e = epoch(&s, &key);
    let spaces = [Space::OPS, Space::QUARANTINE, Space::new(3)];
    let mut c = ActorCommit::new(key.clone(), e).put(Space::SNAPSHOT, 0, b"s".to_vec());
    for space in spaces {
        for id in [0, 1, 2, 3, u64::MAX - 1, u64::MAX] {
            c = c.put(space, id, vec![1]);
        }
    }
    s.commit(&[c]).unwrap();
    let mut c = ActorCommit::new(key.clone(), e);
    for space in spaces {
        c = c.remove(space, 2).remove(space, u64::MAX);
        c.writes.push(RowWrite::Delete {
            space,
            first: 0,
            last: 0,
        });
    }
    c.writes.push(RowWrite::Delete {
        space: Space::SNAPSHOT,
        first: 1,
        last: u64::MAX,
    });
    s.commit(&[c]).unwrap();
    let mut want = vec![(0, 0)];
    for space in spaces {
        want.extend([(space.id(), 1), (space.id(), 3), (space.id(), u64::MAX - 1)]);
    }
    assert_eq!(ids(&s.read(&key, None, 0..=u64::MAX).unwrap()), want);
}

/// `keys(namespace, space)` for spaces of the rows table (3..=255), with namespaces that are
/// prefixes of each other, keys that interleave spaces, and NUL and empty strings: each key
/// once, in order, only of that namespace and that space.
#[test]
fn redb_keys_of_the_rows_table_with_prefix_namespaces_and_interleaved_spaces() {
    let s = RedbStore::in_memory().unwrap();
    let layout: [(&str, &str, &[u8]); 9] = [
        ("", "", &[3]),
        ("a", "", &[4]),
        ("a", "x", &[3, 4, 9]),
        ("a", "x\0", &[9]),
        ("a", "y", &[4]),
        ("a", "z", &[3, 255]),
        ("a\0", "x", &[3]),
        ("ab", "", &[3, 4]),
        ("b", "x", &[4]),
    ];
    let mut batch = Vec::new();
    for (ns, k, spaces) in layout {
        let key = ActorKey::new(ns, k);
        let e = epoch(&s, &key);
        let mut c = ActorCommit::new(key, e);
        for sp in spaces {
            c = c
                .put(Space::new(*sp), 1, vec![*sp])
                .put(Space::new(*sp), u64::MAX, vec![]);
        }
        batch.push(c);
    }
    s.commit(&batch).unwrap();
    let keys = |ns: &str, sp: u8| s.keys(ns, Space::new(sp)).unwrap();
    assert_eq!(keys("a", 3), vec!["x", "z"]);
    assert_eq!(keys("a", 4), vec!["", "x", "y"]);
    assert_eq!(keys("a", 9), vec!["x", "x\0"]);
    assert_eq!(keys("a", 255), vec!["z"]);
    assert_eq!(keys("a", 5), Vec::<String>::new());
    assert_eq!(keys("", 3), vec![""]);
    assert_eq!(keys("", 4), Vec::<String>::new());
    assert_eq!(keys("a\0", 3), vec!["x"]);
    assert_eq!(keys("ab", 4), vec![""]);
    assert_eq!(keys("b", 4), vec!["x"]);
    assert_eq!(keys("b", 3), Vec::<String>::new());
    assert_eq!(keys("c", 3), Vec::<String>::new());
}

/// `read(key, None, ids)` applies the id range to every space (the snapshot's id 0 included),
/// and orders by (space, id) across the old tables and the rows table.
#[test]
fn redb_a_read_of_every_space_applies_the_range_to_each() {
    let s = RedbStore::in_memory().unwrap();
    let key = ActorKey::new("t", "k");
    let e = epoch(&s, &key);
    let mut c = ActorCommit::new(key.clone(), e).put(Space::SNAPSHOT, 0, b"s".to_vec());
    for space in [
        Space::new(200),
        Space::OPS,
        Space::new(3),
        Space::QUARANTINE,
    ] {
        for id in [0, 5, 6, u64::MAX] {
            c = c.put(space, id, vec![space.id()]);
        }
    }
    s.commit(&[c]).unwrap();
    assert_eq!(
        ids(&s.read(&key, None, 5..=6).unwrap()),
        vec![
            (1, 5),
            (1, 6),
            (2, 5),
            (2, 6),
            (3, 5),
            (3, 6),
            (200, 5),
            (200, 6)
        ]
    );
    assert_eq!(
        ids(&s.read(&key, None, 0..=0).unwrap()),
        vec![(0, 0), (1, 0), (2, 0), (3, 0), (200, 0)]
    );
    assert_eq!(
        ids(&s.read(&key, None, u64::MAX..=u64::MAX).unwrap()),
        vec![(1, u64::MAX), (2, u64::MAX), (3, u64::MAX), (200, u64::MAX)]
    );
}

/// Two commits of one key in one batch apply in order (the second's put wins, the second's
/// delete removes the first's put); two stale commits of one key are both listed, by index,
/// and nothing of the batch is written.
#[test]
fn redb_two_commits_of_one_key_in_a_batch() {
    let s = RedbStore::in_memory().unwrap();
    let (a, b) = (ActorKey::new("t", "a"), ActorKey::new("t", "b"));
    let ea = epoch(&s, &a);
    let eb = epoch(&s, &b);
    s.commit(&[
        ActorCommit::new(a.clone(), ea)
            .put(Space::OPS, 1, b"one".to_vec())
            .put(Space::new(5), 1, b"five".to_vec()),
        ActorCommit::new(a.clone(), ea)
            .put(Space::OPS, 1, b"two".to_vec())
            .remove(Space::new(5), 1),
    ])
    .unwrap();
    assert_eq!(
        s.read(&a, None, 0..=u64::MAX).unwrap(),
        vec![Row {
            space: Space::OPS,
            id: 1,
            bytes: b"two".to_vec()
        }]
    );
    let stale = ea;
    let _newer = epoch(&s, &a);
    let err = s
        .commit(&[
            ActorCommit::new(a.clone(), stale).put(Space::OPS, 2, vec![]),
            ActorCommit::new(b.clone(), eb).put(Space::OPS, 2, vec![]),
            ActorCommit::new(a.clone(), stale).raise_floor(99),
        ])
        .unwrap_err();
    let StoreError::Fenced(fences) = err else {
        panic!("expected Fenced, got {err}")
    };
    assert_eq!(
        fences.iter().map(|f| f.index).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert!(s.read(&b, None, 0..=u64::MAX).unwrap().is_empty());
}

/// The snapshot space holds id 0 only, on every backend alike: a put of another id is
/// refused by memory and redb (and an export stream can never carry one; the reader refuses
/// a hand-made one: `adversarial_kit::a_stream_with_a_snapshot_row_other_than_id_0_is_refused`).
#[test]
fn every_backend_refuses_a_snapshot_row_other_than_id_0() {
    let key = ActorKey::new("t", "k");
    let memory = MemoryStore::new();
    let redb = RedbStore::in_memory().unwrap();
    for store in [&memory as &dyn Store, &redb] {
        let e = epoch(store, &key);
        let put = ActorCommit::new(key.clone(), e).put(Space::SNAPSHOT, 7, b"s".to_vec());
        assert!(store.commit(&[put]).is_err(), "{} took it", store.name());
        assert!(store.read(&key, None, 0..=u64::MAX).unwrap().is_empty());
    }
}

/// Keys with NUL and empty strings, prefix namespaces, spaces 3..=255, ids near `u64::MAX`,
/// marks at their maximum: memory -> redb -> memory gives the same stream byte for byte.
#[test]
fn odd_keys_spaces_and_ids_move_memory_to_redb_and_back_byte_for_byte() {
    let source = MemoryStore::new();
    let keys = [
        ActorKey::new("", ""),
        ActorKey::new("", "\0"),
        ActorKey::new("a", ""),
        ActorKey::new("a", "\0\0"),
        ActorKey::new("a\0", ""),
        ActorKey::new("ab", "🦀"),
    ];
    let mut batch = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let e = epoch(&source, key);
        let mut c = ActorCommit::new(key.clone(), e)
            .put(Space::SNAPSHOT, 0, vec![i as u8])
            .raise_floor(u64::MAX - i as u64);
        for space in [1u8, 2, 3, 127, 255] {
            for id in [0, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX] {
                c = c.put(Space::new(space), id, vec![space, i as u8]);
            }
        }
        batch.push(c);
    }
    let gone = ActorKey::new("a", "gone");
    let e = epoch(&source, &gone);
    batch.push(ActorCommit::new(gone, e).raise_floor(5));
    source.commit(&batch).unwrap();
    let a = export_bytes(&source);
    let redb = RedbStore::in_memory().unwrap();
    import(&redb, &mut &a[..], ImportMode::IntoEmpty).unwrap();
    assert_eq!(export_bytes(&redb), a, "redb's export");
    let back = MemoryStore::new();
    ractor_persist::transfer::copy(&redb, &back).unwrap();
    assert_eq!(export_bytes(&back), a, "back in memory");
}

// ---------------------------------------------------------------------------------------------
// Export and import through a running Storage.

/// `Storage::import(.., Replace)` on a storage with an actor running on one of the stream's
/// keys: the import's doc says "each imported key's epoch is raised to at least the exported
/// one, so an instance running there would be fenced". When the stream's epoch is not above
/// the running instance's, nothing fences it: its next message commits over the imported
/// state, and the import is lost without an error. (P7: one writer per actor key.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_import_fences_the_instance_running_on_an_imported_key() {
    // The stream: memo "a" at epoch 1, state "imported".
    let source = MemoryStore::new();
    write_memo(&source, Transforms::none(), "a", "imported", &[]).await;
    let stream = export_bytes(&source);

    // The target: memo "a" spawned a few times, the last instance running, at epoch 3.
    let target = MemoryStore::new();
    write_memo(&target, Transforms::none(), "a", "old", &[]).await;
    write_memo(&target, Transforms::none(), "a", "older", &[]).await;
    let storage = Storage::new(target.clone());
    let running = spawn_memo(&storage, "a").await;
    call!(running, MemoMsg::Set, "live".to_owned()).unwrap();

    storage
        .import(std::io::Cursor::new(stream), ImportMode::Replace)
        .await
        .unwrap();
    let late = call!(running, MemoMsg::Set, "written after the import".to_owned());
    running.stop_and_wait(None, None).await.ok();
    let fresh = spawn_memo(&storage, "a").await;
    let now = call!(fresh, MemoMsg::Get).unwrap();
    fresh.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert!(
        late.is_err() && now == "imported",
        "the running instance was not fenced: its write after the import was acknowledged \
         ({late:?}) and the stored state is now {now:?}"
    );
}

/// `Storage::export` runs "in order with its commits": every reply received before the export
/// was asked for is in the stream, while actors keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_export_while_actors_run_holds_every_acknowledged_commit() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let mut actors = Vec::new();
    for i in 0..4 {
        actors.push(spawn_ledger(&storage, &format!("l{i}"), Ledger::default()).await);
    }
    for round in 1..=5i64 {
        for a in &actors {
            call!(a, LedgerMsg::Add, round).unwrap();
        }
    }
    // More commits in flight while the export runs.
    let busy: Vec<_> = actors
        .iter()
        .map(|a| {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let _ = call!(a, LedgerMsg::AddKept, 0);
                }
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    struct Chan(Vec<u8>, std::sync::mpsc::Sender<Vec<u8>>);
    impl std::io::Write for Chan {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let _ = self.1.send(std::mem::take(&mut self.0));
            Ok(())
        }
    }
    storage.export(Chan(Vec::new(), tx)).await.unwrap();
    let stream: Vec<u8> = rx.try_iter().flatten().collect();
    for b in busy {
        b.await.unwrap();
    }
    for a in actors {
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
    let copy = MemoryStore::new();
    import(&copy, &mut &stream[..], ImportMode::IntoEmpty).unwrap();
    let storage = Storage::new(copy);
    for i in 0..4 {
        let a = spawn_ledger(&storage, &format!("l{i}"), Ledger::default()).await;
        assert_eq!(call!(a, LedgerMsg::Peek).unwrap(), 15, "l{i}");
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}

/// A giant length in a stream is a typed error, and the reader never allocates for it more
/// than one row's cap (`MAX_ROW_LEN`): a 4 GiB row claim makes no large allocation at all; a
/// truncated stream claiming a row at the cap allocates the cap (64 MiB for a stream of a few
/// dozen bytes; bounded, but see the report).
#[test]
fn a_giant_length_in_a_stream_costs_at_most_one_rows_cap() {
    let mut stream = b"RPEXPORT".to_vec();
    stream.extend_from_slice(&1u32.to_le_bytes());
    let mut actor = vec![b'A'];
    actor.extend_from_slice(&1u32.to_le_bytes());
    actor.push(b'n');
    actor.extend_from_slice(&1u32.to_le_bytes());
    actor.push(b'k');
    actor.extend_from_slice(&1u64.to_le_bytes());
    actor.extend_from_slice(&0u64.to_le_bytes());
    stream.extend_from_slice(&actor);
    stream.extend_from_slice(&crc32c(&actor).to_le_bytes());
    for (claim, bound) in [
        (u32::MAX, MIB),
        (
            ractor_persist::MAX_ROW_LEN as u32,
            ractor_persist::MAX_ROW_LEN + MIB,
        ),
    ] {
        let mut s = stream.clone();
        s.push(b'R');
        s.push(1);
        s.extend_from_slice(&0u64.to_le_bytes());
        s.extend_from_slice(&claim.to_le_bytes());
        let target = MemoryStore::new();
        let (r, largest) =
            largest_allocation(|| import(&target, &mut &s[..], ImportMode::IntoEmpty));
        let err = r.unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Corrupt { .. } | TransferError::Truncated { .. }
            ),
            "{err}"
        );
        eprintln!(
            "a {}-byte stream claiming a {claim}-byte row: largest allocation {largest} bytes",
            s.len()
        );
        assert!(largest <= bound, "claim {claim}: allocated {largest} bytes");
    }
}

/// After a failed batch write the store is poisoned, "because after a failed write nobody knows
/// what is on disk". Delete (and quarantine, and import) are commits too, made through the
/// committer's call path: a failed delete write must poison the store like a failed batch, or
/// later writes go on over a store in an unknown state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_write_poisons_the_store_like_a_failed_batch() {
    let faults = Faults::default();
    let storage = Storage::new(faults.wrap(MemoryStore::new()));
    let a = spawn_ledger(&storage, "a", Ledger::default()).await;
    // A kept operation: no rider is queued, so the delete's own write is the one that fails.
    call!(a, LedgerMsg::AddKept, 1).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    faults
        .fail_commits
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = Ledger::delete_persistent(&storage, "a").await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    faults
        .fail_commits
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let b = Actor::spawn(None, Ledger::default(), Start::new(&storage, "b", ())).await;
    let later = match b {
        Ok((b, _)) => {
            let r = call!(b, LedgerMsg::Add, 1);
            b.stop_and_wait(None, None).await.ok();
            r.map(|_| ()).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = storage.close().await;
    assert!(
        later.is_err(),
        "a write after the failed delete was acknowledged: the store was not poisoned"
    );
    eprintln!("after the failed delete: {later:?}");
}

// ---------------------------------------------------------------------------------------------
// Transforms.

/// A format 2 record with transform flags 0, or with a bit this build does not know, and a
/// right checksum, is `UnknownTransform`: not damage, so never quarantined, and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_2_with_no_or_unknown_transform_bits_is_refused_and_never_quarantined() {
    for flags in [0x00u8, 0x04, 0x80, 0x07] {
        let store = MemoryStore::new();
        let compress = || Transforms::none().compress_above(16);
        write_memo(&store, compress(), "a", &"abc".repeat(200), &[]).await;
        let mut rec = store.snapshot(&memo("a")).unwrap();
        assert_eq!((rec[2], rec[40]), (2, 0x01));
        rec[40] = flags;
        fix_v2_checksum(&mut rec);
        store.put_raw_snapshot(&memo("a"), rec.clone());
        let (r, quarantined) = open_with_quarantine(&store, compress(), "a").await;
        assert!(
            matches!(r, Err(DecodeReason::UnknownTransform { flags: f }) if f == flags),
            "flags {flags:#04x}: {r:?}"
        );
        assert_eq!(quarantined, 0, "flags {flags:#04x}");
        assert_eq!(store.snapshot(&memo("a")), Some(rec), "untouched");
    }
}

/// A compressed record whose stated length before compression is wrong (one less, one more,
/// zero) is `Decompress`: not damage, never quarantined, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_record_stating_a_wrong_raw_length_is_decompress_and_untouched() {
    let store = MemoryStore::new();
    let compress = || Transforms::none().compress_above(16);
    write_memo(&store, compress(), "a", &"xyz".repeat(300), &[]).await;
    let good = store.snapshot(&memo("a")).unwrap();
    let raw = u32::from_le_bytes(good[41..45].try_into().unwrap());
    for stated in [raw - 1, raw + 1, 0, raw * 2] {
        let mut rec = good.clone();
        rec[41..45].copy_from_slice(&stated.to_le_bytes());
        fix_v2_checksum(&mut rec);
        store.put_raw_snapshot(&memo("a"), rec.clone());
        let (r, quarantined) = open_with_quarantine(&store, compress(), "a").await;
        assert!(
            matches!(r, Err(DecodeReason::Decompress { .. })),
            "stated {stated} (really {raw}): {r:?}"
        );
        assert_eq!(quarantined, 0);
        assert_eq!(store.snapshot(&memo("a")), Some(rec));
    }
}

/// An intact record this build cannot read is never quarantined ("only damage is moved
/// aside"; "a rolled-back deploy must not reset its actors"). A format 2 record whose checksum
/// holds but whose stated raw length is over this build's cap (as a later build with a larger
/// cap could write) is reported as `TooLarge`, which counts as damage, so with quarantine on
/// the record is moved aside and the actor starts from `init`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_compressed_record_over_the_cap_is_not_quarantined() {
    let store = MemoryStore::new();
    let compress = || Transforms::none().compress_above(16);
    write_memo(&store, compress(), "a", &"big".repeat(300), &["op"]).await;
    let mut rec = store.snapshot(&memo("a")).unwrap();
    // Over this build's cap (64 MiB and a 5-byte attempt count).
    rec[41..45].copy_from_slice(&(65u32 * MIB as u32).to_le_bytes());
    fix_v2_checksum(&mut rec);
    store.put_raw_snapshot(&memo("a"), rec.clone());
    let (r, quarantined) = open_with_quarantine(&store, compress(), "a").await;
    assert!(
        r.is_err() && quarantined == 0 && store.snapshot(&memo("a")) == Some(rec),
        "an intact (checksummed) record was treated as damage: spawn gave {r:?}, {quarantined} \
         record(s) quarantined, pending ops now {:?}",
        store.ops(&memo("a")).len()
    );
}

/// A compressed record of a few hundred bytes stating a raw length at the cap: decoding it
/// allocates no more than the cap (it is a typed error). Run on this thread (current-thread
/// runtime) so the allocation is seen; the size is printed for the report.
#[tokio::test(flavor = "current_thread")]
async fn a_decompression_bomb_allocates_at_most_the_cap() {
    let store = MemoryStore::new();
    let compress = || Transforms::none().compress_above(16);
    write_memo(&store, compress(), "a", &"bomb".repeat(100), &[]).await;
    let mut rec = store.snapshot(&memo("a")).unwrap();
    rec[41..45].copy_from_slice(&(64u32 * MIB as u32).to_le_bytes());
    fix_v2_checksum(&mut rec);
    let len = rec.len();
    store.put_raw_snapshot(&memo("a"), rec);
    let storage = with(&store, compress());
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let spawned = Actor::spawn(None, Memo, Start::new(&storage, "a", ())).await;
    TRACK.with(|t| t.set(false));
    let largest = LARGEST.with(|l| l.get());
    let reason = decode_error(spawned.map(|_| ()).unwrap_err()).reason;
    assert!(
        matches!(reason, DecodeReason::Decompress { .. }),
        "{reason}"
    );
    eprintln!("a {len}-byte record stating 64 MiB: largest allocation {largest} bytes");
    assert!(largest <= 64 * MIB + MIB, "{largest}");
    storage.close().await.unwrap();
}

/// A record encrypted by one storage, read by a storage that only compresses: `MissingKey`
/// naming the key id, never quarantined, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_record_read_by_a_compress_only_storage_is_missing_key() {
    let store = MemoryStore::new();
    let keys = Keyring::new(9, &[7u8; 32]).unwrap();
    write_memo(
        &store,
        Transforms::none().compress_above(16).encrypt(keys),
        "a",
        &"secret".repeat(100),
        &["op"],
    )
    .await;
    let before = (store.snapshot(&memo("a")), store.ops(&memo("a")));
    let (r, quarantined) =
        open_with_quarantine(&store, Transforms::none().compress_above(16), "a").await;
    assert!(
        matches!(r, Err(DecodeReason::MissingKey { key_id: 9 })),
        "{r:?}"
    );
    assert_eq!(quarantined, 0);
    assert_eq!((store.snapshot(&memo("a")), store.ops(&memo("a"))), before);
}

/// Nonces never repeat: across many records, across storages sharing one `Transforms` (clones
/// share the keyring's counter), and across keyrings made from the same key (each draws its
/// own random prefix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_never_repeat_across_storages_clones_and_keyrings_of_one_key() {
    let key = [3u8; 32];
    let shared = Transforms::none().encrypt(Keyring::new(1, &key).unwrap());
    let stores = [MemoryStore::new(), MemoryStore::new(), MemoryStore::new()];
    let transforms = [
        shared.clone(),
        shared.clone(),
        Transforms::none().encrypt(Keyring::new(1, &key).unwrap()),
    ];
    let mut nonces = BTreeSet::new();
    let mut records = 0;
    for (store, t) in stores.iter().zip(transforms) {
        let storage = with(store, t);
        let a = spawn_memo(&storage, "a").await;
        for i in 0..40 {
            call!(a, MemoMsg::Set, format!("state {i}")).unwrap();
            call!(a, MemoMsg::Push, format!("op {i}")).unwrap();
            let snap = store.snapshot(&memo("a")).unwrap();
            nonces.insert(snap[45..69].to_vec());
            records += 1;
        }
        for (_, op) in store.ops(&memo("a")) {
            assert_eq!((op[2], op[40]), (2, 0x02));
            nonces.insert(op[45..69].to_vec());
            records += 1;
        }
        a.stop_and_wait(None, None).await.unwrap();
        storage.close().await.unwrap();
    }
    assert_eq!(nonces.len(), records, "a nonce was used twice");
}

/// The quarantine row of a damaged encrypted record holds the record as stored (sealed), and
/// neither it nor the reason holds the plaintext of the state or of an operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarantine_of_an_encrypted_record_holds_no_plaintext() {
    const SECRET: &str = "the-secret-marker";
    let store = MemoryStore::new();
    let keys = || Transforms::none().encrypt(Keyring::new(1, &[5u8; 32]).unwrap());
    write_memo(&store, keys(), "a", SECRET, &[SECRET]).await;
    let mut rec = store.snapshot(&memo("a")).unwrap();
    let last = rec.len() - 1;
    rec[last] ^= 1; // damage, no re-sealed checksum
    store.put_raw_snapshot(&memo("a"), rec.clone());
    let (r, quarantined) = open_with_quarantine(&store, keys(), "a").await;
    assert!(matches!(r.as_deref(), Ok("")), "started fresh: {r:?}");
    assert_eq!(quarantined, 1);
    let rows = store
        .read(&memo("a"), Some(Space::QUARANTINE), 0..=u64::MAX)
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(contains(&rows[0].bytes, &rec), "the sealed record is kept");
    assert!(
        !contains(&rows[0].bytes, SECRET.as_bytes()),
        "plaintext in the quarantine row"
    );
}

/// Pinned (documented: "an unencrypted record stays readable after encryption is turned on"):
/// a storage that encrypts still reads a plain format 1 record, so anyone who can write the
/// store can put a forged plaintext state in place of a sealed one and it is loaded as is.
/// Encryption gives confidentiality of what it sealed, not authenticity of what is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_an_encrypting_storage_reads_a_planted_plain_record() {
    let keys = || Transforms::none().encrypt(Keyring::new(1, &[8u8; 32]).unwrap());
    let store = MemoryStore::new();
    write_memo(&store, keys(), "a", "sealed state", &[]).await;
    let forge = MemoryStore::new();
    write_memo(&forge, Transforms::none(), "a", "forged state", &[]).await;
    let forged = forge.snapshot(&memo("a")).unwrap();
    assert_eq!(forged[2], 1);
    store.put_raw_snapshot(&memo("a"), forged);
    let (r, _) = open_with_quarantine(&store, keys(), "a").await;
    assert!(matches!(r.as_deref(), Ok("forged state")), "{r:?}");
}

/// A Replace import cannot lower a key's marks, and Storage::import into a storage whose
/// only content is an epoch taken by a running actor is refused as not empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_into_empty_import_on_a_storage_with_a_running_actor_is_refused() {
    let source = MemoryStore::new();
    write_memo(&source, Transforms::none(), "a", "x", &[]).await;
    let stream = export_bytes(&source);
    let target = MemoryStore::new();
    let storage = Storage::new(target.clone());
    let running = spawn_memo(&storage, "other").await; // an epoch, no row
    let err = storage
        .import(std::io::Cursor::new(stream), ImportMode::IntoEmpty)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::NotEmpty { keys: 1, .. }),
        "{err}"
    );
    running.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert!(target.snapshot(&memo("a")).is_none());
}

// ---------------------------------------------------------------------------------------------
// A record the runtime writes itself must read back (P8: never a silent loss, and not
// quarantined as damage).

#[derive(Clone, Default, Persistent)]
#[persistent(name = "heavy")]
struct Heavy;

enum HeavyMsg {
    Push(String, RpcReplyPort<()>),
    Count(RpcReplyPort<usize>),
}

impl PersistentActor for Heavy {
    type Msg = HeavyMsg;
    type State = u8;
    type Op = String;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u8, ractor::ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: HeavyMsg,
        _: &mut u8,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            HeavyMsg::Push(op, reply) => {
                tx.push(op)?;
                tx.reply(reply, ());
            }
            HeavyMsg::Count(reply) => tx.reply(reply, tx.pending().count()),
        }
        Ok(())
    }

    async fn perform(
        &self,
        _: &Pending<String>,
        _: &u8,
    ) -> Result<Outcome, ractor::ActorProcessingErr> {
        Ok(Outcome::Retry)
    }
}

/// An operation whose payload is exactly at the 64 MiB cap is accepted by `Tx::push` and
/// stored; after one `Retry` the runtime rewrites it as a record whose payload is the attempt
/// count and the retry's instant (varints) followed by the operation: over the cap.
/// The runtime wrote a record it cannot read back: the next spawn fails with `TooLarge` (and,
/// with quarantine on, the record is moved aside as damage and the pending operation is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_at_the_cap_still_reads_after_a_failed_attempt() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let start = Start::new(&storage, "h", ()).retry_policy(common::patient(5));
    let (a, _) = Actor::spawn(None, Heavy, start).await.unwrap();
    // postcard: a 4-byte length varint, then the text: 64 MiB in all.
    let op = "x".repeat(64 * MIB - 4);
    call!(a, HeavyMsg::Push, op).unwrap();
    // A message after the perform: the attempt count rides on its commit (or on close).
    let _ = call!(a, HeavyMsg::Count);
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let stored = store.ops(&ActorKey::new("heavy", "h"));
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].1[3], 11,
        "rewritten as an operation waiting for a retry (kind 11: count and instant)"
    );

    let storage = Storage::new(store.clone());
    let start = Start::new(&storage, "h", ())
        .retry_policy(common::patient(5))
        .quarantine_undecodable();
    let spawned = Actor::spawn(None, Heavy, start).await;
    let result = match spawned {
        Ok((a, _)) => {
            let n = call!(a, HeavyMsg::Count).unwrap();
            a.stop_and_wait(None, None).await.unwrap();
            Ok(n)
        }
        Err(e) => Err(decode_error(e).reason.to_string()),
    };
    let quarantined = storage.quarantined("heavy").await.unwrap().len();
    storage.close().await.unwrap();
    assert!(
        matches!(result, Ok(1)) && quarantined == 0,
        "the pending operation did not come back: {result:?}, {quarantined} quarantined"
    );
}

/// `Replace` on redb: the stream's key loses its stored rows of every table (snapshot, ops,
/// quarantine, the rows table), gets the stream's, and keeps its higher marks; another key of
/// the same namespace, with a name that extends it, is untouched.
#[test]
fn redb_replace_clears_every_table_of_the_key_and_only_that_key() {
    let target = RedbStore::in_memory().unwrap();
    let (a, a2) = (ActorKey::new("ns", "a"), ActorKey::new("ns", "a\0"));
    let e = epoch(&target, &a);
    let e2 = epoch(&target, &a2);
    target
        .commit(&[
            ActorCommit::new(a.clone(), e)
                .put(Space::SNAPSHOT, 0, b"old".to_vec())
                .put(Space::OPS, 3, b"old".to_vec())
                .put(Space::QUARANTINE, 1, b"old".to_vec())
                .put(Space::new(42), 9, b"old".to_vec())
                .raise_floor(9000),
            ActorCommit::new(a2.clone(), e2)
                .put(Space::SNAPSHOT, 0, b"keep".to_vec())
                .put(Space::new(42), 9, b"keep".to_vec()),
        ])
        .unwrap();
    for _ in 0..4 {
        epoch(&target, &a);
    }
    let source = MemoryStore::new();
    let es = epoch(&source, &a);
    source
        .commit(&[ActorCommit::new(a.clone(), es)
            .put(Space::new(43), 1, b"new".to_vec())
            .raise_floor(10)])
        .unwrap();
    let stream = export_bytes(&source);
    let before = export_bytes(&target);
    import(&target, &mut &stream[..], ImportMode::Replace).unwrap();
    assert_eq!(
        target.read(&a, None, 0..=u64::MAX).unwrap(),
        vec![Row {
            space: Space::new(43),
            id: 1,
            bytes: b"new".to_vec()
        }]
    );
    assert_eq!(target.read(&a2, None, 0..=u64::MAX).unwrap().len(), 2);
    let marks = target.scan().unwrap();
    let m = marks.iter().find(|(k, _)| *k == a).unwrap().1;
    assert_eq!(
        (m.epoch, m.floor),
        (6, 9000),
        "a new epoch (fencing), marks never lowered"
    );
    assert_ne!(export_bytes(&target), before);
}
