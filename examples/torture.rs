//! The torture program of the kill -9 loop: many persistent actors under load on one store
//! (redb, or SQLite), printing one line for every reply received and every operation
//! performed, so that a driver that kills the process at any moment can check the history
//! afterwards.
//!
//! Run with `cargo run --example torture -- PATH [SEED] [ACTORS] [--check] [--backend B]
//! [--model M] [--accounts N] [--bank-base ID] [--resend SPEC]...`: it recovers every actor
//! from the store at PATH (a `RedbStore`; with `--backend sqlite` a `SqliteStore`; with
//! `--backend postgres` a `PostgresStore`, PATH being `SCHEMA@CONNECTION-STRING`), prints
//! what it found, then loads them until it is killed (`--check` stops after the recovery).
//! `tests/crash_kill_loop.rs` is the driver; it runs this same code in a child process, kills
//! it with SIGKILL and checks each restart.
//!
//! Each actor holds a [`Tally`]: how many values it appended and a hash chain over them, so a
//! recovered state names exactly which prefix of the values sent it holds. Each append pushes
//! one operation; every third is kept until a later append confirms it, the others are done
//! once performed.
//!
//! `--model snapshot` (the default) runs them as [`TallyActor`]s, whose state is committed
//! whole; `--model events` as [`EventTallyActor`]s, event-sourced twins (same messages, state,
//! operations and lines) whose state changes only by events (the appended values), with a
//! snapshot every [`EVENT_SNAPSHOT_EVERY`] events, so kills come mid-snapshot, and
//! [`event_retention`] alternating by actor: the even ones keep their events
//! (`Retention::Full`), the odd ones compact them (`Retention::Light`), so kills also come
//! mid-compaction. With `--model events` the accounts are event-sourced too
//! ([`EventAccount`]: each deposit, debit, credit and prune an [`AccountEvent`], the same
//! snapshots and retention), so the bank's checks hold for event-sourced accounts that send to
//! each other, answer idempotent requests and crash between commit and acknowledgement.
//!
//! Beside them, `--accounts N` (default 8) [`Account`]s move money to each other with
//! `Tx::send`: two clients send deposits and transfers between random accounts, each with an
//! id of its own (from `--bank-base` on; deposit ids and transfer ids are also the requests'
//! idempotency keys), and first send again the requests named by `--resend` (a restarted
//! client repeating what it sent before). With `--check`, the accounts are brought to rest
//! (every credit message settled), their ledgers are printed and emptied (the balances stay:
//! a ledger lists what was applied since the last check), and after the store is closed the
//! outbox rows left are counted.
//!
//! Lines (one per event, flushed as written):
//!
//! ```text
//! STATE <actor> <len> <chain>         recovered state, printed after the actor's replays
//! PERF <actor> <idx> <value> <kept>   an operation was performed (replays included)
//! READY                               recovery is over, the load starts
//! SEND <actor> <idx> <value>          about to send append number idx
//! ACK <actor> <idx> <len> <chain>     the reply for append idx: it is committed
//!
//! DSEND <id> <account> <amount>           about to send deposit id (maybe again)
//! DACK <id> ok <balance>                  its reply: applied, the balance after it
//! DACK <id> refused <why>                 its reply: refused
//! TSEND <id> <from> <to> <amount>         about to send transfer id (maybe again)
//! TACK <id> ok <message>                  its reply: debited, the credit message's number
//! TACK <id> refused <why>                 its reply: refused (insufficient funds)
//! BANKERR <error>                         a bank client failed
//!
//! With --check, after READY:
//! UNSETTLED <account> <message> <how>     a credit message not acknowledged in time
//! BAL <account> <balance>                 the ledger of each account at rest:
//! DEP <account> <request> <amount>          a deposit applied
//! DEB <account> <transfer> <amount> <message> a transfer debited, and its credit message
//! CRED <account> <transfer> <amount>        a transfer credited
//! OUTBOX <rows>                           outbox rows left in the closed store
//! BANKDONE                                the bank check is over
//!
//! With --check and --model events, after READY:
//! JOURNAL <actor> <rows> <first> <last>   the events left in the closed store (their ids;
//!                                         0 0 for none)
//! ```

