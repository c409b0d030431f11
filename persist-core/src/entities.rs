//! A keyed registry of one persistent actor type: activation on demand, passivation of idle
//! actors, a bound on resident actors, and wakes for the ones that are not running.
//!
//! [`Entities::get`] returns the running actor of a key or activates it from the store; the
//! activations of one key are serialized, so concurrent gets start one instance (and the
//! store's epoch fence would refuse the writes of a second). An actor idle for
//! [`EntitiesBuilder::idle_after`] is passivated: it is drained (the messages already in its
//! mailbox are handled) and stopped; its state, pending operations, outbox and timers are in
//! the store. When it stops it tells the registry when it next needs to run (its earliest
//! timer, retry or redelivery); the registry activates it then, or at the next message.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef, MessagingErr, RpcReplyPort, SpawnErr};
use tokio::sync::{Notify, oneshot};

use crate::error::StoreError;
use crate::key::ActorKey;
use crate::model::{Persistent, PersistentActor};
use crate::runtime::{Runtime, Start};
use crate::storage::Storage;
use crate::timer::{MAX_SLEEP, TimerRow, now_ms};

/// What a registry knows of one running actor, shared with its runtime.
pub(crate) struct Life {
    /// When it last handled something, in nanoseconds since the registry started.
    active: AtomicU64,
    base: Instant,
    /// Set by the runtime when it stops normally: when it next needs to run.
    stopped: AtomicBool,
    wake: AtomicU64,
}

impl Life {
    fn new(base: Instant) -> Self {
        let life = Life {
            active: AtomicU64::new(0),
            base,
            stopped: AtomicBool::new(false),
            wake: AtomicU64::new(u64::MAX),
        };
        life.touch();
        life
    }

    /// Notes activity now.
    pub(crate) fn touch(&self) {
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.active.store(ns, Ordering::Relaxed);
    }

    /// Notes a normal stop, and when (ms since the Unix epoch) the actor next needs to run.
    pub(crate) fn stopped(&self, wake: Option<u64>) {
        self.wake.store(wake.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.stopped.store(true, Ordering::Release);
    }

    fn idle_for(&self) -> Duration {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(now.saturating_sub(self.active.load(Ordering::Relaxed)))
    }

    /// `Some(wake)` after a normal stop (`None` inside: nothing to wake for); `None` when the
    /// actor did not say (it failed or was killed).
    fn report(&self) -> Option<Option<u64>> {
        self.stopped
            .load(Ordering::Acquire)
            .then(|| Some(self.wake.load(Ordering::Relaxed)).filter(|w| *w != u64::MAX))
    }
}

/// A registry call that failed. Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntityError {
    /// The key cannot be stored by this store; nothing was activated.
    #[error("key `{key}` is not valid for store `{store}`: {reason}")]
    InvalidKey {
        /// The key refused.
        key: ActorKey,
        /// The store.
        store: String,
        /// Why.
        reason: String,
    },
    /// The actor could not be started (its record could not be loaded or decoded, `init` or
    /// the start hook failed).
    #[error("activating `{key}` failed: {source}")]
    Activation {
        /// The actor.
        key: ActorKey,
        /// ractor's error, holding the load error or the hook's.
        source: SpawnErr,
    },
    /// The actor stopped (failed) before it answered a [`Entities::call`].
    #[error("`{key}` stopped before it replied")]
    NoReply {
        /// The actor.
        key: ActorKey,
    },
    /// No reply within the timeout of a [`Entities::call`]; the message may have been handled.
    #[error("`{key}` did not reply within {timeout:?}")]
    Timeout {
        /// The actor.
        key: ActorKey,
        /// The timeout given.
        timeout: Duration,
    },
    /// The registry was shut down.
    #[error("the registry of `{namespace}` is shut down")]
    ShutDown {
        /// The actor type's namespace.
        namespace: &'static str,
    },
}

