//! Actors that move between nodes: two OS processes, each with its own `Storage` on the same
//! PostgreSQL database (the shared throwaway server), run as children of this test binary.
//!
//! - The same key spawned on both: exactly one writer wins, the other is fenced and stops,
//!   and the log the key holds is the first writer's acknowledged appends followed by the
//!   second's: no two writers' changes interleave.
//! - An actor moved from node A to node B after A was killed with SIGKILL (or stopped): B's
//!   instance has the last committed state and performs every pending op.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

use persist_postgres::TestCluster;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, call};
use ractor_persist::{
    Outcome, Pending, PersistentActor, PostgresOptions, PostgresStore, Start, Storage, Tx,
};

/// The environment variable that makes this binary a node: `SCHEMA|PARAMS|KEY|NODE|N`.
const NODE: &str = "SCALE_OUT_NODE";

/// An actor whose state is the log of what was appended, by which node; each append pushes
/// an op kept until confirmed (so every one is pending when the actor moves).
#[derive(ractor_persist::Persistent)]
#[persistent(name = "scale_log")]
struct LogActor {
    node: String,
}

enum LogMsg {
    Append(u64, RpcReplyPort<usize>),
    Read(RpcReplyPort<Vec<(String, u64)>>),
}

impl PersistentActor for LogActor {
    type Msg = LogMsg;
    type State = Vec<(String, u64)>;
    type Op = (String, u64);
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: LogMsg,
        log: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LogMsg::Append(n, reply) => {
                log.push((self.node.clone(), n));
                tx.push((self.node.clone(), n))?;
                tx.reply(reply, log.len());
            }
            LogMsg::Read(reply) => tx.reply(reply, log.clone()),
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<(String, u64)>,
        _: &Self::State,
    ) -> Result<Outcome, ActorProcessingErr> {
        let (by, n) = op.op();
        println!("PERFORMED {} {by} {n}", op.id().seq());
        Ok(Outcome::KeepUntilConfirmed)
    }
}

/// Prints why the actors it supervises stopped, as `FAILED <error>`.
struct Watcher;

impl Actor for Watcher {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, e) = event {
            println!("FAILED {}", e.to_string().replace('\n', " "));
        }
        Ok(())
    }
}

/// Runs as a node when this binary is started by one of the tests below: opens a storage on
/// the schema, spawns the log actor of the key (printing `STARTED <entries>` and a
/// `PERFORMED` line for every op it performs, replays included), then appends 1..=N,
/// printing `ACK i` for each, until done (`DONE`) or refused (`REFUSED`), and waits to be
/// killed.
#[test]
fn node_child() {
    let Ok(spec) = std::env::var(NODE) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let (schema, params, key, node) = (f[0], f[1], f[2], f[3]);
    let n: u64 = f[4].parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = PostgresOptions::new(params).unwrap().schema(schema);
        let storage = Storage::new(PostgresStore::open(options).unwrap());
        let (watcher, _) = Actor::spawn(None, Watcher, ()).await.unwrap();
        let actor = LogActor { node: node.into() };
        let (log, _) = Actor::spawn_linked(
            None,
            actor,
            Start::new(&storage, key, ()),
            watcher.get_cell(),
        )
        .await
        .unwrap();
        let state = call!(log, LogMsg::Read).unwrap();
        println!("STARTED {}", state.len());
        let mut acked = 0;
        for i in 1..=n {
            match call!(log, LogMsg::Append, i) {
                Ok(_) => {
                    acked = i;
                    println!("ACK {i}");
                }
                Err(_) => break,
            }
        }
        println!("{} {acked}", if acked == n { "DONE" } else { "REFUSED" });
        // Wait to be killed, or for the parent to close stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    });
}

struct Node {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    fn start(server: &TestCluster, schema: &str, key: &str, node: &str, n: u64) -> Node {
        let spec = [schema, &server.params(), key, node, &n.to_string()].join("|");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "node_child",
                "--exact",
                "--nocapture",
                "--quiet",
                "--test-threads=1",
            ])
            .env(NODE, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Node { child, lines }
    }

    /// The next line starting with `prefix`, without it, skipping others; panics if the
    /// node ends first.
    fn expect(&mut self, prefix: &str) -> String {
        self.until(prefix).1
    }

    /// Every line up to (and without) the first starting with `prefix`, and that line
    /// without the prefix.
    fn until(&mut self, prefix: &str) -> (Vec<String>, String) {
        let (before, line) = self.until_line(|l| l.starts_with(prefix));
        (before, line[prefix.len()..].trim().to_owned())
    }

    /// Every line up to the node's last (`DONE n` or `REFUSED n`), and that line.
    fn until_end(&mut self) -> (Vec<String>, String) {
        self.until_line(|l| l.starts_with("DONE ") || l.starts_with("REFUSED "))
    }

    /// Every line up to (and without) the first that `last` picks, and that line.
    fn until_line(&mut self, last: impl Fn(&str) -> bool) -> (Vec<String>, String) {
        let mut before = Vec::new();
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if last(&line) {
                return (before, line);
            }
            before.push(line);
        }
        panic!("the node ended before the line awaited; it printed {before:?}");
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log `key` holds, read by this process through a storage of its own.
fn stored_log(server: &TestCluster, schema: &str, key: &str) -> Vec<(String, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let storage = Storage::new(PostgresStore::open(server.options_in(schema)).unwrap());
        let actor = LogActor {
            node: "reader".into(),
        };
        let (log, _) = Actor::spawn(None, actor, Start::new(&storage, key, ()))
            .await
            .unwrap();
        let state = call!(log, LogMsg::Read).unwrap();
        log.stop_and_wait(None, None).await.unwrap();
        storage.close().await.unwrap();
        state
    })
}

