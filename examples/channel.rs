//! The payment-channel scenario, with two parties. Alice and Bob each run a persistent
//! `Channel` actor on their own store and talk through a link that drops, duplicates, delays
//! and reorders messages, and each side crashes and restarts at (seeded) random points. Every
//! channel update (`AddTlc`, `RemoveTlc`) is committed together with the state change it
//! makes, sent to the peer only after that commit, and kept pending until the peer's
//! `CommitmentSigned` shows it was processed: it is sent again after every restart and
//! reconnect, always with the same op id, which the receiver records in its `Seen` set in the
//! same commit as the change, so a duplicate has no second effect. The run opens with Bob
//! removing a TLC and dying between the commit and the send; a random run follows; then the
//! link heals, both sides resend, and the example checks that they agree (it exits non-zero
//! if they do not).
//!
//! Run with `cargo run --example channel` (`CHANNEL_SEED=n cargo run --example channel` for
//! another run).
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use ractor::{Actor, call};
use ractor_persist::Start;
use ractor_persist::prelude::*;
use serde::{Deserialize, Serialize};

const NAMES: [&str; 2] = ["alice", "bob"];
/// A TLC: (the party that offered it, its number there). Only the other party removes it.
type TlcId = (usize, u32);

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Change {
    AddTlc,
    RemoveTlc,
}

/// Messages to the peer: the actor's operations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Wire {
    /// Update number `n` of its sender (1, 2, 3, ...), applied by the peer in that order.
    Update(u64, Change, TlcId),
    /// The signer's TLCs after applying the peer's updates up to number `acked`.
    CommitmentSigned(u64, BTreeSet<TlcId>),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ChannelState {
    tlcs: BTreeSet<TlcId>,
    next_tlc: u32,
    /// Updates sent to the peer; the peer's updates applied.
    sent: u64,
    received: u64,
    /// The op ids of the peer's updates applied here.
    seen: Seen,
}

impl ChannelState {
    fn apply(&mut self, change: Change, tlc: TlcId) {
        if change == Change::AddTlc {
            self.tlcs.insert(tlc);
        } else {
            self.tlcs.remove(&tlc);
        }
    }
}

enum ChannelMsg {
    /// A user command: offer a new TLC, or remove the `i`-th one the peer offered.
    Command(Change, usize, RpcReplyPort<Option<OpId>>),
    /// A message from the peer; replies with what it did.
    Deliver(OpId, Wire, RpcReplyPort<&'static str>),
    /// The peer is back: send it every unconfirmed update again.
    Reconnect(RpcReplyPort<usize>),
    /// The state and how many ops are pending.
    Query(RpcReplyPort<(ChannelState, usize)>),
}

/// The link, owned by `main`: what is in flight, what was sent since `main` last looked, and
/// which party (if any) "dies" in `perform`, after a commit and before its sends.
#[derive(Default)]
struct Link {
    up: bool,
    queue: VecDeque<(OpId, Wire)>,
    log: Vec<String>,
    hang: Option<usize>,
}
type Shared = Arc<Mutex<Link>>;

#[derive(Persistent)]
#[persistent(name = "channel")]
struct Channel(usize, Shared);

impl PersistentActor for Channel {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Op = Wire;
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
            ChannelMsg::Command(change, i, reply) => {
                let theirs: Vec<&TlcId> = st.tlcs.iter().filter(|t| t.0 != self.0).collect();
                let tlc = match change {
                    Change::AddTlc => (self.0, st.next_tlc),
                    Change::RemoveTlc if theirs.is_empty() => {
                        tx.reply(reply, None);
                        return Ok(());
                    }
                    Change::RemoveTlc => *theirs[i % theirs.len()],
                };
                st.apply(change, tlc);
                st.next_tlc += u32::from(change == Change::AddTlc);
                st.sent += 1;
                let id = tx.push(Wire::Update(st.sent, change, tlc))?; // committed with the change
                tx.reply(reply, Some(id)); // leaves after the commit; the send comes after it
            }
            ChannelMsg::Deliver(_, Wire::Update(n, ..), reply) if n > st.received + 1 => {
                tx.reply(reply, "drops it: out of order");
            }
            ChannelMsg::Deliver(id, Wire::Update(n, change, tlc), reply) => {
                // Recorded in the same commit as the change: a duplicate does nothing.
                let new = st.seen.record(&id) == Delivery::New;
                if new {
                    st.received = n;
                    st.apply(change, tlc);
                }
                tx.push(Wire::CommitmentSigned(st.received, st.tlcs.clone()))?;
                tx.reply(
                    reply,
                    ["has it, signs again", "applies it, signs"][usize::from(new)],
                );
            }
            ChannelMsg::Deliver(_, Wire::CommitmentSigned(acked, _), reply) => {
                // The peer processed every update up to `acked`: stop sending them.
                tx.confirm_where(|p| matches!(p.op(), Wire::Update(n, ..) if *n <= acked));
                tx.reply(reply, "takes it: every update it covers is confirmed");
            }
            ChannelMsg::Reconnect(reply) => {
                let resent = tx.resume(|op| matches!(op.op(), Wire::Update(..)));
                tx.reply(reply, resent);
            }
            ChannelMsg::Query(reply) => {
                let pending = tx.pending().count();
                tx.reply(reply, (st.clone(), pending));
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Wire>,
        _: &ChannelState,
    ) -> Result<Outcome, ActorProcessingErr> {
        if self.1.lock().unwrap().hang == Some(self.0) {
            std::future::pending::<()>().await; // the process dies here
        }
        let mut link = self.1.lock().unwrap();
        let lost = if link.up { "" } else { " (link down: lost)" };
        let line = format!(
            "{} sends {} [{}]{lost}",
            NAMES[self.0],
            show(op.op()),
            op.id()
        );
        link.log.push(line);
        if link.up {
            link.queue.push_back((op.id().clone(), op.op().clone()));
        }
        // Delivered is not processed: an update stays until the peer's signature covers it.
        Ok(match op.op() {
            Wire::Update(..) => Outcome::KeepUntilConfirmed,
            Wire::CommitmentSigned(..) => Outcome::Done,
        })
    }
}

fn tlcs<'a>(tlcs: impl IntoIterator<Item = &'a TlcId>) -> String {
    let names = tlcs
        .into_iter()
        .map(|t| format!("{}{}", ["a", "b"][t.0], t.1));
    names.collect::<Vec<_>>().join(" ")
}

