//! The conformance kit: the whole [`Store`] contract, runnable against any backend.
//!
//! Every backend of the workspace runs it (memory, redb, SQLite), and so can yours: give the
//! kit a function that makes a new, empty store, and it runs each check on a fresh one.
//!
//! - [`store_conformance!`](crate::store_conformance) expands to one `#[test]` per check, so a
//!   failure names the check:
//!   `persist_core::store_conformance!(my_store, || MyStore::new());`
//! - [`check`] runs every check and panics listing the ones that failed; [`run`] returns the
//!   results, for a test that expects a broken store to fail.
//!
//! What it checks: atomic batches (a stale epoch in the last commit writes nothing of the
//! batch, and lists every stale commit); epochs (one per open, per key, fencing); loads after
//! commits (only the spaces asked for); writes applied in order; removal by id range; rows
//! ordered by unsigned id (0, 255, 256, 2^63, `u64::MAX`); spaces and keys kept apart (any
//! UTF-8, empty, prefixes of one another, separators); marks raised never lowered, kept when
//! every row is gone, untouched by a fenced commit; rows up to [`MAX_ROW_LEN`] bytes; many keys
//! in one batch; `keys` and `scan` listing exactly what is stored, in order.
//!
//! Durability across a crash is not checked here: that needs a process to kill. The
//! workspace's crash tests do that for each of its backends.
//!
//! # A tiny backend, proven by the kit
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::ops::RangeInclusive;
//! use std::sync::Mutex;
//!
//! use persist_core::{
//!     check_epochs, next_epoch, ActorCommit, ActorKey, Loaded, Marks, Row, RowWrite, Space,
//!     Store, StoreError,
//! };
//!
//! #[derive(Default)]
//! struct Tiny(Mutex<(BTreeMap<(ActorKey, Space, u64), Vec<u8>>, BTreeMap<ActorKey, Marks>)>);
//!
//! impl Store for Tiny {
//!     fn name(&self) -> &str {
//!         "tiny"
//!     }
//!     fn open_actor(&self, key: &ActorKey, spaces: &[Space]) -> Result<Loaded, StoreError> {
//!         let mut t = self.0.lock().unwrap();
//!         let marks = t.1.entry(key.clone()).or_default();
//!         marks.epoch = next_epoch("tiny", key, marks.epoch)?;
//!         let (epoch, floor) = (marks.epoch, marks.floor);
//!         let rows = t.0.iter()
//!             .filter(|((k, s, _), _)| k == key && spaces.contains(s))
//!             .map(|((_, space, id), b)| Row { space: *space, id: *id, bytes: b.clone() })
//!             .collect();
//!         Ok(Loaded { epoch, floor, rows })
//!     }
//!     fn commit(&self, batch: &[ActorCommit]) -> Result<(), StoreError> {
//!         let mut t = self.0.lock().unwrap();
//!         let fences = check_epochs(batch, |k| Ok(t.1.get(k).map_or(0, |m| m.epoch)))?;
//!         if !fences.is_empty() {
//!             return Err(StoreError::Fenced(fences));
//!         }
//!         let writes = batch.iter().flat_map(|c| &c.writes);
//!         if writes.clone().any(|w| matches!(w, RowWrite::Put { space, id, .. }
//!             if *space == Space::SNAPSHOT && *id != 0))
//!         {
//!             return Err(self.unsupported("a snapshot row other than id 0"));
//!         }
//!         for c in batch {
//!             for w in &c.writes {
//!                 match w {
//!                     RowWrite::Put { space, id, bytes } => {
//!                         t.0.insert(((*c.key).clone(), *space, *id), bytes.clone());
//!                     }
//!                     RowWrite::Delete { space, first, last } => t.0.retain(|(k, s, id), _| {
//!                         !(*k == *c.key && s == space && (*first..=*last).contains(id))
//!                     }),
//!                 }
//!             }
//!             let m = t.1.entry((*c.key).clone()).or_default();
//!             m.epoch = m.epoch.max(c.raise.epoch);
//!             m.floor = m.floor.max(c.raise.floor);
//!         }
//!         Ok(())
//!     }
//!     fn read(&self, key: &ActorKey, space: Option<Space>, ids: RangeInclusive<u64>)
//!         -> Result<Vec<Row>, StoreError> {
//!         let t = self.0.lock().unwrap();
//!         Ok(t.0.iter()
//!             .filter(|((k, s, id), _)| {
//!                 k == key && space.is_none_or(|x| x == *s) && ids.contains(id)
//!             })
//!             .map(|((_, space, id), b)| Row { space: *space, id: *id, bytes: b.clone() })
//!             .collect())
//!     }
//!     fn keys(&self, namespace: &str, space: Space) -> Result<Vec<String>, StoreError> {
//!         let t = self.0.lock().unwrap();
//!         let mut keys: Vec<String> = t.0.keys()
//!             .filter(|(k, s, _)| k.namespace() == namespace && *s == space)
//!             .map(|(k, _, _)| k.key().to_owned())
//!             .collect();
//!         keys.dedup();
//!         Ok(keys)
//!     }
//!     fn scan(&self) -> Result<Vec<(ActorKey, Marks)>, StoreError> {
//!         let t = self.0.lock().unwrap();
//!         let mut all = t.1.clone();
//!         for (k, _, _) in t.0.keys() {
//!             all.entry(k.clone()).or_default();
//!         }
//!         Ok(all.into_iter().collect())
//!     }
//! }
//!
//! persist_core::testkit::check(Tiny::default);
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::StoreError;
use crate::key::ActorKey;
use crate::store::{ActorCommit, Marks, Row, RowWrite, Space, Store};

pub use crate::store::MAX_ROW_LEN;

