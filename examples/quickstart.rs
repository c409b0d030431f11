//! A counter that survives restarts. Run with `cargo run --example quickstart [PATH]`; run it
//! twice and the count goes on where it stopped (the store is `quickstart.redb` by default).
use ractor_persist::prelude::*;

#[derive(Default, Persistent)]
#[persistent(name = "counter")]
struct Counter;

enum CounterMsg {
    Next(RpcReplyPort<u64>), // adds one and replies with the new count
}

impl PersistentActor for Counter {
    type Msg = CounterMsg;
    type State = u64;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0) // first start only; later starts load the committed count
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        CounterMsg::Next(reply): CounterMsg,
        count: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        *count += 1;
        tx.reply(reply, *count); // sent only once the new count is on disk
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or("quickstart.redb".into());
    let storage = Storage::new(RedbStore::open(&path)?);
    let (counter, _) = Counter::spawn_persistent(&storage, "main", ()).await?;
    let count = ractor::call!(counter, CounterMsg::Next)?;
    println!("count = {count} (stored in {path})");
    counter.stop_and_wait(None, None).await?;
    Ok(storage.close().await?)
}
