//! An actor's rows on redb's tables.
//!
//! The spaces of format 1 keep the tables they always had, so files written before the seam
//! had spaces read unchanged: the snapshot space is the snapshot table (one row, id 0), the
//! operation space the ops table, the quarantine space the quarantine table. Any other space
//! lives in the rows table, keyed by (namespace, key, space, id); it is created on the first
//! write that needs it.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use persist_core::{ActorCommit, ActorKey, Marks, Row, RowWrite, Space, StoreError};
use redb::{
    Key, ReadTransaction, ReadableTable, Table, TableDefinition, TableError, Value,
    WriteTransaction,
};

use crate::error::Failure;
use crate::format::{EPOCHS, FLOORS, OPS, QUARANTINE, ROWS, SNAPSHOTS};

/// A transaction tables can be read from: a write transaction (which creates a missing table)
/// or a read transaction (where a missing table reads as empty).
pub(crate) trait Source {
    /// The table `def`, or `None` if it does not exist.
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<Option<impl ReadableTable<K, V>>, Failure>;
}

impl Source for WriteTransaction {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<Option<impl ReadableTable<K, V>>, Failure> {
        Ok(Some(self.open_table(def)?))
    }
}

impl Source for ReadTransaction {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<Option<impl ReadableTable<K, V>>, Failure> {
        match self.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The rows of `key` in `space` with ids in `ids`, by ascending id.
pub(crate) fn read_space(
    src: &impl Source,
    key: &ActorKey,
    space: Space,
    ids: RangeInclusive<u64>,
) -> Result<Vec<Row>, Failure> {
    let (ns, k) = (key.namespace(), key.key());
    let (lo, hi) = (*ids.start(), *ids.end());
    let row = |id: u64, bytes: &[u8]| Row {
        space,
        id,
        bytes: bytes.to_vec(),
    };
    let mut rows = Vec::new();
    match space {
        Space::SNAPSHOT => {
            if lo == 0
                && let Some(t) = src.table(SNAPSHOTS)?
                && let Some(v) = t.get((ns, k))?
            {
                rows.push(row(0, v.value()));
            }
        }
        Space::OPS | Space::QUARANTINE => {
            let def = if space == Space::OPS { OPS } else { QUARANTINE };
            if let Some(t) = src.table(def)? {
                for entry in t.range((ns, k, lo)..=(ns, k, hi))? {
                    let (id, v) = entry?;
                    rows.push(row(id.value().2, v.value()));
                }
            }
        }
        other => {
            if let Some(t) = src.table(ROWS)? {
                let s = other.id();
                for entry in t.range((ns, k, s, lo)..=(ns, k, s, hi))? {
                    let (id, v) = entry?;
                    rows.push(row(id.value().3, v.value()));
                }
            }
        }
    }
    Ok(rows)
}

/// Every row of `key` with an id in `ids`, by ascending (space, id).
pub(crate) fn read_all(
    src: &impl Source,
    key: &ActorKey,
    ids: RangeInclusive<u64>,
) -> Result<Vec<Row>, Failure> {
    let mut rows = Vec::new();
    for space in [Space::SNAPSHOT, Space::OPS, Space::QUARANTINE] {
        rows.extend(read_space(src, key, space, ids.clone())?);
    }
    if let Some(t) = src.table(ROWS)? {
        let (ns, k) = (key.namespace(), key.key());
        for entry in t.range((ns, k, 0, 0)..=(ns, k, u8::MAX, u64::MAX))? {
            let (id, v) = entry?;
            let (_, _, space, id) = id.value();
            if ids.contains(&id) {
                rows.push(Row {
                    space: Space::new(space),
                    id,
                    bytes: v.value().to_vec(),
                });
            }
        }
    }
    rows.sort_by_key(|r| (r.space, r.id));
    Ok(rows)
}

/// The keys of `namespace` with a row in `space`, in order.
pub(crate) fn keys(
    txn: &ReadTransaction,
    namespace: &str,
    space: Space,
) -> Result<Vec<String>, Failure> {
    let mut keys: Vec<String> = Vec::new();
    let mut push = |ns: &str, key: &str| {
        let fresh = keys.last().is_none_or(|last| last != key);
        if ns == namespace && fresh {
            keys.push(key.to_owned());
        }
        ns == namespace
    };
    match space {
        Space::SNAPSHOT => {
            if let Some(t) = txn.table(SNAPSHOTS)? {
                for entry in t.range((namespace, "")..)? {
                    let (id, _) = entry?;
                    let (ns, key) = id.value();
                    if !push(ns, key) {
                        break;
                    }
                }
            }
        }
        Space::OPS | Space::QUARANTINE => {
            let def = if space == Space::OPS { OPS } else { QUARANTINE };
            if let Some(t) = txn.table(def)? {
                for entry in t.range((namespace, "", 0)..)? {
                    let (id, _) = entry?;
                    let (ns, key, _) = id.value();
                    if !push(ns, key) {
                        break;
                    }
                }
            }
        }
        other => {
            if let Some(t) = txn.table(ROWS)? {
                for entry in t.range((namespace, "", 0, 0)..)? {
                    let (id, _) = entry?;
                    let (ns, key, s, _) = id.value();
                    if s != other.id() && ns == namespace {
                        continue;
                    }
                    if !push(ns, key) {
                        break;
                    }
                }
            }
        }
    }
    Ok(keys)
}

/// Every key with a row or a mark, with its marks.
pub(crate) fn scan(txn: &ReadTransaction) -> Result<Vec<(ActorKey, Marks)>, Failure> {
    let mut all: BTreeMap<(String, String), Marks> = BTreeMap::new();
    fn touch<'a>(
        all: &'a mut BTreeMap<(String, String), Marks>,
        ns: &str,
        key: &str,
    ) -> &'a mut Marks {
        all.entry((ns.to_owned(), key.to_owned())).or_default()
    }
    if let Some(t) = txn.table(EPOCHS)? {
        for entry in t.iter()? {
            let (id, v) = entry?;
            let (ns, key) = id.value();
            touch(&mut all, ns, key).epoch = v.value();
        }
    }
    if let Some(t) = txn.table(FLOORS)? {
        for entry in t.iter()? {
            let (id, v) = entry?;
            let (ns, key) = id.value();
            touch(&mut all, ns, key).floor = v.value();
        }
    }
    if let Some(t) = txn.table(SNAPSHOTS)? {
        for entry in t.iter()? {
            let (id, _) = entry?;
            let (ns, key) = id.value();
            touch(&mut all, ns, key);
        }
    }
    for def in [OPS, QUARANTINE] {
        if let Some(t) = txn.table(def)? {
            for entry in t.iter()? {
                let (id, _) = entry?;
                let (ns, key, _) = id.value();
                touch(&mut all, ns, key);
            }
        }
    }
    if let Some(t) = txn.table(ROWS)? {
        for entry in t.iter()? {
            let (id, _) = entry?;
            let (ns, key, _, _) = id.value();
            touch(&mut all, ns, key);
        }
    }
    Ok(all
        .into_iter()
        .map(|((ns, key), marks)| (ActorKey::new(ns, key), marks))
        .collect())
}

