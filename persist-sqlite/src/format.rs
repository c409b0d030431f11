//! How a file is recognised as a store: the format marker, and what else may be in the file.

use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::check;
use crate::error::Failure;
use crate::schema::Schema;

/// The format marker this build writes and reads, in `{prefix}meta` under `format`.
pub(crate) const FORMAT_MARKER: &str = "ractor-persist/sqlite/1";

/// Why a file (or the options) was refused as a [`crate::SqliteStore`]. Nothing was written
/// to the file.
///
/// Returned as the source of [`persist_core::StoreError::Backend`]; find it with
/// `source.downcast_ref::<FormatError>()`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file exists and is empty. SQLite would take it for an empty database, but a store
    /// file is never empty, not even after a crash during its creation (it is built aside and
    /// linked into place), so an empty file is a store that lost its bytes, or not a store at
    /// all, rather than a new store. Remove it to create a store there.
    #[error("the file is empty: not a store, and not made one (remove it to create a store)")]
    EmptyFile,
    /// [`crate::SqliteOptions::existing_only`]: there is no file at the path.
    #[error("no file at this path (existing_only creates none)")]
    NoFile,
    /// [`crate::SqliteOptions::existing_only`]: an SQLite database without the store's
    /// tables (of this prefix), which an ordinary open would add.
    #[error("an SQLite database without the store's tables of prefix `{prefix}`, not a store")]
    NotAStore {
        /// The table prefix looked for.
        prefix: String,
    },
    /// The file is not an SQLite database.
    #[error("not an SQLite database ({detail}), so not a ractor-persist store")]
    NotSqlite {
        /// What was found.
        detail: String,
    },
    /// The table prefix is not one a store may use
    /// ([`crate::SqliteOptions::table_prefix`] says which are).
    #[error(
        "table prefix {prefix:?} is not 1 to 64 ASCII letters, digits and underscores \
         starting with a letter or underscore (and not `sqlite_`)"
    )]
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
    },
    /// The file has tables (or indexes, views, triggers) named like the store's but they are
    /// not a ractor-persist store: no format marker, other columns, or one of the tables
    /// missing. Another program's tables, or a store that lost a table; choose another table
    /// prefix for a new store.
    #[error(
        "objects {objects:?} use the table prefix {prefix:?} but are not a ractor-persist store \
         ({why})"
    )]
    PrefixTaken {
        /// The prefix.
        prefix: String,
        /// The objects found with the store's names, or on its tables.
        objects: Vec<String>,
        /// What differs.
        why: String,
    },
    /// The store's meta table, with a format marker this build does not read: a newer
    /// format, or a damaged marker.
    #[error("store format {found:?} is not {expected:?}, the format this build reads")]
    UnknownFormat {
        /// The marker found, if any (lossy text).
        found: Option<String>,
        /// The marker this build reads.
        expected: &'static str,
    },
    /// SQLite opens the file read-only: the process may not write it, or its header asks for
    /// a newer SQLite to write it (a damaged header, or a newer file format). A store must
    /// write even to load an actor (it takes an epoch), so it refuses at open rather than at
    /// the first spawn.
    #[error(
        "SQLite can only read the file (no write permission, or a header that asks for a newer SQLite to write it)"
    )]
    ReadOnly,
    /// The file's text encoding is not UTF-8 (an application made it with
    /// `PRAGMA encoding = 'UTF-16...'`): SQLite would order keys by their UTF-16 bytes, not
    /// as Rust orders them, and the store's ordering checks would take that for damage.
    #[error("the file's text encoding is {encoding}; the store needs a UTF-8 file")]
    NotUtf8 {
        /// The encoding SQLite reports.
        encoding: String,
    },
    /// SQLite would not put the file in WAL mode (a file system without shared memory, for
    /// example), so commits could not be made durable the way this store promises.
    #[error("the file cannot be put in WAL mode (its journal mode stays {mode:?})")]
    NoWal {
        /// The journal mode SQLite kept.
        mode: String,
    },
}

/// What a readable database holds under the store's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One of our stores, in the format this build reads.
    Ours,
    /// Nothing with our names: a new file, or an application's file the store moves into.
    Empty,
}

