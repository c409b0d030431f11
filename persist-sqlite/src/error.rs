//! Turning SQLite's errors, and damage this crate finds, into [`StoreError`]s that name the
//! store.

use persist_core::StoreError;
use rusqlite::ErrorCode;

use crate::format::FormatError;

/// Why a body failed, before the store's name is attached.
#[derive(Debug)]
pub(crate) enum Failure {
    /// SQLite refused.
    Sqlite(rusqlite::Error),
    /// The file (or the options) is not one of our stores.
    Format(FormatError),
    /// The store's contents are damaged: what was found.
    Corrupt(String),
    /// A file operation of the first create failed.
    Io(std::io::Error),
    /// Already a store error (a fence, an exhausted epoch).
    Store(StoreError),
}

impl Failure {
    /// Attaches the store's name. SQLite's reports of damage, and values of a type or range
    /// this crate never writes, become [`StoreError::Corrupt`].
    pub(crate) fn into_store_error(self, store: &str) -> StoreError {
        let corrupt = |detail: String| StoreError::Corrupt {
            store: store.to_owned(),
            detail,
        };
        match self {
            Failure::Sqlite(e) if is_damage(&e) => corrupt(e.to_string()),
            Failure::Sqlite(e) => StoreError::backend(store, e),
            Failure::Format(e) => StoreError::backend(store, e),
            Failure::Corrupt(detail) => corrupt(detail),
            Failure::Io(e) => StoreError::backend(store, e),
            Failure::Store(e) => e,
        }
    }
}

/// Whether SQLite's error means the bytes are damaged: SQLite says so, or a column holds a
/// value of a type this crate never stores there.
fn is_damage(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        }
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => true,
        _ => false,
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sqlite(e)
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

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}
