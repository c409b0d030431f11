//! Persistent actors on several [ractor_cluster] nodes: how a letter finds the node that runs
//! its destination, and how the messages a cut link lost are sent again when the link is back.
//!
//! Between persistent actors, [`Tx::send`](crate::Tx::send) stores the message in the
//! sender's outbox with the sender's commit and posts it after; the receiver applies it once
//! and acknowledges it after its own commit; until then it stays in the outbox and is posted
//! again. Exactly once in effect is the runtime's work, whatever the link does. This module
//! only carries letters between nodes, so that they arrive soon:
//!
//! - **Finding an actor.** Remote actors are not in ractor's name registry, but process groups
//!   are shared between connected nodes. Each node runs one *postman*, an actor that takes
//!   letters from other nodes ([`Parcel`]s) and hands them to its storage's
//!   [`Postbox`]. While a persistent actor runs on a node, that node's postman
//!   is a member of the actor's group ([`group`], in the scope [`SCOPE`]); [`locate`] finds it.
//!   The [`ClusterCourier`] carries a letter to the destination's own node: to the local
//!   postbox when it runs here, else to the postman of the node that runs it.
//! - **Resend on reconnect.** A cut link loses the letters on it, and the remote postmen leave
//!   their groups. The courier remembers which senders had messages for actors on each node,
//!   by the node's *name* (`name@host`, as its `NodeServer` announces it; it stays the same
//!   across reconnections and restarts, unlike the node id of one connection). When that
//!   node's session is ready again (`NodeEventSubscription::node_session_ready`, after the
//!   peer's group memberships arrived), it wakes those senders
//!   ([`Postbox::wake`](crate::Postbox::wake)): they post their unacknowledged messages again
//!   at once, instead of on their next redelivery timer.
//!
//! # Wiring
//!
//! One courier, one storage and one `NodeServer` per node: build the courier, give it to the
//! storage, start the node server, then [`ClusterCourier::start`] the postman. Spawn the
//! persistent actors as usual; find the other nodes with `ractor_cluster::client_connect`.
//!
//! ```no_run
//! use ractor::Actor;
//! use ractor_persist::cluster::{ClusterCourier, ractor_cluster};
//! use ractor_persist::{RedbStore, Storage, StorageConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let courier = ClusterCourier::new();
//! let config = StorageConfig::default().with_courier(courier.clone());
//! let storage = Storage::with_config(RedbStore::open("node-a.redb")?, config);
//!
//! let server = ractor_cluster::NodeServer::new(
//!     4697,
//!     "cookie".into(),
//!     "a".into(),
//!     "127.0.0.1".into(),
//!     None,
//!     None,
//! );
//! let (server, _) = Actor::spawn(None, server, ()).await?;
//! let _postman = courier.start(&storage, &server).await?;
//! ractor_cluster::client_connect(&server, "127.0.0.1:4698").await?;
//!
//! // Spawn persistent actors on `storage` as usual: what they send with `tx.send` to an
//! // actor that runs on the other node goes there, and is sent again when the link is back.
//! # Ok(()) }
//! ```
//!
//! # What to know
//!
//! - `ractor_cluster` turns on ractor's `cluster` feature, under which every actor message
//!   type needs its own impl: `impl ractor::Message for MyMsg {}` (local only), or a
//!   serializable one. This holds for the whole build, not only for this module.
//! - Keys are found by their group: run each key on one node at a time. (With a shared
//!   store a second instance is fenced, but until it stops letters may reach either; the one
//!   whose commit is refused acknowledges nothing, so its letters come again.)
//! - What wakes a sender: its destination's node coming back (by name), any node coming back
//!   while the destination was never found, or the destination starting on this node. A
//!   destination that first starts on another node while the link is up is reached on the
//!   sender's redelivery timer ([`Start::redelivery`](crate::Start::redelivery)), which
//!   stays the last resort for everything.
//! - The courier remembers one entry per (sender, destination) pair that sent to a remote
//!   node since that node's session was last ready, and the node of each remote destination.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use persist_core::{ActorKey, Courier, Letter, Postbox, Storage};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{BytesConvertable, NodeEventSubscription, NodeId, NodeServerMessage};
use serde::{Deserialize, Serialize};

