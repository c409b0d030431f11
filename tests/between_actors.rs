//! Messages between persistent actors (`Tx::send`): applied once in effect, acknowledged,
//! removed from the outbox, posted again until then (also to a destination that starts
//! late), refused when they make no sense; idempotent requests; settlements.

mod bank;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bank::{Account, AccountMsg, Balance, Credit, account};
use common::Faults;
use ractor::{ActorRef, call, call_t};
use ractor_persist::{
    ActorKey, Courier, Letter, MemoryStore, Postbox, Redelivery, Refusal, Settled, Space, Start,
    Storage, StorageConfig, Store,
};

async fn spawn(storage: &Storage, key: &str, opening: u64) -> ActorRef<AccountMsg> {
    let start = Start::<Account>::new(storage, key, opening).redelivery(Redelivery::new(
        Duration::from_millis(5),
        Duration::from_millis(40),
    ));
    let (actor, _) = ractor::Actor::spawn(None, Account, start).await.unwrap();
    actor
}

async fn balance(actor: &ActorRef<AccountMsg>) -> Balance {
    call!(actor, AccountMsg::Get).unwrap()
}

async fn transfer(
    from: &ActorRef<AccountMsg>,
    transfer: u64,
    to: &str,
    amount: u64,
) -> Result<ractor_persist::OpId, String> {
    call!(from, |reply| AccountMsg::Transfer {
        transfer,
        to: to.to_owned(),
        amount,
        reply,
    })
    .unwrap()
}

/// How the message `id` of `actor` ends. A deadline turns "never" into a failure instead
/// of a hang; it is not a timing assertion.
async fn settle(actor: &ActorRef<AccountMsg>, id: &ractor_persist::OpId) -> Settled {
    let settlement = call!(actor, AccountMsg::Settle, id.clone()).unwrap();
    within(settlement.wait()).await
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("it never happened")
}

fn rows(store: &MemoryStore, key: &str, space: Space) -> usize {
    store
        .read(&account(key), Some(space), 0..=u64::MAX)
        .unwrap()
        .len()
}

/// Stops an actor and waits until it is gone.
async fn stop(actor: ActorRef<AccountMsg>) {
    actor.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn a_transfer_is_applied_once_acknowledged_and_leaves_the_outbox() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, "a", 100).await;
    let b = spawn(&storage, "b", 0).await;
    let id = transfer(&a, 1, "b", 30).await.unwrap();
    assert_eq!(settle(&a, &id).await, Settled::Delivered);
    assert_eq!(balance(&a).await.balance, 70);
    let got = balance(&b).await;
    assert_eq!((got.balance, got.credited.clone()), (30, vec![(1, 30)]));
    // The outbox removal rode on a later commit: any commit writes it.
    transfer(&b, 2, "a", 1).await.unwrap();
    stop(a).await;
    stop(b).await;
    storage.close().await.unwrap();
    assert_eq!(rows(&store, "a", Space::OUTBOX), 0, "acknowledged, removed");
    assert_eq!(
        rows(&store, "b", Space::INBOX),
        1,
        "one inbox row for one sender"
    );
    assert_eq!(rows(&store, "a", Space::CHANNELS), 1);
}

#[tokio::test]
async fn a_destination_that_starts_after_the_senders_restart_gets_its_message() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    // No timer redelivers within the test: the destination's start must bring the message.
    let slow = Redelivery::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let spawn = |key: &'static str, opening: u64| {
        let start = Start::<Account>::new(&storage, key, opening).redelivery(slow);
        async move { ractor::Actor::spawn(None, Account, start).await.unwrap().0 }
    };
    let a = spawn("a", 100).await;
    let id = transfer(&a, 7, "late", 25).await.unwrap();
    stop(a).await;
    assert_eq!(
        rows(&store, "a", Space::OUTBOX),
        1,
        "kept while unacknowledged"
    );
    // The sender comes back; the destination is still not there.
    let a = spawn("a", 100).await;
    let settlement = call!(a, AccountMsg::Settle, id.clone()).unwrap();
    // Now the destination starts, and nobody calls resume.
    let late = spawn("late", 0).await;
    assert_eq!(within(settlement.wait()).await, Settled::Delivered);
    assert_eq!(balance(&late).await.credited, vec![(7, 25)]);
    assert_eq!(balance(&a).await.balance, 75);
}

