//! Tracing spans and events, and metrics through the `metrics` facade (see
//! `docs/observability.md`).
//!
//! The library installs no subscriber and no recorder. Metric handles are built once (per
//! [`crate::Storage`] for the committer's, per storage and namespace for the actors') and kept:
//! with no recorder installed each update is one branch on a no-op handle, and with one
//! installed it is the recorder's atomic update, with no lookup or allocation. A handle built
//! before a recorder was installed stays a no-op, so the recorder must be installed before the
//! `Storage` is built.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::key::ActorKey;

/// The target of every span and event of the library: `RUST_LOG=ractor_persist=debug` (or an
/// `EnvFilter` / `Targets` directive of that name) selects them all.
pub(crate) const TARGET: &str = "ractor_persist";

/// Histogram: seconds each store transaction took (the backend's commit call, one sync).
pub(crate) const COMMIT_DURATION: &str = "ractor_persist_commit_duration_seconds";
/// Histogram: actor commits written per store transaction (riders included).
pub(crate) const COMMIT_BATCH_SIZE: &str = "ractor_persist_commit_batch_size";
/// Counter: actor commits written (riders included).
pub(crate) const COMMITS_TOTAL: &str = "ractor_persist_commits_total";
/// Counter: removal-only actor commits (of operations done, attempt counts, dead-letter
/// moves) that rode on a transaction; included in [`COMMITS_TOTAL`].
pub(crate) const RIDERS_TOTAL: &str = "ractor_persist_commit_riders_total";
/// Counter: bytes of the actor commits written.
pub(crate) const COMMIT_BYTES_TOTAL: &str = "ractor_persist_commit_bytes_total";
/// Counter: store transactions written.
pub(crate) const TRANSACTIONS_TOTAL: &str = "ractor_persist_transactions_total";
/// Counter: store transactions that failed (a failure other than a fence).
pub(crate) const COMMIT_FAILURES_TOTAL: &str = "ractor_persist_commit_failures_total";
/// Counter: actor commits refused because a newer instance of the actor took a later epoch.
pub(crate) const FENCED_TOTAL: &str = "ractor_persist_fenced_total";
/// Gauge: operations pending in the actors running in this process.
pub(crate) const PENDING_OPS: &str = "ractor_persist_pending_ops";
/// Gauge: dead letters held by the actors running in this process.
pub(crate) const DEAD_LETTERS: &str = "ractor_persist_dead_letters";
/// Counter: operations moved to the dead letters.
pub(crate) const DEAD_LETTERS_TOTAL: &str = "ractor_persist_dead_letters_total";
/// Counter: failed attempts of operations that will be performed again.
pub(crate) const RETRIES_TOTAL: &str = "ractor_persist_retries_total";
/// Counter: letters to persistent actors posted again, and kept operations performed again,
/// by the redelivery of what was not acknowledged or confirmed.
pub(crate) const REDELIVERIES_TOTAL: &str = "ractor_persist_redeliveries_total";
/// Counter: records moved into the quarantine at start.
pub(crate) const QUARANTINED_TOTAL: &str = "ractor_persist_quarantined_total";
/// Histogram: seconds each actor's start took to load (and decode, and build) its state.
pub(crate) const LOAD_DURATION: &str = "ractor_persist_load_duration_seconds";

/// Describes every metric to the installed recorder (a no-op without one).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Time of each store transaction (one sync)"
    );
    describe_histogram!(
        COMMIT_BATCH_SIZE,
        Unit::Count,
        "Actor commits written per store transaction, riders included"
    );
    describe_counter!(
        COMMITS_TOTAL,
        Unit::Count,
        "Actor commits written, riders included"
    );
    describe_counter!(
        RIDERS_TOTAL,
        Unit::Count,
        "Removal-only actor commits that rode on a transaction (in commits_total too)"
    );
    describe_counter!(
        COMMIT_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of the actor commits written"
    );
    describe_counter!(
        TRANSACTIONS_TOTAL,
        Unit::Count,
        "Store transactions written"
    );
    describe_counter!(
        COMMIT_FAILURES_TOTAL,
        Unit::Count,
        "Store transactions that failed"
    );
    describe_counter!(
        FENCED_TOTAL,
        Unit::Count,
        "Actor commits refused: a newer instance of the actor took a later epoch"
    );
    describe_gauge!(
        PENDING_OPS,
        Unit::Count,
        "Operations pending in the actors running in this process"
    );
    describe_gauge!(
        DEAD_LETTERS,
        Unit::Count,
        "Dead letters held by the actors running in this process"
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Operations moved to the dead letters"
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Failed attempts of operations that will be performed again"
    );
    describe_counter!(
        REDELIVERIES_TOTAL,
        Unit::Count,
        "Letters posted again and kept operations performed again"
    );
    describe_counter!(
        QUARANTINED_TOTAL,
        Unit::Count,
        "Records moved into the quarantine at start"
    );
    describe_histogram!(
        LOAD_DURATION,
        Unit::Seconds,
        "Time of each actor's load at start"
    );
}