fn entries(by: &str, range: std::ops::RangeInclusive<u64>) -> Vec<(String, u64)> {
    range.map(|i| (by.to_owned(), i)).collect()
}

#[test]
fn the_same_key_on_two_nodes_has_one_writer_and_their_changes_never_interleave() {
    if std::env::var(NODE).is_ok() {
        return;
    }
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let schema = server.options().schema_name().to_owned();
    // A appends (up to a bound, so that a broken fence fails the test instead of hanging
    // it); once it has 20 acknowledged, B spawns the same key.
    let mut a = Node::start(server, &schema, "shared", "A", 20_000);
    assert_eq!(a.expect("STARTED"), "0");
    a.expect("ACK 20");
    let mut b = Node::start(server, &schema, "shared", "B", 10);
    let b_found: usize = b.expect("STARTED").parse().unwrap();
    let (b_lines, b_end) = b.until_end();
    assert_eq!(
        b_end, "DONE 10",
        "B, the newer instance, writes: {b_lines:?}"
    );
    // A's next commit after B's load is fenced: A's actor stops with the fence.
    let (a_lines, end) = a.until_end();
    let a_acked: u64 = end
        .strip_prefix("REFUSED ")
        .unwrap_or_else(|| panic!("A was never fenced: it ended with {end:?}"))
        .parse()
        .unwrap();
    let failed = a_lines
        .iter()
        .find_map(|l| l.strip_prefix("FAILED "))
        .map(str::to_owned)
        .unwrap_or_else(|| a.expect("FAILED"));
    assert!(
        failed.contains("epoch") && failed.contains("stale"),
        "A was fenced: {failed}"
    );
    a.kill();
    b.kill();
    // B loaded A's acknowledged appends (all of them: the fence let none of A's land after
    // B's load), then wrote its own; nothing of A's comes after anything of B's.
    let log = stored_log(server, &schema, "shared");
    let mut expected = entries("A", 1..=a_acked);
    expected.extend(entries("B", 1..=10));
    assert_eq!(
        b_found as u64, a_acked,
        "B started from A's last acknowledged state"
    );
    assert_eq!(log, expected, "one writer at a time, A's prefix then B's");
    println!("two writers: A acknowledged {a_acked} then was fenced; B wrote 10 after them");
}

#[test]
fn an_actor_moved_to_another_node_after_a_sigkill_has_its_state_and_performs_its_pending_ops() {
    if std::env::var(NODE).is_ok() {
        return;
    }
    let Some(server) = TestCluster::shared() else {
        return;
    };
    let schema = server.options().schema_name().to_owned();
    for (round, kill) in [(1, true), (2, false)] {
        let key = format!("mover{round}");
        let mut a = Node::start(server, &schema, &key, "A", 12);
        let (_, end) = a.until_end();
        assert_eq!(end, "DONE 12");
        if kill {
            a.kill(); // SIGKILL
        } else {
            drop(a.child.stdin.take()); // A stops on its own
            a.child.wait().unwrap();
        }
        let mut b = Node::start(server, &schema, &key, "B", 3);
        let (replays, found) = b.until("STARTED");
        assert_eq!(found, "12", "B has A's last committed state");
        // Every append of A pushed an op kept until confirmed: B performs all 12 again.
        let performed: Vec<String> = replays
            .iter()
            .filter_map(|l| l.strip_prefix("PERFORMED "))
            .map(|l| l.split(' ').skip(1).collect::<Vec<_>>().join(" "))
            .collect();
        let expected: Vec<String> = (1..=12).map(|i| format!("A {i}")).collect();
        assert_eq!(performed, expected, "B performs A's pending ops, in order");
        let (_, end) = b.until_end();
        assert_eq!(end, "DONE 3");
        b.kill();
        let log = stored_log(server, &schema, &key);
        let mut expected = entries("A", 1..=12);
        expected.extend(entries("B", 1..=3));
        assert_eq!(log, expected);
    }
}
