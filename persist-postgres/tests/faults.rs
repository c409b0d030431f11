//! Faults of a server database, at the store's seam: a connection cut around COMMIT (an
//! ambiguous commit: all of the batch or none of it, never a success), and the server
//! crashed (`pg_ctl stop -m immediate`) and started again under load (no acknowledged commit
//! lost, the store connects again).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use persist_core::{ActorCommit, ActorKey, Space, Store, StoreError};
use persist_postgres::{Cut, CuttingProxy, PostgresOptions, PostgresStore, TestCluster};

fn key(k: &str) -> ActorKey {
    ActorKey::new("faults", k)
}

/// A proxy to `server`.
fn proxy_to(server: &TestCluster) -> CuttingProxy {
    let config: tokio_postgres::Config = server.params().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(_) => panic!("the proxy needs a TCP server"),
    };
    CuttingProxy::start(&host, config.get_ports().first().copied().unwrap_or(5432)).unwrap()
}

/// Options for `server`'s database through `proxy`, in `schema`.
fn through(proxy: &CuttingProxy, server: &TestCluster, schema: &str) -> PostgresOptions {
    server.options_via(proxy.port(), schema)
}

/// A batch of two actors, each with a snapshot and two ops.
fn batch(a: &ActorKey, ea: u64, b: &ActorKey, eb: u64, n: u8) -> Vec<ActorCommit> {
    vec![
        ActorCommit::new(a.clone(), ea)
            .put(Space::SNAPSHOT, 0, vec![n; 16])
            .put(Space::OPS, u64::from(n) * 2, vec![n])
            .put(Space::OPS, u64::from(n) * 2 + 1, vec![n]),
        ActorCommit::new(b.clone(), eb)
            .put(Space::SNAPSHOT, 0, vec![n; 8])
            .put(Space::OPS, u64::from(n) * 2, vec![n]),
    ]
}

/// Whether the batch `n` is in the store: all of it (true), none of it (false), or a panic.
fn landed(s: &dyn Store, a: &ActorKey, b: &ActorKey, n: u8) -> bool {
    let ops = |k: &ActorKey| s.read(k, Some(Space::OPS), 0..=u64::MAX).unwrap();
    let snap = |k: &ActorKey| s.read(k, Some(Space::SNAPSHOT), 0..=0).unwrap();
    let parts = [
        snap(a).first().is_some_and(|r| r.bytes == vec![n; 16]),
        ops(a).iter().filter(|r| r.bytes == vec![n]).count() == 2,
        snap(b).first().is_some_and(|r| r.bytes == vec![n; 8]),
        ops(b).iter().filter(|r| r.bytes == vec![n]).count() == 1,
    ];
    assert!(
        parts.iter().all(|p| *p) || parts.iter().all(|p| !*p),
        "batch {n} landed in part: {parts:?}"
    );
    parts[0]
}

