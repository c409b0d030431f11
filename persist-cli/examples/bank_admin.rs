//! A bank's own admin binary: the admin tool's commands, with the bank's account type
//! registered, so `show`, `dead-letters` and `edit` see balances and notices as JSON.
//!
//! ```text
//! cargo run -p persist-cli --example bank_admin -- demo DIR        # the stores of docs/operations.md
//! cargo run -p persist-cli --example bank_admin -- redb:DIR/bank.redb show account alice
//! ```
//!
//! `demo DIR` writes `DIR/bank.redb`, the store `docs/operations.md` walks through: five
//! accounts, a pending notice, a payment that became a dead letter, and a record that was
//! damaged on disk and quarantined by its next start; and `DIR/damaged.redb`, a store with one
//! record whose bytes were damaged after they were written.
use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use persist_cli::Admin;
use ractor::call;
use ractor_persist::prelude::*;
use ractor_persist::{
    ActorCommit, ActorKey, RedbStore, RetryPolicy, Settlement, Space, Start, Store,
};
use serde::{Deserialize, Serialize};

/// An account's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Whose it is.
    pub owner: String,
    /// What it holds.
    pub cents: i64,
}

/// What an account asks the world to do, after its commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// A text message, kept until the phone company confirms it.
    Sms {
        /// The phone.
        to: String,
        /// The text.
        text: String,
    },
    /// A payment to another bank; one to an unknown bank fails every attempt.
    Wire {
        /// The other bank.
        bank: String,
        /// How much.
        cents: i64,
    },
}

/// An account's messages.
pub enum AccountMsg {
    /// Opens the account for an owner.
    Open(String, RpcReplyPort<()>),
    /// Adds cents and texts the owner.
    Deposit(i64, RpcReplyPort<i64>),
    /// Pays another bank; the reply is how the payment ends.
    Wire(String, i64, RpcReplyPort<Settlement>),
}

/// A bank account.
#[derive(Default, Persistent)]
#[persistent(name = "account")]
pub struct Account;

impl PersistentActor for Account {
    type Msg = AccountMsg;
    type State = Balance;
    type Op = Notice;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Balance, ActorProcessingErr> {
        Ok(Balance::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AccountMsg,
        state: &mut Balance,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AccountMsg::Open(owner, reply) => {
                state.owner = owner;
                tx.reply(reply, ());
            }
            AccountMsg::Deposit(cents, reply) => {
                state.cents += cents;
                let text = format!("{cents} cents in, {} on the account", state.cents);
                let to = state.owner.clone();
                tx.push(Notice::Sms { to, text })?;
                tx.reply(reply, state.cents);
            }
            AccountMsg::Wire(bank, cents, reply) => {
                state.cents -= cents;
                let id = tx.push(Notice::Wire { bank, cents })?;
                let settled = tx.settlement(&id);
                tx.reply(reply, settled);
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Notice>,
        _: &Balance,
    ) -> Result<Outcome, ActorProcessingErr> {
        Ok(match op.op() {
            // Sent; kept until the phone company's receipt confirms it.
            Notice::Sms { .. } => Outcome::KeepUntilConfirmed,
            Notice::Wire { bank, .. } if bank == "nowhere" => Outcome::Retry,
            Notice::Wire { .. } => Outcome::Done,
        })
    }
}

/// The bank's admin commands.
pub fn admin() -> Admin {
    Admin::new().actor::<Account>()
}

/// Writes the demo stores into `dir`.
pub async fn make_demo(dir: &Path) -> Result<(), Box<dyn Error>> {
    let storage = Storage::new(RedbStore::open(dir.join("bank.redb"))?);
    // One failed attempt makes a dead letter.
    let once = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 1)?;
    for (key, cents) in [
        ("alice", 5000),
        ("bob", 1200),
        ("carol", 700),
        ("dave", 90),
        ("erin", 1),
    ] {
        let start = Start::<Account>::new(&storage, key, ()).retry_policy(once);
        let (acct, _) = ractor::Actor::spawn(None, Account, start).await?;
        call!(acct, AccountMsg::Open, key.to_owned())?;
        if key != "bob" {
            call!(acct, AccountMsg::Deposit, cents)?;
        }
        if key == "bob" {
            let settled = call!(acct, AccountMsg::Wire, "nowhere".to_owned(), 300)?;
            settled.wait().await;
        }
        acct.stop_and_wait(None, None).await?;
    }
    storage.close().await?;

    // Dave's state is damaged on disk; his next start (opted in) moves it aside.
    let store = RedbStore::open(dir.join("bank.redb"))?;
    flip_last_byte(&store, &ActorKey::new("account", "dave"))?;
    drop(store);
    let storage = Storage::new(RedbStore::open(dir.join("bank.redb"))?);
    let start = Start::<Account>::new(&storage, "dave", ()).quarantine_undecodable();
    let (dave, _) = ractor::Actor::spawn(None, Account, start).await?;
    dave.stop_and_wait(None, None).await?;
    storage.close().await?;

    // A second store with one damaged record, for `verify`.
    let storage = Storage::new(RedbStore::open(dir.join("damaged.redb"))?);
    for key in ["frank", "grace"] {
        let (acct, _) = Account::spawn_persistent(&storage, key, ()).await?;
        call!(acct, AccountMsg::Open, key.to_owned())?;
        acct.stop_and_wait(None, None).await?;
    }
    storage.close().await?;
    let store = RedbStore::open(dir.join("damaged.redb"))?;
    flip_last_byte(&store, &ActorKey::new("account", "grace"))?;
    Ok(())
}

/// Flips one bit of the last byte of `key`'s snapshot, through the store seam: damage that the
/// backend's own check cannot see, since the backend stored these bytes as they are.
fn flip_last_byte(store: &dyn Store, key: &ActorKey) -> Result<(), Box<dyn Error>> {
    let loaded = store.open_actor(key, &[Space::SNAPSHOT])?;
    let mut bytes = loaded.snapshot().ok_or("no snapshot")?.to_vec();
    *bytes.last_mut().ok_or("empty")? ^= 0x01;
    store.commit(&[ActorCommit::new(key.clone(), loaded.epoch).put(Space::SNAPSHOT, 0, bytes)])?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("demo") {
        let Some(dir) = args.get(2) else {
            eprintln!("usage: bank_admin demo DIR");
            return ExitCode::from(2);
        };
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        return match runtime.block_on(make_demo(Path::new(dir))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    admin().run()
}
