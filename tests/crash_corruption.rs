//! Corruption sweep: bit flips and truncations of a closed store file, on redb and on SQLite.
//! Whatever the storage engine makes of them (an error, a panic, wrong bytes), no wrong state
//! reaches an actor: each damaged file either opens and every actor comes back with exactly
//! its state and pending operations, or the open or the spawn fails with a typed error. Panics
//! inside the storage engine are caught and counted; the process must never abort.
//!
//! Each sweep runs in two child processes (each on half the cases), so that an abort (a stack
//! overflow, a failed allocation, a panic while panicking) is seen, counted and skipped, not
//! fatal to the sweep. Flips land mostly in the pages that hold data. On redb, truncations and
//! one flip in 64 go through a real file and `RedbStore::open`, the other flips through an
//! in-memory backend; on SQLite every case is a real file opened with `SqliteStore::open`.
//!
//! `CRASH_FLIPS=n` sets the number of flips of each sweep (default 20,000 on redb,
//! `SQLITE_FLIPS` on SQLite); `CRASH_SEED` reruns a seed; `CRASH_CASE=i` runs case i alone
//! and prints what it saw.

mod crash;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use crash::torture::{Backend, mix};
use crash::{Rng, Seen, SimDisk, TallyMsg, count, env_u64, peek, recover, seed, spawn_tally};
use ractor::call;
use ractor_persist::{RedbStore, SqliteStore};

const KEYS: [&str; 3] = ["a0", "a1", "a2"];
/// Truncations per run, besides the flips.
const TRUNCATIONS: u64 = 400;
/// Both engines' page size.
const PAGE: usize = 4096;
/// The SQLite sweep's flips in CI: every SQLite case goes through a real file and a whole
/// check of it, so a case costs more than redb's in-memory one.
const SQLITE_FLIPS: u64 = 5_000;

fn keys() -> Vec<String> {
    KEYS.iter().map(|k| (*k).to_owned()).collect()
}

/// Builds the store every case damages: three actors with some appends each (so some kept
/// operations are pending), closed cleanly.
async fn build(backend: Backend, path: &Path) {
    let storage = backend.open(path).unwrap();
    for (i, key) in KEYS.iter().enumerate() {
        let a = spawn_tally(&storage, key, crash::Performed::default().sink())
            .await
            .unwrap();
        for n in 0..(5 + 3 * i as u64) {
            call!(a, TallyMsg::Append, mix(n ^ i as u64)).unwrap();
        }
        peek(&a).await;
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
}

/// One damage: a flipped bit, or the file cut at a length.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip { offset: usize, bit: u8 },
    Truncate(usize),
}

/// Case `i` of the sweep for `seed` over `image`: flips first, then truncations.
fn damage(seed: u64, i: u64, flips: u64, image: &[u8], used: &[usize]) -> Damage {
    let mut rng = Rng::new(mix(seed ^ mix(i)));
    if i < flips {
        let offset = if rng.one_in(10) || used.is_empty() {
            rng.below(image.len() as u64) as usize
        } else {
            let page = used[rng.below(used.len() as u64) as usize];
            page * PAGE + rng.below(PAGE as u64) as usize
        };
        Damage::Flip {
            offset: offset.min(image.len() - 1),
            bit: rng.below(8) as u8,
        }
    } else if rng.one_in(2) {
        Damage::Truncate(rng.below(image.len() as u64 / PAGE as u64 + 1) as usize * PAGE)
    } else {
        Damage::Truncate(rng.below(image.len() as u64) as usize)
    }
}

fn apply(image: &[u8], d: Damage) -> Vec<u8> {
    let mut out = image.to_vec();
    match d {
        Damage::Flip { offset, bit } => out[offset] ^= 1 << bit,
        Damage::Truncate(len) => out.truncate(len),
    }
    out
}

/// The 4 KiB pages of `image` holding any byte that is not zero.
fn used_pages(image: &[u8]) -> Vec<usize> {
    image
        .chunks(PAGE)
        .enumerate()
        .filter(|(_, p)| p.iter().any(|b| *b != 0))
        .map(|(i, _)| i)
        .collect()
}

static PANICS: AtomicU64 = AtomicU64::new(0);

/// What one damaged file gave.
enum Verdict {
    Correct,
    RefusedOpen,
    RefusedSpawn,
    /// Opened and spawned, but some actor saw another state or other operations.
    Wrong(String),
    /// Failed without a typed error, or a panic left the library.
    Untyped(String),
}

