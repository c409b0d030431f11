//! Exporting ractor-persist's metrics to Prometheus (see docs/observability.md).
//!
//! The library records its metrics through the `metrics` facade and installs no recorder:
//! this example installs `metrics-exporter-prometheus`'s, *before* building the `Storage`
//! (metric handles taken before a recorder is installed stay no-ops). Then four accounts on a
//! redb file in a temporary directory take deposits, concurrently, so that the group commit
//! writes several of them per transaction. Each deposit pushes a notification (an operation);
//! the notification of a deposit of 13 asks to be retried, every time, so with a policy of two
//! attempts it is retried once and then becomes a dead letter.
//!
//! It then serves `GET /metrics` on 127.0.0.1 (a port the system picks) from a few lines of
//! `std::net` on a thread, scrapes itself with a real HTTP request, and prints the
//! `ractor_persist_` lines of the scrape. It exits non-zero if the scrape lacks the commit
//! counters, the dead letter or the retry. Run with `cargo run --example metrics`.
//!
//! With `METRICS_TRACE=1` it also installs `tracing-subscriber`'s `fmt` layer, filtered to the
//! library's target (`ractor_persist`) at DEBUG, which prints on stderr each span when it
//! closes (with every field, outcome included) and each event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ractor::{Actor, call};
use ractor_persist::prelude::*;
use ractor_persist::{RetryPolicy, Start};
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default, Persistent)]
#[persistent(name = "account")]
struct Account;

/// The notification a deposit sends (its `perform` would tell the customer).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Notify {
    amount: u64,
}

enum AccountMsg {
    /// Adds to the balance; replies with the new balance and how its notification ends.
    Deposit(u64, RpcReplyPort<(u64, Settlement)>),
    Persist(Control<Notify>),
}

impl PersistentActor for Account {
    type Msg = AccountMsg;
    type State = u64;
    type Op = Notify;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AccountMsg,
        balance: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        if let AccountMsg::Deposit(amount, reply) = msg {
            *balance += amount;
            let id = tx.push(Notify { amount })?;
            let settled = tx.settlement(&id);
            tx.reply(reply, (*balance, settled));
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Notify>, _: &u64) -> Result<Outcome, ActorProcessingErr> {
        // The customer's phone is off for unlucky amounts.
        Ok(if op.op().amount == 13 {
            Outcome::Retry
        } else {
            Outcome::Done
        })
    }

    fn control(msg: AccountMsg) -> Result<Control<Notify>, AccountMsg> {
        match msg {
            AccountMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<Notify>) -> Option<AccountMsg> {
        Some(AccountMsg::Persist(c))
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::var_os("METRICS_TRACE").is_some() {
        use tracing_subscriber::filter::Targets;
        use tracing_subscriber::fmt::format::FmtSpan;
        use tracing_subscriber::prelude::*;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_span_events(FmtSpan::CLOSE)
            .without_time()
            .with_filter(Targets::new().with_target("ractor_persist", tracing::Level::DEBUG));
        tracing_subscriber::registry().with(fmt).init();
    }
    // First the recorder: the storage and the actors take their metric handles from it.
    // Durations as Prometheus histograms (buckets in seconds), batch sizes too; without
    // buckets the exporter renders histograms as summaries.
    let seconds = [
        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];
    let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(
            Matcher::Full("ractor_persist_commit_batch_size".into()),
            &batch,
        )?
        .install_recorder()?;

    let dir = tempfile::tempdir()?;
    let storage = Storage::new(RedbStore::open(dir.path().join("bank.redb"))?);
    let policy = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 2)?;
    let mut accounts = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let start = Start::new(&storage, name, ()).retry_policy(policy);
        let (account, _) = Actor::spawn(None, Account, start).await?;
        accounts.push(account);
    }
    // Five deposits to each account, the four accounts at once.
    let mut tasks = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let account = account.clone();
        tasks.push(tokio::spawn(async move {
            let mut settled = Vec::new();
            for n in 1..=5u64 {
                // Carol's third deposit is the unlucky one.
                let amount = if i == 2 && n == 3 { 13 } else { n * 10 };
                let (_, settlement) = call!(account, AccountMsg::Deposit, amount)?;
                settled.push(settlement.await);
            }
            Ok::<_, Error>(settled)
        }));
    }
    let mut dead = 0;
    for task in tasks {
        dead += task
            .await??
            .iter()
            .filter(|s| **s == Settled::DeadLetter)
            .count();
    }
    if dead != 1 {
        return Err(format!("expected one dead letter, saw {dead}").into());
    }

    let addr = serve(handle)?;
    let body = scrape(addr)?;
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.contains("ractor_persist_"))
        .collect();
    println!(
        "GET http://{addr}/metrics ({} lines of ractor_persist_):",
        lines.len()
    );
    for line in &lines {
        println!("{line}");
    }
    for needed in [
        "ractor_persist_commits_total{",
        "ractor_persist_commit_bytes_total{",
        "ractor_persist_commit_duration_seconds_bucket{",
        "ractor_persist_dead_letters{namespace=\"account\"} 1",
        "ractor_persist_dead_letters_total{namespace=\"account\"} 1",
        "ractor_persist_retries_total{namespace=\"account\"} 1",
    ] {
        if !lines.iter().any(|l| l.starts_with(needed)) {
            return Err(format!("the scrape has no `{needed}` line").into());
        }
    }

    for account in accounts {
        account.stop_and_wait(None, None).await?;
    }
    storage.close().await?;
    println!("metrics: the scrape has the commit, retry and dead-letter metrics");
    Ok(())
}

/// Serves `GET /metrics` (the exporter's rendering) on 127.0.0.1, on a thread of its own;
/// returns the address. Anything else gets a 404.
fn serve(handle: PrometheusHandle) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // One bad connection must not stop the server.
            let _ = respond(stream, &handle);
        }
    });
    Ok(addr)
}

/// Answers one HTTP/1.1 request and closes the connection.
fn respond(stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers, up to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let (status, body) = if request.starts_with("GET /metrics ") {
        // Upkeep drains the histograms' recent values into what is rendered.
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", String::from("not found\n"))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// `GET /metrics` from `addr`, as Prometheus would; the body of a 200 answer.
fn scrape(addr: SocketAddr) -> Result<String, Error> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or("the answer has no header")?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("the scrape failed: {head}").into());
    }
    Ok(body.to_owned())
}
