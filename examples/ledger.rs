//! An event-sourced bank account: the journal of what happened is the account's truth, and
//! the balance is what the events add up to.
//!
//! `Ledger` is derived with `#[persistent(event_sourced)]` and implements `EventSourced`: its
//! events are `Deposited`, `Withdrawn` and `Frozen`, and its `apply` is a pure function that
//! adds one event to the state or refuses it (an overdraft, a withdrawal from a frozen
//! account) leaving the state as it was. The handler changes the state only through
//! `tx.emit(state, event)`, which applies the event at once and appends it to the journal in
//! the message's commit; the reply (`tx.reply`) and the text message to the customer (an
//! operation, `tx.push`, that `perform` sends) leave only after that commit. A refused
//! withdrawal writes nothing: the caller gets the refusal as a typed `Err` reply and the actor
//! goes on.
//!
//! The store is a redb file in a temporary directory. Alice's account writes a snapshot every
//! 5 events (`Start::snapshot_every`) and keeps every event (`Retention::Full`, the default):
//! after a restart her balance comes back from the latest snapshot plus the events after it,
//! and an audit reads her whole history back with `Storage::events`, checking that the events
//! fold to the recovered state. Bob's account uses `Retention::Light`: a snapshot's commit
//! removes the events it covers, so reading his journal from event #1 fails with
//! `JournalError::Compacted`, naming the first event still kept.
//!
//! The example checks its own results and exits non-zero if one is wrong. Run with
//! `cargo run --example ledger`.
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use ractor::{Actor, call};
use ractor_persist::prelude::*;
use ractor_persist::{EventError, JournalError, Retention, Start};
use serde::{Deserialize, Serialize};

/// The account, as its events build it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    balance: u64,
    deposited: u64,
    withdrawn: u64,
    /// Why the account was frozen, if it was: no withdrawal goes through after that.
    frozen: Option<String>,
}

/// What happened to an account: stored in the journal, replayed on every start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum LedgerEvent {
    Deposited { amount: u64 },
    Withdrawn { amount: u64, to: String },
    Frozen { reason: String },
}

/// Why `apply` refused an event: returned by `apply`, handed back to the caller as is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refused {
    Overdraft { balance: u64, asked: u64 },
    Frozen { reason: String },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Overdraft { balance, asked } => {
                write!(f, "overdraft: {asked} asked, the balance is {balance}")
            }
            Refused::Frozen { reason } => write!(f, "the account is frozen ({reason})"),
        }
    }
}

impl std::error::Error for Refused {}

enum LedgerMsg {
    Deposit(u64, RpcReplyPort<u64>),
    Withdraw(u64, String, RpcReplyPort<Result<u64, Refused>>),
    Freeze(String, RpcReplyPort<()>),
    Get(RpcReplyPort<Account>),
}

/// A text message to the account's owner: an operation, sent by `perform` after the commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Notice {
    event: u64,
    text: String,
}

/// The text-message service, outside the actor. After a crash, `perform` runs again with the
/// same op id for every notice whose completion was not yet committed, so the service drops
/// the op ids it has already sent (a real service would keep them in its own store).
#[derive(Default)]
struct Sms {
    sent: Mutex<BTreeSet<OpId>>,
    log: Mutex<Vec<String>>,
}

impl Sms {
    fn send(&self, id: &OpId, text: &str) {
        if self.sent.lock().unwrap().insert(id.clone()) {
            println!("    sms {id}: {text}");
            self.log.lock().unwrap().push(text.to_owned());
        }
    }
}

#[derive(Persistent)]
#[persistent(name = "ledger", event_sourced)]
struct Ledger {
    sms: Arc<Sms>,
}

impl EventSourced for Ledger {
    type Event = LedgerEvent;

    /// Pure: check first, then change, so a refused event leaves the state untouched.
    fn apply(state: &mut Account, event: &LedgerEvent) -> Result<(), ActorProcessingErr> {
        match event {
            LedgerEvent::Deposited { amount } => {
                state.balance += amount;
                state.deposited += amount;
            }
            LedgerEvent::Withdrawn { amount, .. } => {
                if let Some(reason) = &state.frozen {
                    let reason = reason.clone();
                    return Err(Box::new(Refused::Frozen { reason }));
                }
                if *amount > state.balance {
                    let (balance, asked) = (state.balance, *amount);
                    return Err(Box::new(Refused::Overdraft { balance, asked }));
                }
                state.balance -= amount;
                state.withdrawn += amount;
            }
            LedgerEvent::Frozen { reason } => state.frozen = Some(reason.clone()),
        }
        Ok(())
    }
}

