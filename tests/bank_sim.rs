//! The bank simulation: 64 persistent accounts (`bank::Account`) move money with
//! `Tx::send` under random deposits and transfers (half of them among three busy accounts,
//! so that several credits are in flight on one channel), crashes of single actors (killed,
//! some in the middle of a request, restarted at once or later), crashes of the whole store
//! (every actor killed and a new `Storage` opened over the same `MemoryStore`, the old one
//! closed, dropped with its committer still writing, or with its power cut so that what it
//! had not written is lost, some in the middle of a transfer), and a courier that drops,
//! duplicates, holds back (delays) and reorders letters, messages and acknowledgements alike,
//! some of them across a store crash. After each schedule the faults stop, every account
//! runs, and the simulation waits until every outbox is empty in the store (quiescence).
//!
//! What each schedule proves, from the final states and the replies the client saw:
//! - money is exact: the sum of the balances is the opening money plus the deposits applied,
//!   and each account's balance is its opening plus its deposits and credits minus its
//!   debits (`created` and `lost` count money units made or destroyed, and applications
//!   that made or destroyed money: a credit without a debit, a debit never credited, an
//!   acknowledged deposit or transfer missing);
//! - every transfer is applied exactly once: debited at most once, at its source, credited
//!   at most once, at its destination, with the same amount, and credited iff debited
//!   (`double_applied` counts every second application of a transfer or deposit);
//! - an acknowledged request was applied, a refused one was not, a repeat of a request got
//!   the first reply and was not applied again, a key reused with another payload was
//!   refused; a request whose call failed (the actor died) may or may not have been applied,
//!   and the states say which;
//! - nothing is pending after quiescence: no outbox row is left in the store (`stuck` counts
//!   the schedules that did not get there within 20 s, left rows, or whose calls to a
//!   running actor timed out).
//!
//! It prints one line, `bank-sim: schedules=N transfers=N created=0 lost=0
//! double_applied=0 stuck=0` (`transfers`: transfers applied), and a second one with the
//! faults injected; with 100 schedules or more the test also fails if any kind of fault
//! never happened.
//!
//! `BANK_SIM_SCHEDULES=n` runs `n` schedules (default 1000, seeds `BASE + i`);
//! `BANK_SIM_SEED=s` reruns the one schedule of seed `s` (decimal or `0x` hex), as printed by
//! a failure: `BANK_SIM_SEED=s cargo test --test bank_sim -- --nocapture`. The sequence of
//! actions of a schedule and the stream of courier decisions are a pure function of its
//! seed; the thread interleavings are not (which letter a given courier decision falls on,
//! where in a handler a kill lands, whether a call interrupted by a crash got its reply), so
//! a rerun replays the same schedule, not necessarily the same interleaving.

mod bank;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bank::{Account, AccountMsg, Balance, account};
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use ractor_persist::{
    ActorCommit, ActorKey, Courier, Letter, Loaded, MemoryStore, OpId, Postbox, Redelivery,
    Refusal, Row, Space, Start, Storage, StorageConfig, Store, StoreError,
};

/// Seeds are `BASE + i`, so a CI run is the same every time.
const BASE: u64 = 0xba4c_0000;
const ACCOUNTS: usize = 64;
const OPENING: u64 = 1_000;
/// More than the bank ever holds: a transfer of it is always refused.
const TOO_MUCH: u64 = 1 << 40;
/// A call to a running actor that takes this long counts as stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a schedule may take to become quiescent once the faults stop.
const QUIESCENCE: Duration = Duration::from_secs(20);
/// The held letters past which the courier lets one go at once.
const MAX_HELD: usize = 64;
/// Half the transfers are among the first `HOT` accounts.
const HOT: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// xorshift64*, seeded through splitmix64 so that neighbouring seeds give unrelated streams.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(z | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The store, with a power switch.

/// The schedule's `MemoryStore` as one `Storage` sees it. Once cut, it fails every load and
/// commit: what that storage's committer had not written yet (commits in flight, queued
/// removals) is lost, as in a power cut, while the data stays for the next `Storage`.
#[derive(Clone)]
struct Powered {
    inner: MemoryStore,
    cut: Arc<AtomicBool>,
}

impl Powered {
    fn check(&self) -> Result<(), StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::backend("bank-sim", "the power was cut"));
        }
        Ok(())
    }
}

impl Store for Powered {
    fn name(&self) -> &str {
        "bank-sim"
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.check()?;
        self.inner.open_actor(key, spaces)
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.commit(batch)
    }

    fn read(
        &self,
        key: &ActorKey,
        space: Option<Space>,
        ids: RangeInclusive<u64>,
    ) -> Result<Vec<Row>, StoreError> {
        self.inner.read(key, space, ids)
    }
}

// ---------------------------------------------------------------------------------------
// The courier.

#[derive(Default)]
struct ChaosState {
    rng: Option<Rng>,
    faults: bool,
    held: Vec<Letter>,
    /// The postbox of the current storage: held letters go there when they are let go, also
    /// after the store was reopened (a letter delayed across a restart).
    postbox: Option<Postbox>,
    carried: u64,
    drops: u64,
    duplicates: u64,
    holds: u64,
}

