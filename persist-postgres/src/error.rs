//! [`PostgresError`]: why a store could not be opened; and how the client's errors become
//! [`StoreError`]s that name the store.

use std::time::Duration;

use persist_core::StoreError;

/// Why [`crate::PostgresStore::open`] refused, as the source of [`StoreError::Backend`]. Each
/// names the server (never the password) and what was expected. Nothing was written.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The connection parameters could not be parsed.
    #[error("the connection parameters are not valid: {reason}")]
    InvalidParams {
        /// What the client said (it never repeats a password).
        reason: String,
    },
    /// A schema name or table prefix that is not a plain identifier.
    #[error(
        "the {what} {value:?} is refused: {reason} (expected 1 to {max} lowercase ASCII letters, digits and underscores, not starting with a digit)"
    )]
    InvalidIdentifier {
        /// `schema` or `table prefix`.
        what: &'static str,
        /// The identifier given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
        /// The longest allowed.
        max: usize,
    },
    /// The server could not be reached in time.
    #[error("cannot reach the PostgreSQL server {server}: {reason}")]
    Unreachable {
        /// The server, as `user@host:port/database`.
        server: String,
        /// What the client said.
        reason: String,
    },
    /// The server refused the user or the password.
    #[error("the PostgreSQL server {server} refused user `{user}`: {reason}")]
    Authentication {
        /// The server, as `user@host:port/database`.
        server: String,
        /// The user.
        user: String,
        /// What the server said.
        reason: String,
    },
    /// A table of the store's names exists but is not one of ours (another application's).
    #[error(
        "table {table} is not a ractor-persist table: {detail} (choose another table prefix or schema)"
    )]
    Foreign {
        /// The table, as `schema.name`.
        table: String,
        /// What was found instead of what was expected.
        detail: String,
    },
    /// Some of the store's tables exist, others do not.
    #[error(
        "the store's tables are incomplete in schema `{schema}`: found {found:?}, missing {missing:?}"
    )]
    Incomplete {
        /// The schema.
        schema: String,
        /// The tables found.
        found: Vec<String>,
        /// The tables missing.
        missing: Vec<String>,
    },
    /// The tables were written by a newer release of this crate.
    #[error(
        "the store's tables have schema version {found}; this build reads up to version {supported}: upgrade ractor-persist"
    )]
    NewerSchema {
        /// The version found.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The server runs with a setting that would lose acknowledged commits.
    #[error(
        "the server's `{setting}` is `{value}`: acknowledged commits could be lost in a crash; expected `{expected}`"
    )]
    NotDurable {
        /// The setting.
        setting: &'static str,
        /// Its value on the server.
        value: String,
        /// The value the store needs.
        expected: &'static str,
    },
    /// [`crate::PostgresOptions::existing_only`]: the schema holds none of the store's
    /// tables, which an ordinary open would create.
    #[error(
        "no store in schema `{schema}` with table prefix `{prefix}` (existing_only creates none)"
    )]
    NoStore {
        /// The schema.
        schema: String,
        /// The table prefix.
        prefix: String,
    },
}

/// Why a body failed, before the store's name is attached.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client or the server refused.
    Pg(tokio_postgres::Error),
    /// A transaction's BEGIN failed: nothing of it ran.
    Begin(tokio_postgres::Error),
    /// No answer within the call's time: the connection is dropped.
    Stalled(Duration),
    /// The server is not one a store can use.
    Open(PostgresError),
    /// The store could not connect again during a call.
    Lost(PostgresError),
    /// The stored values are not what this crate writes.
    Corrupt(String),
    /// Already a store error (a fence, an unsupported write).
    Store(StoreError),
}

impl Failure {
    /// Attaches the store's name.
    ///
    /// Every error of the client or the server during a call is [`StoreError::Interrupted`]:
    /// the server rolled the transaction back, or the connection was lost (then a commit may
    /// have landed); either way the database is whole and the store reconnects for the next
    /// call, so nothing is poisoned.
    pub(crate) fn into_store_error(self, store: &str) -> StoreError {
        let interrupted = |text: String| StoreError::Interrupted {
            store: store.to_owned(),
            source: text.into(),
        };
        match self {
            Failure::Pg(e) | Failure::Begin(e) => interrupted(describe(&e)),
            Failure::Stalled(limit) => interrupted(format!(
                "no answer from the server within {limit:?}: the connection was dropped"
            )),
            Failure::Open(e) => StoreError::backend(store, e),
            Failure::Lost(e) => interrupted(e.to_string()),
            Failure::Corrupt(detail) => StoreError::Corrupt {
                store: store.to_owned(),
                detail,
            },
            Failure::Store(e) => e,
        }
    }
}

/// The client's error with every cause: its own text is only "db error" or "error
/// connecting to server"; the server's message (with its SQLSTATE) or the I/O error is in
/// the causes.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    if let Some(db) = e.as_db_error() {
        text.push_str(&format!(
            ": {} {} ({})",
            db.severity(),
            db.message(),
            db.code().code()
        ));
        return text;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

impl Failure {
    /// The failure of a call that could not connect again: interrupted, not a refusal to
    /// open (the store was opened; the server may be back for the next call).
    pub(crate) fn lost(self) -> Failure {
        match self {
            Failure::Open(e) => Failure::Lost(e),
            f => f,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<PostgresError> for Failure {
    fn from(e: PostgresError) -> Self {
        Failure::Open(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}
