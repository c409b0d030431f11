//! Opening a store named by a URL-like argument: `redb:PATH`, `sqlite:PATH`,
//! `postgres://...` (or `postgresql://...`).

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;

use persist_core::{Store, StoreError};

use crate::CliError;

/// A store argument, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// `redb:PATH`
    Redb(PathBuf),
    /// `sqlite:PATH`
    Sqlite(PathBuf),
    /// `postgres://...`, `postgresql://...`, or libpq's `key=value` form after `postgres:`.
    Postgres(String),
}

/// The schemes a store argument may start with.
pub(crate) const SCHEMES: &str = "redb:PATH, sqlite:PATH, postgres://USER@HOST/DB";

impl Location {
    /// Parses `arg`; an unknown scheme is [`CliError::UnknownScheme`].
    pub(crate) fn parse(arg: &str) -> Result<Location, CliError> {
        if arg.starts_with("postgres://") || arg.starts_with("postgresql://") {
            return Ok(Location::Postgres(arg.to_owned()));
        }
        let unknown = || CliError::UnknownScheme {
            arg: arg.to_owned(),
        };
        let (scheme, rest) = arg.split_once(':').ok_or_else(unknown)?;
        if rest.is_empty() {
            return Err(CliError::NoPath {
                arg: arg.to_owned(),
            });
        }
        match scheme {
            "redb" => Ok(Location::Redb(PathBuf::from(rest))),
            "sqlite" => Ok(Location::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" => Ok(Location::Postgres(rest.to_owned())),
            _ => Err(unknown()),
        }
    }

    /// Opens the store. With `create` (`import --create`) a new store is made where there is
    /// no file (or, for PostgreSQL, no tables); otherwise a missing store is refused. A file
    /// that is not a store, or one another process holds, is a typed error and is left
    /// unchanged, `create` or not.
    pub(crate) fn open(
        &self,
        options: &OpenOptions,
        create: bool,
    ) -> Result<Arc<dyn Store>, CliError> {
        let opened: Result<Arc<dyn Store>, StoreError> = match self {
            #[cfg(feature = "redb")]
            Location::Redb(path) if create && !path.exists() => {
                persist_redb::RedbStore::open(path).map(|s| Arc::new(s) as _)
            }
            #[cfg(feature = "redb")]
            Location::Redb(path) => {
                persist_redb::RedbStore::open_existing(path).map(|s| Arc::new(s) as _)
            }
            #[cfg(feature = "sqlite")]
            Location::Sqlite(path) => {
                let mut o = persist_sqlite::SqliteOptions::new();
                if !create || path.exists() {
                    o = o.existing_only();
                }
                if let Some(prefix) = &options.table_prefix {
                    o = o.table_prefix(prefix);
                }
                persist_sqlite::SqliteStore::open_with(path, o).map(|s| Arc::new(s) as _)
            }
            #[cfg(feature = "postgres")]
            Location::Postgres(params) => {
                let o =
                    persist_postgres::PostgresOptions::new(params).map_err(|e| CliError::Open {
                        store: "postgres".to_owned(),
                        source: StoreError::backend("postgres", e),
                    })?;
                let mut o = if create { o } else { o.existing_only() };
                if let Some(schema) = &options.schema {
                    o = o.schema(schema);
                }
                if let Some(prefix) = &options.table_prefix {
                    o = o.table_prefix(prefix);
                }
                persist_postgres::PostgresStore::open(o).map(|s| Arc::new(s) as _)
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(CliError::NotBuilt {
                    arg: self.to_string(),
                });
            }
        };
        opened.map_err(|source| {
            if in_use(&source) {
                CliError::InUse {
                    store: self.to_string(),
                    source,
                }
            } else {
                CliError::Open {
                    store: self.to_string(),
                    source,
                }
            }
        })
    }
}

impl Location {
    /// What the backend checked when the store was opened, for `verify`'s report.
    pub(crate) fn integrity_check(&self) -> &'static str {
        match self {
            Location::Redb(_) => "redb verified every page's checksum on open",
            Location::Sqlite(_) => {
                "SQLite's quick_check and every row's and mark's checksum passed on open"
            }
            Location::Postgres(_) => {
                "PostgreSQL offers no page check to a client: the server's own data checksums \
                 apply if the cluster has them on"
            }
        }
    }
}

/// Whether the open failed because another process holds the store (redb's lock).
fn in_use(e: &StoreError) -> bool {
    #[cfg(feature = "redb")]
    {
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(persist_redb::FormatError::InUse) = s.downcast_ref() {
                return true;
            }
            source = s.source();
        }
    }
    let _ = e;
    false
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Redb(p) => write!(f, "redb:{}", p.display()),
            Location::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            // Named from the parsed parameters, as the driver reads them: never the password,
            // wherever it was given (after the user, in the query, as `password=`).
            Location::Postgres(params) => {
                #[cfg(feature = "postgres")]
                if let Ok(o) = persist_postgres::PostgresOptions::new(params) {
                    return write!(f, "postgres://{}", o.server());
                }
                let _ = params;
                f.write_str("postgres (parameters not shown)")
            }
        }
    }
}

/// Backend options from the command line.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpenOptions {
    /// SQLite's and PostgreSQL's table prefix.
    pub(crate) table_prefix: Option<String>,
    /// PostgreSQL's schema.
    pub(crate) schema: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_parse_and_unknown_ones_are_refused() {
        assert_eq!(
            Location::parse("redb:a/b.redb").unwrap(),
            Location::Redb("a/b.redb".into())
        );
        assert_eq!(
            Location::parse("sqlite:x.db").unwrap(),
            Location::Sqlite("x.db".into())
        );
        assert!(matches!(
            Location::parse("postgres://u:secret@h/db").unwrap(),
            Location::Postgres(_)
        ));
        assert_eq!(
            Location::parse("postgres://u:secret@h/db")
                .unwrap()
                .to_string(),
            "postgres://u@h:5432/db"
        );
        assert!(matches!(
            Location::parse("mysql://h/db"),
            Err(CliError::UnknownScheme { .. })
        ));
        assert!(matches!(
            Location::parse("bank.redb"),
            Err(CliError::UnknownScheme { .. })
        ));
        assert!(matches!(
            Location::parse("redb:"),
            Err(CliError::NoPath { .. })
        ));
    }
}
