//! The message cycle on ractor: load, handle, commit, reply, perform.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use std::time::Instant;
use tracing::Instrument;
use tracing::field::{Empty, display};

use ractor::{ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::delivery::{
    self, Body, ChannelRow, InboxEntry, InboxRow, Letter, Mail, Outgoing, OutgoingRow, Redelivery,
    Refusal, RequestRow, Settled, StoredReply, Wire,
};
use crate::envelope::{self, Header, Kind, Place};
use crate::error::{CommitError, DecodeError, DecodeReason, LoadError, RecordRef, StoreError};
use crate::journal::{
    DEFAULT_SNAPSHOT_EVERY, HEAD_ROW, HEAD_VERSION, HeadRow, JournalState, Retention, SNAPSHOT_ROW,
};
use crate::key::ActorKey;
use crate::map::{MAP_VERSION, MapSet};
use crate::model::{
    Control, OpId, Outcome, Pending, Persistent, PersistentActor, RetryPolicy, Stored,
};
use crate::observe::{NamespaceMetrics, TARGET, Tally};
use crate::shape::shape_fingerprint;
use crate::storage::{Storage, next_sequence, panic_text, sequence_floor};
use crate::store::{ActorCommit, Space};
use crate::timer::{Fired, Timer, TimerChange, TimerError, TimerRow, Timers};
use crate::transform::Transforms;
use crate::tx::{FiredRow, Tx};

/// The start arguments of a persistent actor: where it lives and what `init` gets.
///
/// Pass it to ractor's `Actor::spawn` / `spawn_linked` when you need a supervisor, a handler
/// value that is not `Default`, or one of the options below; for a name alone,
/// [`crate::SpawnPersistent::spawn_persistent_named`] does it.
pub struct Start<A: PersistentActor> {
    storage: Storage,
    key: String,
    args: A::Arguments,
    quarantine: bool,
    retry: RetryPolicy,
    max_pending: usize,
    redelivery: Redelivery,
    request_retention: usize,
    life: Option<Arc<crate::entities::Life>>,
    snapshot_every: u64,
    retention: Retention,
}

/// How far ahead of the ids handed out the stored sequence floor is raised. Ids are
/// contiguous while the snapshot is intact; after a delete, a quarantine or a damaged snapshot
/// header the next incarnation goes on from the floor, skipping at most this many.
const FLOOR_BLOCK: u64 = 1024;

/// The default most pending operations one actor may hold (see [`Start::max_pending`]).
pub const DEFAULT_MAX_PENDING: usize = 65_536;

impl<A: PersistentActor> Start<A> {
    /// Actor `key` on `storage`; `args` go to `init` if the store holds no state for it.
    pub fn new(storage: &Storage, key: impl Into<String>, args: A::Arguments) -> Self {
        Start {
            storage: storage.clone(),
            key: key.into(),
            args,
            quarantine: false,
            retry: RetryPolicy::default(),
            max_pending: DEFAULT_MAX_PENDING,
            redelivery: Redelivery::default(),
            request_retention: delivery::DEFAULT_REQUEST_RETENTION,
            life: None,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            retention: Retention::Full,
        }
    }

    /// For an event-sourced actor ([`crate::EventSourced`]): write a snapshot of the state every
    /// `events` events (default [`DEFAULT_SNAPSHOT_EVERY`]; 0 counts as 1), so that a start
    /// applies at most that many events after the latest snapshot. `u64::MAX`: never after
    /// the first commit's (a start then applies the whole journal). Ignored in snapshot mode.
    pub fn snapshot_every(mut self, events: u64) -> Self {
        self.snapshot_every = events.max(1);
        self
    }

    /// For an event-sourced actor: keep every event ([`Retention::Full`], the default) or
    /// remove the events a snapshot covers in its commit ([`Retention::Light`]). Ignored in
    /// snapshot mode.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Ties the actor to a registry that tracks its activity and its next wake.
    pub(crate) fn life(mut self, life: Arc<crate::entities::Life>) -> Self {
        self.life = Some(life);
        self
    }

    /// When messages to other persistent actors that were not acknowledged are posted
    /// again, and operations kept until confirmation are performed again (see
    /// [`Redelivery`]; the default starts at 500 ms and backs off to 30 s).
    pub fn redelivery(mut self, policy: Redelivery) -> Self {
        self.redelivery = policy;
        self
    }

    /// How many replies to idempotent requests ([`Tx::once`]) the actor keeps, oldest
    /// dropped first (default [`delivery::DEFAULT_REQUEST_RETENTION`], at least 1). A repeat
    /// of a request whose reply was dropped is applied again as a new one.
    pub fn request_retention(mut self, count: usize) -> Self {
        self.request_retention = count.max(1);
        self
    }

    /// When operations that ask for [`Outcome::Retry`] (or whose `perform` failed) are
    /// performed again, and after how many failed attempts they become dead letters.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The most operations the actor may hold pending (default [`DEFAULT_MAX_PENDING`]);
    /// past it, [`Tx::push`] returns [`crate::OverCapacity`] and [`Tx::requeue`] refuses.
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// Opts in to starting fresh when the stored record's bytes are damaged (see
    /// [`DecodeReason::is_damage`]): the record is moved, with its original bytes and the
    /// reason, into the store's quarantine (see [`Storage::quarantined`]) and `init` builds a
    /// new state. Operation ids go on above every id the moved record used, even across a
    /// restart before the first write.
    ///
    /// Only damage is moved aside. An intact record this code cannot read (written by a newer
    /// schema or format, a changed shape, a missing migration) always fails the spawn with
    /// the [`LoadError::Decode`], as it does without the opt-in (the default), and nothing is
    /// touched: a rolled-back deploy must not reset its actors.
    pub fn quarantine_undecodable(mut self) -> Self {
        self.quarantine = true;
        self
    }
}

/// The ractor state of a persistent actor: the user's state and what the runtime keeps.
pub struct Runtime<A: PersistentActor> {
    key: Arc<ActorKey>,
    storage: Storage,
    epoch: u64,
    schema: u32,
    /// Shape fingerprints of the state and op types (0: unknown), written into envelopes.
    state_shape: u64,
    op_shape: u64,
    state: A::State,
    /// The digest of the last committed state's encoding, to detect change.
    committed: Digest,
    /// The encoding of the state `init` built, until the first commit: what a failure before
    /// then rolls back to (the store holds no state yet). After the first commit a rollback
    /// reads the stored snapshot back instead, so the actor keeps no copy of its state.
    initial: Option<Box<[u8]>>,
    /// A rollback could not read the stored state back: the state in memory may not be the
    /// store's, so this instance serves nothing more.
    failed: bool,
    pending: BTreeMap<u64, Pending<A::Op>>,
    /// Operations that failed too often: stored, not performed, until re-queued.
    dead: BTreeMap<u64, Pending<A::Op>>,
    next_seq: u64,
    /// The key's sequence floor in the store: every id below it is reserved. A commit that
    /// hands out an id at or above it raises it a block ahead ([`FLOOR_BLOCK`]).
    reserved: u64,
    /// Operations whose last `perform` asked to be retried, and when they are due.
    retry: BTreeMap<u64, Instant>,
    /// When the retry timer armed last fires.
    timer: Option<Instant>,
    policy: RetryPolicy,
    max_pending: usize,
    /// Outbox, channels, inbox, stored replies, kept operations, settlements (allocated
    /// on first use).
    mail: delivery::MailBox,
    redelivery: Redelivery,
    request_retention: usize,
    /// Durable timers (allocated when the actor has one).
    timers: Option<Box<TimerState>>,
    /// The registry's view of this actor, when a registry activated it.
    life: Option<Arc<crate::entities::Life>>,
    /// The journal of an event-sourced actor (`None` in snapshot mode).
    journal: Option<Box<JournalState>>,
    /// The actor's durable maps.
    maps: MapSet,
    /// xorshift state for retry jitter.
    rng: u64,
    /// What the actor adds to its namespace's gauges, and its message counter.
    tally: Tally,
}

/// An actor's durable timers and when the sleep armed for them ends.
#[derive(Default)]
struct TimerState {
    timers: Timers,
    wake: Option<Instant>,
}

/// No timers: what an actor without any reads.
static NO_TIMERS: Timers = Timers::new();

impl<A: PersistentActor> Runtime<A> {
    /// The actor's key.
    pub fn key(&self) -> &ActorKey {
        &self.key
    }

    /// The user's state, as last handled.
    pub fn state(&self) -> &A::State {
        &self.state
    }

    /// The pending operations, by sequence number.
    pub fn pending(&self) -> impl Iterator<Item = &Pending<A::Op>> {
        self.pending.values()
    }

    /// A random number in 0..1 for jitter (xorshift64; quality is not the point).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn op_envelope(&self, kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
        self.seal(kind, self.schema, self.op_shape, seq, payload)
    }

    /// Seals `payload` as row `id` of this actor, with its epoch and the storage's
    /// transforms; the header's sequence is the row id.
    fn seal(&self, kind: Kind, schema: u32, fingerprint: u64, id: u64, payload: &[u8]) -> Vec<u8> {
        let head = Header {
            schema,
            sequence: id,
            fingerprint,
        };
        self.seal_as(kind, head, id, payload)
    }

    /// Seals `payload` as row `id` of this actor with the header `head`.
    fn seal_as(&self, kind: Kind, head: Header, id: u64, payload: &[u8]) -> Vec<u8> {
        let place = Place { key: &self.key, id };
        let transforms = self.storage.transforms();
        envelope::seal(kind, head, self.epoch, payload, transforms, place)
    }

    /// The record of a pending operation: plain while it never failed, with its failed
    /// attempts once it did.
    fn pending_envelope(&self, seq: u64, attempts: u32, op: &[u8]) -> Vec<u8> {
        if attempts == 0 {
            self.op_envelope(Kind::Op, seq, op)
        } else {
            let payload = envelope::join_attempts(attempts, op);
            self.op_envelope(Kind::RetriedOp, seq, &payload)
        }
    }

    /// The envelope of one of the runtime's own rows.
    fn row_envelope<T: serde::Serialize>(
        &self,
        kind: Kind,
        id: u64,
        row: &T,
    ) -> Result<Vec<u8>, CommitError> {
        let what = if kind == Kind::Timer {
            "timer"
        } else {
            "delivery row"
        };
        let payload = envelope::to_payload(row).map_err(|source| CommitError::Encode {
            key: (*self.key).clone(),
            what,
            source,
        })?;
        Ok(self.seal(kind, ROW_VERSION, 0, id, &payload))
    }

    fn encode_error(&self, what: &'static str, source: postcard::Error) -> CommitError {
        CommitError::Encode {
            key: (*self.key).clone(),
            what,
            source,
        }
    }

    fn fail(&self, source: StoreError) -> CommitError {
        match source {
            StoreError::Fenced(f) if f.len() == 1 => CommitError::Fenced {
                key: (*self.key).clone(),
                epoch: f[0].epoch,
                current: f[0].current,
            },
            source => CommitError::Store {
                key: (*self.key).clone(),
                source,
            },
        }
    }
}

