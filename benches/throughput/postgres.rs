//! Durable messages on PostgreSQL: the library on a `PostgresStore`, and a hand-written ractor
//! actor doing one PostgreSQL transaction per message, on the same throwaway server.

use std::sync::Arc;

use persist_postgres::{PostgresStore, TestCluster};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_persist::Storage;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Statement};

use crate::actors::{Account, Msg, NaiveWrite, ROW_PAD};
use crate::measure::{Run, closed_loop, cpu_time};

/// Connections the baseline's actors share (the server allows 300).
pub const BASELINE_CONNECTIONS: usize = 32;

/// `actors` persistent actors on one `Storage` over PostgreSQL, each sending `per_actor`
/// state-changing messages, in a schema of their own.
pub async fn library(server: &TestCluster, actors: usize, per_actor: usize) -> Run {
    let options = server.options();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(options))
        .await
        .expect("open task")
        .expect("open the store");
    crate::durable::library_on(Storage::new(store), actors, per_actor, Msg::Add).await
}

/// The hand-written baseline: per message, one transaction that upserts the state row,
/// inserts the op row and deletes the previous op (the rows the library writes), on one of
/// [`BASELINE_CONNECTIONS`] shared connections.
pub async fn naive(server: &TestCluster, actors: usize, per_actor: usize) -> Run {
    let schema = server.options().schema_name().to_owned();
    let mut clients = Vec::new();
    for i in 0..BASELINE_CONNECTIONS.min(actors) {
        let (client, conn) = tokio_postgres::connect(&server.params(), NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        if i == 0 {
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA {schema};
                     CREATE TABLE {schema}.states (key text PRIMARY KEY, bytes bytea NOT NULL);
                     CREATE TABLE {schema}.ops (key text, seq bigint, bytes bytea NOT NULL,
                         PRIMARY KEY (key, seq));"
                ))
                .await
                .expect("create the baseline's tables");
        }
        clients.push(Arc::new(Mutex::new(client)));
    }
    let mut refs = Vec::with_capacity(actors);
    for i in 0..actors {
        let client = clients[i % clients.len()].clone();
        let (actor, _) = Naive::spawn(None, Naive, (client, schema.clone(), format!("a{i}")))
            .await
            .expect("spawn");
        refs.push(actor);
    }
    closed_loop(&refs, 1, Msg::Add).await;
    let cpu = cpu_time();
    let (secs, lat) = closed_loop(&refs, per_actor, Msg::Add).await;
    let cpu = cpu_time() - cpu;
    for actor in refs {
        actor.stop_and_wait(None, None).await.expect("stop");
    }
    Run {
        msgs: actors * per_actor,
        secs,
        lat,
        cpu,
        ..Run::default()
    }
}

struct Naive;

struct NaiveState {
    client: Arc<Mutex<Client>>,
    upsert: Statement,
    insert: Statement,
    delete: Statement,
    key: String,
    account: Account,
    seq: i64,
}

impl Actor for Naive {
    type Msg = Msg;
    type State = NaiveState;
    type Arguments = (Arc<Mutex<Client>>, String, String);

    async fn pre_start(
        &self,
        _: ActorRef<Msg>,
        (client, schema, key): Self::Arguments,
    ) -> Result<NaiveState, ActorProcessingErr> {
        // Prepared once, as a careful hand-written actor would.
        let (upsert, insert, delete) = {
            let c = client.lock().await;
            (
                c.prepare(&format!(
                    "INSERT INTO {schema}.states (key, bytes) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET bytes = EXCLUDED.bytes"
                ))
                .await?,
                c.prepare(&format!(
                    "INSERT INTO {schema}.ops (key, seq, bytes) VALUES ($1, $2, $3)"
                ))
                .await?,
                c.prepare(&format!(
                    "DELETE FROM {schema}.ops WHERE key = $1 AND seq = $2"
                ))
                .await?,
            )
        };
        Ok(NaiveState {
            client,
            upsert,
            insert,
            delete,
            key,
            account: Account::new(ROW_PAD),
            seq: 0,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        msg: Msg,
        st: &mut NaiveState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(NaiveWrite {
            port,
            next,
            n,
            state_row,
            op_row,
        }) = NaiveWrite::of(msg, &st.account)?
        else {
            return Ok(());
        };
        let mut client = st.client.lock().await;
        let txn = client.transaction().await?;
        txn.execute(&st.upsert, &[&st.key, &state_row]).await?;
        txn.execute(&st.insert, &[&st.key, &st.seq, &op_row])
            .await?;
        if st.seq > 0 {
            txn.execute(&st.delete, &[&st.key, &(st.seq - 1)]).await?;
        }
        txn.commit().await?;
        drop(client);
        st.account = next;
        st.seq += 1;
        let _ = port.send(n);
        Ok(())
    }
}
