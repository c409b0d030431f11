//! Runs the channel example (built by `cargo test` with the other examples) for a few seeds:
//! Alice and Bob must agree, each update applied once, nothing left pending, and Carol must
//! hold each report once. The example checks this itself and exits non-zero otherwise.
//!
//! Runs the ledger example once: the event-sourced accounts' balances, refusals, recovery,
//! audit and compaction are checked by the example itself, which exits non-zero if one is
//! wrong.
//!
//! Runs the metrics example once: it scrapes its own Prometheus endpoint over HTTP and exits
//! non-zero if the commit, retry and dead-letter metrics are missing from the scrape.

use std::path::PathBuf;
use std::process::Command;

/// Where cargo put the example binary: `target/<profile>/examples/<name>`, beside the
/// `deps` directory this test runs from.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_channel_example_agrees_for_several_seeds() {
    let bin = example("channel");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds the examples",
        bin.display()
    );
    for seed in 1..=4 {
        let out = Command::new(&bin)
            .env("CHANNEL_SEED", seed.to_string())
            .output()
            .expect("run the channel example");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "seed {seed}: the example failed\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("alice and bob agree"),
            "seed {seed}: {last}"
        );
    }
}

#[test]
fn the_ledger_example_checks_itself() {
    let bin = example("ledger");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds the examples",
        bin.display()
    );
    let out = Command::new(&bin).output().expect("run the ledger example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the ledger example failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("ledger: every check passed"), "{last}");
}

#[test]
fn the_metrics_example_scrapes_its_own_prometheus_endpoint() {
    let bin = example("metrics");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds the examples",
        bin.display()
    );
    let out = Command::new(&bin)
        .output()
        .expect("run the metrics example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the metrics example failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ractor_persist_commits_total{")),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("metrics: the scrape has"), "{last}");
}
