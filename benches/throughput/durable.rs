//! Durable messages on redb: the library, and the hand-written baseline, each on a fresh file.

use std::path::Path;
use std::sync::Arc;

use ractor::Actor;
use ractor_persist::{RedbStore, SpawnPersistent, Storage};
use redb::Database;

use crate::actors::{Acct, Msg, Naive, ROW_PAD};
use crate::measure::{Run, closed_loop, cpu_time, threads_cpu};

/// `actors` persistent actors on one `Storage`, each sending `per_actor` state-changing
/// messages (each pushes one op that `perform` reports `Done`).
pub async fn library(dir: &Path, actors: usize, per_actor: usize) -> Run {
    library_with(dir, actors, per_actor, Msg::Add).await
}

/// [`library`] with messages made by `msg`.
pub async fn library_with(
    dir: &Path,
    actors: usize,
    per_actor: usize,
    msg: fn(ractor::RpcReplyPort<u64>) -> Msg,
) -> Run {
    let path = dir.join(format!("library-{actors}.redb"));
    let storage = Storage::new(RedbStore::open(&path).expect("open the store"));
    let run = library_on(storage, actors, per_actor, msg).await;
    let _ = std::fs::remove_file(&path);
    run
}

/// `actors` persistent actors on `storage`, each sending `per_actor` messages made by `msg`
/// after one to warm up (each actor's first commit creates its snapshot); closes `storage`.
pub async fn library_on(
    storage: Storage,
    actors: usize,
    per_actor: usize,
    msg: fn(ractor::RpcReplyPort<u64>) -> Msg,
) -> Run {
    let mut refs = Vec::with_capacity(actors);
    for i in 0..actors {
        let (actor, _) = Acct::spawn_persistent(&storage, format!("a{i}"), ROW_PAD)
            .await
            .expect("spawn");
        refs.push(actor);
    }
    closed_loop(&refs, 1, msg).await;
    let before = storage.stats();
    let (cpu, committer) = (cpu_time(), threads_cpu("persist-commit"));
    let (secs, lat) = closed_loop(&refs, per_actor, msg).await;
    let (cpu, committer) = (cpu_time() - cpu, threads_cpu("persist-commit") - committer);
    let after = storage.stats();
    for actor in refs {
        actor.stop_and_wait(None, None).await.expect("stop");
    }
    storage.close().await.expect("close");
    let riders = after.riders - before.riders;
    Run {
        msgs: actors * per_actor,
        secs,
        lat,
        batches: after.batches - before.batches,
        commits: after.commits - before.commits - riders,
        riders,
        cpu,
        cpu_committer: committer,
    }
}

/// The same load on the hand-written baseline: one redb transaction per message.
pub async fn naive(dir: &Path, actors: usize, per_actor: usize) -> Run {
    let path = dir.join(format!("naive-{actors}.redb"));
    let db = Arc::new(Database::create(&path).expect("create the database"));
    let mut refs = Vec::with_capacity(actors);
    for i in 0..actors {
        let (actor, _) = Naive::spawn(None, Naive, (db.clone(), format!("a{i}")))
            .await
            .expect("spawn");
        refs.push(actor);
    }
    closed_loop(&refs, 1, Msg::Add).await;
    let cpu = cpu_time();
    let (secs, lat) = closed_loop(&refs, per_actor, Msg::Add).await;
    let cpu = cpu_time() - cpu;
    for actor in refs {
        actor.stop_and_wait(None, None).await.expect("stop");
    }
    drop(db);
    let _ = std::fs::remove_file(&path);
    Run {
        msgs: actors * per_actor,
        secs,
        lat,
        cpu,
        ..Run::default()
    }
}
