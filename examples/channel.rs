//! The payment-channel scenario: two persistent actors that send each other messages exactly
//! once in effect, TLCs that expire on durable timers, and a third party outside the runtime
//! that gets operations.
//!
//! Alice and Bob each run a persistent `Channel` actor on their own redb store, as on two
//! nodes. They exchange channel updates (`AddTlc`, `RemoveTlc`) and `CommitmentSigned` with
//! `tx.send`: a message is stored in the sender's outbox in the same commit as its state
//! change, posted after the commit, applied by the receiver only if it is the next one of its
//! channel (the runtime keeps the inbox, written in the receiver's commit), and acknowledged;
//! until the acknowledgement comes, the sender's runtime posts it again on its redelivery timer
//! and after every restart. Between the two storages letters travel through a `Courier` on
//! each storage, here a link that drops, duplicates, delays and reorders them (seeded), and
//! either side crashes and restarts at random points. No code here sends anything again by
//! hand. The run opens with Bob removing a TLC and dying between the commit and the send.
//!
//! A TLC has a deadline. The side that offers one sets a durable timer named after it
//! (`tx.set_timer_after("tlc-alice-3", ..)`) in the commit of its `AddTlc`, and cancels it
//! (`tx.cancel_timer`) in the commit that applies the peer's `RemoveTlc` of it: settled in
//! time. If the deadline comes first, the runtime hands the timer to the actor as a message
//! (`PersistentActor::timer`); the handler prints `EXPIRED tlc ..` and fails the TLC with an
//! ordinary `RemoveTlc` of its own, sent to the peer like any update, and the timer's removal
//! is committed with it, so a TLC expires once. A timer outlives its actor: Bob offers `b0`,
//! which Alice never settles, and is down when its deadline passes (the crash above); the
//! restarted Bob fires it as he starts. Should the peer settle a TLC while its offerer expires
//! it, the two `RemoveTlc` cross and each side applies the other's as a no-op (the offerer's
//! cancel then finds no timer: `TimerError::Unknown`).
//!
//! Carol, Alice's watchtower, is no persistent actor (a remote node speaking the channel's own
//! protocol), so `tx.send` cannot reach her. Alice reports each update to her as an operation
//! (`tx.push`, in the update's commit), which `perform` hands to Carol's link and keeps
//! (`Outcome::KeepUntilConfirmed`) until Carol's signature covers it (`tx.confirm_where`). The
//! runtime performs it again on the redelivery timer and after a restart, with the same op id,
//! which Carol records in her `Seen`, so a repeat has no second effect.
//!
//! At the end the links heal. The example waits until every short deadline has passed (the
//! TLCs still open by then expire; those offered for an hour stay), until every message is
//! acknowledged (`tx.settlement`) and every report confirmed, then checks that Alice and Bob
//! hold the same TLCs, that each applied every update of the other once and in order, that
//! neither store holds an outbox row or a pending operation, that each side holds a timer
//! for each TLC it offered that is still open and for nothing else, that every expired TLC
//! (`b0` among them) expired once, never early, and is gone on both sides, and that Carol
//! stored every report once; it exits non-zero otherwise.
//!
//! Run with `cargo run --example channel` (`CHANNEL_SEED=n cargo run --example channel` for
//! another run). A seed fixes the commands, faults and crashes; where the redelivery timer's
//! posts fall, and which of the short-lived TLCs the peer settles before they expire, depends
//! on the clock, so two runs of one seed can differ in detail, not in outcome.
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, call};
use ractor_persist::prelude::*;
use ractor_persist::{
    ActorKey, Courier, Letter, OverCapacity, Postbox, Redelivery, Refusal, SendError, Space, Start,
    StorageConfig, Store, TimerError,
};
use serde::{Deserialize, Serialize};

const NAMES: [&str; 2] = ["alice", "bob"];
const ALICE: usize = 0;
const BOB: usize = 1;
/// A TLC: (the side that offered it, its number there). The other side removes it (settles
/// it); if it has not by the TLC's deadline, the side that offered it removes it (expires it).
type TlcId = (usize, u32);
/// How long a TLC that should outlive the run is offered for.
const LONG: Duration = Duration::from_secs(3600);
/// The deadline of `b0`, which Alice never settles: Bob is down when it passes.
const B0_EXPIRY: Duration = Duration::from_millis(500);

/// The name of the durable timer that expires `tlc`, set by the side that offered it.
fn timer_name(tlc: TlcId) -> String {
    format!("tlc-{}-{}", NAMES[tlc.0], tlc.1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Change {
    AddTlc,
    RemoveTlc,
}

/// Update number `n` (1, 2, 3, ...) of the side that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Update {
    n: u64,
    change: Change,
    tlc: TlcId,
}

/// What Alice and Bob send each other with `tx.send`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum PeerMsg {
    Update(Update),
    /// The signer's TLCs after applying the peer's updates up to number `upto`.
    CommitmentSigned {
        upto: u64,
        tlcs: BTreeSet<TlcId>,
    },
}

