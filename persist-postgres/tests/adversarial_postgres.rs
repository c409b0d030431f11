//! Adversarial tests of PostgresStore at the seam: the fence on keys that have no marks row
//! yet, values in the tables this crate never writes (NULLs, spaces out of range, keys that
//! are not UTF-8), epochs and floors around the sign bit and at their end, servers that
//! stall, connections the server closed while idle, privileges, limits of the protocol,
//! concurrent opens, and the folding of a batch's writes against a model.
//!
//! Each test runs in a schema of its own on the shared throwaway server (or
//! `PERSIST_PG_URL`), and returns early when there is none.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use persist_core::{ActorCommit, ActorKey, MAX_ROW_LEN, Marks, RowWrite, Space, Store, StoreError};
use persist_postgres::{PostgresOptions, PostgresStore, TestCluster};

/// A `u64` as the store keeps it (top bit flipped), for rows written by hand.
fn enc(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

fn admin(server: &TestCluster) -> postgres::Client {
    postgres::Client::connect(&server.params(), postgres::NoTls).expect("an admin connection")
}

/// Options in a schema of its own whose connections carry `application_name`, so that the
/// test can find the store's server process.
fn named_options(server: &TestCluster, application_name: &str) -> PostgresOptions {
    let schema = server.options().schema_name().to_owned();
    let mut config: tokio_postgres::Config = server.params().parse().unwrap();
    config.application_name(application_name);
    PostgresOptions::from_config(config).schema(schema)
}

/// Polls until `thread` finishes, for at most `limit`. True if it finished.
fn finished_within<T>(thread: &JoinHandle<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if thread.is_finished() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    thread.is_finished()
}

/// The outcome of `f`, with a panic turned into its message.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "(no message)".into())
    })
}

/// The marks of `key`, as `scan` lists them.
fn marks_of(s: &dyn Store, key: &ActorKey) -> Marks {
    s.scan()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, m)| m)
        .unwrap_or_default()
}

// ----------------------------------------------------------------------------------------
// The fence

/// A commit at epoch 0 (what `transfer::import` sends for a key the store does not hold yet)
/// racing the first load of that key on another node. The load has taken epoch 1 and read
/// no rows, and is about to commit. The commit must either wait for the load and then be
/// fenced, or land before the load reads: it must not land after the load read the record
/// and still succeed, which would put rows under the new owner that its load never saw.
#[test]
fn a_commit_at_epoch_0_racing_the_first_load_of_its_key_is_fenced() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let store = PostgresStore::open(options.clone()).unwrap();
    let k = ActorKey::new("race", "new");
    let (ns, key) = (k.namespace().as_bytes(), k.key().as_bytes());

    // Node B's load of the new key, as the store's own statements do it, held open after it
    // took its epoch and read the (empty) record.
    let mut b = admin(server);
    let mut load = b.transaction().unwrap();
    let taken: i64 = load
        .query_one(
            &format!(
                "INSERT INTO \"{schema}\".ractor_persist_marks (ns, key, epoch, floor) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (ns, key) DO UPDATE \
                 SET epoch = \"{schema}\".ractor_persist_marks.epoch + 1 RETURNING epoch"
            ),
            &[&ns, &key, &enc(1), &enc(0)],
        )
        .unwrap()
        .get(0);
    assert_eq!(taken, enc(1), "B's load takes epoch 1");
    let seen: i64 = load
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{schema}\".ractor_persist_rows WHERE ns = $1 AND key = $2"
            ),
            &[&ns, &key],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "B's load read an empty record");

    let c = k.clone();
    let commit = std::thread::spawn(move || {
        store.commit(&[ActorCommit::new(c, 0).put(Space::SNAPSHOT, 0, b"imported".to_vec())])
    });
    // Until the commit waits on a lock in this schema, or has finished (which it must not).
    let mut watcher = admin(server);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if commit.is_finished() {
            break;
        }
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE $1",
                &[&format!("%\"{schema}\".%")],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the commit neither waited nor finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    if commit.is_finished() {
        let result = commit.join().unwrap();
        load.commit().unwrap();
        panic!(
            "a commit at epoch 0 went through ({result:?}) while another node's load held the \
             key at epoch 1 and had read its record without it: two writers interleaved"
        );
    }
    load.commit().unwrap();
    match commit.join().unwrap() {
        Err(StoreError::Fenced(f)) => assert_eq!((f[0].epoch, f[0].current), (0, 1)),
        other => panic!("the commit after B's load must be fenced, got {other:?}"),
    }
}