/// One check of the contract: its name and the function that runs it on a fresh store.
pub type Check = (&'static str, fn(&dyn Store));

/// Every check of the kit, in the order [`check`] runs them.
pub const CHECKS: &[Check] = &[
    ("a_new_key_loads_empty", a_new_key_loads_empty),
    (
        "each_open_takes_the_next_epoch",
        each_open_takes_the_next_epoch,
    ),
    (
        "a_commit_is_read_back_by_the_next_load",
        a_commit_is_read_back_by_the_next_load,
    ),
    (
        "a_load_reads_only_the_spaces_asked_for",
        a_load_reads_only_the_spaces_asked_for,
    ),
    (
        "a_stale_epoch_writes_nothing_of_the_batch",
        a_stale_epoch_writes_nothing_of_the_batch,
    ),
    ("every_stale_commit_is_listed", every_stale_commit_is_listed),
    (
        "a_fenced_batch_leaves_the_store_writable",
        a_fenced_batch_leaves_the_store_writable,
    ),
    ("writes_apply_in_order", writes_apply_in_order),
    (
        "a_delete_removes_exactly_its_range",
        a_delete_removes_exactly_its_range,
    ),
    (
        "ids_are_ordered_as_unsigned_numbers",
        ids_are_ordered_as_unsigned_numbers,
    ),
    ("spaces_are_kept_apart", spaces_are_kept_apart),
    (
        "keys_are_kept_apart_whatever_their_text",
        keys_are_kept_apart_whatever_their_text,
    ),
    (
        "marks_are_raised_never_lowered",
        marks_are_raised_never_lowered,
    ),
    ("marks_outlive_every_row", marks_outlive_every_row),
    (
        "a_fenced_commit_raises_no_mark",
        a_fenced_commit_raises_no_mark,
    ),
    ("the_largest_row_round_trips", the_largest_row_round_trips),
    ("many_keys_in_one_batch", many_keys_in_one_batch),
    (
        "keys_lists_a_namespace_in_a_space",
        keys_lists_a_namespace_in_a_space,
    ),
    (
        "scan_lists_every_key_with_its_marks",
        scan_lists_every_key_with_its_marks,
    ),
    ("reads_by_range_take_no_epoch", reads_by_range_take_no_epoch),
    (
        "an_empty_batch_changes_nothing",
        an_empty_batch_changes_nothing,
    ),
    (
        "a_reversed_range_reads_and_removes_nothing",
        a_reversed_range_reads_and_removes_nothing,
    ),
    (
        "a_snapshot_row_other_than_id_0_is_refused",
        a_snapshot_row_other_than_id_0_is_refused,
    ),
    (
        "a_journal_reads_in_order_from_a_number",
        a_journal_reads_in_order_from_a_number,
    ),
    (
        "a_compaction_removes_only_the_events_below_its_number",
        a_compaction_removes_only_the_events_below_its_number,
    ),
    (
        "one_entry_of_a_large_map_is_written_alone",
        one_entry_of_a_large_map_is_written_alone,
    ),
];

/// Runs every check, each on a store fresh from `make`, and returns each check's name with
/// its failure message (`Ok` when it passed).
pub fn run<S: Store>(make: impl Fn() -> S) -> Vec<(&'static str, Result<(), String>)> {
    CHECKS
        .iter()
        .map(|(name, check)| (*name, run_one(&make, *check)))
        .collect()
}

/// Runs one check on a store fresh from `make`; a failure is the check's panic message.
pub fn run_one<S: Store>(make: &impl Fn() -> S, check: fn(&dyn Store)) -> Result<(), String> {
    let store = make();
    catch_unwind(AssertUnwindSafe(|| check(&store)))
        .map_err(|panic| crate::storage::panic_text(&*panic))
}

/// Runs every check, each on a store fresh from `make`; panics listing every failed check.
pub fn check<S: Store>(make: impl Fn() -> S) {
    let failed: Vec<String> = run(make)
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "the store broke {} of {} checks of the contract:\n{}",
        failed.len(),
        CHECKS.len(),
        failed.join("\n")
    );
}

/// Expands to a module `$name` of `#[test]`s, one per check of the kit, each on a store fresh
/// from `$make` (an expression that is a `Fn() -> impl Store`).
///
/// ```ignore
/// persist_core::store_conformance!(sqlite, || SqliteStore::in_memory().unwrap());
/// ```
#[macro_export]
macro_rules! store_conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_conformance!(@tests $make;
                a_new_key_loads_empty, each_open_takes_the_next_epoch,
                a_commit_is_read_back_by_the_next_load, a_load_reads_only_the_spaces_asked_for,
                a_stale_epoch_writes_nothing_of_the_batch, every_stale_commit_is_listed,
                a_fenced_batch_leaves_the_store_writable, writes_apply_in_order,
                a_delete_removes_exactly_its_range, ids_are_ordered_as_unsigned_numbers,
                spaces_are_kept_apart, keys_are_kept_apart_whatever_their_text,
                marks_are_raised_never_lowered, marks_outlive_every_row,
                a_fenced_commit_raises_no_mark, the_largest_row_round_trips,
                many_keys_in_one_batch, keys_lists_a_namespace_in_a_space,
                scan_lists_every_key_with_its_marks, reads_by_range_take_no_epoch,
                an_empty_batch_changes_nothing, a_reversed_range_reads_and_removes_nothing,
                a_snapshot_row_other_than_id_0_is_refused, a_journal_reads_in_order_from_a_number,
                a_compaction_removes_only_the_events_below_its_number,
                one_entry_of_a_large_map_is_written_alone);
        }
    };
    (@tests $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let make = $make;
                if let Err(e) = $crate::testkit::run_one(&make, $crate::testkit::checks::$check) {
                    panic!("{}", e);
                }
            }
        )*
    };
}