/// Loads the actor's record (taking a new epoch), or builds its first state with `init`.
///
/// The load is the `ractor_persist.load` span, and its time goes to
/// `ractor_persist_load_duration_seconds`.
pub async fn pre_start<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    start: Start<A>,
) -> Result<Runtime<A>, ActorProcessingErr> {
    let metrics = start.storage.namespace_metrics(A::NAME);
    let span = tracing::info_span!(
        target: TARGET,
        "ractor_persist.load",
        namespace = A::NAME,
        key = start.key.as_str(),
        epoch = Empty,
        pending = Empty,
        dead = Empty,
        replayed_ops = Empty,
        replayed_events = Empty,
        duration_seconds = Empty,
        outcome = Empty,
        error = Empty,
    );
    let started = Instant::now();
    let loaded = load(actor, myself, start, &span, metrics.clone())
        .instrument(span.clone())
        .await;
    let took = started.elapsed();
    metrics.loaded(took);
    span.record("duration_seconds", took.as_secs_f64());
    match loaded {
        Ok(mut rt) => {
            rt.tally.set(rt.pending.len(), rt.dead.len());
            if !span.is_disabled() {
                // Performed again by the start hook: every pending operation but those
                // waiting for a retry.
                let waiting = rt.pending.keys().filter(|s| rt.retry.contains_key(s));
                span.record("pending", rt.pending.len());
                span.record("dead", rt.dead.len());
                span.record("replayed_ops", rt.pending.len() - waiting.count());
            }
            Ok(rt)
        }
        Err(e) => {
            span.record("outcome", "failed");
            span.record("error", display(&e));
            Err(e)
        }
    }
}

/// [`pre_start`], in its span: records the epoch, the outcome ("loaded", "initialized" or
/// "quarantined") and the events an event-sourced actor replayed.
async fn load<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    start: Start<A>,
    span: &tracing::Span,
    metrics: Arc<NamespaceMetrics>,
) -> Result<Runtime<A>, ActorProcessingErr> {
    let key = Arc::new(ActorKey::new(A::NAME, start.key));
    let store_err = |source| LoadError::Store {
        key: (*key).clone(),
        source,
    };
    let loaded = start
        .storage
        .load((*key).clone())
        .await
        .map_err(store_err)?;
    span.record("epoch", loaded.epoch);
    let state_shape = shape_fingerprint::<A::State>().unwrap_or(0);
    let op_shape = shape_fingerprint::<A::Op>().unwrap_or(0);
    // Ids go on above every one the key ever used, whatever happened to its record.
    let mut next_seq = next_sequence(&loaded, FLOOR_BLOCK);
    let mut reserved = loaded.floor;
    let journal_hooks = A::__journal();
    let mut quarantined = false;
    let record = match decode_record::<A>(&key, &loaded, start.storage.transforms()).map_err(|e| *e)
    {
        Ok(decoded) => decoded,
        // An event-sourced record is never moved aside: its journal is its history.
        Err(LoadError::Decode(e))
            if start.quarantine && e.reason.is_damage() && journal_hooks.is_none() =>
        {
            // Opted in, and the bytes are damaged: keep them aside and start fresh. The
            // floor is written in the same transaction, so no id is reused even if this
            // instance stops before its first write.
            let floor = sequence_floor(&loaded);
            let reason = e.to_string();
            start
                .storage
                .quarantine(&key, loaded.epoch, reason.clone(), &loaded, floor)
                .await
                .map_err(store_err)?;
            tracing::warn!(
                name: "ractor_persist.quarantined",
                target: TARGET,
                namespace = key.namespace(),
                key = key.key(),
                epoch = loaded.epoch,
                reason = reason.as_str(),
                "damaged record moved into the quarantine; the actor starts from init"
            );
            metrics.quarantined();
            span.record("outcome", "quarantined");
            quarantined = true;
            (next_seq, reserved) = (floor, floor);
            Record::default()
        }
        Err(e) => return Err(e.into()),
    };
    let Record {
        snapshot,
        head,
        pending,
        dead,
        mail,
        timers,
        waiting,
        maps,
    } = record;
    if let Some(head) = &head {
        span.record("replayed_events", head.last.saturating_sub(head.snapshot));
    }
    let (state, committed, initial) = match snapshot {
        Some((state, committed)) => {
            span.record("outcome", "loaded");
            (state, Digest::of(&committed), None)
        }
        None => {
            // A quarantine recorded its outcome already.
            if !quarantined {
                span.record("outcome", "initialized");
            }
            let state = actor.init(start.args).await?;
            let encoded = envelope::to_payload(&state).map_err(|source| LoadError::Encode {
                key: (*key).clone(),
                source,
            })?;
            (
                state,
                Digest::of(&encoded),
                Some(encoded.into_boxed_slice()),
            )
        }
    };
    let journal = journal_hooks.map(|hooks| {
        Box::new(JournalState {
            head: head.unwrap_or_default(),
            stored: head.is_some(),
            every: start.snapshot_every,
            retention: start.retention,
            event_shape: (hooks.shape)(),
        })
    });
    let seed = key
        .to_string()
        .bytes()
        .fold(loaded.epoch ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // Reachable by key from now on: letters wait in the mailbox until the start hook ran.
    if A::wrap_control(Control::RedeliverDue).is_some() {
        let slot: delivery::Slot = Arc::new(move |wire: Wire| {
            let control = match wire {
                Wire::Letter(letter) => Control::Letter(letter),
                Wire::Arrived(key) => Control::Arrived(key),
            };
            A::wrap_control(control).is_some_and(|msg| myself.send_message(msg).is_ok())
        });
        start.storage.postbox().register(&key, loaded.epoch, slot);
    }
    Ok(Runtime {
        key,
        storage: start.storage,
        epoch: loaded.epoch,
        schema: A::VERSION,
        state_shape,
        op_shape,
        state,
        committed,
        initial,
        failed: false,
        pending,
        dead,
        next_seq,
        reserved,
        // Retries whose instant is still ahead wait it out, across the restart.
        retry: {
            let (wall, now) = (crate::timer::now_ms(), Instant::now());
            // No retry waits longer than the current policy's longest delay (nor longer
            // than it was told to when the clock stepped back); one left nothing to wait is
            // performed again at start, as every other pending operation.
            waiting
                .into_iter()
                .map(|(seq, due)| {
                    let left = std::time::Duration::from_millis(due.saturating_sub(wall));
                    (seq, left.min(start.retry.max()))
                })
                .filter(|(_, left)| !left.is_zero())
                .map(|(seq, left)| (seq, now + left))
                .collect()
        },
        timer: None,
        policy: start.retry,
        max_pending: start.max_pending,
        mail: delivery::MailBox::new(mail),
        redelivery: start.redelivery,
        request_retention: start.request_retention,
        timers: (!timers.is_empty()).then(|| Box::new(TimerState { timers, wake: None })),
        life: start.life,
        journal,
        maps,
        rng: seed | 1,
        tally: Tally::new(metrics),
    })
}

/// A loaded record, decoded: the state (and its current-version encoding, in snapshot mode)
/// if there is one; the journal's head (event-sourced); the pending operations; the dead
/// letters; the delivery state; the timers; the retries waiting; the durable maps.
struct Record<A: PersistentActor> {
    snapshot: Option<(A::State, Vec<u8>)>,
    head: Option<HeadRow>,
    pending: BTreeMap<u64, Pending<A::Op>>,
    dead: BTreeMap<u64, Pending<A::Op>>,
    mail: Mail,
    timers: Timers,
    waiting: BTreeMap<u64, u64>,
    maps: MapSet,
}

impl<A: PersistentActor> Default for Record<A> {
    fn default() -> Self {
        Record {
            snapshot: None,
            head: None,
            pending: BTreeMap::new(),
            dead: BTreeMap::new(),
            mail: Mail::default(),
            timers: Timers::new(),
            waiting: BTreeMap::new(),
            maps: MapSet::default(),
        }
    }
}

/// Decodes (and migrates) a loaded record without touching the store.
///
/// Every record is tried. If any cannot be read for a reason other than damage, that error
/// is returned, so that an intact record of a newer schema is never quarantined because
/// another record of the actor happened to be damaged.
fn decode_record<A: Persistent>(
    key: &Arc<ActorKey>,
    loaded: &crate::store::Loaded,
    transforms: &Transforms,
) -> Result<Record<A>, Box<LoadError>> {
    let mut errors: Vec<DecodeError> = Vec::new();
    let bad = |record, reason| DecodeError {
        key: (**key).clone(),
        actor_type: std::any::type_name::<A>(),
        record,
        reason,
    };
    let mut snapshot = None;
    let mut head = None;
    if let Some(hooks) = A::__journal() {
        match crate::journal::recover::<A>(key, loaded, transforms, &hooks) {
            Ok(Some(recovered)) => {
                snapshot = Some((recovered.state, Vec::new()));
                head = Some(recovered.head);
            }
            Ok(None) => {}
            Err((record, reason)) => errors.push(bad(record, reason)),
        }
    } else if let Some(bytes) = loaded.snapshot() {
        let decoded = envelope::open(
            bytes,
            Kind::Snapshot,
            A::VERSION,
            transforms,
            Place { key, id: 0 },
        )
        .map_err(|reason| match reason {
            DecodeReason::WrongKind { found: 13, .. } => DecodeReason::WrongModel(
                "an event-sourced journal head is stored where this snapshot-mode actor keeps its state",
            ),
            reason => reason,
        })
        .and_then(|(header, body)| {
            let state = decode_versioned(A::VERSION, header, &body, A::migrate_state)?;
            Ok((header, body, state))
        });
        match decoded {
            Ok((header, body, state)) => {
                // After a migration the bytes differ from the stored ones: the next change
                // rewrites the snapshot in the current version.
                let committed = if header.schema == A::VERSION {
                    body.to_vec()
                } else {
                    envelope::to_payload(&state).map_err(|source| {
                        Box::new(LoadError::Encode {
                            key: (**key).clone(),
                            source,
                        })
                    })?
                };
                snapshot = Some((state, committed));
            }
            Err(reason) => errors.push(bad(RecordRef::Snapshot, reason)),
        }
    }
    let mut pending = BTreeMap::new();
    let mut dead = BTreeMap::new();
    let mut waiting = BTreeMap::new();
    for (seq, bytes) in loaded.space(Space::OPS) {
        match decode_op::<A>(key, seq, bytes, transforms) {
            Ok((kind, attempts, due, op)) => {
                let entry = Pending {
                    id: OpId::shared(key.clone(), seq),
                    op,
                    attempts,
                };
                if let Some(due) = due {
                    waiting.insert(seq, due);
                }
                match kind {
                    Kind::DeadOp | Kind::CountedDeadOp => dead.insert(seq, entry),
                    _ => pending.insert(seq, entry),
                };
            }
            Err(reason) => errors.push(bad(RecordRef::Op(seq), reason)),
        }
    }
    let mut mail = Mail::default();
    let now = Instant::now();
    let mut failed = Vec::new();
    let rows = decode_rows::<OutgoingRow>(key, loaded, Space::OUTBOX, transforms, &mut failed);
    for (id, row) in rows {
        let out = Outgoing {
            to: row.to,
            channel: row.channel,
            seq: row.seq,
            fingerprint: row.fingerprint,
            payload: row.payload.into(),
            due: now,
            posts: 0,
        };
        mail.outbox.insert(id, out);
    }
    let rows = decode_rows::<ChannelRow>(key, loaded, Space::CHANNELS, transforms, &mut failed);
    for (id, row) in rows {
        let channel = delivery::Channel { id, last: row.last };
        mail.channels.insert(row.to, channel);
    }
    let rows = decode_rows::<InboxRow>(key, loaded, Space::INBOX, transforms, &mut failed);
    for (slot, row) in rows {
        let entry = InboxEntry {
            slot,
            channel: row.channel,
            applied: row.applied,
        };
        mail.inbox.insert(row.from, entry);
    }
    let rows = decode_rows::<RequestRow>(key, loaded, Space::REQUESTS, transforms, &mut failed);
    for (slot, row) in rows {
        mail.request_order.insert(slot, row.key.clone());
        let stored = StoredReply {
            digest: row.digest,
            fingerprint: row.fingerprint,
            reply: row.reply,
        };
        mail.requests.insert(row.key, stored);
    }
    let mut timers = Timers::new();
    for (row, t) in decode_rows::<TimerRow>(key, loaded, Space::TIMERS, transforms, &mut failed) {
        if let Some(other) = timers.get(&t.name) {
            // The runtime writes one row per name: two are damage it cannot settle.
            let reason = DecodeReason::DuplicateTimer {
                name: t.name,
                other: other.row,
            };
            failed.push((RecordRef::Timer(row), reason));
            continue;
        }
        let timer = Timer {
            row,
            due: t.due,
            fingerprint: t.fingerprint,
            payload: t.payload.into(),
        };
        timers.insert(t.name, timer);
    }
    let maps = MapSet::load(key, loaded, transforms, &mut failed);
    errors.extend(
        failed
            .into_iter()
            .map(|(record, reason)| bad(record, reason)),
    );
    let worst = errors
        .iter()
        .position(|e| !e.reason.is_damage())
        .unwrap_or(0);
    if errors.is_empty() {
        Ok(Record {
            snapshot,
            head,
            pending,
            dead,
            mail,
            timers,
            waiting,
            maps,
        })
    } else {
        Err(Box::new(LoadError::Decode(errors.swap_remove(worst))))
    }
}

/// Decodes operation record `seq`: its kind (pending or dead), failed attempts, and the op.
fn decode_op<A: Persistent>(
    key: &ActorKey,
    seq: u64,
    bytes: &[u8],
    transforms: &Transforms,
) -> Result<(Kind, u32, Option<u64>, A::Op), DecodeReason> {
    let place = Place { key, id: seq };
    let (kind, header, body) = envelope::open_any(bytes, A::VERSION, transforms, place)?;
    let (attempts, due, body) = match kind {
        Kind::Op | Kind::DeadOp => (0, None, &body[..]),
        Kind::RetriedOp | Kind::CountedDeadOp => {
            let (attempts, body) = envelope::split_attempts(&body)?;
            (attempts, None, body)
        }
        Kind::WaitingOp => {
            let (attempts, due, body) = envelope::split_waiting(&body)?;
            (attempts, Some(due), body)
        }
        other => {
            return Err(DecodeReason::WrongKind {
                expected: "operation",
                found: other as u8,
            });
        }
    };
    if header.sequence != seq {
        return Err(DecodeReason::SequenceMismatch {
            expected: seq,
            found: header.sequence,
        });
    }
    let op = decode_versioned(A::VERSION, header, body, A::migrate_op)?;
    Ok((kind, attempts, due, op))
}

/// The version of the runtime's own rows (outbox, channels, inbox, stored replies).
const ROW_VERSION: u32 = 1;

/// Decodes every row of one of the runtime's own spaces as `T`; the rows that fail go to
/// `failed`, named as the record they are.
fn decode_rows<T: serde::de::DeserializeOwned>(
    key: &ActorKey,
    loaded: &crate::store::Loaded,
    space: Space,
    transforms: &Transforms,
    failed: &mut Vec<(RecordRef, DecodeReason)>,
) -> Vec<(u64, T)> {
    let (kind, record): (Kind, fn(u64) -> RecordRef) = match space {
        Space::OUTBOX => (Kind::Outgoing, RecordRef::Outgoing),
        Space::CHANNELS => (Kind::Channel, RecordRef::Channel),
        Space::INBOX => (Kind::Inbox, RecordRef::Inbox),
        Space::TIMERS => (Kind::Timer, RecordRef::Timer),
        _ => (Kind::Request, RecordRef::Request),
    };
    let mut rows = Vec::new();
    for (id, bytes) in loaded.space(space) {
        match decode_row(key, id, bytes, kind, transforms) {
            Ok(row) => rows.push((id, row)),
            Err(reason) => failed.push((record(id), reason)),
        }
    }
    rows
}

/// Decodes a stored timer row without the actor's types (for a registry's wakes).
pub(crate) fn decode_timer_row(
    key: &ActorKey,
    id: u64,
    bytes: &[u8],
    transforms: &Transforms,
) -> Result<TimerRow, DecodeReason> {
    decode_row(key, id, bytes, Kind::Timer, transforms)
}

/// Decodes one of the runtime's own rows, of `kind`, stored under `id`.
fn decode_row<T: serde::de::DeserializeOwned>(
    key: &ActorKey,
    id: u64,
    bytes: &[u8],
    kind: Kind,
    transforms: &Transforms,
) -> Result<T, DecodeReason> {
    let (header, body) = envelope::open(bytes, kind, ROW_VERSION, transforms, Place { key, id })?;
    if header.sequence != id {
        return Err(DecodeReason::SequenceMismatch {
            expected: id,
            found: header.sequence,
        });
    }
    envelope::payload(&body)
}

/// Decodes a payload of the current schema `version` (only if its shape is the type's) or
/// migrates one of an older schema (a newer one was refused when the envelope was opened).
fn decode_versioned<T: serde::de::DeserializeOwned + 'static>(
    version: u32,
    header: Header,
    body: &[u8],
    migrate: fn(Stored<'_>) -> Result<T, DecodeReason>,
) -> Result<T, DecodeReason> {
    let stored = Stored::new(header.schema, header.fingerprint, version, body);
    if header.schema == version {
        stored.decode()
    } else {
        migrate(stored)
    }
}

/// What a message cycle handles: a message, the start hook, or a supervision event.
enum Input<A: PersistentActor> {
    Message(A::Msg),
    Started,
    Supervision(SupervisionEvent),
}

/// Runs the user's start hook as a message cycle; the operations left pending by the previous
/// incarnation are performed after its commit, in sequence order, before its own and before
/// the first message. Then its outbox is posted again. (It takes letters from other
/// persistent actors from the end of `pre_start`: they wait in the mailbox until now.)
pub async fn post_start<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    touch(rt);
    // Every pending operation is performed again, except those whose retry is not due yet:
    // they wait for it (their instant was stored with their attempt count).
    let replay: BTreeSet<u64> = rt
        .pending
        .keys()
        .filter(|seq| !rt.retry.contains_key(seq))
        .copied()
        .collect();
    cycle(actor, &myself, rt, Input::Started, replay, None, None).await?;
    let all: Vec<u64> = rt.mail.outbox.keys().copied().collect();
    post_again(rt, all, Post::Restart);
    arm_redelivery_timer(&myself, rt);
    // Timers that fell due while the actor was not running fire now, before any message.
    fire_due(actor, &myself, rt).await
}