/// Two nodes committing batches of the same keys in opposite orders, over and over: the
/// marks are locked in key order, so no batch fails on a deadlock.
#[test]
fn batches_of_the_same_keys_in_opposite_orders_never_deadlock() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let a = PostgresStore::open(options.clone()).unwrap();
    let b = PostgresStore::open(options.clone()).unwrap();
    let keys: Vec<(ActorKey, u64)> = (0..8)
        .map(|i| {
            let k = ActorKey::new("dl", format!("k{i}"));
            let e = a.open_actor(&k, &[]).unwrap().epoch;
            (k, e)
        })
        .collect();
    let start = Arc::new(Barrier::new(2));
    let run = |store: PostgresStore, reversed: bool| {
        let (keys, start) = (keys.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            for n in 0..150u64 {
                let mut batch: Vec<ActorCommit> = keys
                    .iter()
                    .map(|(k, e)| {
                        ActorCommit::new(k.clone(), *e)
                            .clear(Space::OPS)
                            .put(Space::OPS, n, vec![u8::from(reversed); 32])
                            .put(Space::SNAPSHOT, 0, n.to_le_bytes().to_vec())
                            .raise_floor(n)
                    })
                    .collect();
                if reversed {
                    batch.reverse();
                }
                store
                    .commit(&batch)
                    .map_err(|e| format!("batch {n}: {e}"))?;
            }
            Ok::<(), String>(())
        })
    };
    let (ta, tb) = (run(a, false), run(b, true));
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!((ra.clone(), rb.clone()), (Ok(()), Ok(())), "{ra:?} {rb:?}");
    let check = PostgresStore::open(options).unwrap();
    for (k, _) in &keys {
        let rows = check.read(k, Some(Space::OPS), 0..=u64::MAX).unwrap();
        assert_eq!(rows.len(), 1, "each batch cleared the ops of {k}: {rows:?}");
        assert_eq!(rows[0].id, 149);
        assert_eq!(marks_of(&check, k).floor, 149);
    }
}

// ----------------------------------------------------------------------------------------
// The folding of writes

/// A tiny deterministic generator (xorshift64*), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random batches (several commits of one key in a batch, puts and range deletes, reversed
/// ranges, ids at 0, 2^63 and u64::MAX) leave exactly the rows that applying every write one
/// by one, in order, leaves.
#[test]
fn folded_batches_leave_the_rows_of_their_writes_applied_in_order() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let store = PostgresStore::open(server.options()).unwrap();
    let keys: Vec<ActorKey> = ["a", "b", ""]
        .iter()
        .map(|k| ActorKey::new("fold", *k))
        .collect();
    let epochs: Vec<u64> = keys
        .iter()
        .map(|k| store.open_actor(k, &[]).unwrap().epoch)
        .collect();
    let ids = [0, 1, 2, 3, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
    let spaces = [Space::OPS, Space::new(3), Space::new(255)];
    let mut model: BTreeMap<(usize, Space, u64), Vec<u8>> = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300u32 {
        let mut batch = Vec::new();
        for _ in 0..=rng.below(4) {
            let ki = rng.below(keys.len() as u64) as usize;
            let mut c = ActorCommit::new(keys[ki].clone(), epochs[ki]);
            for w in 0..=rng.below(6) {
                let space = spaces[rng.below(spaces.len() as u64) as usize];
                if rng.below(3) == 0 {
                    let (first, last) = (
                        ids[rng.below(ids.len() as u64) as usize],
                        ids[rng.below(ids.len() as u64) as usize],
                    );
                    c.writes.push(RowWrite::Delete { space, first, last });
                    model.retain(|(k, s, id), _| {
                        !(*k == ki && *s == space && (first..=last).contains(id))
                    });
                } else {
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    let bytes = format!("{round}.{w}").into_bytes();
                    model.insert((ki, space, id), bytes.clone());
                    c = c.put(space, id, bytes);
                }
            }
            batch.push(c);
        }
        store
            .commit(&batch)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (ki, k) in keys.iter().enumerate() {
            let stored: Vec<(Space, u64, Vec<u8>)> = store
                .read(k, None, 0..=u64::MAX)
                .unwrap()
                .into_iter()
                .map(|r| (r.space, r.id, r.bytes))
                .collect();
            let want: Vec<(Space, u64, Vec<u8>)> = model
                .iter()
                .filter(|((k, _, _), _)| *k == ki)
                .map(|((_, s, id), b)| (*s, *id, b.clone()))
                .collect();
            assert_eq!(stored, want, "round {round}, key {k:?}, batch {batch:?}");
        }
    }
}