use std::io::Write;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorKey, Control, DecodeReason, EventSourced, Inbound, Once, OpId, Outcome, Pending,
    Persistent, PersistentActor, PostgresOptions, PostgresStore, RedbStore, Redelivery, Retention,
    Settled, Settlement, Space, SqliteStore, Start, Storage, Store, StoreError, Tx,
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
                appended(tx, idx, value, *tally, reply)?;
            }
            TallyMsg::Peek(reply) => tx.reply(reply, *tally),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Note>, _: &Tally) -> Result<Outcome, ActorProcessingErr> {
        Ok(performed(&self.sink, op))
    }
}

/// What append number `idx` does besides changing the state, in either model: pushes its
/// operation, confirms the kept ones two or more appends old, replies with the new state.
fn appended<A: PersistentActor<Op = Note>>(
    tx: &mut Tx<'_, A>,
    idx: u64,
    value: u64,
    tally: Tally,
    reply: RpcReplyPort<Tally>,
) -> Result<(), ActorProcessingErr> {
    tx.push(Note {
        idx,
        value,
        kept: kept(idx),
    })?;
    tx.confirm_where(|p| p.op().kept && p.op().idx + 2 <= idx);
    tx.reply(reply, tally);
    Ok(())
}

/// Reports a performed operation to `sink`; a kept one stays until confirmed.
fn performed(sink: &Sink, op: &Pending<Note>) -> Outcome {
    let note = *op.op();
    let actor = op.id().actor().key();
    match sink {
        Sink::Stdout => line(format_args!(
            "PERF {actor} {} {} {}",
            note.idx, note.value, note.kept
        )),
        Sink::Call(f) => f(actor, note),
    }
    if note.kept {
        Outcome::KeepUntilConfirmed
    } else {
        Outcome::Done
    }
}

/// The event-sourced twin of [`TallyActor`]: the same messages, state, operations and lines,
/// but the state changes only by events, each the value appended.
#[derive(Clone, Persistent)]
#[persistent(name = "tally_es", event_sourced)]
pub struct EventTallyActor {
    pub sink: Sink,
}

impl PersistentActor for EventTallyActor {
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
                tx.emit(tally, value)?;
                appended(tx, idx, value, *tally, reply)?;
            }
            TallyMsg::Peek(reply) => tx.reply(reply, *tally),
        }
        Ok(())
    }

    async fn perform(&self, op: &Pending<Note>, _: &Tally) -> Result<Outcome, ActorProcessingErr> {
        Ok(performed(&self.sink, op))
    }
}

impl EventSourced for EventTallyActor {
    /// The value appended.
    type Event = u64;

    fn apply(state: &mut Tally, value: &u64) -> Result<(), ActorProcessingErr> {
        *state = state.then(*value);
        Ok(())
    }
}

/// How many events an [`EventTallyActor`] of the torture program writes between two
/// snapshots: few, so that the kill loop kills many commits that write one.
pub const EVENT_SNAPSHOT_EVERY: u64 = 16;

/// What event-sourced actor number `i` keeps of its events: the even ones all of them, the odd
/// ones only those after the latest snapshot.
pub fn event_retention(i: usize) -> Retention {
    if i.is_multiple_of(2) {
        Retention::Full
    } else {
        Retention::Light
    }
}

/// How the tally actors keep their state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TallyModel {
    /// [`TallyActor`]: the whole state in each commit.
    #[default]
    Snapshot,
    /// [`EventTallyActor`]: events, and a snapshot every [`EVENT_SNAPSHOT_EVERY`].
    Events,
}