/// The `ractor_cluster` this module is built with.
pub use ractor_cluster;

/// The process-group scope of the postmen's groups.
pub const SCOPE: &str = "ractor-persist";

/// The process group whose member is the postman of the node that runs actor `key`:
/// unambiguous (the namespace's length, then the key as displayed), within [`SCOPE`].
pub fn group(key: &ActorKey) -> String {
    format!("{}:{key}", key.namespace().len())
}

/// The postman of the node that runs actor `key` (this node's own, if it runs here), as
/// found in the process groups; `None` when no connected node runs it. A remote postman's
/// `get_id().node()` is the node id of its current connection.
pub fn locate(key: &ActorKey) -> Option<ActorCell> {
    ractor::pg::get_scoped_members(&SCOPE.to_owned(), &group(key))
        .into_iter()
        .max_by_key(|cell| cell.get_id().is_local())
}

/// A letter on its way to another node's postman: its bytes, in a format of this module
/// (a version byte, then postcard). The postman's message type.
#[derive(Debug)]
pub struct Parcel(Vec<u8>);

impl BytesConvertable for Parcel {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Parcel(bytes)
    }
}

/// The format version of a [`Parcel`].
const FORMAT: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Wire {
    from: ActorKey,
    to: ActorKey,
    channel: u64,
    seq: u64,
    body: WireBody,
}

#[derive(Serialize, Deserialize)]
enum WireBody {
    Message {
        id: u64,
        fingerprint: u64,
        payload: Vec<u8>,
    },
    Ack,
    Missing,
}

impl Parcel {
    /// Packs `letter`.
    pub fn pack(letter: &Letter) -> Self {
        let body = match (letter.message_id(), letter.fingerprint(), letter.payload()) {
            (Some(id), Some(fingerprint), Some(payload)) => WireBody::Message {
                id: id.seq(),
                fingerprint,
                payload: payload.to_vec(),
            },
            _ if letter.is_missing() => WireBody::Missing,
            _ => WireBody::Ack,
        };
        let wire = Wire {
            from: letter.from().clone(),
            to: letter.to().clone(),
            channel: letter.channel(),
            seq: letter.seq(),
            body,
        };
        let mut bytes = vec![FORMAT];
        // Keys, numbers and bytes: postcard cannot fail on them.
        bytes.extend(postcard::to_stdvec(&wire).expect("a letter encodes"));
        Parcel(bytes)
    }

    /// The letter packed, or `None` for bytes of another format or version.
    pub fn unpack(&self) -> Option<Letter> {
        let (&FORMAT, rest) = self.0.split_first()? else {
            return None;
        };
        let w: Wire = postcard::from_bytes(rest).ok()?;
        Some(match w.body {
            WireBody::Message {
                id,
                fingerprint,
                payload,
            } => Letter::message(w.from, w.to, w.channel, w.seq, id, fingerprint, payload),
            WireBody::Ack => Letter::ack(w.from, w.to, w.channel, w.seq),
            WireBody::Missing => Letter::missing(w.from, w.to, w.channel, w.seq),
        })
    }
}

/// A (sender, destination) pair with messages that may need posting again.
type Pair = (ActorKey, ActorKey);

/// The [`Courier`] between nodes: carries each letter to the node that runs its destination
/// (see the [module](self) documentation). Cheap to clone; give a clone to the storage
/// ([`StorageConfig::with_courier`](crate::StorageConfig::with_courier)) and start the
/// postman with [`ClusterCourier::start`].
#[derive(Clone, Default)]
pub struct ClusterCourier {
    shared: Arc<Mutex<Tracking>>,
}

