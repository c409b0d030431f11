//! Recovery: open a store of many actors and respawn some of them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ractor::Actor;
use ractor_persist::{
    ActorCommit, ActorKey, RedbStore, RowWrite, Space, SpawnPersistent, Storage, Store,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::actors::{Acct, Msg, Plain, ROW_PAD};

// The library's tables (persist-redb/src/format.rs), for the raw-redb baseline.
const SNAPSHOTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("ractor_persist.snapshots");
const OPS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("ractor_persist.ops");
const EPOCHS: TableDefinition<(&str, &str), u64> = TableDefinition::new("ractor_persist.epochs");

pub struct Recovery {
    pub actors: usize,
    pub build: Duration,
    pub file_bytes: u64,
    pub open_warm: Duration,
    /// `redb::Database::open` of the same file, warm.
    pub raw_open: Duration,
    pub spawn_warm: Vec<Duration>,
    pub open_cold: Duration,
    pub spawn_cold: Vec<Duration>,
    /// The same record read by hand: one redb write transaction taking the epoch and reading
    /// the snapshot and the ops (what `RedbStore` does on load), no actor.
    pub raw_load: Vec<Duration>,
    /// A plain ractor actor's spawn, no storage.
    pub plain_spawn: Vec<Duration>,
}

fn key(i: usize) -> String {
    format!("r{i:06}")
}

/// Builds a store of `actors` actors, then opens it and respawns `respawn` of them, spread
/// over the key space: once with the file in the page cache (a process restart), once after
/// evicting it (closer to a reboot). `stride` (actors / respawn) must exceed `reps + 1`.
pub async fn run(dir: &Path, actors: usize, respawn: usize, reps: usize) -> Recovery {
    let path = dir.join("recovery.redb");
    let t = Instant::now();
    build(&path, actors).await;
    let build = t.elapsed();
    let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let stride = actors / respawn;

    // Baseline: redb alone opening the same file (and closing it).
    let mut raw_opens: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let db = Database::open(&path).expect("open the database");
            let open = t.elapsed();
            drop(db);
            open
        })
        .collect();
    raw_opens.sort_unstable();
    let raw_open = raw_opens[raw_opens.len() / 2];

    // Warm: `reps` openings, each respawning other keys; cold: once, after evicting the file.
    let mut opens = Vec::new();
    let mut spawn_warm = Vec::new();
    for rep in 0..reps {
        let (open, lat) = respawn_some(&path, (0..respawn).map(|j| j * stride + rep)).await;
        opens.push(open);
        spawn_warm.extend(lat);
    }
    opens.sort_unstable();
    let open_warm = opens[opens.len() / 2];
    evict(&path);
    let (open_cold, spawn_cold) =
        respawn_some(&path, (0..respawn).map(|j| j * stride + reps)).await;

    let db = Database::open(&path).expect("open the database");
    let raw_load = (0..respawn)
        .map(|j| {
            let k = key(j * stride + 3);
            let t = Instant::now();
            raw_open_actor(&db, &k);
            t.elapsed()
        })
        .collect();
    drop(db);

    let mut plain_spawn = Vec::with_capacity(respawn);
    let mut plains = Vec::with_capacity(respawn);
    for _ in 0..respawn {
        let t = Instant::now();
        let (p, _) = Plain::spawn(None, Plain, ROW_PAD).await.expect("spawn");
        plain_spawn.push(t.elapsed());
        plains.push(p);
    }
    for p in plains {
        p.stop_and_wait(None, None).await.expect("stop");
    }
    let _ = std::fs::remove_file(&path);
    Recovery {
        actors,
        build,
        file_bytes,
        open_warm,
        raw_open,
        spawn_warm,
        open_cold,
        spawn_cold,
        raw_load,
        plain_spawn,
    }
}

