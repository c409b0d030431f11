//! One seeded schedule: two `Channel` parties, each on its own in-memory store, a link the
//! harness owns, and a sequence of random actions (commands, deliveries, link faults,
//! crashes, reconnects), then a healed link, and the checks.
//!
//! Determinism: the harness does one thing at a time. After each call to an actor it makes a
//! second call (a query), which the actor handles only after the operations of the first
//! message were performed, so the link holds the same packets on every run of a seed. A
//! crash "between commit and send" arms a hang in `perform` and waits for either the hang or
//! the query, whichever the seed's history makes happen, before it kills the actor.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use ractor_persist::{
    ActorCommit, ActorKey, Delivery, Loaded, MemoryStore, OpId, Space, SpawnPersistent, Start,
    Storage, Store, StoreError,
};

use super::protocol::{
    Answer, Channel, ChannelMsg, ChannelState, Did, Hang, Link, MAX_IN_FLIGHT, MAX_PENDING, NAMES,
    Packet, SharedLink, Status, Update, View, Wire,
};
use super::{Rng, Stats};

/// Long enough for a loaded CI machine; a protocol or runtime hang shows as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deliveries allowed to reach quiescence once the link is healed.
const HEAL_LIMIT: usize = 10_000;

type R<T> = Result<T, String>;

/// A memory store behind a switch. A power cut turns it off: every later write fails, so the
/// removals of done ops still queued in the committer are lost, as in a real crash.
#[derive(Clone)]
struct Mains {
    inner: MemoryStore,
    on: Arc<AtomicBool>,
}

impl Store for Mains {
    fn name(&self) -> &str {
        "sim"
    }

    fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
        self.inner.open_actor(key, spaces)
    }

    fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
        if !self.on.load(Ordering::SeqCst) {
            return Err(StoreError::backend("sim", "power cut"));
        }
        self.inner.commit(batch)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// The actor dies, the process (and its `Storage`) lives on; the restart is fenced off
    /// from the old instance's queued writes.
    Actor,
    /// The process stops: queued removals are written on close.
    Process,
    /// The power goes: queued removals are lost.
    PowerCut,
}

struct Party {
    memory: MemoryStore,
    power: Arc<AtomicBool>,
    storage: Storage,
    actor: ActorRef<ChannelMsg>,
    handle: JoinHandle<()>,
    hang: Arc<Hang>,
    /// The state of the last reply: acknowledged, so every crash must keep it.
    last: ChannelState,
    /// Its updates whose confirmation was committed.
    confirmed: BTreeSet<OpId>,
}

fn open(memory: &MemoryStore) -> (Arc<AtomicBool>, Storage) {
    let power = Arc::new(AtomicBool::new(true));
    let storage = Storage::new(Mains {
        inner: memory.clone(),
        on: power.clone(),
    });
    (power, storage)
}

async fn spawn(
    storage: &Storage,
    me: usize,
    link: &SharedLink,
    hang: &Arc<Hang>,
) -> R<(ActorRef<ChannelMsg>, JoinHandle<()>)> {
    let channel = Channel {
        me: me as u8,
        link: link.clone(),
        hang: hang.clone(),
    };
    let start = Start::new(storage, NAMES[me], me as u8).max_pending(MAX_PENDING);
    Actor::spawn(None, channel, start)
        .await
        .map_err(|e| format!("spawn {}: {e}", NAMES[me]))
}

fn is_update(p: &ractor_persist::Pending<Wire>) -> bool {
    matches!(p.op(), Wire::Update { .. })
}

fn show(p: &Packet) -> String {
    let what = match &p.wire {
        Wire::Update { n, update } => format!("{update:?} n{n}"),
        Wire::CommitmentSigned {
            number,
            acked,
            sent,
            ..
        } => format!("CommitmentSigned #{number} acked {acked} sent {sent}"),
    };
    format!(
        "{}->{} {} [{}]",
        NAMES[p.from],
        NAMES[1 - p.from],
        what,
        p.id
    )
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    link: SharedLink,
    parties: Vec<Party>,
    /// The channel as the acknowledged commands made it, in the order they were acknowledged.
    model: View,
    /// Every update a party acknowledged creating, and who created it.
    created: BTreeMap<OpId, usize>,
    /// How often the receivers reported applying each update.
    applied: BTreeMap<OpId, u32>,
    ever_sent: BTreeSet<OpId>,
    pub trace: Vec<String>,
    pub stats: Stats,
}