pub use checks::*;

/// The checks, one function each, for [`store_conformance!`](crate::store_conformance).
pub mod checks {
    use super::*;

    fn key(k: &str) -> ActorKey {
        ActorKey::new("kit", k)
    }

    fn open(s: &dyn Store, k: &ActorKey, spaces: &[Space]) -> crate::store::Loaded {
        s.open_actor(k, spaces)
            .unwrap_or_else(|e| panic!("open_actor({k}) failed: {e}"))
    }

    fn epoch(s: &dyn Store, k: &ActorKey) -> u64 {
        open(s, k, &[]).epoch
    }

    fn all(s: &dyn Store, k: &ActorKey) -> Vec<Row> {
        s.read(k, None, 0..=u64::MAX)
            .unwrap_or_else(|e| panic!("read({k}) failed: {e}"))
    }

    fn row(space: Space, id: u64, bytes: &[u8]) -> Row {
        Row {
            space,
            id,
            bytes: bytes.to_vec(),
        }
    }

    fn commit(s: &dyn Store, batch: &[ActorCommit]) {
        s.commit(batch)
            .unwrap_or_else(|e| panic!("a commit with current epochs failed: {e}"));
    }

    fn marks_of(s: &dyn Store, k: &ActorKey) -> Marks {
        s.scan()
            .unwrap_or_else(|e| panic!("scan failed: {e}"))
            .into_iter()
            .find(|(key, _)| key == k)
            .map_or(Marks::default(), |(_, m)| m)
    }

    /// A key never seen loads with epoch 1, floor 0 and no rows.
    pub fn a_new_key_loads_empty(s: &dyn Store) {
        let l = open(
            s,
            &key("new"),
            &[Space::SNAPSHOT, Space::OPS, Space::QUARANTINE],
        );
        assert_eq!((l.epoch, l.floor, l.rows), (1, 0, vec![]), "a new key");
    }

    /// Each open takes the next epoch of its key, and only of its key.
    pub fn each_open_takes_the_next_epoch(s: &dyn Store) {
        let (a, b) = (key("a"), key("b"));
        assert_eq!(epoch(s, &a), 1);
        assert_eq!(epoch(s, &a), 2);
        assert_eq!(epoch(s, &b), 1, "another key's epochs are its own");
        assert_eq!(epoch(s, &a), 3);
        // A commit at an older epoch of the key is fenced: a newer instance exists.
        let err = s
            .commit(&[ActorCommit::new(a.clone(), 2).put(Space::OPS, 0, b"x".to_vec())])
            .expect_err("a commit at epoch 2 after epoch 3 was taken must be fenced");
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        // And at a future one too: the epoch must match.
        let err = s
            .commit(&[ActorCommit::new(a.clone(), 4).put(Space::OPS, 0, b"x".to_vec())])
            .expect_err("a commit at an epoch never taken must be fenced");
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        assert_eq!(all(s, &a), vec![], "nothing written by fenced commits");
    }