/// Tells the registry, if one activated the actor, that it handled something.
fn touch<A: PersistentActor>(rt: &Runtime<A>) {
    if let Some(life) = &rt.life {
        life.touch();
    }
}

/// Fires, in order of their instants, the durable timers the wall clock has reached (only
/// those due when called: a handler that sets a timer due at once gets it on the next wake,
/// after the messages waiting), then arms the sleep for the next one.
async fn fire_due<A: Persistent>(
    actor: &A,
    myself: &ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    let Some(state) = &mut rt.timers else {
        return Ok(());
    };
    state.wake = None;
    let now = crate::timer::now_ms();
    let mut due: Vec<(u64, u64, String)> = state
        .timers
        .iter()
        .filter(|(_, t)| t.due <= now)
        .map(|(name, t)| (t.due, t.row, name.clone()))
        .collect();
    due.sort_unstable();
    for (_, row, name) in due {
        // A handler before may have cancelled or replaced it.
        let Some(timer) = rt.timers.as_ref().and_then(|s| s.timers.get(&name)) else {
            continue;
        };
        if timer.row != row {
            continue;
        }
        let fired = Fired::new((*rt.key).clone(), name.clone(), timer);
        let msg = match A::timer(fired) {
            Ok(msg) => msg,
            Err(reason) => {
                let key = (*rt.key).clone();
                return Err(TimerError::Refused { key, name, reason }.into());
            }
        };
        let fired = FiredRow { name, row };
        touch(rt);
        let input = Input::Message(msg);
        cycle(actor, myself, rt, input, BTreeSet::new(), None, Some(fired)).await?;
    }
    arm_timer(myself, rt);
    Ok(())
}

/// Makes sure a sleep wakes the actor when its earliest durable timer is due, or after
/// [`crate::timer::MAX_SLEEP`] to look at the wall clock again.
fn arm_timer<A: Persistent>(myself: &ActorRef<A::Msg>, rt: &mut Runtime<A>) {
    let Some(state) = &mut rt.timers else {
        return;
    };
    let Some(due) = state.timers.values().map(|t| t.due).min() else {
        // Nothing left: an idle actor keeps no timer state.
        rt.timers = None;
        return;
    };
    let wait = std::time::Duration::from_millis(due.saturating_sub(crate::timer::now_ms()))
        .min(crate::timer::MAX_SLEEP);
    let wake = Instant::now() + wait;
    // A wake armed for no later is still coming (its `TimerDue` clears it), even if its
    // instant has passed and its message waits in the mailbox.
    if state.wake.is_some_and(|armed| armed <= wake) {
        return;
    }
    let Some(msg) = A::wrap_control(Control::TimerDue) else {
        return;
    };
    state.wake = Some(wake);
    if wait.is_zero() {
        // Due now: behind the messages already waiting, with no task to sleep.
        let _ = myself.send_message(msg);
        return;
    }
    let myself = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(wake.into()).await;
        // The actor may have stopped meanwhile; its timers are in the store.
        let _ = myself.send_message(msg);
    });
}

