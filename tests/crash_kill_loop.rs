//! The kill -9 loop: the torture program (`examples/torture.rs`) runs in a child process, is
//! killed with SIGKILL after a random number of lines, and is started again on the same store,
//! over and over. Its output is the history, checked Jepsen-style at every restart:
//!
//! - `lost`: an acknowledged append missing from the recovered state (P4), or an operation
//!   that was performed although its append did not survive (P2);
//! - `unexpected`: a recovered state that no sequence of sent appends produces (P1);
//! - `missed_replays`: an operation pending at the kill that was not performed again before
//!   the first new message, or one performed again that was not pending (P3).
//!
//! Beside the tally actors, 8 accounts on the same store move money to each other
//! (`Tx::send`), driven by two clients in the child that send deposits and transfers with ids
//! of their own; a restarted child first sends again the requests left unanswered at the kill
//! and a few answered ones (the same ids: idempotent requests). Every fiftieth start, and the
//! last, is a check run: the accounts are brought to rest (every credit message
//! acknowledged), their ledgers (what they applied since the previous check run) are printed,
//! judged with the earlier ones and emptied, and the outbox rows left in the closed store
//! counted:
//!
//! - `money_created`, `money_lost`: the accounts hold more, or less, than the opening balances
//!   plus the deposits applied;
//! - `double_applied`: a deposit, or a transfer's debit or credit, applied twice;
//! - `unmatched`: a debit with no credit of the same amount at its destination, or a credit
//!   with no debit;
//! - `outbox_left`: outbox rows left once every message was acknowledged;
//! - and in `lost`: an acknowledged deposit not applied, or a transfer whose success was
//!   acknowledged not debited; in `unexpected`: a ledger or a reply no sent request explains
//!   (a deposit or debit never sent, a refused transfer debited, a repeated request answered
//!   differently from the first time).
//!
//! A kill keeps the OS page cache, so this proves the process side (nothing acknowledged
//! before its commit returned, recovery of a store left open); power loss is the simulator's
//! job (`crash_power_loss.rs`). The loop runs on redb, on SQLite (`--backend sqlite`) and on
//! PostgreSQL (`--backend postgres`, the shared throwaway server), each printing its figure
//! line.
//!
//! It runs once more on redb with event-sourced tally actors (`torture --model events`,
//! `kill_loop_event_sourced_redb`): the same history and the same checks, with the state
//! rebuilt from the latest snapshot and the events after it. Snapshots come every 16 events,
//! so many kills fall on a commit that writes one; the even actors keep their events
//! (`Retention::Full`), the odd ones compact them in the snapshot's commit
//! (`Retention::Light`). Each check run also reads the events left in the closed store:
//!
//! - `bad_journals`: a journal that is not the actor's events `1..=len` (Full), or only those
//!   after its latest snapshot (Light).
//!
//! `CRASH_CYCLES=n` runs n cycles on each (default 300, and 100 for the event-sourced loop,
//! which only adds a model to one backend); `CRASH_SEED` reruns a seed.

mod crash;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crash::torture::{
    self, Backend, EVENT_SNAPSHOT_EVERY, OPENING, REQUEST_RETENTION, Request, Tally, TallyModel,
    event_retention,
};
use crash::{Rng, count, kept, kept_pending, seed};
use ractor_persist::Retention;

const ACTORS: usize = 8;
/// A quarter of the kills come within the first lines, mostly in the recovery (8 states, their
/// replays, READY); the others after a uniform number of lines below `MAX_LINES`.
const EARLY_LINES: u64 = 24;
const MAX_LINES: u64 = 400;
const ACCOUNTS: usize = 8;
/// Every `CHECK_EVERY`-th start (and the last) is a check run.
const CHECK_EVERY: u64 = 50;
/// How many of the most recently answered requests may be sent again after a restart.
const RECENT: usize = 64;
/// A request is sent again only if fewer requests than this were sent to its account since:
/// well within the replies an account keeps, so a repeat is always recognised.
const RESEND_WITHIN: u64 = REQUEST_RETENTION as u64 / 2;

