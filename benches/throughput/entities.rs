//! The registry and durable timers: activation from a big store, resident memory of actors
//! activated through the registry, and timers fired per second, each beside its baseline.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use ractor::Actor;
use ractor_persist::prelude::*;
use ractor_persist::{ActorCommit, ActorKey, CommitStats, Space, Start, Store};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::actors::{self, Account, Plain, ROW_PAD};
use crate::measure::{closed_loop, count, cpu_time, dur, percentile, resident, us};

/// The environment variable that makes this binary a child measuring one kind of actor.
pub const CHILD: &str = "THROUGHPUT_ENTITIES_CHILD";
/// Snapshot rows per `Store::commit` when building a store.
const BUILD_BATCH: usize = 50_000;
/// How long a timer run may take before it is reported as a hang.
const HANG: Duration = Duration::from_secs(120);

/// How much the section runs.
pub struct Sizes {
    /// Actors in the big store.
    pub store: usize,
    /// Actors in the baseline store.
    pub small_store: usize,
    /// Activations measured in each store.
    pub activations: usize,
    /// The registry's bound during the activations (the same for both stores).
    pub max_resident: usize,
    /// Actors activated in the memory measurement.
    pub active: usize,
    pub timer_actors: usize,
    pub timers_per_actor: usize,
    pub reps: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        Sizes {
            store: if quick { 100_000 } else { 1_000_000 },
            small_store: 1_000,
            activations: if quick { 5_000 } else { 10_000 },
            max_resident: 500,
            active: 10_000,
            timer_actors: 1_000,
            timers_per_actor: if quick { 50 } else { 200 },
            reps: if quick { 3 } else { 5 },
        }
    }
}

/// The measured actor: a counter and `ROW_PAD` bytes (the state of the other sections).
/// A timer actor reports the op its last timer pushes on the channel, once it is committed.
#[derive(Default, Persistent)]
#[persistent(name = "ent")]
pub struct Ent(Option<UnboundedSender<u64>>);

pub enum EntMsg {
    /// Changes the state; replies after the commit.
    Bump(RpcReplyPort<u64>),
    /// Changes nothing.
    Peek(RpcReplyPort<u64>),
    /// Starts a chain of `n` timers.
    Chain(u32),
    /// A fired timer: `n` more to go, this one included.
    Tick(u32),
    /// The runtime's own messages (a timer's wake among them).
    Persist(Control<u64>),
}

impl PersistentActor for Ent {
    type Msg = EntMsg;
    type State = Account;
    type Op = u64;
    type Arguments = usize;

    async fn init(&self, pad: usize) -> Result<Account, ActorProcessingErr> {
        Ok(Account::new(pad))
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: EntMsg,
        state: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EntMsg::Bump(port) => {
                let n = state.bump();
                tx.reply(port, n);
            }
            EntMsg::Peek(port) => tx.reply(port, state.n),
            EntMsg::Chain(n) => tx.set_timer_after("tick", Duration::ZERO, &n)?,
            EntMsg::Tick(left) => {
                let n = state.bump();
                if left > 1 {
                    tx.set_timer_after("tick", Duration::ZERO, &(left - 1))?;
                } else {
                    tx.push(n)?;
                }
            }
            EntMsg::Persist(_) => {}
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<u64>, _: &Account) -> Result<Outcome, ActorProcessingErr> {
        if let Some(done) = &self.0 {
            let _ = done.send(*op.op());
        }
        Ok(Outcome::Done)
    }

