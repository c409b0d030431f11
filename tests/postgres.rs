//! PostgreSQL through the runtime: the actors of a batch whose connection was cut get errors
//! (never a success), each comes back with the store's state (the batch whole or not at all),
//! and the storage serves the next batch on a new connection without being reopened.

#[macro_use]
mod common;

use common::{Ledger, LedgerMsg, spawn_ledger};
use persist_postgres::{Cut, CuttingProxy, TestCluster};
use ractor::call;
use ractor_persist::{PostgresOptions, PostgresStore, Storage};

/// Options for `server`'s database in `schema`, through a new cutting proxy.
fn through_proxy(server: &TestCluster, schema: &str) -> (CuttingProxy, PostgresOptions) {
    let direct: tokio_postgres::Config = server.params().parse().unwrap();
    let port = direct.get_ports().first().copied().unwrap_or(5432);
    let proxy = CuttingProxy::start("127.0.0.1", port).unwrap();
    let options = server.options_via(proxy.port(), schema);
    (proxy, options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_fails_its_actors_and_the_storage_serves_the_next_batch() {
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let schema = server.options();
    let (proxy, options) = through_proxy(server, schema.schema_name());
    let storage = Storage::new(PostgresStore::open(options).unwrap());
    for (round, cut) in [(1, Cut::BeforeCommit), (2, Cut::AfterCommit)] {
        let key = format!("acct{round}");
        let acct = spawn_ledger(&storage, &key, Ledger::default()).await;
        assert_eq!(call!(acct, LedgerMsg::Add, 10).unwrap(), 10);
        proxy.arm(cut);
        let failed = call!(acct, LedgerMsg::Add, 5);
        assert!(
            failed.is_err(),
            "a commit whose connection was cut never succeeds: {failed:?}"
        );
        assert!(proxy.fired(), "round {round}: the cut happened");
        // The same storage, not reopened, serves the next spawn and its commits.
        let again = spawn_ledger(&storage, &key, Ledger::default()).await;
        let total = call!(again, LedgerMsg::Peek).unwrap();
        match cut {
            Cut::BeforeCommit => assert_eq!(total, 10, "the COMMIT never reached the server"),
            Cut::AfterCommit => assert!(
                total == 10 || total == 15,
                "the batch landed whole or not at all: {total}"
            ),
        }
        assert_eq!(call!(again, LedgerMsg::Add, 1).unwrap(), total + 1);
        again.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}
