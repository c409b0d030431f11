//! The torture program of the kill -9 loop: many persistent actors under load on one store
//! (redb, or SQLite), printing one line for every reply received and every operation
//! performed, so that a driver that kills the process at any moment can check the history
//! afterwards.
//!
//! Run with `cargo run --example torture -- PATH [SEED] [ACTORS] [--check] [--backend B]`: it
//! recovers every actor from the store at PATH (a `RedbStore`, or with `--backend sqlite` a
//! `SqliteStore`), prints what it found, then loads them until it is killed (`--check` stops
//! after the recovery). `tests/crash_kill_loop.rs` is the driver; it runs this same code in a
//! child process, kills it with SIGKILL and checks each restart.
//!
//! Each actor holds a [`Tally`]: how many values it appended and a hash chain over them, so a
//! recovered state names exactly which prefix of the values sent it holds. Each append pushes
//! one operation; every third is kept until a later append confirms it, the others are done
//! once performed.
//!
//! Lines (one per event, flushed as written):
//!
//! ```text
//! STATE <actor> <len> <chain>         recovered state, printed after the actor's replays
//! PERF <actor> <idx> <value> <kept>   an operation was performed (replays included)
//! READY                               recovery is over, the load starts
//! SEND <actor> <idx> <value>          about to send append number idx
//! ACK <actor> <idx> <len> <chain>     the reply for append idx: it is committed
//! ```

use std::io::Write;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    Outcome, Pending, Persistent, PersistentActor, RedbStore, SqliteStore, Start, Storage, Tx,
};
use serde::{Deserialize, Serialize};

/// An actor's durable state: the number of values appended and a hash chain over them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub len: u64,
    pub chain: u64,
}

impl Tally {
    /// The state after appending `value`.
    pub fn then(self, value: u64) -> Tally {
        Tally {
            len: self.len + 1,
            chain: mix(self.chain ^ value),
        }
    }

    /// The state after appending `values` to the first state.
    pub fn of(values: &[u64]) -> Tally {
        values.iter().fold(Tally::default(), |t, v| t.then(*v))
    }
}

/// The operation each append pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The index of the append that pushed it (equal to its sequence number).
    pub idx: u64,
    pub value: u64,
    /// Kept until an append two or more later confirms it.
    pub kept: bool,
}

/// Whether append `idx` pushes a kept operation.
pub fn kept(idx: u64) -> bool {
    idx.is_multiple_of(3)
}

/// The kept operations pending after `len` appends: those not yet confirmed.
pub fn kept_pending(len: u64) -> Vec<u64> {
    (len.saturating_sub(2)..len).filter(|i| kept(*i)).collect()
}

pub enum TallyMsg {
    Append(u64, RpcReplyPort<Tally>),
    Peek(RpcReplyPort<Tally>),
}

/// A function told of each performed operation, with the actor's key.
pub type Report = Arc<dyn Fn(&str, Note) + Send + Sync>;

/// Where performed operations are reported.
#[derive(Clone)]
pub enum Sink {
    /// One `PERF` line on stdout.
    Stdout,
    /// Handed to a function with the actor's key (for in-process tests).
    Call(Report),
}

#[derive(Clone, Persistent)]
#[persistent(name = "tally")]
pub struct TallyActor {
    pub sink: Sink,
}

impl PersistentActor for TallyActor {
    type Msg = TallyMsg;
    type State = Tally;
    type Op = Note;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Tally, ActorProcessingErr> {
        Ok(Tally::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: TallyMsg,
        tally: &mut Tally,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TallyMsg::Append(value, reply) => {
                let idx = tally.len;
                *tally = tally.then(value);
                tx.push(Note {
                    idx,
                    value,
                    kept: kept(idx),
                })?;
                tx.confirm_where(|p| p.op().kept && p.op().idx + 2 <= idx);
                tx.reply(reply, *tally);
            }
            TallyMsg::Peek(reply) => tx.reply(reply, *tally),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Note>, _: &Tally) -> Result<Outcome, ActorProcessingErr> {
        let note = *op.op();
        let actor = op.id().actor().key();
        match &self.sink {
            Sink::Stdout => line(format_args!(
                "PERF {actor} {} {} {}",
                note.idx, note.value, note.kept
            )),
            Sink::Call(f) => f(actor, note),
        }
        Ok(if note.kept {
            Outcome::KeepUntilConfirmed
        } else {
            Outcome::Done
        })
    }
}

/// A 64-bit mixer (splitmix64's finaliser): the hash chain and the values.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of actor number `i`.
pub fn actor_key(i: usize) -> String {
    format!("a{i}")
}

/// Writes one line to stdout and flushes it, so a kill loses no line already written.
fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the driver is gone; there is no one left to tell.
    let _ = out.write_fmt(format_args!("{args}\n"));
    let _ = out.flush();
}

