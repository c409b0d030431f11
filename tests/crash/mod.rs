//! What the crash tests share: the torture actor, a seeded random source, knobs read from the
//! environment, a simulated disk for redb, and a way to run a test's body in a child process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use persist_redb::redb::{BackendError, StorageBackend};
use ractor::{Actor, ActorRef, call};
use ractor_persist::{Start, Storage, Store, StoreError};

#[path = "../../examples/torture.rs"]
#[allow(dead_code, unreachable_pub)]
pub mod torture;

#[allow(unused_imports)]
pub use torture::{Note, Sink, Tally, TallyActor, TallyMsg, kept, kept_pending};

// ---------------------------------------------------------------------------------------------
// Seeds and knobs

/// splitmix64: small, seedable, good enough to pick crash points and bits.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        torture::mix(self.0.wrapping_sub(0x9e37_79b9_7f4a_7c15))
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A number from the environment variable `name`, if it is set.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

/// `CRASH_SEED` if set (to rerun a failing case), else a fresh seed; printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        torture::mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
    });
    eprintln!("{test}: seed={seed} (rerun with CRASH_SEED={seed})");
    seed
}

/// The count in `name` if set and larger, else the CI default.
pub fn count(name: &str, ci: u64) -> u64 {
    env_u64(name).map_or(ci, |n| n.max(1))
}

// ---------------------------------------------------------------------------------------------
// Spawning tally actors

/// Spawns tally actor `key`, reporting performed operations to `sink`.
pub async fn spawn_tally(
    storage: &Storage,
    key: &str,
    sink: Sink,
) -> Result<ActorRef<TallyMsg>, ractor::SpawnErr> {
    let (r, _) = Actor::spawn(None, TallyActor { sink }, Start::new(storage, key, ())).await?;
    Ok(r)
}

/// The state of `actor` (after its replays).
pub async fn peek(actor: &ActorRef<TallyMsg>) -> Tally {
    call!(actor, TallyMsg::Peek).expect("peek")
}

/// A sink that records each performed operation by actor key.
#[derive(Clone, Default)]
pub struct Performed(pub Arc<Mutex<Vec<(String, Note)>>>);

impl Performed {
    pub fn sink(&self) -> Sink {
        let log = self.0.clone();
        Sink::Call(Arc::new(move |key, note| {
            log.lock().unwrap().push((key.to_owned(), note))
        }))
    }

    /// The operation indexes performed by `key`, in order.
    pub fn of(&self, key: &str) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| n.idx)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// What an actor showed after a restart: its state and the operations it replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub tally: Tally,
    pub replayed: Vec<u64>,
}

/// Opens `store`, spawns every actor of `keys`, and reads each one's state and replays.
///
/// An error is a store that did not open or an actor that did not spawn, as text.
pub async fn recover<S: Store>(
    store: Result<S, StoreError>,
    keys: &[String],
) -> Result<BTreeMap<String, Seen>, String> {
    let storage = Storage::new(store.map_err(|e| format!("open: {e}"))?);
    let performed = Performed::default();
    let mut actors = Vec::new();
    let mut failure = None;
    for key in keys {
        match spawn_tally(&storage, key, performed.sink()).await {
            Ok(a) => actors.push((key.clone(), a)),
            Err(e) => {
                failure = Some(format!("spawn {key}: {}", spawn_error(e)));
                break;
            }
        }
    }
    let mut seen = BTreeMap::new();
    for (key, a) in &actors {
        let tally = peek(a).await;
        seen.insert(
            key.clone(),
            Seen {
                tally,
                replayed: performed.of(key),
            },
        );
    }
    for (_, a) in actors {
        a.stop_and_wait(None, None).await.expect("stop");
    }
    let _ = storage.close().await;
    match failure {
        Some(f) => Err(f),
        None => Ok(seen),
    }
}