/// Carries every letter twice, and reverses each pair of messages it holds.
#[derive(Clone, Default)]
struct Twice {
    held: Arc<Mutex<Option<Letter>>>,
}

impl Courier for Twice {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        let earlier = self.held.lock().unwrap().take();
        match earlier {
            None if !letter.is_ack() => *self.held.lock().unwrap() = Some(letter),
            None => {
                postbox.deliver(letter.clone());
                postbox.deliver(letter);
            }
            Some(earlier) => {
                postbox.deliver(letter.clone());
                postbox.deliver(earlier.clone());
                postbox.deliver(letter);
                postbox.deliver(earlier);
            }
        }
    }
}

#[tokio::test]
async fn duplicated_and_reordered_letters_are_applied_once_each() {
    let store = MemoryStore::new();
    let config = StorageConfig::default().with_courier(Twice::default());
    let storage = Storage::with_config(store.clone(), config);
    let a = spawn(&storage, "a", 1_000).await;
    let b = spawn(&storage, "b", 0).await;
    let mut ids = Vec::new();
    for t in 1..=20 {
        ids.push(transfer(&a, t, "b", t).await.unwrap());
    }
    for id in &ids {
        assert_eq!(settle(&a, id).await, Settled::Delivered);
    }
    let got = balance(&b).await;
    let want: Vec<(u64, u64)> = (1..=20).map(|t| (t, t)).collect();
    assert_eq!(got.credited, want, "each once, in order");
    assert_eq!(got.balance, 210);
    assert_eq!(balance(&a).await.balance, 1_000 - 210);
    // A letter that overtook its predecessor was refused: a gap, or, when it overtook the
    // channel's first letter, a sender the receiver does not know yet. Which of the two the
    // run shows depends on how acknowledgements and resends interleave with the courier's
    // pairs (only a gap was accepted before, and 1 run in 20 or so saw only the second).
    let refusals = storage.postbox().refusals();
    assert!(
        refusals.iter().any(|r| matches!(
            r,
            Refusal::Gap { .. } | Refusal::UnknownSender { seq: 2.., .. }
        )),
        "the reordering was seen and refused: {refusals:?}"
    );
}

fn credit_letter(from: &str, to: &str, channel: u64, seq: u64) -> Letter {
    let payload = postcard::to_stdvec(&Credit {
        transfer: 999,
        amount: 1_000_000,
    })
    .unwrap();
    let fingerprint = ractor_persist::shape_fingerprint::<Credit>().unwrap();
    Letter::message(
        account(from),
        account(to),
        channel,
        seq,
        1,
        fingerprint,
        payload,
    )
}

