//! The channel protocol: one persistent `Channel` actor per party.
//!
//! Each party keeps the channel's [`View`] (both balances and the open TLCs), a count of the
//! updates it sent (`sent`) and of the peer's updates it applied in order (`received`).
//!
//! * A user command (`AddTlc`, `RemoveTlc`) changes the view and pushes an [`Wire::Update`]
//!   numbered `sent + 1`, in the same commit. Its `perform` puts it on the link and answers
//!   `KeepUntilConfirmed`: delivered is not processed.
//! * The receiver applies update `n` only when `n == received + 1` (later ones are gaps: not
//!   recorded, they come again on the next resend) and only when [`Seen`] says the op id is
//!   new; the id is recorded in the same commit as the change. Duplicates change nothing.
//!   Either way it answers with a [`Wire::CommitmentSigned`] op (performed once, `Done`)
//!   carrying its commitment number, how many updates of the peer it applied (`acked`), how
//!   many it sent, and its view.
//! * The sender drops signatures numbered at or below the last one it took (duplicates and
//!   stale ones), and otherwise confirms with `confirm_where` every pending update numbered at
//!   or below `acked`: the signed view proves the peer processed them. When the signature
//!   covers exactly the updates both sides know, the two views must be equal.
//! * A TLC is removed only by the party it was offered to (its owner's peer), as in
//!   Lightning, so no two removals of one TLC race.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use ractor::{ActorProcessingErr, RpcReplyPort};
use ractor_persist::{
    Control, Delivery, OpId, Outcome, Pending, Persistent, PersistentActor, Seen, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The parties' names, also their actor keys.
pub const NAMES: [&str; 2] = ["alice", "bob"];
/// Each party's opening balance.
pub const OPENING: u64 = 1_000;
/// Most unconfirmed updates a party holds; further commands are refused.
pub const MAX_IN_FLIGHT: usize = 6;
/// The runtime's capacity: the updates in flight and the one signature a message may add.
pub const MAX_PENDING: usize = MAX_IN_FLIGHT + 1;
/// How many update ids the receiver's [`Seen`] remembers: small, so that old duplicates
/// arrive below its floor and read as [`Delivery::Unknown`].
pub const SEEN_WINDOW: u32 = 4;

/// A TLC: (the party that offered it, its number there).
pub type TlcId = (u8, u32);

/// The channel as one party sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub balance: [u64; 2],
    pub tlcs: BTreeMap<TlcId, u64>,
}

impl View {
    pub fn opening() -> Self {
        View {
            balance: [OPENING; 2],
            tlcs: BTreeMap::new(),
        }
    }

    /// Applies one update, or says why it cannot apply (a protocol violation).
    pub fn apply(&mut self, update: &Update) -> Result<(), String> {
        match *update {
            Update::AddTlc { tlc, amount } => {
                let owner = usize::from(tlc.0);
                let have = self.balance[owner];
                self.balance[owner] = have
                    .checked_sub(amount)
                    .ok_or_else(|| format!("AddTlc {tlc:?}: balance {have} < {amount}"))?;
                if self.tlcs.insert(tlc, amount).is_some() {
                    return Err(format!("AddTlc {tlc:?}: already open"));
                }
            }
            Update::RemoveTlc { tlc, fulfil } => {
                let amount = self
                    .tlcs
                    .remove(&tlc)
                    .ok_or_else(|| format!("RemoveTlc {tlc:?}: not open"))?;
                let to = if fulfil { 1 - tlc.0 } else { tlc.0 };
                self.balance[usize::from(to)] += amount;
            }
        }
        Ok(())
    }
}

/// A change to the channel, proposed by one party to the other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    AddTlc {
        tlc: TlcId,
        amount: u64,
    },
    /// Fulfilled: the amount goes to the party the TLC was offered to; else back.
    RemoveTlc {
        tlc: TlcId,
        fulfil: bool,
    },
}

/// A message to the peer: the actor's operation type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire {
    /// Update number `n` of the sender; kept until a signature acknowledges it.
    Update { n: u64, update: Update },
    /// The sender's commitment `number`, over its view after applying `acked` updates of
    /// the receiver and sending `sent` of its own.
    CommitmentSigned {
        number: u64,
        acked: u64,
        sent: u64,
        view: View,
    },
}

/// The durable state of one party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub me: u8,
    pub view: View,
    pub next_tlc: u32,
    pub sent: u64,
    pub received: u64,
    /// The number of the last commitment this party signed.
    pub commitment: u64,
    /// The number of the last commitment of the peer this party took.
    pub peer_commitment: u64,
    pub seen: Seen,
    /// How many times each update of the peer took effect here (must end at 1 each).
    pub applied: BTreeMap<OpId, u32>,
}

/// A message on the link: who sent it, its op id (the idempotency key) and its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub from: usize,
    pub id: OpId,
    pub wire: Wire,
}

