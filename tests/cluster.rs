//! Two persistent actors on two ractor_cluster nodes, in two OS processes on loopback, each
//! node with its own storage: `a` (in this process) sends transfers to `b` (in a child
//! process, this test binary run again) with `tx.send`. Both nodes' storages are on the same
//! PostgreSQL database (the shared test server; redb files of their own without one). The link is cut and restored, and
//! later `b`'s process is killed and started again: the messages pending for `b`'s node are
//! sent again when its session is ready again (`cluster`'s reconnect wake, by node name), and
//! the totals stay exact: every transfer credited once, none lost, none twice.
//!
//! The redelivery timer is an hour, so within the test's deadlines only the reconnect wake
//! can bring a message that the cut or the kill stranded. Built only with the `cluster`
//! feature (`cargo test --features cluster --test cluster`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call, call_t};
use ractor_cluster::{NodeServer, NodeServerMessage};
use ractor_persist::cluster::{ClusterCourier, locate, ractor_cluster};
use ractor_persist::{
    ActorKey, Control, DecodeReason, Inbound, OpId, Persistent, PersistentActor, PostgresOptions,
    PostgresStore, RedbStore, Redelivery, Settled, Settlement, Start, Storage, StorageConfig, Tx,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// The actor

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Book {
    balance: u64,
    /// Transfers sent from here, by id.
    sent: Vec<u64>,
    /// Transfers credited here: (id, amount), in the order applied.
    credited: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Credit {
    transfer: u64,
    amount: u64,
}

enum LedgerMsg {
    /// Debits `amount` and sends it to ledger `to`; replies with how the message ends.
    Transfer {
        transfer: u64,
        to: String,
        amount: u64,
        reply: RpcReplyPort<(OpId, Settlement)>,
    },
    Credit(Credit),
    Get(RpcReplyPort<Book>),
    Persist(Control<()>),
}

// ractor_cluster turns on ractor's `cluster` feature: each message type says it is one.
impl ractor::Message for LedgerMsg {}

#[derive(Default, Persistent)]
#[persistent(name = "ledger")]
struct Ledger;

impl PersistentActor for Ledger {
    type Msg = LedgerMsg;
    type State = Book;
    type Op = ();
    type Arguments = u64;

    async fn init(&self, opening: u64) -> Result<Book, ActorProcessingErr> {
        Ok(Book {
            balance: opening,
            ..Book::default()
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: LedgerMsg,
        book: &mut Book,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LedgerMsg::Transfer {
                transfer,
                to,
                amount,
                reply,
            } => {
                book.balance -= amount;
                book.sent.push(transfer);
                let id = tx.send_to::<Ledger, _>(&to, &Credit { transfer, amount })?;
                let settlement = tx.settlement(&id);
                tx.reply(reply, (id, settlement));
            }
            LedgerMsg::Credit(credit) => {
                book.balance += credit.amount;
                book.credited.push((credit.transfer, credit.amount));
            }
            LedgerMsg::Get(reply) => tx.reply(reply, book.clone()),
            LedgerMsg::Persist(_) => {}
        }
        Ok(())
    }

    fn control(msg: LedgerMsg) -> Result<Control<()>, LedgerMsg> {
        match msg {
            LedgerMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<()>) -> Option<LedgerMsg> {
        Some(LedgerMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<LedgerMsg, DecodeReason> {
        Ok(LedgerMsg::Credit(msg.decode()?))
    }
}

fn ledger(key: &str) -> ActorKey {
    ActorKey::new("ledger", key)
}

// ---------------------------------------------------------------------------------------------
// A node

/// Each node's storage, on `courier`. The one place that says where the records live: on
/// the PostgreSQL database both nodes share (`dir/postgres` holds `SCHEMA@CONNECTION`, written
/// by the test when a server is available), else on a redb file of the node's own.
fn storage(dir: &Path, node: &str, courier: &ClusterCourier) -> Storage {
    let config = StorageConfig::default().with_courier(courier.clone());
    match std::fs::read_to_string(dir.join("postgres")) {
        Ok(spec) => {
            let (schema, params) = spec.split_once('@').expect("SCHEMA@CONNECTION");
            let options = PostgresOptions::new(params)
                .expect("options")
                .schema(schema);
            Storage::with_config(
                PostgresStore::open(options).expect("open the store"),
                config,
            )
        }
        Err(_) => {
            let store = RedbStore::open(dir.join(format!("{node}.redb"))).expect("open the store");
            Storage::with_config(store, config)
        }
    }
}

/// Makes both nodes share a schema on the PostgreSQL test server, when there is one.
fn share_postgres(dir: &Path) {
    if let Some(server) = persist_postgres::TestCluster::shared() {
        let schema = server.options().schema_name().to_owned();
        std::fs::write(
            dir.join("postgres"),
            format!("{schema}@{}", server.params()),
        )
        .unwrap();
    }
}

const COOKIE: &str = "ractor-persist-cluster-test";
const HOST: &str = "127.0.0.1";
const OPENING: u64 = 1_000_000;
/// Nothing is posted again by the timer within the test: only the reconnect wake can bring
/// a stranded message.
const SLOW: Duration = Duration::from_secs(3600);
/// Turns "never" into a failure instead of a hang; not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    server: ActorRef<NodeServerMessage>,
    storage: Storage,
}

/// Starts a node: its storage, its node server on `port` (0: any), the postman, and the
/// ledger `key`.
async fn node(dir: &Path, name: &str, port: u16, key: &str) -> (Node, ActorRef<LedgerMsg>) {
    let courier = ClusterCourier::new();
    let storage = storage(dir, name, &courier);
    let server = NodeServer::new(port, COOKIE.into(), name.into(), HOST.into(), None, None);
    let (server, _) = Actor::spawn(None, server, ()).await.expect("node server");
    courier.start(&storage, &server).await.expect("postman");
    let start =
        Start::<Ledger>::new(&storage, key, OPENING).redelivery(Redelivery::new(SLOW, SLOW));
    let (actor, _) = Actor::spawn(None, Ledger, start).await.expect("ledger");
    (Node { server, storage }, actor)
}

/// Polls `cond` until it holds; panics with `what` at the deadline.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn remote(key: &ActorKey) -> bool {
    locate(key).is_some_and(|cell| !cell.get_id().is_local())
}

async fn sessions(server: &ActorRef<NodeServerMessage>) -> usize {
    call_t!(server, NodeServerMessage::GetSessions, 5_000)
        .expect("sessions")
        .len()
}

// ---------------------------------------------------------------------------------------------
// Node b: this binary again, driven by lines on its stdin

const CHILD: &str = "RACTOR_PERSIST_CLUSTER_NODE_B";
const SAY: &str = "node-b:";

/// Node b when run as the child (`CHILD` = "dir|address of a"); nothing otherwise.
#[test]
fn node_b() {
    let Ok(args) = std::env::var(CHILD) else {
        return;
    };
    let (dir, peer) = args.split_once('|').expect("dir|peer");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (node, b) = node(Path::new(dir), "b", 0, "b").await;
        connect(&node, peer).await;
        while let Some(line) = lines.recv().await {
            match line.as_str() {
                "book" => {
                    let book = call!(b, LedgerMsg::Get).expect("book");
                    println!("{SAY} book {}", book_line(&book));
                }
                "connect" => connect(&node, peer).await,
                _ => break,
            }
        }
        let _ = node.storage.close().await;
    });
}

/// Dials node a (once the old session, if any, is gone) and says so when both sides see
/// each other's ledger.
async fn connect(node: &Node, peer: &str) {
    until("node b's old session closed", async || {
        sessions(&node.server).await == 0
    })
    .await;
    ractor_cluster::client_connect(&node.server, peer)
        .await
        .expect("connect to node a");
    until("node b sees ledger a", async || remote(&ledger("a"))).await;
    println!("{SAY} connected");
}

/// A book as one line: `balance;sent;credited` with comma-separated lists.
fn book_line(book: &Book) -> String {
    let sent: Vec<String> = book.sent.iter().map(u64::to_string).collect();
    let credited: Vec<String> = book
        .credited
        .iter()
        .map(|(t, a)| format!("{t}:{a}"))
        .collect();
    format!("{};{};{}", book.balance, sent.join(","), credited.join(","))
}

fn parse_book(line: &str) -> Book {
    let mut parts = line.split(';');
    let balance = parts.next().unwrap().parse().unwrap();
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let sent = list(parts.next().unwrap())
        .iter()
        .map(|x| x.parse().unwrap())
        .collect();
    let credited = list(parts.next().unwrap())
        .iter()
        .map(|x| {
            let (t, a) = x.split_once(':').unwrap();
            (t.parse().unwrap(), a.parse().unwrap())
        })
        .collect();
    Book {
        balance,
        sent,
        credited,
    }
}

/// Node b's process, seen from node a.
struct NodeB {
    child: Child,
    stdin: ChildStdin,
    said: mpsc::Receiver<String>,
}

impl NodeB {
    fn spawn(dir: &Path, peer: &str) -> NodeB {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "node_b",
                "--exact",
                "--nocapture",
                "--quiet",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{}|{peer}", dir.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node b");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, said) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(SAY) {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        NodeB { child, stdin, said }
    }

    /// Waits (off the runtime's workers) for node b to say `word`, and returns the rest.
    async fn hear(&mut self, word: &str) -> String {
        let said = &self.said;
        let line = tokio::task::block_in_place(|| said.recv_timeout(DEADLINE))
            .unwrap_or_else(|e| panic!("node b never said `{word}`: {e}"));
        line.strip_prefix(word)
            .unwrap_or_else(|| panic!("node b said `{line}`, not `{word}`"))
            .trim()
            .to_owned()
    }

    fn tell(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("tell node b");
    }

    async fn book(&mut self) -> Book {
        self.tell("book");
        parse_book(&self.hear("book").await)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeB {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The test

/// Sends transfers `ids` from `a` to `b`; returns their settlements.
async fn send(a: &ActorRef<LedgerMsg>, ids: std::ops::RangeInclusive<u64>) -> Vec<Settlement> {
    let mut settlements = Vec::new();
    for transfer in ids {
        let (_, settlement) = call!(a, |reply| LedgerMsg::Transfer {
            transfer,
            to: "b".to_owned(),
            amount: transfer,
            reply,
        })
        .expect("transfer");
        settlements.push(settlement);
    }
    settlements
}

async fn delivered(settlements: Vec<Settlement>, what: &str) {
    for settlement in settlements {
        let settled = tokio::time::timeout(DEADLINE, settlement.wait())
            .await
            .unwrap_or_else(|_| panic!("never delivered: {what}"));
        assert_eq!(settled, Settled::Delivered, "{what}");
    }
}

/// What b must hold after transfers 1..=n, each once and in order.
fn credited(n: u64) -> Vec<(u64, u64)> {
    (1..=n).map(|t| (t, t)).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((HOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_messages_are_sent_again_when_the_peer_node_is_back_and_totals_stay_exact() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    share_postgres(dir.path());
    let port = free_port();
    let peer = format!("{HOST}:{port}");
    let (node_a, a) = node(dir.path(), "a", port, "a").await;
    let b_key = ledger("b");

    let mut b = NodeB::spawn(dir.path(), &peer);
    b.hear("connected").await;
    until("node a sees ledger b", async || remote(&b_key)).await;

    // 1. The link is up: ten transfers arrive.
    delivered(send(&a, 1..=10).await, "over a live link").await;
    assert_eq!(b.book().await.credited, credited(10));

    // 2. The link is cut (node a closes its session), and ten more are sent meanwhile: they
    //    are committed on a's side and cannot be carried.
    let sessions = call_t!(node_a.server, NodeServerMessage::GetSessions, 5_000).unwrap();
    assert_eq!(sessions.len(), 1, "one session, to node b");
    for session in sessions.values() {
        session.actor.stop(Some("cut".into()));
    }
    until("node a lost ledger b", async || locate(&b_key).is_none()).await;
    let stranded = send(&a, 11..=20).await;
    assert_eq!(
        b.book().await.credited,
        credited(10),
        "nothing crossed the cut"
    );

    // 3. The link is back: the session's readiness brings the ten stranded messages.
    b.tell("connect");
    b.hear("connected").await;
    delivered(stranded, "sent during the cut").await;
    assert_eq!(b.book().await.credited, credited(20));

    // 4. Node b's process is killed while transfers are on their way (some applied, some
    //    lost with the link, some acknowledged and some not), ten more are sent while it is
    //    down, and it starts again from its store: a new process, a new connection, the
    //    same node name.
    let in_flight = send(&a, 21..=40).await;
    b.kill();
    drop(b);
    until("node a lost ledger b", async || locate(&b_key).is_none()).await;
    let while_down = send(&a, 41..=50).await;
    let mut b = NodeB::spawn(dir.path(), &peer);
    b.hear("connected").await;
    delivered(in_flight, "on their way when node b was killed").await;
    delivered(while_down, "sent while node b was down").await;

    // Exact totals: every transfer credited once, in order; debits and credits balance.
    let book_b = b.book().await;
    assert_eq!(book_b.credited, credited(50), "each once, none lost");
    let total: u64 = (1..=50).sum();
    assert_eq!(book_b.balance, OPENING + total);
    let book_a = call!(a, LedgerMsg::Get).unwrap();
    assert_eq!(book_a.sent, (1..=50).collect::<Vec<_>>());
    assert_eq!(book_a.balance, OPENING - total);
    b.tell("quit");
    a.stop_and_wait(None, None).await.unwrap();
    node_a.storage.close().await.unwrap();
}