#[tokio::test]
async fn letters_that_make_no_sense_are_refused_and_change_nothing() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let a = spawn(&storage, "a", 100).await;
    let b = spawn(&storage, "b", 0).await;
    let id = transfer(&a, 1, "b", 10).await.unwrap();
    assert_eq!(settle(&a, &id).await, Settled::Delivered);
    let before_a = balance(&a).await;
    let before_b = balance(&b).await;
    let postbox = storage.postbox().clone();
    let channel = postbox.refusals().len();
    assert_eq!(channel, 0, "nothing refused yet");

    // A first message from a sender b never heard from, not numbered 1.
    assert!(postbox.deliver(credit_letter("stranger", "b", 5, 3)));
    // A sequence from the future on a's channel (b applied 1; 5 skips ahead). The channel
    // id is the one a uses: read it from b's inbox row.
    let inbox = store
        .read(&account("b"), Some(Space::INBOX), 0..=u64::MAX)
        .unwrap();
    assert_eq!(inbox.len(), 1);
    let a_channel = {
        // The inbox row names the channel; a's channel row has it as its id.
        let channels = store
            .read(&account("a"), Some(Space::CHANNELS), 0..=u64::MAX)
            .unwrap();
        channels[0].id
    };
    assert!(postbox.deliver(credit_letter("a", "b", a_channel, 5)));
    // An old channel of a (below the one b follows).
    assert!(postbox.deliver(credit_letter("a", "b", a_channel - 1, 1)));
    // An acknowledgement for nothing: b never sent on this channel.
    assert!(postbox.deliver(Letter::ack(account("a"), account("b"), 42, 1)));
    // An acknowledgement of a message a never sent.
    assert!(postbox.deliver(Letter::ack(account("b"), account("a"), a_channel, 9)));
    // A duplicate of the applied message: dropped (and acknowledged again), not refused.
    assert!(postbox.deliver(credit_letter("a", "b", a_channel, 1)));

    // Wait for the actors to have handled them: a call is handled after them.
    let after_b = balance(&b).await;
    let after_a = balance(&a).await;
    assert_eq!(after_b, before_b, "b's state is unchanged");
    assert_eq!(after_a, before_a, "a's state is unchanged");
    let refusals = postbox.refusals();
    let kinds: Vec<&str> = refusals
        .iter()
        .map(|r| match r {
            Refusal::UnknownSender { .. } => "unknown sender",
            Refusal::Gap { .. } => "gap",
            Refusal::StaleChannel { .. } => "stale channel",
            Refusal::AckForNothing { .. } => "ack for nothing",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "unknown sender",
            "gap",
            "stale channel",
            "ack for nothing",
            "ack for nothing"
        ]
    );
    // Each refusal names who and what.
    let text = refusals[0].to_string();
    assert!(
        text.contains("account/stranger") && text.contains("account/b"),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_key_reused_with_another_payload_is_refused() {
    let storage = Storage::new(MemoryStore::new());
    let a = spawn(&storage, "a", 0).await;
    let deposit = |request: &str, amount: u64| {
        let a = a.clone();
        let request = request.to_owned();
        async move {
            call!(a, |reply| AccountMsg::Deposit {
                request,
                amount,
                reply
            })
            .unwrap()
        }
    };
    assert_eq!(deposit("d1", 10).await, Ok(10));
    assert_eq!(
        deposit("d1", 10).await,
        Ok(10),
        "a repeat gets the first reply"
    );
    let refused = deposit("d1", 11).await.unwrap_err();
    assert!(refused.contains("d1"), "{refused}");
    assert_eq!(balance(&a).await.balance, 10);
    assert!(matches!(
        storage.postbox().refusals().last(),
        Some(Refusal::RequestKeyReused { request, .. }) if request == "d1"
    ));
}

#[tokio::test]
async fn a_deposit_repeated_after_a_call_timeout_is_applied_once_with_the_first_reply() {
    let faults = Faults::default();
    let inner = MemoryStore::new();
    let storage = Storage::new(faults.wrap(inner.clone()));
    let a = spawn(&storage, "a", 5).await;
    // Hold the deposit's commit in the store until the caller has given up.
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *faults.gate.lock().unwrap() = Some(common::Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let slow = a.clone();
    let first = tokio::spawn(async move {
        call_t!(
            slow,
            |reply| AccountMsg::Deposit {
                request: "dep-17".to_owned(),
                amount: 10,
                reply
            },
            50
        )
    });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    let timed_out = first.await.unwrap();
    assert!(timed_out.is_err(), "the caller timed out: {timed_out:?}");
    release.send(()).unwrap();
    // The client tries again with the same request key.
    let again = call!(a, |reply| AccountMsg::Deposit {
        request: "dep-17".to_owned(),
        amount: 10,
        reply
    })
    .unwrap();
    assert_eq!(again, Ok(15), "the first reply");
    let got = balance(&a).await;
    assert_eq!(got.balance, 15, "applied once");
    assert_eq!(got.deposits.len(), 1);
    // And after a restart the repeat is still recognised.
    stop(a).await;
    let a = spawn(&storage, "a", 5).await;
    let again = call!(a, |reply| AccountMsg::Deposit {
        request: "dep-17".to_owned(),
        amount: 10,
        reply
    })
    .unwrap();
    assert_eq!(again, Ok(15));
    assert_eq!(balance(&a).await.balance, 15);
}

#[tokio::test]
async fn request_replies_past_the_retention_are_dropped_oldest_first() {
    let store = MemoryStore::new();
    let storage = Storage::new(store.clone());
    let start = Start::<Account>::new(&storage, "r", 0).request_retention(3);
    let (a, _) = ractor::Actor::spawn(None, Account, start).await.unwrap();
    for n in 1..=5u64 {
        let got = call!(a, |reply| AccountMsg::Deposit {
            request: format!("d{n}"),
            amount: n,
            reply
        })
        .unwrap();
        assert!(got.is_ok());
    }
    assert_eq!(
        rows(&store, "r", Space::REQUESTS),
        3,
        "three replies kept, whatever the number of requests"
    );
    // d5 is kept: a repeat is answered, not applied.
    let again = call!(a, |reply| AccountMsg::Deposit {
        request: "d5".to_owned(),
        amount: 5,
        reply
    })
    .unwrap();
    assert_eq!(again, Ok(15));
    // d1 was dropped: as documented, a repeat of it is applied again.
    let again = call!(a, |reply| AccountMsg::Deposit {
        request: "d1".to_owned(),
        amount: 1,
        reply
    })
    .unwrap();
    assert_eq!(again, Ok(16));
}

#[tokio::test]
async fn settlements_report_dead_letters_and_stops() {
    let storage = Storage::new(MemoryStore::new());
    let a = spawn(&storage, "a", 100).await;
    // A message to nobody stays pending: its settlement ends when the actor stops.
    let id = transfer(&a, 1, "nobody", 1).await.unwrap();
    let settlement = call!(a, AccountMsg::Settle, id.clone()).unwrap();
    stop(a).await;
    assert_eq!(settlement.await, Settled::Stopped);
    // An id that is not pending settles at once.
    let a = spawn(&storage, "a", 100).await;
    let other = ractor_persist::OpId::new(ActorKey::new("account", "a"), 999_999);
    assert_eq!(settle(&a, &other).await, Settled::NotPending);
}

/// Drops the first `n` letters it is given, then carries the rest.
#[derive(Clone)]
struct DropFirst(Arc<Mutex<usize>>);

impl Courier for DropFirst {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        let mut left = self.0.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return;
        }
        drop(left);
        postbox.deliver(letter);
    }
}