impl TallyModel {
    /// The namespace of the model's accounts.
    pub fn account_ns(self) -> &'static str {
        match self {
            TallyModel::Snapshot => ACCOUNT_NS,
            TallyModel::Events => EVENT_ACCOUNT_NS,
        }
    }

    /// The model's name, as `--model` takes it.
    pub fn name(self) -> &'static str {
        match self {
            TallyModel::Snapshot => "snapshot",
            TallyModel::Events => "events",
        }
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
    /// PATH is `SCHEMA@CONNECTION-STRING`.
    Postgres,
}

/// The PostgreSQL options a PATH of `SCHEMA@CONNECTION-STRING` names.
fn postgres_options(
    path: &std::path::Path,
) -> Result<PostgresOptions, Box<dyn std::error::Error + Send + Sync>> {
    let text = path.to_str().ok_or("a PostgreSQL PATH is UTF-8")?;
    let (schema, params) = text
        .split_once('@')
        .ok_or("a PostgreSQL PATH is SCHEMA@CONNECTION-STRING")?;
    Ok(PostgresOptions::new(params)?.schema(schema))
}

impl Backend {
    /// The backend's name, as `--backend` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
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
            Backend::Postgres => Storage::new(PostgresStore::open(postgres_options(path)?)?),
        })
    }

    /// The outbox rows of every account in the store at `path`, read directly from the
    /// store (closed by its `Storage` before).
    pub fn outbox_rows(
        self,
        path: &std::path::Path,
        namespace: &str,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        self.read_closed(path, |store| {
            let mut rows = 0;
            for key in store.keys(namespace, Space::OUTBOX)? {
                let key = ActorKey::new(namespace, key);
                rows += store.read(&key, Some(Space::OUTBOX), 0..=u64::MAX)?.len();
            }
            Ok(rows)
        })
    }

    /// The ids of the events each of the first `actors` [`EventTallyActor`]s holds in the store
    /// at `path`, read directly from the store (closed by its `Storage` before).
    pub fn journal_ids(
        self,
        path: &std::path::Path,
        actors: usize,
    ) -> Result<Vec<Vec<u64>>, Box<dyn std::error::Error + Send + Sync>> {
        self.read_closed(path, |store| {
            (0..actors)
                .map(|i| {
                    let key = ActorKey::new(EventTallyActor::NAME, actor_key(i));
                    let rows = store.read(&key, Some(Space::JOURNAL), 0..=u64::MAX)?;
                    Ok(rows.into_iter().map(|r| r.id).collect())
                })
                .collect()
        })
    }

    /// Opens the store at `path` itself (no `Storage`) and reads it with `f`.
    fn read_closed<T>(
        self,
        path: &std::path::Path,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
        Ok(match self {
            Backend::Redb => f(&RedbStore::open(path)?)?,
            Backend::Sqlite => f(&SqliteStore::open(path)?)?,
            Backend::Postgres => f(&PostgresStore::open(postgres_options(path)?)?)?,
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
    /// How the tally actors keep their state.
    pub model: TallyModel,
    /// How many accounts move money to each other (0: none).
    pub accounts: usize,
    /// The first id the bank clients give a new request.
    pub bank_base: u64,
    /// Requests sent before (by an earlier run) to send again first.
    pub resend: Vec<Request>,
}

impl Options {
    /// Reads `PATH [SEED] [ACTORS] [--check] [--backend redb|sqlite|postgres]
    /// [--model snapshot|events] [--accounts N] [--bank-base ID] [--resend SPEC]...`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let usage = "usage: torture PATH [SEED] [ACTORS] [--check] [--backend redb|sqlite|postgres] \
                     [--model snapshot|events] [--accounts N] [--bank-base ID] [--resend SPEC]...";
        let mut check = false;
        let mut backend = Backend::Redb;
        let mut model = TallyModel::Snapshot;
        let mut accounts = 8;
        let mut bank_base = 0;
        let mut resend = Vec::new();
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--check" => check = true,
                "--backend" => {
                    backend = match args.next().as_deref() {
                        Some("redb") => Backend::Redb,
                        Some("sqlite") => Backend::Sqlite,
                        Some("postgres") => Backend::Postgres,
                        _ => return Err(usage.into()),
                    }
                }
                "--model" => {
                    model = match args.next().as_deref() {
                        Some("snapshot") => TallyModel::Snapshot,
                        Some("events") => TallyModel::Events,
                        _ => return Err(usage.into()),
                    }
                }
                "--accounts" => {
                    accounts = args.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
                    if accounts == 1 {
                        return Err("--accounts: 0, or 2 or more".into());
                    }
                }
                "--bank-base" => {
                    bank_base = args.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
                }
                "--resend" => {
                    let spec = args.next().ok_or(usage)?;
                    resend.push(Request::parse(&spec).ok_or(format!("--resend {spec}"))?);
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
            model,
            accounts,
            bank_base,
            resend,
        })
    }
}