// ----------------------------------------------------------------------------------------
// Numbers at their edges

/// Epochs and floors on both sides of the sign bit of the stored bigint: each open takes the
/// next epoch across 2^63, the fence compares them as unsigned numbers, floors keep
/// u64::MAX.
#[test]
fn epochs_and_floors_cross_the_sign_bit_of_the_stored_numbers() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let store = PostgresStore::open(server.options()).unwrap();
    let k = ActorKey::new("edge", "sign");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    let mut c = ActorCommit::new(k.clone(), e);
    c.raise = Marks {
        epoch: (1 << 63) - 2,
        floor: (1 << 63) - 1,
    };
    store.commit(&[c]).unwrap();
    assert_eq!(store.open_actor(&k, &[]).unwrap().epoch, (1 << 63) - 1);
    let l = store.open_actor(&k, &[]).unwrap();
    assert_eq!((l.epoch, l.floor), (1 << 63, (1 << 63) - 1));
    let stale = ActorCommit::new(k.clone(), (1 << 63) - 1).put(Space::OPS, 1, b"x".to_vec());
    match store.commit(&[stale]) {
        Err(StoreError::Fenced(f)) => {
            assert_eq!((f[0].epoch, f[0].current), ((1 << 63) - 1, 1 << 63))
        }
        other => panic!("a commit one epoch below 2^63 is stale, got {other:?}"),
    }
    store
        .commit(&[ActorCommit::new(k.clone(), 1 << 63)
            .put(Space::OPS, u64::MAX, b"top".to_vec())
            .raise_floor(u64::MAX)])
        .unwrap();
    let mut c = ActorCommit::new(k.clone(), 1 << 63);
    c.raise.epoch = u64::MAX - 1;
    store.commit(&[c]).unwrap();
    let l = store.open_actor(&k, &[Space::OPS]).unwrap();
    assert_eq!((l.epoch, l.floor), (u64::MAX, u64::MAX));
    assert_eq!(l.ops(), vec![(u64::MAX, b"top".to_vec())]);
    store
        .commit(&[ActorCommit::new(k.clone(), u64::MAX).put(Space::SNAPSHOT, 0, b"s".to_vec())])
        .expect("the instance holding the last epoch still writes");
}

/// An exhausted epoch (u64::MAX) makes the next open a typed error that names the actor key,
/// as `persist_core::next_epoch` words it for the other backends; the marks stay as they were.
#[test]
fn an_exhausted_epoch_is_a_typed_error_naming_the_key_and_changes_nothing() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let store = PostgresStore::open(server.options()).unwrap();
    let k = ActorKey::new("edge", "exhausted-key");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    let mut c = ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"kept".to_vec());
    c.raise = Marks {
        epoch: u64::MAX,
        floor: 7,
    };
    store.commit(&[c]).unwrap();
    let err = match no_panic(|| store.open_actor(&k, &Space::RECORD)) {
        Ok(Err(e)) => e,
        Ok(Ok(l)) => panic!("an open past u64::MAX returned epoch {}", l.epoch),
        Err(p) => panic!("an open past u64::MAX panicked: {p}"),
    };
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(
        marks_of(&store, &k),
        Marks {
            epoch: u64::MAX,
            floor: 7
        },
        "nothing changed"
    );
    assert_eq!(
        store.read(&k, Some(Space::SNAPSHOT), 0..=0).unwrap()[0].bytes,
        b"kept"
    );
    assert!(
        err.to_string().contains(&k.to_string()),
        "the error names the actor key `{k}`: {err}"
    );
}

// ----------------------------------------------------------------------------------------
// Values this crate never writes (P8: an error, never a panic, never a default)