#[tokio::test]
async fn lost_letters_are_posted_again_on_the_timer_without_a_restart() {
    let dropped = Arc::new(Mutex::new(3));
    let config = StorageConfig::default().with_courier(DropFirst(dropped.clone()));
    let storage = Storage::with_config(MemoryStore::new(), config);
    let a = spawn(&storage, "a", 100).await;
    let b = spawn(&storage, "b", 0).await;
    let id = transfer(&a, 1, "b", 40).await.unwrap();
    // The first post and the first two redeliveries are lost; the third arrives.
    assert_eq!(settle(&a, &id).await, Settled::Delivered);
    assert_eq!(
        *dropped.lock().unwrap(),
        0,
        "three letters were lost on the way"
    );
    assert_eq!(balance(&b).await.credited, vec![(1, 40)]);
}

mod kept {
    //! An operation kept until confirmation, for an external peer: performed again on the
    //! redelivery timer, never counted as a failed attempt.

    use ractor::{ActorProcessingErr, RpcReplyPort};
    use ractor_persist::{
        Control, OpId, Outcome, Pending, Persistent, PersistentActor, Settlement, Tx,
    };
    use tokio::sync::mpsc::UnboundedSender;

    pub enum PeerMsg {
        /// Pushes an operation that `perform` keeps (0), finishes (1) or retries (2).
        Send(u32, RpcReplyPort<(OpId, Settlement)>),
        Confirm(OpId),
        Persist(Control<u32>),
    }

    #[derive(Persistent)]
    #[persistent(name = "peer")]
    pub struct Peer(pub UnboundedSender<(u64, u32)>);

