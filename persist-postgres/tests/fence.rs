//! The fence across nodes, at the moment it matters: a load on another node has taken the
//! next epoch (its transaction holds the key's marks row) but not committed yet, and this
//! node's commit of the older epoch arrives. The commit must wait for the load and then be
//! refused; passing would let its rows land after the new owner's load read the record.

use std::time::{Duration, Instant};

use persist_core::{ActorCommit, ActorKey, Space, Store, StoreError};
use persist_postgres::{PostgresStore, TestCluster};

#[test]
fn a_commit_racing_a_load_on_another_node_waits_for_it_and_is_fenced() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let a = PostgresStore::open(options.clone()).unwrap();
    let k = ActorKey::new("fence", "k");
    let epoch = a.open_actor(&k, &[]).unwrap().epoch;
    a.commit(&[ActorCommit::new(k.clone(), epoch).put(Space::SNAPSHOT, 0, b"a1".to_vec())])
        .unwrap();

    // Node B's load, held open after its first statement (the epoch it takes).
    let mut b = postgres::Client::connect(&server.params(), postgres::NoTls).unwrap();
    let mut load = b.transaction().unwrap();
    load.execute(
        &format!(
            "UPDATE {schema}.ractor_persist_marks SET epoch = epoch + 1 WHERE ns = $1 AND key = $2"
        ),
        &[&k.namespace().as_bytes(), &k.key().as_bytes()],
    )
    .unwrap();

    let commit = std::thread::spawn(move || {
        a.commit(&[ActorCommit::new(k.clone(), epoch).put(Space::SNAPSHOT, 0, b"a2".to_vec())])
    });
    // Wait until A's commit waits on the row lock, or has finished (which it must not).
    let mut watcher = postgres::Client::connect(&server.params(), postgres::NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if commit.is_finished() {
            break;
        }
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%FOR UPDATE%'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's commit neither waited nor finished"
        );
        std::thread::yield_now();
    }
    assert!(
        !commit.is_finished(),
        "A's commit went through while B's load held the key: {:?}",
        commit.join()
    );
    load.commit().unwrap();
    let result = commit.join().unwrap();
    match result {
        Err(StoreError::Fenced(f)) => {
            assert_eq!((f[0].epoch, f[0].current), (epoch, epoch + 1));
        }
        other => panic!("A's commit after B's load must be fenced, got {other:?}"),
    }
    let check = PostgresStore::open(options).unwrap();
    let snap = check
        .read(&ActorKey::new("fence", "k"), Some(Space::SNAPSHOT), 0..=0)
        .unwrap();
    assert_eq!(snap[0].bytes, b"a1", "nothing of the fenced commit landed");
}