/// Rows whose space is out of a u8's range, keys and namespaces that are not UTF-8: each read
/// that meets one is a typed error (Corrupt), no call panics, and nothing is overwritten.
#[test]
fn foreign_rows_in_the_tables_are_typed_errors_not_panics() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let store = PostgresStore::open(options).unwrap();
    let k = ActorKey::new("foreign", "k");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    store
        .commit(&[ActorCommit::new(k.clone(), e)
            .put(Space::SNAPSHOT, 0, b"mine".to_vec())
            .put(Space::OPS, 1, b"op".to_vec())])
        .unwrap();
    let mut a = admin(server);
    let rows = format!("\"{schema}\".ractor_persist_rows");
    let marks = format!("\"{schema}\".ractor_persist_marks");
    let (ns, key) = (b"foreign".as_slice(), b"k".as_slice());
    for space in [-1i16, 256, i16::MAX, i16::MIN] {
        a.execute(
            &format!("INSERT INTO {rows} VALUES ($1, $2, $3, $4, $5)"),
            &[&ns, &key, &space, &enc(5), &b"x".as_slice()],
        )
        .unwrap();
    }
    // A key and a namespace that are not UTF-8.
    a.execute(
        &format!("INSERT INTO {rows} VALUES ($1, $2, 0, $3, $4)"),
        &[&ns, &b"\xff\xfe".as_slice(), &enc(0), &b"x".as_slice()],
    )
    .unwrap();
    a.execute(
        &format!("INSERT INTO {marks} VALUES ($1, $2, $3, $4)"),
        &[&b"\xc3(".as_slice(), &key, &enc(3), &enc(0)],
    )
    .unwrap();

    let corrupt = |what: &str, r: Result<Result<Vec<String>, StoreError>, String>| match r {
        Ok(Err(StoreError::Corrupt { .. })) => {}
        other => panic!("{what}: expected a Corrupt error, got {other:?}"),
    };
    corrupt(
        "read of every space",
        no_panic(|| {
            store
                .read(&k, None, 0..=u64::MAX)
                .map(|r| r.iter().map(|r| format!("{r:?}")).collect())
        }),
    );
    corrupt(
        "keys of a namespace holding a key that is not UTF-8",
        no_panic(|| store.keys("foreign", Space::SNAPSHOT)),
    );
    corrupt(
        "scan of a store holding a namespace that is not UTF-8",
        no_panic(|| {
            store
                .scan()
                .map(|r| r.iter().map(|(k, _)| k.to_string()).collect())
        }),
    );
    // The spaces that are ours still read, and a commit goes through untouched by the rest.
    let l = no_panic(|| store.open_actor(&k, &[Space::SNAPSHOT, Space::OPS]))
        .expect("no panic")
        .expect("the record's own spaces read");
    assert_eq!(l.snapshot(), Some(&b"mine"[..]));
    store
        .commit(&[ActorCommit::new(k.clone(), l.epoch).put(Space::OPS, 2, b"op2".to_vec())])
        .unwrap();
    let left: i64 = a
        .query_one(
            &format!("SELECT count(*) FROM {rows} WHERE space NOT BETWEEN 0 AND 255 OR key = $1"),
            &[&b"\xff\xfe".as_slice()],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 5, "nothing of the foreign rows was overwritten");
}

