//! The payment-channel scenario. Alice's `Channel` actor offers TLCs to her peer Bob. To
//! remove one, it drops the TLC from its state and sends Bob a `RemoveTlc` in the same
//! commit, so the state and the message to the peer never disagree on disk. The message
//! stays pending until Bob signs a commitment without that TLC: it is sent again after
//! every restart and whenever Bob reconnects, always with the same op id, which Bob uses to
//! drop duplicates. The example crashes the process between the commit and the send, and
//! shows that nothing is lost. It checks what it shows and exits non-zero if that fails.
//!
//! Run with `cargo run --example channel`.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, call};
use ractor_persist::Start;
use ractor_persist::prelude::*;
use serde::{Deserialize, Serialize};

/// What Bob has received so far, with the op id of each message (its idempotency key).
type Outbox = Arc<Mutex<Vec<(OpId, PeerMessage)>>>;

/// The durable state: the TLCs still offered and the commitment number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ChannelState {
    offered: BTreeSet<u64>,
    commitment: u64,
}

/// The operations: messages to the peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum PeerMessage {
    RemoveTlc { tlc: u64 },
}

enum ChannelMsg {
    /// Remove an offered TLC; replies with the id of the `RemoveTlc` sent to the peer.
    /// An unknown TLC is an error: the state rolls back and the actor stops.
    RemoveTlcCommand { tlc: u64, reply: RpcReplyPort<OpId> },
    /// The peer signed a commitment holding `tlcs`; replies with how many ops it confirmed.
    CommitmentSigned {
        tlcs: BTreeSet<u64>,
        reply: RpcReplyPort<usize>,
    },
    /// The peer is back: send it every pending message again; replies with how many.
    PeerReconnected { reply: RpcReplyPort<usize> },
    /// The state and the ids of the pending ops.
    Query {
        reply: RpcReplyPort<(ChannelState, Vec<OpId>)>,
    },
}

#[derive(Persistent)]
#[persistent(name = "channel")]
struct Channel {
    peer: Outbox,
    /// While set, `perform` never returns: the process "dies" after the commit, before the send.
    crash_before_send: Arc<AtomicBool>,
}