/// Runs the torture program when this binary is started as the loop's child.
#[test]
fn torture_child() {
    let Some(args) = crash::child_args() else {
        return;
    };
    let opts = torture::Options::parse(args).expect("torture arguments");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(torture::run(opts)).expect("torture run");
}

#[derive(Default)]
struct ActorModel {
    /// Values of the appends known to be committed, in order.
    values: Vec<u64>,
    /// `Tally::of(&values)`, kept up to date (recomputing it at every reply is quadratic).
    tally: Tally,
    /// An append sent and not acknowledged: (index, value). It may or may not be committed.
    inflight: Option<(u64, u64)>,
    /// Operations performed in earlier incarnations.
    performed_before: BTreeSet<u64>,
    /// Every operation below it is in `performed_before`.
    performed_floor: u64,
    /// Operations performed in this incarnation.
    performed_now: BTreeSet<u64>,
    /// One past the highest operation ever performed: its append must be committed.
    ran_upto: u64,
    /// Operations performed in this incarnation before the actor's state was printed.
    replays: Vec<u64>,
    recovered: bool,
}

#[derive(Default)]
struct Figures {
    acked: u64,
    lost: u64,
    unexpected: u64,
    missed_replays: u64,
    replayed: u64,
    recovered_inflight: u64,
    kills_in_recovery: u64,
    transfers: u64,
    deposits: u64,
    resent: u64,
    bank_checks: u64,
    money_created: u64,
    money_lost: u64,
    double_applied: u64,
    unmatched: u64,
    outbox_left: u64,
    /// Journals read by check runs (event-sourced loop only), and those with the wrong events.
    journals: u64,
    bad_journals: u64,
}

/// A reply to a bank request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    /// Applied: the balance after a deposit, the credit message of a transfer.
    Ok(u64),
    Refused(String),
}

/// A request a bank client sent, and the reply it got (if any).
struct Sent {
    request: Request,
    reply: Option<Reply>,
    /// The account it was sent to, and how many requests were sent to it before.
    account: usize,
    position: u64,
}

/// An account's ledger, as a check run prints it.
#[derive(Default)]
struct Ledger {
    balance: u64,
    deposits: Vec<(u64, u64)>,
    debited: Vec<(u64, u64, u64)>,
    credited: Vec<(u64, u64)>,
}

#[derive(Default)]
struct Bank {
    /// Every request sent, by id (deposits and transfers share the ids).
    sent: BTreeMap<u64, Sent>,
    /// Requests sent and not answered: sent again at the next start.
    unanswered: BTreeSet<u64>,
    /// The most recently answered requests.
    answered: VecDeque<u64>,
    /// One past the highest id sent.
    next_id: u64,
    /// How many requests (repeats included) were sent to each account.
    sends: BTreeMap<usize, u64>,
    /// The ledgers the running check run printed so far (what was applied since the previous
    /// check run, which emptied them).
    ledgers: BTreeMap<usize, Ledger>,
    /// Everything the check runs saw applied: deposits (id: account, amount), debits (id:
    /// account, amount, credit message) and credits (id: account, amount).
    deposited: BTreeMap<u64, (usize, u64)>,
    debited: BTreeMap<u64, (usize, u64, u64)>,
    credited: BTreeMap<u64, (usize, u64)>,
    /// Whether the running check run finished its bank check.
    done: bool,
    /// Violations already counted (a check sees those of the previous checks again).
    reported: BTreeSet<String>,
}

struct Model {
    actors: Vec<ActorModel>,
    bank: Bank,
    f: Figures,
    ready: bool,
    /// `backend=NAME`, and `model=events` for the event-sourced loop: names the loop in
    /// every line it prints.
    label: String,
    seed: u64,
    cycle: u64,
}

impl Model {
    fn violation(&self, what: &str, line: &str) {
        eprintln!(
            "kill-loop: {} seed={} cycle={}: {what}: `{line}`",
            self.label, self.seed, self.cycle
        );
    }

    /// Prints a bank violation the first time it is seen; tells whether it is new.
    fn bank_violation(&mut self, what: String) -> bool {
        if !self.bank.reported.insert(what.clone()) {
            return false;
        }
        eprintln!(
            "kill-loop: {} seed={} cycle={}: bank: {what}",
            self.label, self.seed, self.cycle
        );
        true
    }