impl std::fmt::Debug for ClusterCourier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCourier").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Tracking {
    /// This node's postman, while it runs.
    postman: Option<ActorCell>,
    /// The keys running on this node's postbox: their groups, joined while a postman runs.
    local: HashSet<ActorKey>,
    /// Peer node names by the node id of their current connection.
    names: HashMap<NodeId, String>,
    /// The node (by name) each remote destination was last found on.
    homes: HashMap<ActorKey, String>,
    /// Senders with messages for actors on a node (by name): woken when its session is ready.
    pending: HashMap<String, BTreeSet<Pair>>,
    /// Senders with messages for actors found on no node, or on a node not yet named:
    /// woken when any session is ready.
    unplaced: BTreeSet<Pair>,
}

impl ClusterCourier {
    /// A courier with no postman yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn tracking(&self) -> MutexGuard<'_, Tracking> {
        // Every change is one insert or remove: a panic cannot leave it half-changed.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts this node's postman for `storage` (whose courier must be this one): it joins
    /// the group of every actor running on `storage`, takes the letters other nodes carry
    /// here, and wakes the senders with messages for a node when `node_server` says that
    /// node's session is ready. Stop the returned actor to leave the cluster.
    pub async fn start(
        &self,
        storage: &Storage,
        node_server: &ActorRef<NodeServerMessage>,
    ) -> Result<ActorRef<Parcel>, SpawnErr> {
        let postman = Postman {
            courier: self.clone(),
            postbox: storage.postbox().clone(),
            node_server: node_server.clone(),
        };
        let (postman, _) = Actor::spawn(None, postman, ()).await?;
        let subscription = Reconnect {
            courier: self.clone(),
            postbox: storage.postbox().clone(),
        };
        let subscribed = node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: subscription_id(&postman),
            subscription: Box::new(subscription),
        });
        if let Err(e) = subscribed {
            postman.stop(None);
            return Err(SpawnErr::StartupFailed(e.to_string().into()));
        }
        Ok(postman)
    }

    /// Notes that `sender` has messages for `to`, which runs on `node` (`None`: unknown).
    fn note(&self, sender: &ActorKey, to: &ActorKey, node: Option<NodeId>) {
        let mut t = self.tracking();
        let name = match node {
            Some(id) => t.names.get(&id).cloned(),
            None => t.homes.get(to).cloned(),
        };
        let pair = (sender.clone(), to.clone());
        match name {
            Some(name) => {
                if node.is_some() {
                    t.homes.insert(to.clone(), name.clone());
                }
                t.pending.entry(name).or_default().insert(pair);
            }
            None => {
                t.unplaced.insert(pair);
            }
        }
    }
}

fn subscription_id(postman: &ActorRef<Parcel>) -> String {
    format!("ractor-persist/postman/{}", postman.get_id())
}

impl Courier for ClusterCourier {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        if postbox.is_running(letter.to()) && postbox.deliver(letter.clone()) {
            return;
        }
        let ours = self.tracking().postman.as_ref().map(ActorCell::get_id);
        let target = ractor::pg::get_scoped_members(&SCOPE.to_owned(), &group(letter.to()))
            .into_iter()
            .filter(|cell| Some(cell.get_id()) != ours)
            .max_by_key(|cell| cell.get_id().is_local());
        match target {
            Some(postman) => {
                let id = postman.get_id();
                if !letter.is_ack() && !id.is_local() {
                    self.note(letter.from(), letter.to(), Some(id.node()));
                }
                // A postman that stopped meanwhile loses the letter, as a cut link does.
                let _ = ActorRef::<Parcel>::from(postman).cast(Parcel::pack(&letter));
            }
            None => {
                if !letter.is_ack() {
                    self.note(letter.from(), letter.to(), None);
                }
                // Nowhere: the postbox remembers the sender, in case `to` starts here.
                postbox.deliver(letter);
            }
        }
    }

    fn registered(&self, key: &ActorKey) {
        let mut t = self.tracking();
        t.local.insert(key.clone());
        if let Some(postman) = &t.postman {
            ractor::pg::join_scoped(SCOPE.to_owned(), group(key), vec![postman.clone()]);
        }
    }

    fn unregistered(&self, key: &ActorKey) {
        let mut t = self.tracking();
        t.local.remove(key);
        if let Some(postman) = &t.postman {
            ractor::pg::leave_scoped(SCOPE.to_owned(), group(key), vec![postman.clone()]);
        }
    }
}