/// Alice's operation: report number `r` to Carol, of an update proposed by side `by`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Report {
    r: u64,
    by: usize,
    update: Update,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ChannelState {
    tlcs: BTreeSet<TlcId>,
    next_tlc: u32,
    /// This side's updates, and the peer's updates applied here, in order. (Kept whole for
    /// the final check: each update applied once. A real channel keeps counters.)
    sent: Vec<Update>,
    applied: Vec<Update>,
    /// The highest of this side's updates the peer's last `CommitmentSigned` covers.
    signed: u64,
    /// Reports to the watchtower so far (Alice only).
    reported: u64,
    /// This side's TLCs it removed when their timers fired, in order.
    expired: Vec<TlcId>,
    /// Timers that fired early, or for a TLC this side no longer held (never, if timers are
    /// right): what fired, and why it is wrong.
    stray: Vec<String>,
}

impl ChannelState {
    fn apply(&mut self, update: &Update) {
        if update.change == Change::AddTlc {
            self.tlcs.insert(update.tlc);
        } else {
            self.tlcs.remove(&update.tlc);
        }
    }
}

enum ChannelMsg {
    /// A user command: offer a new TLC that expires after the given time, or remove the
    /// `i`-th one the peer offered. Replies with the update and the id of the message carrying
    /// it to the peer.
    Command(
        Change,
        usize,
        Duration,
        RpcReplyPort<Option<(Update, OpId)>>,
    ),
    /// A message from the peer (made by `inbound`).
    Peer(PeerMsg),
    /// The durable timer of this side's TLC fired (made by `timer`): the TLC, and the instant
    /// its timer was due.
    Expire(TlcId, SystemTime),
    /// Carol's signature: she holds Alice's reports 1..=r. Replies with how many it confirmed.
    CarolSigned(u64, RpcReplyPort<usize>),
    /// Carol is back online: report what she has not confirmed now, not on the next timer.
    CarolReconnected(RpcReplyPort<usize>),
    /// How a message or operation of this side ends.
    Settle(OpId, RpcReplyPort<Settlement>),
    /// The state and how many operations are pending.
    Query(RpcReplyPort<(ChannelState, usize)>),
    /// The durable timers set, by name, with when they are due.
    Timers(RpcReplyPort<Vec<(String, SystemTime)>>),
    /// The runtime's own messages: letters, acknowledgements, redelivery.
    Persist(Control<Report>),
}

#[derive(Persistent)]
#[persistent(name = "channel")]
struct Channel {
    me: usize,
    /// Whether this side reports its updates to a watchtower (Alice does).
    watched: bool,
    link: Shared,
}

impl Channel {
    /// Sends `msg` to the peer: `tx.send_to` stores it in the outbox in this message's commit,
    /// and the runtime posts it after the commit, again and again until the peer acknowledges.
    fn send(&self, tx: &mut Tx<'_, Self>, msg: PeerMsg) -> Result<OpId, SendError> {
        let id = tx.send_to::<Channel, _>(NAMES[1 - self.me], &msg)?;
        // A courier sees only a letter's envelope: note what it carries, for the narrative.
        let mut link = self.link.lock().unwrap();
        link.labels.insert(id.clone(), show(&msg, self.me));
        Ok(id)
    }

    /// Proposes this side's next update: applies it, sends it to the peer and reports it, all
    /// in this message's commit. Returns it with the id of the message carrying it.
    fn propose(
        &self,
        tx: &mut Tx<'_, Self>,
        st: &mut ChannelState,
        change: Change,
        tlc: TlcId,
    ) -> Result<(Update, OpId), ActorProcessingErr> {
        let n = st.sent.len() as u64 + 1;
        let update = Update { n, change, tlc };
        st.apply(&update);
        st.sent.push(update.clone());
        let id = self.send(tx, PeerMsg::Update(update.clone()))?;
        self.report(tx, st, self.me, &update)?;
        Ok((update, id))
    }

    /// Notes a line for the narrative (printed with what was posted).
    fn log(&self, line: String) {
        self.link.lock().unwrap().log.push(line);
    }

    /// Reports `update` (proposed by side `by`) to the watchtower, as an operation committed
    /// with the update.
    fn report(
        &self,
        tx: &mut Tx<'_, Self>,
        st: &mut ChannelState,
        by: usize,
        update: &Update,
    ) -> Result<(), OverCapacity> {
        if self.watched {
            st.reported += 1;
            let (r, update) = (st.reported, update.clone());
            tx.push(Report { r, by, update })?;
        }
        Ok(())
    }
}