/// Recovers every actor, prints what it found, then appends to all of them and moves money
/// between the accounts until killed.
pub async fn run(opts: Options) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let storage = opts.backend.open(&opts.path)?;
    // The accounts start while the tally actors do.
    let spawning: Vec<_> = (0..opts.accounts)
        .map(|i| {
            let storage = storage.clone();
            let model = opts.model;
            tokio::spawn(async move { spawn_account(&storage, i, model).await })
        })
        .collect();
    let mut actors: Vec<(String, ActorRef<TallyMsg>)> = Vec::new();
    for i in 0..opts.actors {
        let key = actor_key(i);
        let (r, _) = match opts.model {
            TallyModel::Snapshot => {
                let actor = TallyActor { sink: Sink::Stdout };
                Actor::spawn(None, actor, Start::new(&storage, key.clone(), ())).await?
            }
            TallyModel::Events => {
                let actor = EventTallyActor { sink: Sink::Stdout };
                let start = Start::new(&storage, key.clone(), ())
                    .snapshot_every(EVENT_SNAPSHOT_EVERY)
                    .retention(event_retention(i));
                Actor::spawn(None, actor, start).await?
            }
        };
        actors.push((key, r));
    }
    let mut accounts = Vec::new();
    for s in spawning {
        accounts.push(s.await??);
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
        if !accounts.is_empty() {
            bring_to_rest(&accounts).await?;
        }
        for r in accounts.drain(..) {
            r.stop_and_wait(None, None).await?;
        }
        storage.close().await?;
        if opts.accounts > 0 {
            // The removals of acknowledged messages ride on later commits; closing wrote them.
            line(format_args!(
                "OUTBOX {}",
                opts.backend
                    .outbox_rows(&opts.path, opts.model.account_ns())?
            ));
            line(format_args!("BANKDONE"));
        }
        if opts.model == TallyModel::Events {
            let journals = opts.backend.journal_ids(&opts.path, opts.actors)?;
            for (i, ids) in journals.iter().enumerate() {
                let (first, last) = (ids.first(), ids.last());
                line(format_args!(
                    "JOURNAL {} {} {} {}",
                    actor_key(i),
                    ids.len(),
                    first.unwrap_or(&0),
                    last.unwrap_or(&0)
                ));
            }
        }
        return Ok(());
    }
    let mut clients = Vec::new();
    for (i, ((key, r), t)) in actors.into_iter().zip(recovered).enumerate() {
        let seed = mix(opts.seed ^ mix(i as u64));
        clients.push(tokio::spawn(append_forever(key, r, t.len, seed)));
    }
    if !accounts.is_empty() {
        let accounts = Arc::new(accounts);
        let bank = BankClient {
            accounts: accounts.clone(),
            next_id: 0,
            rng: 0,
        };
        let (base, seed, resend) = (opts.bank_base, opts.seed, opts.resend);
        clients.push(tokio::spawn(async move {
            // What was sent before goes first, alone, so that few new requests come between
            // a request and its repeat (an account keeps only its latest replies).
            for r in resend {
                if let Err(e) = bank.send(r).await {
                    line(format_args!("BANKERR {e}"));
                    return Ok(());
                }
            }
            let mut tasks = Vec::new();
            for c in 0..BANK_CLIENTS {
                let client = BankClient {
                    accounts: accounts.clone(),
                    next_id: base + c,
                    rng: mix(seed ^ mix(u64::MAX - c)),
                };
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = client.run().await {
                        line(format_args!("BANKERR {e}"));
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            Ok(())
        }));
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

// ---------------------------------------------------------------------------------------------
// The bank: accounts that move money to each other with `Tx::send`

/// The namespace of the accounts.
pub const ACCOUNT_NS: &str = "account";

/// The namespace of the event-sourced accounts (`--model events`).
pub const EVENT_ACCOUNT_NS: &str = "account_es";

/// What every account holds when it is created.
pub const OPENING: u64 = 1_000;

/// How many clients send deposits and transfers at once.
pub const BANK_CLIENTS: u64 = 2;

/// How many replies to requests an account keeps (the driver sends again only requests well
/// within it); few, so that an account's start reads few rows.
pub const REQUEST_RETENTION: usize = 64;

/// How long `--check` waits for every credit message to be acknowledged.
pub const REST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// An account's durable state: its balance and every request it applied since the last
/// check, so that a check can count what was applied and how often.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub balance: u64,
    /// Deposits applied: (request id, amount).
    pub deposits: Vec<(u64, u64)>,
    /// Transfers debited here: (transfer id, amount, sequence number of the credit message).
    pub debited: Vec<(u64, u64, u64)>,
    /// Transfers credited here: (transfer id, amount).
    pub credited: Vec<(u64, u64)>,
}

/// What one account sends another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub transfer: u64,
    pub amount: u64,
}

pub enum AccountMsg {
    /// Adds `amount`, once per request id; replies with the balance after it.
    Deposit {
        id: u64,
        amount: u64,
        reply: RpcReplyPort<Result<u64, String>>,
    },
    /// Moves `amount` to the account `to`, once per transfer id; replies with the sequence
    /// number of the credit message, or why it was refused.
    Transfer {
        id: u64,
        to: String,
        amount: u64,
        reply: RpcReplyPort<Result<u64, String>>,
    },
    /// A credit from another account (through `inbound`).
    Credit(Credit),
    /// Futures of how this account's messages with these sequence numbers end.
    Settle(Vec<u64>, RpcReplyPort<Vec<Settlement>>),
    Get(RpcReplyPort<Ledger>),
    /// Empties the ledger's lists (they were checked); the balance stays.
    Prune(RpcReplyPort<()>),
    Persist(Control<()>),
}

/// A change to an account's ledger: what `apply_change` makes of it in either model (the
/// event-sourced account stores it as its event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited {
        id: u64,
        amount: u64,
    },
    Debited {
        id: u64,
        amount: u64,
        message: u64,
    },
    Credited {
        transfer: u64,
        amount: u64,
    },
    /// The ledger's lists were checked and emptied; the balance stays.
    Pruned,
}

