//! The core of ractor-persist: the model, the runtime, the store seam, the record envelope,
//! the group committer and the in-memory store.
#![deny(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod key;
mod store;

pub use error::{
    BoxError, CommitError, DecodeError, DecodeReason, Error, LoadError, RecordRef, StoreError,
};
pub use key::ActorKey;
pub use store::{ActorCommit, Fence, Loaded, Store, check_epochs};