    impl PersistentActor for Peer {
        type Msg = PeerMsg;
        type State = u32;
        type Op = u32;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: PeerMsg,
            sent: &mut u32,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                PeerMsg::Send(kind, reply) => {
                    *sent += 1;
                    let id = tx.push(kind)?;
                    let settlement = tx.settlement(&id);
                    tx.reply(reply, (id, settlement));
                }
                PeerMsg::Confirm(id) => {
                    tx.confirm(&id);
                }
                PeerMsg::Persist(_) => {}
            }
            Ok(())
        }

        async fn perform(&self, op: &Pending<u32>, _: &u32) -> Result<Outcome, ActorProcessingErr> {
            let _ = self.0.send((op.id().seq(), op.attempts()));
            Ok(match op.op() {
                0 => Outcome::KeepUntilConfirmed,
                1 => Outcome::Done,
                _ => Outcome::Retry,
            })
        }

        fn control(msg: PeerMsg) -> Result<Control<u32>, PeerMsg> {
            match msg {
                PeerMsg::Persist(c) => Ok(c),
                other => Err(other),
            }
        }

        fn wrap_control(c: Control<u32>) -> Option<PeerMsg> {
            Some(PeerMsg::Persist(c))
        }
    }
}

#[tokio::test]
async fn kept_operations_are_performed_again_on_the_timer_and_no_attempt_is_counted() {
    let storage = Storage::new(MemoryStore::new());
    let (performed, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let start = Start::<kept::Peer>::new(&storage, "p", ()).redelivery(Redelivery::new(
        Duration::from_millis(2),
        Duration::from_millis(10),
    ));
    let (peer, _) = ractor::Actor::spawn(None, kept::Peer(performed), start)
        .await
        .unwrap();
    let (id, settlement) = call!(peer, kept::PeerMsg::Send, 0).unwrap();
    // Performed after the commit, then again and again on the timer: no resume, no restart.
    for _ in 0..4 {
        let (seq, attempts) = within(seen.recv()).await.unwrap();
        assert_eq!(seq, id.seq());
        assert_eq!(attempts, 0, "a redelivery is not a failed attempt");
    }
    peer.send_message(kept::PeerMsg::Confirm(id)).unwrap();
    assert_eq!(within(settlement.wait()).await, Settled::Confirmed);
}

/// Holds messages (not acknowledgements) until the test hands them over.
#[derive(Clone, Default)]
struct Hold(Arc<Mutex<Vec<Letter>>>);

impl Courier for Hold {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        if letter.is_ack() {
            postbox.deliver(letter);
        } else {
            self.0.lock().unwrap().push(letter);
        }
    }
}

#[tokio::test]
async fn the_acknowledgement_leaves_only_after_the_receivers_commit() {
    let faults = Faults::default();
    let hold = Hold::default();
    let config = StorageConfig::default().with_courier(hold.clone());
    let storage = Storage::with_config(faults.wrap(MemoryStore::new()), config);
    let slow = Redelivery::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let start =
        |key: &str, opening: u64| Start::<Account>::new(&storage, key, opening).redelivery(slow);
    let (a, _) = ractor::Actor::spawn(None, Account, start("a", 100))
        .await
        .unwrap();
    let (b, _) = ractor::Actor::spawn(None, Account, start("b", 0))
        .await
        .unwrap();
    let id = transfer(&a, 1, "b", 5).await.unwrap();
    let settlement = call!(a, AccountMsg::Settle, id.clone()).unwrap();
    let letter = hold
        .0
        .lock()
        .unwrap()
        .pop()
        .expect("the credit, held by the courier");
    // Hold b's commit of the credit inside the store.
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *faults.gate.lock().unwrap() = Some(common::Gate {
        entered: entered_tx,
        release: release_rx,
    });
    assert!(storage.postbox().deliver(letter));
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    // b is inside its commit. An acknowledgement sent before it would already be in a's
    // mailbox, ahead of this call.
    let _ = call!(a, AccountMsg::Get).unwrap();
    let mut settlement = std::pin::pin!(settlement.wait());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        settlement.as_mut().poll(&mut cx).is_pending(),
        "no acknowledgement before the receiver's commit returned"
    );
    release.send(()).unwrap();
    assert_eq!(within(settlement).await, Settled::Delivered);
    assert_eq!(balance(&b).await.balance, 5);
}

/// Carries letters and keeps a copy of each message.
#[derive(Clone, Default)]
struct Copy(Arc<Mutex<Vec<Letter>>>);

impl Courier for Copy {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        if !letter.is_ack() {
            self.0.lock().unwrap().push(letter.clone());
        }
        postbox.deliver(letter);
    }
}