    fn start_incarnation(&mut self, cycle: u64) {
        self.cycle = cycle;
        self.ready = false;
        self.bank.done = false;
        self.bank.ledgers.clear();
        for a in &mut self.actors {
            let now = std::mem::take(&mut a.performed_now);
            a.performed_before.extend(now);
            while a.performed_before.contains(&a.performed_floor) {
                a.performed_floor += 1;
            }
            a.replays.clear();
            a.recovered = false;
        }
    }

    fn feed(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 { w[i].parse().expect("a number") };
        let actor = |i: usize| -> usize { w[i][1..].parse().expect("an actor key") };
        match w.first().copied() {
            Some("PERF") => {
                let (a, idx, value) = (actor(1), num(2), num(3));
                let m = &self.actors[a];
                let known = m.values.get(idx as usize) == Some(&value)
                    || (idx == m.values.len() as u64 && m.inflight == Some((idx, value)));
                if !known {
                    self.f.unexpected += 1;
                    self.violation("an operation of an append never sent", line);
                }
                let ready = self.ready;
                let m = &mut self.actors[a];
                m.performed_now.insert(idx);
                m.ran_upto = m.ran_upto.max(idx + 1);
                if !ready && !m.recovered {
                    m.replays.push(idx);
                }
            }
            Some("STATE") => self.recovered(actor(1), num(2), num(3), line),
            Some("JOURNAL") => self.journal(actor(1), num(2), num(3), num(4), line),
            Some("READY") => self.ready = true,
            Some(
                "DSEND" | "DACK" | "TSEND" | "TACK" | "BANKERR" | "UNSETTLED" | "BAL" | "DEP"
                | "DEB" | "CRED" | "OUTBOX" | "BANKDONE",
            ) => self.feed_bank(&w, line),
            Some("SEND") => {
                let (a, idx, value) = (actor(1), num(2), num(3));
                let m = &mut self.actors[a];
                if idx != m.values.len() as u64 || m.inflight.is_some() {
                    self.violation("an append out of order", line);
                    self.f.unexpected += 1;
                }
                self.actors[a].inflight = Some((idx, value));
            }
            Some("ACK") => {
                let (a, idx, len, chain) = (actor(1), num(2), num(3), num(4));
                let m = &mut self.actors[a];
                let Some((i, value)) = m.inflight.take().filter(|(i, _)| *i == idx) else {
                    self.violation("a reply to an append never sent", line);
                    self.f.unexpected += 1;
                    return;
                };
                m.values.push(value);
                m.tally = m.tally.then(value);
                if m.tally != (Tally { len, chain }) || len != i + 1 {
                    self.violation("a reply with a state that was never written", line);
                    self.f.unexpected += 1;
                }
                self.f.acked += 1;
            }
            _ => {}
        }
    }