/// The committer's metric handles, labelled with the store's name; built with the storage.
pub(crate) struct CommitMetrics {
    duration: Histogram,
    batch: Histogram,
    commits: Counter,
    riders: Counter,
    bytes: Counter,
    transactions: Counter,
    failures: Counter,
}

impl CommitMetrics {
    /// The handles of the store named `store`, from the recorder installed now.
    pub(crate) fn new(store: &str) -> Self {
        describe();
        let label = |name: &'static str| metrics::Key::from_parts(name, vec![store_label(store)]);
        let meta = metadata();
        metrics::with_recorder(|r| CommitMetrics {
            duration: r.register_histogram(&label(COMMIT_DURATION), meta),
            batch: r.register_histogram(&label(COMMIT_BATCH_SIZE), meta),
            commits: r.register_counter(&label(COMMITS_TOTAL), meta),
            riders: r.register_counter(&label(RIDERS_TOTAL), meta),
            bytes: r.register_counter(&label(COMMIT_BYTES_TOTAL), meta),
            transactions: r.register_counter(&label(TRANSACTIONS_TOTAL), meta),
            failures: r.register_counter(&label(COMMIT_FAILURES_TOTAL), meta),
        })
    }

    /// A transaction of `commits` actor commits (`riders` of them riders) and `bytes` bytes
    /// was written in `took`.
    pub(crate) fn written(&self, commits: usize, riders: usize, bytes: usize, took: Duration) {
        self.duration.record(took.as_secs_f64());
        self.batch.record(commits as f64);
        self.commits.increment(commits as u64);
        self.riders.increment(riders as u64);
        self.bytes.increment(bytes as u64);
        self.transactions.increment(1);
    }

    /// A transaction whose every commit was refused by a fence took `took`: timed, not
    /// counted as written nor as failed.
    pub(crate) fn refused(&self, took: Duration) {
        self.duration.record(took.as_secs_f64());
    }

    /// A transaction failed after `took`.
    pub(crate) fn failed(&self, took: Duration) {
        self.duration.record(took.as_secs_f64());
        self.failures.increment(1);
    }
}

/// The `store` label.
fn store_label(store: &str) -> metrics::Label {
    metrics::Label::new("store", store.to_owned())
}

/// The `namespace` label.
fn namespace_label(namespace: &str) -> metrics::Label {
    metrics::Label::new("namespace", namespace.to_owned())
}

/// The metadata the library's metrics are registered with.
fn metadata() -> &'static metrics::Metadata<'static> {
    static META: metrics::Metadata<'static> =
        metrics::Metadata::new(TARGET, metrics::Level::INFO, Some(module_path!()));
    &META
}

/// A counter labelled with `namespace` (built at each call: for rare events).
fn namespace_counter(name: &'static str, namespace: &str) -> Counter {
    let key = metrics::Key::from_parts(name, vec![namespace_label(namespace)]);
    metrics::with_recorder(|r| r.register_counter(&key, metadata()))
}

/// A commit of `key` was refused by a fence: a warning, and `ractor_persist_fenced_total`.
pub(crate) fn fenced(key: &ActorKey, epoch: u64, current: u64) {
    tracing::warn!(
        name: "ractor_persist.fenced",
        target: TARGET,
        namespace = key.namespace(),
        key = key.key(),
        epoch,
        current,
        "commit refused: a newer instance of the actor took a later epoch"
    );
    namespace_counter(FENCED_TOTAL, key.namespace()).increment(1);
}