/// One key in the registry.
enum Entry<M: ractor::Message> {
    /// Being started; waiters are told when it is running or failed.
    Activating(Arc<Notify>),
    Running {
        actor: ActorRef<M>,
        life: Arc<Life>,
    },
    /// Being passivated; waiters are told when it stopped.
    Stopping(Arc<Notify>),
}

struct State<M: ractor::Message> {
    entries: HashMap<String, Entry<M>>,
    /// Actors running or being passivated.
    running: usize,
    /// Of those, being passivated.
    stopping: usize,
    /// Keys not running that must be activated at an instant (ms since the Unix epoch).
    wakes: BTreeSet<(u64, String)>,
    wake_of: HashMap<String, u64>,
    shut: bool,
}

impl<M: ractor::Message> State<M> {
    /// Marks the running actor `key` as being passivated; its ref, and what tells when it
    /// stopped.
    fn begin_stop(&mut self, key: &str) -> Option<(ActorRef<M>, Arc<Notify>)> {
        let Some(Entry::Running { actor, .. }) = self.entries.get(key) else {
            return None;
        };
        let actor = actor.clone();
        let notify = Arc::new(Notify::new());
        self.entries
            .insert(key.to_owned(), Entry::Stopping(notify.clone()));
        self.stopping += 1;
        Some((actor, notify))
    }

    fn schedule(&mut self, key: &str, at: u64) {
        if let Some(old) = self.wake_of.get(key).copied() {
            if old <= at {
                return;
            }
            self.wakes.remove(&(old, key.to_owned()));
        }
        self.wakes.insert((at, key.to_owned()));
        self.wake_of.insert(key.to_owned(), at);
    }

    fn unschedule(&mut self, key: &str) {
        if let Some(at) = self.wake_of.remove(key) {
            self.wakes.remove(&(at, key.to_owned()));
        }
    }
}

type Msg<A> = <A as PersistentActor>::Msg;
type Args<A> = dyn Fn(&str) -> <A as PersistentActor>::Arguments + Send + Sync;
type Configure<A> = dyn Fn(Start<A>) -> Start<A> + Send + Sync;

struct Inner<A: PersistentActor> {
    storage: Storage,
    args: Box<Args<A>>,
    configure: Box<Configure<A>>,
    idle: Option<Duration>,
    max_resident: Option<usize>,
    restart_after: Duration,
    base: Instant,
    state: Mutex<State<Msg<A>>>,
    /// Wakes the scheduler when an earlier wake was added, or at shutdown.
    scheduler: Arc<Notify>,
}

/// A registry of the persistent actors of type `A` on one [`Storage`], by key.
///
/// ```ignore
/// let accounts = Entities::<AccountActor>::builder(&storage, |_key| ())
///     .idle_after(Duration::from_secs(60))
///     .max_resident(10_000)
///     .start()
///     .await?;
/// accounts.send("alice", AccountMsg::Deposit(10)).await?;
/// let balance = accounts.call("alice", AccountMsg::Balance, None).await?;
/// ```
///
/// Send through the registry ([`send`](Self::send), [`call`](Self::call)): a message that
/// meets an actor being passivated is sent again to its next activation, so none is lost. A
/// ref from [`get`](Self::get) is an ordinary ractor ref, valid until the actor is passivated.
/// Messages from other persistent actors ([`crate::Tx::send`]) activate their destination
/// too. Cheap to clone.
pub struct Entities<A: PersistentActor> {
    inner: Arc<Inner<A>>,
}

impl<A: PersistentActor> Clone for Entities<A> {
    fn clone(&self) -> Self {
        Entities {
            inner: self.inner.clone(),
        }
    }
}

impl<A: PersistentActor> std::fmt::Debug for Entities<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entities")
            .field("actor_type", &std::any::type_name::<A>())
            .finish_non_exhaustive()
    }
}

/// Options of an [`Entities`] registry; [`start`](Self::start) builds it.
pub struct EntitiesBuilder<A: PersistentActor> {
    storage: Storage,
    args: Box<Args<A>>,
    configure: Box<Configure<A>>,
    idle: Option<Duration>,
    max_resident: Option<usize>,
    restart_after: Duration,
}