    fn feed_bank(&mut self, w: &[&str], line: &str) {
        let num = |i: usize| -> u64 { w[i].parse().expect("a number") };
        let reply = || match w[2] {
            "ok" => Reply::Ok(num(3)),
            _ => Reply::Refused(w[3..].join(" ")),
        };
        match w[0] {
            "DSEND" | "TSEND" => {
                let (id, a) = (num(1), num(2) as usize);
                let request = if w[0] == "DSEND" {
                    Request::Deposit {
                        id,
                        to: a,
                        amount: num(3),
                    }
                } else {
                    Request::Transfer {
                        id,
                        from: a,
                        to: num(3) as usize,
                        amount: num(4),
                    }
                };
                self.bank.next_id = self.bank.next_id.max(id + 1);
                self.bank.unanswered.insert(id);
                let sends = self.bank.sends.entry(a).or_default();
                let position = *sends;
                *sends += 1;
                match self.bank.sent.get(&id) {
                    Some(s) if s.request == request => self.f.resent += 1,
                    Some(_) => {
                        self.f.unexpected += 1;
                        self.violation("a request id used again for another request", line);
                    }
                    None => {
                        match request {
                            Request::Deposit { .. } => self.f.deposits += 1,
                            Request::Transfer { .. } => self.f.transfers += 1,
                        }
                        let sent = Sent {
                            request,
                            reply: None,
                            account: a,
                            position,
                        };
                        self.bank.sent.insert(id, sent);
                    }
                }
            }
            "DACK" | "TACK" => {
                let (id, got) = (num(1), reply());
                let Some(s) = self.bank.sent.get_mut(&id) else {
                    self.f.unexpected += 1;
                    self.violation("a reply to a request never sent", line);
                    return;
                };
                let first = s.reply.get_or_insert(got.clone()).clone();
                let deposit = matches!(s.request, Request::Deposit { .. });
                self.bank.unanswered.remove(&id);
                self.bank.answered.push_back(id);
                if self.bank.answered.len() > RECENT {
                    self.bank.answered.pop_front();
                }
                if first != got {
                    self.f.unexpected += 1;
                    self.violation("a repeated request answered differently", line);
                } else if let Reply::Refused(why) = &got
                    && (deposit || why != "insufficient funds")
                {
                    self.f.unexpected += 1;
                    self.violation("a request refused", line);
                }
            }
            "BANKERR" | "UNSETTLED" => {
                // An unsettled message also shows as an outbox row and an unmatched debit.
                self.f.unexpected += u64::from(w[0] == "BANKERR");
                self.violation("the bank", line);
            }
            "BAL" => {
                self.bank
                    .ledgers
                    .entry(num(1) as usize)
                    .or_default()
                    .balance = num(2)
            }
            "DEP" => {
                let l = self.bank.ledgers.entry(num(1) as usize).or_default();
                l.deposits.push((num(2), num(3)));
            }
            "DEB" => {
                let l = self.bank.ledgers.entry(num(1) as usize).or_default();
                l.debited.push((num(2), num(3), num(4)));
            }
            "CRED" => {
                let l = self.bank.ledgers.entry(num(1) as usize).or_default();
                l.credited.push((num(2), num(3)));
            }
            "OUTBOX" => {
                let rows = num(1);
                if rows > 0 {
                    self.f.outbox_left += rows;
                    self.violation("outbox rows left at rest", line);
                }
            }
            "BANKDONE" => self.judge_bank(),
            _ => {}
        }
    }