impl PersistentActor for Channel {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Op = PeerMessage;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<ChannelState, ActorProcessingErr> {
        Ok(ChannelState {
            offered: BTreeSet::from([1, 2, 3]),
            commitment: 0,
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: ChannelMsg,
        state: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChannelMsg::RemoveTlcCommand { tlc, reply } => {
                if !state.offered.remove(&tlc) {
                    return Err(format!("TLC {tlc} is not offered").into());
                }
                let id = tx.push(PeerMessage::RemoveTlc { tlc })?; // same commit as the state
                tx.reply(reply, id); // leaves after the commit, before the send
            }
            ChannelMsg::CommitmentSigned { tlcs, reply } => {
                let confirmed = tx.confirm_where(|p| match p.op() {
                    PeerMessage::RemoveTlc { tlc } => !tlcs.contains(tlc),
                });
                state.commitment += 1;
                tx.reply(reply, confirmed);
            }
            ChannelMsg::PeerReconnected { reply } => {
                let resent = tx.resume(|p| matches!(p.op(), PeerMessage::RemoveTlc { .. }));
                tx.reply(reply, resent);
            }
            ChannelMsg::Query { reply } => {
                let pending = tx.pending().map(|p| p.id().clone()).collect();
                tx.reply(reply, (state.clone(), pending));
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<PeerMessage>,
        _: &ChannelState,
    ) -> Result<Outcome, ActorProcessingErr> {
        if self.crash_before_send.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.peer
            .lock()
            .unwrap()
            .push((op.id().clone(), op.op().clone()));
        // Delivered is not processed: keep it until the peer signs a commitment without it.
        Ok(Outcome::KeepUntilConfirmed)
    }
}

/// A running channel actor, its ractor join handle and its crash flag.
type Started = (
    ActorRef<ChannelMsg>,
    tokio::task::JoinHandle<()>,
    Arc<AtomicBool>,
);

/// A fresh `Channel` on `storage`, with its crash flag off, talking to `peer`.
async fn spawn(storage: &Storage, peer: &Outbox) -> Result<Started, ractor::SpawnErr> {
    let crash = Arc::new(AtomicBool::new(false));
    let channel = Channel {
        peer: peer.clone(),
        crash_before_send: crash.clone(),
    };
    let (actor, handle) = Actor::spawn(None, channel, Start::new(storage, "alice-bob", ())).await?;
    Ok((actor, handle, crash))
}

/// Takes what the peer received since the last look, printing each message.
fn received(peer: &Outbox) -> Vec<(OpId, PeerMessage)> {
    let got = std::mem::take(&mut *peer.lock().unwrap());
    for (id, msg) in &got {
        println!("   peer <- {msg:?}  id {id}");
    }
    if got.is_empty() {
        println!("   peer <- nothing");
    }
    got
}

/// The pending op ids. The query is handled only after the previous message's ops ran.
async fn pending(actor: &ActorRef<ChannelMsg>) -> Result<Vec<OpId>, Box<dyn std::error::Error>> {
    let (state, pending) = call!(actor, |reply| ChannelMsg::Query { reply })?;
    let ids: Vec<String> = pending.iter().map(ToString::to_string).collect();
    println!("   state {state:?}, pending {ids:?}");
    Ok(pending)
}

fn remove_tlc(id: &OpId, tlc: u64) -> (OpId, PeerMessage) {
    (id.clone(), PeerMessage::RemoveTlc { tlc })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("channel-example-{}.redb", std::process::id()));
    let peer = Outbox::default();

    println!(
        "1. Open {} and start the channel with TLCs {{1, 2, 3}}",
        path.display()
    );
    let storage = Storage::new(RedbStore::open(&path)?);
    let (alice, handle, crash) = spawn(&storage, &peer).await?;
    pending(&alice).await?;

    println!("2. RemoveTlcCommand(2)");
    let id2 = call!(alice, |reply| ChannelMsg::RemoveTlcCommand {
        tlc: 2,
        reply
    })?;
    println!("   reply: committed as {id2}");
    assert_eq!(pending(&alice).await?, vec![id2.clone()]);
    assert_eq!(received(&peer), [remove_tlc(&id2, 2)]);
    assert_eq!(id2.to_string(), "channel/alice-bob#0");

    println!("3. RemoveTlcCommand(3); the process dies after the commit, before the send");
    crash.store(true, Ordering::SeqCst);
    let id3 = call!(alice, |reply| ChannelMsg::RemoveTlcCommand {
        tlc: 3,
        reply
    })?;
    println!("   reply: committed as {id3}");
    alice.kill(); // the crash: the send never happens
    handle.await?;
    assert!(received(&peer).is_empty());
    storage.close().await?;
    println!("   restart: reopen the store, spawn a fresh actor");
    let storage = Storage::new(RedbStore::open(&path)?);
    let (alice, handle, _) = spawn(&storage, &peer).await?;
    assert_eq!(pending(&alice).await?, [id2.clone(), id3.clone()]);
    // #0 again (a duplicate Bob drops by its id), then #1 for the first time.
    assert_eq!(received(&peer), [remove_tlc(&id2, 2), remove_tlc(&id3, 3)]);

    println!("4. PeerReconnected");
    let resent = call!(alice, |reply| ChannelMsg::PeerReconnected { reply })?;
    println!("   reply: {resent} to resend");
    pending(&alice).await?;
    assert_eq!(received(&peer), [remove_tlc(&id2, 2), remove_tlc(&id3, 3)]);

    println!("5. CommitmentSigned {{1, 3}}: TLC 2 is gone from the peer's commitment");
    let signed = BTreeSet::from([1, 3]);
    let confirmed = call!(alice, |reply| ChannelMsg::CommitmentSigned {
        tlcs: signed,
        reply
    })?;
    println!("   reply: {confirmed} confirmed");
    assert_eq!(confirmed, 1);
    assert_eq!(pending(&alice).await?, vec![id3.clone()]);
    println!("   CommitmentSigned {{1}}: TLC 3 is gone too");
    let signed = BTreeSet::from([1]);
    let confirmed = call!(alice, |reply| ChannelMsg::CommitmentSigned {
        tlcs: signed,
        reply
    })?;
    println!("   reply: {confirmed} confirmed");
    assert_eq!(confirmed, 1);
    assert!(pending(&alice).await?.is_empty());
    assert!(received(&peer).is_empty());

    println!("   restart: nothing is pending, so nothing is sent");
    alice.stop(None);
    handle.await?;
    storage.close().await?;
    let storage = Storage::new(RedbStore::open(&path)?);
    let (alice, handle, _) = spawn(&storage, &peer).await?;
    let (state, pending) = call!(alice, |reply| ChannelMsg::Query { reply })?;
    println!("   state {state:?}, pending {pending:?}");
    assert!(pending.is_empty());
    assert_eq!(state.offered, BTreeSet::from([1]));
    assert_eq!(state.commitment, 2);
    assert!(received(&peer).is_empty());

    alice.stop(None);
    handle.await?;
    storage.close().await?;
    std::fs::remove_file(&path)?;
    Ok(())
}
