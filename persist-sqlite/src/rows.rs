//! An actor's rows and marks in the tables, each checked against its checksum when read.
//!
//! Besides the writer epoch and the floor, a key's marks row counts the rows the key holds in
//! each space. A read of a whole space compares what it found with that count, so a row that
//! disappears (its key damaged, or a damaged page that leads the search astray) is an error,
//! never an actor that silently starts without it: without the count, a lost snapshot would
//! look like an actor that was never committed, and `init` would build a fresh state.

use std::ops::RangeInclusive;

use persist_core::{ActorKey, Marks, Row, Space};
use rusqlite::{Connection, OptionalExtension, params};

use crate::codec::{self, Counts, from_sql, to_sql};
use crate::error::Failure;
use crate::schema::Schema;

/// A key's marks row: its marks, and how many rows it holds in each space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MarksRow {
    pub(crate) epoch: u64,
    pub(crate) floor: u64,
    pub(crate) counts: Counts,
}

impl MarksRow {
    pub(crate) fn marks(&self) -> Marks {
        Marks {
            epoch: self.epoch,
            floor: self.floor,
        }
    }

    /// The rows of `space` the key holds.
    pub(crate) fn count(&self, space: Space) -> u64 {
        self.counts.get(&space.id()).copied().unwrap_or(0)
    }
}

/// A marks row as stored, checked: its key and its contents.
pub(crate) fn read_marks(r: &rusqlite::Row<'_>) -> Result<(ActorKey, MarksRow), Failure> {
    let ns: String = r.get(0)?;
    let key: String = r.get(1)?;
    let epoch = from_sql(r.get(2)?);
    let floor = from_sql(r.get(3)?);
    let counts: Vec<u8> = r.get(4)?;
    let sum: i64 = r.get(5)?;
    if codec::marks_sum(&ns, &key, epoch, floor, &counts) != sum {
        return Err(Failure::Corrupt(format!(
            "the marks stored under {:?} fail their checksum",
            ActorKey::new(ns, key).to_string()
        )));
    }
    let key = ActorKey::new(ns, key);
    let counts = codec::decode_counts(&counts)
        .ok_or_else(|| Failure::Corrupt(format!("the row counts of `{key}` are malformed")))?;
    Ok((
        key,
        MarksRow {
            epoch,
            floor,
            counts,
        },
    ))
}

/// A row as stored, checked: its key and the row.
pub(crate) fn read_row(r: &rusqlite::Row<'_>) -> Result<(ActorKey, Row), Failure> {
    let ns: String = r.get(0)?;
    let key: String = r.get(1)?;
    let space: i64 = r.get(2)?;
    let id = from_sql(r.get(3)?);
    let bytes: Vec<u8> = r.get(4)?;
    let sum: i64 = r.get(5)?;
    let key = ActorKey::new(ns, key);
    let bad = |what: &str| {
        Failure::Corrupt(format!(
            "a row stored under {:?} (space {space}, id {id}) {what}",
            key.to_string()
        ))
    };
    let space = u8::try_from(space).map_err(|_| bad("has no valid space"))?;
    if codec::row_sum(key.namespace(), key.key(), space, id, &bytes) != sum {
        return Err(bad("fails its checksum"));
    }
    let row = Row {
        space: Space::new(space),
        id,
        bytes,
    };
    Ok((key, row))
}

/// The marks row of `key`, if it has one.
pub(crate) fn marks(
    conn: &Connection,
    schema: &Schema,
    key: &ActorKey,
) -> Result<Option<MarksRow>, Failure> {
    let mut stmt = conn.prepare_cached(&schema.get_marks)?;
    let mut rows = stmt.query(params![key.namespace(), key.key()])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let (stored, marks) = read_marks(r)?;
    if &stored != key {
        return Err(misplaced(key, &stored));
    }
    Ok(Some(marks))
}