/// A table keyed by (namespace, key, id).
type IdTable<'t> = Table<'t, (&'static str, &'static str, u64), &'static [u8]>;
/// The rows table, keyed by (namespace, key, space, id).
type RowTable<'t> = Table<'t, (&'static str, &'static str, u8, u64), &'static [u8]>;

/// The tables a batch writes, opened on first use.
pub(crate) struct Writer<'t> {
    txn: &'t WriteTransaction,
    snapshots: Option<Table<'t, (&'static str, &'static str), &'static [u8]>>,
    ops: Option<IdTable<'t>>,
    quarantine: Option<IdTable<'t>>,
    rows: Option<RowTable<'t>>,
    epochs: Option<Table<'t, (&'static str, &'static str), u64>>,
    floors: Option<Table<'t, (&'static str, &'static str), u64>>,
}

/// Opens `def` into `slot` the first time it is needed.
fn open<'s, 't, K: Key + 'static, V: Value + 'static>(
    txn: &'t WriteTransaction,
    slot: &'s mut Option<Table<'t, K, V>>,
    def: TableDefinition<'static, K, V>,
) -> Result<&'s mut Table<'t, K, V>, Failure> {
    if slot.is_none() {
        *slot = Some(txn.open_table(def)?);
    }
    Ok(slot.as_mut().expect("just opened"))
}