    fn control(msg: EntMsg) -> Result<Control<u64>, EntMsg> {
        match msg {
            EntMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<u64>) -> Option<EntMsg> {
        Some(EntMsg::Persist(c))
    }

    fn timer(fired: Fired) -> Result<EntMsg, DecodeReason> {
        Ok(EntMsg::Tick(fired.decode::<u32>()?))
    }
}

fn key(i: usize) -> String {
    format!("k{i:07}")
}

/// splitmix64: the same keys in every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Builds a redb store of `actors` actors: one snapshot the library wrote (a counter of 1),
/// copied under every key through `Store::commit`, `BUILD_BATCH` per transaction, at epoch 0
/// (never opened). Returns the build time and the file's size.
pub async fn build(path: &Path, actors: usize) -> (Duration, u64) {
    let t = Instant::now();
    let storage = Storage::new(RedbStore::open(path).expect("open the store"));
    let (template, _) = Ent::spawn_persistent(&storage, "template", ROW_PAD)
        .await
        .expect("spawn");
    ractor::call!(template, EntMsg::Bump).expect("reply");
    template.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");

    let store = RedbStore::open(path).expect("open the store");
    let rows = store
        .read(
            &ActorKey::new("ent", "template"),
            Some(Space::SNAPSHOT),
            0..=0,
        )
        .expect("read the template");
    assert_eq!(rows.len(), 1, "the template's snapshot");
    let snapshot = &rows[0].bytes;
    let keys: Vec<usize> = (0..actors).collect();
    for chunk in keys.chunks(BUILD_BATCH) {
        let batch: Vec<ActorCommit> = chunk
            .iter()
            .map(|&i| {
                ActorCommit::new(ActorKey::new("ent", key(i)), 0).put(
                    Space::SNAPSHOT,
                    0,
                    snapshot.clone(),
                )
            })
            .collect();
        store.commit(&batch).expect("commit");
    }
    store.close().expect("close");
    let build = t.elapsed();
    (build, std::fs::metadata(path).map_or(0, |m| m.len()))
}

/// Activates `n` random keys of the `actors` in the store at `path`, one after the other,
/// through a registry bound to `max_resident`: the latency of each `Entities::get`. A key is
/// drawn only if it is not among the `max_resident + RECENT` last activated: not resident,
/// and not being passivated either (the registry evicts the least recently active, so those
/// are the oldest of that window), whose stop a `get` would wait for. Every actor activated is
/// checked to hold the template's state, outside the timing.
pub async fn activations(
    path: &Path,
    actors: usize,
    n: usize,
    max_resident: usize,
    seed: u64,
) -> Vec<Duration> {
    const RECENT: usize = 100;
    let storage = Storage::new(RedbStore::open(path).expect("open the store"));
    let registry = Entities::<Ent>::builder(&storage, |_| ROW_PAD)
        .max_resident(max_resident)
        .start()
        .await
        .expect("start the registry");
    let mut rng = Rng(seed);
    let mut recent: VecDeque<usize> = VecDeque::new();
    let mut in_recent: HashSet<usize> = HashSet::new();
    let mut lat = Vec::with_capacity(n);
    // The first activations warm up the runtime, not measured.
    let warm = 100;
    while lat.len() < n + warm {
        let i = rng.below(actors);
        let k = key(i);
        if in_recent.contains(&i) || registry.is_resident(&k) {
            continue;
        }
        let t = Instant::now();
        let actor = registry.get(&k).await.expect("activate");
        lat.push(t.elapsed());
        let n = ractor::call!(actor, EntMsg::Peek).expect("reply");
        assert_eq!(n, 1, "the state of {k} after its activation");
        recent.push_back(i);
        in_recent.insert(i);
        if recent.len() > max_resident + RECENT
            && let Some(old) = recent.pop_front()
        {
            in_recent.remove(&old);
        }
    }
    // The evictions the last activations started finish: the bound holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.resident() > max_resident && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        registry.resident() <= max_resident,
        "{} actors resident 10 s after the last activation, over the bound {max_resident}",
        registry.resident()
    );
    registry.shutdown().await;
    storage.close().await.expect("close");
    lat.drain(..warm);
    lat
}

unsafe extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

/// `VmRSS` after handing the allocator's free memory back to the system, so that
/// memory freed before the actors are made (the store's open, the warm-up) neither counts
/// before nor hides what they take after.
fn trimmed_resident() -> u64 {
    // SAFETY: glibc's malloc_trim only releases free heap memory; no pointer is involved.
    unsafe { malloc_trim(0) };
    resident().0
}

/// Resident bytes of a child process before and after it made its actors.
#[derive(Clone, Copy, Debug)]
pub struct Rss {
    pub before: u64,
    pub after: u64,
}

impl Rss {
    pub fn delta(&self) -> f64 {
        self.after as f64 - self.before as f64
    }
}

/// Runs a child process that makes `active` actors of `kind` ("random", "ordered": through
/// the registry on the store of `stored` actors at `path`; "plain": plain ractor actors).
pub fn measure(kind: &str, active: usize, stored: usize, path: &Path) -> Rss {
    let spec = format!("{kind}|{active}|{stored}|{}", path.display());
    let v = crate::resident::child_numbers(CHILD, &spec, "ENTITIES_RSS ");
    Rss {
        before: v[0],
        after: v[1],
    }
}