/// When the actor next needs to run without a message, in milliseconds since the Unix
/// epoch: its earliest timer, retry or redelivery. `None`: nothing to wake it for.
fn next_wake<A: PersistentActor>(rt: &Runtime<A>) -> Option<u64> {
    let timers = rt
        .timers
        .as_ref()
        .and_then(|s| s.timers.values().map(|t| t.due).min());
    let now = Instant::now();
    let wall = crate::timer::now_ms();
    let at = |i: Instant| {
        let ms = u64::try_from(i.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
        wall.saturating_add(ms)
    };
    let retry = rt.retry.values().min().map(|i| at(*i));
    let mail = rt.mail.next_due().map(at);
    // Operations pending with no retry or redelivery scheduled (a failed perform stopped
    // the actor first) are performed when it starts: now.
    let unscheduled = rt
        .pending
        .keys()
        .any(|seq| !rt.retry.contains_key(seq) && !rt.mail.kept.contains_key(seq))
        .then_some(wall);
    [timers, retry, mail, unscheduled]
        .into_iter()
        .flatten()
        .min()
}

/// A supervision event from a linked child, handled as a message cycle.
pub async fn handle_supervisor_evt<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    event: SupervisionEvent,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    cycle(
        actor,
        &myself,
        rt,
        Input::Supervision(event),
        BTreeSet::new(),
        None,
        None,
    )
    .await
}

/// The user's stop hook, with the state as last committed.
pub async fn post_stop<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    rt.storage.postbox().unregister(&rt.key, rt.epoch);
    if let Some(life) = &rt.life {
        life.stopped(next_wake(rt));
    }
    // A stopped actor holds nothing: its counts leave the gauges now, not when ractor drops
    // its state (which a supervisor's event may carry for a while).
    rt.tally.set(0, 0);
    PersistentActor::post_stop(actor, myself, &rt.state).await
}

/// Handles a runtime [`Control`] message.
async fn control<A: Persistent>(
    actor: &A,
    myself: &ActorRef<A::Msg>,
    control: Control<A::Op>,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    if rt.failed {
        return Err(failed_before(rt).into());
    }
    // A timer wake that fires nothing (the runtime looks at the clock every `MAX_SLEEP`) is
    // not activity: it must not keep an idle actor from being passivated.
    if !matches!(control, Control::TimerDue) {
        touch(rt);
    }
    let mut order = due_retries(rt);
    match control {
        Control::Resume(filter) => order.extend(
            rt.pending
                .values()
                .filter(|p| filter(p))
                .map(|p| p.id.seq()),
        ),
        Control::RetryDue => {}
        Control::Letter(letter) => {
            if let Some((msg, arrival)) = admit(rt, letter) {
                // The acknowledgement leaves only after the receiver's commit returned.
                let ack = Letter::ack(
                    (*rt.key).clone(),
                    arrival.from.clone(),
                    arrival.channel,
                    arrival.seq,
                );
                let input = Input::Message(msg);
                cycle(actor, myself, rt, input, order, Some(arrival), None).await?;
                rt.storage.postbox().post(ack);
                return Ok(());
            }
        }
        Control::RedeliverDue => {
            let now = Instant::now();
            let due: Vec<u64> = rt
                .mail
                .outbox
                .iter()
                .filter(|(_, o)| o.due <= now)
                .map(|(id, _)| *id)
                .collect();
            post_again(rt, due, Post::Timer);
            // Operations kept until confirmation whose redelivery is due are performed
            // again; that is not a failed attempt.
            let kept: Vec<u64> = rt
                .mail
                .kept
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(seq, _)| *seq)
                .collect();
            let redelivered = kept.len() as u64;
            for seq in kept {
                if let Some((at, n)) = rt.mail.kept.get_mut(&seq) {
                    *n = n.saturating_add(1);
                    *at = far_future(now);
                    tracing::debug!(
                        name: "ractor_persist.redelivery",
                        target: TARGET,
                        namespace = rt.key.namespace(),
                        key = rt.key.key(),
                        what = "operation",
                        op = seq,
                        times = *n,
                        cause = Post::Timer.name(),
                        "operation kept until confirmation performed again"
                    );
                }
                order.insert(seq);
            }
            if redelivered > 0 {
                rt.tally.metrics().redelivered(redelivered);
            }
            rt.mail.timer = None;
            // The earliest of everything still waiting (kept operations performed now
            // schedule themselves again in `perform`).
            if let Some(next) = rt.mail.next_due().filter(|at| *at < far_future(now)) {
                rt.mail.schedule(next);
            }
        }
        Control::TimerDue => fire_due(actor, myself, rt).await?,
        Control::Arrived(key) => {
            let to: Vec<u64> = rt
                .mail
                .outbox
                .iter()
                .filter(|(_, o)| o.to == key)
                .map(|(id, _)| *id)
                .collect();
            post_again(rt, to, Post::Arrived);
        }
    }
    let result = perform(actor, myself, rt, order.into_iter().collect()).await;
    arm_redelivery_timer(myself, rt);
    result
}

/// Far enough ahead to mean "not scheduled" until `perform` schedules it.
fn far_future(now: Instant) -> Instant {
    now + std::time::Duration::from_secs(86_400 * 365)
}

/// Why outbox messages are posted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Post {
    /// The first time, after the commit that sent them.
    First,
    /// Again: the actor started with them in its outbox.
    Restart,
    /// Again: their redelivery timer ran out.
    Timer,
    /// Again: the receiver (re)appeared.
    Arrived,
    /// Again: the receiver said which message it misses.
    Missing,
}

impl Post {
    /// The `cause` field of a redelivery event.
    fn name(self) -> &'static str {
        match self {
            Post::First => "first",
            Post::Restart => "restart",
            Post::Timer => "timer",
            Post::Arrived => "arrived",
            Post::Missing => "missing",
        }
    }
}

/// Posts the outbox messages `ids` (again, unless `cause` is [`Post::First`]), in order of
/// their channels' sequence numbers, and schedules their next redelivery.
fn post_again<A: PersistentActor>(rt: &mut Runtime<A>, mut ids: Vec<u64>, cause: Post) {
    if ids.is_empty() {
        return;
    }
    ids.sort_by_key(|id| rt.mail.outbox.get(id).map(|o| (o.channel, o.seq)));
    let now = Instant::now();
    let mut redelivered = 0u64;
    for id in ids {
        let unit = rt.unit();
        let Some(out) = rt.mail.outbox.get_mut(&id) else {
            continue;
        };
        out.posts = out.posts.saturating_add(1);
        out.due = now + rt.redelivery.delay(out.posts, unit);
        let due = out.due;
        if cause != Post::First {
            redelivered += 1;
            tracing::debug!(
                name: "ractor_persist.redelivery",
                target: TARGET,
                namespace = rt.key.namespace(),
                key = rt.key.key(),
                what = "letter",
                to = %out.to,
                channel = out.channel,
                seq = out.seq,
                times = out.posts,
                cause = cause.name(),
                "letter not acknowledged posted again"
            );
        }
        let letter = Letter {
            from: (*rt.key).clone(),
            to: out.to.clone(),
            channel: out.channel,
            seq: out.seq,
            body: Body::Message {
                id,
                fingerprint: out.fingerprint,
                payload: out.payload.clone(),
            },
        };
        rt.mail.schedule(due);
        rt.storage.postbox().post(letter);
    }
    if redelivered > 0 {
        rt.tally.metrics().redelivered(redelivered);
    }
}

/// Makes sure a timer wakes the actor when the earliest redelivery scheduled since the
/// last call is due (the timer's own wake schedules the earliest of all again).
fn arm_redelivery_timer<A: Persistent>(myself: &ActorRef<A::Msg>, rt: &mut Runtime<A>) {
    // Read first: taking would allocate an actor's delivery state that has none.
    if rt.mail.scheduled.is_none() {
        return;
    }
    let Some(due) = rt.mail.scheduled.take() else {
        return;
    };
    let now = Instant::now();
    if rt
        .mail
        .timer
        .is_some_and(|armed| armed > now && armed <= due)
    {
        return;
    }
    if A::wrap_control(Control::RedeliverDue).is_none() {
        return;
    }
    rt.mail.timer = Some(due);
    let myself = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        if let Some(msg) = A::wrap_control(Control::RedeliverDue) {
            // The actor may have stopped meanwhile; then there is nothing to redeliver.
            let _ = myself.send_message(msg);
        }
    });
}

/// A letter from another persistent actor: an acknowledgement is taken in; a message is
/// checked against the inbox and handed back, as the receiver's message and the inbox entry
/// it writes, only if it is the next of its channel. A duplicate is acknowledged again; the
/// rest are refused.
fn admit<A: Persistent>(rt: &mut Runtime<A>, letter: Letter) -> Option<(A::Msg, Box<Arrival>)> {
    let postbox = rt.storage.postbox().clone();
    if letter.to != *rt.key {
        // Misaddressed: not ours to apply or to acknowledge.
        postbox.refuse(Refusal::Unreadable {
            from: letter.from.clone(),
            to: (*rt.key).clone(),
            channel: letter.channel,
            seq: letter.seq,
            reason: format!("the letter is addressed to `{}`", letter.to),
        });
        return None;
    }
    let Body::Message {
        id,
        fingerprint,
        payload,
    } = letter.body
    else {
        acknowledged(rt, &letter);
        return None;
    };
    let from = letter.from;
    let (channel, seq) = (letter.channel, letter.seq);
    let ack = |rt: &Runtime<A>, applied: u64| {
        postbox.post(Letter::ack(
            (*rt.key).clone(),
            from.clone(),
            channel,
            applied,
        ));
    };
    let entry = rt.mail.inbox.get(&from).copied();
    let verdict = match entry {
        None if seq == 1 => Ok(None),
        None => Err(Refusal::UnknownSender {
            from: from.clone(),
            to: (*rt.key).clone(),
            channel,
            seq,
        }),
        Some(e) if channel < e.channel => Err(Refusal::StaleChannel {
            from: from.clone(),
            to: (*rt.key).clone(),
            channel,
            seq,
            current: e.channel,
        }),
        Some(e) if channel > e.channel && seq == 1 => Ok(Some(e.slot)),
        Some(e) if channel > e.channel => Err(Refusal::Gap {
            from: from.clone(),
            to: (*rt.key).clone(),
            channel,
            seq,
            expected: 1,
        }),
        Some(e) if seq <= e.applied => {
            // A duplicate: applied before; acknowledge it again.
            ack(rt, e.applied);
            return None;
        }
        Some(e) if seq == e.applied + 1 => Ok(Some(e.slot)),
        Some(e) => Err(Refusal::Gap {
            from: from.clone(),
            to: (*rt.key).clone(),
            channel,
            seq,
            expected: e.applied + 1,
        }),
    };
    let slot = match verdict {
        Ok(slot) => slot,
        Err(refusal) => {
            if let Refusal::Gap { .. } | Refusal::UnknownSender { .. } = refusal {
                // Tell the sender what is missing: the highest number applied on its
                // channel (0: none), so it posts the rest again at once.
                let applied = entry
                    .filter(|e| e.channel == channel)
                    .map_or(0, |e| e.applied);
                postbox.post(Letter::missing(
                    (*rt.key).clone(),
                    from.clone(),
                    channel,
                    applied,
                ));
            }
            postbox.refuse(refusal);
            return None;
        }
    };
    let sender_id = OpId::new(from.clone(), id);
    let msg = match A::inbound(delivery::Inbound::new(
        sender_id.clone(),
        fingerprint,
        payload,
    )) {
        Ok(msg) => msg,
        Err(reason) => {
            postbox.refuse(Refusal::Unreadable {
                from: from.clone(),
                to: (*rt.key).clone(),
                channel,
                seq,
                reason: reason.to_string(),
            });
            return None;
        }
    };
    let arrival = Arrival {
        from: from.clone(),
        id: sender_id,
        slot,
        channel,
        seq,
    };
    Some((msg, Box::new(arrival)))
}

