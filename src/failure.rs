//! One classification of what went wrong, for sources, lookups and sinks alike: may it
//! pass by itself (retry with backoff), or does it need the operator (stop with the
//! reason)?

/// A failure and its reason. The reason names the server, setting or table and what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// May pass by itself: a lost connection, a server restarting, an overloaded
    /// cluster. Retried with backoff; nothing is dropped meanwhile.
    #[error("{0}")]
    Transient(String),
    /// Needs the operator: settings, grants, credentials, a request the server
    /// refuses. Retrying cannot help.
    #[error("{0}")]
    Fatal(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Fatal(m) => m,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(_))
    }

    /// The same class with the reason rewritten (to add where it happened).
    pub fn reword(self, f: impl FnOnce(&str) -> String) -> Failure {
        match self {
            Failure::Transient(m) => Failure::Transient(f(&m)),
            Failure::Fatal(m) => Failure::Fatal(f(&m)),
        }
    }
}