    /// Rows committed are what the next load reads, by ascending (space, id).
    pub fn a_commit_is_read_back_by_the_next_load(s: &dyn Store) {
        let k = key("rb");
        let e = epoch(s, &k);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::OPS, 7, b"op 7".to_vec())
                .put(Space::SNAPSHOT, 0, b"state".to_vec())
                .put(Space::OPS, 3, b"op 3".to_vec())
                .put(Space::OPS, 5, Vec::new())],
        );
        let l = open(s, &k, &Space::RECORD);
        assert_eq!(l.epoch, e + 1);
        assert_eq!(
            l.rows,
            vec![
                row(Space::SNAPSHOT, 0, b"state"),
                row(Space::OPS, 3, b"op 3"),
                row(Space::OPS, 5, b""),
                row(Space::OPS, 7, b"op 7"),
            ]
        );
        assert_eq!(l.snapshot(), Some(&b"state"[..]));
        // A commit replaces a row with the same id.
        commit(
            s,
            &[ActorCommit::new(k.clone(), l.epoch).put(Space::SNAPSHOT, 0, b"state 2".to_vec())],
        );
        assert_eq!(
            open(s, &k, &[Space::SNAPSHOT]).snapshot(),
            Some(&b"state 2"[..])
        );
    }

    /// A load reads the spaces it names and no other.
    pub fn a_load_reads_only_the_spaces_asked_for(s: &dyn Store) {
        let k = key("sp");
        let e = epoch(s, &k);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::SNAPSHOT, 0, b"s".to_vec())
                .put(Space::OPS, 1, b"o".to_vec())
                .put(Space::new(9), 1, b"n".to_vec())],
        );
        assert_eq!(open(s, &k, &[]).rows, vec![]);
        assert_eq!(
            open(s, &k, &[Space::OPS]).rows,
            vec![row(Space::OPS, 1, b"o")]
        );
        assert_eq!(
            open(s, &k, &[Space::new(9), Space::SNAPSHOT]).rows,
            vec![row(Space::SNAPSHOT, 0, b"s"), row(Space::new(9), 1, b"n")]
        );
    }

    /// A batch with one stale commit (the last one) writes none of its commits: no row, no
    /// removal, no mark.
    pub fn a_stale_epoch_writes_nothing_of_the_batch(s: &dyn Store) {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let (ea, eb) = (epoch(s, &a), epoch(s, &b));
        commit(
            s,
            &[ActorCommit::new(a.clone(), ea).put(Space::OPS, 1, b"keep".to_vec())],
        );
        let ec = epoch(s, &c);
        epoch(s, &c); // c's instance at `ec` is now stale
        let err = s
            .commit(&[
                ActorCommit::new(a.clone(), ea)
                    .put(Space::SNAPSHOT, 0, b"a".to_vec())
                    .remove(Space::OPS, 1)
                    .raise_floor(100),
                ActorCommit::new(b.clone(), eb).put(Space::OPS, 2, b"b".to_vec()),
                ActorCommit::new(c.clone(), ec).put(Space::OPS, 3, b"c".to_vec()),
            ])
            .expect_err("a batch with a stale commit must be refused");
        let StoreError::Fenced(fences) = err else {
            panic!("expected Fenced, got {err}")
        };
        assert_eq!(fences.len(), 1, "{fences:?}");
        assert_eq!(
            (
                fences[0].index,
                &fences[0].key,
                fences[0].epoch,
                fences[0].current
            ),
            (2, &c, ec, ec + 1)
        );
        assert_eq!(
            all(s, &a),
            vec![row(Space::OPS, 1, b"keep")],
            "a: nothing written"
        );
        assert_eq!(all(s, &b), vec![], "b: nothing written");
        assert_eq!(all(s, &c), vec![], "c: nothing written");
        assert_eq!(marks_of(s, &a).floor, 0, "a: no mark raised");
    }

    /// Every stale commit of a batch is listed, by its index.
    pub fn every_stale_commit_is_listed(s: &dyn Store) {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let (ea, eb, ec) = (epoch(s, &a), epoch(s, &b), epoch(s, &c));
        epoch(s, &a);
        epoch(s, &c);
        let err = s
            .commit(&[
                ActorCommit::new(a.clone(), ea).put(Space::OPS, 1, b"a".to_vec()),
                ActorCommit::new(b.clone(), eb).put(Space::OPS, 1, b"b".to_vec()),
                ActorCommit::new(c.clone(), ec).put(Space::OPS, 1, b"c".to_vec()),
            ])
            .expect_err("stale commits must be refused");
        let StoreError::Fenced(fences) = err else {
            panic!("expected Fenced, got {err}")
        };
        let listed: Vec<(usize, ActorKey)> = fences.into_iter().map(|f| (f.index, f.key)).collect();
        assert_eq!(listed, vec![(0, a), (2, c)]);
    }

    /// After a fenced batch, the same batch without its stale commits is written whole.
    pub fn a_fenced_batch_leaves_the_store_writable(s: &dyn Store) {
        let (a, b) = (key("a"), key("b"));
        let (ea, eb) = (epoch(s, &a), epoch(s, &b));
        epoch(s, &b);
        let ok = ActorCommit::new(a.clone(), ea).put(Space::OPS, 1, b"a".to_vec());
        let stale = ActorCommit::new(b.clone(), eb).put(Space::OPS, 1, b"b".to_vec());
        assert!(s.commit(&[ok.clone(), stale]).is_err());
        commit(s, &[ok]);
        assert_eq!(all(s, &a), vec![row(Space::OPS, 1, b"a")]);
        assert_eq!(all(s, &b), vec![]);
    }

    /// Writes apply in order: a delete then a put of one id leaves the row; a put then a
    /// delete leaves none; two commits of one key in a batch apply in batch order.
    pub fn writes_apply_in_order(s: &dyn Store) {
        let k = key("ord");
        let e = epoch(s, &k);
        commit(
            s,
            &[
                ActorCommit::new(k.clone(), e)
                    .put(Space::OPS, 1, b"old".to_vec())
                    .put(Space::OPS, 2, b"gone".to_vec()),
                ActorCommit::new(k.clone(), e)
                    .clear(Space::OPS)
                    .put(Space::OPS, 1, b"new".to_vec())
                    .put(Space::OPS, 3, b"put".to_vec())
                    .remove(Space::OPS, 3),
            ],
        );
        assert_eq!(all(s, &k), vec![row(Space::OPS, 1, b"new")]);
    }

    /// A delete of `first..=last` removes those ids of that space, and nothing else; absent
    /// ids are no error.
    pub fn a_delete_removes_exactly_its_range(s: &dyn Store) {
        let (k, other) = (key("del"), key("del2"));
        let (e, eo) = (epoch(s, &k), epoch(s, &other));
        let mut c = ActorCommit::new(k.clone(), e);
        for id in 0..10 {
            c = c.put(Space::OPS, id, vec![id as u8]);
            c = c.put(Space::QUARANTINE, id, vec![id as u8]);
            c = c.put(Space::new(9), id, vec![id as u8]);
        }
        let co = ActorCommit::new(other.clone(), eo).put(Space::OPS, 4, b"other".to_vec());
        commit(s, &[c, co]);
        let mut c = ActorCommit::new(k.clone(), e);
        c.writes.push(RowWrite::Delete {
            space: Space::OPS,
            first: 3,
            last: 6,
        });
        c.writes.push(RowWrite::Delete {
            space: Space::new(9),
            first: 2,
            last: 4,
        });
        c = c
            .remove(Space::OPS, 9)
            .remove(Space::OPS, 42)
            .remove(Space::new(9), 8);
        commit(s, &[c]);
        let nine: Vec<u64> = s
            .read(&k, Some(Space::new(9)), 0..=u64::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(nine, vec![0, 1, 5, 6, 7, 9], "a range of another space");
        let ops: Vec<u64> = s
            .read(&k, Some(Space::OPS), 0..=u64::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ops, vec![0, 1, 2, 7, 8]);
        assert_eq!(
            s.read(&k, Some(Space::QUARANTINE), 0..=u64::MAX)
                .unwrap()
                .len(),
            10,
            "another space untouched"
        );
        assert_eq!(
            all(s, &other),
            vec![row(Space::OPS, 4, b"other")],
            "another key untouched"
        );
        commit(
            s,
            &[ActorCommit::new(k.clone(), e).clear(Space::QUARANTINE)],
        );
        assert_eq!(
            s.read(&k, Some(Space::QUARANTINE), 0..=u64::MAX).unwrap(),
            vec![]
        );
    }

    /// Ids order as unsigned 64-bit numbers (not as signed ones, not as text).
    pub fn ids_are_ordered_as_unsigned_numbers(s: &dyn Store) {
        let k = key("ids");
        let e = epoch(s, &k);
        let ids = [u64::MAX, 1 << 63, (1 << 63) - 1, 256, 255, 10, 9, 2, 1, 0];
        for space in [Space::OPS, Space::QUARANTINE, Space::new(200)] {
            let mut c = ActorCommit::new(k.clone(), e);
            for id in ids {
                c = c.put(space, id, id.to_le_bytes().to_vec());
            }
            commit(s, &[c]);
            let mut want = ids.to_vec();
            want.sort_unstable();
            let read: Vec<u64> = s
                .read(&k, Some(space), 0..=u64::MAX)
                .unwrap()
                .into_iter()
                .map(|r| {
                    assert_eq!(r.bytes, r.id.to_le_bytes(), "row {} of {space}", r.id);
                    r.id
                })
                .collect();
            assert_eq!(read, want, "{space}");
            let high: Vec<u64> = s
                .read(&k, Some(space), 256..=(1 << 63))
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(high, vec![256, (1 << 63) - 1, 1 << 63], "{space}: a range");
        }
        let mut c = ActorCommit::new(k.clone(), e);
        c.writes.push(RowWrite::Delete {
            space: Space::OPS,
            first: 1 << 63,
            last: u64::MAX,
        });
        commit(s, &[c]);
        let left = s.read(&k, Some(Space::OPS), 0..=u64::MAX).unwrap();
        assert_eq!(left.last().map(|r| r.id), Some((1 << 63) - 1));
    }

    /// The same id in different spaces is different rows; `read` of every space orders by
    /// (space, id).
    pub fn spaces_are_kept_apart(s: &dyn Store) {
        let k = key("spaces");
        let e = epoch(s, &k);
        let spaces = [
            Space::new(255),
            Space::new(3),
            Space::QUARANTINE,
            Space::OPS,
        ];
        let mut c = ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"snap".to_vec());
        for sp in spaces {
            c = c.put(sp, 0, vec![sp.id()]).put(sp, 5, vec![sp.id(), 5]);
        }
        commit(s, &[c]);
        let mut want = vec![row(Space::SNAPSHOT, 0, b"snap")];
        let mut sorted = spaces;
        sorted.sort();
        for sp in sorted {
            want.push(row(sp, 0, &[sp.id()]));
            want.push(row(sp, 5, &[sp.id(), 5]));
        }
        assert_eq!(all(s, &k), want);
        commit(s, &[ActorCommit::new(k.clone(), e).clear(Space::new(3))]);
        want.retain(|r| r.space != Space::new(3));
        assert_eq!(all(s, &k), want, "clearing one space leaves the others");
    }

    /// Namespaces and keys are any UTF-8, and two different (namespace, key) pairs never
    /// share rows, marks or listings, however their text compares.
    pub fn keys_are_kept_apart_whatever_their_text(s: &dyn Store) {
        let keys = [
            ActorKey::new("a", "b/c"),
            ActorKey::new("a/b", "c"),
            ActorKey::new("a", "b"),
            ActorKey::new("a", "b\0"),
            ActorKey::new("a", ""),
            ActorKey::new("", "a"),
            ActorKey::new("", ""),
            ActorKey::new("ab", ""),
            ActorKey::new("a", "B"),
            ActorKey::new("a", "b c"),
            ActorKey::new("a", "b'; DROP TABLE x; --"),
            ActorKey::new("a", "ü ß 漢字 🦀"),
            ActorKey::new("a", "b%"),
            ActorKey::new("a", "b_"),
            ActorKey::new("a\u{10FFFF}", "\u{7f}"),
        ];
        let mut batch = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let e = epoch(s, k);
            batch.push(
                ActorCommit::new(k.clone(), e)
                    .put(Space::SNAPSHOT, 0, format!("{i}").into_bytes())
                    .put(Space::OPS, i as u64, format!("{i}").into_bytes())
                    .raise_floor(1000 + i as u64),
            );
        }
        commit(s, &batch);
        for (i, k) in keys.iter().enumerate() {
            let text = format!("{i}").into_bytes();
            assert_eq!(
                all(s, k),
                vec![
                    row(Space::SNAPSHOT, 0, &text),
                    row(Space::OPS, i as u64, &text)
                ],
                "the rows of {k:?}"
            );
            assert_eq!(
                marks_of(s, k),
                Marks {
                    epoch: 1,
                    floor: 1000 + i as u64
                },
                "{k:?}"
            );
        }
        let mut in_a: Vec<String> = keys
            .iter()
            .filter(|k| k.namespace() == "a")
            .map(|k| k.key().to_owned())
            .collect();
        in_a.sort();
        assert_eq!(
            s.keys("a", Space::SNAPSHOT).unwrap(),
            in_a,
            "keys of namespace `a`"
        );
        assert_eq!(
            s.keys("", Space::OPS).unwrap(),
            vec!["", "a"],
            "keys of namespace ``"
        );
    }

    /// A mark is raised to the larger of its value and the commit's; a lower value (or 0)
    /// leaves it. The next open takes the epoch after a raised one.
    pub fn marks_are_raised_never_lowered(s: &dyn Store) {
        let k = key("marks");
        let e = epoch(s, &k);
        commit(s, &[ActorCommit::new(k.clone(), e).raise_floor(100)]);
        assert_eq!(
            marks_of(s, &k),
            Marks {
                epoch: e,
                floor: 100
            }
        );
        commit(s, &[ActorCommit::new(k.clone(), e).raise_floor(50)]);
        assert_eq!(marks_of(s, &k).floor, 100, "a floor never goes down");
        let mut c = ActorCommit::new(k.clone(), e);
        c.raise = Marks {
            epoch: 40,
            floor: 0,
        };
        commit(s, &[c]);
        assert_eq!(
            marks_of(s, &k),
            Marks {
                epoch: 40,
                floor: 100
            }
        );
        let l = open(s, &k, &[]);
        assert_eq!(
            (l.epoch, l.floor),
            (41, 100),
            "the open after a raised epoch"
        );
        let mut c = ActorCommit::new(k.clone(), 41);
        c.raise = Marks { epoch: 7, floor: 7 };
        commit(s, &[c]);
        assert_eq!(
            marks_of(s, &k),
            Marks {
                epoch: 41,
                floor: 100
            },
            "nothing lowered"
        );
        // Raised in the same batch twice: the larger wins, whatever the order.
        commit(
            s,
            &[
                ActorCommit::new(k.clone(), 41).raise_floor(500),
                ActorCommit::new(k.clone(), 41).raise_floor(300),
            ],
        );
        assert_eq!(marks_of(s, &k).floor, 500);
    }

    /// Removing every row keeps the marks, and the key stays in the scan.
    pub fn marks_outlive_every_row(s: &dyn Store) {
        let k = key("outlive");
        let e = epoch(s, &k);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::SNAPSHOT, 0, b"s".to_vec())
                .put(Space::OPS, 9, b"o".to_vec())
                .raise_floor(1024)],
        );
        let l = open(s, &k, &Space::RECORD);
        let c = ActorCommit::new(k.clone(), l.epoch)
            .put(Space::QUARANTINE, l.epoch, b"q".to_vec())
            .clear_record();
        commit(s, &[c]);
        let l = open(s, &k, &Space::RECORD);
        assert_eq!((l.epoch, l.floor, l.rows), (e + 2, 1024, vec![]));
        assert_eq!(
            all(s, &k),
            vec![row(Space::QUARANTINE, e + 1, b"q")],
            "the quarantine row stays"
        );
        assert!(s.keys("kit", Space::SNAPSHOT).unwrap().is_empty());
        assert_eq!(s.keys("kit", Space::QUARANTINE).unwrap(), vec!["outlive"]);
        commit(
            s,
            &[ActorCommit::new(k.clone(), l.epoch).clear(Space::QUARANTINE)],
        );
        assert_eq!(
            s.scan().unwrap(),
            vec![(
                k,
                Marks {
                    epoch: e + 2,
                    floor: 1024
                }
            )],
            "a key with marks and no row is still scanned"
        );
    }

    /// A fenced commit raises no mark.
    pub fn a_fenced_commit_raises_no_mark(s: &dyn Store) {
        let k = key("fm");
        let e = epoch(s, &k);
        epoch(s, &k);
        let mut c = ActorCommit::new(k.clone(), e).raise_floor(99);
        c.raise.epoch = 99;
        assert!(s.commit(&[c]).is_err(), "a stale commit must fail");
        assert_eq!(
            marks_of(s, &k),
            Marks {
                epoch: e + 1,
                floor: 0
            }
        );
    }

    /// A row of [`MAX_ROW_LEN`] bytes (and an empty one) is read back byte for byte.
    pub fn the_largest_row_round_trips(s: &dyn Store) {
        let k = key("big");
        let e = epoch(s, &k);
        // A pattern of a prime length, so no page or block of the row repeats another's.
        let pattern: Vec<u8> = (0..4099u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut big = Vec::with_capacity(MAX_ROW_LEN);
        while big.len() < MAX_ROW_LEN {
            let take = (MAX_ROW_LEN - big.len()).min(pattern.len());
            big.extend_from_slice(&pattern[..take]);
        }
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::SNAPSHOT, 0, big.clone())
                .put(Space::OPS, 0, Vec::new())],
        );
        let l = open(s, &k, &Space::RECORD);
        assert!(
            l.snapshot() == Some(&big[..]),
            "the large row came back changed"
        );
        assert_eq!(l.ops(), vec![(0, Vec::new())], "the empty row");
    }

    /// A batch of many keys is written whole, and each key reads its own rows.
    pub fn many_keys_in_one_batch(s: &dyn Store) {
        let n = 2_000;
        let keys: Vec<ActorKey> = (0..n).map(|i| key(&format!("k{i:05}"))).collect();
        let batch: Vec<ActorCommit> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let e = epoch(s, k);
                ActorCommit::new(k.clone(), e)
                    .put(Space::SNAPSHOT, 0, (i as u32).to_le_bytes().to_vec())
                    .put(Space::OPS, i as u64, vec![1])
            })
            .collect();
        commit(s, &batch);
        let listed = s.keys("kit", Space::SNAPSHOT).unwrap();
        assert_eq!(listed.len(), n);
        assert_eq!(
            listed,
            keys.iter().map(|k| k.key().to_owned()).collect::<Vec<_>>()
        );
        for (i, k) in keys.iter().enumerate().step_by(97) {
            assert_eq!(
                all(s, k),
                vec![
                    row(Space::SNAPSHOT, 0, &(i as u32).to_le_bytes()),
                    row(Space::OPS, i as u64, &[1])
                ]
            );
        }
    }

    /// `keys` lists the keys of one namespace with a row in one space, in order, once each.
    pub fn keys_lists_a_namespace_in_a_space(s: &dyn Store) {
        let keys = [
            ActorKey::new("acc", "z"),
            ActorKey::new("acc", "a"),
            ActorKey::new("account", "m"),
            ActorKey::new("ac", "q"),
        ];
        let mut batch = Vec::new();
        for k in &keys {
            let e = epoch(s, k);
            batch.push(
                ActorCommit::new(k.clone(), e)
                    .put(Space::OPS, 1, b"1".to_vec())
                    .put(Space::OPS, 2, b"2".to_vec()),
            );
        }
        let only_ops = ActorKey::new("acc", "ops-only");
        let e = epoch(s, &only_ops);
        batch.push(ActorCommit::new(only_ops, e).put(Space::OPS, 1, b"1".to_vec()));
        batch[1] = batch[1].clone().put(Space::SNAPSHOT, 0, b"s".to_vec());
        batch[0] = batch[0].clone().put(Space::SNAPSHOT, 0, b"s".to_vec());
        batch[2] = batch[2].clone().put(Space::new(77), 0, b"s".to_vec());
        commit(s, &batch);
        assert_eq!(s.keys("acc", Space::SNAPSHOT).unwrap(), vec!["a", "z"]);
        assert_eq!(
            s.keys("acc", Space::OPS).unwrap(),
            vec!["a", "ops-only", "z"]
        );
        assert_eq!(s.keys("account", Space::new(77)).unwrap(), vec!["m"]);
        assert!(s.keys("acc", Space::new(77)).unwrap().is_empty());
        assert!(
            s.keys("a", Space::OPS).unwrap().is_empty(),
            "no prefix match"
        );
        assert!(s.keys("nobody", Space::SNAPSHOT).unwrap().is_empty());
    }

    /// `scan` lists every key with a row or a mark, in every namespace, ordered, with its
    /// marks.
    pub fn scan_lists_every_key_with_its_marks(s: &dyn Store) {
        assert_eq!(s.scan().unwrap(), vec![], "a new store holds nothing");
        let opened = ActorKey::new("b", "opened only");
        let rows = ActorKey::new("a", "rows");
        let floor = ActorKey::new("c", "");
        epoch(s, &opened);
        epoch(s, &opened);
        let e = epoch(s, &rows);
        commit(
            s,
            &[ActorCommit::new(rows.clone(), e).put(Space::new(8), 4, b"x".to_vec())],
        );
        let ef = epoch(s, &floor);
        commit(s, &[ActorCommit::new(floor.clone(), ef).raise_floor(77)]);
        assert_eq!(
            s.scan().unwrap(),
            vec![
                (rows, Marks { epoch: 1, floor: 0 }),
                (opened, Marks { epoch: 2, floor: 0 }),
                (
                    floor,
                    Marks {
                        epoch: 1,
                        floor: 77
                    }
                ),
            ]
        );
    }

    /// `read` reads by id range and takes no epoch: a commit at the current epoch still goes.
    pub fn reads_by_range_take_no_epoch(s: &dyn Store) {
        let k = key("range");
        let e = epoch(s, &k);
        let mut c = ActorCommit::new(k.clone(), e);
        for id in 0..20 {
            c = c.put(Space::new(5), id, vec![id as u8]);
        }
        commit(s, &[c]);
        let got: Vec<u64> = s
            .read(&k, Some(Space::new(5)), 5..=8)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(got, vec![5, 6, 7, 8]);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::OPS, 3, b"3".to_vec())
                .put(Space::OPS, 6, b"6".to_vec())
                .put(Space::OPS, 9, b"9".to_vec())],
        );
        let every: Vec<(Space, u64)> = s
            .read(&k, None, 5..=8)
            .unwrap()
            .into_iter()
            .map(|r| (r.space, r.id))
            .collect();
        let mut want = vec![(Space::OPS, 6)];
        want.extend((5..=8).map(|id| (Space::new(5), id)));
        assert_eq!(every, want, "a range over every space applies to each");
        assert_eq!(
            s.read(&k, Some(Space::new(6)), 0..=u64::MAX).unwrap(),
            vec![]
        );
        assert_eq!(s.read(&key("nobody"), None, 0..=u64::MAX).unwrap(), vec![]);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e).remove(Space::new(5), 0)],
        );
        assert_eq!(marks_of(s, &k).epoch, e, "reads took no epoch");
    }

    /// An empty batch, and a commit that writes nothing, succeed and change nothing.
    pub fn an_empty_batch_changes_nothing(s: &dyn Store) {
        commit(s, &[]);
        assert_eq!(s.scan().unwrap(), vec![]);
        let k = key("empty");
        let e = epoch(s, &k);
        commit(s, &[ActorCommit::new(k.clone(), e)]);
        assert_eq!(all(s, &k), vec![]);
        assert_eq!(marks_of(s, &k), Marks { epoch: e, floor: 0 });
    }

    /// A range whose first id is above its last holds nothing: a read returns no row, a
    /// delete removes none, and neither fails or panics.
    #[allow(clippy::reversed_empty_ranges)]
    pub fn a_reversed_range_reads_and_removes_nothing(s: &dyn Store) {
        let k = key("reversed");
        let e = epoch(s, &k);
        let mut c = ActorCommit::new(k.clone(), e);
        for id in 0..10 {
            c = c
                .put(Space::OPS, id, vec![id as u8])
                .put(Space::new(4), id, vec![1]);
        }
        commit(s, &[c]);
        assert_eq!(s.read(&k, Some(Space::OPS), 7..=3).unwrap(), vec![]);
        assert_eq!(s.read(&k, None, 7..=3).unwrap(), vec![]);
        let mut c = ActorCommit::new(k.clone(), e);
        for space in [Space::OPS, Space::new(4), Space::SNAPSHOT] {
            c.writes.push(RowWrite::Delete {
                space,
                first: 7,
                last: 3,
            });
        }
        commit(s, &[c]);
        assert_eq!(all(s, &k).len(), 20, "a reversed delete removed rows");
    }

    /// The snapshot space holds one row, id 0: a put of another id is refused with an error,
    /// and nothing of its batch is written.
    pub fn a_snapshot_row_other_than_id_0_is_refused(s: &dyn Store) {
        let (a, b) = (key("a"), key("b"));
        let (ea, eb) = (epoch(s, &a), epoch(s, &b));
        let result = s.commit(&[
            ActorCommit::new(a.clone(), ea).put(Space::OPS, 1, b"a".to_vec()),
            ActorCommit::new(b.clone(), eb).put(Space::SNAPSHOT, 1, b"b".to_vec()),
        ]);
        assert!(result.is_err(), "a snapshot row with id 1 was accepted");
        assert_eq!(all(s, &a), vec![], "a: nothing of the batch written");
        assert_eq!(all(s, &b), vec![], "b: nothing of the batch written");
    }

    /// The bytes of event `seq` in the kit's journals.
    fn event(seq: u64) -> Vec<u8> {
        let mut b = seq.to_be_bytes().to_vec();
        b.extend(std::iter::repeat_n(seq as u8, (seq % 7) as usize));
        b
    }

    /// Writes events `1..=n` to the journal of `k`, 100 per commit, with a head and a snapshot
    /// beside them, as an event-sourced actor does.
    fn journal(s: &dyn Store, k: &ActorKey, n: u64) -> u64 {
        let e = epoch(s, k);
        for first in (1..=n).step_by(100) {
            let mut c = ActorCommit::new(k.clone(), e);
            for seq in first..=(first + 99).min(n) {
                c = c.put(Space::JOURNAL, seq, event(seq));
            }
            c = c.put(Space::SNAPSHOT, 0, first.to_be_bytes().to_vec());
            commit(s, &[c]);
        }
        e
    }

    /// An event journal: a read of [`Space::JOURNAL`] from a number returns every event from
    /// there on, in order, with its bytes, and a load of [`Space::LOADED`] reads the rest of
    /// the record (the journal's snapshot, the maps) but none of the events.
    pub fn a_journal_reads_in_order_from_a_number(s: &dyn Store) {
        let k = key("journal");
        let e = journal(s, &k, 1500);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::JOURNAL_SNAPSHOT, 0, b"state".to_vec())
                .put(Space::MAPS, 9, b"entry".to_vec())],
        );
        let tail = s.read(&k, Some(Space::JOURNAL), 1234..=u64::MAX).unwrap();
        assert_eq!(tail.len(), 1500 - 1233);
        for (row, seq) in tail.iter().zip(1234..) {
            assert_eq!((row.space, row.id), (Space::JOURNAL, seq));
            assert_eq!(row.bytes, event(seq), "event #{seq}");
        }
        let loaded = open(s, &k, &Space::LOADED);
        assert_eq!(
            loaded.space(Space::JOURNAL).count(),
            0,
            "a load read events"
        );
        let spaces: Vec<(Space, u64)> = loaded.rows.iter().map(|r| (r.space, r.id)).collect();
        assert_eq!(
            spaces,
            vec![
                (Space::SNAPSHOT, 0),
                (Space::MAPS, 9),
                (Space::JOURNAL_SNAPSHOT, 0)
            ]
        );
        assert_eq!(
            s.read(&k, Some(Space::JOURNAL), 1501..=u64::MAX).unwrap(),
            vec![]
        );
    }

    /// A compaction (a range delete of the events a snapshot covers, in the snapshot's
    /// commit) removes exactly those: the later events, the snapshot and the marks stay.
    pub fn a_compaction_removes_only_the_events_below_its_number(s: &dyn Store) {
        let k = key("compacted");
        let e = journal(s, &k, 1000);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::JOURNAL, 1001, event(1001))
                .put(Space::JOURNAL_SNAPSHOT, 0, b"at 1001".to_vec())
                .put(Space::SNAPSHOT, 0, b"head".to_vec())
                .raise_floor(77)],
        );
        let mut c = ActorCommit::new(k.clone(), e);
        c.writes.push(RowWrite::Delete {
            space: Space::JOURNAL,
            first: 0,
            last: 900,
        });
        commit(s, &[c]);
        let left: Vec<u64> = s
            .read(&k, Some(Space::JOURNAL), 0..=u64::MAX)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, (901..=1001).collect::<Vec<_>>());
        assert_eq!(
            s.read(&k, Some(Space::JOURNAL_SNAPSHOT), 0..=0).unwrap(),
            vec![row(Space::JOURNAL_SNAPSHOT, 0, b"at 1001")]
        );
        assert_eq!(
            marks_of(s, &k),
            Marks {
                epoch: e,
                floor: 77
            }
        );
    }

    /// A large map: a commit that replaces one entry and removes another changes exactly
    /// those two rows of its 5,000.
    pub fn one_entry_of_a_large_map_is_written_alone(s: &dyn Store) {
        let k = key("map");
        let e = epoch(s, &k);
        let mut c = ActorCommit::new(k.clone(), e);
        for id in 1..=5000u64 {
            c = c.put(Space::MAPS, id, id.to_le_bytes().to_vec());
        }
        commit(s, &[c]);
        commit(
            s,
            &[ActorCommit::new(k.clone(), e)
                .put(Space::MAPS, 777, b"changed".to_vec())
                .remove(Space::MAPS, 778)],
        );
        let rows = s.read(&k, Some(Space::MAPS), 0..=u64::MAX).unwrap();
        assert_eq!(rows.len(), 4999);
        for r in rows {
            let want = if r.id == 777 {
                b"changed".to_vec()
            } else {
                r.id.to_le_bytes().to_vec()
            };
            assert_ne!(r.id, 778, "the removed entry is still there");
            assert_eq!(r.bytes, want, "entry {}", r.id);
        }
    }
}
