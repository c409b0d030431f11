//! [`SqliteStore`]: the SQLite backend of ractor-persist, on
//! [rusqlite](https://docs.rs/rusqlite) with SQLite compiled in (no system library needed).
//!
//! A store is three tables, `{prefix}meta` (the format marker), `{prefix}rows` (every row of
//! every actor, by namespace, key, space and id) and `{prefix}marks` (each key's writer epoch,
//! sequence floor and row counts), in a file of its own or beside an application's tables in
//! the application's file. Each [`persist_core::Store::commit`] is one SQLite transaction in
//! WAL mode with `synchronous=FULL`: durable when it returns. Every row and every marks row
//! carries a CRC-32C over its key and contents, checked whenever it is read, because SQLite
//! keeps no checksums of its own. `docs/sqlite.md` in the repository describes the layout.
#![deny(missing_docs, unreachable_pub, unused_crate_dependencies)]

mod check;
mod codec;
mod create;
mod error;
mod format;
mod options;
mod rows;
mod schema;
mod store;

pub use format::FormatError;
pub use options::{DEFAULT_TABLE_PREFIX, SqliteOptions};
pub use store::SqliteStore;

// Used only by the integration tests; named here so `unused_crate_dependencies` stays quiet.
#[cfg(test)]
use tempfile as _;
