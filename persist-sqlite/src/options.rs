//! [`SqliteOptions`]: how a store is laid out in its file.

use crate::format::FormatError;

/// The table prefix a store uses unless told otherwise.
pub const DEFAULT_TABLE_PREFIX: &str = "ractor_persist_";

/// How [`crate::SqliteStore::open_with`] lays the store out in its file.
///
/// ```
/// use persist_sqlite::SqliteOptions;
///
/// let options = SqliteOptions::new().table_prefix("billing_actors_");
/// assert_eq!(options.prefix(), "billing_actors_");
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    table_prefix: String,
    existing_only: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            table_prefix: DEFAULT_TABLE_PREFIX.to_owned(),
            existing_only: false,
        }
    }
}

impl SqliteOptions {
    /// The default options: tables prefixed with [`DEFAULT_TABLE_PREFIX`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the store's tables `{prefix}meta`, `{prefix}rows` and `{prefix}marks`, so that
    /// several stores, and an application's own tables, can share one file.
    ///
    /// A prefix is 1 to 64 ASCII letters, digits and underscores, not starting with a digit
    /// nor with `sqlite_` (SQLite's own names); any other is refused on open with
    /// [`FormatError::InvalidPrefix`]. SQLite compares table names without regard to ASCII
    /// case, so `App_` and `app_` name the same tables.
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// Opens only a store that exists: no file is created ([`FormatError::NoFile`]), and a
    /// database without the store's tables is refused ([`FormatError::NotAStore`]) before
    /// anything is written to it, rather than given the tables. For tools that inspect a store
    /// and must not change a file that is not one.
    pub fn existing_only(mut self) -> Self {
        self.existing_only = true;
        self
    }

    /// Whether [`SqliteOptions::existing_only`] was asked for.
    pub fn is_existing_only(&self) -> bool {
        self.existing_only
    }

    /// The table prefix.
    pub fn prefix(&self) -> &str {
        &self.table_prefix
    }

    /// The prefix, if it is one a store may use.
    pub(crate) fn checked_prefix(&self) -> Result<&str, FormatError> {
        let p = self.table_prefix.as_str();
        let valid = !p.is_empty()
            && p.len() <= 64
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !p
                .get(..7)
                .is_some_and(|head| head.eq_ignore_ascii_case("sqlite_"));
        if valid {
            Ok(p)
        } else {
            Err(FormatError::InvalidPrefix {
                prefix: p.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> bool {
        SqliteOptions::new()
            .table_prefix(p)
            .checked_prefix()
            .is_ok()
    }

    #[test]
    fn prefixes_are_identifiers_of_at_most_64_characters() {
        for good in [
            "a",
            "_",
            "ractor_persist_",
            "App_2",
            &"x".repeat(64),
            "sqlite",
        ] {
            assert!(ok(good), "{good:?} is allowed");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "a\"b",
            "é",
            "a;",
            &"x".repeat(65),
            "sqlite_",
            "SQLite_x",
        ] {
            assert!(!ok(bad), "{bad:?} is refused");
        }
    }
}