async fn judge(
    backend: Backend,
    expected: &BTreeMap<String, Seen>,
    image: Vec<u8>,
    real_file: Option<&Path>,
) -> Verdict {
    let seen = match (backend, real_file) {
        (Backend::Redb, Some(path)) => {
            std::fs::write(path, &image).unwrap();
            recover(RedbStore::open(path), &keys()).await
        }
        (Backend::Redb, None) => {
            let store = RedbStore::with_backend("damaged", SimDisk::new(image));
            recover(store, &keys()).await
        }
        (Backend::Sqlite, path) => {
            let path = path.expect("SQLite cases go through a file");
            replace_sqlite_file(path, &image);
            recover(SqliteStore::open(path), &keys()).await
        }
        (Backend::Postgres, _) => unreachable!("the sweep flips bits in store files"),
    };
    match seen {
        Ok(seen) if &seen == expected => Verdict::Correct,
        Ok(seen) => Verdict::Wrong(format!("saw {seen:?}, stored {expected:?}")),
        Err(e) if e.starts_with("open: ") => Verdict::RefusedOpen,
        Err(e) if e.contains("LoadError") => Verdict::RefusedSpawn,
        Err(e) => Verdict::Untyped(e),
    }
}

/// Puts `image` at `path` as the whole SQLite database: the write-ahead log and shared-memory
/// files a previous case left beside it (an open that was refused leaves them) are removed
/// first, or SQLite would read the old log over the new image.
fn replace_sqlite_file(path: &Path, image: &[u8]) {
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("remove {side:?}: {e}"),
            _ => {}
        }
    }
    std::fs::write(path, image).unwrap();
}

fn backend(name: &str) -> Backend {
    match name {
        "redb" => Backend::Redb,
        "sqlite" => Backend::Sqlite,
        other => panic!("unknown backend {other:?}"),
    }
}

/// The child: runs cases `from..to`, printing `CASE i` before and `DONE i verdict` after each.
#[test]
fn corruption_child() {
    let Some(args) = crash::child_args() else {
        return;
    };
    let [backend_name, base, seed, flips, from, to] = args.as_slice() else {
        panic!("child arguments: {args:?}");
    };
    let backend = backend(backend_name);
    let base = std::fs::read(base).unwrap();
    let (seed, flips, from, to): (u64, u64, u64, u64) = (
        seed.parse().unwrap(),
        flips.parse().unwrap(),
        from.parse().unwrap(),
        to.parse().unwrap(),
    );
    // Panics are counted, not printed: thousands are expected and each is caught.
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::SeqCst);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("damaged.{backend_name}"));
    let expected = match backend {
        Backend::Redb => rt.block_on(recover(
            RedbStore::with_backend("clean", SimDisk::new(base.clone())),
            &keys(),
        )),
        Backend::Sqlite => {
            let clean = dir.path().join("clean.sqlite");
            std::fs::write(&clean, &base).unwrap();
            rt.block_on(recover(SqliteStore::open(&clean), &keys()))
        }
        Backend::Postgres => unreachable!("the sweep flips bits in store files"),
    }
    .expect("the undamaged store opens");
    let used = used_pages(&base);
    let mut out = std::io::stdout().lock();
    for i in from..to {
        writeln!(out, "CASE {i}").unwrap();
        out.flush().unwrap();
        let d = damage(seed, i, flips, &base, &used);
        let image = apply(&base, d);
        // Truncations (the empty file among them) and one flip in 64 go through the real
        // file and `RedbStore::open`, the path users take; every SQLite case does.
        let real =
            (backend == Backend::Sqlite || i >= flips || i % 64 == 0).then_some(file.as_path());
        let before = PANICS.load(Ordering::SeqCst);
        let verdict = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(judge(backend, &expected, image, real))
        }))
        .unwrap_or_else(|_| Verdict::Untyped("a panic escaped the library".into()));
        let panics = PANICS.load(Ordering::SeqCst) - before;
        let v = match verdict {
            Verdict::Correct => "correct".to_owned(),
            Verdict::RefusedOpen => "refused_open".to_owned(),
            Verdict::RefusedSpawn => "refused_spawn".to_owned(),
            Verdict::Wrong(w) => format!("wrong {d:?} {w}"),
            Verdict::Untyped(u) => format!("untyped {d:?} {u}"),
        };
        writeln!(out, "DONE {i} {panics} {v}").unwrap();
        out.flush().unwrap();
    }
}

#[derive(Default, Debug)]
struct Figures {
    cases: u64,
    correct: u64,
    refused_open: u64,
    refused_spawn: u64,
    wrong: u64,
    untyped: u64,
    panics_caught: u64,
    aborts: u64,
}