/// Recognises the store in `conn`; anything but ours or nothing of ours is a [`FormatError`].
/// Reads only.
pub(crate) fn inspect(conn: &Connection, schema: &Schema, prefix: &str) -> Result<Layout, Failure> {
    let [meta, rows, marks] = &schema.names;
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema \
         WHERE name COLLATE NOCASE IN (?1, ?2, ?3) OR tbl_name COLLATE NOCASE IN (?1, ?2, ?3) \
         ORDER BY name",
    )?;
    let found: Vec<(String, String, String, Option<String>)> = stmt
        .query_map([meta, rows, marks], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    if found.is_empty() {
        return Ok(Layout::Empty);
    }
    let taken = |why: &str| -> Failure {
        FormatError::PrefixTaken {
            prefix: prefix.to_owned(),
            objects: found
                .iter()
                .map(|(kind, name, _, _)| format!("{kind} {name}"))
                .collect(),
            why: why.to_owned(),
        }
        .into()
    };
    let ours = |name: &str, create: &str| {
        found.iter().any(|(kind, n, t, sql)| {
            kind == "table" && n == name && t == name && sql.as_deref() == Some(create)
        })
    };
    if !ours(meta, &schema.creates[0]) {
        return Err(taken("no ractor-persist meta table"));
    }
    let marker: Option<Vec<u8>> = conn
        .query_row(&schema.get_marker, [], |r| r.get(0))
        .optional()?;
    if marker.as_deref() != Some(FORMAT_MARKER.as_bytes()) {
        return Err(FormatError::UnknownFormat {
            found: marker.map(|m| String::from_utf8_lossy(&m).into_owned()),
            expected: FORMAT_MARKER,
        }
        .into());
    }
    if !(ours(rows, &schema.creates[1]) && ours(marks, &schema.creates[2])) {
        return Err(taken(
            "the rows or marks table is missing or defined otherwise",
        ));
    }
    if found.len() != 3 {
        return Err(taken("other objects are defined on the store's tables"));
    }
    Ok(Layout::Ours)
}

/// Creates the tables and the marker, in the caller's transaction: a crash leaves all of it
/// or none (SQLite's schema changes are transactional).
pub(crate) fn initialize(conn: &Connection, schema: &Schema) -> Result<(), Failure> {
    for create in &schema.creates {
        conn.execute(create, [])?;
    }
    conn.execute(&schema.put_marker, [FORMAT_MARKER.as_bytes()])?;
    Ok(())
}

/// Checks an existing file through a read-only connection before anything writes to it: that
/// it is an SQLite database holding our store or nothing of our prefix, that SQLite's
/// `quick_check` finds it sound, and, if it holds our store, that the store is whole.
pub(crate) fn probe(path: &Path, schema: &Schema, prefix: &str) -> Result<Layout, Failure> {
    if std::fs::metadata(path)?.len() == 0 {
        return Err(FormatError::EmptyFile.into());
    }
    let mut header = [0u8; 16];
    match std::fs::File::open(path)?.read_exact(&mut header) {
        Ok(()) if &header == b"SQLite format 3\0" => {}
        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => return Err(e.into()),
        _ => {
            return Err(FormatError::NotSqlite {
                detail: "the file does not start with SQLite's header".to_owned(),
            }
            .into());
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(crate::store::BUSY_TIMEOUT)?;
    if hot_journal(&conn) {
        // An application that crashed mid-write left a rollback journal, which a read-only
        // connection may not roll back. Any read-write open does that, as SQLite would for
        // the application; then look again.
        drop(conn);
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let fix = Connection::open_with_flags(path, rw)?;
        fix.busy_timeout(crate::store::BUSY_TIMEOUT)?;
        fix.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })?;
        fix.close().map_err(|(_, e)| e)?;
        conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(crate::store::BUSY_TIMEOUT)?;
    }
    // One read transaction, so the checks see one state of the file.
    let txn = conn.transaction()?;
    let layout = inspect(&txn, schema, prefix).map_err(not_sqlite)?;
    let encoding: String = txn.query_row("PRAGMA encoding", [], |r| r.get(0))?;
    if encoding != "UTF-8" {
        return Err(FormatError::NotUtf8 { encoding }.into());
    }
    if layout == Layout::Ours {
        // Our tables only: an application's index on a collation it registers on its own
        // connections must not keep the store out of its file.
        for table in &schema.names {
            check::quick_check(&txn, table)?;
        }
    }
    if layout == Layout::Ours {
        check::verify(&txn, schema, |_, _| {})?;
    }
    drop(txn);
    conn.close().map_err(|(_, e)| e)?;
    Ok(layout)
}

/// Whether the first read of `conn` (read-only) meets a hot rollback journal it may not roll
/// back (SQLITE_READONLY_ROLLBACK).
fn hot_journal(conn: &Connection) -> bool {
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Err(rusqlite::Error::SqliteFailure(e, _)) => e.extended_code == 776,
        _ => false,
    }
}

/// SQLite's "not a database" on the first read of a file is a format refusal, not damage.
fn not_sqlite(f: Failure) -> Failure {
    match f {
        Failure::Sqlite(rusqlite::Error::SqliteFailure(e, detail))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            FormatError::NotSqlite {
                detail: detail.unwrap_or_else(|| e.to_string()),
            }
            .into()
        }
        f => f,
    }
}