/// Stores `marks` as the marks row of `key`; a row of nothing but zeros is removed instead,
/// so a key is listed only once it holds something.
pub(crate) fn put_marks(
    conn: &Connection,
    schema: &Schema,
    key: &ActorKey,
    marks: &MarksRow,
) -> Result<(), Failure> {
    let (ns, k) = (key.namespace(), key.key());
    if *marks == MarksRow::default() {
        conn.prepare_cached(&schema.delete_marks)?
            .execute(params![ns, k])?;
        return Ok(());
    }
    let counts = codec::encode_counts(&marks.counts);
    let sum = codec::marks_sum(ns, k, marks.epoch, marks.floor, &counts);
    conn.prepare_cached(&schema.put_marks)?.execute(params![
        ns,
        k,
        to_sql(marks.epoch),
        to_sql(marks.floor),
        counts,
        sum
    ])?;
    Ok(())
}

/// The rows of `key` with ids in `ids`, of `space` or of every space, by ascending (space,
/// id), each checked.
pub(crate) fn rows(
    conn: &Connection,
    schema: &Schema,
    key: &ActorKey,
    space: Option<Space>,
    ids: &RangeInclusive<u64>,
) -> Result<Vec<Row>, Failure> {
    let (ns, k) = (key.namespace(), key.key());
    let (lo, hi) = (to_sql(*ids.start()), to_sql(*ids.end()));
    let mut stmt;
    let mut found = match space {
        Some(space) => {
            stmt = conn.prepare_cached(&schema.space_rows)?;
            stmt.query(params![ns, k, space.id(), lo, hi])?
        }
        None => {
            stmt = conn.prepare_cached(&schema.key_rows)?;
            stmt.query(params![ns, k, lo, hi])?
        }
    };
    let mut rows = Vec::new();
    while let Some(r) = found.next()? {
        let (stored, row) = read_row(r)?;
        if &stored != key {
            return Err(misplaced(key, &stored));
        }
        if !(space.is_none_or(|s| s == row.space) && ids.contains(&row.id)) {
            return Err(Failure::Corrupt(format!(
                "a search of `{key}` found row {} of {}, which it did not ask for: the table \
                 is out of order",
                row.id, row.space
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Checks that `rows`, every row of `key` in `spaces`, are as many as its marks row counts.
pub(crate) fn check_counts(
    key: &ActorKey,
    marks: Option<&MarksRow>,
    spaces: &[Space],
    rows: &[Row],
) -> Result<(), Failure> {
    for space in spaces {
        let found = rows.iter().filter(|r| r.space == *space).count() as u64;
        let counted = marks.map_or(0, |m| m.count(*space));
        if found != counted {
            return Err(Failure::Corrupt(format!(
                "`{key}` holds {found} row(s) in {space} but its marks count {counted}: rows \
                 were lost or misplaced"
            )));
        }
    }
    Ok(())
}

/// Whether `key` has any row at all.
pub(crate) fn any_row(conn: &Connection, schema: &Schema, key: &ActorKey) -> Result<bool, Failure> {
    Ok(conn
        .prepare_cached(&schema.any_row)?
        .query_row(params![key.namespace(), key.key()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Puts a row; returns whether it is new (`false`: it replaced one).
pub(crate) fn put_row(
    conn: &Connection,
    schema: &Schema,
    key: &ActorKey,
    space: Space,
    id: u64,
    bytes: &[u8],
) -> Result<bool, Failure> {
    let (ns, k) = (key.namespace(), key.key());
    let sum = codec::row_sum(ns, k, space.id(), id, bytes);
    let args = params![ns, k, space.id(), to_sql(id), bytes, sum];
    if conn.prepare_cached(&schema.insert_row)?.execute(args)? == 1 {
        return Ok(true);
    }
    conn.prepare_cached(&schema.update_row)?.execute(args)?;
    Ok(false)
}

/// Removes the rows of `space` with ids in `first..=last`; returns how many there were.
pub(crate) fn delete_rows(
    conn: &Connection,
    schema: &Schema,
    key: &ActorKey,
    space: Space,
    first: u64,
    last: u64,
) -> Result<u64, Failure> {
    let n = conn.prepare_cached(&schema.delete_rows)?.execute(params![
        key.namespace(),
        key.key(),
        space.id(),
        to_sql(first),
        to_sql(last)
    ])?;
    Ok(n as u64)
}

/// A search for `wanted` that returned what is stored under another key: the tables are out
/// of order.
fn misplaced(wanted: &ActorKey, stored: &ActorKey) -> Failure {
    Failure::Corrupt(format!(
        "a search for `{wanted}` found a record stored under {:?}: the table is out of order",
        stored.to_string()
    ))
}