/// NULLs where this crate always writes a value (a column whose NOT NULL someone dropped):
/// every call that meets one is an error, never a panic and never a default.
#[test]
fn nulls_in_the_tables_are_errors_not_panics() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let store = PostgresStore::open(options.clone()).unwrap();
    let (k1, k2, k3) = (
        ActorKey::new("null", "bytes"),
        ActorKey::new("null", "floor"),
        ActorKey::new("null", "epoch"),
    );
    let mut epochs = Vec::new();
    for k in [&k1, &k2, &k3] {
        let e = store.open_actor(k, &[]).unwrap().epoch;
        store
            .commit(&[ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"s".to_vec())])
            .unwrap();
        epochs.push(e);
    }
    let mut a = admin(server);
    let (rows, marks, meta) = (
        format!("\"{schema}\".ractor_persist_rows"),
        format!("\"{schema}\".ractor_persist_marks"),
        format!("\"{schema}\".ractor_persist_meta"),
    );
    a.batch_execute(&format!(
        "ALTER TABLE {rows} ALTER COLUMN bytes DROP NOT NULL;
         ALTER TABLE {marks} ALTER COLUMN epoch DROP NOT NULL;
         ALTER TABLE {marks} ALTER COLUMN floor DROP NOT NULL;
         ALTER TABLE {meta} ALTER COLUMN value DROP NOT NULL;"
    ))
    .unwrap();
    let ns = b"null".as_slice();
    a.execute(
        &format!("INSERT INTO {rows} VALUES ($1, $2, 1, $3, NULL)"),
        &[&ns, &b"bytes".as_slice(), &enc(4)],
    )
    .unwrap();
    a.execute(
        &format!("UPDATE {marks} SET floor = NULL WHERE ns = $1 AND key = $2"),
        &[&ns, &b"floor".as_slice()],
    )
    .unwrap();
    a.execute(
        &format!("UPDATE {marks} SET epoch = NULL WHERE ns = $1 AND key = $2"),
        &[&ns, &b"epoch".as_slice()],
    )
    .unwrap();

    let mut outcomes: Vec<(&str, Result<bool, String>)> = Vec::new();
    outcomes.push((
        "open_actor of a key with a NULL row",
        no_panic(|| store.open_actor(&k1, &Space::RECORD).is_err()),
    ));
    outcomes.push((
        "read of a key with a NULL row",
        no_panic(|| store.read(&k1, None, 0..=u64::MAX).is_err()),
    ));
    outcomes.push((
        "open_actor of a key whose floor is NULL",
        no_panic(|| store.open_actor(&k2, &[]).is_err()),
    ));
    outcomes.push((
        "commit of a key whose epoch is NULL",
        no_panic(|| {
            store
                .commit(&[ActorCommit::new(k3.clone(), epochs[2]).put(
                    Space::SNAPSHOT,
                    0,
                    b"t".to_vec(),
                )])
                .is_err()
        }),
    ));
    outcomes.push((
        "scan of a store with a NULL floor",
        no_panic(|| store.scan().is_err()),
    ));
    a.execute(
        &format!("UPDATE {meta} SET value = NULL WHERE name = 'schema_version'"),
        &[],
    )
    .unwrap();
    outcomes.push((
        "open of a store whose schema version is NULL",
        no_panic(|| PostgresStore::open(options.clone()).is_err()),
    ));
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| *o != Ok(true))
        .map(|(what, o)| match o {
            Ok(_) => format!("{what}: succeeded (a default for a NULL)"),
            Err(p) => format!("{what}: panicked: {p}"),
        })
        .collect();
    assert!(
        bad.is_empty(),
        "a NULL must be an error, never a panic or a default:\n{}",
        bad.join("\n")
    );
}

// ----------------------------------------------------------------------------------------
// Servers that stall, connections that go away

/// A server that accepts the TCP connection and never answers (a stuck postmaster, a pooler
/// waiting on a dead backend, a listen queue nobody accepts from): the open must fail after
/// about `connect_timeout`, not hang.
#[test]
fn a_server_that_accepts_and_never_answers_fails_the_open_instead_of_hanging() {
    if TestCluster::shared().is_none() {
        return;
    }
    // Never accepted: the kernel completes the handshake, nobody ever reads or writes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = PostgresOptions::new(&format!(
        "host=127.0.0.1 port={port} user=app password=pw dbname=app"
    ))
    .unwrap()
    .connect_timeout(Duration::from_secs(2))
    .statement_timeout(Duration::from_secs(2))
    .reconnect_for(Duration::ZERO);
    let open = std::thread::spawn(move || PostgresStore::open(options).map(drop));
    let finished = finished_within(&open, Duration::from_secs(60));
    // Closing the listener resets the connection, which ends the open either way.
    drop(listener);
    assert!(
        finished,
        "the open still waits 60 s after a connect_timeout of 2 s: it hangs on a server \
         that never answers"
    );
    let r = open.join().unwrap();
    assert!(
        matches!(r, Err(StoreError::Backend { .. })),
        "an unreachable server: {r:?}"
    );
}