/// Runs schedule `seed` to the end; the stats and trace are kept whatever the outcome.
pub async fn run(seed: u64) -> (Stats, Vec<String>, R<()>) {
    let mut sim = match Sim::new(seed).await {
        Ok(sim) => sim,
        Err(e) => return (Stats::default(), Vec::new(), Err(e)),
    };
    let result = sim.schedule().await;
    if result.is_ok() {
        sim.shutdown().await;
    } else {
        for p in &sim.parties {
            p.actor.kill();
        }
    }
    sim.stats.schedules = 1;
    (sim.stats, sim.trace, result)
}

impl Sim {
    async fn new(seed: u64) -> R<Sim> {
        let link: SharedLink = Arc::new(Mutex::new(Link {
            up: true,
            ..Link::default()
        }));
        let mut parties = Vec::new();
        for me in 0..2 {
            let memory = MemoryStore::new();
            let (power, storage) = open(&memory);
            let hang = Arc::new(Hang::default());
            let (actor, handle) = spawn(&storage, me, &link, &hang).await?;
            parties.push(Party {
                memory,
                power,
                storage,
                actor,
                handle,
                hang,
                last: initial(me),
                confirmed: BTreeSet::new(),
            });
        }
        Ok(Sim {
            seed,
            rng: Rng::new(seed),
            link,
            parties,
            model: View::opening(),
            created: BTreeMap::new(),
            applied: BTreeMap::new(),
            ever_sent: BTreeSet::new(),
            trace: Vec::new(),
            stats: Stats::default(),
        })
    }

    async fn schedule(&mut self) -> R<()> {
        for p in 0..2 {
            self.settle(p).await?;
        }
        let steps = 20 + self.rng.below(60);
        for step in 0..steps {
            self.stats.steps += 1;
            self.step(step).await?;
        }
        self.heal().await?;
        self.check_final().await
    }

    fn note(&mut self, line: impl Into<String>) {
        self.trace.push(line.into());
    }

    fn queue_len(&self) -> usize {
        self.link.lock().unwrap().queue.len()
    }

    async fn step(&mut self, step: u64) -> R<()> {
        let roll = self.rng.below(100);
        let len = self.queue_len();
        let p = self.rng.index(2);
        match roll {
            0..34 => {
                self.note(format!("{step}: command to {}", NAMES[p]));
                self.command(p).await?;
                self.settle(p).await?;
            }
            34..62 if len > 0 => {
                let i = if self.rng.one_in(4) {
                    self.rng.index(len)
                } else {
                    0
                };
                if i > 0 {
                    self.stats.reorders += 1;
                }
                let packet = self.link.lock().unwrap().queue.remove(i).expect("in range");
                self.note(format!("{step}: deliver #{i} {}", show(&packet)));
                let to = self.deliver(packet).await?;
                self.settle(to).await?;
            }
            62..66 if len > 0 => {
                let i = self.rng.index(len);
                let packet = self.link.lock().unwrap().queue.remove(i).expect("in range");
                self.stats.drops += 1;
                self.note(format!("{step}: drop {}", show(&packet)));
            }
            66..70 if len > 0 => {
                let i = self.rng.index(len);
                let at = self.rng.index(len + 1);
                let mut link = self.link.lock().unwrap();
                let packet = link.queue[i].clone();
                link.queue.insert(at, packet.clone());
                drop(link);
                self.stats.duplicates_injected += 1;
                self.note(format!("{step}: duplicate {} at #{at}", show(&packet)));
            }
            70..74 if len > 1 => {
                let at = 1 + self.rng.index(len - 1);
                let mut link = self.link.lock().unwrap();
                let packet = link.queue.pop_front().expect("not empty");
                link.queue.insert(at, packet.clone());
                drop(link);
                self.stats.delays += 1;
                self.note(format!("{step}: delay {} to #{at}", show(&packet)));
            }
            74..82 => self.crash(step, p).await?,
            82..85 => {
                let mut link = self.link.lock().unwrap();
                link.up = false;
                let lost = link.queue.len();
                link.queue.clear();
                drop(link);
                self.stats.disconnects += 1;
                self.stats.drops += lost as u64;
                self.note(format!("{step}: disconnect, {lost} in flight lost"));
            }
            85..100 => {
                self.link.lock().unwrap().up = true;
                self.stats.reconnects += 1;
                let who = self.rng.below(3);
                self.note(format!(
                    "{step}: reconnect {}",
                    ["alice", "bob", "both"][who as usize]
                ));
                for q in 0..2 {
                    if who == 2 || who == q as u64 {
                        self.resume(q).await?;
                        self.settle(q).await?;
                    }
                }
            }
            _ => self.note(format!("{step}: idle")),
        }
        Ok(())
    }