/// The simulated link, owned by the harness. `perform` only appends to it.
#[derive(Debug, Default)]
pub struct Link {
    /// While down, whatever is sent is lost.
    pub up: bool,
    /// In flight, in the order the harness will consider them.
    pub queue: VecDeque<Packet>,
    /// Every send since the harness last looked, lost or not.
    pub sent: Vec<Packet>,
    /// Protocol violations a handler saw before it failed.
    pub violations: Vec<String>,
}

pub type SharedLink = Arc<Mutex<Link>>;

/// Makes `perform` never return after `after` more calls: the process dies between a
/// commit and its sends.
#[derive(Debug, Default)]
pub struct Hang {
    after: Mutex<Option<u32>>,
    /// Notified when a `perform` starts hanging.
    pub reached: Notify,
}

impl Hang {
    pub fn arm(&self, after: u32) {
        *self.after.lock().unwrap() = Some(after);
    }

    pub fn disarm(&self) {
        *self.after.lock().unwrap() = None;
    }

    fn now(&self) -> bool {
        let mut after = self.after.lock().unwrap();
        match *after {
            Some(0) => true,
            Some(ref mut k) => {
                *k -= 1;
                false
            }
            None => false,
        }
    }
}

/// What a handled message did, for the harness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Did {
    Added {
        id: OpId,
        tlc: TlcId,
        amount: u64,
    },
    Removed {
        id: OpId,
        tlc: TlcId,
        fulfil: bool,
    },
    Refused(&'static str),
    Applied {
        id: OpId,
        n: u64,
    },
    /// A duplicate update, dropped; it changed nothing.
    Duplicate {
        id: OpId,
        delivery: Delivery,
    },
    /// An update ahead of the next expected one, not recorded.
    Gap {
        n: u64,
        expected: u64,
    },
    Signed {
        number: u64,
        confirmed: Vec<OpId>,
        /// `Some(equal)` when the signature covered exactly the updates both sides know.
        agreed: Option<bool>,
    },
    /// A signature at or below the last one taken (a duplicate or a late one).
    StaleSignature {
        number: u64,
    },
    Resumed(usize),
}

/// The reply to a handled message: what it did and the state it committed.
#[derive(Clone, Debug)]
pub struct Answer {
    pub did: Did,
    pub state: ChannelState,
}

/// The reply to a query: the state and the pending op ids.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: ChannelState,
    pub pending: Vec<OpId>,
}

pub enum ChannelMsg {
    /// Offer a TLC of `amount` to the peer.
    AddTlc {
        amount: u64,
        reply: RpcReplyPort<Answer>,
    },
    /// Remove the `pick`-th TLC the peer offered (modulo how many are open).
    RemoveTlc {
        pick: usize,
        fulfil: bool,
        reply: RpcReplyPort<Answer>,
    },
    /// A packet from the peer, delivered by the link.
    Deliver {
        id: OpId,
        wire: Wire,
        reply: RpcReplyPort<Answer>,
    },
    /// The peer is back: send it every unconfirmed update again (`Tx::resume`).
    Reconnect {
        reply: RpcReplyPort<Answer>,
    },
    Query {
        reply: RpcReplyPort<Status>,
    },
    /// The runtime's control messages (`SpawnPersistent::resume`).
    Persist(Control<Wire>),
}

#[derive(Persistent)]
#[persistent(name = "channel")]
pub struct Channel {
    pub me: u8,
    pub link: SharedLink,
    pub hang: Arc<Hang>,
}

fn is_update(p: &Pending<Wire>) -> bool {
    matches!(p.op(), Wire::Update { .. })
}

impl Channel {
    fn violation(&self, what: String) -> ActorProcessingErr {
        let what = format!("{}: {what}", NAMES[usize::from(self.me)]);
        self.link.lock().unwrap().violations.push(what.clone());
        what.into()
    }

    /// Proposes `update` to the peer: committed with the change, sent after.
    fn propose(
        &self,
        tx: &mut Tx<'_, Self>,
        st: &mut ChannelState,
        update: Update,
    ) -> Result<Option<OpId>, ActorProcessingErr> {
        if tx.pending().filter(|p| is_update(p)).count() >= MAX_IN_FLIGHT {
            return Ok(None);
        }
        let mut view = st.view.clone();
        view.apply(&update).map_err(|e| self.violation(e))?;
        let n = st.sent + 1;
        // The protocol keeps a slot for a signature, so the runtime's limit is never hit.
        let id = tx.push(Wire::Update { n, update })?;
        st.view = view;
        st.sent = n;
        Ok(Some(id))
    }

    /// Signs a commitment over the current view; sent after the commit, once.
    fn sign(&self, tx: &mut Tx<'_, Self>, st: &mut ChannelState) -> Result<(), ActorProcessingErr> {
        st.commitment += 1;
        tx.push(Wire::CommitmentSigned {
            number: st.commitment,
            acked: st.received,
            sent: st.sent,
            view: st.view.clone(),
        })?;
        Ok(())
    }

