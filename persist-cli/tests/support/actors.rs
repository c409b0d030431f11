//! The actors the CLI tests store: a wallet with operations that are done, kept until
//! confirmed, or fail until told otherwise, and a memo with a string for a state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{ActorProcessingErr, RpcReplyPort};
use ractor_persist::{Outcome, Pending, Persistent, PersistentActor, RetryPolicy, Settlement, Tx};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The wallet's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purse {
    pub total: i64,
    pub memo: String,
}

/// The wallet's operation. Its fields are plain, so serde-reflection traces its shape and
/// its records carry a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub n: u32,
    /// Performed and kept until confirmed: stays pending.
    pub keep: bool,
    /// Asks to be retried (a failed attempt) while [`Wallet::flaky_fails`] is set.
    pub flaky: bool,
}

impl Job {
    /// Done when performed: removed.
    pub fn done(n: u32) -> Job {
        Job {
            n,
            keep: false,
            flaky: false,
        }
    }

    pub fn kept(n: u32) -> Job {
        Job {
            keep: true,
            ..Job::done(n)
        }
    }

    pub fn flaky(n: u32) -> Job {
        Job {
            flaky: true,
            ..Job::done(n)
        }
    }
}

pub enum WalletMsg {
    /// Adds to the total; replies with the new total.
    Add(i64, RpcReplyPort<i64>),
    /// Adds `n` to the total, writes the memo, pushes the job; replies with the job's id and
    /// how it settles.
    Push(Job, RpcReplyPort<(u64, Settlement)>),
    /// Replies with the state.
    Peek(RpcReplyPort<Purse>),
}

/// Told (job, failed attempts before this one) of every perform.
pub type Performs = mpsc::UnboundedReceiver<(Job, u32)>;

/// Where a wallet tells its performs, once a test asks for them.
type Teller = Arc<Mutex<Option<mpsc::UnboundedSender<(Job, u32)>>>>;

#[derive(Clone, Default, Persistent)]
#[persistent(name = "wallet", version = 2)]
pub struct Wallet {
    /// While set, `Flaky` jobs fail.
    pub flaky_fails: Arc<AtomicBool>,
    /// Where performs are told, so a test awaits one instead of sleeping.
    pub told: Teller,
}

impl Wallet {
    /// A wallet whose flaky jobs fail.
    pub fn failing() -> Wallet {
        let w = Wallet::default();
        w.flaky_fails.store(true, Ordering::SeqCst);
        w
    }

    /// The performs of this wallet from now on.
    pub fn performs(&self) -> Performs {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.told.lock().unwrap() = Some(tx);
        rx
    }
}

impl PersistentActor for Wallet {
    type Msg = WalletMsg;
    type State = Purse;
    type Op = Job;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Purse, ActorProcessingErr> {
        Ok(Purse::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: WalletMsg,
        purse: &mut Purse,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WalletMsg::Add(n, reply) => {
                purse.total += n;
                tx.reply(reply, purse.total);
            }
            WalletMsg::Push(job, reply) => {
                purse.total += i64::from(job.n);
                purse.memo = format!("job {}", job.n);
                let id = tx.push(job)?;
                let settlement = tx.settlement(&id);
                tx.reply(reply, (id.seq(), settlement));
            }
            WalletMsg::Peek(reply) => tx.reply(reply, purse.clone()),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Job>, _: &Purse) -> Result<Outcome, ActorProcessingErr> {
        if let Some(told) = self.told.lock().unwrap().as_ref() {
            let _ = told.send((op.op().clone(), op.attempts()));
        }
        let job = op.op();
        Ok(if job.flaky && self.flaky_fails.load(Ordering::SeqCst) {
            // A failed attempt that keeps the actor running (an `Err` would stop it).
            Outcome::Retry
        } else if job.keep {
            Outcome::KeepUntilConfirmed
        } else {
            Outcome::Done
        })
    }
}

/// Gives up after the first failed attempt, at once: a failing job becomes a dead letter.
pub fn one_attempt() -> RetryPolicy {
    RetryPolicy::new(Duration::ZERO, Duration::ZERO, 1).unwrap()
}

pub enum MemoMsg {
    /// Replaces the memo.
    Set(String, RpcReplyPort<()>),
}

/// An actor of a second namespace.
#[derive(Clone, Default, Persistent)]
#[persistent(name = "memo")]
pub struct Memo;

impl PersistentActor for Memo {
    type Msg = MemoMsg;
    type State = String;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<String, ActorProcessingErr> {
        Ok(String::new())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: MemoMsg,
        memo: &mut String,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MemoMsg::Set(text, reply) => {
                *memo = text;
                tx.reply(reply, ());
            }
        }
        Ok(())
    }
}

/// The namespace of the wallets.
pub const WALLET: &str = <Wallet as Persistent>::NAME;