impl PersistentActor for Channel {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Op = Report;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<ChannelState, ActorProcessingErr> {
        Ok(ChannelState::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: ChannelMsg,
        st: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChannelMsg::Command(change, i, expiry, reply) => {
                let theirs: Vec<&TlcId> = st.tlcs.iter().filter(|t| t.0 != self.me).collect();
                let tlc = match change {
                    Change::AddTlc => (self.me, st.next_tlc),
                    Change::RemoveTlc if theirs.is_empty() => {
                        tx.reply(reply, None);
                        return Ok(());
                    }
                    Change::RemoveTlc => *theirs[i % theirs.len()],
                };
                if change == Change::AddTlc {
                    st.next_tlc += 1;
                    // The deadline, committed with the offer: it fires even if this process
                    // is down when it passes (then as the actor starts again).
                    tx.set_timer_after(&timer_name(tlc), expiry, &tlc)?;
                }
                let sent = self.propose(tx, st, change, tlc)?;
                tx.reply(reply, Some(sent)); // after the commit; the posts follow
            }
            ChannelMsg::Expire(tlc, due) => {
                // The timer is removed in this message's commit, with the `RemoveTlc` below:
                // if the process dies before, the restarted actor fires it again.
                let name = tx.fired().unwrap_or_default().to_owned();
                let me = NAMES[self.me];
                let wrong = if SystemTime::now() < due {
                    Some("fired before its instant")
                } else if name != timer_name(tlc) || tlc.0 != self.me {
                    Some("is not this side's timer of the TLC")
                } else if !st.tlcs.contains(&tlc) {
                    Some("fired for a TLC no longer held (its cancel was lost)")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    let what = format!("timer {name} for {}: {wrong}", tlcs([&tlc]));
                    self.log(format!("{me}: WRONG {what}"));
                    st.stray.push(what);
                    return Ok(());
                }
                // Not settled in time: fail it, with an update of the channel like any other.
                st.expired.push(tlc);
                let (update, _) = self.propose(tx, st, Change::RemoveTlc, tlc)?;
                let t = tlcs([&tlc]);
                self.log(format!(
                    "{me}: timer {name} fires: EXPIRED tlc {t}, removed with RemoveTlc (n{})",
                    update.n
                ));
            }
            ChannelMsg::Peer(PeerMsg::Update(update)) => {
                // The runtime hands over each message of the channel once and in order, and
                // records that in this commit: no `Seen`, no check of `n`.
                if update.change == Change::RemoveTlc && update.tlc.0 == self.me {
                    // The peer settled a TLC of ours: its deadline no longer matters. Unless
                    // it expired here first (both removals crossed): then the timer is gone.
                    let (name, me, t) =
                        (timer_name(update.tlc), NAMES[self.me], tlcs([&update.tlc]));
                    let due = tx.timer(&name);
                    match tx.cancel_timer(&name) {
                        Ok(()) => {
                            // Due already, maybe: its wake waits in the mailbox behind this.
                            let late = due
                                .and_then(|due| SystemTime::now().duration_since(due).ok())
                                .map(|late| format!(" (due {} ms ago)", late.as_millis()))
                                .unwrap_or_default();
                            let before = "settled before its timer fired";
                            self.log(format!("{me}: {t} {before}{late}: cancels timer {name}"))
                        }
                        Err(TimerError::Unknown { .. }) => self.log(format!(
                            "{me}: {t} settled after it expired here: no timer {name} to cancel"
                        )),
                        Err(e) => return Err(e.into()),
                    }
                }
                st.apply(&update);
                st.applied.push(update.clone());
                self.report(tx, st, 1 - self.me, &update)?;
                let (upto, tlcs) = (update.n, st.tlcs.clone());
                self.send(tx, PeerMsg::CommitmentSigned { upto, tlcs })?;
            }
            ChannelMsg::Peer(PeerMsg::CommitmentSigned { upto, .. }) => st.signed = upto,
            ChannelMsg::CarolSigned(r, reply) => {
                // Carol holds every report up to `r`: stop sending them.
                let confirmed = tx.confirm_where(|p| p.op().r <= r);
                tx.reply(reply, confirmed);
            }
            ChannelMsg::CarolReconnected(reply) => {
                let resumed = tx.resume(|_| true);
                tx.reply(reply, resumed);
            }
            ChannelMsg::Settle(id, reply) => {
                let settlement = tx.settlement(&id);
                tx.reply(reply, settlement);
            }
            ChannelMsg::Query(reply) => {
                let pending = tx.pending().count();
                tx.reply(reply, (st.clone(), pending));
            }
            ChannelMsg::Timers(reply) => {
                let timers = tx.timers();
                tx.reply(reply, timers);
            }
            ChannelMsg::Persist(_) => {} // handled by the runtime, never seen here
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Report>,
        _: &ChannelState,
    ) -> Result<Outcome, ActorProcessingErr> {
        // Carol is no persistent actor: `tx.send` cannot reach her. Her link takes the report
        // with its op id, the same in every perform, so she can drop repeats.
        let mut link = self.link.lock().unwrap();
        link.send_report(self.me, op.id(), op.op());
        // Handed over is not stored: keep it until Carol's signature covers it. Until then the
        // runtime performs it again on the redelivery timer and after a restart.
        Ok(Outcome::KeepUntilConfirmed)
    }

    fn inbound(msg: Inbound) -> Result<ChannelMsg, DecodeReason> {
        Ok(ChannelMsg::Peer(msg.decode()?))
    }

    fn timer(fired: Fired) -> Result<ChannelMsg, DecodeReason> {
        // The payload is the TLC; `set_timer_after` checks here that it decodes.
        Ok(ChannelMsg::Expire(fired.decode()?, fired.due()))
    }

    fn control(msg: ChannelMsg) -> Result<Control<Report>, ChannelMsg> {
        match msg {
            ChannelMsg::Persist(control) => Ok(control),
            other => Err(other),
        }
    }