/// An acknowledgement from a receiver: the messages of its channel up to `letter.seq` were
/// applied. Their removal from the outbox rides on the next commit.
fn acknowledged<A: PersistentActor>(rt: &mut Runtime<A>, letter: &Letter) {
    let known = rt
        .mail
        .channels
        .get(&letter.from)
        .is_some_and(|c| c.id == letter.channel && letter.seq <= c.last);
    if !known {
        rt.storage.postbox().refuse(Refusal::AckForNothing {
            from: letter.from.clone(),
            to: (*rt.key).clone(),
            channel: letter.channel,
            seq: letter.seq,
        });
        return;
    }
    let mut done = Vec::new();
    let mut next = None;
    for (id, o) in &rt.mail.outbox {
        if o.to == letter.from && o.channel == letter.channel {
            if o.seq <= letter.seq {
                done.push(*id);
            } else if o.seq == letter.seq + 1 {
                next = Some(*id);
            }
        }
    }
    let removed = !done.is_empty();
    if removed {
        let mut commit = ActorCommit::new(rt.key.clone(), rt.epoch);
        for id in done {
            rt.mail.outbox.remove(&id);
            rt.mail.settle(id, Settled::Delivered);
            commit = commit.remove(Space::OUTBOX, id);
        }
        rt.storage.ride(commit);
    }
    // After a gap the receiver refused what followed the missing message: post the missing
    // one at once (once per number the receiver names), and while the channel recovers,
    // the next one on each acknowledgement, instead of leaving each to its own timer. A
    // plain duplicate acknowledgement posts nothing.
    let post = if letter.is_missing() {
        let first = rt.mail.recovering.insert(letter.channel, letter.seq) != Some(letter.seq);
        next.filter(|_| first)
    } else if removed && rt.mail.recovering.contains_key(&letter.channel) {
        if next.is_none() {
            rt.mail.recovering.remove(&letter.channel);
        }
        next
    } else {
        None
    };
    if let Some(id) = post {
        post_again(rt, vec![id], Post::Missing);
    }
}

/// A message from another persistent actor being applied: where the inbox entry goes.
struct Arrival {
    from: ActorKey,
    id: OpId,
    /// The sender's inbox slot, or `None` for a sender heard from the first time.
    slot: Option<u64>,
    channel: u64,
    seq: u64,
}

/// The digest of a state's encoding: a seeded 128-bit XXH3 hash, so that two different
/// encodings share one only by a chance of 2^-128 (and an adversary who does not know this
/// process's random seed cannot aim for one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Digest(u128);

impl Digest {
    fn of(bytes: &[u8]) -> Digest {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            let mut b = [0u8; 8];
            // Without the system's randomness the digest is still a good hash, only unseeded.
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b)
        });
        Digest(twox_hash::XxHash3_128::oneshot_with_seed(seed, bytes))
    }
}

/// Puts the last committed state back after a failed handler or commit, then gives `error`
/// back. Boxed, so that the message cycle's future does not grow by the read.
fn roll_back<A: Persistent>(
    rt: &mut Runtime<A>,
    error: ActorProcessingErr,
    written: Attempt,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ActorProcessingErr> + Send + '_>> {
    Box::pin(async move {
        restore(rt, written).await;
        error
    })
}

/// Whether the failed message's commit reached the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// No: the handler or the encoding failed before any write.
    NotWritten,
    /// It was handed to the store, which failed: it may have been written all the same (a
    /// sync that failed after the write, an answer lost on the way back).
    MaybeWritten,
}