#[test]
fn a_connection_cut_around_commit_fails_the_batch_which_lands_whole_or_not_at_all() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let schema = server.options();
    let proxy = proxy_to(server);
    let store = PostgresStore::open(through(&proxy, server, schema.schema_name())).unwrap();
    let (a, b) = (key("a"), key("b"));
    let ea = store.open_actor(&a, &[]).unwrap().epoch;
    let eb = store.open_actor(&b, &[]).unwrap().epoch;
    // Batch 1 passes; batch 2's COMMIT never reaches the server; batch 3's reaches it and
    // the answer never comes back; batch 4 passes on a new connection.
    store.commit(&batch(&a, ea, &b, eb, 1)).unwrap();
    let mut outcomes = Vec::new();
    for (n, cut) in [(2, Cut::BeforeCommit), (3, Cut::AfterCommit)] {
        proxy.arm(cut);
        let e = store
            .commit(&batch(&a, ea, &b, eb, n))
            .expect_err("a commit whose connection was cut never succeeds");
        assert!(
            matches!(e, StoreError::Interrupted { .. }),
            "a lost connection is an interrupted call, not a poisoning failure: {e}"
        );
        assert!(proxy.fired(), "the proxy cut batch {n}'s connection");
        outcomes.push(e);
    }
    store.commit(&batch(&a, ea, &b, eb, 4)).unwrap();
    // A fresh store, on a direct connection, sees whole batches only.
    let check = PostgresStore::open(schema.clone()).unwrap();
    assert!(landed(&check, &a, &b, 4), "batch 4 is the last");
    let ops = check.read(&a, Some(Space::OPS), 0..=u64::MAX).unwrap();
    let ids: Vec<u64> = ops.iter().map(|r| r.id).collect();
    assert!(
        ids.contains(&2) && ids.contains(&8),
        "batches 1 and 4: {ids:?}"
    );
    assert!(
        !ids.contains(&4),
        "batch 2's COMMIT never reached the server, yet it landed: {ids:?}"
    );
    // Batch 3's COMMIT reached the server: whether it landed is the server's to say, but it
    // is all or nothing (`landed` panics on a part).
    let three = ids.contains(&6);
    assert_eq!(ids.contains(&7), three, "batch 3 landed in part: {ids:?}");
    let b_ops: Vec<u64> = check
        .read(&b, Some(Space::OPS), 0..=u64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        b_ops.contains(&6),
        three,
        "batch 3 landed in part: {b_ops:?}"
    );
    println!(
        "ambiguous commit: cut before COMMIT -> error, not landed; cut after COMMIT -> error, landed: {three}"
    );
}

#[test]
fn a_server_crash_under_load_loses_no_acknowledged_commit() {
    if TestCluster::shared().is_none() {
        return;
    }
    let server = match TestCluster::start() {
        Ok(s) => s,
        Err(e) => panic!("a private server for the crash test: {e}"),
    };
    let options = server.options().reconnect_for(Duration::from_secs(60));
    const WRITERS: usize = 8;
    const BEFORE: u64 = 40;
    const AFTER: u64 = 40;
    let acked: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let failed = Arc::new(AtomicU64::new(0));
    let crashed = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS + 1));
    // Opened here, so that a store that cannot open fails the test instead of leaving the
    // barrier waiting.
    let stores: Vec<(PostgresStore, ActorKey, u64)> = (0..WRITERS)
        .map(|w| {
            let store = PostgresStore::open(options.clone()).unwrap();
            let k = key(&format!("w{w}"));
            let epoch = store.open_actor(&k, &[]).unwrap().epoch;
            (store, k, epoch)
        })
        .collect();
    let threads: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(w, (store, k, epoch))| {
            let (acked, failed, crashed, start) = (
                acked[w].clone(),
                failed.clone(),
                crashed.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut next = 1u64;
                // Each commit writes the counter `next`; a failed one is tried again with the
                // same value (the store may or may not hold it).
                while !(crashed.load(Ordering::SeqCst) && next > BEFORE + AFTER) {
                    let c = ActorCommit::new(k.clone(), epoch).put(
                        Space::SNAPSHOT,
                        0,
                        next.to_be_bytes().to_vec(),
                    );
                    match store.commit(&[c]) {
                        Ok(()) => {
                            acked.store(next, Ordering::SeqCst);
                            next += 1;
                        }
                        Err(StoreError::Interrupted { .. }) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("a crash is an interrupted call, not {e}"),
                    }
                }
            })
        })
        .collect();
    start.wait();
    // Crash once every writer has had commits acknowledged, then start the server again.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < BEFORE / 2) {
        if threads.iter().any(|t| t.is_finished()) {
            break; // a writer failed: its join below says why
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writers made no progress"
        );
        std::thread::yield_now();
    }
    server.crash().unwrap();
    crashed.store(true, Ordering::SeqCst);
    server.start_again().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let check = PostgresStore::open(options).unwrap();
    let mut lost = 0;
    let mut total = 0;
    for (w, a) in acked.iter().enumerate() {
        let acked = a.load(Ordering::SeqCst);
        total += acked;
        let row = check
            .read(&key(&format!("w{w}")), Some(Space::SNAPSHOT), 0..=0)
            .unwrap();
        let stored = u64::from_be_bytes(row[0].bytes.as_slice().try_into().unwrap());
        if stored < acked {
            lost += acked - stored;
        }
    }
    println!(
        "server crash under load: {WRITERS} writers, acknowledged {total}, lost {lost}, failed during the crash {}",
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(lost, 0, "acknowledged commits were lost");
    assert!(failed.load(Ordering::Relaxed) > 0 || total >= WRITERS as u64 * (BEFORE + AFTER));
}

