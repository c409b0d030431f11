//! What one message costs when nothing is written, and the message cycle's CPU cost.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use ractor::{Actor, ActorRef};
use ractor_persist::{MemoryStore, RedbStore, SpawnPersistent, Storage};

use crate::actors::{Account, Acct, Msg, Plain, ROW_PAD};
use crate::measure::{Run, closed_loop, cpu_time};

/// One persistent actor on redb: `changed` state-changing messages, then `unchanged`
/// messages that change nothing. Returns both runs and the commits made by the second.
pub async fn unchanged_vs_changed(dir: &Path, changed: usize, unchanged: usize) -> (Run, Run, u64) {
    let path = dir.join("unchanged.redb");
    let storage = Storage::new(RedbStore::open(&path).expect("open the store"));
    let (actor, _) = Acct::spawn_persistent(&storage, "one", ROW_PAD)
        .await
        .expect("spawn");
    let refs = [actor];
    closed_loop(&refs, 1, Msg::Add).await;
    let (secs, lat) = closed_loop(&refs, changed, Msg::Add).await;
    let changed = Run {
        msgs: changed,
        secs,
        lat,
        ..Run::default()
    };
    closed_loop(&refs, 100, Msg::Peek).await;
    let before = storage.stats();
    let (secs, lat) = closed_loop(&refs, unchanged, Msg::Peek).await;
    let after = storage.stats();
    let unchanged = Run {
        msgs: unchanged,
        secs,
        lat,
        ..Run::default()
    };
    let [actor] = refs;
    actor.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");
    let _ = std::fs::remove_file(&path);
    (changed, unchanged, after.commits - before.commits)
}

/// Wall seconds and CPU seconds (all threads) per message of one actor in a closed loop,
/// after a warm-up.
async fn per_msg(
    actor: &ActorRef<Msg>,
    n: usize,
    msg: fn(ractor::RpcReplyPort<u64>) -> Msg,
) -> PerMsg {
    let refs = [actor.clone()];
    closed_loop(&refs, (n / 10).max(10), msg).await;
    let cpu = cpu_time();
    let (secs, _) = closed_loop(&refs, n, msg).await;
    PerMsg {
        wall: secs / n as f64,
        cpu: (cpu_time() - cpu) / n as f64,
    }
}

/// Seconds per message: elapsed, and CPU time of the whole process.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerMsg {
    pub wall: f64,
    pub cpu: f64,
}

/// Seconds per call of `f`, run `n` times.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..(n / 10).max(10) {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// The message cycle on a state of `pad` bytes, per message, in seconds.
pub struct Cycle {
    pub persistent_unchanged: PerMsg,
    pub persistent_changed: PerMsg,
    pub plain_unchanged: PerMsg,
    pub plain_changed: PerMsg,
    pub encode: f64,
    pub clone: f64,
}

/// The cycle on a `MemoryStore` (no disk: CPU only), beside a plain ractor actor holding the
/// same state, and beside encoding or cloning the state alone.
pub async fn cost(pad: usize, unchanged: usize, changed: usize) -> Cycle {
    let storage = Storage::new(MemoryStore::new());
    let (actor, _) = Acct::spawn_persistent(&storage, "cycle", pad)
        .await
        .expect("spawn");
    let persistent_unchanged = per_msg(&actor, unchanged, Msg::Peek).await;
    let persistent_changed = per_msg(&actor, changed, Msg::Add).await;
    actor.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");

    let (plain, _) = Plain::spawn(None, Plain, pad).await.expect("spawn");
    let plain_unchanged = per_msg(&plain, unchanged, Msg::Peek).await;
    let plain_changed = per_msg(&plain, changed, Msg::Add).await;
    plain.stop_and_wait(None, None).await.expect("stop");

    let state = Account::new(pad);
    let encode = per_call(changed, || {
        black_box(postcard::to_allocvec(black_box(&state)).expect("encode"));
    });
    let clone = per_call(changed, || {
        black_box(black_box(&state).clone());
    });
    Cycle {
        persistent_unchanged,
        persistent_changed,
        plain_unchanged,
        plain_changed,
        encode,
        clone,
    }
}

/// The floor under the committer's design: a tokio task hands a request to a std thread over
/// a std mpsc channel and awaits a oneshot answer, with no work between. Seconds per round trip.
pub async fn handoff(n: usize) -> f64 {
    let (requests, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let thread = std::thread::spawn(move || {
        for done in rx {
            let _ = done.send(());
        }
    });
    let round_trip = |requests: std::sync::mpsc::Sender<_>| async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        requests.send(tx).expect("the thread listens");
        rx.await.expect("the thread answers");
    };
    for _ in 0..(n / 10).max(10) {
        round_trip(requests.clone()).await;
    }
    let t = Instant::now();
    for _ in 0..n {
        round_trip(requests.clone()).await;
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    drop(requests);
    thread.join().expect("the thread ends");
    per
}
