//! [`Storage`]: the handle actors share, and its group committer.
//!
//! One writer at a time holds the backend. An actor whose commit finds the store idle writes
//! it itself, on its own thread, and replies at once; commits that find the store held queue
//! for the committer thread, which drains everything waiting, writes it in one transaction
//! (one sync) and then releases each actor. A lone actor waits for no one: no hand-off, no
//! timer.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::key::ActorKey;
use crate::store::{ActorCommit, Loaded, Space, Store};
use crate::transform::Transforms;

/// Limits of one group commit, the transforms applied to every record, and how letters
/// between persistent actors travel.
#[derive(Clone)]
#[non_exhaustive]
pub struct StorageConfig {
    /// Most actor commits written in one transaction.
    pub max_batch: usize,
    /// Most bytes written in one transaction (a single larger commit is still written alone).
    pub max_batch_bytes: usize,
    /// Compression and encryption of the records the actors on this storage write (and the
    /// keys they read with). None by default.
    pub transforms: Transforms,
    /// What carries letters between the persistent actors of this storage (see
    /// [`crate::Courier`]); `None` (the default) hands them over directly.
    pub courier: Option<Arc<dyn crate::delivery::Courier>>,
    /// Whether an actor whose commit finds the store idle (nothing queued, nothing being
    /// written) writes it itself, on its own thread, instead of handing it to the committer
    /// thread and waiting to be woken (on by default). Its commit is then a batch of one, and
    /// commits that arrive meanwhile are written by the committer thread next, in one batch.
    ///
    /// The write blocks the actor's tokio worker for the store's commit (a sync, on a disk),
    /// as a hand-written actor calling its database would, so it is done only on a worker of
    /// a multi-thread runtime, and only while commits do not contend (once one had to wait,
    /// commits go to the committer thread until it finds a lone one again). Turn it off for a
    /// store whose commits can wait long (a server across a network) or to keep every store
    /// call off the tokio workers: see [`StorageConfig::committer_thread_only`].
    pub inline_when_idle: bool,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("max_batch", &self.max_batch)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("transforms", &self.transforms)
            .field("courier", &self.courier.as_ref().map(|_| "custom"))
            .field("inline_when_idle", &self.inline_when_idle)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_batch: 4096,
            max_batch_bytes: 32 * 1024 * 1024,
            transforms: Transforms::default(),
            courier: None,
            inline_when_idle: true,
        }
    }
}

impl StorageConfig {
    /// The default limits, with `transforms`.
    pub fn with_transforms(transforms: Transforms) -> Self {
        StorageConfig {
            transforms,
            ..Self::default()
        }
    }

    /// The same configuration with letters between persistent actors carried by `courier`.
    pub fn with_courier(mut self, courier: impl crate::delivery::Courier) -> Self {
        self.courier = Some(Arc::new(courier));
        self
    }

    /// The same configuration with every store call made by the committer thread, never by
    /// an actor on its own thread (see [`StorageConfig::inline_when_idle`]).
    pub fn committer_thread_only(mut self) -> Self {
        self.inline_when_idle = false;
        self
    }
}

/// What [`Storage::wakes`] read: keys with work pending, and stored timer rows.
pub(crate) struct Wakes {
    pub(crate) busy: Vec<String>,
    pub(crate) timers: Vec<(String, u64, Vec<u8>)>,
}

/// Counters of the committer, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Transactions written (each one sync).
    pub batches: u64,
    /// Actor commits written, removal-only commits included.
    pub commits: u64,
    /// Removal-only commits that rode on another commit's transaction.
    pub riders: u64,
    /// Actor loads (each takes a new epoch).
    pub loads: u64,
}

type Done<T> = oneshot::Sender<Result<T, StoreError>>;

/// Who waits for a queued commit: told the outcome and handed the commit back, so that its
/// buffers, allocated on the actor's thread, are freed there and not on the committer thread
/// (glibc frees a chunk into the arena of the thread that allocated it, under that arena's
/// lock, so freeing a batch's buffers here contends with the actors allocating in those
/// arenas).
type Waiter = oneshot::Sender<(Result<(), StoreError>, Option<ActorCommit>)>;

/// A record moved aside because it could not be decoded, with its original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quarantined {
    /// The actor.
    pub key: ActorKey,
    /// The epoch of the instance that moved it aside (unique per key).
    pub epoch: u64,
    /// Why it could not be decoded.
    pub reason: String,
    /// The snapshot envelope as it was stored.
    pub snapshot: Option<Vec<u8>>,
    /// The pending operation envelopes as they were stored.
    pub ops: Vec<(u64, Vec<u8>)>,
    /// The record's other rows as they were stored: (space, id, envelope) of its outbox,
    /// channels, inbox and stored replies.
    pub rows: Vec<(Space, u64, Vec<u8>)>,
}

/// How a quarantined record is stored.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct QuarantineBody {
    pub(crate) reason: String,
    pub(crate) snapshot: Option<Vec<u8>>,
    pub(crate) ops: Vec<(u64, Vec<u8>)>,
    /// (space, id, bytes) of the record's rows outside the snapshot and the operations.
    pub(crate) rows: Vec<(u8, u64, Vec<u8>)>,
}

/// How a quarantined record was stored before the delivery spaces existed.
#[derive(serde::Deserialize)]
struct QuarantineBodyV1 {
    reason: String,
    snapshot: Option<Vec<u8>>,
    ops: Vec<(u64, Vec<u8>)>,
}

impl QuarantineBody {
    pub(crate) fn decode(blob: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes::<QuarantineBody>(blob).or_else(|_| {
            let v1: QuarantineBodyV1 = postcard::from_bytes(blob)?;
            Ok(QuarantineBody {
                reason: v1.reason,
                snapshot: v1.snapshot,
                ops: v1.ops,
                rows: Vec::new(),
            })
        })
    }
}

/// Work run on the committer thread against the store, or told why it may not run.
/// A call run on the committer thread; it returns why the store must be poisoned, if a write
/// of its own failed.
type Job = Box<dyn FnOnce(Result<&dyn Store, StoreError>) -> Option<String> + Send>;

/// What a call may do with the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anything (a load, a delete, an export): refused on a poisoned store, and run after
    /// the queued riders are written, since it must see every change sent before it.
    Any,
    /// Read an actor's snapshot back for a rollback: run even on a poisoned store (reading
    /// cannot make it worse), and without writing the riders first (they never touch a
    /// snapshot).
    ReadBack,
}

enum Request {
    /// Administrative work (delete, list, quarantine) and loads, in order with the commits.
    Call(Job, Access),
    Commit(ActorCommit, Waiter),
    Close(Done<()>),
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    commits: AtomicU64,
    riders: AtomicU64,
    loads: AtomicU64,
}