    fn deliver(
        &self,
        tx: &mut Tx<'_, Self>,
        st: &mut ChannelState,
        id: OpId,
        wire: Wire,
    ) -> Result<Did, ActorProcessingErr> {
        match wire {
            Wire::Update { n, update } => {
                if n > st.received + 1 {
                    return Ok(Did::Gap {
                        n,
                        expected: st.received + 1,
                    });
                }
                let did = match st.seen.record(&id) {
                    Delivery::New => {
                        if n != st.received + 1 {
                            return Err(self.violation(format!(
                                "Seen took update {id} (n {n}) as new, but {} were applied",
                                st.received
                            )));
                        }
                        st.view.apply(&update).map_err(|e| self.violation(e))?;
                        st.received = n;
                        *st.applied.entry(id.clone()).or_default() += 1;
                        Did::Applied { id, n }
                    }
                    delivery => {
                        if n == st.received + 1 {
                            return Err(self.violation(format!(
                                "Seen took the next update {id} (n {n}) as {delivery:?}"
                            )));
                        }
                        Did::Duplicate { id, delivery }
                    }
                };
                // Answer duplicates too: the signature the sender waits for may be lost.
                self.sign(tx, st)?;
                Ok(did)
            }
            Wire::CommitmentSigned {
                number,
                acked,
                sent,
                view,
            } => {
                if number <= st.peer_commitment {
                    return Ok(Did::StaleSignature { number });
                }
                // A late signature may count fewer sends than were applied here since; it may
                // never acknowledge more updates than were sent.
                if acked > st.sent {
                    return Err(self.violation(format!(
                        "signature {number} acks {acked} of {} sent",
                        st.sent
                    )));
                }
                st.peer_commitment = number;
                let mut confirmed = Vec::new();
                tx.confirm_where(|p| match p.op() {
                    Wire::Update { n, .. } if *n <= acked => {
                        confirmed.push(p.id().clone());
                        true
                    }
                    _ => false,
                });
                let agreed = (acked == st.sent && sent == st.received).then(|| view == st.view);
                Ok(Did::Signed {
                    number,
                    confirmed,
                    agreed,
                })
            }
        }
    }
}

impl PersistentActor for Channel {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Op = Wire;
    type Arguments = u8;

    async fn init(&self, me: u8) -> Result<ChannelState, ActorProcessingErr> {
        Ok(ChannelState {
            me,
            view: View::opening(),
            next_tlc: 0,
            sent: 0,
            received: 0,
            commitment: 0,
            peer_commitment: 0,
            seen: Seen::new(SEEN_WINDOW, 2),
            applied: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: ChannelMsg,
        st: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        let (did, reply) = match msg {
            ChannelMsg::AddTlc { amount, reply } => {
                let tlc = (st.me, st.next_tlc);
                let update = Update::AddTlc { tlc, amount };
                let did = if amount > st.view.balance[usize::from(st.me)] {
                    Did::Refused("balance too low")
                } else if let Some(id) = self.propose(tx, st, update)? {
                    st.next_tlc += 1;
                    Did::Added { id, tlc, amount }
                } else {
                    Did::Refused("too many updates in flight")
                };
                (did, reply)
            }
            ChannelMsg::RemoveTlc {
                pick,
                fulfil,
                reply,
            } => {
                let theirs: Vec<TlcId> = st
                    .view
                    .tlcs
                    .keys()
                    .filter(|t| t.0 != st.me)
                    .copied()
                    .collect();
                let did = if theirs.is_empty() {
                    Did::Refused("no TLC offered to me")
                } else {
                    let tlc = theirs[pick % theirs.len()];
                    match self.propose(tx, st, Update::RemoveTlc { tlc, fulfil })? {
                        Some(id) => Did::Removed { id, tlc, fulfil },
                        None => Did::Refused("too many updates in flight"),
                    }
                };
                (did, reply)
            }
            ChannelMsg::Deliver { id, wire, reply } => (self.deliver(tx, st, id, wire)?, reply),
            ChannelMsg::Reconnect { reply } => (Did::Resumed(tx.resume(is_update)), reply),
            ChannelMsg::Query { reply } => {
                let pending = tx.pending().map(|p| p.id().clone()).collect();
                let state = st.clone();
                tx.reply(reply, Status { state, pending });
                return Ok(());
            }
            ChannelMsg::Persist(_) => unreachable!("the runtime takes control messages"),
        };
        tx.reply(
            reply,
            Answer {
                did,
                state: st.clone(),
            },
        );
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Wire>,
        _: &ChannelState,
    ) -> Result<Outcome, ActorProcessingErr> {
        if self.hang.now() {
            self.hang.reached.notify_one();
            std::future::pending::<()>().await;
        }
        let packet = Packet {
            from: usize::from(self.me),
            id: op.id().clone(),
            wire: op.op().clone(),
        };
        let mut link = self.link.lock().unwrap();
        link.sent.push(packet.clone());
        if link.up {
            link.queue.push_back(packet);
        }
        Ok(match op.op() {
            Wire::Update { .. } => Outcome::KeepUntilConfirmed,
            Wire::CommitmentSigned { .. } => Outcome::Done,
        })
    }

    fn control(msg: ChannelMsg) -> Result<Control<Wire>, ChannelMsg> {
        match msg {
            ChannelMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(control: Control<Wire>) -> Option<ChannelMsg> {
        Some(ChannelMsg::Persist(control))
    }
}