/// The store the actors run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Redb,
    Sqlite,
}

impl Backend {
    /// The backend's name, as `--backend` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Sqlite => "sqlite",
        }
    }

    /// Opens (or creates) the store at `path`.
    pub fn open(
        self,
        path: &std::path::Path,
    ) -> Result<Storage, Box<dyn std::error::Error + Send + Sync>> {
        Ok(match self {
            Backend::Redb => Storage::new(RedbStore::open(path)?),
            Backend::Sqlite => Storage::new(SqliteStore::open(path)?),
        })
    }
}

/// What one run does.
pub struct Options {
    pub path: std::path::PathBuf,
    pub seed: u64,
    pub actors: usize,
    /// Stop after the recovery instead of loading until killed.
    pub check: bool,
    pub backend: Backend,
}

impl Options {
    /// Reads `PATH [SEED] [ACTORS] [--check] [--backend redb|sqlite]`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let usage = "usage: torture PATH [SEED] [ACTORS] [--check] [--backend redb|sqlite]";
        let mut check = false;
        let mut backend = Backend::Redb;
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--check" => check = true,
                "--backend" => {
                    backend = match args.next().as_deref() {
                        Some("redb") => Backend::Redb,
                        Some("sqlite") => Backend::Sqlite,
                        _ => return Err(usage.into()),
                    }
                }
                _ => rest.push(a),
            }
        }
        let mut rest = rest.into_iter();
        let path = rest.next().ok_or(usage)?.into();
        let seed = rest
            .next()
            .map_or(Ok(1), |s| s.parse())
            .map_err(|_| usage)?;
        let actors = rest
            .next()
            .map_or(Ok(8), |s| s.parse())
            .map_err(|_| usage)?;
        Ok(Options {
            path,
            seed,
            actors,
            check,
            backend,
        })
    }
}

/// Recovers every actor, prints what it found, then appends to all of them until killed.
pub async fn run(opts: Options) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let storage = opts.backend.open(&opts.path)?;
    let mut actors: Vec<(String, ActorRef<TallyMsg>)> = Vec::new();
    for i in 0..opts.actors {
        let key = actor_key(i);
        let actor = TallyActor { sink: Sink::Stdout };
        let (r, _) = Actor::spawn(None, actor, Start::new(&storage, key.clone(), ())).await?;
        actors.push((key, r));
    }
    // Replays run in each actor's post_start, which ends before the actor handles a message.
    let mut recovered = Vec::new();
    for (key, r) in &actors {
        let t = call!(r, TallyMsg::Peek)?;
        line(format_args!("STATE {key} {} {}", t.len, t.chain));
        recovered.push(t);
    }
    line(format_args!("READY"));
    if opts.check {
        for (_, r) in actors {
            r.stop_and_wait(None, None).await?;
        }
        storage.close().await?;
        return Ok(());
    }
    let mut clients = Vec::new();
    for (i, ((key, r), t)) in actors.into_iter().zip(recovered).enumerate() {
        let seed = mix(opts.seed ^ mix(i as u64));
        clients.push(tokio::spawn(append_forever(key, r, t.len, seed)));
    }
    for c in clients {
        c.await??;
    }
    Ok(())
}

/// One client: appends to one actor, one value at a time, from append number `idx` on.
async fn append_forever(
    key: String,
    actor: ActorRef<TallyMsg>,
    mut idx: u64,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    loop {
        let value = mix(seed ^ idx);
        line(format_args!("SEND {key} {idx} {value}"));
        let t = call!(actor, TallyMsg::Append, value)?;
        line(format_args!("ACK {key} {idx} {} {}", t.len, t.chain));
        idx += 1;
    }
}

#[allow(dead_code)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let opts = Options::parse(std::env::args().skip(1))?;
    run(opts).await
}
