//! The identity of one persistent actor in a store.

use std::fmt;

/// Where one actor's records live: the actor type's stable namespace (from
/// `#[persistent(name = "...")]`) and the key it was spawned under.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ActorKey {
    namespace: String,
    key: String,
}

impl ActorKey {
    /// Builds the key of actor `key` in `namespace`.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> Self {
        ActorKey {
            namespace: namespace.into(),
            key: key.into(),
        }
    }

    /// The actor type's storage namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key the actor was spawned under.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.key)
    }
}