/// Makes the state in memory the last committed one. Before any commit, with nothing handed
/// to the store, that is `init`'s state. Otherwise it is what the store holds: the snapshot
/// read back (even from a poisoned store: the read tells what it holds), or `init`'s state if
/// the store holds none yet. If the store cannot be read, or its snapshot decoded, the
/// instance is marked failed and serves nothing more.
async fn restore<A: Persistent>(rt: &mut Runtime<A>, written: Attempt) {
    // The maps undo this message's changes; after a commit that may have landed, they are
    // read back from the store as the state is.
    rt.maps.roll_back();
    if written == Attempt::MaybeWritten {
        match rt.storage.read_space_back(&rt.key, Space::MAPS).await {
            Ok(rows) => {
                let loaded = crate::store::Loaded {
                    rows,
                    ..Default::default()
                };
                let mut failed = Vec::new();
                let transforms = rt.storage.transforms();
                rt.maps = MapSet::load(&rt.key, &loaded, transforms, &mut failed);
                if !failed.is_empty() {
                    rt.failed = true;
                }
            }
            Err(_) => rt.failed = true,
        }
    }
    let initial = |rt: &Runtime<A>| {
        rt.initial
            .as_deref()
            .and_then(|bytes| envelope::payload::<A::State>(bytes).ok())
    };
    let restored = if rt.initial.is_some() && written == Attempt::NotWritten {
        initial(rt)
    } else if let (Some(hooks), Some(_)) = (A::__journal(), rt.journal.as_ref()) {
        // Event-sourced: the latest snapshot and the events after it, as a start reads them.
        match rt.storage.read_journal_back(&rt.key).await {
            Ok(loaded) => {
                let transforms = rt.storage.transforms();
                match crate::journal::recover::<A>(&rt.key, &loaded, transforms, &hooks) {
                    Ok(Some(recovered)) => {
                        if let Some(journal) = rt.journal.as_mut() {
                            journal.head = recovered.head;
                            journal.stored = true;
                        }
                        rt.initial = None;
                        Some(recovered.state)
                    }
                    Ok(None) => initial(rt),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        }
    } else {
        match rt.storage.read_back(&rt.key).await {
            Ok(Some(bytes)) => {
                let state = envelope::open(
                    &bytes,
                    Kind::Snapshot,
                    A::VERSION,
                    rt.storage.transforms(),
                    Place {
                        key: &rt.key,
                        id: 0,
                    },
                )
                .and_then(|(header, body)| {
                    decode_versioned(A::VERSION, header, &body, A::migrate_state)
                })
                .ok();
                if state.is_some() {
                    // The store holds a state now: later rollbacks read it.
                    rt.initial = None;
                }
                state
            }
            // Nothing stored yet: the failed first commit did not land.
            Ok(None) => initial(rt),
            Err(_) => None,
        }
    };
    match restored {
        Some(state) => rt.state = state,
        None => rt.failed = true,
    }
}

/// The error of a message sent to an instance whose stored state could not be put back
/// after a failure.
fn failed_before<A: PersistentActor>(rt: &Runtime<A>) -> CommitError {
    CommitError::FailedBefore {
        key: (*rt.key).clone(),
    }
}

/// Takes the retries whose backoff ran out.
fn due_retries<A: PersistentActor>(rt: &mut Runtime<A>) -> BTreeSet<u64> {
    if rt.retry.is_empty() {
        // The common case: no clock read, no allocation.
        return BTreeSet::new();
    }
    let now = Instant::now();
    let due: BTreeSet<u64> = rt
        .retry
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(seq, _)| *seq)
        .collect();
    for seq in &due {
        rt.retry.remove(seq);
    }
    due
}

/// One message cycle: handle, commit if anything changed, reply, perform.
pub async fn handle<A: Persistent>(
    actor: &A,
    myself: ActorRef<A::Msg>,
    msg: A::Msg,
    rt: &mut Runtime<A>,
) -> Result<(), ActorProcessingErr> {
    // Boxed: a control message (a letter is large) and its path (which holds a message
    // cycle and more) should not make every ordinary message's future larger.
    match A::control(msg).map(Box::new) {
        Ok(c) => Box::pin(control(actor, &myself, *c, rt)).await,
        Err(msg) => {
            touch(rt);
            let input = Input::Message(msg);
            cycle(actor, &myself, rt, input, BTreeSet::new(), None, None).await
        }
    }
}

/// The message cycle for any input: run the user's code with a [`Tx`], commit if anything
/// changed, reply, then perform `again` (older operations, in sequence order) and the new ones.
///
/// The cycle is the `ractor_persist.message` span; `seq` counts this instance's cycles.
async fn cycle<A: Persistent>(
    actor: &A,
    myself: &ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
    input: Input<A>,
    again: BTreeSet<u64>,
    arrival: Option<Box<Arrival>>,
    fired: Option<FiredRow>,
) -> Result<(), ActorProcessingErr> {
    rt.tally.messages = rt.tally.messages.wrapping_add(1);
    let kind = match (&input, &arrival, &fired) {
        (Input::Started, ..) => "post_start",
        (Input::Supervision(_), ..) => "supervision",
        (Input::Message(_), Some(_), _) => "letter",
        (Input::Message(_), None, Some(_)) => "timer",
        (Input::Message(_), None, None) => "message",
    };
    let span = tracing::debug_span!(
        target: TARGET,
        "ractor_persist.message",
        namespace = rt.key.namespace(),
        key = rt.key.key(),
        epoch = rt.epoch,
        seq = rt.tally.messages,
        kind,
        outcome = Empty,
        error = Empty,
    );
    let cycle = cycle_in(actor, myself, rt, input, again, arrival, fired, &span);
    if span.is_disabled() {
        // No subscriber wants it: no span to enter on every poll.
        cycle.await
    } else {
        cycle.instrument(span.clone()).await
    }
}

/// [`cycle`], in its span: records the outcome of the message's commit.
#[allow(clippy::too_many_arguments)]
async fn cycle_in<A: Persistent>(
    actor: &A,
    myself: &ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
    input: Input<A>,
    mut again: BTreeSet<u64>,
    arrival: Option<Box<Arrival>>,
    fired: Option<FiredRow>,
    span: &tracing::Span,
) -> Result<(), ActorProcessingErr> {
    if rt.failed {
        span.record("outcome", "refused");
        return Err(failed_before(rt).into());
    }
    let arrival = arrival.as_deref();
    // A sender heard from the first time gets an inbox slot, handed out like any id.
    let (first_id, slot) = match arrival {
        Some(Arrival { slot: None, .. }) => (rt.next_seq + 1, Some(rt.next_seq)),
        Some(Arrival { slot: Some(s), .. }) => (rt.next_seq, Some(*s)),
        None => (rt.next_seq, None),
    };
    let mut tx = Tx::new(
        &rt.key,
        myself,
        &rt.pending,
        &rt.dead,
        &rt.mail,
        arrival.map(|a| &a.id),
        rt.timers.as_ref().map_or(&NO_TIMERS, |s| &s.timers),
        fired.as_ref(),
        rt.max_pending,
        first_id,
        rt.journal.as_ref().map_or(1, |j| j.head.last + 1),
        &mut rt.maps,
    );
    let handled = match input {
        Input::Message(msg) => actor.handle(&mut tx, msg, &mut rt.state).await,
        Input::Started => PersistentActor::post_start(actor, &mut tx, &mut rt.state).await,
        Input::Supervision(event) => {
            PersistentActor::handle_supervisor_evt(actor, &mut tx, event, &mut rt.state).await
        }
    };
    let mut parts = tx.into_parts();
    // The delivery part of what the handler asked for (usually nothing, and not allocated).
    let mut extra = parts.extra.take();
    if let Some(x) = &mut extra {
        for refusal in x.refusals.drain(..) {
            rt.storage.postbox().refuse(refusal);
        }
    }
    if let Err(e) = handled {
        span.record("outcome", "handler_failed");
        span.record("error", display(&e));
        return Err(roll_back(rt, e, Attempt::NotWritten).await);
    }
    // Event-sourced, the events are the change: the state is not encoded (but for a
    // snapshot, in the commit that writes one).
    let event_sourced = rt.journal.is_some();
    let encoded = if event_sourced {
        Vec::new()
    } else {
        match envelope::to_payload(&rt.state) {
            Ok(bytes) => bytes,
            Err(source) => {
                let e = CommitError::Encode {
                    key: (*rt.key).clone(),
                    what: "state",
                    source,
                };
                span.record("outcome", "encode_failed");
                span.record("error", display(&e));
                return Err(roll_back(rt, e.into(), Attempt::NotWritten).await);
            }
        }
    };
    let (digest, changed) = if event_sourced {
        (rt.committed, !parts.events.is_empty())
    } else {
        let digest = Digest::of(&encoded);
        (digest, digest != rt.committed)
    };
    let next_seq = parts.next_seq;
    let ops_changed = !parts.pushed.is_empty()
        || !parts.confirmed.is_empty()
        || !parts.requeued.is_empty()
        || extra
            .as_ref()
            .is_some_and(|x| !x.sent.is_empty() || !x.requests.is_empty())
        || extra
            .as_ref()
            .is_some_and(|x| timers_changed(rt, fired.as_ref(), &x.timers))
        || arrival.is_some()
        || fired.is_some()
        || rt.maps.changed();
    let new_requests = extra.as_ref().map_or(0, |x| x.requests.len());
    // Stored replies past the retention: the oldest go in this commit.
    let evicted: Vec<u64> = if new_requests == 0 {
        Vec::new()
    } else {
        let total = rt.mail.requests.len() + new_requests;
        let over = total.saturating_sub(rt.request_retention);
        rt.mail.request_order.keys().take(over).copied().collect()
    };
    if !(changed || ops_changed) {
        // The maps' changes, if any, cancelled out: nothing to write, nothing to keep.
        rt.maps.committed();
        span.record("outcome", "unchanged");
    }
    if changed || ops_changed {
        let built = build_commit(
            rt,
            &parts,
            extra.as_deref(),
            arrival,
            slot,
            fired.as_ref(),
            &encoded,
            changed,
            next_seq,
            &evicted,
        );
        drop(encoded);
        let (commit, commit_floor, head) = match built {
            Ok(built) => built,
            Err(e) => {
                span.record("outcome", "encode_failed");
                span.record("error", display(&e));
                return Err(roll_back(rt, e, Attempt::NotWritten).await);
            }
        };
        if let Err(source) = rt.storage.commit(commit).await {
            // Replies and operations are dropped with `parts`: callers see an error.
            let e = rt.fail(source);
            let outcome = match e {
                CommitError::Fenced { .. } => "fenced",
                _ => "commit_failed",
            };
            span.record("outcome", outcome);
            span.record("error", display(&e));
            return Err(roll_back(rt, e.into(), Attempt::MaybeWritten).await);
        }
        span.record("outcome", "committed");
        rt.committed = digest;
        rt.initial = None;
        rt.next_seq = next_seq;
        rt.maps.committed();
        if let (Some(journal), Some(head)) = (rt.journal.as_mut(), head) {
            journal.head = head;
            journal.stored = true;
        }
        if let Some(floor) = commit_floor {
            rt.reserved = floor;
        }
        for seq in &parts.confirmed {
            rt.pending.remove(seq);
            rt.retry.remove(seq);
            if rt.mail.kept.contains_key(seq) {
                rt.mail.kept.remove(seq);
            }
        }
        for seq in &parts.requeued {
            if let Some(mut p) = rt.dead.remove(seq) {
                p.attempts = 0;
                rt.pending.insert(*seq, p);
            }
        }
        if let (Some(arrival), Some(slot)) = (arrival, slot) {
            let entry = InboxEntry {
                slot,
                channel: arrival.channel,
                applied: arrival.seq,
            };
            rt.mail.inbox.insert(arrival.from.clone(), entry);
        }
        let x = extra.as_deref_mut();
        for (to, channel) in x.into_iter().flat_map(|x| x.channels.drain()) {
            rt.mail.channels.insert(to, channel);
        }
        for slot in evicted {
            if let Some(key) = rt.mail.request_order.remove(&slot) {
                rt.mail.requests.remove(&key);
            }
        }
        apply_timers(rt, fired.as_ref(), extra.as_deref_mut());
        let x = extra.as_deref_mut();
        for (slot, row) in x.into_iter().flat_map(|x| x.requests.drain(..)) {
            rt.mail.request_order.insert(slot, row.key.clone());
            let stored = StoredReply {
                digest: row.digest,
                fingerprint: row.fingerprint,
                reply: row.reply,
            };
            rt.mail.requests.insert(row.key, stored);
        }
    }
    // In a block: none of this lives in the future across the perform below.
    let order: Vec<u64> = {
        let mut order: Vec<u64> = Vec::with_capacity(parts.pushed.len());
        for (seq, op) in parts.pushed {
            rt.pending.insert(
                seq,
                Pending {
                    id: OpId::shared(rt.key.clone(), seq),
                    op,
                    attempts: 0,
                },
            );
            order.push(seq);
        }
        // The gauges count the commit before a caller hears of it.
        rt.tally.set(rt.pending.len(), rt.dead.len());
        for reply in parts.replies {
            reply();
        }
        let (sent, watch) = match extra {
            Some(x) => {
                let x = *x;
                (x.sent, x.watch)
            }
            None => (Vec::new(), Vec::new()),
        };
        let now = if sent.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        let mut posted = Vec::with_capacity(sent.len());
        for sent in sent {
            let now = now.unwrap_or_else(Instant::now);
            let out = Outgoing {
                to: sent.to,
                channel: sent.channel,
                seq: sent.seq,
                fingerprint: sent.fingerprint,
                payload: sent.payload.into(),
                due: now,
                posts: 0,
            };
            rt.mail.outbox.insert(sent.id, out);
            posted.push(sent.id);
        }
        post_again(rt, posted, Post::First);
        for (seq, waiter) in watch {
            if rt.pending.contains_key(&seq) || rt.mail.outbox.contains_key(&seq) {
                let waiters = rt.mail.watchers.entry(seq).or_default();
                // Callers that gave up waiting are forgotten, so asking again does not grow it.
                waiters.retain(|w| !w.is_closed());
                waiters.push(waiter);
            } else if parts.confirmed.contains(&seq) {
                let _ = waiter.send(Settled::Confirmed);
            } else if rt.dead.contains_key(&seq) {
                let _ = waiter.send(Settled::DeadLetter);
            } else {
                let recent = rt.mail.recent.iter().rev().find(|(id, _)| *id == seq);
                let _ = waiter.send(recent.map_or(Settled::NotPending, |(_, how)| *how));
            }
        }
        for seq in &parts.confirmed {
            rt.mail.settle(*seq, Settled::Confirmed);
        }
        // Replayed, resumed, re-queued and due operations were committed before this message's:
        // they go first, in sequence order.
        again.extend(parts.resumed);
        again.extend(parts.requeued);
        again.extend(due_retries(rt));
        again.into_iter().chain(order).collect()
    };
    let result = perform(actor, myself, rt, order).await;
    arm_redelivery_timer(myself, rt);
    arm_timer(myself, rt);
    result
}

/// Whether a message's timer changes leave the stored timers other than they were: a timer
/// set and cancelled again in one message (a name that was not set before) changes nothing,
/// and costs no write on its own (P6).
fn timers_changed<A: PersistentActor>(
    rt: &Runtime<A>,
    fired: Option<&FiredRow>,
    changes: &[TimerChange],
) -> bool {
    let committed = rt.timers.as_ref().map_or(&NO_TIMERS, |s| &s.timers);
    let mut last: std::collections::HashMap<&str, bool> = Default::default();
    for change in changes {
        last.insert(change.name(), matches!(change, TimerChange::Set { .. }));
    }
    last.into_iter().any(|(name, set)| {
        let stored = committed
            .get(name)
            .is_some_and(|t| fired.is_none_or(|f| f.row != t.row));
        set || stored
    })
}

/// Takes a committed message's timer changes into memory: the fired timer is gone, then the
/// sets and cancels in order.
fn apply_timers<A: PersistentActor>(
    rt: &mut Runtime<A>,
    fired: Option<&FiredRow>,
    extra: Option<&mut crate::tx::TxExtra>,
) {
    if let (Some(f), Some(state)) = (fired, rt.timers.as_mut())
        && state.timers.get(&f.name).is_some_and(|t| t.row == f.row)
    {
        state.timers.remove(&f.name);
    }
    let Some(x) = extra else {
        return;
    };
    for change in x.timers.drain(..) {
        match change {
            TimerChange::Set { name, timer } => {
                let state = rt.timers.get_or_insert_with(Box::default);
                state.timers.insert(name, timer);
            }
            TimerChange::Cancel { name } => {
                if let Some(state) = rt.timers.as_mut() {
                    state.timers.remove(&name);
                }
            }
        }
    }
}

/// The writes of a message's timer changes: the fired timer's removal, then for each set or
/// cancel in order the removal of the timer it replaces and the new row.
fn timer_writes<A: PersistentActor>(
    rt: &Runtime<A>,
    fired: Option<&FiredRow>,
    changes: &[TimerChange],
    mut commit: ActorCommit,
) -> Result<ActorCommit, CommitError> {
    let committed = rt.timers.as_ref().map_or(&NO_TIMERS, |s| &s.timers);
    let mut current: std::collections::HashMap<&str, Option<u64>> = Default::default();
    if let Some(f) = fired {
        commit = commit.remove(Space::TIMERS, f.row);
        current.insert(&f.name, None);
    }
    for change in changes {
        let name = change.name();
        let before = match current.get(name) {
            Some(row) => *row,
            None => committed.get(name).map(|t| t.row),
        };
        if let Some(row) = before {
            commit = commit.remove(Space::TIMERS, row);
        }
        match change {
            TimerChange::Set { name, timer } => {
                let row = TimerRow {
                    name: name.clone(),
                    due: timer.due,
                    fingerprint: timer.fingerprint,
                    payload: timer.payload.to_vec(),
                };
                let bytes = rt.row_envelope(Kind::Timer, timer.row, &row)?;
                commit = commit.put(Space::TIMERS, timer.row, bytes);
                current.insert(name, Some(timer.row));
            }
            TimerChange::Cancel { name } => {
                current.insert(name, None);
            }
        }
    }
    Ok(commit)
}

/// Builds a message's commit: the snapshot, the operations pushed, re-queued and confirmed,
/// the delivery rows, the replies past the retention, and the floor (returned too). Fails if
/// something does not encode (the caller rolls the state back). Not async, so that none of this
/// lives in the message cycle's future.
#[allow(clippy::too_many_arguments)]
fn build_commit<A: Persistent>(
    rt: &mut Runtime<A>,
    parts: &crate::tx::TxParts<A::Op>,
    extra: Option<&crate::tx::TxExtra>,
    arrival: Option<&Arrival>,
    slot: Option<u64>,
    fired: Option<&FiredRow>,
    encoded: &[u8],
    changed: bool,
    next_seq: u64,
    evicted: &[u64],
) -> Result<(ActorCommit, Option<u64>, Option<HeadRow>), ActorProcessingErr> {
    let mut put_ops = Vec::with_capacity(parts.pushed.len() + parts.requeued.len());
    // A re-queued dead letter is rewritten as a pending operation under its own number,
    // with no failed attempts.
    let requeued = parts
        .requeued
        .iter()
        .filter_map(|s| Some((*s, &rt.dead.get(s)?.op)));
    for (seq, op) in requeued.chain(parts.pushed.iter().map(|(s, op)| (*s, op))) {
        match envelope::to_payload(op) {
            Ok(p) => put_ops.push((seq, rt.op_envelope(Kind::Op, seq, &p))),
            Err(source) => return Err(rt.encode_error("operation", source).into()),
        }
    }
    let mut rows: Vec<(Space, u64, Vec<u8>)> = Vec::new();
    for sent in extra.iter().flat_map(|x| &x.sent) {
        let row = OutgoingRow {
            to: sent.to.clone(),
            channel: sent.channel,
            seq: sent.seq,
            fingerprint: sent.fingerprint,
            payload: sent.payload.clone(),
        };
        match rt.row_envelope(Kind::Outgoing, sent.id, &row) {
            Ok(bytes) => rows.push((Space::OUTBOX, sent.id, bytes)),
            Err(e) => return Err(e.into()),
        }
    }
    for (to, channel) in extra.iter().flat_map(|x| &x.channels) {
        let row = ChannelRow {
            to: to.clone(),
            last: channel.last,
        };
        match rt.row_envelope(Kind::Channel, channel.id, &row) {
            Ok(bytes) => rows.push((Space::CHANNELS, channel.id, bytes)),
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(arrival), Some(slot)) = (arrival, slot) {
        let row = InboxRow {
            from: arrival.from.clone(),
            channel: arrival.channel,
            applied: arrival.seq,
        };
        match rt.row_envelope(Kind::Inbox, slot, &row) {
            Ok(bytes) => rows.push((Space::INBOX, slot, bytes)),
            Err(e) => return Err(e.into()),
        }
    }
    for (slot, row) in extra.iter().flat_map(|x| &x.requests) {
        match rt.row_envelope(Kind::Request, *slot, row) {
            Ok(bytes) => rows.push((Space::REQUESTS, *slot, bytes)),
            Err(e) => return Err(e.into()),
        }
    }
    // The snapshot carries the next sequence number: an intact one is where the next
    // incarnation goes on, with no gap.
    let head = Header {
        schema: rt.schema,
        sequence: next_seq,
        fingerprint: rt.state_shape,
    };
    // The first commit writes the state whatever else it holds (a change to a durable map
    // alone): a record without it would be started from `init` again.
    let first = rt.initial.is_some();
    let snapshot =
        (rt.journal.is_none() && (changed || next_seq != rt.next_seq || first)).then(|| {
            let place = Place {
                key: &rt.key,
                id: 0,
            };
            let transforms = rt.storage.transforms();
            envelope::seal(Kind::Snapshot, head, rt.epoch, encoded, transforms, place)
        });
    let mut commit = ActorCommit::new(rt.key.clone(), rt.epoch);
    commit
        .writes
        .reserve(1 + put_ops.len() + parts.confirmed.len() + rows.len());
    if let Some(snapshot) = snapshot {
        commit = commit.put(Space::SNAPSHOT, 0, snapshot);
    }
    for (seq, bytes) in put_ops {
        commit = commit.put(Space::OPS, seq, bytes);
    }
    for seq in &parts.confirmed {
        commit = commit.remove(Space::OPS, *seq);
    }
    for (space, id, bytes) in rows {
        commit = commit.put(space, id, bytes);
    }
    for slot in evicted {
        commit = commit.remove(Space::REQUESTS, *slot);
    }
    let changes = extra.map_or(&[][..], |x| &x.timers[..]);
    if fired.is_some() || !changes.is_empty() {
        commit = timer_writes(rt, fired, changes, commit)?;
    }
    let mut seal = |id: u64, fingerprint: u64, payload: &[u8]| {
        rt.seal(Kind::MapEntry, MAP_VERSION, fingerprint, id, payload)
    };
    rt.maps
        .writes(&mut seal, &mut commit.writes)
        .map_err(|source| rt.encode_error("map entry", source))?;
    let head = match rt.journal.as_deref() {
        Some(journal) => {
            let journal = *journal;
            journal_writes(rt, journal, &parts.events, next_seq, &mut commit)?
        }
        None => None,
    };
    // The store's floor stays ahead of every id handed out, so no delete, quarantine or
    // damaged snapshot can make an id come back. It moves a block at a time, so only
    // one commit in FLOOR_BLOCK ids writes it.
    let commit_floor = (next_seq > rt.reserved).then(|| next_seq.saturating_add(FLOOR_BLOCK));
    if let Some(floor) = commit_floor {
        commit = commit.raise_floor(floor);
    }
    Ok((commit, commit_floor, head))
}

/// The journal's writes of an event-sourced actor's message: the events, a snapshot when
/// one is due (with `init`'s state at 0 in the first commit), the compaction of the events
/// it covers ([`Retention::Light`]), and the head. Returns the new head, if it changed.
fn journal_writes<A: Persistent>(
    rt: &Runtime<A>,
    journal: JournalState,
    events: &[Vec<u8>],
    next_seq: u64,
    commit: &mut ActorCommit,
) -> Result<Option<HeadRow>, ActorProcessingErr> {
    let mut head = journal.head;
    let first = head.last + 1;
    let last = head
        .last
        .checked_add(events.len() as u64)
        .filter(|last| *last < u64::MAX)
        .ok_or_else(|| format!("`{}`: the journal's event numbers are exhausted", rt.key))?;
    let snapshot_due = last - head.snapshot >= journal.every && last > 0;
    // Compacting, a snapshot in this commit covers its events: they are not written at all.
    let compacts = snapshot_due && journal.retention == Retention::Light;
    if !compacts {
        for (i, payload) in events.iter().enumerate() {
            let seq = first + i as u64;
            let bytes = rt.seal(Kind::Event, rt.schema, journal.event_shape, seq, payload);
            commit.writes.push(crate::store::RowWrite::Put {
                space: Space::JOURNAL,
                id: seq,
                bytes,
            });
        }
    }
    head.last = last;
    let mut snapshot = None;
    if !journal.stored {
        // The journal's start: `init`'s state, so that the whole journal replays from it.
        let initial = rt.initial.as_deref().unwrap_or_default();
        snapshot = Some((0, std::borrow::Cow::Borrowed(initial)));
    }
    if snapshot_due {
        let encoded =
            envelope::to_payload(&rt.state).map_err(|source| rt.encode_error("state", source))?;
        snapshot = Some((head.last, std::borrow::Cow::Owned(encoded)));
    }
    if let Some((covers, state)) = snapshot {
        // The snapshot's envelope names the event it covers.
        let header = Header {
            schema: rt.schema,
            sequence: covers,
            fingerprint: rt.state_shape,
        };
        let bytes = rt.seal_as(Kind::Snapshot, header, SNAPSHOT_ROW, &state);
        commit.writes.push(crate::store::RowWrite::Put {
            space: Space::JOURNAL_SNAPSHOT,
            id: SNAPSHOT_ROW,
            bytes,
        });
        head.snapshot = covers;
        if journal.retention == Retention::Light && covers > head.compacted {
            // The events before this commit's that the snapshot covers.
            if head.compacted + 1 < first {
                commit.writes.push(crate::store::RowWrite::Delete {
                    space: Space::JOURNAL,
                    first: head.compacted + 1,
                    last: first - 1,
                });
            }
            head.compacted = covers;
        }
    }
    if head == journal.head && journal.stored && next_seq == rt.next_seq {
        return Ok(None);
    }
    let payload =
        envelope::to_payload(&head).map_err(|source| rt.encode_error("journal head", source))?;
    // As a snapshot's, the head's envelope carries the next operation id.
    let header = Header {
        schema: HEAD_VERSION,
        sequence: next_seq,
        fingerprint: 0,
    };
    let bytes = rt.seal_as(Kind::JournalHead, header, HEAD_ROW, &payload);
    commit.writes.push(crate::store::RowWrite::Put {
        space: Space::SNAPSHOT,
        id: HEAD_ROW,
        bytes,
    });
    Ok(Some(head))
}

/// Performs the operations `seqs`, in that order. Queues, to ride on the next commit, the
/// removal of those done, the new attempt count of those that failed, and the move of those
/// that failed too often to the dead letters.
async fn perform<A: Persistent>(
    actor: &A,
    myself: &ActorRef<A::Msg>,
    rt: &mut Runtime<A>,
    seqs: Vec<u64>,
) -> Result<(), ActorProcessingErr> {
    let mut done = Vec::new();
    let mut rewrites = Vec::new();
    let mut result = Ok(());
    for seq in seqs {
        let Some(p) = rt.pending.get(&seq) else {
            continue;
        };
        // A panic is a failed attempt too: ractor would fail the actor with it, and a
        // perform that always panics must end in a dead letter, not in a crash loop.
        let outcome = match AssertUnwindSafe(actor.perform(p, &rt.state))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                Err(format!("perform of {} panicked: {}", p.id, panic_text(&*panic)).into())
            }
        };
        let failed = match outcome {
            Ok(Outcome::Done) => {
                rt.pending.remove(&seq);
                rt.retry.remove(&seq);
                if rt.mail.kept.contains_key(&seq) {
                    rt.mail.kept.remove(&seq);
                }
                rt.tally.set(rt.pending.len(), rt.dead.len());
                rt.mail.settle(seq, Settled::Done);
                done.push(seq);
                continue;
            }
            Ok(Outcome::KeepUntilConfirmed) => {
                rt.retry.remove(&seq);
                // Performed again on the redelivery timer until a message confirms it.
                let n = rt.mail.kept.get(&seq).map_or(1, |(_, n)| *n);
                let unit = rt.unit();
                let at = Instant::now() + rt.redelivery.delay(n, unit);
                rt.mail.kept.insert(seq, (at, n));
                rt.mail.schedule(at);
                continue;
            }
            Ok(Outcome::Retry) => Ok(()),
            Err(e) => Err(e),
        };
        // Only a failed attempt counts: a replay, a resume or a kept operation does not.
        rt.retry.remove(&seq);
        if rt.mail.kept.contains_key(&seq) {
            rt.mail.kept.remove(&seq);
        }
        let Some(p) = rt.pending.get_mut(&seq) else {
            continue;
        };
        p.attempts = p.attempts.saturating_add(1);
        let attempts = p.attempts;
        let bytes = match envelope::to_payload(&p.op) {
            Ok(bytes) => bytes,
            Err(source) => {
                result = Err(rt.encode_error("operation", source).into());
                break;
            }
        };
        let max_attempts = rt.policy.max_attempts();
        if attempts >= max_attempts {
            // Given up: set aside as a dead letter, kept in the store with its count.
            let payload = envelope::join_attempts(attempts, &bytes);
            rewrites.push((seq, rt.op_envelope(Kind::CountedDeadOp, seq, &payload)));
            if let Some(p) = rt.pending.remove(&seq) {
                rt.dead.insert(seq, p);
            }
            tracing::warn!(
                name: "ractor_persist.dead_letter",
                target: TARGET,
                namespace = rt.key.namespace(),
                key = rt.key.key(),
                op = seq,
                attempts,
                error = failed.as_ref().err().map(display),
                "operation failed too often: moved to the dead letters"
            );
            rt.tally.metrics().dead_lettered(1);
            rt.tally.set(rt.pending.len(), rt.dead.len());
            rt.mail.settle(seq, Settled::DeadLetter);
        } else if failed.is_ok() {
            // The retry's instant is stored with the count: it is waited out across a
            // restart or a passivation too.
            let unit = rt.unit();
            let delay = rt.policy.delay(attempts, unit);
            rt.retry.insert(seq, Instant::now() + delay);
            let due =
                crate::timer::to_ms_ceil(std::time::SystemTime::now() + delay).unwrap_or(u64::MAX);
            let payload = envelope::join_waiting(attempts, due, &bytes);
            rewrites.push((seq, rt.op_envelope(Kind::WaitingOp, seq, &payload)));
            tracing::debug!(
                name: "ractor_persist.retry",
                target: TARGET,
                namespace = rt.key.namespace(),
                key = rt.key.key(),
                op = seq,
                attempts,
                max_attempts,
                after = "backoff",
                delay_seconds = delay.as_secs_f64(),
                "operation asked to be retried: performed again after a backoff"
            );
            rt.tally.metrics().retried(1);
        } else {
            rewrites.push((seq, rt.pending_envelope(seq, attempts, &bytes)));
            tracing::warn!(
                name: "ractor_persist.retry",
                target: TARGET,
                namespace = rt.key.namespace(),
                key = rt.key.key(),
                op = seq,
                attempts,
                max_attempts,
                after = "restart",
                error = failed.as_ref().err().map(display),
                "operation failed: the actor stops and performs it again when it starts"
            );
            rt.tally.metrics().retried(1);
        }
        if let Err(e) = failed {
            // The actor stops; the operation is performed again after a restart.
            result = Err(e);
            break;
        }
    }
    if !done.is_empty() || !rewrites.is_empty() {
        let mut commit = ActorCommit::new(rt.key.clone(), rt.epoch);
        for (seq, bytes) in rewrites {
            commit = commit.put(Space::OPS, seq, bytes);
        }
        for seq in done {
            commit = commit.remove(Space::OPS, seq);
        }
        rt.storage.ride(commit);
    }
    // An emptied BTreeMap keeps its last node (about 800 bytes for a leaf of pending
    // operations); an idle actor with nothing pending should hold none.
    if rt.pending.is_empty() {
        rt.pending = BTreeMap::new();
    }
    if rt.retry.is_empty() {
        rt.retry = BTreeMap::new();
    }
    rt.tally.set(rt.pending.len(), rt.dead.len());
    arm_retry_timer(myself, rt);
    result
}