/// The child's side: `spec` is "kind|active|stored|path". Prints one `ENTITIES_RSS` line.
pub fn child(spec: &str, rt: &tokio::runtime::Runtime) {
    let mut parts = spec.splitn(4, '|');
    let kind = parts.next().expect("kind");
    let mut number = || -> usize {
        let n = parts.next().expect("a field");
        n.parse().expect("a count")
    };
    let (active, total) = (number(), number());
    let path = Path::new(parts.next().expect("path"));
    rt.block_on(async {
        if kind == "plain" {
            // Warm up what is allocated once: the runtime, ractor's globals.
            let (warm, _) = Plain::spawn(None, Plain, ROW_PAD).await.expect("spawn");
            ractor::call!(warm, actors::Msg::Peek).expect("reply");
            warm.stop_and_wait(None, None).await.expect("stop");
            let before = trimmed_resident();
            let mut refs = Vec::with_capacity(active);
            for _ in 0..active {
                let (actor, _) = Plain::spawn(None, Plain, ROW_PAD).await.expect("spawn");
                ractor::call!(actor, actors::Msg::Peek).expect("reply");
                refs.push(actor);
            }
            let after = trimmed_resident();
            println!("ENTITIES_RSS {before} {after}");
            for actor in refs {
                actor.stop(None);
            }
            return;
        }
        let storage = Storage::new(RedbStore::open(path).expect("open the store"));
        let registry = Entities::<Ent>::builder(&storage, |_| ROW_PAD)
            .start()
            .await
            .expect("start the registry");
        // Warm up the runtime, the committer and the registry's tasks with one activation.
        registry.get("template").await.expect("activate");
        registry.passivate("template").await;
        let before = trimmed_resident();
        let mut rng = Rng(11);
        let mut next = 0;
        while registry.resident() < active {
            let k = if kind == "ordered" {
                next += 1;
                key(next - 1)
            } else {
                key(rng.below(total))
            };
            if registry.is_resident(&k) {
                continue;
            }
            let n = registry
                .call(&k, EntMsg::Peek, None)
                .await
                .expect("activate and reply");
            assert_eq!(n, 1, "the state of {k}");
        }
        let after = trimmed_resident();
        println!("ENTITIES_RSS {before} {after}");
    });
}

/// One run of `actors` actors each handling `per_actor` messages.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub msgs: usize,
    pub secs: f64,
    pub cpu: f64,
    /// Actor commits (riders included) per store transaction.
    pub batch: f64,
    /// Actor commits (riders included) per message.
    pub commits: f64,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    pub fn cpu_per_msg(&self) -> f64 {
        self.cpu / self.msgs as f64
    }
}

async fn spawn_all(
    storage: &Storage,
    prefix: &str,
    actors: usize,
    done: Option<UnboundedSender<u64>>,
) -> Vec<ActorRef<EntMsg>> {
    let mut refs = Vec::with_capacity(actors);
    for i in 0..actors {
        let start = Start::<Ent>::new(storage, format!("{prefix}{i}"), ROW_PAD);
        let (actor, _) = Actor::spawn(None, Ent(done.clone()), start)
            .await
            .expect("spawn");
        refs.push(actor);
    }
    // Each actor's first commit creates its snapshot: not measured.
    closed_loop(&refs, 1, EntMsg::Bump).await;
    refs
}

/// Checks every actor handled `per_actor` messages after its first, stops them and closes.
async fn finish(storage: Storage, refs: Vec<ActorRef<EntMsg>>, per_actor: usize, what: &str) {
    for (i, actor) in refs.iter().enumerate() {
        let n = ractor::call!(actor, EntMsg::Peek).expect("reply");
        assert_eq!(n, 1 + per_actor as u64, "{what}: actor {i}'s count");
    }
    for actor in refs {
        actor.stop_and_wait(None, None).await.expect("stop");
    }
    storage.close().await.expect("close");
}

/// Actor commits per transaction and per message since `before`.
fn commits_since(storage: &Storage, before: CommitStats, msgs: usize) -> (f64, f64) {
    let after = storage.stats();
    let commits = (after.commits - before.commits) as f64;
    let batches = (after.batches - before.batches).max(1) as f64;
    (commits / batches, commits / msgs as f64)
}

