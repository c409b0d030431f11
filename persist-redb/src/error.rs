//! Turning redb's errors, and redb's panics, into [`StoreError`]s that name the store.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use persist_core::StoreError;

use crate::format::FormatError;

/// Why a guarded body failed, before the store's name is attached.
#[derive(Debug)]
pub(crate) enum Failure {
    /// redb refused.
    Redb(redb::Error),
    /// The file is not one of our stores.
    Format(FormatError),
    /// Already a store error (a fence, an exhausted epoch).
    Store(StoreError),
}

impl Failure {
    /// Attaches the store's name; redb's corruption reports become [`StoreError::Corrupt`].
    pub(crate) fn into_store_error(self, store: &str) -> StoreError {
        match self {
            Failure::Redb(redb::Error::Corrupted(detail)) => StoreError::Corrupt {
                store: store.to_owned(),
                detail,
            },
            Failure::Redb(e) => StoreError::backend(store, e),
            Failure::Format(e) => StoreError::backend(store, e),
            Failure::Store(e) => e,
        }
    }
}

macro_rules! failure_from_redb {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::Redb(e.into())
            }
        }
    )*};
}

failure_from_redb!(
    redb::Error,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
);

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Redb(redb::Error::from(e))
    }
}

impl From<FormatError> for Failure {
    fn from(e: FormatError) -> Self {
        Failure::Format(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// Runs `body`, which calls into redb, so that neither an error nor a panic leaves it unnamed.
///
/// redb may panic on a file damaged outside its control; that panic becomes
/// [`StoreError::Corrupt`] instead of unwinding through the caller (P8: bad bytes are an error).
pub(crate) fn guarded<T>(
    store: &str,
    body: impl FnOnce() -> Result<T, Failure>,
) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result.map_err(|f| f.into_store_error(store)),
        Err(payload) => Err(StoreError::Corrupt {
            store: store.to_owned(),
            detail: format!("the storage engine panicked: {}", panic_message(&*payload)),
        }),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}