/// Changes `state` by `change`; a debit above the balance is refused, the state unchanged.
fn apply_change(state: &mut Ledger, change: &AccountEvent) -> Result<(), ActorProcessingErr> {
    match *change {
        AccountEvent::Deposited { id, amount } => {
            state.balance += amount;
            state.deposits.push((id, amount));
        }
        AccountEvent::Debited {
            id,
            amount,
            message,
        } => {
            if state.balance < amount {
                return Err(
                    format!("debit of {amount} above the balance {}", state.balance).into(),
                );
            }
            state.balance -= amount;
            state.debited.push((id, amount, message));
        }
        AccountEvent::Credited { transfer, amount } => {
            state.balance += amount;
            state.credited.push((transfer, amount));
        }
        AccountEvent::Pruned => {
            *state = Ledger {
                balance: state.balance,
                ..Ledger::default()
            };
        }
    }
    Ok(())
}

/// An account in either model: how a change reaches its ledger.
pub trait Books: Persistent + PersistentActor<Msg = AccountMsg, State = Ledger, Op = ()> {
    /// Makes `change` to `state`: directly (snapshot mode) or as an event.
    fn record(
        tx: &mut Tx<'_, Self>,
        state: &mut Ledger,
        change: AccountEvent,
    ) -> Result<(), ActorProcessingErr>;
}