impl<'t> Writer<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction) -> Self {
        Writer {
            txn,
            snapshots: None,
            ops: None,
            quarantine: None,
            rows: None,
            epochs: None,
            floors: None,
        }
    }

    /// The stored epoch of `key` (0: never opened).
    pub(crate) fn epoch(&mut self, key: &ActorKey) -> Result<u64, Failure> {
        let t = open(self.txn, &mut self.epochs, EPOCHS)?;
        Ok(t.get((key.namespace(), key.key()))?
            .map_or(0, |e| e.value()))
    }

    /// Stores `epoch` as the epoch of `key`.
    pub(crate) fn set_epoch(&mut self, key: &ActorKey, epoch: u64) -> Result<(), Failure> {
        let t = open(self.txn, &mut self.epochs, EPOCHS)?;
        t.insert((key.namespace(), key.key()), epoch)?;
        Ok(())
    }

    /// The stored floor of `key` (0: none).
    pub(crate) fn floor(&mut self, key: &ActorKey) -> Result<u64, Failure> {
        let t = open(self.txn, &mut self.floors, FLOORS)?;
        Ok(t.get((key.namespace(), key.key()))?
            .map_or(0, |e| e.value()))
    }

    /// Applies one commit (its epoch already checked).
    pub(crate) fn apply(&mut self, store: &str, commit: &ActorCommit) -> Result<(), Failure> {
        let (ns, k) = (commit.key.namespace(), commit.key.key());
        for w in &commit.writes {
            match w {
                RowWrite::Put {
                    space: Space::SNAPSHOT,
                    id,
                    bytes,
                } => {
                    if *id != 0 {
                        return Err(StoreError::Unsupported {
                            store: store.to_owned(),
                            operation: "a snapshot row with an id other than 0",
                        }
                        .into());
                    }
                    open(self.txn, &mut self.snapshots, SNAPSHOTS)?
                        .insert((ns, k), bytes.as_slice())?;
                }
                RowWrite::Delete {
                    space: Space::SNAPSHOT,
                    first,
                    ..
                } => {
                    if *first == 0 {
                        open(self.txn, &mut self.snapshots, SNAPSHOTS)?.remove((ns, k))?;
                    }
                }
                RowWrite::Put { space, id, bytes } if *space == Space::OPS => {
                    open(self.txn, &mut self.ops, OPS)?.insert((ns, k, *id), bytes.as_slice())?;
                }
                RowWrite::Put { space, id, bytes } if *space == Space::QUARANTINE => {
                    open(self.txn, &mut self.quarantine, QUARANTINE)?
                        .insert((ns, k, *id), bytes.as_slice())?;
                }
                RowWrite::Put { space, id, bytes } => {
                    open(self.txn, &mut self.rows, ROWS)?
                        .insert((ns, k, space.id(), *id), bytes.as_slice())?;
                }
                RowWrite::Delete { space, first, last } if *space == Space::OPS => {
                    let t = open(self.txn, &mut self.ops, OPS)?;
                    if first == last {
                        t.remove((ns, k, *first))?;
                    } else {
                        t.retain_in((ns, k, *first)..=(ns, k, *last), |_, _| false)?;
                    }
                }
                RowWrite::Delete { space, first, last } if *space == Space::QUARANTINE => {
                    open(self.txn, &mut self.quarantine, QUARANTINE)?
                        .retain_in((ns, k, *first)..=(ns, k, *last), |_, _| false)?;
                }
                RowWrite::Delete { space, first, last } => {
                    let s = space.id();
                    open(self.txn, &mut self.rows, ROWS)?
                        .retain_in((ns, k, s, *first)..=(ns, k, s, *last), |_, _| false)?;
                }
            }
        }
        if commit.raise.epoch > 0 {
            let current = self.epoch(&commit.key)?;
            if commit.raise.epoch > current {
                self.set_epoch(&commit.key, commit.raise.epoch)?;
            }
        }
        if commit.raise.floor > 0 {
            let current = self.floor(&commit.key)?;
            if commit.raise.floor > current {
                open(self.txn, &mut self.floors, FLOORS)?.insert((ns, k), commit.raise.floor)?;
            }
        }
        Ok(())
    }
}