impl PersistentActor for Ledger {
    type Msg = LedgerMsg;
    type State = Account;
    type Op = Notice;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Account, ActorProcessingErr> {
        Ok(Account::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: LedgerMsg,
        state: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LedgerMsg::Deposit(amount, reply) => {
                tx.emit(state, LedgerEvent::Deposited { amount })?;
                tx.reply(reply, state.balance);
            }
            LedgerMsg::Withdraw(amount, to, reply) => {
                let event = LedgerEvent::Withdrawn {
                    amount,
                    to: to.clone(),
                };
                match tx.emit(state, event) {
                    Ok(seq) => {
                        let text = format!("{amount} paid to {to}, balance {}", state.balance);
                        tx.push(Notice { event: seq, text })?;
                        tx.reply(reply, Ok(state.balance));
                    }
                    // `apply` refused: nothing was applied or journaled. Tell the caller why
                    // and go on; this message writes nothing.
                    Err(EventError::Rejected { source, .. }) => {
                        let refused = source.downcast::<Refused>()?;
                        tx.reply(reply, Err(*refused));
                    }
                    Err(other) => return Err(other.into()),
                }
            }
            LedgerMsg::Freeze(reason, reply) => {
                let seq = tx.emit(
                    state,
                    LedgerEvent::Frozen {
                        reason: reason.clone(),
                    },
                )?;
                let text = format!("account frozen: {reason}");
                tx.push(Notice { event: seq, text })?;
                tx.reply(reply, ());
            }
            LedgerMsg::Get(reply) => tx.reply(reply, state.clone()),
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Notice>,
        _: &Account,
    ) -> Result<Outcome, ActorProcessingErr> {
        let notice = op.op();
        self.sms.send(
            op.id(),
            &format!("(event #{}) {}", notice.event, notice.text),
        );
        Ok(Outcome::Done)
    }
}

/// Events between two snapshots: small, so that this short run writes some.
const SNAPSHOT_EVERY: u64 = 5;

async fn spawn(
    storage: &Storage,
    key: &str,
    retention: Retention,
    sms: &Arc<Sms>,
) -> Result<ActorRef<LedgerMsg>, Box<dyn std::error::Error>> {
    let start = Start::new(storage, key, ())
        .snapshot_every(SNAPSHOT_EVERY)
        .retention(retention);
    let ledger = Ledger { sms: sms.clone() };
    Ok(Actor::spawn(None, ledger, start).await?.0)
}

/// The state the events build from `init`'s, folded by hand with the actor's own `apply`.
fn fold(events: &[(u64, LedgerEvent)]) -> Account {
    let mut account = Account::default();
    for (seq, event) in events {
        Ledger::apply(&mut account, event)
            .unwrap_or_else(|e| panic!("journaled event #{seq} refused: {e}"));
    }
    account
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ledger.redb");
    let storage = Storage::new(RedbStore::open(&path)?);
    let sms = Arc::new(Sms::default());
    println!("ledger: event-sourced accounts in {}", path.display());

    // Alice: every event kept, a snapshot every 5.
    println!("alice: 4 deposits and 3 withdrawals (a text for each withdrawal)");
    let alice = spawn(&storage, "alice", Retention::Full, &sms).await?;
    assert_eq!(call!(alice, LedgerMsg::Deposit, 100)?, 100);
    assert_eq!(call!(alice, LedgerMsg::Deposit, 250)?, 350);
    assert_eq!(
        call!(alice, LedgerMsg::Withdraw, 80, "carol".into())?,
        Ok(270)
    );
    assert_eq!(call!(alice, LedgerMsg::Deposit, 40)?, 310);
    assert_eq!(
        call!(alice, LedgerMsg::Withdraw, 60, "dave".into())?,
        Ok(250)
    );
    assert_eq!(call!(alice, LedgerMsg::Deposit, 15)?, 265);
    let refused = call!(alice, LedgerMsg::Withdraw, 1000, "mallory".into())?;
    println!(
        "alice: withdraw 1000 to mallory -> Err({})",
        refused.clone().unwrap_err()
    );
    assert_eq!(
        refused,
        Err(Refused::Overdraft {
            balance: 265,
            asked: 1000
        })
    );
    assert_eq!(
        call!(alice, LedgerMsg::Withdraw, 25, "carol".into())?,
        Ok(240)
    );
    let before = call!(alice, LedgerMsg::Get)?;
    println!(
        "alice: balance {} (7 events: the refusal wrote none)",
        before.balance
    );
    assert_eq!(before.balance, 240);

    // A restart: the latest snapshot (after event #5) and the events after it (#6, #7).
    alice.stop_and_wait(None, None).await?;
    let alice = spawn(&storage, "alice", Retention::Full, &sms).await?;
    let after = call!(alice, LedgerMsg::Get)?;
    println!(
        "alice: restarted, balance {} (snapshot at event #5 + events #6..#7)",
        after.balance
    );
    assert_eq!(after, before, "the restart recovers the state");

    call!(alice, LedgerMsg::Freeze, "card reported stolen".into())?;
    let refused = call!(alice, LedgerMsg::Withdraw, 10, "mallory".into())?;
    println!(
        "alice: withdraw 10 to mallory -> Err({})",
        refused.clone().unwrap_err()
    );
    assert!(matches!(refused, Err(Refused::Frozen { .. })));
    let alice_now = call!(alice, LedgerMsg::Get)?;
    alice.stop_and_wait(None, None).await?;

    // The audit: a projection reading the journal from the store, not from the actor.
    println!("audit of alice's journal (Storage::events from #1):");
    let events = storage.events::<Ledger>("alice", 1).await?;
    let mut running = 0i64;
    for (seq, event) in &events {
        running += match event {
            LedgerEvent::Deposited { amount } => *amount as i64,
            LedgerEvent::Withdrawn { amount, .. } => -(*amount as i64),
            LedgerEvent::Frozen { .. } => 0,
        };
        println!("  #{seq} {event:?} -> {running}");
    }
    let numbers: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        numbers,
        (1..=8).collect::<Vec<_>>(),
        "events #1..#8, in order"
    );
    assert_eq!(fold(&events), alice_now, "the journal folds to the state");
    assert_eq!(running, 240);
    println!("audit: the 8 events fold to alice's state: {alice_now:?}");