#[tokio::test]
async fn a_duplicate_after_the_receivers_crash_is_not_applied_again() {
    let copies = Copy::default();
    let store = MemoryStore::new();
    let config = StorageConfig::default().with_courier(copies.clone());
    let storage = Storage::with_config(store.clone(), config);
    let a = spawn(&storage, "a", 100).await;
    let b = spawn(&storage, "b", 0).await;
    let id = transfer(&a, 1, "b", 30).await.unwrap();
    assert_eq!(settle(&a, &id).await, Settled::Delivered);
    // b dies (no stop hook) and comes back from the store.
    b.kill();
    let b = spawn(&storage, "b", 0).await;
    for letter in copies.0.lock().unwrap().clone() {
        assert!(storage.postbox().deliver(letter));
    }
    let got = balance(&b).await;
    assert_eq!(
        (got.balance, got.credited),
        (30, vec![(1, 30)]),
        "applied once"
    );
}

/// Holds messages until told to let them through; acknowledgements always pass.
#[derive(Clone, Default)]
struct Gate {
    held: Arc<Mutex<Vec<Letter>>>,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Courier for Gate {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        if letter.is_ack() || self.open.load(std::sync::atomic::Ordering::SeqCst) {
            postbox.deliver(letter);
        } else {
            self.held.lock().unwrap().push(letter);
        }
    }
}

#[tokio::test]
async fn a_senders_channel_numbers_go_on_after_its_restart() {
    let gate = Gate::default();
    let config = StorageConfig::default().with_courier(gate.clone());
    let storage = Storage::with_config(MemoryStore::new(), config);
    let slow = Redelivery::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let start =
        |key: &str, opening: u64| Start::<Account>::new(&storage, key, opening).redelivery(slow);
    let (a, _) = ractor::Actor::spawn(None, Account, start("a", 100))
        .await
        .unwrap();
    let (b, _) = ractor::Actor::spawn(None, Account, start("b", 0))
        .await
        .unwrap();
    let first = transfer(&a, 1, "b", 10).await.unwrap();
    // The sender dies with its first message unacknowledged, and sends a second after it
    // restarts: the second must go on the same channel, numbered 2.
    a.kill();
    let (a, _) = ractor::Actor::spawn(None, Account, start("a", 100))
        .await
        .unwrap();
    let second = transfer(&a, 2, "b", 20).await.unwrap();
    // The link delivers the newest first, then lets everything through.
    let held: Vec<Letter> = std::mem::take(&mut *gate.held.lock().unwrap());
    gate.open.store(true, std::sync::atomic::Ordering::SeqCst);
    for letter in held.into_iter().rev() {
        storage.postbox().deliver(letter);
    }
    assert_eq!(settle(&a, &first).await, Settled::Delivered);
    assert_eq!(settle(&a, &second).await, Settled::Delivered);
    let got = balance(&b).await;
    assert_eq!(got.credited, vec![(1, 10), (2, 20)], "each once, in order");
    assert_eq!(got.balance, 30);
}

#[tokio::test]
async fn settlements_tell_done_and_dead_letters_without_polling() {
    let storage = Storage::new(MemoryStore::new());
    let (performed, _seen) = tokio::sync::mpsc::unbounded_channel();
    let once = ractor_persist::RetryPolicy::new(Duration::ZERO, Duration::ZERO, 1).unwrap();
    let start = Start::<kept::Peer>::new(&storage, "p", ()).retry_policy(once);
    let (peer, _) = ractor::Actor::spawn(None, kept::Peer(performed), start)
        .await
        .unwrap();
    let (_, done) = call!(peer, kept::PeerMsg::Send, 1).unwrap();
    assert_eq!(within(done.wait()).await, Settled::Done);
    let (_, dead) = call!(peer, kept::PeerMsg::Send, 2).unwrap();
    assert_eq!(within(dead.wait()).await, Settled::DeadLetter);
}

/// Drops the first message letter it is given; carries everything else.
#[derive(Clone, Default)]
struct LoseFirstMessage(Arc<Mutex<bool>>);

impl Courier for LoseFirstMessage {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        if !letter.is_ack() && !std::mem::replace(&mut *self.0.lock().unwrap(), true) {
            return;
        }
        postbox.deliver(letter);
    }
}

