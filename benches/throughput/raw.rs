//! Raw redb: the library's rows written by one thread, with no actor and no runtime.

use std::path::Path;
use std::time::Instant;

use redb::{Database, Durability, TableDefinition};

use ractor_persist::{ActorKey, MemoryStore, SpawnPersistent, Storage};

use crate::actors::{Acct, Msg, ROW_PAD};
use crate::measure::{Run, cpu_time};

const STATES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("raw.snapshots");
const OPS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("raw.ops");

/// Bytes of the library's records for the benchmark's state and op, read back from a store.
pub async fn row_sizes() -> (usize, usize) {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let (actor, _) = Acct::spawn_persistent(&storage, "sizes", ROW_PAD)
        .await
        .expect("spawn");
    // A counter of a few hundred, as in the runs; the last op stays pending.
    for _ in 0..300 {
        ractor::call!(actor, Msg::Add).expect("reply");
    }
    ractor::call!(actor, Msg::AddKept).expect("reply");
    actor.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");
    let key = ActorKey::new("bench", "sizes");
    let state = store.snapshot(&key).expect("a snapshot").len();
    let op = store.ops(&key).last().expect("an op").1.len();
    (state, op)
}

/// Writes `msgs` messages over `keys` actor keys round-robin, `per_txn` messages per
/// `Durability::Immediate` transaction. A message is what the library writes for one: the
/// snapshot row, the new op row, and the removal of the key's previous op (the library's
/// rider). Latencies are per transaction.
pub fn write(dir: &Path, rows: (usize, usize), keys: usize, per_txn: usize, msgs: usize) -> Run {
    let path = dir.join(format!("raw-{keys}-{per_txn}.redb"));
    let db = Database::create(&path).expect("create the database");
    let names: Vec<String> = (0..keys).map(|i| format!("a{i}")).collect();
    let (state_len, op_len) = rows;
    let mut state = vec![0xA5u8; state_len];
    let op = vec![0x5Au8; op_len];
    let mut seq = vec![0u64; keys];
    let mut next = 0;
    let mut txn_of = |n: usize| {
        let mut txn = db.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        {
            let mut states = txn.open_table(STATES).expect("table");
            let mut ops = txn.open_table(OPS).expect("table");
            for _ in 0..n {
                let key = names[next].as_str();
                let s = seq[next];
                state[0] = s as u8;
                states
                    .insert(("bench", key), state.as_slice())
                    .expect("insert");
                ops.insert(("bench", key, s), op.as_slice())
                    .expect("insert");
                if s > 0 {
                    ops.remove(("bench", key, s - 1)).expect("remove");
                }
                seq[next] += 1;
                next = (next + 1) % keys;
            }
        }
        txn.commit().expect("commit");
    };
    // Warm-up: every key written once, as the library's warm-up message does.
    let mut left = keys;
    while left > 0 {
        let n = left.min(per_txn);
        txn_of(n);
        left -= n;
    }
    let mut lat = Vec::with_capacity(msgs / per_txn + 1);
    let cpu = cpu_time();
    let start = Instant::now();
    let mut done = 0;
    while done < msgs {
        let n = (msgs - done).min(per_txn);
        let t = Instant::now();
        txn_of(n);
        lat.push(t.elapsed());
        done += n;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu;
    drop(db);
    let _ = std::fs::remove_file(&path);
    Run {
        msgs,
        secs,
        lat,
        batches: (msgs / per_txn) as u64,
        commits: msgs as u64,
        cpu,
        ..Run::default()
    }
}