/// An account's handler, the same in both models (a copy of the one of `tests/bank`, which
/// also records the message each debit sent, so a check can wait for it).
async fn handle_account<A: Books>(
    tx: &mut Tx<'_, A>,
    msg: AccountMsg,
    state: &mut Ledger,
) -> Result<(), ActorProcessingErr> {
    match msg {
        AccountMsg::Deposit { id, amount, reply } => {
            match tx.once(&format!("d{id}"), &amount, reply) {
                Once::First(first) => {
                    A::record(tx, state, AccountEvent::Deposited { id, amount })?;
                    tx.reply_once(first, Ok(state.balance))?;
                }
                Once::Repeated => {}
                Once::Refused(port, why) => tx.reply(port, Err(why.to_string())),
            }
        }
        AccountMsg::Transfer {
            id,
            to,
            amount,
            reply,
        } => match tx.once(&format!("t{id}"), &(&to, amount), reply) {
            Once::First(first) => {
                if state.balance < amount {
                    tx.reply_once(first, Err("insufficient funds".to_owned()))?;
                    return Ok(());
                }
                let sent = tx.send_to::<A, _>(
                    &to,
                    &Credit {
                        transfer: id,
                        amount,
                    },
                )?;
                let message = sent.seq();
                A::record(
                    tx,
                    state,
                    AccountEvent::Debited {
                        id,
                        amount,
                        message,
                    },
                )?;
                tx.reply_once(first, Ok(message))?;
            }
            Once::Repeated => {}
            Once::Refused(port, why) => tx.reply(port, Err(why.to_string())),
        },
        AccountMsg::Credit(credit) => {
            let change = AccountEvent::Credited {
                transfer: credit.transfer,
                amount: credit.amount,
            };
            A::record(tx, state, change)?;
        }
        AccountMsg::Settle(seqs, reply) => {
            let me = tx.key().clone();
            let settlements = seqs
                .into_iter()
                .map(|seq| tx.settlement(&OpId::new(me.clone(), seq)))
                .collect();
            tx.reply(reply, settlements);
        }
        AccountMsg::Get(reply) => tx.reply(reply, state.clone()),
        AccountMsg::Prune(reply) => {
            A::record(tx, state, AccountEvent::Pruned)?;
            tx.reply(reply, ());
        }
        AccountMsg::Persist(_) => {}
    }
    Ok(())
}

/// An account whose ledger is committed whole.
#[derive(Default, Persistent)]
#[persistent(name = "account")]
pub struct Account;

impl Books for Account {
    fn record(
        _: &mut Tx<'_, Self>,
        state: &mut Ledger,
        change: AccountEvent,
    ) -> Result<(), ActorProcessingErr> {
        apply_change(state, &change)
    }
}

impl PersistentActor for Account {
    type Msg = AccountMsg;
    type State = Ledger;
    type Op = ();
    type Arguments = u64;

