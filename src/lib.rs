//! Durable [ractor](https://docs.rs/ractor) actors.
//!
//! Put `#[derive(Persistent)]` on an actor type and write its logic as a [`PersistentActor`]
//! impl. Every handled message that changes the state is committed together with the
//! operations (side effects) it produced, in one storage transaction, before any operation
//! runs and before any reply leaves. After a crash the actor comes back with its last
//! committed state and performs its pending operations again.
//!
//! ```no_run
//! use ractor_persist::prelude::*;
//!
//! #[derive(Default, Persistent)]
//! #[persistent(name = "counter")]
//! struct Counter;
//!
//! enum CounterMsg {
//!     Add(u64, RpcReplyPort<u64>),
//! }
//!
//! impl PersistentActor for Counter {
//!     type Msg = CounterMsg;
//!     type State = u64;
//!     type Op = ();
//!     type Arguments = ();
//!
//!     async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
//!         Ok(0)
//!     }
//!
//!     async fn handle(
//!         &self,
//!         tx: &mut Tx<'_, Self>,
//!         msg: CounterMsg,
//!         count: &mut u64,
//!     ) -> Result<(), ActorProcessingErr> {
//!         let CounterMsg::Add(n, reply) = msg;
//!         *count += n;
//!         tx.reply(reply, *count); // leaves only after the commit
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = Storage::new(RedbStore::open("counter.redb")?);
//! let (counter, _) = Counter::spawn_persistent(&storage, "main", ()).await?;
//! let count = ractor::call!(counter, CounterMsg::Add, 1)?;
//! # let _ = count; Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | what it gives |
//! |---|---|---|
//! | `derive` | yes | `#[derive(Persistent)]` |
//! | `redb` | yes | [`RedbStore`], the embedded store |
//! | `sqlite` | no | `SqliteStore`, the SQLite store (SQLite compiled in), in its own file or beside an application's tables |
//! | `postgres` | no | `PostgresStore`, the PostgreSQL store that many nodes share |
//! | `cluster` | no | `cluster`: persistent actors on several ractor_cluster nodes |
//! | `memory` | no | `MemoryStore`, the in-memory store |
//! | `testkit` | no | the conformance kit: `testkit` and `store_conformance!` for your own `Store` |
//! | `async-trait` | no | needed when ractor's own `async-trait` feature is on in the build |
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use persist_core::{
    Activate, ActorCommit, ActorKey, BoxError, CommitError, CommitStats, Control, Courier,
    DEFAULT_MAX_PENDING, DEFAULT_REQUEST_RETENTION, DEFAULT_SNAPSHOT_EVERY, DecodeError,
    DecodeReason, Delivery, DurableMap, Entities, EntitiesBuilder, EntityError, Error, EventError,
    EventSourced, Fence, Fired, FirstRequest, ImportMode, Inbound, JournalEntry, JournalError,
    KEY_LEN, KeyError, Keyring, Letter, LoadError, Loaded, MAX_MAP_NAME, MAX_ROW_LEN, MAX_SLEEP,
    MapError, Marks, NotDeadLetter, Once, OpId, Outcome, OverCapacity, Pending, Persistent,
    PersistentActor, Postbox, Quarantined, RecordRef, Redelivery, Refusal, RequestRefused,
    RequeueError, ResumeError, Retention, RetryPolicy, RetryPolicyError, Row, RowWrite, Runtime,
    Seen, SendError, Settled, Settlement, Space, SpawnPersistent, Start, Storage, StorageConfig,
    Store, StoreError, Stored, TimerError, TransferError, TransferStats, Transforms, Tx,
    assert_shape, check_epochs, export, import, next_epoch, shape_fingerprint, transfer,
};

/// Inspecting and repairing a store without running its actors (persist-core's admin calls),
/// and, with the `admin` feature, the admin tool's commands to mount in your own binary with
/// your actor types registered (`admin::Admin`).
pub mod admin {
    #[cfg(feature = "admin")]
    #[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
    pub use persist_cli::{Admin, CliError, exit};
    pub use persist_core::admin::*;
}

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use persist_core::MemoryStore;

#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub use persist_core::{store_conformance, testkit};

#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use persist_derive::Persistent;

#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use persist_redb::{FormatError, RedbStore};

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use persist_sqlite::{
    DEFAULT_TABLE_PREFIX, FormatError as SqliteFormatError, SqliteOptions, SqliteStore,
};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use persist_postgres::{PostgresOptions, PostgresStore};

#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub mod cluster;

/// What the derive's output names. Not public API.
#[doc(hidden)]
pub use persist_core::__private;

/// The names a persistent actor's module usually needs.
pub mod prelude {
    #[cfg(feature = "memory")]
    pub use crate::MemoryStore;
    #[cfg(feature = "redb")]
    pub use crate::RedbStore;
    #[cfg(feature = "sqlite")]
    pub use crate::SqliteStore;
    pub use crate::{
        Control, DecodeReason, Delivery, DurableMap, Entities, EventSourced, Fired, Inbound, Once,
        OpId, Outcome, Pending, Persistent, PersistentActor, Retention, Seen, Settled, Settlement,
        SpawnPersistent, Start, Storage, Tx,
    };
    pub use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
}