/// One node's postman: hands the letters other nodes carry here to the local postbox.
struct Postman {
    courier: ClusterCourier,
    postbox: Postbox,
    node_server: ActorRef<NodeServerMessage>,
}

#[cfg_attr(feature = "async-trait", persist_core::__private::async_trait)]
impl Actor for Postman {
    type Msg = Parcel;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Parcel>, _: ()) -> Result<(), ActorProcessingErr> {
        let mut t = self.courier.tracking();
        if t.postman.is_some() {
            return Err("this courier's postman is already running".into());
        }
        t.postman = Some(myself.get_cell());
        for key in &t.local {
            ractor::pg::join_scoped(SCOPE.to_owned(), group(key), vec![myself.get_cell()]);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Parcel>,
        parcel: Parcel,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        // Unreadable, or for an actor that no longer runs here: dropped, as a lost letter;
        // the sender's outbox still has the message.
        if let Some(letter) = parcel.unpack()
            && self.postbox.is_running(letter.to())
        {
            self.postbox.deliver(letter);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Parcel>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        self.courier.tracking().postman = None;
        // Its groups it leaves as it stops (ractor does that for every actor).
        let _ = self
            .node_server
            .cast(NodeServerMessage::UnsubscribeToEvents(subscription_id(
                &myself,
            )));
        Ok(())
    }
}

/// Wakes the senders with messages for a node when its session is ready again.
struct Reconnect {
    courier: ClusterCourier,
    postbox: Postbox,
}

fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
    ses.peer_name.as_ref().map(|n| n.name.clone())
}

impl NodeEventSubscription for Reconnect {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if let Some(name) = peer_name(&ses) {
            self.courier.tracking().names.insert(ses.node_id, name);
        }
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.courier.tracking().names.remove(&ses.node_id);
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let Some(name) = peer_name(&ses) else {
            return;
        };
        let woken: BTreeSet<Pair> = {
            let mut t = self.courier.tracking();
            t.names.insert(ses.node_id, name.clone());
            let mut woken = t.pending.remove(&name).unwrap_or_default();
            woken.append(&mut t.unplaced);
            woken
        };
        // Each posts its messages again; carrying them notes the pairs again.
        for (sender, to) in &woken {
            self.postbox.wake(sender, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parcel_carries_every_kind_of_letter_unchanged() {
        let (a, b) = (ActorKey::new("account", "a"), ActorKey::new("account", "b"));
        for letter in [
            Letter::message(a.clone(), b.clone(), 7, 3, 42, 99, vec![1, 2, 3]),
            Letter::ack(b.clone(), a.clone(), 7, 3),
            Letter::missing(b.clone(), a.clone(), 7, 2),
        ] {
            let bytes = Parcel::pack(&letter).into_bytes();
            assert_eq!(Parcel::from_bytes(bytes).unpack(), Some(letter));
        }
        assert_eq!(Parcel(vec![FORMAT + 1, 0]).unpack(), None);
        assert_eq!(Parcel(vec![]).unpack(), None);
    }

    #[test]
    fn groups_do_not_collide_across_namespaces() {
        let one = ActorKey::new("a/b", "c");
        let two = ActorKey::new("a", "b/c");
        assert_ne!(group(&one), group(&two));
    }
}
