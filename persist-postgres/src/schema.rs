//! The store's three tables and every statement on them, written once per store with its
//! schema and table prefix (both validated, then quoted: no text from the user reaches SQL
//! unchecked; keys and bytes are always bound as parameters).
//!
//! Keys are `bytea` (UTF-8 may hold NUL, which `text` refuses; `bytea` orders as bytes, as
//! Rust's strings do). Ids, epochs and floors are `u64`, stored as `bigint` with the top bit
//! flipped ([`enc`]) so that the server orders them as unsigned numbers.

/// The version of the tables this build writes; a store refuses a newer one.
pub(crate) const VERSION: u32 = 1;
/// The format marker in the meta table.
pub(crate) const MARKER: &str = "ractor-persist";

/// A `u64` as the `bigint` stored for it: order-preserving.
pub(crate) fn enc(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// The `u64` a stored `bigint` stands for.
pub(crate) fn dec(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// The tables of one store and the statements on them.
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) schema: String,
    /// `{p}meta`, `{p}marks`, `{p}rows` (unquoted).
    pub(crate) tables: [String; 3],
    /// Each table's columns and their types, as `information_schema.columns` names them.
    pub(crate) columns: [&'static [(&'static str, &'static str)]; 3],
    pub(crate) create: String,
    pub(crate) get_meta: String,
    pub(crate) lock_marks: String,
    pub(crate) create_marks: String,
    pub(crate) open: String,
    pub(crate) load_rows: String,
    pub(crate) delete_rows: String,
    pub(crate) put_rows: String,
    pub(crate) raise_marks: String,
    pub(crate) space_rows: String,
    pub(crate) key_rows: String,
    pub(crate) keys: String,
    pub(crate) scan: String,
}

const META_COLUMNS: &[(&str, &str)] = &[("name", "text"), ("value", "text")];
const MARKS_COLUMNS: &[(&str, &str)] = &[
    ("ns", "bytea"),
    ("key", "bytea"),
    ("epoch", "bigint"),
    ("floor", "bigint"),
];
const ROWS_COLUMNS: &[(&str, &str)] = &[
    ("ns", "bytea"),
    ("key", "bytea"),
    ("space", "smallint"),
    ("id", "bigint"),
    ("bytes", "bytea"),
];

impl Schema {
    /// The tables of the store in `schema` whose names start with `prefix` (both validated).
    pub(crate) fn new(schema: &str, prefix: &str) -> Schema {
        let names = [
            format!("{prefix}meta"),
            format!("{prefix}marks"),
            format!("{prefix}rows"),
        ];
        let q = |t: &str| format!("\"{schema}\".\"{t}\"");
        let (m, k, r) = (q(&names[0]), q(&names[1]), q(&names[2]));
        Schema {
            create: format!(
                "CREATE TABLE {m} (name text PRIMARY KEY, value text NOT NULL);
                 CREATE TABLE {k} (ns bytea NOT NULL, key bytea NOT NULL, epoch bigint NOT NULL,
                     floor bigint NOT NULL, PRIMARY KEY (ns, key));
                 CREATE TABLE {r} (ns bytea NOT NULL, key bytea NOT NULL, space smallint NOT NULL,
                     id bigint NOT NULL, bytes bytea NOT NULL, PRIMARY KEY (ns, key, space, id));
                 INSERT INTO {m} (name, value) VALUES ('format', '{MARKER}'),
                     ('schema_version', '{VERSION}');"
            ),
            get_meta: format!("SELECT name, value FROM {m} ORDER BY name"),
            // In key order, so that two batches lock their keys in the same order and never
            // deadlock; the lock holds until the transaction ends, so a load on another node
            // (which updates the row) waits for this commit, or this commit sees its epoch.
            // In key order, so that two batches lock their keys in the same order and never
            // deadlock; the lock holds until the transaction ends, so a load on another node
            // (which updates the row) waits for this commit, or this commit sees its epoch.
            lock_marks: format!(
                "SELECT ns, key, epoch FROM {k} WHERE (ns, key) IN \
                 (SELECT * FROM unnest($1::bytea[], $2::bytea[])) ORDER BY ns, key FOR UPDATE"
            ),
            // A key of the batch without a marks row gets one (epoch 0), to be locked too:
            // else a commit at epoch 0 would pass while another node's first load of the key
            // is in flight. (An insert waits for a concurrent one of the same key.)
            create_marks: format!(
                "INSERT INTO {k} (ns, key, epoch, floor) \
                 SELECT n, k, $3, $3 FROM unnest($1::bytea[], $2::bytea[]) AS u (n, k) \
                 ORDER BY n, k ON CONFLICT (ns, key) DO NOTHING"
            ),
            // One atomic statement: a new key starts at epoch 1, a known one takes the next.
            open: format!(
                "INSERT INTO {k} (ns, key, epoch, floor) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (ns, key) DO UPDATE SET epoch = {k}.epoch + 1 RETURNING epoch, floor"
            ),
            load_rows: format!(
                "SELECT space, id, bytes FROM {r} WHERE ns = $1 AND key = $2 \
                 AND space = ANY($3::smallint[]) ORDER BY space, id"
            ),
            delete_rows: format!(
                "DELETE FROM {r} AS r USING unnest($1::bytea[], $2::bytea[], $3::smallint[], \
                 $4::bigint[], $5::bigint[]) AS d (ns, key, space, lo, hi) \
                 WHERE r.ns = d.ns AND r.key = d.key AND r.space = d.space \
                 AND r.id BETWEEN d.lo AND d.hi"
            ),
            put_rows: format!(
                "INSERT INTO {r} (ns, key, space, id, bytes) SELECT * FROM unnest($1::bytea[], \
                 $2::bytea[], $3::smallint[], $4::bigint[], $5::bytea[]) \
                 ON CONFLICT (ns, key, space, id) DO UPDATE SET bytes = EXCLUDED.bytes"
            ),
            raise_marks: format!(
                "INSERT INTO {k} (ns, key, epoch, floor) SELECT * FROM unnest($1::bytea[], \
                 $2::bytea[], $3::bigint[], $4::bigint[]) ON CONFLICT (ns, key) DO UPDATE SET \
                 epoch = GREATEST({k}.epoch, EXCLUDED.epoch), \
                 floor = GREATEST({k}.floor, EXCLUDED.floor)"
            ),
            space_rows: format!(
                "SELECT space, id, bytes FROM {r} WHERE ns = $1 AND key = $2 AND space = $3 \
                 AND id BETWEEN $4 AND $5 ORDER BY id"
            ),
            key_rows: format!(
                "SELECT space, id, bytes FROM {r} WHERE ns = $1 AND key = $2 \
                 AND id BETWEEN $3 AND $4 ORDER BY space, id"
            ),
            keys: format!("SELECT DISTINCT key FROM {r} WHERE ns = $1 AND space = $2 ORDER BY key"),
            scan: format!(
                "SELECT a.ns, a.key, m.epoch, m.floor, m.key IS NOT NULL FROM \
                 (SELECT ns, key FROM {r} UNION SELECT ns, key FROM {k}) AS a \
                 LEFT JOIN {k} AS m ON m.ns = a.ns AND m.key = a.key ORDER BY a.ns, a.key"
            ),
            schema: schema.to_owned(),
            tables: names,
            columns: [META_COLUMNS, MARKS_COLUMNS, ROWS_COLUMNS],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_numbers_keep_the_unsigned_order() {
        let vs = [0, 1, 2, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        for w in vs.windows(2) {
            assert!(enc(w[0]) < enc(w[1]), "{} < {}", w[0], w[1]);
        }
        for v in vs {
            assert_eq!(dec(enc(v)), v);
        }
        assert_eq!(enc(0), i64::MIN);
        assert_eq!(enc(u64::MAX), i64::MAX);
    }
}