    /// Judges the ledgers a check run printed, at rest, against the requests sent and what
    /// earlier check runs saw applied.
    fn judge_bank(&mut self) {
        self.bank.done = true;
        self.f.bank_checks += 1;
        let ledgers = std::mem::take(&mut self.bank.ledgers);
        let mut bad: Vec<(&str, String)> = Vec::new();
        if ledgers.len() != ACCOUNTS {
            bad.push(("unexpected", format!("{} ledgers printed", ledgers.len())));
        }
        let bank = &mut self.bank;
        // Each deposit, debit and credit applied once, as sent.
        for (&a, l) in &ledgers {
            for &(id, amount) in &l.deposits {
                if bank.deposited.insert(id, (a, amount)).is_some() {
                    bad.push(("double", format!("deposit {id} applied again at {a}")));
                }
                let sent = bank.sent.get(&id).map(|s| s.request);
                if sent != Some(Request::Deposit { id, to: a, amount }) {
                    let what = format!("deposit {id} of {amount} applied at {a}, sent: {sent:?}");
                    bad.push(("unexpected", what));
                }
            }
            for &(id, amount, message) in &l.debited {
                if bank.debited.insert(id, (a, amount, message)).is_some() {
                    bad.push(("double", format!("transfer {id} debited again at {a}")));
                }
                let sent = bank.sent.get(&id);
                match sent.map(|s| (s.request, &s.reply)) {
                    Some((
                        Request::Transfer {
                            from, amount: m, ..
                        },
                        reply,
                    )) if from == a && m == amount => match reply {
                        Some(Reply::Refused(_)) => {
                            bad.push(("unexpected", format!("refused transfer {id} debited")));
                        }
                        Some(Reply::Ok(m)) if *m != message => {
                            let what = format!(
                                "transfer {id}: the reply named message {m}, the debit {message}"
                            );
                            bad.push(("unexpected", what));
                        }
                        _ => {}
                    },
                    _ => {
                        let sent = sent.map(|s| s.request);
                        let what =
                            format!("transfer {id} of {amount} debited at {a}, sent: {sent:?}");
                        bad.push(("unexpected", what));
                    }
                }
            }
            for &(id, amount) in &l.credited {
                if bank.credited.insert(id, (a, amount)).is_some() {
                    bad.push(("double", format!("transfer {id} credited again at {a}")));
                }
            }
        }
        // At rest, every debit is credited, at its destination, with its amount; every credit
        // was debited.
        for (&id, &(_, amount, _)) in &bank.debited {
            let to = match bank.sent.get(&id).map(|s| s.request) {
                Some(Request::Transfer { to, .. }) => to,
                _ => continue, // reported above
            };
            match bank.credited.get(&id) {
                None => bad.push((
                    "unmatched",
                    format!("transfer {id} debited, never credited"),
                )),
                Some(&c) if c != (to, amount) => {
                    let what = format!("transfer {id} of {amount} to {to} credited as {c:?}");
                    bad.push(("unmatched", what));
                }
                Some(_) => {}
            }
        }
        for (&id, c) in &bank.credited {
            if !bank.debited.contains_key(&id) {
                bad.push((
                    "unmatched",
                    format!("transfer {id} credited {c:?}, never debited"),
                ));
            }
        }
        // Every request acknowledged as applied is applied.
        for (&id, s) in &bank.sent {
            let applied = match s.request {
                Request::Deposit { .. } => bank.deposited.contains_key(&id),
                Request::Transfer { .. } => bank.debited.contains_key(&id),
            };
            if matches!(s.reply, Some(Reply::Ok(_))) && !applied {
                bad.push(("lost", format!("acknowledged {:?} not applied", s.request)));
            }
        }
        // Money: the accounts hold the opening balances plus the deposits applied, exactly.
        let expected =
            OPENING * ACCOUNTS as u64 + bank.deposited.values().map(|d| d.1).sum::<u64>();
        let total: u64 = ledgers.values().map(|l| l.balance).sum();
        if total != expected {
            let what = format!("the accounts hold {total}, expected {expected}");
            if self.bank_violation(what) {
                if total > expected {
                    self.f.money_created = self.f.money_created.max(total - expected);
                } else {
                    self.f.money_lost = self.f.money_lost.max(expected - total);
                }
            }
        }
        for (kind, what) in bad {
            if self.bank_violation(what) {
                *match kind {
                    "double" => &mut self.f.double_applied,
                    "unmatched" => &mut self.f.unmatched,
                    "lost" => &mut self.f.lost,
                    _ => &mut self.f.unexpected,
                } += 1;
            }
        }
    }

    /// The requests a restarted client sends again: the unanswered ones, and a few answered,
    /// if few requests were sent to their account since.
    fn resend(&self, rng: &mut Rng) -> Vec<Request> {
        let mut ids: BTreeSet<u64> = self.bank.unanswered.clone();
        for _ in 0..2 {
            if !self.bank.answered.is_empty() {
                let i = rng.below(self.bank.answered.len() as u64) as usize;
                ids.insert(self.bank.answered[i]);
            }
        }
        ids.iter()
            .map(|id| &self.bank.sent[id])
            .filter(|s| self.bank.sends[&s.account] - s.position <= RESEND_WITHIN)
            .map(|s| s.request)
            .collect()
    }

    /// Judges the events actor `a` left in the closed store at the end of a check run (after
    /// its recovery, so its appends are known): `rows` ids from `first` to `last`.
    fn journal(&mut self, a: usize, rows: u64, first: u64, last: u64, line: &str) {
        let len = self.actors[a].values.len() as u64;
        // Events are numbered from 1; Light keeps those after the latest snapshot, which
        // covers a multiple of EVENT_SNAPSHOT_EVERY (one event per append).
        let kept_from = match event_retention(a) {
            Retention::Full => 1,
            Retention::Light => len - len % EVENT_SNAPSHOT_EVERY + 1,
        };
        let expected = match len + 1 - kept_from {
            0 => (0, 0, 0),
            n => (n, kept_from, len),
        };
        self.f.journals += 1;
        if (rows, first, last) != expected {
            self.f.bad_journals += 1;
            let (n, f, l) = expected;
            let what = format!("a journal that is not events {f}..={l} ({n} rows)");
            self.violation(&what, line);
        }
    }

