//! Durable timers: set in a handler's commit, fired as a message once due (never before),
//! removed in the commit of the message that handled them, and kept across stops, failures
//! and SIGKILL.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[macro_use]
mod common;

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    Control, DecodeReason, Entities, Fired, PersistentActor, RedbStore, SpawnPersistent, Storage,
    TimerError, Tx,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A timer's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reminder {
    note: String,
}

/// One handled firing: the timer's name, its payload, when it was due and when it was
/// handled (ms since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Firing {
    name: String,
    note: String,
    due: u64,
    handled: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Clock {
    fired: Vec<Firing>,
}

/// Firings (`key/name`) whose next handling fails, once.
fn fail_once() -> &'static Mutex<std::collections::HashSet<String>> {
    static F: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

enum Msg {
    After(String, u64, String, RpcReplyPort<Result<(), String>>),
    At(String, SystemTime, String, RpcReplyPort<Result<(), String>>),
    Cancel(String, RpcReplyPort<Result<(), String>>),
    Timers(RpcReplyPort<Vec<(String, SystemTime)>>),
    Fired(RpcReplyPort<Vec<Firing>>),
    Expire(String, Reminder, SystemTime),
    Persist(Control<String>),
}

#[derive(Default, ractor_persist::Persistent)]
#[persistent(name = "clock")]
struct ClockActor;

fn ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Where each key's actor tells the test that a firing was committed (its op is performed
/// only after the commit).
fn events() -> &'static Mutex<HashMap<String, mpsc::UnboundedSender<String>>> {
    static E: OnceLock<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>> = OnceLock::new();
    E.get_or_init(Default::default)
}

fn listen(key: &str) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    events().lock().unwrap().insert(key.to_owned(), tx);
    rx
}

impl PersistentActor for ClockActor {
    type Msg = Msg;
    type State = Clock;
    type Op = String;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Clock, ActorProcessingErr> {
        Ok(Clock::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        st: &mut Clock,
    ) -> Result<(), ActorProcessingErr> {
        let text = |r: Result<(), TimerError>| r.map_err(|e| e.to_string());
        match msg {
            Msg::After(name, after, note, port) => {
                let r = tx.set_timer_after(&name, Duration::from_millis(after), &Reminder { note });
                tx.reply(port, text(r));
            }
            Msg::At(name, at, note, port) => {
                let r = tx.set_timer_at(&name, at, &Reminder { note });
                tx.reply(port, text(r));
            }
            Msg::Cancel(name, port) => {
                let r = tx.cancel_timer(&name);
                tx.reply(port, text(r));
            }
            Msg::Timers(port) => tx.reply(port, tx.timers()),
            Msg::Fired(port) => tx.reply(port, st.fired.clone()),
            Msg::Expire(name, reminder, due) => {
                assert_eq!(tx.fired(), Some(name.as_str()));
                st.fired.push(Firing {
                    name: "must be rolled back".into(),
                    note: String::new(),
                    due: 0,
                    handled: 0,
                });
                st.fired.pop();
                let id = format!("{}/{name}", tx.key().key());
                if fail_once().lock().unwrap().remove(&id) {
                    st.fired.clear();
                    return Err(format!("refusing to handle {name}").into());
                }
                st.fired.push(Firing {
                    name: name.clone(),
                    note: reminder.note,
                    due: ms(due),
                    handled: ms(SystemTime::now()),
                });
                tx.push(name)?;
            }
            Msg::Persist(_) => unreachable!("the runtime takes control messages"),
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &ractor_persist::Pending<String>,
        _: &Clock,
    ) -> Result<ractor_persist::Outcome, ActorProcessingErr> {
        let key = op.id().actor().key().to_owned();
        if let Some(tx) = events().lock().unwrap().get(&key) {
            let _ = tx.send(op.op().clone());
        }
        println!("FIRED {}", op.op());
        Ok(ractor_persist::Outcome::Done)
    }

    fn control(msg: Msg) -> Result<Control<String>, Msg> {
        match msg {
            Msg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<String>) -> Option<Msg> {
        Some(Msg::Persist(c))
    }

    fn timer(fired: Fired) -> Result<Msg, DecodeReason> {
        Ok(Msg::Expire(
            fired.name().to_owned(),
            fired.decode()?,
            fired.due(),
        ))
    }
}

async fn after(actor: &ActorRef<Msg>, name: &str, ms: u64) -> Result<(), String> {
    call!(
        actor,
        Msg::After,
        name.into(),
        ms,
        format!("note of {name}")
    )
    .unwrap()
}

async fn fired(actor: &ActorRef<Msg>) -> Vec<Firing> {
    call!(actor, Msg::Fired).unwrap()
}

/// The next firing the actor of `rx` committed, failing the test after a minute.
async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a firing within a minute")
        .expect("the channel is open")
}

/// Waits until the wall clock has passed `due` (what the test is about, not a
/// synchronisation: nothing else is waited for this way).
async fn until_past(due: SystemTime) {
    while let Ok(left) = due.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(1)).await;
    }
}