/// Runs cases `from..to` in children, restarting after an abort; returns the figures.
fn drive(backend: Backend, base: &Path, seed: u64, flips: u64, from: u64, to: u64) -> Figures {
    let name = backend.name();
    let mut f = Figures::default();
    let mut next = from;
    while next < to {
        let args = [
            name.to_owned(),
            base.display().to_string(),
            seed.to_string(),
            flips.to_string(),
            next.to_string(),
            to.to_string(),
        ];
        let mut child = crash::child("corruption_child", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the sweep child");
        let mut started = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let w: Vec<&str> = line.splitn(4, ' ').collect();
            match w.as_slice() {
                ["CASE", i] => started = Some(i.parse::<u64>().unwrap()),
                ["DONE", i, panics, verdict] => {
                    let i: u64 = i.parse().unwrap();
                    next = i + 1;
                    started = None;
                    f.cases += 1;
                    f.panics_caught += panics.parse::<u64>().unwrap();
                    let (kind, detail) = verdict.split_once(' ').unwrap_or((verdict, ""));
                    match kind {
                        "correct" => f.correct += 1,
                        "refused_open" => f.refused_open += 1,
                        "refused_spawn" => f.refused_spawn += 1,
                        "wrong" => f.wrong += 1,
                        _ => f.untyped += 1,
                    }
                    if kind == "wrong" || kind == "untyped" {
                        eprintln!(
                            "corruption: backend={name} seed={seed} case={i}: {kind}: {detail}"
                        );
                    }
                }
                _ => {}
            }
        }
        let status = child.wait().unwrap();
        if let Some(i) = started {
            f.cases += 1;
            f.aborts += 1;
            eprintln!(
                "corruption: backend={name} seed={seed} case={i}: the process died ({status}) (rerun with CRASH_SEED={seed} CRASH_CASE={i})"
            );
            next = i + 1;
        } else if !status.success() || next < to {
            panic!(
                "corruption: backend={name}: the sweep child failed ({status}) after case {next}"
            );
        }
    }
    f
}

#[test]
fn damaged_store_gives_the_right_state_or_a_typed_error_never_a_wrong_one() {
    if crash::child_args().is_some() {
        return;
    }
    sweep(Backend::Redb, count("CRASH_FLIPS", 20_000));
}

#[test]
fn damaged_sqlite_store_gives_the_right_state_or_a_typed_error_never_a_wrong_one() {
    if crash::child_args().is_some() {
        return;
    }
    sweep(Backend::Sqlite, count("CRASH_FLIPS", SQLITE_FLIPS));
}

/// Damages a store of `backend` built by the runtime, `flips` times and [`TRUNCATIONS`] times.
fn sweep(backend: Backend, flips: u64) {
    let name = backend.name();
    let seed = seed(&format!("corruption {name}"));
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join(format!("base.{name}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(build(backend, &base));
    let mut log = base.as_os_str().to_owned();
    log.push("-wal");
    assert!(
        !Path::new(&log).exists(),
        "the store was closed, so its whole state is in the one file the sweep damages"
    );
    let started = std::time::Instant::now();
    let total = flips + TRUNCATIONS;
    let (from, to) = match env_u64("CRASH_CASE") {
        Some(i) => (i, i + 1),
        None => (0, total),
    };
    // Two children, one per core.
    let mid = from + (to - from) / 2;
    let halves = std::thread::scope(|s| {
        let a = s.spawn(|| drive(backend, &base, seed, flips, from, mid));
        let b = s.spawn(|| drive(backend, &base, seed, flips, mid, to));
        [a.join().unwrap(), b.join().unwrap()]
    });
    let mut f = Figures::default();
    for h in halves {
        f.cases += h.cases;
        f.correct += h.correct;
        f.refused_open += h.refused_open;
        f.refused_spawn += h.refused_spawn;
        f.wrong += h.wrong;
        f.untyped += h.untyped;
        f.panics_caught += h.panics_caught;
        f.aborts += h.aborts;
    }
    // Straight to stderr, past the test harness's capture: CI shows the figures.
    let _ = writeln!(
        std::io::stderr(),
        "corruption: backend={name} flips={} truncations={} correct={} refused_open={} refused_spawn={} wrong={} untyped={} panics_caught={} aborts={} file={}B seed={seed} ({:.1}s)",
        flips.min(to.saturating_sub(from)),
        f.cases.saturating_sub(flips.min(f.cases)),
        f.correct,
        f.refused_open,
        f.refused_spawn,
        f.wrong,
        f.untyped,
        f.panics_caught,
        f.aborts,
        std::fs::metadata(&base).unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (f.wrong, f.untyped, f.aborts),
        (0, 0, 0),
        "corruption: backend={name} seed={seed}: see the lines above"
    );
}
