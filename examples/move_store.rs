//! Moves a store from redb to SQLite, offline: the README's one-liner, on a store the example
//! writes first. Run with `cargo run --example move_store --features sqlite`.
use ractor_persist::prelude::*;
use ractor_persist::{SqliteStore, transfer};

#[derive(Default, Persistent)]
#[persistent(name = "account")]
struct Account;

enum AccountMsg {
    Deposit(u64, RpcReplyPort<u64>),
}

impl PersistentActor for Account {
    type Msg = AccountMsg;
    type State = u64;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        AccountMsg::Deposit(amount, reply): AccountMsg,
        balance: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        *balance += amount;
        tx.reply(reply, *balance);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("move-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::env::set_current_dir(&dir)?;

    let storage = Storage::new(RedbStore::open("bank.redb")?);
    let (alice, _) = Account::spawn_persistent(&storage, "alice", ()).await?;
    ractor::call!(alice, AccountMsg::Deposit, 40)?;
    alice.stop_and_wait(None, None).await?;
    storage.close().await?;

    // Every state, pending operation, dead letter, quarantined record and id mark, as stored.
    transfer::copy(
        &RedbStore::open("bank.redb")?,
        &SqliteStore::open("bank.sqlite")?,
    )?;

    let storage = Storage::new(SqliteStore::open("bank.sqlite")?);
    let (alice, _) = Account::spawn_persistent(&storage, "alice", ()).await?;
    let balance = ractor::call!(alice, AccountMsg::Deposit, 2)?;
    println!("alice's balance on SQLite: {balance}");
    assert_eq!(balance, 42, "the state moved with the store");
    alice.stop_and_wait(None, None).await?;
    storage.close().await?;
    std::env::set_current_dir(std::env::temp_dir())?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