/// Makes sure a timer wakes the actor when its earliest waiting retry is due: every waiting
/// retry is performed in time, not only the earliest of the batch that scheduled it. One
/// timer at a time: a new one only when none is armed or the earliest retry is due before it.
fn arm_retry_timer<A: Persistent>(myself: &ActorRef<A::Msg>, rt: &mut Runtime<A>) {
    let Some(due) = rt.retry.values().min().copied() else {
        return;
    };
    let now = Instant::now();
    if rt.timer.is_some_and(|armed| armed > now && armed <= due) {
        return;
    }
    // Without a control variant in the message type, retries wait for the next message.
    if A::wrap_control(Control::RetryDue).is_none() {
        return;
    }
    rt.timer = Some(due);
    let myself = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        if let Some(msg) = A::wrap_control(Control::RetryDue) {
            // The actor may have stopped meanwhile; then there is nothing to retry.
            let _ = myself.send_message(msg);
        }
    });
}

#[cfg(test)]
mod tests {
    //! P5 from the inside: after a failed handler or a failed commit, the state in memory is
    //! the stored one. (The actor stops after either, so only the runtime can be asked.)

    use std::sync::atomic::{AtomicBool, Ordering};

    use ractor::ActorProcessingErr;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::{Loaded, Space, Store};