/// The metric handles of one namespace's actors on one storage, shared by them.
pub(crate) struct NamespaceMetrics {
    namespace: &'static str,
    pending: Gauge,
    dead: Gauge,
    dead_letters: Counter,
    retries: Counter,
    redeliveries: Counter,
    quarantined: Counter,
    load: Histogram,
}

impl NamespaceMetrics {
    fn new(namespace: &'static str) -> Self {
        let key =
            |name: &'static str| metrics::Key::from_parts(name, vec![namespace_label(namespace)]);
        let meta = metadata();
        metrics::with_recorder(|r| NamespaceMetrics {
            namespace,
            pending: r.register_gauge(&key(PENDING_OPS), meta),
            dead: r.register_gauge(&key(DEAD_LETTERS), meta),
            dead_letters: r.register_counter(&key(DEAD_LETTERS_TOTAL), meta),
            retries: r.register_counter(&key(RETRIES_TOTAL), meta),
            redeliveries: r.register_counter(&key(REDELIVERIES_TOTAL), meta),
            quarantined: r.register_counter(&key(QUARANTINED_TOTAL), meta),
            load: r.register_histogram(&key(LOAD_DURATION), meta),
        })
    }

    /// An actor's load took `took`.
    pub(crate) fn loaded(&self, took: Duration) {
        self.load.record(took.as_secs_f64());
    }

    /// `n` operations were moved to the dead letters.
    pub(crate) fn dead_lettered(&self, n: u64) {
        self.dead_letters.increment(n);
    }

    /// `n` failed attempts will be tried again.
    pub(crate) fn retried(&self, n: u64) {
        self.retries.increment(n);
    }

    /// `n` letters were posted again, or kept operations performed again.
    pub(crate) fn redelivered(&self, n: u64) {
        self.redeliveries.increment(n);
    }

    /// A record was quarantined.
    pub(crate) fn quarantined(&self) {
        self.quarantined.increment(1);
    }
}

/// The namespaces' metric handles of one storage, built on first use.
#[derive(Default)]
pub(crate) struct Namespaces {
    known: Mutex<Vec<Arc<NamespaceMetrics>>>,
}

impl Namespaces {
    /// The handles of `namespace`, built the first time it is asked for.
    pub(crate) fn get(&self, namespace: &'static str) -> Arc<NamespaceMetrics> {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = known.iter().find(|m| m.namespace == namespace) {
            return found.clone();
        }
        let made = Arc::new(NamespaceMetrics::new(namespace));
        known.push(made.clone());
        made
    }
}

/// What one running actor adds to its namespace's gauges, and the message counter of its
/// spans. Taken off the gauges when the actor's runtime is dropped (a stop, a failure, a kill).
pub(crate) struct Tally {
    metrics: Arc<NamespaceMetrics>,
    pending: u32,
    dead: u32,
    /// The message cycles this instance ran (the `seq` field of its message spans).
    pub(crate) messages: u64,
}

impl Tally {
    /// An actor of `metrics`'s namespace that adds nothing yet.
    pub(crate) fn new(metrics: Arc<NamespaceMetrics>) -> Self {
        Tally {
            metrics,
            pending: 0,
            dead: 0,
            messages: 0,
        }
    }

    /// The namespace's handles.
    pub(crate) fn metrics(&self) -> &NamespaceMetrics {
        &self.metrics
    }

    /// The actor now holds `pending` operations and `dead` dead letters: moves the gauges by
    /// the difference (nothing when neither changed).
    pub(crate) fn set(&mut self, pending: usize, dead: usize) {
        let pending = u32::try_from(pending).unwrap_or(u32::MAX);
        let dead = u32::try_from(dead).unwrap_or(u32::MAX);
        if pending != self.pending {
            move_gauge(&self.metrics.pending, self.pending, pending);
            self.pending = pending;
        }
        if dead != self.dead {
            move_gauge(&self.metrics.dead, self.dead, dead);
            self.dead = dead;
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.set(0, 0);
    }
}

/// Moves `gauge` from `from` to `to`.
fn move_gauge(gauge: &Gauge, from: u32, to: u32) {
    if to > from {
        gauge.increment(f64::from(to - from));
    } else {
        gauge.decrement(f64::from(from - to));
    }
}