/// What waits for the store, and who is writing.
#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// Removals of done operations (and attempt counts), written with the next write: each
    /// was queued after its actor's earlier commits were acknowledged and before its later
    /// ones, and leaves with whatever write comes next, so every actor's order is kept.
    riders: Vec<ActorCommit>,
    /// Someone holds the store: the committer thread, or an actor writing its own commit.
    writing: bool,
    /// The committer thread has stopped: closed, or every handle dropped.
    stopped: bool,
    /// Every handle was dropped: the thread writes what is left and stops.
    dropped: bool,
    /// The committer thread waits for work and no one has woken it yet (a wake is a
    /// system call: only one per sleep).
    sleeping: bool,
    /// A commit had to wait for another write lately: several actors are committing, so
    /// their commits go to the committer thread in batches (an actor writing its own blocks
    /// its tokio worker for a sync while the others wait). Cleared when the committer thread
    /// finds a lone commit to write.
    contended: bool,
}

/// What the actors and the committer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// The committer thread waits here for requests, and for the store to be free.
    work: Condvar,
    /// The backend; locked only by whoever set [`Queue::writing`], so never contended.
    /// `None` once closed.
    core: Mutex<Option<Committer>>,
}

/// Locks `m`, whatever panicked while it was held: the data behind these locks is kept
/// consistent by their users (a backend's panic is caught before it reaches them).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes the store if nobody holds it and nothing waits for it, with the riders queued
    /// so far; the caller then writes on its own thread.
    fn take_idle(&self) -> Option<Holding<'_>> {
        let mut q = lock(&self.queue);
        if q.writing || q.stopped || q.contended || !q.requests.is_empty() {
            return None;
        }
        q.writing = true;
        let riders = std::mem::take(&mut q.riders);
        drop(q);
        Some(Holding {
            shared: self,
            riders,
        })
    }

    /// Queues `request` for the committer thread (waking it if it sleeps); gives it back if
    /// the committer has stopped.
    fn queue(&self, request: Request) -> Result<(), Request> {
        let mut q = lock(&self.queue);
        if q.stopped {
            return Err(request);
        }
        if q.writing && matches!(request, Request::Commit(..)) {
            q.contended = true;
        }
        q.requests.push_back(request);
        let wake = q.sleeping && !q.writing;
        if wake {
            q.sleeping = false;
        }
        drop(q);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }
}

/// The store, held by an actor writing on its own thread; released on drop (a panic
/// included), waking the committer thread if requests queued meanwhile.
struct Holding<'a> {
    shared: &'a Shared,
    riders: Vec<ActorCommit>,
}

impl Holding<'_> {
    /// Runs `f` with the committer (the riders handed to it first), or with `None` if the
    /// store was closed.
    fn with<T>(&mut self, f: impl FnOnce(Option<&mut Committer>) -> T) -> T {
        let mut core = lock(&self.shared.core);
        if let Some(c) = core.as_mut() {
            c.riders.append(&mut self.riders);
        }
        f(core.as_mut())
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.shared.queue);
        // Riders not handed over (the store was closed) go back; they are dropped with it.
        q.riders.append(&mut self.riders);
        q.writing = false;
        let wake = q.sleeping && (!q.requests.is_empty() || q.dropped);
        if wake {
            q.sleeping = false;
        }
        drop(q);
        if wake {
            self.shared.work.notify_one();
        }
    }
}

struct Inner {
    name: String,
    transforms: Transforms,
    shared: Arc<Shared>,
    inline: bool,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    postbox: crate::delivery::Postbox,
    max_key_len: Option<usize>,
    /// The metric handles of the namespaces of the actors started on this storage.
    namespaces: crate::observe::Namespaces,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle: the committer thread writes what is left and stops.
        lock(&self.shared.queue).dropped = true;
        self.shared.work.notify_one();
    }
}