fn store() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(RedbStore::open(dir.path().join("t.redb")).unwrap());
    (dir, storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_once_as_a_message_never_before_its_instant_and_is_gone_after() {
    let (_dir, storage) = store();
    let mut rx = listen("once");
    let (actor, handle) = ClockActor::spawn_persistent(&storage, "once", ())
        .await
        .unwrap();
    let due = SystemTime::now() + Duration::from_millis(150);
    let set: Result<(), String> = call!(actor, Msg::At, "t".into(), due, "hello".into()).unwrap();
    set.unwrap();
    assert_eq!(next(&mut rx).await, "t");
    let firings = fired(&actor).await;
    assert_eq!(firings.len(), 1);
    let f = &firings[0];
    assert_eq!((f.name.as_str(), f.note.as_str()), ("t", "hello"));
    assert!(
        f.due >= ms(due),
        "due {} is before the instant asked {}",
        f.due,
        ms(due)
    );
    assert!(
        f.handled >= f.due,
        "handled at {} before due {}",
        f.handled,
        f.due
    );
    assert!(call!(actor, Msg::Timers).unwrap().is_empty());
    actor.stop(None);
    handle.await.unwrap();
    // Its removal was committed: a new instance has no timer and fires nothing.
    let (actor, handle) = ClockActor::spawn_persistent(&storage, "once", ())
        .await
        .unwrap();
    assert!(call!(actor, Msg::Timers).unwrap().is_empty());
    assert_eq!(fired(&actor).await.len(), 1);
    actor.stop(None);
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_in_order_of_their_instants_and_a_replaced_one_fires_once_with_its_new_payload()
{
    let (_dir, storage) = store();
    let mut rx = listen("order");
    let (actor, _) = ClockActor::spawn_persistent(&storage, "order", ())
        .await
        .unwrap();
    after(&actor, "b", 120).await.unwrap();
    after(&actor, "a", 60).await.unwrap();
    after(&actor, "c", 400).await.unwrap();
    // Replaces "c": one timer of that name, due sooner, with the new payload.
    let set: Result<(), String> =
        call!(actor, Msg::After, "c".into(), 180, "second".into()).unwrap();
    set.unwrap();
    let names: Vec<String> = vec![
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    assert_eq!(names, ["a", "b", "c"]);
    let firings = fired(&actor).await;
    assert_eq!(firings.len(), 3);
    assert_eq!(firings[2].note, "second");
    // The first wake fires only what is due: the later ones are not taken early with it.
    for f in &firings {
        assert!(
            f.handled >= f.due,
            "{} handled at {} before due {}",
            f.name,
            f.handled,
            f.due
        );
    }
    assert!(call!(actor, Msg::Timers).unwrap().is_empty());
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_in_the_past_fires_at_once() {
    let (_dir, storage) = store();
    let mut rx = listen("past");
    let (actor, _) = ClockActor::spawn_persistent(&storage, "past", ())
        .await
        .unwrap();
    let long_ago = UNIX_EPOCH + Duration::from_secs(1);
    let set: Result<(), String> =
        call!(actor, Msg::At, "old".into(), long_ago, "x".into()).unwrap();
    set.unwrap();
    let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
    let set: Result<(), String> =
        call!(actor, Msg::At, "older".into(), before_epoch, "y".into()).unwrap();
    set.unwrap();
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    got.sort();
    assert_eq!(got, ["old", "older"]);
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_timer_input_is_a_typed_error_and_sets_nothing() {
    let (_dir, storage) = store();
    let (actor, _) = ClockActor::spawn_persistent(&storage, "bad", ())
        .await
        .unwrap();
    let overflow: Result<(), String> =
        call!(actor, Msg::After, "big".into(), u64::MAX, "x".into()).unwrap();
    let e = overflow.unwrap_err();
    assert!(
        e.contains("overflows the clock") && e.contains("big"),
        "{e}"
    );
    let unknown: Result<(), String> = call!(actor, Msg::Cancel, "nope".into()).unwrap();
    let e = unknown.unwrap_err();
    assert!(
        e.contains("no timer named `nope`") && e.contains("clock/bad"),
        "{e}"
    );
    assert!(call!(actor, Msg::Timers).unwrap().is_empty());
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_cancelled_before_a_restart_never_fires() {
    let (_dir, storage) = store();
    let mut rx = listen("cancel");
    let (actor, handle) = ClockActor::spawn_persistent(&storage, "cancel", ())
        .await
        .unwrap();
    after(&actor, "doomed", 100).await.unwrap();
    after(&actor, "sentinel", 300).await.unwrap();
    let cancelled: Result<(), String> = call!(actor, Msg::Cancel, "doomed".into()).unwrap();
    cancelled.unwrap();
    // Cancelling twice: the second names no timer.
    let again: Result<(), String> = call!(actor, Msg::Cancel, "doomed".into()).unwrap();
    assert!(again.is_err());
    actor.stop(None);
    handle.await.unwrap();
    let (actor, _) = ClockActor::spawn_persistent(&storage, "cancel", ())
        .await
        .unwrap();
    // The sentinel was due after the cancelled one: by the time it fired, the cancelled one
    // would have (timers fire in order of their instants).
    assert_eq!(next(&mut rx).await, "sentinel");
    let names: Vec<String> = fired(&actor).await.into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["sentinel"]);
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_due_while_the_actor_was_stopped_fires_at_its_start() {
    let (_dir, storage) = store();
    let mut rx = listen("asleep");
    let (actor, handle) = ClockActor::spawn_persistent(&storage, "asleep", ())
        .await
        .unwrap();
    let due = SystemTime::now() + Duration::from_millis(200);
    let set: Result<(), String> = call!(actor, Msg::At, "t".into(), due, "z".into()).unwrap();
    set.unwrap();
    actor.stop(None);
    handle.await.unwrap();
    until_past(due).await;
    let (actor, _) = ClockActor::spawn_persistent(&storage, "asleep", ())
        .await
        .unwrap();
    // Fired by the start itself, before the first message is handled.
    let firings = fired(&actor).await;
    assert_eq!(firings.len(), 1, "{firings:?}");
    assert_eq!(next(&mut rx).await, "t");
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_whose_handler_fails_is_not_removed_and_fires_again_at_the_next_start() {
    let (_dir, storage) = store();
    let mut rx = listen("again");
    let (actor, handle) = ClockActor::spawn_persistent(&storage, "again", ())
        .await
        .unwrap();
    after(&actor, "before", 1).await.unwrap();
    assert_eq!(next(&mut rx).await, "before");
    fail_once().lock().unwrap().insert("again/t".into());
    after(&actor, "t", 50).await.unwrap();
    // The handler fails: the actor stops, and the state and the timer stay as last
    // committed (the handler's clearing of the firings is rolled back).
    handle.await.unwrap();
    assert!(
        !fail_once().lock().unwrap().contains("again/t"),
        "it was handled once"
    );
    assert!(
        rx.try_recv().is_err(),
        "the failed firing committed nothing"
    );
    let (actor, _) = ClockActor::spawn_persistent(&storage, "again", ())
        .await
        .unwrap();
    // Fired again at the start, with the same name, and handled once.
    let names: Vec<String> = fired(&actor).await.into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["before", "t"]);
    assert_eq!(next(&mut rx).await, "t");
    actor.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_without_a_timer_decoder_is_refused_when_it_sets_one() {
    // `ClockActor` takes `Reminder` payloads only: a payload of another shape is refused at
    // set time, not when it fires.
    #[derive(Default, ractor_persist::Persistent)]
    #[persistent(name = "no_timers")]
    struct Plain;
    enum PlainMsg {
        Set(RpcReplyPort<String>),
        Persist(Control<()>),
    }
    impl PersistentActor for Plain {
        type Msg = PlainMsg;
        type State = ();
        type Op = ();
        type Arguments = ();
        async fn init(&self, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: PlainMsg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            if let PlainMsg::Set(port) = msg {
                let e = tx.set_timer_after("t", Duration::from_millis(1), &1u32);
                tx.reply(port, e.unwrap_err().to_string());
            }
            Ok(())
        }
        fn control(msg: PlainMsg) -> Result<Control<()>, PlainMsg> {
            match msg {
                PlainMsg::Persist(c) => Ok(c),
                other => Err(other),
            }
        }
        fn wrap_control(c: Control<()>) -> Option<PlainMsg> {
            Some(PlainMsg::Persist(c))
        }
    }
    let (_dir, storage) = store();
    let (actor, _) = Plain::spawn_persistent(&storage, "p", ()).await.unwrap();
    let e = call!(actor, PlainMsg::Set).unwrap();
    assert!(
        e.contains("would be refused") && e.contains("takes no durable timers"),
        "{e}"
    );
    actor.stop(None);
}

/// The environment variable that makes this binary a child: `PATH|KEY|DUE_MS|CANCEL`.
const CHILD: &str = "TIMERS_CHILD";

/// A child process: sets timer `t` due at DUE_MS (and timer `c`, cancelled at once if CANCEL
/// is 1), prints `SET`, then waits to be killed. Started again with DUE_MS 0, it only starts
/// the actor and prints what fires.
#[test]
fn timer_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let (path, key, due, cancel) = (f[0], f[1], f[2].parse::<u64>().unwrap(), f[3] == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let storage = Storage::new(RedbStore::open(path).unwrap());
        let (actor, _) = ClockActor::spawn_persistent(&storage, key, ())
            .await
            .unwrap();
        if due > 0 {
            let at = UNIX_EPOCH + Duration::from_millis(due);
            let r: Result<(), String> = call!(actor, Msg::At, "t".into(), at, "k".into()).unwrap();
            r.unwrap();
            let r: Result<(), String> = call!(actor, Msg::At, "c".into(), at, "k".into()).unwrap();
            r.unwrap();
            if cancel {
                let r: Result<(), String> = call!(actor, Msg::Cancel, "c".into()).unwrap();
                r.unwrap();
            }
            println!("SET");
        } else {
            let names: Vec<String> = fired(&actor).await.into_iter().map(|f| f.name).collect();
            println!("STARTED {}", names.join(","));
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    });
}

/// Runs a child until it prints a line starting with `until`; returns every line up to it.
fn child(path: &str, key: &str, due: u64, cancel: bool, until: &str) -> Vec<String> {
    let spec = format!("{path}|{key}|{due}|{}", u8::from(cancel));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "timer_child",
            "--exact",
            "--nocapture",
            "--quiet",
            "--test-threads=1",
        ])
        .env(CHILD, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let last = line.starts_with(until);
        lines.push(line);
        if last {
            break;
        }
    }
    // SIGKILL: no stop hook, no flush, nothing after the last commit.
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_set_before_a_sigkill_fires_once_at_the_start_after_its_deadline_and_a_cancelled_one_never()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    let path = path.to_str().unwrap();
    let due = SystemTime::now() + Duration::from_millis(300);
    let lines = child(path, "killed", ms(due), true, "SET");
    assert!(lines.iter().all(|l| !l.starts_with("FIRED")), "{lines:?}");
    until_past(due).await;
    // Restarted after the deadline: the timer fires once, at start, before the first message.
    let lines = child(path, "killed", 0, false, "STARTED");
    let fired: Vec<&String> = lines.iter().filter(|l| l.starts_with("FIRED")).collect();
    assert_eq!(fired, ["FIRED t"], "{lines:?}");
    assert_eq!(lines.last().unwrap(), "STARTED t");
    // Killed again and restarted: its removal was committed with the firing, so the state
    // holds one firing. (Its op may be performed again: a `Done` rides on a later commit.)
    let lines = child(path, "killed", 0, false, "STARTED");
    assert_eq!(lines.last().unwrap(), "STARTED t", "{lines:?}");
}

on_every_backend!(a_timer_of_a_passivated_actor_wakes_it_and_its_removal_is_stored);

/// On every backend: a timer set through a registry, its actor passivated, fires through the
/// registry's wake; after a reopen of the store the actor holds the one firing and no timer.
async fn a_timer_of_a_passivated_actor_wakes_it_and_its_removal_is_stored(
    backend: common::Backend,
) {
    let key = match &backend {
        common::Backend::Memory(_) => "every-memory",
        common::Backend::Redb(..) => "every-redb",
        common::Backend::Sqlite(..) => "every-sqlite",
        common::Backend::Postgres(_) => "every-postgres",
    };
    let mut rx = listen(key);
    let faults = common::Faults::default();
    let storage = backend.open(&faults);
    let clocks = Entities::<ClockActor>::builder(&storage, |_| ())
        .start()
        .await
        .unwrap();
    let set: Result<(), String> = clocks
        .call(key, |p| Msg::After("t".into(), 100, "n".into(), p), None)
        .await
        .unwrap();
    set.unwrap();
    assert!(clocks.passivate(key).await);
    assert!(clocks.next_wake(key).is_some());
    assert_eq!(next(&mut rx).await, "t");
    let firings = clocks.call(key, Msg::Fired, None).await.unwrap();
    assert_eq!(firings.len(), 1);
    clocks.shutdown().await;
    storage.close().await.unwrap();
    let storage = backend.open(&faults);
    let (actor, _) = ClockActor::spawn_persistent(&storage, key, ())
        .await
        .unwrap();
    assert!(call!(actor, Msg::Timers).unwrap().is_empty());
    assert_eq!(fired(&actor).await.len(), 1);
    actor.stop(None);
}