    fn wrap_control(control: Control<Report>) -> Option<ChannelMsg> {
        Some(ChannelMsg::Persist(control))
    }
}

/// The network, owned by `main`: what is in flight between Alice and Bob, and from Alice to
/// Carol. `main`'s steps release it, in order, out of order, twice, or never.
#[derive(Default)]
struct Link {
    /// Where letters for each side are delivered: the postbox of its storage open now.
    postboxes: [Option<Postbox>; 2],
    /// Letters between Alice and Bob (messages and acknowledgements) in flight.
    letters: VecDeque<Letter>,
    /// Alice's reports to Carol in flight, with their op ids.
    reports: VecDeque<(OpId, Report)>,
    /// Once healed, letters go straight through.
    healed: bool,
    /// A side that is dying: nothing it sends after its commit leaves.
    dying: Option<usize>,
    /// What each message is, by id; and every message and report id posted so far.
    labels: HashMap<OpId, String>,
    posted: BTreeSet<OpId>,
    /// What was posted since `main` last printed.
    log: Vec<String>,
}
type Shared = Arc<Mutex<Link>>;

impl Link {
    fn show(&self, letter: &Letter) -> String {
        let (from, to) = (side(letter.from()), side(letter.to()));
        let (from, to, seq) = (NAMES[from], NAMES[to], letter.seq());
        match letter.message_id() {
            None => format!("{from}->{to} ack #{seq}"),
            Some(id) => format!("{from}->{to} #{seq} {}", self.labels[&id]),
        }
    }

    /// Logs a post by side `me` of `what` (a message or report `id`, if any); false if lost.
    fn post(&mut self, me: usize, what: String, id: Option<&OpId>) -> bool {
        let mut line = format!("{} posts {what}", NAMES[me]);
        if id.is_some_and(|id| !self.posted.insert(id.clone())) {
            line += " again";
        }
        let lost = self.dying == Some(me);
        if lost {
            line += ": lost, the process is dying";
        }
        self.log.push(line);
        !lost
    }

    fn send_report(&mut self, me: usize, id: &OpId, report: &Report) {
        if self.post(me, format!("to carol {}", show_report(report)), Some(id)) {
            self.reports.push_back((id.clone(), report.clone()));
        }
    }
}

/// One side's courier: the runtime of its storage hands it every letter (messages and
/// acknowledgements) for the other side, which it puts on the link.
struct LinkEnd {
    me: usize,
    link: Shared,
}

impl Courier for LinkEnd {
    fn carry(&self, letter: Letter, _own: &Postbox) {
        let mut link = self.link.lock().unwrap();
        let what = link.show(&letter);
        if !link.post(self.me, what, letter.message_id().as_ref()) {
            return;
        }
        if !link.healed {
            link.letters.push_back(letter);
        } else if let Some(postbox) = link.postboxes[1 - self.me].clone() {
            drop(link);
            postbox.deliver(letter);
        }
    }
}

/// Carol, the watchtower: not a persistent actor. She stores each report once, whatever the
/// repeats, by recording its op id in a `Seen`, and signs for every report up to the first
/// one she lacks.
#[derive(Default)]
struct Carol {
    seen: Seen,
    /// The reports she stored, by number, and how many times each was stored.
    held: BTreeMap<u64, (Report, u32)>,
    unknown: usize,
}

impl Carol {
    /// Takes a report; returns whether it was new and her signature.
    fn receive(&mut self, id: &OpId, report: Report) -> (Delivery, u64) {
        let seen = self.seen.record(id);
        match seen {
            Delivery::New => self.held.entry(report.r).or_insert((report, 0)).1 += 1,
            Delivery::Duplicate => {}
            Delivery::Unknown => self.unknown += 1, // her window cannot tell; never here
        }
        let signed = (1..).take_while(|r| self.held.contains_key(r)).count() as u64;
        (seen, signed)
    }
}

fn side(key: &ActorKey) -> usize {
    usize::from(key.key() == NAMES[BOB])
}

fn tlcs<'a>(tlcs: impl IntoIterator<Item = &'a TlcId>) -> String {
    let names = tlcs
        .into_iter()
        .map(|t| format!("{}{}", ["a", "b"][t.0], t.1));
    names.collect::<Vec<_>>().join(" ")
}

/// Update `u` of side `by`: a `RemoveTlc` of its own TLC is an expiry.
fn show_update(u: &Update, by: usize) -> String {
    let expired = u.change == Change::RemoveTlc && u.tlc.0 == by;
    let n = if expired { "expired, n" } else { "n" };
    format!("{:?} {} ({n}{})", u.change, tlcs([&u.tlc]), u.n)
}

/// A message of side `by`.
fn show(msg: &PeerMsg, by: usize) -> String {
    match msg {
        PeerMsg::Update(u) => show_update(u, by),
        PeerMsg::CommitmentSigned { upto, tlcs: ts } => {
            format!("CommitmentSigned to n{upto} {{{}}}", tlcs(ts))
        }
    }
}

fn show_report(report: &Report) -> String {
    let by = NAMES[report.by];
    let update = show_update(&report.update, report.by);
    format!("r{}: {by}'s {update}", report.r)
}

type Error = Box<dyn std::error::Error>;

/// A running side: its actor, the actor's task, its storage.
struct Side {
    actor: ActorRef<ChannelMsg>,
    task: tokio::task::JoinHandle<()>,
    storage: Storage,
}

fn path(me: usize) -> std::path::PathBuf {
    let pid = std::process::id();
    std::env::temp_dir().join(format!("channel-{}-{pid}.redb", NAMES[me]))
}