/// `actors` actors on a fresh redb file, each running a chain of `per_actor` timers: the
/// handler of each fired timer sets the next, due at once. Timed from the messages that start
/// the chains to the last timer's op, performed after its commit.
pub async fn timers(dir: &Path, actors: usize, per_actor: usize) -> Throughput {
    let path = dir.join("entities-timers.redb");
    let storage = Storage::new(RedbStore::open(&path).expect("open the store"));
    let (done, mut finished) = unbounded_channel();
    let refs = spawn_all(&storage, "t", actors, Some(done)).await;
    let stats = storage.stats();
    let cpu = cpu_time();
    let t = Instant::now();
    for actor in &refs {
        actor
            .send_message(EntMsg::Chain(per_actor as u32))
            .expect("send");
    }
    for got in 0..actors {
        match tokio::time::timeout(HANG, finished.recv()).await {
            Ok(Some(_)) => {}
            other => {
                panic!("timers: {got} of {actors} chains finished within {HANG:?} ({other:?})")
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu;
    let (batch, commits) = commits_since(&storage, stats, actors * per_actor);
    finish(storage, refs, per_actor, "timers").await;
    let _ = std::fs::remove_file(&path);
    Throughput {
        msgs: actors * per_actor,
        secs,
        cpu,
        batch,
        commits,
    }
}

/// The baseline of [`timers`]: the same actors on a fresh redb file, each sent `per_actor`
/// state-changing messages by the driver, one in flight per actor (`call!` in a closed loop).
pub async fn messages(dir: &Path, actors: usize, per_actor: usize) -> Throughput {
    let path = dir.join("entities-messages.redb");
    let storage = Storage::new(RedbStore::open(&path).expect("open the store"));
    let refs = spawn_all(&storage, "m", actors, None).await;
    let stats = storage.stats();
    let cpu = cpu_time();
    let (secs, _) = closed_loop(&refs, per_actor, EntMsg::Bump).await;
    let cpu = cpu_time() - cpu;
    let (batch, commits) = commits_since(&storage, stats, actors * per_actor);
    finish(storage, refs, per_actor, "messages").await;
    let _ = std::fs::remove_file(&path);
    Throughput {
        msgs: actors * per_actor,
        secs,
        cpu,
        batch,
        commits,
    }
}

/// The section: each figure printed beside its baseline from this run.
pub async fn section(dir: &Path, s: &Sizes) {
    println!(
        "\n== 9. entities: activation through the registry (Entities) from a big store, resident memory of the actors it activates, durable timers; redb, warm page cache"
    );
    let big = dir.join(format!("entities-{}.redb", s.store));
    let small = dir.join(format!("entities-{}.redb", s.small_store));
    let (big_build, big_bytes) = build(&big, s.store).await;
    let (small_build, small_bytes) = build(&small, s.small_store).await;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "   stores: one snapshot the library wrote (counter 1, {ROW_PAD}-byte pad) copied under every key through Store::commit, {} keys per transaction, epoch 0",
        count(BUILD_BATCH as f64)
    );
    println!(
        "store of {} actors built in {:.2} s ({} actors/s), file {:.0} MiB | baseline store of {} actors built in {:.3} s, file {:.1} MiB",
        count(s.store as f64),
        big_build.as_secs_f64(),
        count(s.store as f64 / big_build.as_secs_f64()),
        mib(big_bytes as f64),
        count(s.small_store as f64),
        small_build.as_secs_f64(),
        mib(small_bytes as f64),
    );

    println!(
        "activation: Entities::get of a key not resident when drawn, random keys one after the other, max_resident({}) in both stores (each activation past it passivates the least recently active one), {} repeats alternating the stores, samples pooled",
        s.max_resident, s.reps
    );
    let (mut big_lat, mut small_lat) = (Vec::new(), Vec::new());
    let per_rep = s.activations / s.reps;
    for rep in 0..s.reps {
        let seed = 1 + rep as u64;
        big_lat.extend(activations(&big, s.store, per_rep, s.max_resident, seed).await);
        small_lat.extend(activations(&small, s.small_store, per_rep, s.max_resident, seed).await);
    }
    let p = |v: &[Duration], q: f64| percentile(v, q);
    let ratio = |q: f64| p(&big_lat, q).as_secs_f64() / p(&small_lat, q).as_secs_f64();
    println!(
        "{:>9} actors: p50 {:>9} p99 {:>9} | baseline {} actors: p50 {:>9} p99 {:>9} -> p50 x{:.2}, p99 x{:.2}  [{} activations each]",
        count(s.store as f64),
        dur(p(&big_lat, 0.5)),
        dur(p(&big_lat, 0.99)),
        count(s.small_store as f64),
        dur(p(&small_lat, 0.5)),
        dur(p(&small_lat, 0.99)),
        ratio(0.5),
        ratio(0.99),
        count(big_lat.len() as f64),
    );

    println!(
        "resident memory, each kind in a fresh process: VmRSS after - before making {} actors, each read after malloc_trim (before: store open, registry started, one activation done; each actor handled one message that changes nothing)",
        count(s.active as f64)
    );
    let random = measure("random", s.active, s.store, &big);
    let ordered = measure("ordered", s.active, s.store, &big);
    let plain = measure("plain", s.active, s.store, &big);
    let per = |r: &Rss| r.delta() / s.active as f64;
    let line = |what: &str, r: &Rss| {
        println!(
            "   {what:<58} +{:>6.1} MiB  {:>6} B/actor",
            mib(r.delta()),
            count(per(r)),
        );
    };
    line(
        &format!(
            "registry, random keys of the {}-actor store",
            count(s.store as f64)
        ),
        &random,
    );
    line(
        "registry, the same store's first keys (fewer pages read)",
        &ordered,
    );
    line("baseline: plain ractor actors, the same state", &plain);
    println!(
        "   -> registry / plain ractor, per actor: random keys x{:.2}, first keys x{:.2}; the registry adds {:+.0} B per actor (random keys), {:+.0} B (first keys)",
        per(&random) / per(&plain),
        per(&ordered) / per(&plain),
        per(&random) - per(&plain),
        per(&ordered) - per(&plain),
    );
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&small);

    println!(
        "timers: {} actors on one redb store, each a chain of {} durable timers (the handler of each fired timer sets the next after Duration::ZERO; instants are rounded up to the millisecond), all chains at once, timed to the last timer's op (performed after its commit)",
        count(s.timer_actors as f64),
        s.timers_per_actor
    );
    println!(
        "   baseline: the same actors, {} state-changing messages each sent by the driver, one in flight per actor (call!, closed loop); each repeat runs both, ratios are medians of per-repeat ratios",
        s.timers_per_actor
    );
    let (mut t, mut m) = (Vec::new(), Vec::new());
    for _ in 0..s.reps {
        t.push(timers(dir, s.timer_actors, s.timers_per_actor).await);
        m.push(messages(dir, s.timer_actors, s.timers_per_actor).await);
    }
    let ratio = median(t.iter().zip(&m).map(|(t, m)| t.rate() / m.rate()).collect());
    let cpu_ratio = median(
        t.iter()
            .zip(&m)
            .map(|(t, m)| t.cpu_per_msg() / m.cpu_per_msg())
            .collect(),
    );
    println!(
        "   timers   {:>8} timers/s {:>17}  CPU/timer {}  {:.2} commits/timer, {:>5.1} per transaction  [{} timers]",
        count(median(t.iter().map(Throughput::rate).collect())),
        spread(&t),
        us(median(t.iter().map(Throughput::cpu_per_msg).collect())),
        median(t.iter().map(|t| t.commits).collect()),
        median(t.iter().map(|t| t.batch).collect()),
        count(t[0].msgs as f64),
    );
    println!(
        "   baseline {:>8} msg/s    {:>17}  CPU/msg   {}  {:.2} commits/msg,   {:>5.1} per transaction  -> timers / messages x{ratio:.2} (CPU x{cpu_ratio:.2})  [{} msgs]",
        count(median(m.iter().map(Throughput::rate).collect())),
        spread(&m),
        us(median(m.iter().map(Throughput::cpu_per_msg).collect())),
        median(m.iter().map(|m| m.commits).collect()),
        median(m.iter().map(|m| m.batch).collect()),
        count(m[0].msgs as f64),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// "(95,000-140,000)": the spread of the rate over the repeats.
fn spread(runs: &[Throughput]) -> String {
    let (lo, hi) = runs
        .iter()
        .map(Throughput::rate)
        .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    if lo >= hi {
        return String::new();
    }
    format!("({}-{})", count(lo), count(hi))
}