/// Drops, duplicates or holds back letters, from its own stream of the schedule's seed.
/// Never blocks: `carry` runs on actor tasks, and the lock is never held while delivering.
#[derive(Clone, Default)]
struct Chaos {
    state: Arc<Mutex<ChaosState>>,
}

enum Fate {
    Now,
    Drop,
    Twice,
    Hold,
}

impl Chaos {
    fn new(seed: u64) -> Self {
        let chaos = Chaos::default();
        {
            let mut s = chaos.lock();
            s.rng = Some(Rng::new(seed ^ 0xc0ff_ee00_dead_beef));
            s.faults = true;
        }
        chaos
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaosState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_postbox(&self, postbox: Postbox) {
        self.lock().postbox = Some(postbox);
    }

    /// Lets go the held letters (all, or each with even odds), in a random order.
    fn release(&self, all: bool) -> usize {
        let (letters, postbox) = {
            let mut guard = self.lock();
            let s = &mut *guard;
            let mut held = std::mem::take(&mut s.held);
            let rng = s.rng.as_mut().expect("seeded");
            rng.shuffle(&mut held);
            let mut go = Vec::with_capacity(held.len());
            for letter in held {
                if all || rng.one_in(2) {
                    go.push(letter);
                } else {
                    s.held.push(letter);
                }
            }
            (go, s.postbox.clone())
        };
        let n = letters.len();
        if let Some(postbox) = postbox {
            for letter in letters {
                postbox.deliver(letter);
            }
        }
        n
    }

    /// Forgets the held letters (lost in a crash).
    fn lose_held(&self) -> usize {
        std::mem::take(&mut self.lock().held).len()
    }

    /// Stops injecting faults and lets every held letter go.
    fn heal(&self) {
        self.lock().faults = false;
        self.release(true);
    }
}

impl Courier for Chaos {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        let mut letter = Some(letter);
        let (fate, overflow) = {
            let mut guard = self.lock();
            let s = &mut *guard;
            s.carried += 1;
            if !s.faults {
                (Fate::Now, None)
            } else {
                let rng = s.rng.as_mut().expect("seeded");
                let fate = match rng.below(16) {
                    0 | 1 => Fate::Drop,
                    2 | 3 => Fate::Twice,
                    4..=7 => Fate::Hold,
                    _ => Fate::Now,
                };
                let mut overflow = None;
                match fate {
                    Fate::Drop => s.drops += 1,
                    Fate::Twice => s.duplicates += 1,
                    Fate::Hold => {
                        s.holds += 1;
                        if s.held.len() >= MAX_HELD {
                            overflow = Some(s.held.swap_remove(rng.index(MAX_HELD)));
                        }
                        // Held under the lock, so that `heal` cannot miss it.
                        s.held.extend(letter.take());
                    }
                    Fate::Now => {}
                }
                (fate, overflow)
            }
        };
        if let Some(old) = overflow {
            postbox.deliver(old);
        }
        let Some(letter) = letter else { return };
        match fate {
            Fate::Now | Fate::Hold => {
                postbox.deliver(letter);
            }
            Fate::Drop => {}
            Fate::Twice => {
                postbox.deliver(letter.clone());
                postbox.deliver(letter);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Counters.

#[derive(Clone, Debug, Default)]
struct Stats {
    schedules: u64,
    /// Transfers applied (debited and credited).
    transfers: u64,
    created: u64,
    lost: u64,
    double_applied: u64,
    stuck: u64,
    steps: u64,
    deposits: u64,
    transfer_requests: u64,
    refused_transfers: u64,
    /// Transfers to an account that was not running.
    to_stopped: u64,
    repeated_requests: u64,
    reused_keys: u64,
    actor_crashes: u64,
    crashes_mid_request: u64,
    store_crashes: u64,
    store_closes: u64,
    power_cuts: u64,
    unknown_outcomes: u64,
    /// Requests killed mid-way whose reply still came.
    crash_replied: u64,
    /// Requests with no reply ever that were applied all the same.
    unknown_applied: u64,
    letters: u64,
    drops: u64,
    duplicates: u64,
    held: u64,
    released: u64,
    lost_in_crash: u64,
    flushes: u64,
    /// Letters the receivers refused (past a gap: reordered or after a drop).
    refusals: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.schedules += o.schedules;
        self.transfers += o.transfers;
        self.created += o.created;
        self.lost += o.lost;
        self.double_applied += o.double_applied;
        self.stuck += o.stuck;
        self.steps += o.steps;
        self.deposits += o.deposits;
        self.transfer_requests += o.transfer_requests;
        self.refused_transfers += o.refused_transfers;
        self.to_stopped += o.to_stopped;
        self.repeated_requests += o.repeated_requests;
        self.reused_keys += o.reused_keys;
        self.actor_crashes += o.actor_crashes;
        self.crashes_mid_request += o.crashes_mid_request;
        self.store_crashes += o.store_crashes;
        self.store_closes += o.store_closes;
        self.power_cuts += o.power_cuts;
        self.unknown_outcomes += o.unknown_outcomes;
        self.crash_replied += o.crash_replied;
        self.unknown_applied += o.unknown_applied;
        self.letters += o.letters;
        self.drops += o.drops;
        self.duplicates += o.duplicates;
        self.held += o.held;
        self.released += o.released;
        self.lost_in_crash += o.lost_in_crash;
        self.flushes += o.flushes;
        self.refusals += o.refusals;
    }
}

// ---------------------------------------------------------------------------------------
// The client's ledger.

/// How a call ended.
enum Outcome<T> {
    Reply(T),
    /// The actor was gone or died before replying: applied or not, nobody knows.
    Failed,
    /// No reply within `CALL_TIMEOUT` from an actor that runs.
    TimedOut,
}

struct DepositRec {
    account: usize,
    amount: u64,
    /// The first reply the client saw (`None`: none yet).
    reply: Option<Result<u64, String>>,
}

struct TransferRec {
    from: usize,
    to: usize,
    amount: u64,
    reply: Option<Result<OpId, String>>,
}

/// Whether and how a request is interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    No,
    /// The actor is killed.
    Actor,
    /// The power of the whole store is cut (held letters lost or not).
    Power {
        lose: bool,
    },
}

impl Crash {
    fn maybe(rng: &mut Rng) -> Crash {
        if rng.one_in(10) {
            Crash::Actor
        } else {
            Crash::No
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Req {
    Deposit(u64),
    Transfer(u64),
}

fn name(i: usize) -> String {
    format!("acct-{i}")
}

fn deposit_key(n: u64) -> String {
    format!("dep-{n}")
}

type Running = (ActorRef<AccountMsg>, JoinHandle<()>);

struct Sim {
    rng: Rng,
    store: MemoryStore,
    storage: Storage,
    /// Cuts the power of `storage`'s view of the store.
    power: Arc<AtomicBool>,
    chaos: Chaos,
    redelivery: Redelivery,
    actors: Vec<Option<Running>>,
    deposits: BTreeMap<u64, DepositRec>,
    transfers: BTreeMap<u64, TransferRec>,
    history: Vec<Req>,
    next_deposit: u64,
    next_transfer: u64,
    stats: Stats,
    failures: Vec<String>,
    trace: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let store = MemoryStore::new();
        let chaos = Chaos::new(seed);
        let (storage, power) = Self::open(&store, &chaos);
        Sim {
            rng: Rng::new(seed),
            store,
            storage,
            power,
            chaos,
            redelivery: Redelivery::new(Duration::from_millis(2), Duration::from_millis(16)),
            actors: (0..ACCOUNTS).map(|_| None).collect(),
            deposits: BTreeMap::new(),
            transfers: BTreeMap::new(),
            history: Vec::new(),
            next_deposit: 0,
            next_transfer: 0,
            stats: Stats {
                schedules: 1,
                ..Stats::default()
            },
            failures: Vec::new(),
            trace: Vec::new(),
        }
    }

    fn open(store: &MemoryStore, chaos: &Chaos) -> (Storage, Arc<AtomicBool>) {
        let config = StorageConfig::default().with_courier(chaos.clone());
        let power = Arc::new(AtomicBool::new(false));
        let powered = Powered {
            inner: store.clone(),
            cut: power.clone(),
        };
        let storage = Storage::with_config(powered, config);
        chaos.set_postbox(storage.postbox().clone());
        (storage, power)
    }

    fn fail(&mut self, why: String) {
        self.failures.push(why);
    }

    fn note(&mut self, step: String) {
        self.trace.push(step);
    }

    async fn spawn(&mut self, i: usize) {
        if self.actors[i].is_some() {
            return;
        }
        let start =
            Start::<Account>::new(&self.storage, name(i), OPENING).redelivery(self.redelivery);
        match ractor::Actor::spawn(None, Account, start).await {
            Ok(running) => self.actors[i] = Some(running),
            Err(e) => self.fail(format!("spawning {} failed: {e}", name(i))),
        }
    }

    async fn spawn_all(&mut self) {
        for i in 0..ACCOUNTS {
            self.spawn(i).await;
        }
    }

    /// Kills account `i` (no stop hook, the handler in progress is dropped) and waits
    /// until its task is gone.
    async fn kill(&mut self, i: usize) {
        if let Some((actor, handle)) = self.actors[i].take() {
            actor.kill();
            let _ = handle.await;
        }
    }

    async fn kill_all(&mut self) {
        let running: Vec<Running> = self.actors.iter_mut().filter_map(Option::take).collect();
        for (actor, _) in &running {
            actor.kill();
        }
        for (_, handle) in running {
            let _ = handle.await;
        }
    }

    fn down(&self) -> Vec<usize> {
        (0..ACCOUNTS)
            .filter(|i| self.actors[*i].is_none())
            .collect()
    }

    /// Calls account `i` (spawning it first if it is down). With `crash`, kills it (or cuts
    /// the store's power and crashes the store) after the request is sent, at a random point
    /// of its handling.
    async fn call<T: Send + 'static>(
        &mut self,
        i: usize,
        crash: Crash,
        msg: impl FnOnce(RpcReplyPort<T>) -> AccountMsg + Send + 'static,
    ) -> Outcome<T> {
        self.spawn(i).await;
        let Some((actor, _)) = &self.actors[i] else {
            return Outcome::Failed;
        };
        let actor = actor.clone();
        let outcome = if crash != Crash::No {
            let key = account(&name(i));
            let before = self.store.snapshot(&key);
            let task = tokio::spawn(async move { actor.call(msg, Some(CALL_TIMEOUT)).await });
            // Where the kill lands: at once (mostly before the handler runs), a few yields
            // later, or once the handler's commit is in the store (before or after the reply
            // goes out). The condition is polled without sleeping.
            let yields = match self.rng.below(3) {
                0 => 0,
                1 => self.rng.below(64),
                _ => {
                    let mut polls = 0u32;
                    while self.store.snapshot(&key) == before
                        && !task.is_finished()
                        && polls < 100_000
                    {
                        tokio::task::yield_now().await;
                        polls += 1;
                    }
                    self.rng.below(3)
                }
            };
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            self.stats.crashes_mid_request += 1;
            match crash {
                Crash::Power { lose } => self.crash_store(0, lose).await,
                _ => {
                    self.stats.actor_crashes += 1;
                    self.kill(i).await;
                    if self.rng.one_in(2) {
                        self.spawn(i).await;
                    }
                }
            }
            match task.await {
                Ok(r) => r,
                Err(e) => {
                    self.fail(format!("a call task panicked: {e}"));
                    return Outcome::Failed;
                }
            }
        } else {
            actor.call(msg, Some(CALL_TIMEOUT)).await
        };
        match outcome {
            Ok(CallResult::Success(v)) => {
                if crash != Crash::No {
                    self.stats.crash_replied += 1;
                }
                Outcome::Reply(v)
            }
            Ok(CallResult::Timeout) if crash == Crash::No => {
                self.stats.stuck += 1;
                self.fail(format!("a call to {} timed out", name(i)));
                Outcome::TimedOut
            }
            _ => {
                self.stats.unknown_outcomes += 1;
                Outcome::Failed
            }
        }
    }

    async fn deposit(&mut self, n: u64, amount: u64, crash: Crash) -> Outcome<Result<u64, String>> {
        let i = self.deposits[&n].account;
        let request = deposit_key(n);
        self.call(i, crash, move |reply| AccountMsg::Deposit {
            request,
            amount,
            reply,
        })
        .await
    }

    async fn transfer(
        &mut self,
        id: u64,
        amount: u64,
        crash: Crash,
    ) -> Outcome<Result<OpId, String>> {
        let (from, to) = (self.transfers[&id].from, self.transfers[&id].to);
        let to = name(to);
        self.call(from, crash, move |reply| AccountMsg::Transfer {
            transfer: id,
            to,
            amount,
            reply,
        })
        .await
    }

    /// Records a reply to deposit `n`: a repeat must get the first reply.
    fn deposit_replied(&mut self, n: u64, outcome: Outcome<Result<u64, String>>) {
        let Outcome::Reply(got) = outcome else { return };
        let rec = self.deposits.get_mut(&n).expect("recorded");
        match &rec.reply {
            None => rec.reply = Some(got),
            Some(first) if *first == got => {}
            Some(first) => {
                let why =
                    format!("deposit {n}: a repeat got {got:?}, the first reply was {first:?}");
                self.stats.double_applied += 1;
                self.fail(why);
            }
        }
    }

    fn transfer_replied(&mut self, id: u64, outcome: Outcome<Result<OpId, String>>) {
        let Outcome::Reply(got) = outcome else { return };
        let rec = self.transfers.get_mut(&id).expect("recorded");
        let first_time = rec.reply.is_none();
        match &rec.reply {
            None => rec.reply = Some(got.clone()),
            Some(first) if *first == got => {}
            Some(first) => {
                let why =
                    format!("transfer {id}: a repeat got {got:?}, the first reply was {first:?}");
                self.stats.double_applied += 1;
                self.fail(why);
                return;
            }
        }
        let rec = &self.transfers[&id];
        match &got {
            Err(e) if e == "insufficient funds" => {
                if first_time {
                    self.stats.refused_transfers += 1;
                }
            }
            Err(e) => {
                let why = format!("transfer {id} refused for an unexpected reason: {e}");
                self.fail(why);
            }
            Ok(_) if rec.amount == TOO_MUCH => {
                let why = format!("transfer {id} of more than the bank holds was accepted");
                self.stats.created += 1;
                self.fail(why);
            }
            Ok(_) => {}
        }
    }

    // ---- The steps.

    async fn step_deposit(&mut self) {
        let account = self.rng.index(ACCOUNTS);
        let amount = 1 + self.rng.below(200);
        let crash = Crash::maybe(&mut self.rng);
        let n = self.next_deposit;
        self.next_deposit += 1;
        self.deposits.insert(
            n,
            DepositRec {
                account,
                amount,
                reply: None,
            },
        );
        self.history.push(Req::Deposit(n));
        self.stats.deposits += 1;
        self.note(format!(
            "deposit {n}: {amount} to {}{}",
            name(account),
            crash_tag(crash)
        ));
        let outcome = self.deposit(n, amount, crash).await;
        self.deposit_replied(n, outcome);
    }

    /// A destination for a transfer from `from`: sometimes one that is not running (the
    /// credit waits for it), rarely `from` itself.
    fn destination(&mut self, from: usize) -> usize {
        let down = self.down();
        if !down.is_empty() && self.rng.one_in(3) {
            down[self.rng.index(down.len())]
        } else if self.rng.one_in(50) {
            from
        } else {
            (from + 1 + self.rng.index(ACCOUNTS - 1)) % ACCOUNTS
        }
    }

    async fn step_transfer(&mut self) {
        self.transfer_step(None).await;
    }

    /// A new transfer; `crash` overrides the schedule's choice of interruption.
    async fn transfer_step(&mut self, crash: Option<Crash>) {
        let (from, to) = if self.rng.one_in(2) {
            // Among a few busy accounts: several messages in flight on one channel, for the
            // courier to reorder.
            let from = self.rng.index(HOT);
            (from, (from + 1 + self.rng.index(HOT - 1)) % HOT)
        } else {
            let from = self.rng.index(ACCOUNTS);
            (from, self.destination(from))
        };
        let amount = if self.rng.one_in(10) {
            TOO_MUCH
        } else {
            1 + self.rng.below(400)
        };
        let crash = crash.unwrap_or(Crash::maybe(&mut self.rng));
        let id = self.next_transfer;
        self.next_transfer += 1;
        self.transfers.insert(
            id,
            TransferRec {
                from,
                to,
                amount,
                reply: None,
            },
        );
        self.history.push(Req::Transfer(id));
        self.stats.transfer_requests += 1;
        if self.actors[to].is_none() {
            self.stats.to_stopped += 1;
        }
        self.note(format!(
            "transfer {id}: {amount} from {} to {}{}",
            name(from),
            name(to),
            crash_tag(crash)
        ));
        let outcome = self.transfer(id, amount, crash).await;
        self.transfer_replied(id, outcome);
    }

    /// Repeats an earlier request with the same key and payload.
    async fn step_repeat(&mut self) {
        if self.history.is_empty() {
            return self.step_deposit().await;
        }
        let req = self.history[self.rng.index(self.history.len())];
        let crash = Crash::maybe(&mut self.rng);
        self.repeat(req, crash).await;
    }

    async fn repeat(&mut self, req: Req, crash: Crash) {
        self.stats.repeated_requests += 1;
        match req {
            Req::Deposit(n) => {
                let amount = self.deposits[&n].amount;
                self.note(format!("repeat deposit {n}{}", crash_tag(crash)));
                let outcome = self.deposit(n, amount, crash).await;
                self.deposit_replied(n, outcome);
            }
            Req::Transfer(id) => {
                let amount = self.transfers[&id].amount;
                self.note(format!("repeat transfer {id}{}", crash_tag(crash)));
                let outcome = self.transfer(id, amount, crash).await;
                self.transfer_replied(id, outcome);
            }
        }
    }

    /// Reuses the key of an answered request with another amount: refused.
    async fn step_reuse(&mut self) {
        if self.history.is_empty() {
            return self.step_transfer().await;
        }
        let req = self.history[self.rng.index(self.history.len())];
        let answered = match req {
            Req::Deposit(n) => self.deposits[&n].reply.is_some(),
            Req::Transfer(id) => self.transfers[&id].reply.is_some(),
        };
        if !answered {
            // Whether its first call was applied is unknown, so another payload could be
            // applied now: repeat it as it was instead (the schedule's choices stay those of
            // the seed, whatever the timing).
            return self.repeat(req, Crash::No).await;
        }
        self.stats.reused_keys += 1;
        let got = match req {
            Req::Deposit(n) => {
                let amount = self.deposits[&n].amount + 1;
                self.note(format!("reuse deposit {n} with {amount}"));
                match self.deposit(n, amount, Crash::No).await {
                    Outcome::Reply(r) => {
                        Some(r.map(|_| ()).map_err(|e| (e, format!("deposit {n}"))))
                    }
                    _ => None,
                }
            }
            Req::Transfer(id) => {
                let amount = self.transfers[&id].amount ^ 1;
                self.note(format!("reuse transfer {id} with {amount}"));
                match self.transfer(id, amount, Crash::No).await {
                    Outcome::Reply(r) => {
                        Some(r.map(|_| ()).map_err(|e| (e, format!("transfer {id}"))))
                    }
                    _ => None,
                }
            }
        };
        match got {
            Some(Err((e, _))) if e.contains("used before") => {}
            Some(Err((e, what))) => self.fail(format!("{what} reused: unexpected refusal {e}")),
            Some(Ok(())) => {
                self.stats.double_applied += 1;
                self.fail(format!("{req:?} reused with another payload was applied"));
            }
            None => {}
        }
    }

    async fn step_crash(&mut self) {
        let i = self.rng.index(ACCOUNTS);
        let again = self.rng.one_in(2);
        if self.actors[i].is_none() {
            self.note(format!("start {}", name(i)));
            return self.spawn(i).await;
        }
        self.note(format!(
            "crash {}{}",
            name(i),
            if again { ", restart" } else { "" }
        ));
        self.stats.actor_crashes += 1;
        self.kill(i).await;
        if again {
            self.spawn(i).await;
        }
    }

    async fn step_respawn(&mut self) {
        let down = self.down();
        if down.is_empty() {
            return;
        }
        let i = down[self.rng.index(down.len())];
        self.note(format!("start {}", name(i)));
        self.spawn(i).await;
    }

    /// Crashes the whole store, some of the time in the middle of a transfer.
    async fn step_store_crash(&mut self) {
        let how = self.rng.below(3);
        let lose = self.rng.one_in(2);
        if how == 0 && self.rng.one_in(2) {
            return self.transfer_step(Some(Crash::Power { lose })).await;
        }
        self.crash_store(how, lose).await;
    }

    /// Kills every actor and reopens the store: `how` 0, the power cut first (what the
    /// committer has not written is lost); 1, the storage dropped (its committer finishes
    /// what it has on its own, after the new one started); 2, closed. Held letters are lost
    /// or kept for the new incarnation.
    async fn crash_store(&mut self, how: u64, lose: bool) {
        self.note(format!(
            "store crash ({}, held letters {})",
            ["power cut", "dropped", "closed"][how as usize],
            if lose { "lost" } else { "kept" }
        ));
        self.stats.store_crashes += 1;
        if how == 0 {
            self.stats.power_cuts += 1;
            self.power.store(true, Ordering::SeqCst);
        }
        self.kill_all().await;
        self.count_refusals();
        if how == 2 {
            self.stats.store_closes += 1;
            if let Err(e) = self.storage.close().await {
                self.fail(format!("closing the store failed: {e}"));
            }
        }
        if lose {
            self.stats.lost_in_crash += self.chaos.lose_held() as u64;
        }
        (self.storage, self.power) = Self::open(&self.store, &self.chaos);
        self.spawn_all().await;
    }

    /// Counts the letters this storage's receivers refused (as out of order).
    fn count_refusals(&mut self) {
        let refusals = self.storage.postbox().refusals();
        self.stats.refusals += refusals
            .iter()
            .filter(|r| !matches!(r, Refusal::RequestKeyReused { .. }))
            .count() as u64;
    }

    fn step_release(&mut self) {
        let all = self.rng.one_in(2);
        let n = self.chaos.release(all);
        self.stats.released += n as u64;
        self.note(format!(
            "release {} held letters ({n})",
            if all { "all" } else { "some" }
        ));
    }

    async fn run_steps(&mut self) {
        let steps = 20 + self.rng.below(21);
        for _ in 0..steps {
            self.stats.steps += 1;
            match self.rng.below(200) {
                0..=49 => self.step_deposit().await,
                50..=119 => self.step_transfer().await,
                120..=135 => self.step_repeat().await,
                136..=139 => self.step_reuse().await,
                140..=159 => self.step_crash().await,
                160..=169 => self.step_respawn().await,
                170..=172 => self.step_store_crash().await,
                _ => self.step_release(),
            }
            if self.failures.len() > 20 {
                return;
            }
        }
    }

    // ---- Quiescence and the checks.

    fn outbox_rows(&self) -> usize {
        (0..ACCOUNTS)
            .map(|i| {
                self.store
                    .read(&account(&name(i)), Some(Space::OUTBOX), 0..=u64::MAX)
                    .map_or(usize::MAX / 2, |rows| rows.len())
            })
            .sum()
    }

    /// Stops the faults, starts every account and waits until no outbox row is left in the
    /// store. The removal of acknowledged messages rides on a later commit: a small deposit
    /// (in the ledger like any other) now and then writes it.
    async fn quiesce(&mut self) -> bool {
        self.chaos.heal();
        self.spawn_all().await;
        self.note("heal".to_owned());
        let deadline = Instant::now() + QUIESCENCE;
        let mut flushed = Instant::now();
        loop {
            if self.outbox_rows() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if flushed.elapsed() >= Duration::from_millis(3) {
                let n = self.next_deposit;
                let account = n as usize % ACCOUNTS;
                self.next_deposit += 1;
                self.deposits.insert(
                    n,
                    DepositRec {
                        account,
                        amount: 1,
                        reply: None,
                    },
                );
                self.stats.flushes += 1;
                let outcome = self.deposit(n, 1, Crash::No).await;
                self.deposit_replied(n, outcome);
                flushed = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn states(&mut self) -> Option<Vec<Balance>> {
        let mut states = Vec::with_capacity(ACCOUNTS);
        for i in 0..ACCOUNTS {
            match self.call(i, Crash::No, AccountMsg::Get).await {
                Outcome::Reply(b) => states.push(b),
                _ => {
                    self.fail(format!("no state from {}", name(i)));
                    return None;
                }
            }
        }
        Some(states)
    }

    fn check(&mut self, states: &[Balance], quiescent: bool) {
        let mut s = Stats::default();
        let mut why = Vec::new();
        // Deposits: each key at most once, at its account, with its amount; every
        // acknowledged one present.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut deposited = 0u64;
        for (i, b) in states.iter().enumerate() {
            for (key, amount) in &b.deposits {
                *seen.entry(key.clone()).or_default() += 1;
                let rec = key
                    .strip_prefix("dep-")
                    .and_then(|n| n.parse::<u64>().ok())
                    .and_then(|n| self.deposits.get(&n));
                match rec {
                    Some(rec) if rec.account == i && rec.amount == *amount => {}
                    _ => {
                        s.created += 1;
                        why.push(format!(
                            "{}: deposit {key} ({amount}) was never asked for",
                            name(i)
                        ));
                    }
                }
            }
        }
        for (key, count) in &seen {
            if *count > 1 {
                s.double_applied += *count as u64 - 1;
                why.push(format!("deposit {key} applied {count} times"));
            }
        }
        for (n, rec) in &self.deposits {
            let key = deposit_key(*n);
            let applied = seen.contains_key(&key);
            if applied {
                deposited += rec.amount;
            }
            if rec.reply.is_none() && applied {
                s.unknown_applied += 1;
            }
            if matches!(rec.reply, Some(Ok(_))) && !applied {
                s.lost += 1;
                why.push(format!("deposit {key} was acknowledged but is not applied"));
            }
        }
        // Transfers.
        let mut debited: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
        let mut credited: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
        for (i, b) in states.iter().enumerate() {
            for (id, amount) in &b.debited {
                debited.entry(*id).or_default().push((i, *amount));
            }
            for (id, amount) in &b.credited {
                credited.entry(*id).or_default().push((i, *amount));
            }
        }
        for (id, rec) in &self.transfers {
            let d = debited.remove(id).unwrap_or_default();
            let c = credited.remove(id).unwrap_or_default();
            if d.len() > 1 {
                s.double_applied += d.len() as u64 - 1;
                why.push(format!("transfer {id} debited {} times: {d:?}", d.len()));
            }
            if c.len() > 1 {
                s.double_applied += c.len() as u64 - 1;
                why.push(format!("transfer {id} credited {} times: {c:?}", c.len()));
            }
            if d.iter().any(|x| *x != (rec.from, rec.amount)) {
                why.push(format!(
                    "transfer {id} debited as {d:?}, asked {:?}",
                    (rec.from, rec.amount)
                ));
            }
            if c.iter().any(|x| *x != (rec.to, rec.amount)) {
                why.push(format!(
                    "transfer {id} credited as {c:?}, asked {:?}",
                    (rec.to, rec.amount)
                ));
            }
            match &rec.reply {
                Some(Ok(_)) if d.is_empty() => {
                    s.lost += 1;
                    why.push(format!("transfer {id} was acknowledged but not debited"));
                }
                Some(Err(_)) if !d.is_empty() => {
                    s.created += 1;
                    why.push(format!("transfer {id} was refused but debited"));
                }
                _ => {}
            }
            if quiescent {
                if !d.is_empty() && c.is_empty() {
                    s.lost += 1;
                    why.push(format!("transfer {id} debited {d:?} but never credited"));
                }
                if d.is_empty() && !c.is_empty() {
                    s.created += 1;
                    why.push(format!("transfer {id} credited {c:?} but never debited"));
                }
            }
            if !d.is_empty() && !c.is_empty() {
                s.transfers += 1;
            }
            if rec.reply.is_none() && !d.is_empty() {
                s.unknown_applied += 1;
            }
        }
        for (id, d) in debited {
            why.push(format!("transfer {id} was never asked for, debited {d:?}"));
        }
        for (id, c) in credited {
            s.created += 1;
            why.push(format!("transfer {id} was never asked for, credited {c:?}"));
        }
        // Money.
        for (i, b) in states.iter().enumerate() {
            let ins: u64 = b.deposits.iter().map(|(_, a)| a).sum::<u64>()
                + b.credited.iter().map(|(_, a)| a).sum::<u64>();
            let outs: u64 = b.debited.iter().map(|(_, a)| a).sum();
            if OPENING + ins != b.balance + outs {
                why.push(format!(
                    "{}: balance {} is not opening {OPENING} + in {ins} - out {outs}",
                    name(i),
                    b.balance
                ));
            }
        }
        if quiescent {
            let expected = ACCOUNTS as u64 * OPENING + deposited;
            let actual: u64 = states.iter().map(|b| b.balance).sum();
            if actual != expected {
                s.created += actual.saturating_sub(expected);
                s.lost += expected.saturating_sub(actual);
                why.push(format!("the bank holds {actual}, expected {expected}"));
            }
        }
        self.stats.transfers += s.transfers;
        self.stats.unknown_applied += s.unknown_applied;
        self.stats.created += s.created;
        self.stats.lost += s.lost;
        self.stats.double_applied += s.double_applied;
        self.failures.extend(why);
    }

    async fn run(mut self) -> (Stats, Vec<String>, Vec<String>) {
        self.spawn_all().await;
        self.run_steps().await;
        let quiescent = self.quiesce().await;
        if !quiescent {
            self.stats.stuck += 1;
            let rows = self.outbox_rows();
            self.fail(format!(
                "not quiescent after {QUIESCENCE:?}: {rows} outbox rows left"
            ));
        }
        if let Some(states) = self.states().await {
            self.check(&states, quiescent);
        }
        self.kill_all().await;
        self.count_refusals();
        if let Err(e) = self.storage.close().await {
            self.fail(format!("closing the store failed: {e}"));
        }
        let rows = self.outbox_rows();
        if quiescent && rows != 0 {
            self.stats.stuck += 1;
            self.fail(format!("{rows} outbox rows left after closing the store"));
        }
        {
            let c = self.chaos.lock();
            self.stats.letters += c.carried;
            self.stats.drops += c.drops;
            self.stats.duplicates += c.duplicates;
            self.stats.held += c.holds;
        }
        (self.stats, self.failures, self.trace)
    }
}

fn crash_tag(crash: Crash) -> &'static str {
    match crash {
        Crash::No => "",
        Crash::Actor => ", actor killed mid-request",
        Crash::Power { .. } => ", power cut mid-request",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_exact_and_transfers_apply_once_under_crashes_and_letter_faults() {
    let seeds: Vec<u64> = match env_u64("BANK_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let n = env_u64("BANK_SIM_SCHEDULES").unwrap_or(1000).max(1);
            (0..n).map(|i| BASE + i).collect()
        }
    };
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failed: Vec<u64> = Vec::new();
    let mut report = String::new();
    for seed in seeds {
        let (stats, failures, trace) = Sim::new(seed).run().await;
        total.add(&stats);
        if !failures.is_empty() {
            failed.push(seed);
            if failed.len() <= 5 {
                let tail = trace.len().saturating_sub(40);
                let _ = write!(
                    report,
                    "\nschedule seed={seed} ({seed:#x}) FAILED (rerun: BANK_SIM_SEED={seed} cargo \
                     test --test bank_sim -- --nocapture):\n  {}\n  last steps:\n    {}",
                    failures
                        .iter()
                        .take(20)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n  "),
                    trace[tail..].join("\n    ")
                );
            }
        }
    }
    let t = &total;
    // Written to stderr directly, past the test harness's capture, so the figures show in
    // CI's output even when the test passes (as the crash tests' figure lines do).
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "bank-sim: schedules={} transfers={} created={} lost={} double_applied={} stuck={}",
        t.schedules,
        t.transfers,
        t.created,
        t.lost,
        t.double_applied,
        t.stuck
    );
    let _ = writeln!(
        std::io::stderr(),
        "bank-sim faults: steps={} deposits={} transfer_requests={} (to_stopped={}) \
         refused_transfers={} repeated_requests={} reused_keys={} actor_crashes={} \
         crashes_mid_request={} store_crashes={} (power_cuts={} closed={}) \
         unknown_outcomes={} (applied={}) crash_replied={} letters={} drops={} duplicates={} \
         held={} released={} lost_in_crash={} refusals={} flushes={} in {:.1?}",
        t.steps,
        t.deposits,
        t.transfer_requests,
        t.to_stopped,
        t.refused_transfers,
        t.repeated_requests,
        t.reused_keys,
        t.actor_crashes,
        t.crashes_mid_request,
        t.store_crashes,
        t.power_cuts,
        t.store_closes,
        t.unknown_outcomes,
        t.unknown_applied,
        t.crash_replied,
        t.letters,
        t.drops,
        t.duplicates,
        t.held,
        t.released,
        t.lost_in_crash,
        t.refusals,
        t.flushes,
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} schedule(s) failed, seeds {:?}{}{report}",
        failed.len(),
        &failed[..failed.len().min(20)],
        if failed.len() > 20 { " and more" } else { "" }
    );
    assert_eq!(t.created, 0, "money created");
    assert_eq!(t.lost, 0, "money lost");
    assert_eq!(t.double_applied, 0, "applied twice");
    assert_eq!(t.stuck, 0, "stuck");
    // The faults really happened (a single rerun schedule may miss some).
    if t.schedules >= 100 {
        for (what, n) in [
            ("drops", t.drops),
            ("duplicates", t.duplicates),
            ("held letters", t.held),
            ("released letters", t.released),
            ("letters refused past a gap", t.refusals),
            ("actor crashes", t.actor_crashes),
            ("crashes mid-request", t.crashes_mid_request),
            ("requests applied with no reply", t.unknown_applied),
            ("store crashes", t.store_crashes),
            ("power cuts", t.power_cuts),
            ("transfers to a stopped account", t.to_stopped),
            ("refused transfers", t.refused_transfers),
            ("repeated requests", t.repeated_requests),
            ("reused keys", t.reused_keys),
            ("transfers applied", t.transfers),
        ] {
            assert!(n > 0, "no {what} in {} schedules", t.schedules);
        }
    }
}