#[test]
fn bad_input_names_the_server_and_writes_nothing() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let o = server.options();
    let mut admin = postgres::Client::connect(&server.params(), postgres::NoTls).unwrap();
    let sch = o.schema_name().to_owned();
    admin
        .batch_execute(&format!("CREATE SCHEMA {sch}"))
        .unwrap();
    // Another application's table of the store's name.
    admin
        .batch_execute(&format!(
            "CREATE TABLE {sch}.ractor_persist_rows (id serial PRIMARY KEY, note text)"
        ))
        .unwrap();
    let e = PostgresStore::open(o.clone()).unwrap_err().to_string();
    assert!(e.contains("incomplete"), "{e}");
    let tables = |admin: &mut postgres::Client| -> Vec<String> {
        admin
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
                &[&sch],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(
        tables(&mut admin),
        ["ractor_persist_rows"],
        "nothing written"
    );
    // All three names, one of them another application's.
    admin
        .batch_execute(&format!(
            "CREATE TABLE {sch}.ractor_persist_meta (name text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE {sch}.ractor_persist_marks (ns bytea, key bytea, epoch bigint, floor bigint)"
        ))
        .unwrap();
    let e = PostgresStore::open(o.clone()).unwrap_err().to_string();
    assert!(e.contains("is not a ractor-persist table"), "{e}");
    assert!(
        e.contains("ractor_persist_rows") || e.contains("ractor_persist_marks"),
        "names a foreign table: {e}"
    );
    admin
        .batch_execute(&format!("DROP SCHEMA {sch} CASCADE"))
        .unwrap();

    // A schema newer than the code.
    let store = PostgresStore::open(o.clone()).unwrap();
    let k = key("kept");
    let epoch = store.open_actor(&k, &[]).unwrap().epoch;
    store
        .commit(&[ActorCommit::new(k.clone(), epoch).put(Space::SNAPSHOT, 0, b"v".to_vec())])
        .unwrap();
    drop(store);
    admin
        .batch_execute(&format!(
            "UPDATE {sch}.ractor_persist_meta SET value = '2' WHERE name = 'schema_version'"
        ))
        .unwrap();
    let e = PostgresStore::open(o.clone()).unwrap_err().to_string();
    assert!(
        e.contains("schema version 2") && e.contains("up to version 1"),
        "{e}"
    );
    admin
        .batch_execute(&format!(
            "UPDATE {sch}.ractor_persist_meta SET value = '1' WHERE name = 'schema_version'"
        ))
        .unwrap();
    let store = PostgresStore::open(o.clone()).unwrap();
    assert_eq!(
        store.read(&k, None, 0..=u64::MAX).unwrap()[0].bytes,
        b"v",
        "nothing stored was lost"
    );

    // A wrong password: the server and the user are named, the password is not.
    let mut config: tokio_postgres::Config = server.params().parse().unwrap();
    config.password("not-the-password-x7");
    let e = PostgresStore::open(PostgresOptions::from_config(config).schema(sch.as_str()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused user `postgres`"), "{e}");
    assert!(e.contains("127.0.0.1"), "names the server: {e}");
    assert!(
        !e.contains("not-the-password-x7"),
        "never the password: {e}"
    );

    // An unreachable server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = PostgresStore::open(
        PostgresOptions::new(&format!(
            "host=127.0.0.1 port={port} user=app password=secret-y dbname=app"
        ))
        .unwrap()
        .connect_timeout(Duration::from_secs(2)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot reach") && e.contains(&format!("app@127.0.0.1:{port}/app")),
        "{e}"
    );
    assert!(!e.contains("secret-y"), "{e}");

    // A schema name that is not an identifier.
    let e = PostgresStore::open(o.clone().schema("x; DROP TABLE y"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema") && e.contains("refused"), "{e}");
}