    // Bob: compacted journal. 7 deposits: the snapshot at #5 removed events #1..#5.
    println!("bob: 7 deposits of 10, Retention::Light");
    let bob = spawn(&storage, "bob", Retention::Light, &sms).await?;
    for n in 1..=7 {
        assert_eq!(call!(bob, LedgerMsg::Deposit, 10)?, 10 * n);
    }
    bob.stop_and_wait(None, None).await?;
    match storage.events::<Ledger>("bob", 1).await {
        Err(e @ JournalError::Compacted { first: 6, .. }) => println!("bob: from #1 -> Err({e})"),
        other => panic!("expected the journal compacted up to #5, got {other:?}"),
    }
    let tail = storage.events::<Ledger>("bob", 6).await?;
    println!("bob: from #6 -> {tail:?}");
    let deposit = LedgerEvent::Deposited { amount: 10 };
    assert_eq!(tail, vec![(6, deposit.clone()), (7, deposit)]);
    let bob = spawn(&storage, "bob", Retention::Light, &sms).await?;
    let bob_now = call!(bob, LedgerMsg::Get)?;
    println!("bob: restarted, balance {}", bob_now.balance);
    assert_eq!(bob_now.balance, 70, "compaction keeps the state");
    bob.stop_and_wait(None, None).await?;

    // Each text went out once, whatever `perform` ran again after a restart.
    let texts = sms.log.lock().unwrap().len();
    assert_eq!(texts, 4, "3 withdrawals and a freeze, one text each");
    storage.close().await?;
    println!("ledger: every check passed ({texts} texts sent)");
    Ok(())
}