#[tokio::test]
async fn a_refusal_past_a_gap_brings_the_missing_message_at_once() {
    let courier = LoseFirstMessage::default();
    let config = StorageConfig::default().with_courier(courier);
    let storage = Storage::with_config(MemoryStore::new(), config);
    // No timer redelivers within the test: only the receiver's refusal can bring message 1.
    let slow = Redelivery::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let start =
        |key: &str, opening: u64| Start::<Account>::new(&storage, key, opening).redelivery(slow);
    let (a, _) = ractor::Actor::spawn(None, Account, start("a", 100))
        .await
        .unwrap();
    let (b, _) = ractor::Actor::spawn(None, Account, start("b", 0))
        .await
        .unwrap();
    let first = transfer(&a, 1, "b", 1).await.unwrap(); // lost on the way
    let second = transfer(&a, 2, "b", 2).await.unwrap(); // refused: 1 is missing
    assert_eq!(settle(&a, &first).await, Settled::Delivered);
    assert_eq!(settle(&a, &second).await, Settled::Delivered);
    assert_eq!(balance(&b).await.credited, vec![(1, 1), (2, 2)]);
}

/// A courier that loses every message letter while `lose` is set, and records what the
/// postbox tells it of registrations.
#[derive(Clone, Default)]
struct Link {
    lose: Arc<Mutex<bool>>,
    heard: Arc<Mutex<Vec<(bool, ActorKey)>>>,
}

impl Courier for Link {
    fn carry(&self, letter: Letter, postbox: &Postbox) {
        if !letter.is_ack() && *self.lose.lock().unwrap() {
            return;
        }
        postbox.deliver(letter);
    }

    fn registered(&self, key: &ActorKey) {
        self.heard.lock().unwrap().push((true, key.clone()));
    }

    fn unregistered(&self, key: &ActorKey) {
        self.heard.lock().unwrap().push((false, key.clone()));
    }
}

#[tokio::test]
async fn a_courier_hears_who_runs_here_and_a_wake_posts_the_lost_messages_again() {
    let link = Link::default();
    let config = StorageConfig::default().with_courier(link.clone());
    let storage = Storage::with_config(MemoryStore::new(), config);
    // No timer redelivers within the test: only the wake can bring the lost messages.
    let slow = Redelivery::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let start =
        |key: &str, opening: u64| Start::<Account>::new(&storage, key, opening).redelivery(slow);
    let (a, _) = ractor::Actor::spawn(None, Account, start("a", 100))
        .await
        .unwrap();
    let (b, _) = ractor::Actor::spawn(None, Account, start("b", 0))
        .await
        .unwrap();
    assert_eq!(
        *link.heard.lock().unwrap(),
        vec![(true, account("a")), (true, account("b"))]
    );

    // The link loses two messages; it comes back, and the courier wakes the sender.
    *link.lose.lock().unwrap() = true;
    let first = transfer(&a, 1, "b", 1).await.unwrap();
    let second = transfer(&a, 2, "b", 2).await.unwrap();
    assert!(balance(&b).await.credited.is_empty(), "both lost");
    *link.lose.lock().unwrap() = false;
    assert!(storage.postbox().wake(&account("a"), &account("b")));
    assert_eq!(settle(&a, &first).await, Settled::Delivered);
    assert_eq!(settle(&a, &second).await, Settled::Delivered);
    assert_eq!(balance(&b).await.credited, vec![(1, 1), (2, 2)]);
    // A wake too many applies nothing twice (the third transfer is posted after whatever
    // it posted, on the same channel, so its delivery means b has seen that too).
    assert!(storage.postbox().wake(&account("a"), &account("b")));
    let third = transfer(&a, 3, "b", 3).await.unwrap();
    assert_eq!(settle(&a, &third).await, Settled::Delivered);
    assert_eq!(balance(&b).await.credited, vec![(1, 1), (2, 2), (3, 3)]);

    stop(b).await;
    assert_eq!(
        link.heard.lock().unwrap().last(),
        Some(&(false, account("b")))
    );
    assert!(
        !storage.postbox().wake(&account("b"), &account("a")),
        "b does not run"
    );
}
