//! [`RedbStore`]: the embedded, default storage backend of ractor-persist, on
//! [redb](https://docs.rs/redb).
//!
//! One file holds every actor of a store: a snapshot table, a pending-operation table keyed by
//! actor and sequence number, a writer-epoch table for fencing, a sequence-floor table (so
//! operation ids never repeat after a delete or quarantine), and a `meta` table whose format
//! marker keeps us from ever mistaking another program's file for an empty store. Each
//! [`persist_core::Store::commit`] is one redb write transaction with one fsync.
#![deny(missing_docs, unreachable_pub, unused_crate_dependencies)]

mod create;
mod error;
mod format;
mod rows;
mod store;

pub use format::FormatError;
/// The redb this crate is built on: a backend given to [`RedbStore::with_backend`] implements
/// this version's [`redb::StorageBackend`].
pub use redb;
pub use store::RedbStore;

// Used only by the integration tests; named here so `unused_crate_dependencies` stays quiet.
#[cfg(test)]
use tempfile as _;