impl<A: PersistentActor> std::fmt::Debug for EntitiesBuilder<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntitiesBuilder")
            .field("idle", &self.idle)
            .field("max_resident", &self.max_resident)
            .field("restart_after", &self.restart_after)
            .finish_non_exhaustive()
    }
}

/// The actor types a registry can activate.
pub trait Activate:
    Persistent
    + Default
    + Actor<Msg = <Self as PersistentActor>::Msg, State = Runtime<Self>, Arguments = Start<Self>>
{
}

impl<A> Activate for A where
    A: Persistent
        + Default
        + Actor<Msg = <A as PersistentActor>::Msg, State = Runtime<A>, Arguments = Start<A>>
{
}

impl<A: Activate> EntitiesBuilder<A> {
    /// Passivates an actor that handled nothing for `idle` (none by default).
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Keeps at most `max` actors resident: an activation beyond it passivates the least
    /// recently active one and returns once it stopped (no bound by default; at least 1).
    ///
    /// The wait is for that actor to handle what its mailbox already holds: a handler that
    /// waits on a call through this registry while being the least recently active actor
    /// would wait for itself, so keep registry calls out of handlers when a bound is set
    /// (send letters with [`crate::Tx::send`] instead).
    pub fn max_resident(mut self, max: usize) -> Self {
        self.max_resident = Some(max.max(1));
        self
    }

    /// How long after an actor failed the registry starts it again to perform what it left
    /// pending (default 1 s).
    pub fn restart_after(mut self, delay: Duration) -> Self {
        self.restart_after = delay;
        self
    }

    /// Adjusts the [`Start`] of every activation (retry policy, redelivery, ...).
    pub fn configure(mut self, f: impl Fn(Start<A>) -> Start<A> + Send + Sync + 'static) -> Self {
        self.configure = Box::new(f);
        self
    }

    /// Starts the registry: reads from the store which of this type's actors have timers,
    /// pending operations or unacknowledged messages (those of a previous process), and
    /// schedules their activation (at their earliest timer; at once for pending work).
    pub async fn start(self) -> Result<Entities<A>, StoreError> {
        let storage = self.storage.clone();
        let wakes = storage.wakes(A::NAME).await?;
        let inner = Arc::new(Inner {
            storage,
            args: self.args,
            configure: self.configure,
            idle: self.idle,
            max_resident: self.max_resident,
            restart_after: self.restart_after,
            base: Instant::now(),
            state: Mutex::new(State {
                entries: HashMap::new(),
                running: 0,
                stopping: 0,
                wakes: BTreeSet::new(),
                wake_of: HashMap::new(),
                shut: false,
            }),
            scheduler: Arc::new(Notify::new()),
        });
        let entities = Entities { inner };
        entities.take_wakes(wakes);
        let weak = Arc::downgrade(&entities.inner);
        tokio::spawn(schedule(weak.clone(), entities.inner.scheduler.clone()));
        if let Some(idle) = entities.inner.idle {
            tokio::spawn(sweep(weak.clone(), idle));
        }
        // Letters to an actor of this type that is not running activate it.
        let handle = tokio::runtime::Handle::current();
        entities.inner.storage.postbox().set_activator(
            A::NAME,
            Arc::new(move |key: &ActorKey| {
                if let Some(inner) = weak.upgrade() {
                    let entities = Entities { inner };
                    let key = key.key().to_owned();
                    handle.spawn(async move {
                        let _ = entities.get(&key).await;
                    });
                }
            }),
        );
        Ok(entities)
    }
}