    /// Asks party `p`, failing with what the link saw if it does not answer.
    async fn ask<T: Send + 'static>(
        &self,
        p: usize,
        what: &str,
        build: impl FnOnce(RpcReplyPort<T>) -> ChannelMsg,
    ) -> R<T> {
        let got = self.parties[p]
            .actor
            .call(build, Some(CALL_TIMEOUT))
            .await
            .map_err(|e| e.to_string());
        match got {
            Ok(CallResult::Success(v)) => Ok(v),
            other => {
                let why = match other {
                    Ok(CallResult::Timeout) => "timed out".to_owned(),
                    Ok(_) => "stopped (its handler failed)".to_owned(),
                    Err(e) => format!("was not running ({e})"),
                };
                let violations = self.link.lock().unwrap().violations.join("; ");
                Err(format!(
                    "{} {why} on {what}; violations: [{violations}]",
                    NAMES[p]
                ))
            }
        }
    }

    /// A user command to `p`: add a TLC (more often) or remove one offered to `p`.
    async fn command(&mut self, p: usize) -> R<()> {
        self.stats.commands += 1;
        let answer = if self.rng.below(8) < 5 {
            let amount = 1 + self.rng.below(300);
            self.ask(p, "AddTlc", |reply| ChannelMsg::AddTlc { amount, reply })
                .await?
        } else {
            let pick = self.rng.index(64);
            let fulfil = self.rng.one_in(2);
            self.ask(p, "RemoveTlc", |reply| ChannelMsg::RemoveTlc {
                pick,
                fulfil,
                reply,
            })
            .await?
        };
        self.answer(p, answer)
    }

    /// Hands `packet` to its receiver; returns the receiver.
    async fn deliver(&mut self, packet: Packet) -> R<usize> {
        let to = 1 - packet.from;
        self.stats.deliveries += 1;
        let Packet { id, wire, .. } = packet;
        let answer = self
            .ask(to, "Deliver", |reply| ChannelMsg::Deliver {
                id,
                wire,
                reply,
            })
            .await?;
        self.answer(to, answer)?;
        Ok(to)
    }

    /// Resends `p`'s unconfirmed updates: from outside through the runtime, or through a
    /// message whose handler calls `Tx::resume`.
    async fn resume(&mut self, p: usize) -> R<()> {
        if self.rng.one_in(2) {
            Channel::resume(&self.parties[p].actor, is_update)
                .map_err(|e| format!("resume {}: {e}", NAMES[p]))
        } else {
            let answer = self
                .ask(p, "Reconnect", |reply| ChannelMsg::Reconnect { reply })
                .await?;
            self.answer(p, answer)
        }
    }

    /// Takes in what `p` did, checking it against what the harness knows.
    fn answer(&mut self, p: usize, answer: Answer) -> R<()> {
        let peer = 1 - p;
        match answer.did {
            Did::Added { id, tlc, amount } => {
                self.model
                    .apply(&Update::AddTlc { tlc, amount })
                    .map_err(|e| format!("model: {e}"))?;
                self.note(format!("   {} added {tlc:?} {amount} as {id}", NAMES[p]));
                if self.created.insert(id.clone(), p).is_some() {
                    return Err(format!("op id {id} used twice"));
                }
            }
            Did::Removed { id, tlc, fulfil } => {
                self.model
                    .apply(&Update::RemoveTlc { tlc, fulfil })
                    .map_err(|e| format!("model: {e}"))?;
                self.note(format!("   {} removed {tlc:?} as {id}", NAMES[p]));
                if self.created.insert(id.clone(), p).is_some() {
                    return Err(format!("op id {id} used twice"));
                }
            }
            Did::Refused(why) => {
                self.stats.refused += 1;
                self.note(format!("   refused: {why}"));
            }
            Did::Applied { id, n } => {
                self.stats.applied += 1;
                self.note(format!("   applied n{n}"));
                if self.created.get(&id) != Some(&peer) {
                    return Err(format!(
                        "{} applied {id}, an update {} never acknowledged",
                        NAMES[p], NAMES[peer]
                    ));
                }
                let count = self.applied.entry(id.clone()).or_default();
                *count += 1;
                if *count > 1 {
                    return Err(format!("{} applied {id} {count} times", NAMES[p]));
                }
            }
            Did::Duplicate { id, delivery } => {
                self.stats.duplicates_absorbed += 1;
                if delivery == Delivery::Unknown {
                    self.stats.forgotten += 1;
                }
                if self.applied.get(&id) != Some(&1) {
                    return Err(format!(
                        "{} dropped {id} as {delivery:?} unapplied",
                        NAMES[p]
                    ));
                }
                self.note(format!("   duplicate ({delivery:?})"));
            }
            Did::Gap { n, expected } => {
                self.stats.gaps += 1;
                self.note(format!("   gap: n{n}, expected n{expected}"));
            }
            Did::Signed {
                number,
                confirmed,
                agreed,
            } => {
                self.note(format!("   took #{number}, confirmed {}", confirmed.len()));
                for id in confirmed {
                    if self.created.get(&id) != Some(&p) {
                        return Err(format!(
                            "{} confirmed {id}, not one of its updates",
                            NAMES[p]
                        ));
                    }
                    if !self.parties[p].confirmed.insert(id.clone()) {
                        return Err(format!("{} confirmed {id} twice: it came back", NAMES[p]));
                    }
                    self.stats.confirmed += 1;
                }
                match agreed {
                    Some(true) => self.stats.agreements += 1,
                    Some(false) => {
                        self.stats.divergences += 1;
                        return Err(format!(
                            "{} got signature #{number} over the same updates but another view",
                            NAMES[p]
                        ));
                    }
                    None => {}
                }
            }
            Did::StaleSignature { number } => {
                self.stats.duplicates_absorbed += 1;
                self.note(format!("   stale signature #{number}"));
            }
            Did::Resumed(n) => self.note(format!("   resumed {n}")),
        }
        self.parties[p].last = answer.state;
        Ok(())
    }

    /// Checks a queried status of `p`: the state is the last acknowledged one (a query or a
    /// control message changes nothing, and a crash loses nothing acknowledged), and no
    /// confirmed op is pending.
    fn status(&mut self, p: usize, status: Status) -> R<()> {
        let party = &self.parties[p];
        if status.state != party.last {
            return Err(format!(
                "{}'s state is not the last acknowledged one:\n  now  {:?}\n  last {:?}",
                NAMES[p], status.state, party.last
            ));
        }
        if let Some(id) = status
            .pending
            .iter()
            .find(|id| party.confirmed.contains(id))
        {
            return Err(format!(
                "{} holds {id} pending after confirming it",
                NAMES[p]
            ));
        }
        if status.pending.len() > MAX_IN_FLIGHT {
            return Err(format!(
                "{} holds {} pending",
                NAMES[p],
                status.pending.len()
            ));
        }
        Ok(())
    }

    /// Waits until `p` performed the ops of the messages before, and checks its status.
    async fn settle(&mut self, p: usize) -> R<()> {
        let status = self
            .ask(p, "Query", |reply| ChannelMsg::Query { reply })
            .await?;
        self.status(p, status)?;
        self.scan_sends()
    }

    /// Like `settle`, but `p` may hang in `perform` first: true if it did.
    async fn settle_or_hang(&mut self, p: usize) -> R<bool> {
        let hang = self.parties[p].hang.clone();
        let actor = self.parties[p].actor.clone();
        let query = actor.call(|reply| ChannelMsg::Query { reply }, Some(CALL_TIMEOUT));
        let got = tokio::select! {
            _ = hang.reached.notified() => None,
            got = query => Some(got),
        };
        match got {
            None => Ok(true),
            Some(Ok(CallResult::Success(status))) => {
                self.status(p, status)?;
                self.scan_sends().map(|()| false)
            }
            Some(_) => Err(format!("{} did not answer a query", NAMES[p])),
        }
    }

    /// Something that makes `p` commit and send: a delivery to it, a command, a reconnect.
    async fn poke(&mut self, p: usize) -> R<()> {
        let roll = self.rng.below(3);
        let next = if roll < 2 {
            let mut link = self.link.lock().unwrap();
            let at = link.queue.iter().position(|q| q.from != p);
            at.and_then(|i| link.queue.remove(i))
        } else {
            None
        };
        if let Some(packet) = next {
            self.note(format!("   deliver {}", show(&packet)));
            self.deliver(packet).await.map(drop)
        } else if roll == 2 {
            self.note("   reconnect");
            self.resume(p).await
        } else {
            self.note("   command");
            self.command(p).await
        }
    }

    async fn crash(&mut self, step: u64, p: usize) -> R<()> {
        let kind = [Crash::Actor, Crash::Process, Crash::PowerCut][self.rng.index(3)];
        let hang = self.rng.below(3);
        self.stats.crashes += 1;
        let mut line = format!("{step}: crash {} ({kind:?}", NAMES[p]);
        if hang == 1 {
            let after = self.rng.below(2) as u32;
            let _ = write!(line, ", hang after {after} sends");
            self.note(format!("{line})"));
            self.parties[p].hang.arm(after);
            self.poke(p).await?;
            if self.settle_or_hang(p).await? {
                self.stats.crashes_before_send += 1;
                self.note("   hung between commit and send");
            }
        } else {
            self.note(format!("{line})"));
        }
        self.kill(p, kind).await?;
        let mut replay_hang = (hang == 2).then(|| self.rng.below(3) as u32);
        loop {
            let party = &mut self.parties[p];
            party.hang = Arc::new(Hang::default());
            if let Some(after) = replay_hang {
                party.hang.arm(after);
            }
            (party.actor, party.handle) = spawn(&party.storage, p, &self.link, &party.hang).await?;
            if replay_hang.take().is_some() && self.settle_or_hang(p).await? {
                self.stats.crashes += 1;
                self.stats.crashes_in_replay += 1;
                let kind = [Crash::Actor, Crash::Process, Crash::PowerCut][self.rng.index(3)];
                self.note(format!("   crash again in the replay ({kind:?})"));
                self.kill(p, kind).await?;
                continue;
            }
            self.parties[p].hang.disarm();
            break;
        }
        self.settle(p).await
    }

    async fn kill(&mut self, p: usize, kind: Crash) -> R<()> {
        let party = &mut self.parties[p];
        party.actor.kill();
        tokio::time::timeout(CALL_TIMEOUT, &mut party.handle)
            .await
            .map_err(|_| format!("{} did not die", NAMES[p]))?
            .map_err(|e| format!("{} died badly: {e}", NAMES[p]))?;
        match kind {
            Crash::Actor => return Ok(()),
            Crash::Process => party
                .storage
                .close()
                .await
                .map_err(|e| format!("close {}'s store: {e}", NAMES[p]))?,
            Crash::PowerCut => {
                party.power.store(false, Ordering::SeqCst);
                if party.storage.close().await.is_err() {
                    self.stats.power_cuts += 1;
                }
            }
        }
        (party.power, party.storage) = open(&party.memory);
        Ok(())
    }

    /// Every send since the last look: none of a confirmed op, and count the resends.
    fn scan_sends(&mut self) -> R<()> {
        let sent = std::mem::take(&mut self.link.lock().unwrap().sent);
        for packet in sent {
            if self.parties[packet.from].confirmed.contains(&packet.id) {
                return Err(format!("sent after its confirmation: {}", show(&packet)));
            }
            if !self.ever_sent.insert(packet.id.clone()) {
                self.stats.resends += 1;
            }
        }
        Ok(())
    }

    /// No more faults: both sides resend, and every packet is delivered in order until none
    /// is left.
    async fn heal(&mut self) -> R<()> {
        self.note("heal");
        self.link.lock().unwrap().up = true;
        for p in 0..2 {
            self.resume(p).await?;
            self.settle(p).await?;
        }
        for _ in 0..HEAL_LIMIT {
            let next = self.link.lock().unwrap().queue.pop_front();
            let Some(packet) = next else {
                return self.scan_sends();
            };
            self.note(format!("   deliver {}", show(&packet)));
            let to = self.deliver(packet).await?;
            self.settle(to).await?;
            self.scan_sends()?;
        }
        Err(format!("no quiescence after {HEAL_LIMIT} deliveries"))
    }

    async fn check_final(&mut self) -> R<()> {
        let mut pending = Vec::new();
        for p in 0..2 {
            let status = self
                .ask(p, "Query", |reply| ChannelMsg::Query { reply })
                .await?;
            self.status(p, status.clone())?;
            pending.push(status.pending);
        }
        let (a, b) = (&self.parties[0].last, &self.parties[1].last);
        if a.view != b.view {
            self.stats.divergences += 1;
            return Err(format!(
                "the parties disagree:\n  alice {:?}\n  bob   {:?}",
                a.view, b.view
            ));
        }
        if a.view != self.model {
            return Err(format!(
                "acknowledged changes lost:\n  both  {:?}\n  model {:?}",
                a.view, self.model
            ));
        }
        if a.sent != b.received || b.sent != a.received {
            return Err(format!(
                "counts differ: alice sent {} received {}, bob sent {} received {}",
                a.sent, a.received, b.sent, b.received
            ));
        }
        for (p, pending) in pending.iter().enumerate() {
            if !pending.is_empty() {
                return Err(format!("{} still holds {pending:?} pending", NAMES[p]));
            }
        }
        for (id, &from) in &self.created {
            let receiver = &self.parties[1 - from].last;
            if self.applied.get(id) != Some(&1) || receiver.applied.get(id) != Some(&1) {
                return Err(format!(
                    "{id} took effect {:?} times (receiver's count {:?})",
                    self.applied.get(id),
                    receiver.applied.get(id)
                ));
            }
            if !self.parties[from].confirmed.contains(id) {
                return Err(format!("{id} was never confirmed"));
            }
        }
        for party in &self.parties {
            if let Some(id) = party
                .last
                .applied
                .keys()
                .find(|id| !self.created.contains_key(id))
            {
                return Err(format!("{id} applied but never acknowledged to its sender"));
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        for party in &mut self.parties {
            party.actor.stop(None);
            let _ = (&mut party.handle).await;
            let _ = party.storage.close().await;
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// What `init` builds for party `me`, before any reply told the harness otherwise.
fn initial(me: usize) -> ChannelState {
    ChannelState {
        me: me as u8,
        view: View::opening(),
        next_tlc: 0,
        sent: 0,
        received: 0,
        commitment: 0,
        peer_commitment: 0,
        seen: ractor_persist::Seen::new(super::protocol::SEEN_WINDOW, 2),
        applied: BTreeMap::new(),
    }
}