/// The typed error inside a failed spawn, as text.
pub fn spawn_error(e: ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => {
            match inner.downcast::<ractor_persist::LoadError>() {
                Ok(load) => format!("LoadError: {load}"),
                Err(other) => format!("untyped startup failure: {other}"),
            }
        }
        other => format!("spawn error: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated disk

/// A change to the disk that a power loss may or may not keep.
#[derive(Clone, Debug)]
pub enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A mutating backend operation, as journaled.
#[derive(Clone, Debug)]
pub enum Event {
    Change(Change),
    Sync,
}

/// How an injected failure behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Operation N fails; later ones succeed.
    Once,
    /// Operation N and every later one fail.
    Sticky,
}

/// Fails backend operations on request and counts them.
#[derive(Debug, Default)]
pub struct Fault {
    ops: AtomicU64,
    /// `u64::MAX` for none.
    fail_at: AtomicU64,
    sticky: std::sync::atomic::AtomicBool,
    fired: AtomicU64,
    armed_at: AtomicU64,
}

impl Fault {
    pub fn new() -> Fault {
        Fault {
            fail_at: AtomicU64::new(u64::MAX),
            ..Fault::default()
        }
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Fails the operation `after` operations from now, as `mode` says.
    pub fn arm(&self, after: u64, mode: FailMode) {
        self.sticky
            .store(mode == FailMode::Sticky, Ordering::SeqCst);
        let now = self.ops();
        self.armed_at.store(now, Ordering::SeqCst);
        self.fail_at
            .store(now.saturating_add(after), Ordering::SeqCst);
    }

    /// Operations done since the last [`Fault::arm`].
    pub fn ops_since_arm(&self) -> u64 {
        self.ops() - self.armed_at.load(Ordering::SeqCst)
    }

    pub fn disarm(&self) {
        self.fail_at.store(u64::MAX, Ordering::SeqCst);
    }

    /// How many operations failed.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// Counts one operation; fails it if it is the armed one (or later, when sticky).
    pub fn check(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let at = self.fail_at.load(Ordering::SeqCst);
        if n == at || (n > at && self.sticky.load(Ordering::SeqCst)) {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other(format!(
                "injected I/O failure at operation {n}"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct DiskState {
    live: Vec<u8>,
    /// Every mutating operation with its operation number, while recording.
    journal: Option<Vec<(u64, Event)>>,
}

/// An in-memory redb backend that counts its operations, can fail them, and can journal every
/// write and sync so that the image a power loss leaves can be rebuilt for any moment.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    pub fault: Arc<Fault>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimDisk")
    }
}

impl SimDisk {
    /// A disk holding `image`.
    pub fn new(image: Vec<u8>) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(DiskState {
                live: image,
                journal: None,
            })),
            fault: Arc::new(Fault::new()),
        }
    }

    /// A disk holding `image` that journals every write and sync.
    pub fn recording(image: Vec<u8>) -> SimDisk {
        let disk = SimDisk::new(image);
        disk.state.lock().unwrap().journal = Some(Vec::new());
        disk
    }

    /// What reads see now (what the OS holds, synced or not).
    pub fn live(&self) -> Vec<u8> {
        self.state.lock().unwrap().live.clone()
    }

    /// The journal so far.
    pub fn journal(&self) -> Vec<(u64, Event)> {
        self.state
            .lock()
            .unwrap()
            .journal
            .clone()
            .unwrap_or_default()
    }

    pub fn ops(&self) -> u64 {
        self.fault.ops()
    }

    fn note(&self, state: &mut DiskState, event: Event) {
        let n = self.fault.ops() - 1;
        if let Some(j) = &mut state.journal {
            j.push((n, event));
        }
    }
}

impl StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, io::Error> {
        self.fault.check()?;
        Ok(self.state.lock().unwrap().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.fault.check()?;
        let state = self.state.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > state.live.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&state.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.fault.check()?;
        let mut state = self.state.lock().unwrap();
        state.live.resize(len as usize, 0);
        self.note(&mut state, Event::Change(Change::SetLen(len)));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.fault.check()?;
        let mut state = self.state.lock().unwrap();
        self.note(&mut state, Event::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.fault.check()?;
        let mut state = self.state.lock().unwrap();
        apply(
            &mut state.live,
            &Change::Write {
                offset,
                data: data.to_vec(),
            },
        );
        self.note(
            &mut state,
            Event::Change(Change::Write {
                offset,
                data: data.to_vec(),
            }),
        );
        Ok(())
    }
}

/// Applies `change` to `image` as a file system would (a write past the end extends it).
pub fn apply(image: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if end > image.len() {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Change::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// A disk's synced image and the changes made since its last sync, replayed from a journal.
#[derive(Clone, Debug, Default)]
pub struct PowerCut {
    pub synced: Vec<u8>,
    pub unsynced: Vec<Change>,
}

/// How much of the unsynced changes a power loss keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Only what was synced.
    Synced,
    /// Every change, as if the power held until the writes reached the disk.
    Everything,
    /// A random subset, some of them torn (only some of their 512-byte sectors written).
    Some,
}

/// The size of the unit a disk writes atomically, in the simulation.
pub const SECTOR: usize = 512;

impl PowerCut {
    pub fn new(synced: Vec<u8>) -> PowerCut {
        PowerCut {
            synced,
            unsynced: Vec::new(),
        }
    }

    /// Takes the next journaled operation into account.
    pub fn advance(&mut self, event: &Event) {
        match event {
            Event::Change(c) => self.unsynced.push(c.clone()),
            Event::Sync => {
                for c in self.unsynced.drain(..) {
                    apply(&mut self.synced, &c);
                }
            }
        }
    }

    /// The bytes left on the disk by a power loss now.
    pub fn image(&self, keep: Keep, rng: &mut Rng) -> Vec<u8> {
        let mut image = self.synced.clone();
        for c in &self.unsynced {
            match keep {
                Keep::Synced => {}
                Keep::Everything => apply(&mut image, c),
                Keep::Some => {
                    if rng.one_in(2) {
                        continue;
                    }
                    match c {
                        Change::Write { offset, data } if data.len() > SECTOR && rng.one_in(3) => {
                            // Torn: each sector of the write reached the disk or did not.
                            for (i, sector) in data.chunks(SECTOR).enumerate() {
                                if rng.one_in(2) {
                                    apply(
                                        &mut image,
                                        &Change::Write {
                                            offset: offset + (i * SECTOR) as u64,
                                            data: sector.to_vec(),
                                        },
                                    );
                                }
                            }
                        }
                        c => apply(&mut image, c),
                    }
                }
            }
        }
        image
    }
}

// ---------------------------------------------------------------------------------------------
// Faults on a real file

/// A redb backend around another (the real file) that fails its operations through a [`Fault`].
/// Locks pass through uncounted.
#[derive(Debug)]
pub struct Failing<B> {
    pub inner: B,
    pub fault: Arc<Fault>,
}

impl<B: StorageBackend> StorageBackend for Failing<B> {
    fn len(&self) -> Result<u64, io::Error> {
        self.fault.check()?;
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.fault.check()?;
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.fault.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.fault.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.fault.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// The variable that tells a test binary it runs as another test's child.
pub const CHILD: &str = "CRASH_CHILD";

/// Separates the arguments in [`CHILD`] (a path may hold spaces).
const SEP: &str = "\u{1f}";

/// A command that runs this test binary's test `name` alone, as a child with `args` (passed
/// in [`CHILD`]). Its stdout carries only the child's lines (after libtest's own header).
pub fn child(name: &str, args: &[String]) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("current exe"));
    cmd.args([
        name,
        "--exact",
        "--nocapture",
        "--quiet",
        "--test-threads=1",
    ])
    .env(CHILD, args.join(SEP))
    .stdin(std::process::Stdio::null());
    cmd
}

/// The arguments of this process if it runs as a child.
pub fn child_args() -> Option<Vec<String>> {
    let v = std::env::var(CHILD).ok()?;
    Some(v.split(SEP).map(str::to_owned).collect())
}