impl<A: Activate> Entities<A> {
    /// A registry of `A` on `storage`; `args` gives the arguments of `init` for a key that
    /// has no stored state yet.
    pub fn builder(
        storage: &Storage,
        args: impl Fn(&str) -> <A as PersistentActor>::Arguments + Send + Sync + 'static,
    ) -> EntitiesBuilder<A> {
        EntitiesBuilder {
            storage: storage.clone(),
            args: Box::new(args),
            configure: Box::new(|start| start),
            idle: None,
            max_resident: None,
            restart_after: Duration::from_secs(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<Msg<A>>> {
        lock(&self.inner)
    }

    /// The running actor of `key`, activated from the store if it is not running (with
    /// `init` if the store has no state for it). Concurrent calls for one key start one
    /// instance.
    pub async fn get(&self, key: &str) -> Result<ActorRef<Msg<A>>, EntityError> {
        let actor_key = ActorKey::new(A::NAME, key);
        if let Some(max) = self.inner.storage.max_key_len()
            && A::NAME.len() + key.len() > max
        {
            return Err(EntityError::InvalidKey {
                key: actor_key,
                store: self.inner.storage.name().to_owned(),
                reason: format!(
                    "the store takes keys of at most {max} bytes (namespace and key), this one \
                     has {}",
                    A::NAME.len() + key.len()
                ),
            });
        }
        loop {
            enum Next<M: ractor::Message> {
                Running(ActorRef<M>),
                Wait(Arc<Notify>),
                Activate(Arc<Notify>),
                Shut,
            }
            let next = {
                let mut state = self.lock();
                if state.shut {
                    Next::Shut
                } else {
                    match state.entries.get(key) {
                        Some(Entry::Running { actor, life }) => {
                            life.touch();
                            Next::Running(actor.clone())
                        }
                        Some(Entry::Activating(n) | Entry::Stopping(n)) => Next::Wait(n.clone()),
                        None => {
                            let n = Arc::new(Notify::new());
                            state
                                .entries
                                .insert(key.to_owned(), Entry::Activating(n.clone()));
                            Next::Activate(n)
                        }
                    }
                }
            };
            let notify = match next {
                Next::Running(actor) => return Ok(actor),
                Next::Shut => {
                    return Err(EntityError::ShutDown { namespace: A::NAME });
                }
                Next::Activate(n) => {
                    // On a task of its own: a caller that gives up (a timeout around `get`)
                    // must not leave the key marked as activating, nor its actor unmanaged.
                    let (this, key) = (self.clone(), key.to_owned());
                    let activation =
                        tokio::spawn(async move { this.activate(&key, actor_key, n).await });
                    return match activation.await {
                        Ok(result) => result,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    };
                }
                Next::Wait(n) => n,
            };
            self.wait_out(key, &notify).await;
        }
    }

    /// Waits until `key`'s entry is no longer the activation or passivation that `notify`
    /// belongs to.
    async fn wait_out(&self, key: &str, notify: &Arc<Notify>) {
        // `notify_waiters` reaches a `Notified` from its creation on; the entry is changed
        // under the lock before it is called, so this wait cannot miss it.
        let notified = notify.notified();
        let still = matches!(
            self.lock().entries.get(key),
            Some(Entry::Activating(n) | Entry::Stopping(n)) if Arc::ptr_eq(n, notify)
        );
        if still {
            notified.await;
        }
    }

    /// Starts actor `key` (its entry is `Activating(notify)`).
    async fn activate(
        &self,
        key: &str,
        actor_key: ActorKey,
        notify: Arc<Notify>,
    ) -> Result<ActorRef<Msg<A>>, EntityError> {
        let life = Arc::new(Life::new(self.inner.base));
        let start = Start::new(&self.inner.storage, key, (self.inner.args)(key));
        let start = (self.inner.configure)(start).life(life.clone());
        let spawned = ractor::ActorRuntime::<A>::spawn(None, A::default(), start).await;
        let mut late = None;
        let (result, victim) = {
            let mut state = self.lock();
            state.entries.remove(key);
            let result = match spawned {
                Ok((actor, handle)) if state.shut => {
                    // Shut down while it started: it must not stay running unmanaged.
                    late = Some((actor, handle));
                    Err(EntityError::ShutDown { namespace: A::NAME })
                }
                Ok((actor, handle)) => {
                    state.entries.insert(
                        key.to_owned(),
                        Entry::Running {
                            actor: actor.clone(),
                            life: life.clone(),
                        },
                    );
                    state.running += 1;
                    state.unschedule(key);
                    tokio::spawn(watch(
                        Arc::downgrade(&self.inner),
                        key.to_owned(),
                        actor.clone(),
                        life,
                        handle,
                    ));
                    Ok(actor)
                }
                Err(source) => Err(EntityError::Activation {
                    key: actor_key,
                    source,
                }),
            };
            // The victim is marked in the same section that chose it, so concurrent
            // activations past the bound each passivate another one.
            let victim = self
                .over_capacity(&state, key)
                .and_then(|v| Some((v.clone(), state.begin_stop(&v)?)));
            (result, victim)
        };
        notify.notify_waiters();
        if let Some((actor, handle)) = late {
            let _ = actor.drain();
            let _ = handle.await;
        }
        // Past the bound, the activation returns once the least recently active actor has
        // stopped (it handles what is in its mailbox first): resident actors stay bounded.
        if let Some((victim, (actor, stopped))) = victim {
            self.finish_stop(&victim, &actor, stopped).await;
        }
        result
    }

    /// The least recently active running actor other than `keep`, if the registry holds
    /// more than its bound (not counting those already being passivated).
    fn over_capacity(&self, state: &State<Msg<A>>, keep: &str) -> Option<String> {
        let max = self.inner.max_resident?;
        if state.running.saturating_sub(state.stopping) <= max {
            return None;
        }
        state
            .entries
            .iter()
            .filter(|(k, _)| k.as_str() != keep)
            .filter_map(|(k, e)| match e {
                Entry::Running { life, .. } => Some((life.idle_for(), k)),
                _ => None,
            })
            .max_by_key(|(idle, _)| *idle)
            .map(|(_, k)| k.clone())
    }

    /// Sends `msg` to actor `key`, activating it if needed. A message that meets the actor
    /// while it is being passivated is sent again to its next activation.
    pub async fn send(&self, key: &str, msg: Msg<A>) -> Result<(), EntityError> {
        let mut msg = msg;
        loop {
            let actor = self.get(key).await?;
            match actor.send_message(msg) {
                Ok(()) => return Ok(()),
                // Draining or stopped: the message comes back; wait for the stop, go again.
                Err(MessagingErr::SendErr(back)) => {
                    msg = back;
                    self.wait_stopped(key, &actor).await;
                }
                Err(_) => {
                    return Err(EntityError::NoReply {
                        key: ActorKey::new(A::NAME, key),
                    });
                }
            }
        }
    }

    /// Sends the message `build` makes with a reply port to actor `key` (activating it if
    /// needed) and waits for the reply, at most `timeout` if one is given.
    pub async fn call<R: Send + 'static>(
        &self,
        key: &str,
        build: impl FnOnce(RpcReplyPort<R>) -> Msg<A>,
        timeout: Option<Duration>,
    ) -> Result<R, EntityError> {
        let (tx, rx) = oneshot::channel();
        self.send(key, build(tx.into())).await?;
        let actor_key = || ActorKey::new(A::NAME, key);
        match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, rx).await {
                Ok(reply) => reply.map_err(|_| EntityError::NoReply { key: actor_key() }),
                Err(_) => Err(EntityError::Timeout {
                    key: actor_key(),
                    timeout,
                }),
            },
            None => rx
                .await
                .map_err(|_| EntityError::NoReply { key: actor_key() }),
        }
    }