/// Sends SIGCONT to a stopped server process when dropped, whatever the test did.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// The pid of the server process serving the connection named `application_name`.
fn backend_of(a: &mut postgres::Client, application_name: &str) -> i32 {
    let rows = a
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "one connection of the store");
    rows[0].get(0)
}

/// The server process of the store's connection stops answering (a backend stuck in I/O, a
/// frozen host that still acknowledges TCP): a commit must fail with `Interrupted` after
/// about the statement timeout, not hang the committer (and with it every actor) forever.
#[test]
fn a_commit_to_a_server_process_that_stops_answering_fails_instead_of_hanging() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    if server.port().is_none() {
        eprintln!("SKIPPED: the server (PERSIST_PG_URL) is not a process of this machine");
        return;
    }
    let name = format!("adv-stop-{}", std::process::id());
    let options = named_options(server, &name)
        .statement_timeout(Duration::from_secs(2))
        .reconnect_for(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2));
    let store = PostgresStore::open(options).unwrap();
    let k = ActorKey::new("stall", "k");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    let mut a = admin(server);
    let pid = backend_of(&mut a, &name);
    let stopped = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success(), "SIGSTOP to the server process {pid}");
    let resume = Resume(pid);
    let commit = std::thread::spawn(move || {
        store.commit(&[ActorCommit::new(k, e).put(Space::SNAPSHOT, 0, b"s".to_vec())])
    });
    let finished = finished_within(&commit, Duration::from_secs(60));
    drop(resume);
    assert!(
        finished,
        "the commit still waits 60 s after a statement timeout of 2 s: it hangs on a server \
         process that stopped answering"
    );
    let r = commit.join().unwrap();
    assert!(
        matches!(r, Err(StoreError::Interrupted { .. })),
        "a stalled server is an interrupted call: {r:?}"
    );
}

/// The server closes the store's connection while it is idle (a server restart, a failover,
/// `idle_session_timeout`, a firewall dropping idle connections; here
/// `pg_terminate_backend`). Nothing was in flight, so nothing is ambiguous: the next call
/// must connect again and succeed ("the next call connects again"), not fail its actors.
#[test]
fn a_connection_closed_by_the_server_while_idle_does_not_fail_the_next_commit() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let name = format!("adv-idle-{}", std::process::id());
    let options = named_options(server, &name).reconnect_for(Duration::from_secs(10));
    let store = PostgresStore::open(options).unwrap();
    let k = ActorKey::new("idle", "k");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    let mut a = admin(server);
    let pid = backend_of(&mut a, &name);
    let killed: bool = a
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(killed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: i64 = a
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the server process is gone");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = store.commit(&[ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"s".to_vec())]);
    let second =
        store.commit(&[ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"t".to_vec())]);
    assert!(second.is_ok(), "the call after connects again: {second:?}");
    assert!(
        r.is_ok(),
        "a commit after the server closed the idle connection failed although nothing of it \
         was ever sent: {r:?}"
    );
}

// ----------------------------------------------------------------------------------------
// Options, privileges, concurrent opens

/// A statement timeout longer than PostgreSQL's largest (2^31 - 1 ms, about 24.8 days), such
/// as `Duration::MAX` for "never": the store opens (with the timeout capped), or refuses with
/// a typed error; it is not an "interrupted" call that "may have landed".
#[test]
fn a_long_statement_timeout_opens_or_is_refused_as_a_typed_error() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    for timeout in [Duration::from_secs(40 * 24 * 3600), Duration::MAX] {
        let r = PostgresStore::open(server.options().statement_timeout(timeout)).map(drop);
        assert!(
            matches!(r, Ok(()) | Err(StoreError::Backend { .. })),
            "statement_timeout({timeout:?}): {r:?}"
        );
    }
}