    async fn init(&self, opening: u64) -> Result<Ledger, ActorProcessingErr> {
        Ok(Ledger {
            balance: opening,
            ..Ledger::default()
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AccountMsg,
        state: &mut Ledger,
    ) -> Result<(), ActorProcessingErr> {
        handle_account(tx, msg, state).await
    }

    fn control(msg: AccountMsg) -> Result<Control<()>, AccountMsg> {
        match msg {
            AccountMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<()>) -> Option<AccountMsg> {
        Some(AccountMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<AccountMsg, DecodeReason> {
        Ok(AccountMsg::Credit(msg.decode()?))
    }
}

/// The event-sourced twin of [`Account`] (`--model events`): the same messages and ledger,
/// changed only through events.
#[derive(Default, Persistent)]
#[persistent(name = "account_es", event_sourced)]
pub struct EventAccount;

impl Books for EventAccount {
    fn record(
        tx: &mut Tx<'_, Self>,
        state: &mut Ledger,
        change: AccountEvent,
    ) -> Result<(), ActorProcessingErr> {
        tx.emit(state, change)?;
        Ok(())
    }
}

impl PersistentActor for EventAccount {
    type Msg = AccountMsg;
    type State = Ledger;
    type Op = ();
    type Arguments = u64;

    async fn init(&self, opening: u64) -> Result<Ledger, ActorProcessingErr> {
        Account.init(opening).await
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AccountMsg,
        state: &mut Ledger,
    ) -> Result<(), ActorProcessingErr> {
        handle_account(tx, msg, state).await
    }

    fn control(msg: AccountMsg) -> Result<Control<()>, AccountMsg> {
        Account::control(msg)
    }

    fn wrap_control(c: Control<()>) -> Option<AccountMsg> {
        Account::wrap_control(c)
    }

    fn inbound(msg: Inbound) -> Result<AccountMsg, DecodeReason> {
        Account::inbound(msg)
    }
}

impl EventSourced for EventAccount {
    type Event = AccountEvent;

    fn apply(state: &mut Ledger, event: &AccountEvent) -> Result<(), ActorProcessingErr> {
        apply_change(state, event)
    }
}

/// The key of account number `i`.
pub fn account_key(i: usize) -> String {
    format!("acct{i}")
}

/// Spawns account number `i`, with a quick redelivery so a message lost in a kill is posted
/// again soon.
async fn spawn_account(
    storage: &Storage,
    i: usize,
    model: TallyModel,
) -> Result<ActorRef<AccountMsg>, ractor::SpawnErr> {
    let redelivery = Redelivery::new(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(50),
    );
    let r = match model {
        TallyModel::Snapshot => {
            let start = Start::<Account>::new(storage, account_key(i), OPENING)
                .redelivery(redelivery)
                .request_retention(REQUEST_RETENTION);
            Actor::spawn(None, Account, start).await?.0
        }
        TallyModel::Events => {
            let start = Start::<EventAccount>::new(storage, account_key(i), OPENING)
                .redelivery(redelivery)
                .request_retention(REQUEST_RETENTION)
                .snapshot_every(EVENT_SNAPSHOT_EVERY)
                .retention(event_retention(i));
            Actor::spawn(None, EventAccount, start).await?.0
        }
    };
    Ok(r)
}

/// A request of a bank client, as `--resend` names it: `D:<id>:<account>:<amount>` or
/// `T:<id>:<from>:<to>:<amount>` (accounts by number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Deposit {
        id: u64,
        to: usize,
        amount: u64,
    },
    Transfer {
        id: u64,
        from: usize,
        to: usize,
        amount: u64,
    },
}

impl Request {
    pub fn parse(spec: &str) -> Option<Request> {
        let w: Vec<&str> = spec.split(':').collect();
        let n = |i: usize| -> Option<u64> { w.get(i)?.parse().ok() };
        let a = |i: usize| -> Option<usize> { w.get(i)?.parse().ok() };
        match (w.first().copied(), w.len()) {
            (Some("D"), 4) => Some(Request::Deposit {
                id: n(1)?,
                to: a(2)?,
                amount: n(3)?,
            }),
            (Some("T"), 5) => Some(Request::Transfer {
                id: n(1)?,
                from: a(2)?,
                to: a(3)?,
                amount: n(4)?,
            }),
            _ => None,
        }
    }

    pub fn spec(&self) -> String {
        match *self {
            Request::Deposit { id, to, amount } => format!("D:{id}:{to}:{amount}"),
            Request::Transfer {
                id,
                from,
                to,
                amount,
            } => format!("T:{id}:{from}:{to}:{amount}"),
        }
    }
}

/// One client of the bank: sends a request, waits for its reply, and so on.
struct BankClient {
    accounts: Arc<Vec<ActorRef<AccountMsg>>>,
    next_id: u64,
    rng: u64,
}

impl BankClient {
    /// Sends new requests (a quarter deposits, the rest transfers between two random
    /// accounts) until killed.
    async fn run(mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let n = self.accounts.len() as u64;
        loop {
            self.rng = mix(self.rng);
            let r = self.rng;
            let id = self.next_id;
            self.next_id += BANK_CLIENTS;
            let from = (r >> 8) % n;
            let request = if r.is_multiple_of(4) {
                Request::Deposit {
                    id,
                    to: from as usize,
                    amount: 1 + (r >> 24) % 100,
                }
            } else {
                Request::Transfer {
                    id,
                    from: from as usize,
                    to: ((from + 1 + (r >> 16) % (n - 1)) % n) as usize,
                    amount: 1 + (r >> 24) % 200,
                }
            };
            self.send(request).await?;
        }
    }

    async fn send(&self, request: Request) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match request {
            Request::Deposit { id, to, amount } => {
                line(format_args!("DSEND {id} {to} {amount}"));
                let got = call!(self.accounts[to], |reply| AccountMsg::Deposit {
                    id,
                    amount,
                    reply
                })?;
                match got {
                    Ok(balance) => line(format_args!("DACK {id} ok {balance}")),
                    Err(why) => line(format_args!("DACK {id} refused {why}")),
                }
            }
            Request::Transfer {
                id,
                from,
                to,
                amount,
            } => {
                line(format_args!("TSEND {id} {from} {to} {amount}"));
                let got = call!(self.accounts[from], |reply| AccountMsg::Transfer {
                    id,
                    to: account_key(to),
                    amount,
                    reply
                })?;
                match got {
                    Ok(message) => line(format_args!("TACK {id} ok {message}")),
                    Err(why) => line(format_args!("TACK {id} refused {why}")),
                }
            }
        }
        Ok(())
    }
}

/// Waits (up to [`REST_DEADLINE`]) until every credit message every account sent is
/// acknowledged, so every credit is applied, then prints each account's ledger and empties
/// its lists, so that they only ever hold what was applied since the last check.
async fn bring_to_rest(
    accounts: &[ActorRef<AccountMsg>],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = tokio::time::Instant::now() + REST_DEADLINE;
    for (i, a) in accounts.iter().enumerate() {
        let ledger = call!(a, AccountMsg::Get)?;
        let seqs: Vec<u64> = ledger.debited.iter().map(|d| d.2).collect();
        let settlements = call!(a, AccountMsg::Settle, seqs.clone())?;
        for (seq, settlement) in seqs.into_iter().zip(settlements) {
            // NotPending: acknowledged before this run (or before this call).
            match tokio::time::timeout_at(deadline, settlement.wait()).await {
                Ok(Settled::Delivered | Settled::NotPending) => {}
                Ok(other) => line(format_args!("UNSETTLED {i} {seq} {other:?}")),
                Err(_) => line(format_args!("UNSETTLED {i} {seq} timeout")),
            }
        }
    }
    // A credit is committed before it is acknowledged: every credit is in the ledgers now.
    for (i, a) in accounts.iter().enumerate() {
        let l = call!(a, AccountMsg::Get)?;
        line(format_args!("BAL {i} {}", l.balance));
        for (id, amount) in &l.deposits {
            line(format_args!("DEP {i} {id} {amount}"));
        }
        for (id, amount, message) in &l.debited {
            line(format_args!("DEB {i} {id} {amount} {message}"));
        }
        for (id, amount) in &l.credited {
            line(format_args!("CRED {i} {id} {amount}"));
        }
    }
    for a in accounts {
        call!(a, AccountMsg::Prune)?;
    }
    Ok(())
}

#[allow(dead_code)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let opts = Options::parse(std::env::args().skip(1))?;
    run(opts).await
}