    /// Waits until the instance `actor` of `key` is no longer the registry's.
    async fn wait_stopped(&self, key: &str, actor: &ActorRef<Msg<A>>) {
        loop {
            let stopping = {
                let state = self.lock();
                match state.entries.get(key) {
                    Some(Entry::Stopping(n)) => Some(n.clone()),
                    // Draining on its own (a failure): the watcher takes it out soon.
                    Some(Entry::Running { actor: a, .. }) if a.get_id() == actor.get_id() => None,
                    _ => return,
                }
            };
            match stopping {
                Some(notify) => self.wait_out(key, &notify).await,
                None => tokio::task::yield_now().await,
            }
        }
    }

    /// Passivates actor `key` now: the messages already in its mailbox are handled, then it
    /// stops; the next message or its next wake activates it again. Returns whether it was
    /// running.
    pub async fn passivate(&self, key: &str) -> bool {
        let begun = {
            let mut state = self.lock();
            match state.begin_stop(key) {
                Some(begun) => Ok(begun),
                None => Err(match state.entries.get(key) {
                    Some(Entry::Stopping(n)) => Some(n.clone()),
                    _ => None,
                }),
            }
        };
        match begun {
            Ok((actor, stopped)) => {
                self.finish_stop(key, &actor, stopped).await;
                true
            }
            // Already being passivated: wait for it, as its passivation does.
            Err(Some(stopped)) => {
                self.wait_out(key, &stopped).await;
                false
            }
            Err(None) => false,
        }
    }