/// The deployment the docs describe (`.schema("actors")`): the DBA creates the schema and
/// gives it to the application's role, which has no CREATE on the database. The store must
/// open there: the schema exists, so there is nothing to create but the tables.
#[test]
fn a_store_opens_in_an_existing_schema_its_role_owns_without_create_on_the_database() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let role = format!("r_{schema}");
    let mut a = admin(server);
    if let Err(e) = a.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}';
         CREATE SCHEMA {schema} AUTHORIZATION {role};"
    )) {
        eprintln!("SKIPPED: the admin connection cannot create a role: {e}");
        return;
    }
    let mut config: tokio_postgres::Config = server.params().parse().unwrap();
    config.user(&role).password(format!("pw-{role}"));
    let r = PostgresStore::open(PostgresOptions::from_config(config).schema(schema.as_str()))
        .and_then(|s| {
            let k = ActorKey::new("priv", "k");
            let e = s.open_actor(&k, &[])?.epoch;
            s.commit(&[ActorCommit::new(k, e).put(Space::SNAPSHOT, 0, b"s".to_vec())])
        });
    let _ = a.batch_execute(&format!("DROP SCHEMA {schema} CASCADE; DROP ROLE {role};"));
    assert!(
        r.is_ok(),
        "a role owning the schema could not open a store in it: {r:?}"
    );
}

/// Many nodes opening a new store at once (a fresh deployment): every open succeeds, the
/// tables are created once, and each store works. Twice: with the schema missing, and with
/// the schema there but no tables.
#[test]
fn concurrent_opens_of_a_new_store_all_succeed() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    for precreate in [false, true] {
        let options = server.options();
        let schema = options.schema_name().to_owned();
        if precreate {
            admin(server)
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .unwrap();
        }
        const N: usize = 12;
        let start = Arc::new(Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let (options, start) = (options.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let store = PostgresStore::open(options).map_err(|e| e.to_string())?;
                    let k = ActorKey::new("open", format!("n{i}"));
                    let e = store.open_actor(&k, &[]).map_err(|e| e.to_string())?.epoch;
                    store
                        .commit(&[ActorCommit::new(k, e).put(Space::SNAPSHOT, 0, vec![i as u8])])
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<Result<(), String>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "schema created beforehand: {precreate}; {} of {N} concurrent opens failed: {failed:?}",
            failed.len()
        );
        let check = PostgresStore::open(options).unwrap();
        assert_eq!(check.keys("open", Space::SNAPSHOT).unwrap().len(), N);
        let meta: i64 = admin(server)
            .query_one(
                &format!("SELECT count(*) FROM \"{schema}\".ractor_persist_meta"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(meta, 2, "the format marker and the version, once each");
    }
}

// ----------------------------------------------------------------------------------------
// Limits of the protocol

/// One commit of 16 rows of MAX_ROW_LEN bytes (an actor whose message produced 16 large
/// operations): about 1 GiB, past PostgreSQL's largest protocol message and largest value,
/// which the folded put (all of a batch's bytes in one `bytea[]` parameter) runs into. The
/// contract sets no limit on a batch: it must be written whole.
#[test]
fn a_commit_of_sixteen_largest_rows_is_written_whole() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let store = PostgresStore::open(server.options()).unwrap();
    let k = ActorKey::new("huge", "k");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    let mut c = ActorCommit::new(k.clone(), e);
    for id in 0..16u64 {
        let mut row = vec![id as u8; MAX_ROW_LEN];
        row[0] = 0xa5;
        c = c.put(Space::OPS, id, row);
    }
    let r = store.commit(&[c]);
    assert!(
        r.is_ok(),
        "a commit of 16 rows of MAX_ROW_LEN bytes failed: {:?}",
        r.map_err(|e| e.to_string())
    );
    for id in [0u64, 15] {
        let rows = store.read(&k, Some(Space::OPS), id..=id).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].bytes.len(), MAX_ROW_LEN);
        assert_eq!((rows[0].bytes[0], rows[0].bytes[1]), (0xa5, id as u8));
    }
}

// ----------------------------------------------------------------------------------------
// Keys, and what errors say