    fn recovered(&mut self, a: usize, len: u64, chain: u64, line: &str) {
        let m = &mut self.actors[a];
        let got = Tally { len, chain };
        let base = m.values.len() as u64;
        let mut bad = None;
        if got == m.tally {
            m.inflight = None;
        } else if let Some((_, v)) = m.inflight.filter(|_| len == base + 1)
            && got == m.tally.then(v)
        {
            m.values.push(v);
            m.tally = m.tally.then(v);
            m.inflight = None;
            self.f.recovered_inflight += 1;
        } else if len < base {
            self.f.lost += base - len;
            bad = Some("acknowledged appends lost");
        } else {
            self.f.unexpected += 1;
            bad = Some("a state that was never written");
        }
        let m = &mut self.actors[a];
        if bad.is_none() && len < m.ran_upto {
            self.f.lost += 1;
            bad = Some("an operation was performed but its append was lost");
        }
        if let Some(what) = bad {
            self.violation(what, line);
            return;
        }
        m.recovered = true;
        self.f.replayed += m.replays.len() as u64;
        let mut missed = Vec::new();
        for idx in &m.replays {
            if *idx >= len || (kept(*idx) && !kept_pending(len).contains(idx)) {
                missed.push(format!("op {idx} performed again but not pending"));
            }
        }
        // Below both the floor and the kept operations that may be pending, nothing is: start
        // there (checking every operation ever appended at every restart is quadratic).
        for idx in m.performed_floor.min(len.saturating_sub(2))..len {
            let must = if kept(idx) {
                kept_pending(len).contains(&idx)
            } else {
                !m.performed_before.contains(&idx)
            };
            if must && !m.replays.contains(&idx) {
                missed.push(format!("pending op {idx} not performed again"));
            }
        }
        self.f.missed_replays += missed.len() as u64;
        for what in missed {
            self.violation(&what, line);
        }
    }
}

#[test]
fn killed_process_loses_no_acknowledged_change_and_replays_every_pending_op() {
    if crash::child_args().is_some() {
        return;
    }
    kill_loop(
        Backend::Redb,
        TallyModel::Snapshot,
        count("CRASH_CYCLES", 300),
    );
}

/// The loop with event-sourced tally actors, on redb: fewer cycles by default, as it adds a
/// model, not a backend.
#[test]
fn kill_loop_event_sourced_redb() {
    if crash::child_args().is_some() {
        return;
    }
    kill_loop(
        Backend::Redb,
        TallyModel::Events,
        count("CRASH_CYCLES", 100),
    );
}

#[test]
fn killed_process_on_sqlite_loses_no_acknowledged_change_and_replays_every_pending_op() {
    if crash::child_args().is_some() {
        return;
    }
    kill_loop(
        Backend::Sqlite,
        TallyModel::Snapshot,
        count("CRASH_CYCLES", 300),
    );
}

#[test]
fn killed_process_on_postgres_loses_no_acknowledged_change_and_replays_every_pending_op() {
    if crash::child_args().is_some() {
        return;
    }
    if persist_postgres::TestCluster::shared().is_none() {
        return;
    }
    kill_loop(
        Backend::Postgres,
        TallyModel::Snapshot,
        count("CRASH_CYCLES", 300),
    );
}

