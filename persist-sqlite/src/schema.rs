//! The store's three tables and every statement that touches them, written once per store
//! with its table prefix.
//!
//! The prefix is validated ([`crate::SqliteOptions::table_prefix`]) and quoted, so no text from
//! the user reaches SQL unchecked; keys and bytes are always bound as parameters.

/// The tables of one store and the statements on them.
#[derive(Debug)]
pub(crate) struct Schema {
    /// `{p}meta`, `{p}rows`, `{p}marks`.
    pub(crate) names: [String; 3],
    /// The `CREATE TABLE` of each table, as SQLite keeps it in `sqlite_schema.sql`.
    pub(crate) creates: [String; 3],
    pub(crate) get_marker: String,
    pub(crate) put_marker: String,
    pub(crate) get_marks: String,
    pub(crate) put_marks: String,
    pub(crate) delete_marks: String,
    pub(crate) namespace_marks: String,
    pub(crate) all_marks: String,
    pub(crate) space_rows: String,
    pub(crate) key_rows: String,
    pub(crate) all_rows: String,
    pub(crate) any_row: String,
    pub(crate) insert_row: String,
    pub(crate) update_row: String,
    pub(crate) delete_rows: String,
}

/// The columns every marks statement reads, in this order.
const MARKS: &str = "ns, key, epoch, floor, counts, sum";
/// The columns every row statement reads, in this order.
const ROWS: &str = "ns, key, space, id, bytes, sum";

impl Schema {
    /// The schema of the store whose tables start with `prefix` (already validated).
    pub(crate) fn new(prefix: &str) -> Schema {
        let meta = format!("{prefix}meta");
        let rows = format!("{prefix}rows");
        let marks = format!("{prefix}marks");
        let (m, r, k) = (quote(&meta), quote(&rows), quote(&marks));
        Schema {
            creates: [
                format!(
                    "CREATE TABLE {m} (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
                ),
                format!(
                    "CREATE TABLE {r} (ns TEXT NOT NULL, key TEXT NOT NULL, \
                     space INTEGER NOT NULL, id INTEGER NOT NULL, bytes BLOB NOT NULL, \
                     sum INTEGER NOT NULL, PRIMARY KEY (ns, key, space, id)) WITHOUT ROWID"
                ),
                format!(
                    "CREATE TABLE {k} (ns TEXT NOT NULL, key TEXT NOT NULL, \
                     epoch INTEGER NOT NULL, floor INTEGER NOT NULL, counts BLOB NOT NULL, \
                     sum INTEGER NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
                ),
            ],
            get_marker: format!("SELECT value FROM {m} WHERE name = 'format'"),
            put_marker: format!("INSERT INTO {m} (name, value) VALUES ('format', ?1)"),
            get_marks: format!("SELECT {MARKS} FROM {k} WHERE ns = ?1 AND key = ?2"),
            put_marks: format!(
                // An upsert, not INSERT OR REPLACE: a replace deletes the row first, which
                // would fire an application's ON DELETE trigger or foreign-key cascade.
                "INSERT INTO {k} ({MARKS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (ns, key) DO UPDATE SET epoch = excluded.epoch, \
                 floor = excluded.floor, counts = excluded.counts, sum = excluded.sum"
            ),
            delete_marks: format!("DELETE FROM {k} WHERE ns = ?1 AND key = ?2"),
            namespace_marks: format!("SELECT {MARKS} FROM {k} WHERE ns = ?1 ORDER BY key"),
            all_marks: format!("SELECT {MARKS} FROM {k} ORDER BY ns, key"),
            space_rows: format!(
                "SELECT {ROWS} FROM {r} WHERE ns = ?1 AND key = ?2 AND space = ?3 \
                 AND id BETWEEN ?4 AND ?5 ORDER BY id"
            ),
            key_rows: format!(
                "SELECT {ROWS} FROM {r} WHERE ns = ?1 AND key = ?2 AND id BETWEEN ?3 AND ?4 \
                 ORDER BY space, id"
            ),
            all_rows: format!("SELECT {ROWS} FROM {r} ORDER BY ns, key, space, id"),
            any_row: format!("SELECT 1 FROM {r} WHERE ns = ?1 AND key = ?2 LIMIT 1"),
            insert_row: format!(
                "INSERT INTO {r} ({ROWS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"
            ),
            update_row: format!(
                "UPDATE {r} SET bytes = ?5, sum = ?6 \
                 WHERE ns = ?1 AND key = ?2 AND space = ?3 AND id = ?4"
            ),
            delete_rows: format!(
                "DELETE FROM {r} WHERE ns = ?1 AND key = ?2 AND space = ?3 \
                 AND id BETWEEN ?4 AND ?5"
            ),
            names: [meta, rows, marks],
        }
    }

    /// How many statements a store prepares, for the connection's statement cache.
    pub(crate) const STATEMENTS: usize = 14;
}

/// An identifier in double quotes (the prefix is validated, so it holds no quote).
fn quote(name: &str) -> String {
    format!("\"{name}\"")
}