/// A store shared by many actors, with its group committer. Cheap to clone.
///
/// ```ignore
/// let storage = Storage::new(RedbStore::open("bank.redb")?);
/// let (acct, _) = AccountActor::spawn_persistent(&storage, "alice", ()).await?;
/// ```
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Starts the committer for `store` with the default limits.
    pub fn new<S: Store>(store: S) -> Self {
        Self::with_config(store, StorageConfig::default())
    }

    /// Starts the committer for `store` with `config`.
    pub fn with_config<S: Store>(store: S, config: StorageConfig) -> Self {
        let name = store.name().to_owned();
        let max_key_len = store.max_key_len();
        let counters = Arc::new(Counters::default());
        let transforms = config.transforms.clone();
        let postbox = crate::delivery::Postbox::new(config.courier.clone());
        let inline = config.inline_when_idle;
        let committer = Committer {
            store: Box::new(store),
            name: name.clone(),
            config,
            riders: Vec::new(),
            poisoned: None,
            counters: counters.clone(),
            metrics: crate::observe::CommitMetrics::new(&name),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            core: Mutex::new(Some(committer)),
        });
        let thread = std::thread::Builder::new()
            .name(format!("persist-commit {name}"))
            .spawn({
                let shared = shared.clone();
                move || run(&shared)
            })
            .expect("spawn the committer thread");
        Storage {
            inner: Arc::new(Inner {
                name,
                transforms,
                shared,
                inline,
                thread: Mutex::new(Some(thread)),
                counters,
                postbox,
                max_key_len,
                namespaces: crate::observe::Namespaces::default(),
            }),
        }
    }

    /// The longest actor key (namespace and key, in bytes) the store takes, if it has a limit
    /// (see [`Store::max_key_len`]).
    pub fn max_key_len(&self) -> Option<usize> {
        self.inner.max_key_len
    }

    /// What a registry needs to wake the actors of `namespace` that are not running: the
    /// keys with pending operations or unacknowledged messages, and every stored timer row
    /// (key, row id, bytes). Read after every commit sent before.
    pub(crate) async fn wakes(&self, namespace: &str) -> Result<Wakes, StoreError> {
        let ns = namespace.to_owned();
        self.call(move |s| {
            let mut busy = s.keys(&ns, Space::OPS)?;
            busy.extend(s.keys(&ns, Space::OUTBOX)?);
            busy.sort_unstable();
            busy.dedup();
            let mut timers = Vec::new();
            for key in s.keys(&ns, Space::TIMERS)? {
                let actor = ActorKey::new(ns.clone(), key.clone());
                for row in s.read(&actor, Some(Space::TIMERS), 0..=u64::MAX)? {
                    timers.push((key.clone(), row.id, row.bytes));
                }
            }
            Ok(Wakes { busy, timers })
        })
        .await
    }

    /// The pending-operation, outbox and timer rows of one actor, for a registry that saw it
    /// stop without saying when it wants to run next (it failed).
    pub(crate) async fn wake_rows(&self, key: &ActorKey) -> Result<Wakes, StoreError> {
        let key = key.clone();
        self.call(move |s| {
            let ops = s.read(&key, Some(Space::OPS), 0..=u64::MAX)?;
            let outbox = s.read(&key, Some(Space::OUTBOX), 0..=u64::MAX)?;
            let busy = if ops.is_empty() && outbox.is_empty() {
                Vec::new()
            } else {
                vec![key.key().to_owned()]
            };
            let timers = s
                .read(&key, Some(Space::TIMERS), 0..=u64::MAX)?
                .into_iter()
                .map(|row| (key.key().to_owned(), row.id, row.bytes))
                .collect();
            Ok(Wakes { busy, timers })
        })
        .await
    }

    /// The persistent actors running on this storage that take letters, and the letters
    /// refused (see [`crate::Tx::send`]).
    pub fn postbox(&self) -> &crate::delivery::Postbox {
        &self.inner.postbox
    }

    /// The transforms applied to the records written through this storage.
    pub fn transforms(&self) -> &Transforms {
        &self.inner.transforms
    }

    /// The store's name, as used in errors.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The metric handles of the actors of `namespace` on this storage.
    pub(crate) fn namespace_metrics(
        &self,
        namespace: &'static str,
    ) -> Arc<crate::observe::NamespaceMetrics> {
        self.inner.namespaces.get(namespace)
    }

    /// What the committer has done so far.
    pub fn stats(&self) -> CommitStats {
        let c = &self.inner.counters;
        CommitStats {
            batches: c.batches.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            riders: c.riders.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            store: self.inner.name.clone(),
        }
    }

    /// Takes a new writer epoch for `key` and reads its record, after every commit sent
    /// before.
    pub(crate) async fn load(&self, key: ActorKey) -> Result<Loaded, StoreError> {
        let counters = self.inner.counters.clone();
        self.call_then(
            move |s| {
                counters.loads.fetch_add(1, Ordering::Relaxed);
                // An event-sourced record's journal is read from its snapshot on, in the same
                // call: no commit of this storage comes between the two reads.
                let loaded = s.open_actor(&key, &Space::LOADED)?;
                crate::journal::read_tail(s, &key, loaded)
            },
            |_| None,
            self.inline_here(),
            Access::Any,
        )
        .await
    }

    /// Whether this thread may write on its own: inline writes are on, and it is a worker of
    /// a multi-thread tokio runtime (the other workers go on meanwhile; on a current-thread
    /// runtime, the write would stop every task, so the committer thread writes).
    fn inline_here(&self) -> bool {
        self.inner.inline
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    }

    /// Commits `commit` with whatever else is waiting; returns once it is durable.
    ///
    /// If the store is idle (see [`StorageConfig::inline_when_idle`]), writes it here, on the
    /// caller's thread, with the riders queued so far: no hand-off to the committer thread
    /// and no wake-up back.
    pub(crate) async fn commit(&self, commit: ActorCommit) -> Result<(), StoreError> {
        if self.inline_here()
            && let Some(mut holding) = self.inner.shared.take_idle()
        {
            return holding.with(|c| c.map_or_else(|| Err(self.closed()), |c| c.write_one(commit)));
        }
        let (tx, rx) = oneshot::channel();
        self.send(Request::Commit(commit, tx))?;
        let (result, written) = rx.await.map_err(|_| self.closed())?;
        // Freed here, on the thread that allocated it.
        drop(written);
        result
    }

    /// Queues a removal of done operations to ride on the next commit. Losing it in a crash
    /// only means the operations are performed once more.
    pub(crate) fn ride(&self, commit: ActorCommit) {
        let mut q = lock(&self.inner.shared.queue);
        if !q.stopped {
            q.riders.push(commit);
        }
    }

    /// Runs `f` on the committer thread, after every commit sent before it.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_then(f, |_| None, false, Access::Any).await
    }

    /// The snapshot row of `key` as the store holds it now, read after every commit sent
    /// before, even if a failed write poisoned the store: what a rollback puts back.
    pub(crate) async fn read_back(&self, key: &ActorKey) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.clone();
        let read = move |s: &dyn Store| {
            let rows = s.read(&key, Some(Space::SNAPSHOT), 0..=0)?;
            Ok(rows.into_iter().next().map(|row| row.bytes))
        };
        self.call_then(read, |_| None, self.inline_here(), Access::ReadBack)
            .await
    }

    /// Reads every row of `space` of `key` back for a rollback (without taking an epoch).
    pub(crate) async fn read_space_back(
        &self,
        key: &ActorKey,
        space: Space,
    ) -> Result<Vec<crate::store::Row>, StoreError> {
        let key = key.clone();
        let read = move |s: &dyn Store| s.read(&key, Some(space), 0..=u64::MAX);
        self.call_then(read, |_| None, self.inline_here(), Access::ReadBack)
            .await
    }

    /// Reads an event-sourced actor's head, snapshot and the events after it back for a
    /// rollback, as a load would (without taking an epoch).
    pub(crate) async fn read_journal_back(&self, key: &ActorKey) -> Result<Loaded, StoreError> {
        let key = key.clone();
        let read = move |s: &dyn Store| {
            let mut rows = s.read(&key, Some(Space::SNAPSHOT), 0..=0)?;
            rows.extend(s.read(&key, Some(Space::JOURNAL_SNAPSHOT), 0..=0)?);
            let loaded = Loaded {
                rows,
                ..Loaded::default()
            };
            crate::journal::read_tail(s, &key, loaded)
        };
        self.call_then(read, |_| None, self.inline_here(), Access::ReadBack)
            .await
    }

    /// Reads a journal's head row and its events from `from` on (see [`Storage::events`]).
    pub(crate) async fn read_journal(
        &self,
        key: &ActorKey,
        from: u64,
    ) -> Result<(Option<Vec<u8>>, Vec<crate::store::Row>), StoreError> {
        let key = key.clone();
        let read = move |s: &dyn Store| crate::journal::read_journal_rows(s, &key, from);
        self.call_then(read, |_| None, self.inline_here(), Access::Any)
            .await
    }

    /// Runs `f`, which writes, on the committer thread: a failed write (anything but a
    /// fence) poisons the store, as a failed batch does.
    async fn call_writing<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_then(
            f,
            |r| match r {
                Err(StoreError::Fenced(_) | StoreError::Interrupted { .. }) | Ok(_) => None,
                Err(e) => Some(e.to_string()),
            },
            false,
            Access::Any,
        )
        .await
    }

    /// Runs `f` after every commit sent before it: on the caller's thread if `inline` and the
    /// store is idle, otherwise on the committer thread; `poison` tells from its result
    /// whether a write of it failed.
    async fn call_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
        poison: fn(&Result<T, StoreError>) -> Option<String>,
        inline: bool,
        access: Access,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let name = self.inner.name.clone();
        let job: Job = Box::new(move |store| {
            let ran = store.is_ok();
            let result = store.and_then(|s| {
                catch_unwind(AssertUnwindSafe(|| f(s))).unwrap_or_else(|panic| {
                    Err(StoreError::Corrupt {
                        store: name,
                        detail: format!("the backend panicked: {}", panic_text(&*panic)),
                    })
                })
            });
            let reason = if ran { poison(&result) } else { None };
            let _ = tx.send(result);
            reason
        });
        match inline.then(|| self.inner.shared.take_idle()).flatten() {
            Some(mut holding) => {
                // The answer is in the channel when this returns.
                holding.with(|c| match c {
                    Some(c) => c.call(job, access),
                    // Dropping the job tells the caller the store is closed.
                    None => drop(job),
                });
            }
            None => self.send(Request::Call(job, access))?,
        }
        rx.await.map_err(|_| self.closed())?
    }

    /// Deletes the actor `key`: its snapshot and pending operations go in one durable
    /// transaction. Stop the actor first: a running instance is fenced (its next write fails
    /// with [`crate::CommitError::Fenced`] and it stops), but it answers from memory until
    /// then.
    ///
    /// The key's sequence floor stays (raised past every id the record used), so an actor
    /// spawned again under the key never reuses an operation id of the deleted one.
    pub async fn delete(&self, key: &ActorKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.call_writing(move |s| crate::admin::delete_record(s, &key).map(drop))
            .await
    }

    /// Writes every row and mark of the store to `out` as an export stream (see
    /// [`crate::transfer`]), in order with the commits sent before. The committer writes
    /// nothing else meanwhile; for a consistent copy, stop the actors first.
    pub async fn export(
        &self,
        mut out: impl std::io::Write + Send + 'static,
    ) -> Result<crate::TransferStats, crate::TransferError> {
        self.call(move |s| Ok(crate::transfer::export(s, &mut out)))
            .await?
    }

    /// Reads an export stream from `input` into the store, in one commit (see
    /// [`crate::transfer::import`]): a truncated or damaged stream, or a non-empty store with
    /// [`crate::ImportMode::IntoEmpty`], writes nothing. Run it with no actor on the store.
    pub async fn import(
        &self,
        mut input: impl std::io::Read + Send + 'static,
        mode: crate::ImportMode,
    ) -> Result<crate::TransferStats, crate::TransferError> {
        self.call_then(
            move |s| Ok(crate::transfer::import(s, &mut input, mode)),
            |r| match r {
                Ok(Err(crate::TransferError::Store(e))) if !matches!(e, StoreError::Fenced(_)) => {
                    Some(e.to_string())
                }
                _ => None,
            },
            false,
            Access::Any,
        )
        .await?
    }

    /// The keys of `namespace` that hold a state, in order.
    pub async fn list(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        let namespace = namespace.to_owned();
        self.call(move |s| s.keys(&namespace, Space::SNAPSHOT))
            .await
    }

    /// The records of `namespace` moved aside because they could not be decoded (see
    /// [`crate::Start::quarantine_undecodable`]), with their original bytes.
    pub async fn quarantined(&self, namespace: &str) -> Result<Vec<Quarantined>, StoreError> {
        let ns = namespace.to_owned();
        let name = self.inner.name.clone();
        let rows = self
            .call(move |s| {
                let mut rows = Vec::new();
                for key in s.keys(&ns, Space::QUARANTINE)? {
                    let actor = ActorKey::new(ns.clone(), key.clone());
                    for row in s.read(&actor, Some(Space::QUARANTINE), 0..=u64::MAX)? {
                        rows.push((key.clone(), row.id, row.bytes));
                    }
                }
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(key, epoch, blob)| {
                let body = QuarantineBody::decode(&blob).map_err(|e| StoreError::Corrupt {
                    store: name.clone(),
                    detail: format!("quarantined record of `{namespace}/{key}`: {e}"),
                })?;
                Ok(Quarantined {
                    key: ActorKey::new(namespace, key),
                    epoch,
                    reason: body.reason,
                    snapshot: body.snapshot,
                    ops: body.ops,
                    rows: body
                        .rows
                        .into_iter()
                        .map(|(space, id, bytes)| (Space::new(space), id, bytes))
                        .collect(),
                })
            })
            .collect()
    }

    /// Moves the record of `key` aside, if `epoch` is still its epoch, and raises the key's
    /// sequence floor to `floor` in the same transaction.
    pub(crate) async fn quarantine(
        &self,
        key: &ActorKey,
        epoch: u64,
        reason: String,
        loaded: &Loaded,
        floor: u64,
    ) -> Result<(), StoreError> {
        let snapshot = loaded.snapshot().map(<[u8]>::to_vec);
        let ops = loaded.ops();
        let mut rows: Vec<(u8, u64, Vec<u8>)> = loaded
            .rows
            .iter()
            .filter(|r| !matches!(r.space, Space::SNAPSHOT | Space::OPS | Space::JOURNAL))
            .map(|r| (r.space.id(), r.id, r.bytes.clone()))
            .collect();
        let name = self.name().to_owned();
        let key = key.clone();
        self.call_writing(move |s| {
            // A load reads a journal only from its snapshot on; the clear below removes all of
            // it, so every event is kept aside, the history too.
            for r in s.read(&key, Some(Space::JOURNAL), 0..=u64::MAX)? {
                rows.push((r.space.id(), r.id, r.bytes));
            }
            let body = QuarantineBody {
                reason,
                snapshot,
                ops,
                rows,
            };
            let blob = postcard::to_stdvec(&body).map_err(|e| StoreError::backend(&name, e))?;
            let commit = ActorCommit::new(key, epoch)
                .put(Space::QUARANTINE, epoch, blob)
                .raise_floor(floor)
                .clear_record();
            s.commit(&[commit])
        })
        .await
    }

    /// Queues `request` for the committer thread.
    fn send(&self, request: Request) -> Result<(), StoreError> {
        self.inner.shared.queue(request).map_err(|_| self.closed())
    }

    /// Writes what is queued, stops the committer and releases the backend (closing its
    /// file), so the store can be opened again. Later requests fail with
    /// [`StoreError::Closed`]. Stop the actors first.
    ///
    /// Reports what dropping the last handle would not: a failure writing the queued removals,
    /// or that the store was poisoned by a failed commit. Closing twice is not an error.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let result = match self.send(Request::Close(tx)) {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let thread = self.inner.thread.lock().expect("not poisoned").take();
        if let Some(thread) = thread {
            // The thread has answered the close and only returns now; join off the runtime.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

/// The committer thread: waits for requests while nobody else holds the store, then takes
/// what is queued (up to the batch limits, or up to a call, which must see every change
/// sent before it) and serves it.
fn run(shared: &Shared) {
    let mut taken: Vec<Request> = Vec::new();
    // The limits never change; read once, so that the queue's lock is never held while the
    // backend's is taken.
    let (max_batch, max_bytes) = lock(&shared.core)
        .as_ref()
        .map_or((usize::MAX, usize::MAX), |c| {
            (c.config.max_batch, c.config.max_batch_bytes)
        });
    loop {
        let mut q = lock(&shared.queue);
        loop {
            if !q.writing && !q.requests.is_empty() {
                break;
            }
            if !q.writing && q.dropped {
                // Every handle is gone and nothing is queued: write the riders and stop.
                q.stopped = true;
                let riders = std::mem::take(&mut q.riders);
                drop(q);
                if let Some(mut c) = lock(&shared.core).take() {
                    c.riders.extend(riders);
                    let _ = c.flush_riders();
                }
                return;
            }
            q.sleeping = true;
            q = shared.work.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.sleeping = false;
        }
        q.writing = true;
        let (mut commits, mut bytes) = (0, 0);
        while let Some(request) = q.requests.pop_front() {
            let last = match &request {
                Request::Commit(c, _) => {
                    commits += 1;
                    bytes += c.byte_len();
                    commits >= max_batch || bytes >= max_bytes
                }
                Request::Call(..) | Request::Close(_) => true,
            };
            taken.push(request);
            if last {
                break;
            }
        }
        if commits == 1 && q.requests.is_empty() {
            q.contended = false;
        }
        let riders = std::mem::take(&mut q.riders);
        drop(q);
        let mut core = lock(&shared.core);
        let Some(c) = core.as_mut() else {
            // Closed: nobody is answered (dropping the requests tells them so).
            taken.clear();
            continue;
        };
        c.riders.extend(riders);
        let mut batch: Vec<(ActorCommit, Waiter)> = Vec::new();
        let mut close = None;
        for request in taken.drain(..) {
            match request {
                Request::Commit(commit, waiter) => batch.push((commit, waiter)),
                Request::Call(job, access) => {
                    c.flush(&mut batch);
                    c.call(job, access);
                }
                Request::Close(done) => close = Some(done),
            }
        }
        c.flush(&mut batch);
        if let Some(done) = close {
            let result = c.flush_riders();
            // Release the backend (its file) before answering, so the store can be reopened.
            *core = None;
            drop(core);
            let mut q = lock(&shared.queue);
            q.stopped = true;
            // Whatever queued after the close is refused by dropping it.
            q.requests.clear();
            q.riders.clear();
            q.writing = false;
            drop(q);
            let _ = done.send(result);
            return;
        }
        drop(core);
        lock(&shared.queue).writing = false;
    }
}

struct Committer {
    store: Box<dyn Store>,
    name: String,
    config: StorageConfig,
    riders: Vec<ActorCommit>,
    poisoned: Option<String>,
    counters: Arc<Counters>,
    metrics: crate::observe::CommitMetrics,
}

impl Committer {
    /// Runs a call, after writing the riders: a call (a load among them) must see every
    /// change sent before it, the riders too (a dead-letter move or an attempt count that a
    /// respawn's load must not miss). Only then a rider costs a write of its own.
    /// A read back ([`Access::ReadBack`]) needs neither.
    fn call(&mut self, job: Job, access: Access) {
        if access == Access::Any && !self.riders.is_empty() {
            self.write(Vec::new(), |_, _, _| {});
        }
        match self.refuse().filter(|_| access == Access::Any) {
            Some(e) => {
                job(Err(e));
            }
            None => {
                if let Some(reason) = job(Ok(&*self.store)) {
                    // A write of the call failed: as after a failed batch, nobody knows what
                    // is on disk.
                    self.poisoned = Some(reason);
                    self.riders.clear();
                }
            }
        }
    }

    /// Writes one commit (with the riders) and returns its outcome.
    fn write_one(&mut self, commit: ActorCommit) -> Result<(), StoreError> {
        let mut outcome = None;
        self.write(vec![commit], |_, r, _| outcome = Some(r));
        outcome.unwrap_or_else(|| Err(self.refuse().unwrap_or_else(|| self.closed())))
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            store: self.name.clone(),
        }
    }

    fn guarded<T>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match catch_unwind(AssertUnwindSafe(|| f(&*self.store))) {
            Ok(r) => r,
            Err(panic) => Err(StoreError::Corrupt {
                store: self.name.clone(),
                detail: format!("the backend panicked: {}", panic_text(&*panic)),
            }),
        }
    }

    fn refuse(&self) -> Option<StoreError> {
        self.poisoned.as_ref().map(|cause| StoreError::Poisoned {
            store: self.name.clone(),
            cause: cause.clone(),
        })
    }

    /// Writes the riders on their own: only when the committer stops.
    fn flush_riders(&mut self) -> Result<(), StoreError> {
        if let Some(e) = self.refuse() {
            return Err(e);
        }
        if !self.riders.is_empty() {
            self.write(Vec::new(), |_, _, _| {});
        }
        self.refuse().map_or(Ok(()), Err)
    }

    /// Writes `batch`, with the riders, if it holds any commit (riders never cost a sync),
    /// and answers every waiter.
    fn flush(&mut self, batch: &mut Vec<(ActorCommit, Waiter)>) {
        if batch.is_empty() {
            return;
        }
        let (commits, mut waiters): (Vec<ActorCommit>, Vec<Option<Waiter>>) =
            batch.drain(..).map(|(c, w)| (c, Some(w))).unzip();
        self.write(commits, |i, r, c| {
            if let Some(waiter) = waiters[i].take() {
                let _ = waiter.send((r, c));
            }
        });
    }

    /// Writes the riders and `batch` in one transaction; tells `answer` the outcome of each
    /// commit of `batch`, by its index, with the commit itself once written.
    ///
    /// The transaction is the `ractor_persist.commit` span, and feeds the commit metrics.
    fn write(
        &mut self,
        batch: Vec<ActorCommit>,
        answer: impl FnMut(usize, Result<(), StoreError>, Option<ActorCommit>),
    ) {
        let span = tracing::debug_span!(
            target: crate::observe::TARGET,
            "ractor_persist.commit",
            store = %self.name,
            commits = tracing::field::Empty,
            riders = tracing::field::Empty,
            fenced = tracing::field::Empty,
            bytes = tracing::field::Empty,
            duration_seconds = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let _entered = span.enter();
        self.write_in(batch, answer, &span);
    }

    /// [`Committer::write`], in its span.
    fn write_in(
        &mut self,
        batch: Vec<ActorCommit>,
        mut answer: impl FnMut(usize, Result<(), StoreError>, Option<ActorCommit>),
        span: &tracing::Span,
    ) {
        if self.poisoned.is_some() {
            // Nothing more is written until the store is reopened: drop the riders too.
            self.riders.clear();
            span.record("outcome", "poisoned");
            for i in 0..batch.len() {
                let refused = self.refuse().unwrap_or_else(|| self.closed());
                answer(i, Err(refused), None);
            }
            return;
        }
        // Riders first: each was sent after its actor's earlier commits were acknowledged and
        // before its later ones, so this keeps every actor's order.
        let n_riders = self.riders.len();
        let n = batch.len();
        let mut commits: Vec<ActorCommit> = std::mem::take(&mut self.riders);
        commits.extend(batch);
        // Which commit of `batch` each one is (`None`: a rider).
        let mut owners: Vec<Option<usize>> = (0..n_riders)
            .map(|_| None)
            .chain((0..n).map(Some))
            .collect();
        let started = std::time::Instant::now();
        let mut fenced = 0u64;
        loop {
            if commits.is_empty() {
                if fenced > 0 {
                    // Every commit was refused: the call was made, so it is timed and sized.
                    let took = started.elapsed();
                    self.metrics.refused(took);
                    span.record("commits", n_riders + n);
                    span.record("riders", n_riders);
                    span.record("fenced", fenced);
                    span.record("duration_seconds", took.as_secs_f64());
                    span.record("outcome", "fenced");
                }
                return;
            }
            match self.guarded(|s| s.commit(&commits)) {
                Ok(()) => {
                    let took = started.elapsed();
                    let c = &self.counters;
                    c.batches.fetch_add(1, Ordering::Relaxed);
                    c.commits.fetch_add(commits.len() as u64, Ordering::Relaxed);
                    let riders = owners.iter().filter(|w| w.is_none()).count();
                    c.riders.fetch_add(riders as u64, Ordering::Relaxed);
                    let bytes: usize = commits.iter().map(ActorCommit::byte_len).sum();
                    self.metrics.written(commits.len(), riders, bytes, took);
                    if !span.is_disabled() {
                        span.record("commits", commits.len());
                        span.record("riders", riders);
                        span.record("fenced", fenced);
                        span.record("bytes", bytes);
                        span.record("duration_seconds", took.as_secs_f64());
                        span.record("outcome", "committed");
                    }
                    for (commit, owner) in commits.into_iter().zip(owners) {
                        if let Some(i) = owner {
                            answer(i, Ok(()), Some(commit));
                        }
                    }
                    return;
                }
                Err(StoreError::Fenced(fences))
                    if !fences.is_empty()
                        && fences.windows(2).all(|w| w[0].index < w[1].index)
                        && fences.last().is_some_and(|f| f.index < commits.len()) =>
                {
                    // Refuse the stale commits alone and write the others.
                    for fence in fences.iter().rev() {
                        crate::observe::fenced(&fence.key, fence.epoch, fence.current);
                        fenced += 1;
                        commits.remove(fence.index);
                        if let Some(i) = owners.remove(fence.index) {
                            let mut one = fence.clone();
                            one.index = 0;
                            answer(i, Err(StoreError::Fenced(vec![one])), None);
                        }
                    }
                }
                Err(e) => {
                    // Fail everyone: nobody knows whether the batch landed. After an
                    // interrupted call of a server database the database is whole (rolled
                    // back, or all of the batch committed), so the next batch is served; after
                    // any other failure nobody knows what is on disk, and further writes are
                    // refused. (A fence that names no commit of the batch, or names them out
                    // of order, breaks the seam's contract: it is such a failure too.)
                    let e = match e {
                        StoreError::Fenced(fences) => StoreError::Corrupt {
                            store: self.name.clone(),
                            detail: format!(
                                "the backend refused a batch of {} commits with fences that do not name its commits in order: {:?}",
                                commits.len(),
                                fences.iter().map(|f| f.index).collect::<Vec<_>>()
                            ),
                        },
                        e => e,
                    };
                    let took = started.elapsed();
                    self.metrics.failed(took);
                    let poisons = !matches!(e, StoreError::Interrupted { .. });
                    span.record("fenced", fenced);
                    span.record("duration_seconds", took.as_secs_f64());
                    span.record("outcome", "failed");
                    span.record("error", tracing::field::display(&e));
                    tracing::error!(
                        name: "ractor_persist.commit_failed",
                        target: crate::observe::TARGET,
                        store = %self.name,
                        commits = commits.len(),
                        poisoned = poisons,
                        error = %e,
                        "store transaction failed"
                    );
                    if poisons {
                        self.poisoned = Some(e.to_string());
                    }
                    for i in owners.into_iter().flatten() {
                        answer(i, Err(clone_err(&e)), None);
                    }
                    return;
                }
            }
        }
    }
}

/// The lowest sequence number `loaded`'s key may use next: above the stored floor, every
/// stored operation, and the next number the snapshot's header names. A snapshot whose
/// checksum fails still gives its sequence field, unverified (capped at 2^62): it can only
/// raise the floor, and a store written before floors existed has no other record of the ids
/// used by operations already removed.
pub(crate) fn sequence_floor(loaded: &Loaded) -> u64 {
    let header = loaded
        .snapshot()
        .and_then(|b| match crate::envelope::verify(b, u32::MAX) {
            Ok(v) => Some(v.header.sequence),
            Err(_) => crate::envelope::unverified_sequence(b),
        });
    loaded.floor.max(after_ops(loaded)).max(header.unwrap_or(0))
}

/// The sequence number after every id stored in `loaded` under one: operations, outgoing
/// messages, channels, inbox slots, stored replies, timers (0 when there is none). Journal
/// events and map entries are numbered apart, and do not count.
fn after_ops(loaded: &Loaded) -> u64 {
    loaded
        .rows
        .iter()
        .filter(|r| {
            !matches!(
                r.space,
                Space::SNAPSHOT
                    | Space::QUARANTINE
                    | Space::JOURNAL
                    | Space::MAPS
                    | Space::JOURNAL_SNAPSHOT
            )
        })
        .map(|r| r.id.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// Where a loaded actor's ids go on: right after the snapshot's (if it is intact: the header
/// is written with every id handed out, so it is exact) and every stored operation;
/// otherwise from the [`sequence_floor`], which may skip ids but never reuses one.
///
/// The floor is kept at most `block` ahead of the ids handed out, so a header more than
/// `block` below it is provably older than the record it was part of (a snapshot put back
/// from a backup): then the floor wins too.
pub(crate) fn next_sequence(loaded: &Loaded, block: u64) -> u64 {
    let verified = loaded
        .snapshot()
        .map(|b| crate::envelope::verify(b, u32::MAX));
    match verified {
        Some(Ok(v)) if v.header.sequence.saturating_add(block) >= loaded.floor => {
            v.header.sequence.max(after_ops(loaded))
        }
        _ => sequence_floor(loaded),
    }
}

/// Store errors hold boxed sources, so a batch failure is told to each waiter as text.
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Corrupt { store, detail } => StoreError::Corrupt {
            store: store.clone(),
            detail: detail.clone(),
        },
        StoreError::Fenced(f) => StoreError::Fenced(f.clone()),
        StoreError::Poisoned { store, cause } => StoreError::Poisoned {
            store: store.clone(),
            cause: cause.clone(),
        },
        StoreError::Closed { store } => StoreError::Closed {
            store: store.clone(),
        },
        StoreError::Unsupported { store, operation } => StoreError::Unsupported {
            store: store.clone(),
            operation,
        },
        StoreError::Backend { store, source } => StoreError::Backend {
            store: store.clone(),
            source: source.to_string().into(),
        },
        StoreError::Interrupted { store, source } => StoreError::Interrupted {
            store: store.clone(),
            source: source.to_string().into(),
        },
    }
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::RowWrite;

    /// One written batch: each commit's key and snapshot.
    type Batch = Vec<(String, Option<Vec<u8>>)>;

    /// Records every batch; the first `hold` commits wait for a release; commits from call
    /// number `fail_from` on fail.
    #[derive(Clone)]
    struct Scripted {
        inner: MemoryStore,
        batches: Arc<Mutex<Vec<Batch>>>,
        entered: Arc<Mutex<Option<std_mpsc::Sender<()>>>>,
        release: Arc<Mutex<Option<std_mpsc::Receiver<()>>>>,
        fail_from: usize,
        /// The name of the thread that made each commit call.
        threads: Arc<Mutex<Vec<String>>>,
    }

    impl Scripted {
        fn new(fail_from: usize) -> Self {
            Scripted {
                inner: MemoryStore::new(),
                batches: Arc::default(),
                entered: Arc::default(),
                release: Arc::default(),
                fail_from,
                threads: Arc::default(),
            }
        }

        /// Makes the next commit wait; returns (entered, release).
        fn hold_next(&self) -> (std_mpsc::Receiver<()>, std_mpsc::Sender<()>) {
            let (etx, erx) = std_mpsc::channel();
            let (rtx, rrx) = std_mpsc::channel();
            *self.entered.lock().unwrap() = Some(etx);
            *self.release.lock().unwrap() = Some(rrx);
            (erx, rtx)
        }
    }

    impl Store for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
            self.inner.open_actor(key, spaces)
        }
        fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            self.threads.lock().unwrap().push(thread);
            if let Some(entered) = self.entered.lock().unwrap().take() {
                entered.send(()).unwrap();
                let release = self.release.lock().unwrap().take().unwrap();
                release.recv().unwrap();
            }
            let mut batches = self.batches.lock().unwrap();
            batches.push(
                batch
                    .iter()
                    .map(|c| {
                        let snapshot = c.writes.iter().find_map(|w| match w {
                            RowWrite::Put {
                                space: Space::SNAPSHOT,
                                bytes,
                                ..
                            } => Some(bytes.clone()),
                            _ => None,
                        });
                        (c.key.key().to_owned(), snapshot)
                    })
                    .collect(),
            );
            if batches.len() >= self.fail_from {
                return Err(StoreError::backend("scripted", "disk on fire"));
            }
            self.inner.commit(batch)
        }
    }

    fn commit_of(key: &str, epoch: u64, n: u8) -> ActorCommit {
        ActorCommit::new(ActorKey::new("t", key), epoch)
            .put(Space::SNAPSHOT, 0, vec![n])
            .put(Space::OPS, u64::from(n), vec![n])
    }

    async fn epoch(storage: &Storage, key: &str) -> u64 {
        storage.load(ActorKey::new("t", key)).await.unwrap().epoch
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_commits_share_one_batch_and_none_is_acknowledged_before_it_is_written() {
        let store = Scripted::new(usize::MAX);
        let storage = Storage::new(store.clone());
        let mut epochs = Vec::new();
        for i in 0..9 {
            epochs.push(epoch(&storage, &format!("a{i}")).await);
        }
        let (entered, release) = store.hold_next();
        let (done, mut first) = oneshot::channel();
        storage
            .send(Request::Commit(commit_of("a0", epochs[0], 1), done))
            .unwrap();
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        // The committer is inside the store with a0's commit, which is not written yet.
        assert!(
            first.try_recv().is_err(),
            "the first waiter was acknowledged before its commit was written"
        );
        assert!(store.batches.lock().unwrap().is_empty());
        // Eight more queue behind it.
        let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        for (i, e) in epochs.iter().enumerate().skip(1) {
            let s = storage.clone();
            let tx = tx.clone();
            let c = commit_of(&format!("a{i}"), *e, 1);
            let (queued_tx, queued) = oneshot::channel();
            tokio::spawn(async move {
                let (done, rx) = oneshot::channel();
                s.send(Request::Commit(c, done)).unwrap();
                queued_tx.send(()).unwrap();
                tx.send(rx.await.unwrap().0).unwrap();
            });
            queued.await.unwrap();
        }
        drop(tx);
        assert!(
            acks.try_recv().is_err(),
            "acknowledged before the batch was written"
        );
        release.send(()).unwrap();
        first.await.unwrap().0.unwrap();
        let mut n = 0;
        while let Some(ack) = acks.recv().await {
            ack.unwrap();
            n += 1;
        }
        assert_eq!(n, 8);
        let batches = store.batches.lock().unwrap().clone();
        assert_eq!(
            batches.len(),
            2,
            "one write for a0, one for the eight behind it"
        );
        assert_eq!(batches[1].len(), 8);
        assert_eq!(storage.stats().batches, 2);
        storage.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_of_a_failed_batch_fails_and_the_store_refuses_more_writes() {
        let store = Scripted::new(2);
        let storage = Storage::new(store.clone());
        let mut epochs = Vec::new();
        for i in 0..6 {
            epochs.push(epoch(&storage, &format!("b{i}")).await);
        }
        let (entered, release) = store.hold_next();
        let first = tokio::spawn({
            let s = storage.clone();
            let e = epochs[0];
            async move { s.commit(commit_of("b0", e, 1)).await }
        });
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let mut waiters = Vec::new();
        for (i, e) in epochs.iter().enumerate().skip(1) {
            let (done, rx) = oneshot::channel();
            storage
                .send(Request::Commit(commit_of(&format!("b{i}"), *e, 1), done))
                .unwrap();
            waiters.push(rx);
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        for rx in waiters {
            let err = rx
                .await
                .unwrap()
                .0
                .expect_err("a failed batch acknowledges no one");
            assert!(err.to_string().contains("disk on fire"), "{err}");
        }
        assert_eq!(
            store.batches.lock().unwrap()[1].len(),
            5,
            "they shared one batch"
        );
        let later = storage.commit(commit_of("b1", epochs[1], 2)).await;
        assert!(
            matches!(later, Err(StoreError::Poisoned { .. })),
            "{later:?}"
        );
        assert!(later.unwrap_err().to_string().contains("reopen"));
        assert!(storage.close().await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_actors_commits_are_written_in_the_order_sent() {
        let store = Scripted::new(usize::MAX);
        let storage = Storage::new(store.clone());
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = storage.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("c{i}");
                let e = epoch(&s, &key).await;
                for n in 0..50u8 {
                    // Removal-only riders in between, as `perform` sends them.
                    s.ride(
                        ActorCommit::new(ActorKey::new("t", &key), e)
                            .remove(Space::OPS, u64::from(n)),
                    );
                    s.commit(commit_of(&key, e, n)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let batches = store.batches.lock().unwrap().clone();
        let mut seen: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
        for batch in &batches {
            for (key, snap) in batch {
                if let Some(s) = snap {
                    seen.entry(key.clone()).or_default().push(s[0]);
                }
            }
        }
        assert_eq!(seen.len(), 16);
        for (key, order) in seen {
            assert_eq!(order, (0..50).collect::<Vec<u8>>(), "order of {key}");
        }
        let stats = storage.stats();
        // Riders never cost a sync of their own, except before a load (which must see them).
        assert!(stats.batches <= 16 * 50 + stats.loads, "{stats:?}");
        assert_eq!(stats.batches as usize, batches.len());
        storage.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_commit_batched_with_a_fenced_one_is_written_before_it_is_acknowledged() {
        let store = Scripted::new(usize::MAX);
        let storage = Storage::new(store.clone());
        let stale = epoch(&storage, "old").await;
        // A newer instance of "old" takes over: the first instance's epoch is now stale.
        let _newer = epoch(&storage, "old").await;
        let live = epoch(&storage, "live").await;
        let other = epoch(&storage, "other").await;
        let (entered, release) = store.hold_next();
        let (done, held) = oneshot::channel();
        storage
            .send(Request::Commit(commit_of("other", other, 1), done))
            .unwrap();
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        // Behind the held write, a stale and a live commit share the next batch.
        let (stale_done, stale_rx) = oneshot::channel();
        storage
            .send(Request::Commit(commit_of("old", stale, 7), stale_done))
            .unwrap();
        let (live_done, live_rx) = oneshot::channel();
        storage
            .send(Request::Commit(commit_of("live", live, 9), live_done))
            .unwrap();
        release.send(()).unwrap();
        held.await.unwrap().0.unwrap();
        let refused = stale_rx
            .await
            .unwrap()
            .0
            .expect_err("the stale commit is fenced");
        assert!(
            matches!(refused, StoreError::Fenced(ref f) if f.len() == 1),
            "{refused}"
        );
        live_rx
            .await
            .unwrap()
            .0
            .expect("the live commit is acknowledged");
        // Acknowledged means written: the live commit is in the store, the stale one is not.
        let live_key = ActorKey::new("t", "live");
        assert_eq!(store.inner.snapshot(&live_key), Some(vec![9]));
        assert_eq!(store.inner.ops(&live_key), vec![(9, vec![9])]);
        assert_eq!(store.inner.snapshot(&ActorKey::new("t", "old")), None);
        let batches = store.batches.lock().unwrap().clone();
        assert_eq!(
            batches.len(),
            3,
            "held write, refused batch, batch without the stale one"
        );
        assert_eq!(batches[1].len(), 2);
        assert_eq!(batches[2], vec![("live".to_owned(), Some(vec![9]))]);
        storage.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_commit_is_written_on_its_own_thread_with_the_riders_and_acknowledged_after() {
        let store = Scripted::new(usize::MAX);
        let storage = Storage::new(store.clone());
        let e = epoch(&storage, "solo").await;
        let other = epoch(&storage, "other").await;
        let key = ActorKey::new("t", "solo");
        storage.commit(commit_of("solo", e, 1)).await.unwrap();
        // The removal of the performed operation, queued as `perform` queues it.
        storage.ride(ActorCommit::new(key.clone(), e).remove(Space::OPS, 1));
        let (entered, release) = store.hold_next();
        let s = storage.clone();
        let second = tokio::spawn(async move { s.commit(commit_of("solo", e, 2)).await });
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        // Inside the store, not written yet: not acknowledged.
        assert!(
            !second.is_finished(),
            "acknowledged before its write returned"
        );
        // A commit arriving meanwhile waits for the committer thread.
        let (done, third) = oneshot::channel();
        storage
            .send(Request::Commit(commit_of("other", other, 3), done))
            .unwrap();
        release.send(()).unwrap();
        second.await.unwrap().unwrap();
        third.await.unwrap().0.unwrap();
        assert_eq!(
            store.inner.ops(&key),
            vec![(2, vec![2])],
            "the rider left with the lone commit"
        );
        let batches = store.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 3, "{batches:?}");
        assert_eq!(
            batches[1].len(),
            2,
            "the rider and the lone commit, in one batch"
        );
        let threads = store.threads.lock().unwrap().clone();
        assert!(
            !threads[1].starts_with("persist-commit"),
            "the lone commit was written by the committer thread: {threads:?}"
        );
        assert!(
            threads[2].starts_with("persist-commit"),
            "the queued commit was not written by the committer thread: {threads:?}"
        );
        storage.close().await.unwrap();
    }
}