async fn start(me: usize, link: &Shared) -> Result<Side, Error> {
    // Each side has its own store and storage; its courier carries letters to the other.
    let config = StorageConfig::default().with_courier(LinkEnd {
        me,
        link: link.clone(),
    });
    let storage = Storage::with_config(RedbStore::open(path(me))?, config);
    link.lock().unwrap().postboxes[me] = Some(storage.postbox().clone());
    let channel = Channel {
        me,
        watched: me == ALICE,
        link: link.clone(),
    };
    // Unacknowledged messages and unconfirmed reports go again after 50 ms, 100 ms, ... 400 ms.
    let redelivery = Redelivery::new(Duration::from_millis(50), Duration::from_millis(400));
    let start = Start::new(&storage, NAMES[me], ()).redelivery(redelivery);
    let (actor, task) = Actor::spawn(None, channel, start).await?;
    Ok(Side {
        actor,
        task,
        storage,
    })
}

/// Prints what was posted since the last call.
fn flush(link: &Shared) {
    for line in std::mem::take(&mut link.lock().unwrap().log) {
        println!("      {line}");
    }
}

/// The state and pending operations of `side`, once every earlier message was handled (and
/// what it posted is printed).
async fn sync(side: &Side, link: &Shared) -> Result<(ChannelState, usize), Error> {
    let got = call!(side.actor, ChannelMsg::Query)?;
    flush(link);
    Ok(got)
}

/// Kills side `me`, closes its store, opens it again and respawns it. Nothing is sent again
/// by hand: the runtime posts the outbox again, performs the pending operations again, and
/// fires the timers that fell due meanwhile. With `down_until`, the side stays down until
/// that instant has passed.
async fn crash(
    sides: &mut [Side],
    me: usize,
    link: &Shared,
    down_until: Option<(SystemTime, &str)>,
) -> Result<(), Error> {
    let Side {
        actor,
        task,
        storage,
    } = &mut sides[me];
    actor.kill();
    task.await?;
    storage.close().await?;
    flush(link);
    link.lock().unwrap().dying = None;
    if let Some((until, what)) = down_until {
        // Waiting for a deadline to pass, not for an event: the timer is in the store.
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        println!("      {} is down while {what} passes", NAMES[me]);
        tokio::time::sleep(left + Duration::from_millis(5)).await;
    }
    println!("      {} restarts:", NAMES[me]);
    sides[me] = start(me, link).await?;
    let (st, pending) = sync(&sides[me], link).await?;
    let n = (st.sent.len(), st.applied.len());
    println!(
        "      {} is back: {} of its updates, {} of the peer's, {pending} report(s) pending",
        NAMES[me], n.0, n.1
    );
    Ok(())
}

/// Asks `side` (side number `me`) to offer a TLC that expires after `expiry`, or to remove
/// the `i`-th TLC of the peer's.
async fn command(
    side: &Side,
    me: usize,
    link: &Shared,
    change: Change,
    i: usize,
    expiry: Duration,
) -> Result<(), Error> {
    match call!(side.actor, |r| ChannelMsg::Command(change, i, expiry, r))? {
        Some((update, id)) => {
            let what = show_update(&update, me);
            if change == Change::AddTlc {
                let name = timer_name(update.tlc);
                println!(
                    "      commits {what} and timer {name} ({}): message {id}",
                    show_expiry(expiry)
                );
            } else {
                println!("      commits {what}: message {id}");
            }
        }
        None => println!("      no TLC of the peer's to remove"),
    }
    if link.lock().unwrap().dying.is_none() {
        sync(side, link).await?;
    }
    Ok(())
}

/// The link hands the `i`-th letter in flight to its destination's postbox.
async fn deliver(sides: &[Side], link: &Shared, i: usize) -> Result<(), Error> {
    let (letter, what) = {
        let mut link = link.lock().unwrap();
        let letter = link.letters.remove(i).ok_or("nothing in flight")?;
        let what = link.show(&letter);
        (letter, what)
    };
    let to = side(letter.to());
    let (name, postbox) = (NAMES[to], sides[to].storage.postbox());
    let (before, _) = call!(sides[to].actor, ChannelMsg::Query)?;
    let refused = postbox.refused();
    postbox.deliver(letter.clone());
    let (after, _) = call!(sides[to].actor, ChannelMsg::Query)?;
    let refusal = (postbox.refused() > refused).then(|| postbox.refusals().pop());
    let did = if let Some(Some(Refusal::Gap { expected, .. })) = refusal {
        // It overtook an earlier one: not applied, not acknowledged; it will be posted again.
        format!("refused: {name} expects #{expected} first")
    } else if let Some(Some(refusal)) = refusal {
        format!("refused: {refusal}")
    } else if letter.is_ack() {
        format!("{name}'s outbox drops its messages up to #{}", letter.seq())
    } else if after.applied.len() > before.applied.len() {
        format!("{name} applies it")
    } else if after.signed > before.signed {
        format!("{name} takes the signature")
    } else {
        "a duplicate: dropped, acknowledged again".to_owned()
    };
    println!("    {what}: {did}");
    flush(link);
    Ok(())
}

async fn deliver_all(sides: &[Side], link: &Shared) -> Result<(), Error> {
    while !link.lock().unwrap().letters.is_empty() {
        deliver(sides, link, 0).await?;
    }
    Ok(())
}

