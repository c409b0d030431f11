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
//! A kill keeps the OS page cache, so this proves the process side (nothing acknowledged
//! before its commit returned, recovery of a store left open); power loss is the simulator's
//! job (`crash_power_loss.rs`). The loop runs on redb and on SQLite (`--backend sqlite`), each
//! printing its figure line. `CRASH_CYCLES=n` runs n cycles on each (default 300); `CRASH_SEED`
//! reruns a seed.

mod crash;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crash::torture::{self, Backend, Tally};
use crash::{Rng, count, kept, kept_pending, seed};

const ACTORS: usize = 8;
/// A quarter of the kills come within the first lines, mostly in the recovery (8 states, their
/// replays, READY); the others after a uniform number of lines below `MAX_LINES`.
const EARLY_LINES: u64 = 24;
const MAX_LINES: u64 = 400;

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
    /// An append sent and not acknowledged: (index, value). It may or may not be committed.
    inflight: Option<(u64, u64)>,
    /// Operations performed in earlier incarnations.
    performed_before: BTreeSet<u64>,
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
}

struct Model {
    actors: Vec<ActorModel>,
    f: Figures,
    ready: bool,
    backend: &'static str,
    seed: u64,
    cycle: u64,
}

impl Model {
    fn violation(&self, what: &str, line: &str) {
        eprintln!(
            "kill-loop: backend={} seed={} cycle={}: {what}: `{line}`",
            self.backend, self.seed, self.cycle
        );
    }

    fn start_incarnation(&mut self, cycle: u64) {
        self.cycle = cycle;
        self.ready = false;
        for a in &mut self.actors {
            let now = std::mem::take(&mut a.performed_now);
            a.performed_before.extend(now);
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
            Some("READY") => self.ready = true,
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
                if Tally::of(&m.values) != (Tally { len, chain }) || len != i + 1 {
                    self.violation("a reply with a state that was never written", line);
                    self.f.unexpected += 1;
                }
                self.f.acked += 1;
            }
            _ => {}
        }
    }

    fn recovered(&mut self, a: usize, len: u64, chain: u64, line: &str) {
        let m = &mut self.actors[a];
        let got = Tally { len, chain };
        let base = m.values.len() as u64;
        let mut bad = None;
        if got == Tally::of(&m.values) {
            m.inflight = None;
        } else if let Some((_, v)) = m.inflight.filter(|_| len == base + 1)
            && got == Tally::of(&m.values).then(v)
        {
            m.values.push(v);
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
        for idx in 0..len {
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
    kill_loop(Backend::Redb, count("CRASH_CYCLES", 300));
}

#[test]
fn killed_process_on_sqlite_loses_no_acknowledged_change_and_replays_every_pending_op() {
    if crash::child_args().is_some() {
        return;
    }
    kill_loop(Backend::Sqlite, count("CRASH_CYCLES", 300));
}

/// Runs `cycles` kills of the torture program on `backend` and checks every restart.
fn kill_loop(backend: Backend, cycles: u64) {
    let name = backend.name();
    let seed = seed(&format!("kill-loop {name}"));
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("torture.{name}"));
    let mut model = Model {
        actors: (0..ACTORS).map(|_| ActorModel::default()).collect(),
        f: Figures::default(),
        ready: false,
        backend: name,
        seed,
        cycle: 0,
    };
    let started = std::time::Instant::now();
    // The last start only checks the last kill's recovery and exits.
    for cycle in 0..=cycles {
        let check = cycle == cycles;
        let mut args = vec![
            path.display().to_string(),
            rng.next_u64().to_string(),
            ACTORS.to_string(),
            "--backend".into(),
            name.into(),
        ];
        if check {
            args.push("--check".into());
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
                "kill-loop: backend={name} seed={seed} cycle={cycle}: the torture child ended by itself ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            assert!(model.ready, "kill-loop: the check run did not recover");
        }
    }
    let f = &model.f;
    // Straight to stderr, past the test harness's capture: CI shows the figures.
    let _ = writeln!(
        std::io::stderr(),
        "kill-loop: backend={name} cycles={cycles} acked={} lost={} unexpected={} missed_replays={} replayed={} recovered_inflight={} kills_in_recovery={} seed={seed} ({:.1}s)",
        f.acked,
        f.lost,
        f.unexpected,
        f.missed_replays,
        f.replayed,
        f.recovered_inflight,
        f.kills_in_recovery,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (f.lost, f.unexpected, f.missed_replays),
        (0, 0, 0),
        "kill-loop: backend={name} seed={seed}: see the lines above"
    );
    assert!(f.acked > 0, "kill-loop: nothing was ever acknowledged");
}
