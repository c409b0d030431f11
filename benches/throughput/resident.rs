//! Resident memory of idle actors, each measured in a fresh process of this binary so that
//! memory freed by earlier sections cannot hide what the actors take.

use std::process::Command;

use ractor::{Actor, ActorRef};
use ractor_persist::{
    ActorCommit, ActorKey, Loaded, MemoryStore, Space, SpawnPersistent, Storage, Store, StoreError,
};

use crate::actors::{Acct, Msg, Plain};
use crate::measure::{closed_loop, resident};

/// The environment variable that makes this binary a child measuring one kind of actor.
pub const CHILD: &str = "THROUGHPUT_RESIDENT_CHILD";
/// The state of each idle actor: 1 KiB of filled bytes.
pub const STATE: usize = 1024;

/// Resident bytes before and after spawning the actors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resident {
    pub rss_before: u64,
    pub hwm_before: u64,
    pub rss_after: u64,
    pub hwm_after: u64,
}

impl Resident {
    /// Bytes per actor beyond its state, from the growth of `VmRSS`.
    pub fn per_actor_rss(&self, actors: usize) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / actors as f64 - STATE as f64
    }
}

/// Runs this binary as a child with `var` set to `spec`, and returns the numbers of the line
/// it prints after `prefix`.
pub fn child_numbers(var: &str, spec: &str, prefix: &str) -> Vec<u64> {
    let exe = std::env::current_exe().expect("this binary");
    let out = Command::new(exe)
        .env(var, spec)
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| {
            panic!(
                "the child said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split(' ')
        .map(|x| x.parse().expect("a number"))
        .collect()
}

/// Runs a child process that spawns `actors` idle actors of `kind` ("persistent" or "plain").
pub fn measure(kind: &str, actors: usize) -> Resident {
    let v = child_numbers(CHILD, &format!("{kind}:{actors}"), "RESIDENT ");
    Resident {
        rss_before: v[0],
        hwm_before: v[1],
        rss_after: v[2],
        hwm_after: v[3],
    }
}

/// The child's side: `spec` is "kind:actors". Prints one `RESIDENT` line.
pub fn child(spec: &str, rt: &tokio::runtime::Runtime) {
    let (kind, actors) = spec.split_once(':').expect("kind:actors");
    let actors: usize = actors.parse().expect("a count");
    rt.block_on(async {
        // "committed" actors write to a store that keeps nothing in memory, so what is
        // measured is the actor's own cost, not its store's copy of the state.
        let storage = if kind == "committed" {
            Storage::new(Sink)
        } else {
            Storage::new(MemoryStore::new())
        };
        // Persistent actors that never committed get a message that changes nothing; the
        // others one that changes the state (a plain actor's memory is the same either way).
        let msg = if kind == "persistent" {
            Msg::Peek
        } else {
            Msg::Add
        };
        // Warm up whatever is allocated once: the runtime, ractor's globals, the committer.
        let warm = spawn(kind, &storage, "warm").await;
        closed_loop(std::slice::from_ref(&warm), 10, msg).await;
        warm.stop_and_wait(None, None).await.expect("stop");
        let (rss_before, hwm_before) = resident();
        let mut refs = Vec::with_capacity(actors);
        // Each actor handles one message right after its spawn, so it is past post_start and
        // idle in its loop, and what its first message frees (init's encoding, once
        // committed) is reused by the next spawn, as in a process that runs for a while,
        // rather than left as holes that VmRSS still counts.
        for i in 0..actors {
            let actor = spawn(kind, &storage, &format!("idle{i}")).await;
            ractor::call!(actor, msg).expect("reply");
            refs.push(actor);
        }
        let (rss_after, hwm_after) = resident();
        println!("RESIDENT {rss_before} {hwm_before} {rss_after} {hwm_after}");
        for actor in refs {
            actor.stop(None);
        }
    });
}

async fn spawn(kind: &str, storage: &Storage, key: &str) -> ActorRef<Msg> {
    match kind {
        "persistent" | "committed" => {
            Acct::spawn_persistent(storage, key, STATE)
                .await
                .expect("spawn")
                .0
        }
        "plain" => Plain::spawn(None, Plain, STATE).await.expect("spawn").0,
        other => panic!("unknown actor kind {other}"),
    }
}

/// A store that keeps no rows: every commit succeeds and is forgotten, every load finds
/// nothing (epoch 1). For measuring what an actor itself holds, not what its store holds.
struct Sink;

impl Store for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    fn open_actor(&self, _: &ActorKey, _: &[Space]) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            epoch: 1,
            ..Loaded::default()
        })
    }
    fn commit(&self, _: &[ActorCommit]) -> Result<(), StoreError> {
        Ok(())
    }
}