    /// Drains `actor` (marked as being passivated, with `stopped`) and waits until the
    /// registry has taken it out.
    async fn finish_stop(&self, key: &str, actor: &ActorRef<Msg<A>>, stopped: Arc<Notify>) {
        let _ = actor.drain();
        self.wait_out(key, &stopped).await;
    }

    /// How many actors are resident (running or being passivated).
    pub fn resident(&self) -> usize {
        self.lock().running
    }

    /// Whether actor `key` is resident.
    pub fn is_resident(&self, key: &str) -> bool {
        matches!(self.lock().entries.get(key), Some(Entry::Running { .. }))
    }

    /// When the registry will activate `key` next, if it is not running and has a timer,
    /// a retry, a redelivery or pending work.
    pub fn next_wake(&self, key: &str) -> Option<std::time::SystemTime> {
        self.lock()
            .wake_of
            .get(key)
            .map(|ms| crate::timer::from_ms(*ms))
    }

    /// Passivates every resident actor and stops activating; later calls fail with
    /// [`EntityError::ShutDown`].
    pub async fn shutdown(&self) {
        let keys: Vec<String> = {
            let mut state = self.lock();
            state.shut = true;
            state.entries.keys().cloned().collect()
        };
        self.inner.scheduler.notify_one();
        for key in keys {
            self.passivate(&key).await;
        }
    }

    /// Schedules the wakes read from the store.
    fn take_wakes(&self, wakes: crate::storage::Wakes) {
        let now = now_ms();
        let transforms = self.inner.storage.transforms().clone();
        let mut state = self.lock();
        for key in wakes.busy {
            state.schedule(&key, now);
        }
        for (key, row, bytes) in wakes.timers {
            let actor = ActorKey::new(A::NAME, key.clone());
            // A row that does not read wakes the actor at once: its load names the damage.
            let due = crate::runtime::decode_timer_row(&actor, row, &bytes, &transforms)
                .map_or(now, |t: TimerRow| t.due);
            state.schedule(&key, due);
        }
        drop(state);
        self.inner.scheduler.notify_one();
    }
}

fn lock<A: PersistentActor>(inner: &Inner<A>) -> MutexGuard<'_, State<Msg<A>>> {
    // Every change under the lock is a few inserts and removes; a panic cannot leave it
    // half-made in a way that matters more than losing the registry would.
    inner
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for an actor to stop, takes it out of the registry, and schedules its next wake:
/// the one it reported, or (if it failed) what the store says it left pending.
async fn watch<A: Activate>(
    inner: Weak<Inner<A>>,
    key: String,
    actor: ActorRef<Msg<A>>,
    life: Arc<Life>,
    handle: JoinHandle<()>,
) {
    let _ = handle.await;
    // Boxed: a resident actor's watcher holds only what it needs to wait, not the store
    // read below.
    Box::pin(stopped(inner, key, actor, life)).await;
}