/// Carol gets the `i`-th report in flight and signs; her signature reaches Alice unless lost.
async fn carol_gets(
    alice: &Side,
    link: &Shared,
    carol: &mut Carol,
    i: usize,
    lost: bool,
) -> Result<(), Error> {
    let next = link.lock().unwrap().reports.remove(i);
    let (id, report) = next.ok_or("no report in flight")?;
    let what = show_report(&report);
    let (seen, signed) = carol.receive(&id, report);
    let did = match seen {
        Delivery::New => "stores it",
        Delivery::Duplicate => "has it: drops it",
        Delivery::Unknown => "cannot tell whether she has it",
    };
    print!("    carol gets {what}: {did}, signs r1..r{signed}");
    if lost {
        println!("; the signature is lost");
    } else {
        let confirmed = call!(alice.actor, |r| ChannelMsg::CarolSigned(signed, r))?;
        println!("; alice confirms {confirmed} report(s)");
    }
    flush(link);
    Ok(())
}

async fn carol_gets_all(alice: &Side, link: &Shared, carol: &mut Carol) -> Result<(), Error> {
    while !link.lock().unwrap().reports.is_empty() {
        carol_gets(alice, link, carol, 0, false).await?;
    }
    Ok(())
}

/// Waits until every message either side posted is acknowledged; returns how many there were.
async fn settle_all(sides: &[Side], link: &Shared, deadline: Instant) -> Result<usize, Error> {
    let mut settled = BTreeSet::new();
    loop {
        // Applying a message may post a new one (a signature): go on until nothing is new.
        let open: Vec<OpId> = {
            let l = link.lock().unwrap();
            let messages = l.posted.iter().filter(|id| l.labels.contains_key(*id));
            messages
                .filter(|id| !settled.contains(*id))
                .cloned()
                .collect()
        };
        if open.is_empty() {
            return Ok(settled.len());
        }
        for id in open {
            let sender = &sides[side(id.actor())].actor;
            let settlement = call!(sender, ChannelMsg::Settle, id.clone())?;
            // `NotPending`: it was acknowledged before its sender last restarted.
            match tokio::time::timeout_at(deadline.into(), settlement).await {
                Ok(Settled::Delivered | Settled::NotPending) => settled.insert(id),
                other => return Err(format!("message {id} did not settle: {other:?}").into()),
            };
        }
    }
}

