//! ractor-persist in a build where ractor's `async-trait` feature is on.
//!
//! [`Tally`] is a `#[derive(Persistent)]` actor: with ractor in async-trait mode its `Actor`
//! impl must be the `#[async_trait]` form, which the facade's `async-trait` feature selects.
//! [`Echo`] is a hand-written ractor actor in the `#[ractor::async_trait]` form; it compiles
//! only because ractor's `async-trait` feature really is on here.
//!
//! ractor's `cluster` feature is on as well: then ractor implements `Message` only for types
//! it can serialize, and each message type needs `impl ractor::Message for T {}` (the README's
//! troubleshooting section). Without `cluster` that impl would conflict with ractor's blanket
//! one, which is why the README's quickstart does not carry it.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_persist::{Outcome, Pending, Persistent, PersistentActor, Tx};
use serde::{Deserialize, Serialize};

/// A durable running total that announces every new total as an operation.
#[derive(Clone, Default, Persistent)]
#[persistent(name = "tally")]
pub struct Tally {
    /// The totals `perform` announced, in order, in this incarnation.
    pub announced: Arc<Mutex<Vec<u64>>>,
}

/// The tally's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// The sum of everything added.
    pub total: u64,
    /// How many additions.
    pub count: u32,
}

/// The tally's side effect: announce a total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce(pub u64);

/// The tally's messages.
pub enum TallyMsg {
    /// Adds to the total, announces the new total, replies with it after the commit.
    Add(u64, RpcReplyPort<u64>),
    /// Replies with the state; changes nothing.
    Get(RpcReplyPort<Totals>),
}

// ractor's `cluster` feature is on in this build: message types say they are messages.
impl ractor::Message for TallyMsg {}

impl PersistentActor for Tally {
    type Msg = TallyMsg;
    type State = Totals;
    type Op = Announce;
    type Arguments = u64;

    async fn init(&self, start: u64) -> Result<Totals, ActorProcessingErr> {
        Ok(Totals {
            total: start,
            count: 0,
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: TallyMsg,
        state: &mut Totals,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TallyMsg::Add(n, reply) => {
                state.total += n;
                state.count += 1;
                tx.push(Announce(state.total))?;
                tx.reply(reply, state.total);
            }
            TallyMsg::Get(reply) => tx.reply(reply, state.clone()),
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Announce>,
        _: &Totals,
    ) -> Result<Outcome, ActorProcessingErr> {
        self.announced.lock().unwrap().push(op.op().0);
        Ok(Outcome::Done)
    }
}

/// A plain ractor actor written by hand in the `#[async_trait]` form.
pub struct Echo;

/// The echo's messages.
pub enum EchoMsg {
    /// Replies with the prefix followed by the text.
    Echo(String, RpcReplyPort<String>),
}

impl ractor::Message for EchoMsg {}

#[ractor::async_trait]
impl Actor for Echo {
    type Msg = EchoMsg;
    type State = String;
    type Arguments = String;

    async fn pre_start(
        &self,
        _: ActorRef<EchoMsg>,
        prefix: String,
    ) -> Result<String, ActorProcessingErr> {
        Ok(prefix)
    }

    async fn handle(
        &self,
        _: ActorRef<EchoMsg>,
        msg: EchoMsg,
        prefix: &mut String,
    ) -> Result<(), ActorProcessingErr> {
        let EchoMsg::Echo(text, reply) = msg;
        let _ = reply.send(format!("{prefix}{text}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ractor::{Actor, call};
    use ractor_persist::{ActorKey, MemoryStore, SpawnPersistent, Start, Storage};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn derived_actor_commits_performs_and_restarts_in_async_trait_mode() {
        let store = MemoryStore::new();
        let storage = Storage::new(store.clone());
        let first = Tally::default();
        let (tally, _) = Actor::spawn(None, first.clone(), Start::new(&storage, "main", 10))
            .await
            .expect("spawn the tally");
        assert_eq!(call!(tally, TallyMsg::Add, 2).unwrap(), 12);
        assert_eq!(call!(tally, TallyMsg::Add, 3).unwrap(), 15);
        // A message is handled only after the ops of the one before it were performed.
        let totals = call!(tally, TallyMsg::Get).unwrap();
        assert_eq!(
            totals,
            Totals {
                total: 15,
                count: 2
            }
        );
        assert_eq!(*first.announced.lock().unwrap(), vec![12, 15]);
        tally.stop_and_wait(None, None).await.unwrap();
        storage.close().await.unwrap();
        assert!(
            store
                .snapshot(&ActorKey::new(<Tally as Persistent>::NAME, "main"))
                .is_some(),
            "the state is in the store"
        );

        // A new process's view of the same store; `init` must not run again.
        let storage = Storage::new(store.clone());
        let (tally, _) = Tally::spawn_persistent(&storage, "main", 1000)
            .await
            .expect("respawn the tally");
        assert_eq!(
            call!(tally, TallyMsg::Get).unwrap(),
            Totals {
                total: 15,
                count: 2
            },
            "the state survived the restart"
        );
        assert_eq!(call!(tally, TallyMsg::Add, 5).unwrap(), 20);
        tally.stop_and_wait(None, None).await.unwrap();
        storage.close().await.unwrap();
    }

    #[tokio::test]
    async fn hand_written_async_trait_actor_works() {
        let (echo, handle) = Actor::spawn(None, Echo, "echo: ".to_string())
            .await
            .expect("spawn the echo");
        let got = call!(echo, EchoMsg::Echo, "hi".to_string()).unwrap();
        assert_eq!(got, "echo: hi");
        echo.stop(None);
        handle.await.unwrap();
    }
}
