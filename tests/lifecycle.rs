//! ractor's whole lifecycle on a persistent actor: a start hook that gets `myself`, supervision
//! events handled (and committed) like messages so a persistent parent can supervise, and a
//! stop hook. Without overrides every hook does what ractor's default does.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, call};
use ractor_persist::{
    MemoryStore, Outcome, Pending, Persistent, PersistentActor, SpawnPersistent, Start, Storage, Tx,
};
use serde::{Deserialize, Serialize};

/// A plain ractor actor, the child.
struct Child;

impl Actor for Child {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    starts: u32,
    children_stopped: u32,
    children_failed: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Note {
    /// Pushed by the start hook; kept until confirmed, so the next start replays it.
    Started(u32),
    /// Pushed when a child stopped.
    ChildStopped(u32),
}

enum ParentMsg {
    Get(RpcReplyPort<Record>),
}

/// A persistent supervisor that counts its starts and its children's ends.
#[derive(Clone, Default, Persistent)]
#[persistent(name = "parent")]
struct Parent {
    /// Every op performed, in order.
    performed: Arc<Mutex<Vec<Note>>>,
    /// The state `post_stop` saw.
    stopped_with: Arc<Mutex<Option<Record>>>,
}

impl Parent {
    fn performed(&self) -> Vec<Note> {
        self.performed.lock().unwrap().clone()
    }
}

impl PersistentActor for Parent {
    type Msg = ParentMsg;
    type State = Record;
    type Op = Note;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Record, ActorProcessingErr> {
        Ok(Record::default())
    }

    async fn post_start(
        &self,
        tx: &mut Tx<'_, Self>,
        record: &mut Record,
    ) -> Result<(), ActorProcessingErr> {
        record.starts += 1;
        tx.push(Note::Started(record.starts))?;
        // `myself` is here: join a process group, as a start hook in ractor would.
        ractor::pg::join(
            "persistent-parents".to_owned(),
            vec![tx.myself().get_cell()],
        );
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        tx: &mut Tx<'_, Self>,
        event: SupervisionEvent,
        record: &mut Record,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(..) => {
                record.children_stopped += 1;
                tx.push(Note::ChildStopped(record.children_stopped))?;
            }
            SupervisionEvent::ActorFailed(..) => record.children_failed += 1,
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<ParentMsg>,
        record: &Record,
    ) -> Result<(), ActorProcessingErr> {
        *self.stopped_with.lock().unwrap() = Some(record.clone());
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        ParentMsg::Get(reply): ParentMsg,
        record: &mut Record,
    ) -> Result<(), ActorProcessingErr> {
        tx.reply(reply, record.clone());
        Ok(())
    }

    async fn perform(&self, op: &Pending<Note>, _: &Record) -> Result<Outcome, ActorProcessingErr> {
        self.performed.lock().unwrap().push(op.op().clone());
        Ok(match op.op() {
            Note::Started(_) => Outcome::KeepUntilConfirmed,
            Note::ChildStopped(_) => Outcome::Done,
        })
    }
}

/// A persistent actor with no hooks overridden.
#[derive(Clone, Default, Persistent)]
#[persistent(name = "plain-parent")]
struct PlainParent;

impl PersistentActor for PlainParent {
    type Msg = ();
    type State = u32;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: &mut Tx<'_, Self>,
        _: (),
        _: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

async fn spawn_parent(storage: &Storage, parent: Parent) -> ActorRef<ParentMsg> {
    Actor::spawn(None, parent, Start::new(storage, "p", ()))
        .await
        .expect("spawn the parent")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_supervisor_commits_supervision_events_and_keeps_running() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let parent = Parent::default();
    let p = spawn_parent(&storage, parent.clone()).await;
    for n in 1..=2 {
        let (child, _) = Actor::spawn_linked(None, Child, (), p.get_cell())
            .await
            .unwrap();
        child.stop_and_wait(None, None).await.unwrap();
        // ractor hands a supervision event over before any later message, so when this call
        // is answered the event's cycle (commit, then perform) is done.
        let record = call!(p, ParentMsg::Get).expect("the parent is still running");
        assert_eq!(record.children_stopped, n);
        assert_eq!(parent.performed().last(), Some(&Note::ChildStopped(n)));
    }
    assert_eq!(parent.performed()[0], Note::Started(1));
    p.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    let storage = Storage::new(store);
    let again = Parent::default();
    let p = spawn_parent(&storage, again.clone()).await;
    let record = call!(p, ParentMsg::Get).unwrap();
    assert_eq!(record.children_stopped, 2, "the events were committed");
    p.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_persistent_supervisor_stops_when_a_child_stops_as_in_ractor() {
    let storage = Storage::new(MemoryStore::new());
    let (p, handle) = PlainParent::spawn_persistent(&storage, "pp", ())
        .await
        .unwrap();
    let (child, _) = Actor::spawn_linked(None, Child, (), p.get_cell())
        .await
        .unwrap();
    child.stop_and_wait(None, None).await.unwrap();
    handle.await.unwrap();
    assert_eq!(p.get_status(), ractor::ActorStatus::Stopped);
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_gets_myself_commits_like_a_message_and_runs_after_the_replay() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let first = Parent::default();
    let p = spawn_parent(&storage, first.clone()).await;
    let record = call!(p, ParentMsg::Get).unwrap();
    assert_eq!(record.starts, 1);
    let members = ractor::pg::get_members(&"persistent-parents".to_owned());
    assert!(
        members.iter().any(|m| m.get_id() == p.get_id()),
        "joined with myself"
    );
    assert_eq!(*first.performed.lock().unwrap(), [Note::Started(1)]);
    p.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();

    let storage = Storage::new(store);
    let second = Parent::default();
    let p = spawn_parent(&storage, second.clone()).await;
    assert_eq!(
        call!(p, ParentMsg::Get).unwrap().starts,
        2,
        "the hook's change was committed"
    );
    // The previous incarnation's pending op is performed before the hook's own.
    assert_eq!(
        *second.performed.lock().unwrap(),
        [Note::Started(1), Note::Started(2)]
    );
    p.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_stop_sees_the_state_as_last_committed() {
    let storage = Storage::new(MemoryStore::new());
    let parent = Parent::default();
    let p = spawn_parent(&storage, parent.clone()).await;
    let record = call!(p, ParentMsg::Get).unwrap();
    p.stop_and_wait(None, None).await.unwrap();
    assert_eq!(*parent.stopped_with.lock().unwrap(), Some(record));
    storage.close().await.unwrap();
}
