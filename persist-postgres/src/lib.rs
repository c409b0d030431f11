//! [`PostgresStore`]: the PostgreSQL backend of ractor-persist, on the async
//! [tokio-postgres](https://docs.rs/tokio-postgres) client, on a runtime of its own.
//!
//! Many nodes share one database. A store is three tables, `{prefix}meta` (the format marker
//! and the schema version), `{prefix}marks` (each key's writer epoch and sequence floor) and
//! `{prefix}rows` (every row of every actor), in a schema the user chooses. Each
//! [`persist_core::Store::commit`] is one database transaction that locks the marks row of
//! every actor in the batch (`SELECT ... FOR UPDATE`, in key order) and checks its epoch
//! before it writes anything; a load takes the next epoch with one atomic upsert. So an actor
//! can move between processes or nodes and never have two writers. `docs/scale-out.md` in the
//! repository describes the tables, the fence and the failures.
#![deny(missing_docs, unreachable_pub, unused_crate_dependencies)]

mod error;
mod options;
#[cfg(feature = "test-cluster")]
mod proxy;
mod schema;
mod store;
#[cfg(feature = "test-cluster")]
mod test_cluster;

pub use error::PostgresError;
pub use options::{DEFAULT_SCHEMA, DEFAULT_TABLE_PREFIX, PostgresOptions};
#[cfg(feature = "test-cluster")]
pub use proxy::{Cut, CuttingProxy};
pub use store::{MAX_KEY_BYTES, PostgresStore, SCHEMA_VERSION};
#[cfg(feature = "test-cluster")]
pub use test_cluster::{TestCluster, TestClusterError};

// The crate's own tests need the `test-cluster` feature: it is a dev-dependency on itself.
#[cfg(test)]
use persist_postgres as _;
