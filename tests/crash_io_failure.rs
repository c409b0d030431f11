//! I/O failure at every step: for every backend operation of a commit (with the close that
//! writes its removals), a load, a recovery and a first create, that operation fails, once or
//! from then on. A failed commit is never acknowledged; every failure reaches the caller as a
//! typed error; and after reopening the same bytes with a healthy backend the state is the old
//! one or the new one, the new one if it was acknowledged, with its pending operations.
//!
//! The figure is the share of operation points where the failure was injected and checked:
//! `points=covered/total`, which must be 100%. `CRASH_SEED` reruns a seed (it picks the
//! appended values).

mod crash;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;

use crash::torture::{Tally, mix};
use crash::{
    FailMode, Failing, Fault, Seen, SimDisk, TallyMsg, kept, kept_pending, peek, recover, seed,
    spawn_error, spawn_tally,
};
use ractor::call;
use ractor_persist::{RedbStore, Storage};

const KEYS: [&str; 2] = ["a0", "a1"];
const SETUP_APPENDS: u64 = 4;

fn keys() -> Vec<String> {
    KEYS.iter().map(|k| (*k).to_owned()).collect()
}

#[derive(Default)]
struct Figures {
    /// Operation points per phase, in order: commit, load, recovery, create.
    phases: Vec<(&'static str, u64)>,
    total: u64,
    covered: u64,
    acked: u64,
    refused: u64,
    violations: u64,
}

impl Figures {
    fn bad(&mut self, seed: u64, phase: &str, n: u64, mode: FailMode, what: String) {
        self.violations += 1;
        eprintln!("io-failure: seed={seed} phase={phase} op={n} mode={mode:?}: {what}");
    }
}

/// Values appended to each actor: `SETUP_APPENDS` before the phase, one more in it.
fn values(seed: u64, key: &str) -> Vec<u64> {
    let a = u64::from(key.as_bytes()[1]);
    (0..=SETUP_APPENDS)
        .map(|i| mix(seed ^ mix(a) ^ i))
        .collect()
}

/// A store with `SETUP_APPENDS` appends per actor: (closed cleanly, left open by a crash).
async fn setup(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let disk = SimDisk::new(Vec::new());
    let storage = Storage::new(RedbStore::with_backend("setup", disk.clone()).unwrap());
    let mut actors = Vec::new();
    for key in KEYS {
        let a = spawn_tally(&storage, key, crash::Performed::default().sink())
            .await
            .unwrap();
        for v in &values(seed, key)[..SETUP_APPENDS as usize] {
            call!(a, TallyMsg::Append, *v).unwrap();
        }
        peek(&a).await;
        actors.push(a);
    }
    // What a killed process leaves: the store was never closed.
    let unclean = disk.live();
    for a in actors {
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
    (disk.live(), unclean)
}

/// Checks a recovered actor: its state is one of `allowed` prefixes of its values, and its
/// replays are the pending operations of that state.
fn check_seen(seen: &Seen, vals: &[u64], allowed: &[u64]) -> Result<(), String> {
    let len = seen.tally.len;
    if !allowed.contains(&len) || seen.tally != Tally::of(&vals[..len as usize]) {
        return Err(format!(
            "state {:?}, expected one of the lengths {allowed:?}",
            seen.tally
        ));
    }
    for idx in kept_pending(len) {
        if !seen.replayed.contains(&idx) {
            return Err(format!("kept op {idx} not performed after reopening"));
        }
    }
    if let Some(idx) = seen
        .replayed
        .iter()
        .find(|i| **i >= len || (kept(**i) && !kept_pending(len).contains(i)))
    {
        return Err(format!("op {idx} performed again but not pending"));
    }
    Ok(())
}

fn check_all(
    seen: &BTreeMap<String, Seen>,
    seed: u64,
    allowed: &dyn Fn(&str) -> Vec<u64>,
) -> Result<(), String> {
    for key in KEYS {
        let s = seen.get(key).ok_or(format!("{key} not recovered"))?;
        check_seen(s, &values(seed, key), &allowed(key)).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(())
}

/// One append to `a0` with the failure armed `n` operations ahead; then the close.
/// Returns whether the append was acknowledged, and the disk.
async fn commit_phase(base: &[u8], seed: u64, n: Option<(u64, FailMode)>) -> (bool, SimDisk) {
    let disk = SimDisk::new(base.to_vec());
    let storage = Storage::new(RedbStore::with_backend("commit", disk.clone()).unwrap());
    let a = spawn_tally(&storage, "a0", crash::Performed::default().sink())
        .await
        .unwrap();
    peek(&a).await;
    if let Some((n, mode)) = n {
        disk.fault.arm(n, mode);
    } else {
        disk.fault.arm(u64::MAX, FailMode::Once);
    }
    let v = values(seed, "a0")[SETUP_APPENDS as usize];
    let acked = call!(a, TallyMsg::Append, v).is_ok();
    if acked {
        let _ = call!(a, TallyMsg::Peek);
    }
    let _ = a.stop_and_wait(None, None).await;
    let _ = storage.close().await;
    (acked, disk)
}

/// Spawns both actors with the failure armed `n` operations ahead.
async fn load_phase(base: &[u8], n: Option<(u64, FailMode)>) -> (Result<(), String>, SimDisk) {
    let disk = SimDisk::new(base.to_vec());
    let storage = Storage::new(RedbStore::with_backend("load", disk.clone()).unwrap());
    match n {
        Some((n, mode)) => disk.fault.arm(n, mode),
        None => disk.fault.arm(u64::MAX, FailMode::Once),
    }
    let mut result = Ok(());
    for key in KEYS {
        match spawn_tally(&storage, key, crash::Performed::default().sink()).await {
            Ok(a) => {
                peek(&a).await;
                let _ = a.stop_and_wait(None, None).await;
            }
            Err(e) => {
                result = Err(spawn_error(e));
                break;
            }
        }
    }
    let _ = storage.close().await;
    (result, disk)
}

/// Opens a store left open by a crash (redb repairs it) and spawns both actors, with the
/// failure armed `n` operations from the start.
async fn recovery_phase(
    unclean: &[u8],
    n: Option<(u64, FailMode)>,
) -> (Result<BTreeMap<String, Seen>, String>, SimDisk) {
    let disk = SimDisk::new(unclean.to_vec());
    match n {
        Some((n, mode)) => disk.fault.arm(n, mode),
        None => disk.fault.arm(u64::MAX, FailMode::Once),
    }
    let r = recover(RedbStore::with_backend("recovery", disk.clone()), &keys()).await;
    (r, disk)
}

/// A first create of a real file with the failure armed `n` operations from the start.
fn create_phase(n: Option<(u64, FailMode)>) -> (Result<(), String>, Arc<Fault>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let fault = Arc::new(Fault::new());
    match n {
        Some((n, mode)) => fault.arm(n, mode),
        None => fault.arm(u64::MAX, FailMode::Once),
    }
    let path = dir.path().join("store.redb");
    let f = fault.clone();
    let result = RedbStore::open_wrapped(&path, move |inner| Failing {
        inner,
        fault: f.clone(),
    })
    .map(drop)
    .map_err(|e| e.to_string());
    (result, fault, dir)
}

async fn run(seed: u64, f: &mut Figures) {
    let (base, unclean) = setup(seed).await;
    let modes = [FailMode::Once, FailMode::Sticky];
    let old = |_: &str| vec![SETUP_APPENDS];

    // A commit and the close after it.
    let (_, dry) = commit_phase(&base, seed, None).await;
    let total = dry.fault.ops_since_arm();
    for n in 0..total {
        for mode in modes {
            f.total += 1;
            let (acked, disk) = commit_phase(&base, seed, Some((n, mode))).await;
            if disk.fault.fired() > 0 {
                f.covered += 1;
            }
            f.acked += u64::from(acked);
            let allowed = |key: &str| match (key, acked) {
                ("a0", true) => vec![SETUP_APPENDS + 1],
                ("a0", false) => vec![SETUP_APPENDS, SETUP_APPENDS + 1],
                _ => vec![SETUP_APPENDS],
            };
            let seen = recover(
                RedbStore::with_backend("reopen", SimDisk::new(disk.live())),
                &keys(),
            )
            .await;
            if let Err(e) = seen.and_then(|s| check_all(&s, seed, &allowed)) {
                f.bad(seed, "commit", n, mode, e);
            }
        }
    }

    f.phases.push((
        "commit",
        f.total - f.phases.iter().map(|p| p.1).sum::<u64>(),
    ));
    // A load of each actor.
    let (_, dry) = load_phase(&base, None).await;
    let total = dry.fault.ops_since_arm();
    for n in 0..total {
        for mode in modes {
            f.total += 1;
            let (result, disk) = load_phase(&base, Some((n, mode))).await;
            if disk.fault.fired() > 0 {
                f.covered += 1;
            }
            if let Err(e) = &result {
                f.refused += 1;
                if !e.starts_with("LoadError") {
                    f.bad(seed, "load", n, mode, format!("an untyped failure: {e}"));
                }
            }
            let seen = recover(
                RedbStore::with_backend("reopen", SimDisk::new(disk.live())),
                &keys(),
            )
            .await;
            if let Err(e) = seen.and_then(|s| check_all(&s, seed, &old)) {
                f.bad(seed, "load", n, mode, e);
            }
        }
    }

    f.phases
        .push(("load", f.total - f.phases.iter().map(|p| p.1).sum::<u64>()));
    // The recovery of a store a crash left open: redb's repair, our checks, the loads.
    let (dry, disk) = recovery_phase(&unclean, None).await;
    if let Err(e) = dry.and_then(|s| check_all(&s, seed, &old)) {
        f.bad(
            seed,
            "recovery",
            0,
            FailMode::Once,
            format!("without a failure: {e}"),
        );
    }
    let total = disk.fault.ops_since_arm();
    for n in 0..total {
        for mode in modes {
            f.total += 1;
            let (result, disk) = recovery_phase(&unclean, Some((n, mode))).await;
            if disk.fault.fired() > 0 {
                f.covered += 1;
            }
            match result {
                Ok(seen) => {
                    if let Err(e) = check_all(&seen, seed, &old) {
                        f.bad(seed, "recovery", n, mode, format!("while failing: {e}"));
                    }
                }
                Err(e) => {
                    f.refused += 1;
                    if !(e.starts_with("open: ") || e.contains("LoadError")) {
                        f.bad(
                            seed,
                            "recovery",
                            n,
                            mode,
                            format!("an untyped failure: {e}"),
                        );
                    }
                }
            }
            let seen = recover(
                RedbStore::with_backend("reopen", SimDisk::new(disk.live())),
                &keys(),
            )
            .await;
            if let Err(e) = seen.and_then(|s| check_all(&s, seed, &old)) {
                f.bad(seed, "recovery", n, mode, e);
            }
        }
    }

    f.phases.push((
        "recovery",
        f.total - f.phases.iter().map(|p| p.1).sum::<u64>(),
    ));
    // The first create of a store file.
    let (dry, fault, _dir) = create_phase(None);
    dry.expect("a create without failures");
    let total = fault.ops();
    for n in 0..total {
        for mode in modes {
            f.total += 1;
            let (result, fault, dir) = create_phase(Some((n, mode)));
            if fault.fired() > 0 {
                f.covered += 1;
            }
            if result.is_err() {
                f.refused += 1;
            }
            let path = dir.path().join("store.redb");
            let seen = recover(RedbStore::open(&path), &keys()).await;
            if let Err(e) = seen.and_then(|s| check_fresh(&s)) {
                f.bad(seed, "create", n, mode, e);
            }
        }
    }
    f.phases.push((
        "create",
        f.total - f.phases.iter().map(|p| p.1).sum::<u64>(),
    ));
}

fn check_fresh(seen: &BTreeMap<String, Seen>) -> Result<(), String> {
    for key in KEYS {
        let s = seen.get(key).ok_or(format!("{key} not recovered"))?;
        if s.tally != Tally::default() || !s.replayed.is_empty() {
            return Err(format!("{key}: a new store holds {:?}", s));
        }
    }
    Ok(())
}

#[test]
fn io_failure_at_every_operation_is_typed_and_leaves_the_old_or_the_acknowledged_state() {
    let seed = seed("io-failure");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut f = Figures::default();
    rt.block_on(run(seed, &mut f));
    let phases: Vec<String> = f.phases.iter().map(|(p, n)| format!("{p}={n}")).collect();
    // Straight to stderr, past the test harness's capture: CI shows the figures.
    let _ = writeln!(
        std::io::stderr(),
        "io-failure: points={}/{} ({:.0}%) [{}] acked={} refused={} violations={} seed={seed} ({:.1}s)",
        f.covered,
        f.total,
        100.0 * f.covered as f64 / f.total.max(1) as f64,
        phases.join(" "),
        f.acked,
        f.refused,
        f.violations,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        f.violations, 0,
        "io-failure: seed={seed}: see the lines above"
    );
    assert_eq!(
        f.covered, f.total,
        "io-failure: some operation points were never reached"
    );
}