/// Takes a stopped actor out of the registry and schedules its next wake.
async fn stopped<A: Activate>(
    inner: Weak<Inner<A>>,
    key: String,
    actor: ActorRef<Msg<A>>,
    life: Arc<Life>,
) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let entities = Entities { inner };
    let report = life.report();
    // Out of the registry, with its wake scheduled, before anyone waiting is told: a
    // passivation that returned has left the wake in place.
    let notify = {
        let mut state = entities.lock();
        let ours = match state.entries.get(&key) {
            Some(Entry::Running { actor: a, .. }) => a.get_id() == actor.get_id(),
            Some(Entry::Stopping(_)) => true,
            _ => false,
        };
        if !ours {
            return;
        }
        state.running = state.running.saturating_sub(1);
        if let Some(Entry::Stopping(_)) = state.entries.get(&key) {
            state.stopping = state.stopping.saturating_sub(1);
        }
        if let Some(Some(at)) = report
            && !state.shut
        {
            state.schedule(&key, at);
        }
        match state.entries.remove(&key) {
            Some(Entry::Stopping(n)) => Some(n),
            _ => None,
        }
    };
    if let Some(n) = notify {
        n.notify_waiters();
    }
    entities.inner.scheduler.notify_one();
    if report.is_some() {
        return;
    }
    // Failed or killed: what it left pending waits `restart_after`; a timer waits for its
    // instant too.
    let actor_key = ActorKey::new(A::NAME, key.clone());
    let restart = now_ms().saturating_add(
        u64::try_from(entities.inner.restart_after.as_millis()).unwrap_or(u64::MAX),
    );
    let wake = match entities.inner.storage.wake_rows(&actor_key).await {
        Ok(rows) => {
            let transforms = entities.inner.storage.transforms();
            let busy = (!rows.busy.is_empty()).then_some(restart);
            let timers = rows.timers.iter().map(|(_, row, bytes)| {
                crate::runtime::decode_timer_row(&actor_key, *row, bytes, transforms)
                    .map_or(restart, |t| t.due.max(restart))
            });
            timers.chain(busy).min()
        }
        Err(_) => Some(restart),
    };
    if let Some(at) = wake {
        let mut state = entities.lock();
        // Activated again meanwhile: the running instance keeps its own timers.
        if state.shut || state.entries.contains_key(&key) {
            return;
        }
        state.schedule(&key, at);
        drop(state);
        entities.inner.scheduler.notify_one();
    }
}

/// Activates the actors whose wake came, sleeping until the earliest (at most
/// [`MAX_SLEEP`], to look at the wall clock again).
async fn schedule<A: Activate>(inner: Weak<Inner<A>>, scheduler: Arc<Notify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let entities = Entities { inner: strong };
        let notified = scheduler.notified();
        let (due, next) = {
            let mut state = entities.lock();
            if state.shut {
                return;
            }
            let now = now_ms();
            let mut due = Vec::new();
            while let Some((at, key)) = state.wakes.first().cloned() {
                if at > now {
                    break;
                }
                state.wakes.pop_first();
                state.wake_of.remove(&key);
                due.push(key);
            }
            let next = state.wakes.first().map(|(at, _)| at.saturating_sub(now));
            (due, next)
        };
        for key in due {
            let entities = entities.clone();
            tokio::spawn(async move {
                if let Err(e) = entities.get(&key).await {
                    tracing::error!(
                        target: "ractor_persist::entities",
                        error = %e,
                        "a due wake could not activate its actor"
                    );
                }
            });
        }
        drop(entities);
        let wait = next.map_or(MAX_SLEEP, |ms| Duration::from_millis(ms).min(MAX_SLEEP));
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Passivates the actors idle for `idle`, looking every quarter of it.
async fn sweep<A: Activate>(inner: Weak<Inner<A>>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let entities = Entities { inner: strong };
        let idle_keys: Vec<String> = {
            let state = entities.lock();
            if state.shut {
                return;
            }
            state
                .entries
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Running { life, .. } if life.idle_for() >= idle => Some(k.clone()),
                    _ => None,
                })
                .collect()
        };
        for key in idle_keys {
            let entities = entities.clone();
            tokio::spawn(async move { entities.passivate(&key).await });
        }
    }
}