fn show(wire: &Wire) -> String {
    match wire {
        Wire::Update(n, change, tlc) => format!("{change:?} {} (n{n})", tlcs([tlc])),
        Wire::CommitmentSigned(acked, ts) => {
            format!("CommitmentSigned to n{acked} {{{}}}", tlcs(ts))
        }
    }
}

type Error = Box<dyn std::error::Error>;
type Party = (ActorRef<ChannelMsg>, tokio::task::JoinHandle<()>, Storage);

fn path(me: usize) -> std::path::PathBuf {
    let pid = std::process::id();
    std::env::temp_dir().join(format!("channel-{}-{pid}.redb", NAMES[me]))
}

async fn start(me: usize, link: &Shared) -> Result<Party, Error> {
    let storage = Storage::new(RedbStore::open(path(me))?);
    let start = Start::new(&storage, NAMES[me], ());
    let (actor, handle) = Actor::spawn(None, Channel(me, link.clone()), start).await?;
    Ok((actor, handle, storage))
}

/// The state and pending count of `actor` once the previous message's sends ran; prints them.
async fn sync(actor: &ActorRef<ChannelMsg>, link: &Shared) -> Result<(ChannelState, usize), Error> {
    let got = call!(actor, ChannelMsg::Query)?;
    for line in std::mem::take(&mut link.lock().unwrap().log) {
        println!("      {line}");
    }
    Ok(got)
}

/// Kills party `me`, closes its store, opens it again and respawns it: it resends what is pending.
async fn crash(parties: &mut [Party], me: usize, link: &Shared) -> Result<(), Error> {
    let (actor, handle, storage) = &mut parties[me];
    actor.kill();
    handle.await?;
    storage.close().await?;
    link.lock().unwrap().hang = None;
    println!("      {} restarts:", NAMES[me]);
    parties[me] = start(me, link).await?;
    let pending = sync(&parties[me].0, link).await?.1;
    println!("      {} is back with {pending} op(s) pending", NAMES[me]);
    Ok(())
}

async fn command(party: &Party, link: &Shared, change: Change, i: usize) -> Result<(), Error> {
    match call!(party.0, |r| ChannelMsg::Command(change, i, r))? {
        Some(id) => println!("      {change:?} committed as {id}"),
        None => println!("      no TLC to remove"),
    }
    if link.lock().unwrap().hang.is_none() {
        sync(&party.0, link).await?;
    }
    Ok(())
}

/// Resends every unconfirmed update of `party` (what a `node_session_ready` hook would do).
async fn reconnect(party: &Party, link: &Shared) -> Result<(), Error> {
    link.lock().unwrap().up = true;
    call!(party.0, ChannelMsg::Reconnect)?;
    sync(&party.0, link).await.map(drop)
}

