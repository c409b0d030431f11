//! [`PostgresOptions`]: which server, where the tables go, and how long to wait.

use std::fmt;
use std::time::Duration;

use crate::error::PostgresError;

/// The schema the tables go in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "public";
/// The table prefix a store uses unless told otherwise.
pub const DEFAULT_TABLE_PREFIX: &str = "ractor_persist_";

/// The longest identifier PostgreSQL keeps (longer ones are cut, silently).
const MAX_IDENTIFIER: usize = 63;
/// The longest table suffix the store adds to the prefix (`marks`).
const LONGEST_SUFFIX: usize = 5;

/// How [`crate::PostgresStore::open`] reaches its server and lays out its tables.
///
/// ```
/// use std::time::Duration;
/// use persist_postgres::PostgresOptions;
///
/// let options = PostgresOptions::new("host=db.internal user=app password=secret dbname=app")?
///     .schema("actors")
///     .table_prefix("billing_")
///     .statement_timeout(Duration::from_secs(10));
/// assert_eq!(options.server(), "app@db.internal:5432/app");
/// assert!(!format!("{options:?}").contains("secret"));
/// # Ok::<(), persist_postgres::PostgresError>(())
/// ```
#[derive(Clone)]
pub struct PostgresOptions {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) schema: String,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) statement_timeout: Duration,
    pub(crate) reconnect_for: Duration,
    pub(crate) existing_only: bool,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("server", &self.server())
            .field("schema", &self.schema)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("reconnect_for", &self.reconnect_for)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Options for the server named by `params`: libpq's `key=value` form
    /// (`host=localhost user=app dbname=app`) or a URL (`postgresql://app@localhost/app`).
    ///
    /// The tables go in [`DEFAULT_SCHEMA`] with [`DEFAULT_TABLE_PREFIX`]; connecting gives up
    /// after 10 s, a statement after 30 s, and after a lost connection the store tries again
    /// for 30 s (with backoff) before a call fails.
    ///
    /// A URL whose address holds more than one `@` is refused: the client would cut it at the
    /// first one and show the rest of the password as the host (percent-encode an `@` of the
    /// password as `%40`).
    pub fn new(params: &str) -> Result<PostgresOptions, PostgresError> {
        for scheme in ["postgres://", "postgresql://"] {
            if let Some(rest) = params.strip_prefix(scheme) {
                let authority = rest.split(['/', '?']).next().unwrap_or("");
                if authority.matches('@').count() > 1 {
                    return Err(PostgresError::InvalidParams {
                        reason: "the address holds more than one `@`: percent-encode an `@` \
                                 of the password as %40"
                            .into(),
                    });
                }
            }
        }
        let config: tokio_postgres::Config =
            params
                .parse()
                .map_err(|e: tokio_postgres::Error| PostgresError::InvalidParams {
                    reason: e.to_string(),
                })?;
        Ok(Self::from_config(config))
    }

    /// Options for a client configuration built by hand.
    pub fn from_config(config: tokio_postgres::Config) -> PostgresOptions {
        PostgresOptions {
            config,
            schema: DEFAULT_SCHEMA.to_owned(),
            prefix: DEFAULT_TABLE_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            reconnect_for: Duration::from_secs(30),
            existing_only: false,
        }
    }

    /// Puts the tables in `schema` (created if missing). A schema is 1 to 63 lowercase ASCII
    /// letters, digits and underscores, not starting with a digit.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Names the tables `{prefix}meta`, `{prefix}marks` and `{prefix}rows`, so that several
    /// stores and an application's own tables can share a schema. A prefix is 1 to 58
    /// lowercase ASCII letters, digits and underscores, not starting with a digit.
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one connection attempt may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server lets one statement run (default 30 s): a commit or a load that
    /// waits longer (on a lock, a full disk) fails, and its actors get an error. A whole call
    /// that gets no answer for this long plus 10 s (a server that stopped answering) fails
    /// too, on the client's own clock, and its connection is dropped. At most 24 days
    /// (PostgreSQL's limit); a longer one is refused on open.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// After a lost connection, how long a call keeps trying to connect again, with backoff
    /// from 20 ms to 1 s, before it fails (default 30 s). Zero: one attempt.
    pub fn reconnect_for(mut self, duration: Duration) -> Self {
        self.reconnect_for = duration;
        self
    }

    /// Opens only a store that exists: a schema without the store's tables is refused
    /// ([`crate::PostgresError::NoStore`]) and nothing is created. For tools that inspect a
    /// store and must not leave a new one behind.
    pub fn existing_only(mut self) -> Self {
        self.existing_only = true;
        self
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The table prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server, as `user@host:port/database`, without the password: how errors name it.
    pub fn server(&self) -> String {
        let c = &self.config;
        let user = c.get_user().unwrap_or("?");
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let db = c.get_dbname().unwrap_or(user);
        format!("{user}@{host}:{port}/{db}")
    }

    /// The schema and the prefix, if both are identifiers a store may use and the timeouts
    /// are ones the server takes.
    pub(crate) fn checked(&self) -> Result<(&str, &str), PostgresError> {
        // PostgreSQL keeps timeouts as milliseconds in an i32.
        if self.statement_timeout.as_millis() > i32::MAX as u128 || self.statement_timeout.is_zero()
        {
            return Err(PostgresError::InvalidParams {
                reason: format!(
                    "statement_timeout {:?} is out of range: 1 ms to 24 days",
                    self.statement_timeout
                ),
            });
        }
        check("schema", &self.schema, MAX_IDENTIFIER)?;
        check(
            "table prefix",
            &self.prefix,
            MAX_IDENTIFIER - LONGEST_SUFFIX,
        )?;
        Ok((&self.schema, &self.prefix))
    }
}

fn check(what: &'static str, value: &str, max: usize) -> Result<(), PostgresError> {
    let refuse = |reason| {
        Err(PostgresError::InvalidIdentifier {
            what,
            value: value.to_owned(),
            reason,
            max,
        })
    };
    if value.is_empty() {
        return refuse("it is empty");
    }
    if value.len() > max {
        return refuse("it is too long");
    }
    if value.starts_with(|c: char| c.is_ascii_digit()) {
        return refuse("it starts with a digit");
    }
    if value.starts_with("pg_") {
        return refuse("names starting with `pg_` are PostgreSQL's own");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return refuse("it holds a character other than a-z, 0-9 and _");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(schema: &str, prefix: &str) -> bool {
        PostgresOptions::new("host=localhost user=u")
            .unwrap()
            .schema(schema)
            .table_prefix(prefix)
            .checked()
            .is_ok()
    }

    #[test]
    fn schemas_and_prefixes_are_plain_lowercase_identifiers() {
        for good in ["a", "_", "ractor_persist_", "app_2", &"x".repeat(58)] {
            assert!(ok("public", good), "prefix {good:?} is allowed");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "a\"b",
            "App_",
            "é",
            "a;",
            "pg_x",
            &"x".repeat(59),
        ] {
            assert!(!ok("public", bad), "prefix {bad:?} is refused");
        }
        assert!(ok(&"s".repeat(63), "p_"));
        assert!(!ok(&"s".repeat(64), "p_"));
        assert!(!ok("Public", "p_"));
    }

    #[test]
    fn the_server_is_named_without_its_password() {
        let o = PostgresOptions::new("postgresql://app:hunter2@db.example:6543/bank").unwrap();
        assert_eq!(o.server(), "app@db.example:6543/bank");
        assert!(!format!("{o:?}").contains("hunter2"));
        let e =
            PostgresOptions::new("postgresql://app:hunter2@db.example:notaport/bank").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