    #[derive(Default)]
    struct Acc;

    enum AccMsg {
        Add(u32),
        AddThenFail(u32),
    }

    impl PersistentActor for Acc {
        type Msg = AccMsg;
        type State = Vec<u32>;
        type Op = u32;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Vec<u32>, ActorProcessingErr> {
            Ok(vec![1])
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: AccMsg,
            state: &mut Vec<u32>,
        ) -> Result<(), ActorProcessingErr> {
            let (AccMsg::Add(n) | AccMsg::AddThenFail(n)) = msg;
            state.push(n);
            tx.push(n)?;
            match msg {
                AccMsg::Add(_) => Ok(()),
                AccMsg::AddThenFail(_) => Err("failed on purpose".into()),
            }
        }
    }

    impl Persistent for Acc {
        const NAME: &'static str = "acc";
    }
    crate::__impl_actor!(Acc);

    #[derive(Clone, Default)]
    struct Flaky {
        inner: MemoryStore,
        fail: std::sync::Arc<AtomicBool>,
        /// Reads fail too: a rollback cannot read the stored state back.
        unreadable: std::sync::Arc<AtomicBool>,
    }

    impl Store for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
            self.inner.open_actor(key, spaces)
        }
        fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::backend("flaky", "injected"));
            }
            self.inner.commit(batch)
        }
        fn read(
            &self,
            key: &ActorKey,
            space: Option<Space>,
            ids: std::ops::RangeInclusive<u64>,
        ) -> Result<Vec<crate::store::Row>, StoreError> {
            if self.unreadable.load(Ordering::SeqCst) {
                return Err(StoreError::backend("flaky", "unreadable"));
            }
            self.inner.read(key, space, ids)
        }
    }

    use crate::envelope::decode;

    /// A `Flaky` store, an actor to stand for `myself`, and the runtime of key "k" on the
    /// store, started.
    async fn started() -> (Flaky, ActorRef<AccMsg>, Runtime<Acc>) {
        let store = Flaky::default();
        let storage = Storage::new(store.clone());
        let (myself, _) = ractor::Actor::spawn(None, Acc, Start::new(&storage, "probe", ()))
            .await
            .unwrap();
        let rt = pre_start(&Acc, myself.clone(), Start::new(&storage, "k", ()))
            .await
            .unwrap();
        (store, myself, rt)
    }

    fn stored(store: &MemoryStore) -> Vec<u32> {
        let bytes = store
            .snapshot(&ActorKey::new("acc", "k"))
            .expect("a snapshot");
        decode::<Vec<u32>>(&bytes, Kind::Snapshot, 1).unwrap().1
    }

    #[tokio::test]
    async fn failed_handler_and_failed_commit_leave_memory_equal_to_the_store() {
        let (store, myself, mut rt) = started().await;
        handle(&Acc, myself.clone(), AccMsg::Add(2), &mut rt)
            .await
            .unwrap();
        assert_eq!(stored(&store.inner), vec![1, 2]);

        let err = handle(&Acc, myself.clone(), AccMsg::AddThenFail(3), &mut rt).await;
        assert!(err.is_err());
        assert_eq!(
            rt.state(),
            &stored(&store.inner),
            "handler error rolled back"
        );

        store.fail.store(true, Ordering::SeqCst);
        let err = handle(&Acc, myself.clone(), AccMsg::Add(4), &mut rt).await;
        let err = err.expect_err("commit failed");
        assert!(err.downcast_ref::<CommitError>().is_some(), "{err}");
        assert_eq!(
            rt.state(),
            &stored(&store.inner),
            "failed commit rolled back"
        );
        assert_eq!(
            rt.pending().count(),
            0,
            "the failed message's op was dropped"
        );
        assert!(store.inner.ops(&ActorKey::new("acc", "k")).len() <= 1);
        myself.stop(None);
    }

    /// The actor keeps no copy of its committed state: a rollback reads it back from the
    /// store. If that read fails, the instance serves nothing more (ractor stops it with the
    /// first error anyway): the failed message's state is never committed or replied.
    #[tokio::test]
    async fn a_rollback_that_cannot_read_the_store_back_refuses_everything_after() {
        let (store, myself, mut rt) = started().await;
        // Before the first commit, the rollback needs no store: `init`'s state comes back.
        let err = handle(&Acc, myself.clone(), AccMsg::AddThenFail(7), &mut rt).await;
        assert!(err.is_err());
        assert_eq!(rt.state(), &vec![1], "back to init's state");
        handle(&Acc, myself.clone(), AccMsg::Add(2), &mut rt)
            .await
            .unwrap();
        assert_eq!(stored(&store.inner), vec![1, 2]);

        store.unreadable.store(true, Ordering::SeqCst);
        let err = handle(&Acc, myself.clone(), AccMsg::AddThenFail(3), &mut rt).await;
        assert!(err.is_err());
        let again = handle(&Acc, myself.clone(), AccMsg::Add(4), &mut rt)
            .await
            .expect_err("an instance whose state could not be put back handles nothing more");
        assert!(
            matches!(
                again.downcast_ref::<CommitError>(),
                Some(CommitError::FailedBefore { .. })
            ),
            "{again}"
        );
        assert_eq!(
            stored(&store.inner),
            vec![1, 2],
            "nothing of 3 or 4 was written"
        );
        myself.stop(None);
    }
}