/// Carol gets every report in flight and signs, until Alice has none left unconfirmed.
async fn carol_catches_up(
    alice: &Side,
    link: &Shared,
    carol: &mut Carol,
    deadline: Instant,
) -> Result<(), Error> {
    loop {
        let (mut got, mut new, mut signed) = (0, 0, 0);
        let reports: Vec<_> = link.lock().unwrap().reports.drain(..).collect();
        for (id, report) in reports {
            let (seen, upto) = carol.receive(&id, report);
            (got, new, signed) = (got + 1, new + usize::from(seen == Delivery::New), upto);
        }
        if got > 0 {
            let confirmed = call!(alice.actor, |r| ChannelMsg::CarolSigned(signed, r))?;
            let what = format!("{got} report(s), {new} new");
            println!("    carol gets {what}, signs r1..r{signed}; alice confirms {confirmed}");
        }
        let (_, pending) = call!(alice.actor, ChannelMsg::Query)?;
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{pending} report(s) never confirmed").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn show_expiry(expiry: Duration) -> String {
    if expiry >= LONG {
        "expires in an hour".to_owned()
    } else {
        format!("expires in {} ms", expiry.as_millis())
    }
}

/// Waits until neither side has a timer due within the next minute: every TLC offered for a
/// short time is settled or expired by then (those offered for an hour are still open).
async fn short_deadlines_pass(sides: &[Side], deadline: Instant) -> Result<(), Error> {
    loop {
        let soon = SystemTime::now() + Duration::from_secs(60);
        let mut left = Vec::new();
        for side in sides {
            let timers = call!(side.actor, ChannelMsg::Timers)?;
            left.extend(
                timers
                    .into_iter()
                    .filter(|(_, due)| *due < soon)
                    .map(|t| t.0),
            );
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timers {left:?} never fired").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What is left of a side at the end.
struct End {
    st: ChannelState,
    /// Messages and operations left in its store (none, if all went well).
    left: usize,
    /// Its timers by name, as the actor reports them, and how many rows its store holds.
    timers: BTreeSet<String>,
    timer_rows: usize,
}

/// Stops side `me`, closes its store, and reads in it what is left of the side's messages,
/// operations and timers.
async fn finish(me: usize, side: Side) -> Result<End, Error> {
    let (st, _) = call!(side.actor, ChannelMsg::Query)?;
    let timers: BTreeSet<String> = call!(side.actor, ChannelMsg::Timers)?
        .into_iter()
        .map(|t| t.0)
        .collect();
    side.actor.stop_and_wait(None, None).await?;
    side.storage.close().await?;
    let store = RedbStore::open(path(me))?;
    let key = ActorKey::new(Channel::NAME, NAMES[me]);
    let outbox = store.read(&key, Some(Space::OUTBOX), 0..=u64::MAX)?.len();
    let ops = store.read(&key, Some(Space::OPS), 0..=u64::MAX)?.len();
    let timer_rows = store.read(&key, Some(Space::TIMERS), 0..=u64::MAX)?.len();
    drop(store);
    std::fs::remove_file(path(me))?;
    let (sent, applied) = (st.sent.len(), st.applied.len());
    println!(
        "{:5}: TLCs {{{}}}, sent n1..n{sent}, applied the peer's n1..n{applied}, signed to n{}; \
         expired {{{}}}; in its store: {outbox} unacknowledged message(s), {ops} pending \
         operation(s), {timer_rows} timer(s) {{{}}}",
        NAMES[me],
        tlcs(&st.tlcs),
        st.signed,
        tlcs(&st.expired),
        timers.iter().cloned().collect::<Vec<_>>().join(" "),
    );
    Ok(End {
        st,
        left: outbox + ops,
        timers,
        timer_rows,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let seed: u64 = std::env::var("CHANNEL_SEED").map_or(1, |s| s.parse().unwrap_or(1));
    let mut rng = seed;
    let mut next = move |n: usize| {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15); // splitmix64
        let z = (rng ^ (rng >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    };
    let began = Instant::now();
    let link = Shared::default();
    let mut carol = Carol::default();
    let mut sides = vec![start(ALICE, &link).await?, start(BOB, &link).await?];

    let b0 = (BOB, 0);
    let ms = B0_EXPIRY.as_millis();
    println!(
        "1. Alice offers TLC a0 for an hour, Bob b0 for {ms} ms; the links deliver everything."
    );
    command(&sides[ALICE], ALICE, &link, Change::AddTlc, 0, LONG).await?;
    command(&sides[BOB], BOB, &link, Change::AddTlc, 0, B0_EXPIRY).await?;
    deliver_all(&sides, &link).await?;
    carol_gets_all(&sides[ALICE], &link, &mut carol).await?;
    println!(
        "2. Bob removes a0: RemoveTlc commits with the change; he dies before it leaves, and \
         stays down until b0's deadline has passed."
    );
    let timers = call!(sides[BOB].actor, ChannelMsg::Timers)?;
    let b0_due = timers.iter().find(|t| t.0 == timer_name(b0)).map(|t| t.1);
    if b0_due.is_none() {
        println!(
            "      (b0 expired already: this machine is slow; its timer fired before the crash)"
        );
    }
    link.lock().unwrap().dying = Some(BOB);
    command(&sides[BOB], BOB, &link, Change::RemoveTlc, 0, LONG).await?;
    let down = b0_due.map(|due| (due, "b0's deadline"));
    crash(&mut sides, BOB, &link, down).await?;
    println!(
        "3. The link delivers his RemoveTlc twice; Alice applies it once, cancelling a0's timer, \
         then b0's expiry, and reports both to Carol."
    );
    let first = link.lock().unwrap().letters.front().cloned();
    link.lock().unwrap().letters.extend(first);
    deliver_all(&sides, &link).await?;
    carol_gets_all(&sides[ALICE], &link, &mut carol).await?;

    println!("4. A random run (seed {seed}); a TLC expires in 150 ms, 400 ms or an hour.");
    for step in 1..=30 {
        let (letters, reports) = {
            let l = link.lock().unwrap();
            (l.letters.len(), l.reports.len())
        };
        let (p, roll, i, j) = (next(2), next(100), next(letters), next(reports));
        let (name, change) = (NAMES[p], [Change::AddTlc, Change::RemoveTlc][next(3) / 2]);
        let expiry = [Duration::from_millis(150), Duration::from_millis(400), LONG][roll % 3];
        print!("  {step}. ");
        match roll {
            20..56 if letters > 0 => {
                let i = if roll % 4 == 0 { i } else { 0 }; // mostly in order
                let which = ["the next letter", "a later one (reordered)"][i.min(1)];
                println!("the link delivers {which}");
                deliver(&sides, &link, i).await?;
            }
            56..66 if letters > 0 => {
                let mut l = link.lock().unwrap();
                let letter = l.letters.remove(i).expect("in range");
                let what = ["drops", "duplicates", "delays"][roll % 3];
                println!("the link {what} {}", l.show(&letter));
                if what != "drops" {
                    l.letters.push_back(letter.clone());
                }
                if what == "duplicates" {
                    l.letters.insert(i, letter);
                }
            }
            66..72 => {
                if next(2) == 0 {
                    println!("{name} is asked to {change:?}, dies between commit and send");
                    link.lock().unwrap().dying = Some(p);
                    command(&sides[p], p, &link, change, i, expiry).await?;
                } else {
                    println!("{name} crashes");
                }
                crash(&mut sides, p, &link, None).await?;
            }
            72..86 if reports > 0 => {
                println!("carol's link delivers a report");
                let lost = roll % 4 == 0;
                carol_gets(&sides[ALICE], &link, &mut carol, j, lost).await?;
            }
            86..90 if reports > 0 => {
                let (id, report) = link.lock().unwrap().reports.remove(j).expect("in range");
                println!("carol's link drops {} [{id}]", show_report(&report));
            }
            90..95 => {
                println!("time passes: the runtimes' timers post again what is unconfirmed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                for side in &sides {
                    sync(side, &link).await?;
                }
            }
            _ => {
                // A user command (also when the step finds nothing in flight).
                println!("{name} is asked to {change:?}");
                command(&sides[p], p, &link, change, i, expiry).await?;
            }
        }
    }

    println!("5. The link heals: letters go straight through; the timers post the lost again.");
    let stuck: Vec<Letter> = {
        let mut l = link.lock().unwrap();
        l.healed = true;
        l.letters.drain(..).collect()
    };
    println!(
        "    it delivers the {} letter(s) still in flight",
        stuck.len()
    );
    for letter in stuck {
        sides[side(letter.to())].storage.postbox().deliver(letter);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    println!("    the short deadlines pass: the TLCs not settled by then expire");
    short_deadlines_pass(&sides, deadline).await?;
    let acknowledged = settle_all(&sides, &link, deadline).await?;
    // Of what happened meanwhile, print what the timers did (the posts are many).
    for line in std::mem::take(&mut link.lock().unwrap().log) {
        if line.contains("timer") {
            println!("      {line}");
        }
    }
    println!("    all {acknowledged} messages acknowledged (tx.settlement)");

    println!("6. Carol reconnects: Alice reports what Carol has not confirmed (tx.resume).");
    let resumed = call!(sides[ALICE].actor, ChannelMsg::CarolReconnected)?;
    println!("    alice resumes {resumed} report(s)");
    carol_catches_up(&sides[ALICE], &link, &mut carol, deadline).await?;
    link.lock().unwrap().log.clear();

    println!("7. The end.");
    let mut ends = Vec::new();
    for (me, side) in sides.into_iter().enumerate() {
        ends.push(finish(me, side).await?);
    }
    let (a, b) = (&ends[ALICE].st, &ends[BOB].st);
    let (a_left, b_left) = (ends[ALICE].left, ends[BOB].left);
    let twice = carol.held.values().filter(|(_, times)| *times > 1).count();
    println!(
        "carol: holds alice's reports r1..r{}, {twice} stored twice, {} unknown to her Seen",
        carol.held.len(),
        carol.unknown
    );
    // Carol should hold a report of every update of the channel, as Alice saw them.
    let reports: BTreeSet<(usize, u64)> = carol
        .held
        .values()
        .map(|(r, _)| (r.by, r.update.n))
        .collect();
    let mine = a.sent.iter().map(|u| (ALICE, u.n));
    let updates: BTreeSet<(usize, u64)> =
        mine.chain(a.applied.iter().map(|u| (BOB, u.n))).collect();
    let failures = [
        (a.tlcs != b.tlcs, "alice and bob hold different TLCs"),
        (
            a.sent != b.applied,
            "bob did not apply alice's updates once each, in order",
        ),
        (
            b.sent != a.applied,
            "alice did not apply bob's updates once each, in order",
        ),
        (
            a.signed != a.sent.len() as u64 || b.signed != b.sent.len() as u64,
            "an update was never signed",
        ),
        (
            a_left + b_left > 0,
            "a message or operation is left in a store",
        ),
        (
            carol.held.len() as u64 != a.reported || twice + carol.unknown > 0,
            "carol does not hold each report once",
        ),
        (reports != updates, "carol misses an update"),
        (
            !a.stray.is_empty() || !b.stray.is_empty(),
            "a timer fired early or for a TLC no longer held",
        ),
        (
            ends.iter().enumerate().any(|(me, end)| {
                let open: BTreeSet<String> = end
                    .st
                    .tlcs
                    .iter()
                    .filter(|t| t.0 == me)
                    .map(|t| timer_name(*t))
                    .collect();
                open != end.timers || end.timer_rows != end.timers.len()
            }),
            "a side's timers are not those of the TLCs it offered that are still open",
        ),
        (
            ends.iter().enumerate().any(|(me, end)| {
                end.st.expired.iter().any(|t| {
                    let once = |list: &Vec<TlcId>| list.iter().filter(|x| *x == t).count() == 1;
                    let removals: Vec<TlcId> = end
                        .st
                        .sent
                        .iter()
                        .filter(|u| u.change == Change::RemoveTlc)
                        .map(|u| u.tlc)
                        .collect();
                    t.0 != me || !once(&end.st.expired) || !once(&removals)
                })
            }),
            "a TLC expired more than once, or not by the side that offered it",
        ),
        (
            a.expired
                .iter()
                .chain(&b.expired)
                .any(|t| a.tlcs.contains(t) || b.tlcs.contains(t)),
            "an expired TLC is still held",
        ),
        (!b.expired.contains(&b0), "b0 never expired"),
    ];
    let failed: Vec<&str> = failures.iter().filter(|f| f.0).map(|f| f.1).collect();
    if !failed.is_empty() {
        eprintln!("FAILED (seed {seed}): {}", failed.join("; "));
        std::process::exit(1);
    }
    // A TLC the peer settled while its offerer expired it: both removals crossed, each a
    // no-op where the other came first.
    let crossed = ends
        .iter()
        .enumerate()
        .flat_map(|(me, end)| end.st.expired.iter().map(move |t| (me, t)))
        .filter(|(me, t)| {
            ends[1 - me]
                .st
                .sent
                .iter()
                .any(|u| u.change == Change::RemoveTlc && u.tlc == **t)
        })
        .count();
    let expired: Vec<TlcId> = a.expired.iter().chain(&b.expired).copied().collect();
    println!(
        "alice and bob agree, each applied every update of the other once, nothing is left \
         pending, each side holds a timer for each of its open TLCs and no other, {} TLC(s) \
         expired once each ({}; {crossed} settled by the peer as they expired), and carol \
         holds each report once ({} ms).",
        expired.len(),
        tlcs(&expired),
        began.elapsed().as_millis()
    );
    Ok(())
}