/// One actor's real records (a snapshot and one op kept until confirmed), made by the library,
/// then copied under `actors` keys through `Store::commit` in big batches.
async fn build(path: &Path, actors: usize) {
    let storage = Storage::new(RedbStore::open(path).expect("open the store"));
    let (template, _) = Acct::spawn_persistent(&storage, "template", ROW_PAD)
        .await
        .expect("spawn");
    ractor::call!(template, Msg::AddKept).expect("reply");
    template.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");

    let store = RedbStore::open(path).expect("open the store");
    let record = store
        .open_actor(&ActorKey::new("bench", "template"), &Space::RECORD)
        .expect("load the template");
    assert!(
        record.snapshot().is_some() && record.ops().len() == 1,
        "template record"
    );
    let keys: Vec<usize> = (0..actors).collect();
    for chunk in keys.chunks(10_000) {
        let batch: Vec<ActorCommit> = chunk
            .iter()
            .map(|&i| {
                // Never opened: the stored epoch is 0.
                let mut c = ActorCommit::new(ActorKey::new("bench", key(i)), 0);
                c.writes = record
                    .rows
                    .iter()
                    .map(|r| RowWrite::Put {
                        space: r.space,
                        id: r.id,
                        bytes: r.bytes.clone(),
                    })
                    .collect();
                c
            })
            .collect();
        store.commit(&batch).expect("commit");
    }
    store.close().expect("close");
}

/// Opens the store and spawns the actors `keys`, one after the other; returns the open time
/// and each spawn's time (spawn call to `ActorRef`).
async fn respawn_some(path: &Path, keys: impl Iterator<Item = usize>) -> (Duration, Vec<Duration>) {
    let t = Instant::now();
    let storage = Storage::new(RedbStore::open(path).expect("open the store"));
    let open = t.elapsed();
    let mut lat = Vec::new();
    let mut refs = Vec::new();
    for i in keys {
        let t = Instant::now();
        let (actor, _) = Acct::spawn_persistent(&storage, key(i), ROW_PAD)
            .await
            .expect("respawn");
        lat.push(t.elapsed());
        refs.push(actor);
    }
    // The state came back (the template's counter is 1) and the kept op is still pending.
    let n = ractor::call!(refs[0], Msg::Peek).expect("reply");
    assert_eq!(n, 1, "respawned state");
    for actor in refs {
        actor.stop_and_wait(None, None).await.expect("stop");
    }
    storage.close().await.expect("close");
    (open, lat)
}

fn raw_open_actor(db: &Database, key: &str) {
    let id = ("bench", key);
    let mut txn = db.begin_write().expect("begin");
    txn.set_durability(Durability::None).expect("durability");
    {
        let mut epochs = txn.open_table(EPOCHS).expect("table");
        let epoch = epochs.get(id).expect("get").map_or(0, |e| e.value());
        epochs.insert(id, epoch + 1).expect("insert");
        let snapshot = txn.open_table(SNAPSHOTS).expect("table");
        let snapshot = snapshot.get(id).expect("get").map(|s| s.value().to_vec());
        assert!(snapshot.is_some(), "raw snapshot");
        let ops = txn.open_table(OPS).expect("table");
        let ops: Vec<Vec<u8>> = ops
            .range(("bench", key, 0)..=("bench", key, u64::MAX))
            .expect("range")
            .map(|e| e.expect("op").1.value().to_vec())
            .collect();
        assert_eq!(ops.len(), 1, "raw ops");
    }
    txn.commit().expect("commit");
}

unsafe extern "C" {
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
}

/// Drops the file's pages from the OS page cache (they are clean: redb synced them).
fn evict(path: &Path) {
    const POSIX_FADV_DONTNEED: i32 = 4;
    let file = File::open(path).expect("open the file");
    file.sync_all().expect("sync");
    // SAFETY: a plain system call on an open descriptor; it only advises the kernel.
    let rc = unsafe { posix_fadvise(file.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    if rc != 0 {
        eprintln!("posix_fadvise failed ({rc}); the cold figures are warm");
    }
}