/// Delivers the `i`-th message in flight to its receiver.
async fn deliver(parties: &[Party], link: &Shared, i: usize) -> Result<(), Error> {
    let next = link.lock().unwrap().queue.remove(i);
    let (id, wire) = next.ok_or("nothing in flight")?;
    let to = usize::from(id.actor().key() == NAMES[0]);
    print!("    {} receives {}: ", NAMES[to], show(&wire));
    let did = call!(parties[to].0, |r| ChannelMsg::Deliver(id, wire, r))?;
    println!("{did}");
    sync(&parties[to].0, link).await.map(drop)
}

async fn deliver_all(parties: &[Party], link: &Shared) -> Result<(), Error> {
    while !link.lock().unwrap().queue.is_empty() {
        deliver(parties, link, 0).await?;
    }
    Ok(())
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
    let link = Shared::default();
    link.lock().unwrap().up = true;
    let mut parties = vec![start(0, &link).await?, start(1, &link).await?];

    println!("1. Alice offers TLC a0; the link delivers everything.");
    command(&parties[0], &link, Change::AddTlc, 0).await?;
    deliver_all(&parties, &link).await?;
    println!("2. Bob removes a0: RemoveTlc commits with the change; he dies before sending it.");
    link.lock().unwrap().hang = Some(1);
    command(&parties[1], &link, Change::RemoveTlc, 0).await?;
    crash(&mut parties, 1, &link).await?;
    println!("3. The link delivers; Bob keeps his RemoveTlc until Alice's CommitmentSigned.");
    deliver_all(&parties, &link).await?;

    println!("4. A random run (seed {seed}).");
    for step in 1..=24 {
        let (len, up) = {
            let l = link.lock().unwrap();
            (l.queue.len(), l.up)
        };
        let (p, i, roll) = (next(2), next(len), next(100));
        let (name, change) = (NAMES[p], [Change::AddTlc, Change::RemoveTlc][next(3) / 2]);
        print!("  {step}. ");
        match roll {
            0..30 => {
                println!("{name} is asked to {change:?}");
                command(&parties[p], &link, change, i).await?;
            }
            30..60 if len > 0 => {
                let i = if roll % 4 == 0 { i } else { 0 }; // mostly in order
                let which = ["the next message", "a later one (reordered)"][i.min(1)];
                println!("the link delivers {which}");
                deliver(&parties, &link, i).await?;
            }
            60..78 if len > 0 => {
                let mut l = link.lock().unwrap();
                let m = l.queue.remove(i).expect("in range");
                let what = ["drops", "duplicates", "delays"][roll % 3];
                println!("the link {what} {} [{}]", show(&m.1), m.0);
                if what != "drops" {
                    l.queue.push_back(m.clone());
                }
                if what == "duplicates" {
                    l.queue.insert(i, m);
                }
            }
            78..88 => {
                if next(2) == 0 {
                    println!("{name} is asked to {change:?}, dies between commit and send");
                    link.lock().unwrap().hang = Some(p);
                    command(&parties[p], &link, change, i).await?;
                } else {
                    println!("{name} crashes");
                }
                crash(&mut parties, p, &link).await?;
            }
            88..94 if up => {
                println!("the link goes down: {len} message(s) in flight lost");
                let mut l = link.lock().unwrap();
                (l.up, l.queue) = (false, VecDeque::new());
            }
            _ => {
                println!("{name} reconnects and resends its unconfirmed updates");
                reconnect(&parties[p], &link).await?;
            }
        }
    }

    println!("5. The link heals; both sides resend; everything in flight is delivered, in order.");
    for party in &parties {
        reconnect(party, &link).await?;
    }
    deliver_all(&parties, &link).await?;
    let mut end = Vec::new();
    for (me, party) in parties.into_iter().enumerate() {
        let (st, pending) = sync(&party.0, &link).await?;
        let (tlcs, sent, got) = (tlcs(&st.tlcs), st.sent, st.received);
        let name = NAMES[me];
        println!(
            "{name:5}: TLCs {{{tlcs}}}, sent n1..n{sent}, applied n1..n{got}, {pending} pending"
        );
        party.0.stop(None);
        party.1.await?;
        party.2.close().await?;
        std::fs::remove_file(path(me))?;
        end.push((st.tlcs, st.sent, st.received, pending));
    }
    let (a, b) = (&end[0], &end[1]);
    if (&a.0, a.1, a.2, a.3 + b.3) != (&b.0, b.2, b.1, 0) {
        eprintln!("alice and bob DISAGREE (seed {seed})");
        std::process::exit(1);
    }
    println!("alice and bob agree: every update applied once, nothing left pending.");
    Ok(())
}