/// Runs `cycles` kills of the torture program on `backend`, its tally actors keeping their
/// state as `tally` says, and checks every restart.
fn kill_loop(backend: Backend, tally: TallyModel, cycles: u64) {
    let name = backend.name();
    let (label, seed) = match tally {
        TallyModel::Snapshot => (
            format!("backend={name}"),
            seed(&format!("kill-loop {name}")),
        ),
        other => {
            let model = other.name();
            let seed = seed(&format!("kill-loop {name} model={model}"));
            (format!("backend={name} model={model}"), seed)
        }
    };
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = match backend {
        // A schema of its own on the shared test server; the children connect to it.
        Backend::Postgres => {
            let server = persist_postgres::TestCluster::shared().expect("checked by the caller");
            let schema = server.options();
            std::path::PathBuf::from(format!("{}@{}", schema.schema_name(), server.params()))
        }
        _ => dir.path().join(format!("torture.{name}")),
    };
    let mut model = Model {
        actors: (0..ACTORS).map(|_| ActorModel::default()).collect(),
        bank: Bank::default(),
        f: Figures::default(),
        ready: false,
        label: label.clone(),
        seed,
        cycle: 0,
    };
    let started = std::time::Instant::now();
    // The last start only checks the last kill's recovery and exits; so does every
    // CHECK_EVERY-th, and the loop goes on.
    for cycle in 0..=cycles {
        let check = cycle == cycles || (cycle > 0 && cycle % CHECK_EVERY == 0);
        let mut args = vec![
            path.display().to_string(),
            rng.next_u64().to_string(),
            ACTORS.to_string(),
            "--backend".into(),
            name.into(),
            "--model".into(),
            tally.name().into(),
            "--accounts".into(),
            ACCOUNTS.to_string(),
            "--bank-base".into(),
            model.bank.next_id.to_string(),
        ];
        if check {
            args.push("--check".into());
        } else {
            for r in model.resend(&mut rng) {
                args.extend(["--resend".into(), r.spec()]);
            }
        }
        let kill_after = if rng.one_in(4) {
            rng.below(EARLY_LINES)
        } else {
            rng.below(MAX_LINES)
        };
        let stderr_path = dir.path().join("stderr.txt");
        let mut child = crash::child("torture_child", &args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start the torture child");
        model.start_incarnation(cycle);
        let journals_before = model.f.journals;
        let mut lines = 0;
        let mut killed = false;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.expect("read the child's output");
            model.feed(&line);
            lines += 1;
            if !check && !killed && lines >= kill_after {
                child.kill().expect("SIGKILL");
                killed = true;
                if !model.ready {
                    model.f.kills_in_recovery += 1;
                }
            }
        }
        let status = child.wait().unwrap();
        if !killed {
            assert!(
                check && status.success(),
                "kill-loop: {label} seed={seed} cycle={cycle}: the torture child ended by itself ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            assert!(model.ready, "kill-loop: the check run did not recover");
            assert!(
                model.bank.done,
                "kill-loop: {label} seed={seed} cycle={cycle}: the check run did not check the bank"
            );
            if tally == TallyModel::Events {
                assert_eq!(
                    model.f.journals - journals_before,
                    ACTORS as u64,
                    "kill-loop: {label} seed={seed} cycle={cycle}: the check run did not print every journal"
                );
            }
        }
    }
    let f = &model.f;
    // Straight to stderr, past the test harness's capture: CI shows the figures.
    let journals = match tally {
        TallyModel::Snapshot => String::new(),
        TallyModel::Events => format!(" journals={} bad_journals={}", f.journals, f.bad_journals),
    };
    let _ = writeln!(
        std::io::stderr(),
        "kill-loop: {label} cycles={cycles} acked={} lost={} unexpected={} missed_replays={} replayed={} recovered_inflight={} kills_in_recovery={} transfers={} deposits={} resent={} bank_checks={} money_created={} money_lost={} double_applied={} unmatched={} outbox_left={}{journals} seed={seed} ({:.1}s)",
        f.acked,
        f.lost,
        f.unexpected,
        f.missed_replays,
        f.replayed,
        f.recovered_inflight,
        f.kills_in_recovery,
        f.transfers,
        f.deposits,
        f.resent,
        f.bank_checks,
        f.money_created,
        f.money_lost,
        f.double_applied,
        f.unmatched,
        f.outbox_left,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (f.lost, f.unexpected, f.missed_replays, f.bad_journals),
        (0, 0, 0, 0),
        "kill-loop: {label} seed={seed}: see the lines above"
    );
    assert_eq!(
        (
            f.money_created,
            f.money_lost,
            f.double_applied,
            f.unmatched,
            f.outbox_left
        ),
        (0, 0, 0, 0, 0),
        "kill-loop: {label} seed={seed}: the bank, see the lines above"
    );
    assert!(f.acked > 0, "kill-loop: nothing was ever acknowledged");
    assert!(
        f.transfers > 0 && f.bank_checks > 0,
        "kill-loop: no transfer was sent or no bank check ran"
    );
}
