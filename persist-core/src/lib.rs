//! The core of ractor-persist: the model ([`PersistentActor`]), the runtime (the message
//! cycle on ractor), the [`Store`] seam, the record envelope, the group committer
//! ([`Storage`]) and the in-memory store ([`MemoryStore`]).
//!
//! Most users depend on the facade crate `ractor-persist`, which re-exports all of this.
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod atomic_file;
mod delivery;
mod entities;
mod envelope;
mod error;
mod journal;
mod key;
mod map;
mod memory;
mod model;
mod observe;
mod runtime;
mod seen;
mod shape;
mod spawn;
mod storage;
mod store;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;
mod timer;
pub mod transfer;
mod transform;
mod tx;

pub use delivery::{
    Courier, DEFAULT_REQUEST_RETENTION, FirstRequest, Inbound, Letter, Once, Postbox, Redelivery,
    Refusal, RequestRefused, Settled, Settlement,
};
pub use entities::{Activate, Entities, EntitiesBuilder, EntityError};
pub use error::{
    BoxError, CommitError, DecodeError, DecodeReason, Error, EventError, LoadError, MapError,
    NotDeadLetter, OverCapacity, RecordRef, RequeueError, ResumeError, RetryPolicyError, SendError,
    StoreError,
};
pub use journal::{DEFAULT_SNAPSHOT_EVERY, EventSourced, JournalEntry, JournalError, Retention};
pub use key::ActorKey;
pub use map::{DurableMap, MAX_MAP_NAME};
pub use memory::MemoryStore;
pub use model::{
    Control, OpId, Outcome, Pending, Persistent, PersistentActor, ResumeFilter, RetryPolicy, Stored,
};
pub use runtime::{DEFAULT_MAX_PENDING, Runtime, Start};
pub use seen::{Delivery, Seen};
pub use shape::{assert_shape, shape_fingerprint};
pub use spawn::SpawnPersistent;
pub use storage::{CommitStats, Quarantined, Storage, StorageConfig};
pub use store::{
    ActorCommit, Fence, Loaded, MAX_ROW_LEN, Marks, Row, RowWrite, Space, Store, check_epochs,
    next_epoch,
};
pub use timer::{Fired, MAX_SLEEP, TimerError};
pub use transfer::{ImportMode, TransferError, TransferStats, export, import};
pub use transform::{KEY_LEN, KeyError, Keyring, Transforms};
pub use tx::Tx;

/// What the derive's output names. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::__impl_actor as impl_actor;
    pub use crate::error::DecodeReason;
    pub use crate::journal::{AnyEvent, EventSourced, JournalHooks};

    pub use crate::model::Stored;

    /// The error of a generated migration for a version it does not know.
    pub fn no_migration(what: &'static str, found: u32, expected: u32) -> DecodeReason {
        DecodeReason::NoMigration {
            what,
            found,
            expected,
        }
    }
    pub use crate::model::{Persistent, PersistentActor};
    pub use crate::runtime::{
        Runtime, Start, handle, handle_supervisor_evt, post_start, post_stop, pre_start,
    };
    #[cfg(feature = "async-trait")]
    pub use async_trait::async_trait;
    pub use ractor;
}

/// Emits the ractor `Actor` impl of a persistent actor, in the form the ractor in this build
/// expects: native `async fn`, or `#[async_trait]` when persist-core's `async-trait` feature
/// (which turns on ractor's) is on. The choice is persist-core's, not the user's crate's.
#[doc(hidden)]
#[cfg(not(feature = "async-trait"))]
#[macro_export]
macro_rules! __impl_actor {
    ($ty:ty) => {
        $crate::__impl_actor_as!($ty);
    };
}

/// Emits the ractor `Actor` impl of a persistent actor (async-trait form).
#[doc(hidden)]
#[cfg(feature = "async-trait")]
#[macro_export]
macro_rules! __impl_actor {
    ($ty:ty) => {
        $crate::__impl_actor_as!($ty, #[$crate::__private::async_trait]);
    };
}

/// The ractor `Actor` impl itself, with the attribute that selects its form.
///
/// The runtime's futures are boxed: the actor's task is sized for its largest future, and an
/// idle actor should not carry the message cycle's (about 1 KiB per actor).
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_actor_as {
    ($ty:ty $(, #[$attr:meta])?) => {
        #[automatically_derived]
        $(#[$attr])?
        impl $crate::__private::ractor::Actor for $ty {
            type Msg = <$ty as $crate::__private::PersistentActor>::Msg;
            type State = $crate::__private::Runtime<$ty>;
            type Arguments = $crate::__private::Start<$ty>;

            async fn pre_start(
                &self,
                myself: $crate::__private::ractor::ActorRef<Self::Msg>,
                args: Self::Arguments,
            ) -> ::core::result::Result<Self::State, $crate::__private::ractor::ActorProcessingErr>
            {
                ::std::boxed::Box::pin($crate::__private::pre_start(self, myself, args)).await
            }

            async fn post_start(
                &self,
                myself: $crate::__private::ractor::ActorRef<Self::Msg>,
                state: &mut Self::State,
            ) -> ::core::result::Result<(), $crate::__private::ractor::ActorProcessingErr> {
                ::std::boxed::Box::pin($crate::__private::post_start(self, myself, state)).await
            }

            async fn handle(
                &self,
                myself: $crate::__private::ractor::ActorRef<Self::Msg>,
                message: Self::Msg,
                state: &mut Self::State,
            ) -> ::core::result::Result<(), $crate::__private::ractor::ActorProcessingErr> {
                ::std::boxed::Box::pin($crate::__private::handle(self, myself, message, state))
                    .await
            }

            async fn handle_supervisor_evt(
                &self,
                myself: $crate::__private::ractor::ActorRef<Self::Msg>,
                event: $crate::__private::ractor::SupervisionEvent,
                state: &mut Self::State,
            ) -> ::core::result::Result<(), $crate::__private::ractor::ActorProcessingErr> {
                ::std::boxed::Box::pin($crate::__private::handle_supervisor_evt(
                    self, myself, event, state,
                ))
                .await
            }

            async fn post_stop(
                &self,
                myself: $crate::__private::ractor::ActorRef<Self::Msg>,
                state: &mut Self::State,
            ) -> ::core::result::Result<(), $crate::__private::ractor::ActorProcessingErr> {
                ::std::boxed::Box::pin($crate::__private::post_stop(self, myself, state)).await
            }
        }
    };
}
