//! The checks every open makes before a store is used, and that `scan` repeats.
//!
//! SQLite keeps no checksums of its pages. `PRAGMA quick_check` finds damage to the file's
//! structure (pages, cells, record headers, the free list, pages used twice or never); our
//! checksums find damage to what the records say (a key, an id, the bytes, the marks); and the
//! row counts find rows that went missing. Together they read the whole file once.

use persist_core::{ActorKey, Space};
use rusqlite::Connection;

use crate::codec::Counts;
use crate::error::Failure;
use crate::rows::{MarksRow, read_marks, read_row};
use crate::schema::Schema;

/// SQLite's `quick_check` of `table` (one of ours): [`Failure::Corrupt`] listing what it
/// found.
///
/// `quick_check` rather than `integrity_check`: the latter adds, for every table, a lookup in
/// each of its indexes per row. Our tables have no index besides their primary key, so for
/// them it would add only a check of the keys' order, which [`verify`] covers (it checks the
/// order itself, and a key changed by damage fails its checksum); for an application's tables
/// sharing the file it would make every open cost a lookup per row and index.
pub(crate) fn quick_check(conn: &Connection, table: &str) -> Result<(), Failure> {
    // Table names are checked prefixes plus our suffixes: safe to put in the text.
    let mut stmt = conn.prepare(&format!("PRAGMA quick_check(\"{table}\")"))?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    Err(Failure::Corrupt(format!(
        "SQLite's quick_check failed: {}",
        found.join("; ")
    )))
}

/// Reads every marks row and every row, in key order, checking each one's checksum, the order,
/// and that each key holds exactly the rows its marks count; calls `each` with every key's
/// marks, in order.
pub(crate) fn verify(
    conn: &Connection,
    schema: &Schema,
    mut each: impl FnMut(ActorKey, &MarksRow),
) -> Result<(), Failure> {
    let mut marks_stmt = conn.prepare_cached(&schema.all_marks)?;
    let mut rows_stmt = conn.prepare_cached(&schema.all_rows)?;
    let mut marks = marks_stmt.query([])?;
    let mut rows = rows_stmt.query([])?;
    let mut next_row = || -> Result<Option<(ActorKey, Space, u64)>, Failure> {
        Ok(match rows.next()? {
            Some(r) => {
                let (key, row) = read_row(r)?;
                Some((key, row.space, row.id))
            }
            None => None,
        })
    };
    let mut row = next_row()?;
    let mut last_row: Option<(ActorKey, Space, u64)> = None;
    let mut last_key: Option<ActorKey> = None;
    while let Some(r) = marks.next()? {
        let (key, m) = read_marks(r)?;
        if last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err(out_of_order("marks", &key));
        }
        let mut found = Counts::new();
        while let Some(current) = row.take() {
            if current.0 > key {
                row = Some(current);
                break;
            }
            if current.0 < key {
                return Err(without_marks(&current.0));
            }
            if last_row.as_ref().is_some_and(|last| *last >= current) {
                return Err(out_of_order("rows", &current.0));
            }
            *found.entry(current.1.id()).or_default() += 1;
            last_row = Some(current);
            row = next_row()?;
        }
        if found != m.counts {
            return Err(Failure::Corrupt(format!(
                "`{key}` holds rows {found:?} (by space) but its marks count {:?}: rows were \
                 lost or misplaced",
                m.counts
            )));
        }
        each(key.clone(), &m);
        last_key = Some(key);
    }
    match row {
        Some((key, _, _)) => Err(without_marks(&key)),
        None => Ok(()),
    }
}

fn out_of_order(table: &str, key: &ActorKey) -> Failure {
    Failure::Corrupt(format!(
        "the {table} table is out of order at {:?}",
        key.to_string()
    ))
}

fn without_marks(key: &ActorKey) -> Failure {
    Failure::Corrupt(format!(
        "rows are stored under {:?}, which has no marks row: a key was damaged or its marks \
         were lost",
        key.to_string()
    ))
}