/// Keys are any UTF-8, whatever their length (the contract sets none; the embedded backends
/// take any). A long key that does not compress (here 3 to 100 KB of varied characters)
/// opens, commits, reads back and lists.
#[test]
fn a_long_incompressible_key_round_trips_or_is_refused_past_the_limit() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let store = PostgresStore::open(server.options()).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut failed = Vec::new();
    for len in [1_000usize, 3_000, 10_000, 100_000] {
        let mut text = String::new();
        while text.len() < len {
            // Letters of several scripts, drawn at random: nothing for pglz to find.
            let c = char::from_u32(0x4e00 + rng.below(0x5000) as u32).unwrap();
            text.push(c);
        }
        let k = ActorKey::new("long", text.clone());
        let r = (|| {
            let e = store.open_actor(&k, &[])?.epoch;
            store.commit(&[ActorCommit::new(k.clone(), e)
                .put(Space::SNAPSHOT, 0, b"s".to_vec())
                .put(Space::OPS, 1, b"o".to_vec())])?;
            let l = store.open_actor(&k, &Space::RECORD)?;
            Ok::<_, StoreError>((l.snapshot().map(<[u8]>::to_vec), l.ops().len()))
        })();
        // Up to MAX_KEY_BYTES a key round-trips; past it, the load refuses it with a typed
        // error that names the limit, and nothing is written.
        let within = text.len() + "long".len() <= persist_postgres::MAX_KEY_BYTES;
        match r {
            Ok((Some(s), 1)) if s == b"s" && within => {}
            Err(StoreError::Unsupported { operation, .. })
                if !within && operation.contains("2,000 bytes") =>
            {
                assert!(
                    marks_of(&store, &k) == Marks::default(),
                    "a refused key left marks"
                );
            }
            other => failed.push(format!("a key of {} bytes: {other:?}", text.len())),
        }
    }
    assert!(
        failed.is_empty(),
        "keys round-trip up to the documented limit and are refused past it, yet:\n{}",
        failed.join("\n")
    );
}

/// An error of the server reaches the actors as text (the committer hands each actor of a
/// failed batch the error's `to_string()`): that text must say what the server said, not
/// only "db error" or "error connecting to server".
#[test]
fn the_text_of_an_error_says_what_the_server_said() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server
        .options()
        .statement_timeout(Duration::from_millis(500));
    let schema = options.schema_name().to_owned();
    let store = PostgresStore::open(options).unwrap();
    let k = ActorKey::new("text", "k");
    let e = store.open_actor(&k, &[]).unwrap().epoch;
    // Another session holds the key's marks row: the commit waits past its timeout.
    let mut a = admin(server);
    let mut hold = a.transaction().unwrap();
    hold.execute(
        &format!(
            "SELECT 1 FROM \"{schema}\".ractor_persist_marks WHERE ns = $1 AND key = $2 FOR UPDATE"
        ),
        &[&b"text".as_slice(), &b"k".as_slice()],
    )
    .unwrap();
    let err = store
        .commit(&[ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"s".to_vec())])
        .expect_err("a commit waiting past its statement timeout fails");
    hold.rollback().unwrap();
    assert!(
        matches!(err, StoreError::Interrupted { .. }),
        "a timed-out statement is an interrupted call: {err:?}"
    );
    let timed_out = err.to_string();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = PostgresStore::open(
        PostgresOptions::new(&format!("host=127.0.0.1 port={port} user=app dbname=app"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2)),
    )
    .unwrap_err()
    .to_string();
    let mut vague = Vec::new();
    if !timed_out.contains("statement timeout") {
        vague.push(format!("a statement timeout reads: {timed_out}"));
    }
    if !refused.to_lowercase().contains("refused") {
        vague.push(format!("a refused connection reads: {refused}"));
    }
    assert!(vague.is_empty(), "{}", vague.join("\n"));
}

/// A URL whose password holds an unescaped `@` (`postgresql://app:hunter@s3cr3t@host/db`, a
/// common slip): the client cuts the credentials at the first `@`, so the rest of the
/// password becomes part of the "host", which the store's name and every error then print.
/// The password, or any part of it, must never appear: refuse such a URL, or name the
/// server without it.
#[test]
fn a_password_with_an_unescaped_at_sign_never_appears_in_names_or_errors() {
    if TestCluster::shared().is_none() {
        return;
    }
    let url = "postgresql://app:hunter@s3cr3t@127.0.0.1:1/app";
    let shown = match PostgresOptions::new(url) {
        Err(e) => e.to_string(),
        Ok(o) => {
            let server = o.server();
            let debug = format!("{o:?}");
            let open = PostgresStore::open(o.connect_timeout(Duration::from_secs(2)))
                .map(|s| s.name().to_owned())
                .unwrap_or_else(|e| e.to_string());
            format!("{server}\n{debug}\n{open}")
        }
    };
    assert!(
        !shown.contains("s3cr3t"),
        "a part of the password is shown:\n{shown}"
    );
}
