//! Sources: a stream of committed transactions, resumable from a `Position`.
//!
//! A source knows nothing about sinks: it pushes `SourceMessage`s into the bounded queue
//! and resumes from whatever checkpoint the pipeline hands it.

pub mod filter;
pub mod kafka;
pub mod lookup;
pub mod mysql;
pub mod postgres;
pub mod scan;
pub mod session;
pub mod settings;

pub use settings::CommonSettings;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use std::path::Path;
use std::sync::Arc;

use crate::event::{Column, Position, Row, Value};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::queue::QueueSender;
use crate::settings::ConfigError;

/// The newest stored checkpoint, as the pipeline publishes it.
pub type Checkpoints = tokio::sync::watch::Receiver<Option<Position>>;

/// What a server check found: errors stop the daemon, warnings are logged, info is
/// shown by `tributary check`. Each error names the setting, grant or table and the
/// statement that fixes it.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub info: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// What the session's encryption (`tls`: version and cipher, None in plain text)
    /// means: info when encrypted or on loopback, else a warning ending in `fix` (the
    /// settings that encrypt).
    pub fn encryption(&mut self, tls: Option<String>, host: &str, fix: &str) {
        match tls {
            Some(tls) => self.info.push(format!("connection encrypted ({tls})")),
            None if settings::is_loopback(host) => {
                self.info.push("connection not encrypted (loopback)".into())
            }
            None => self.warnings.push(format!(
                "the connection is not encrypted: rows and the login travel in plain text ({fix})"
            )),
        }
    }

    /// At startup: logs the warnings, and stops with every error when there is one.
    pub fn require_ready(&self, address: &str) -> Result<(), SourceError> {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        if self.ok() {
            return Ok(());
        }
        Err(SourceError::Fatal(format!(
            "the server at {address} is not ready for tributary:\n  - {}",
            self.errors.join("\n  - ")
        )))
    }
}

/// Errors a source stops with. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Bad settings, missing grants, purged logs: retrying will not help.
    #[error("{0}")]
    Fatal(String),
    /// The pipeline went away (shutdown or a sink failed).
    #[error("the pipeline stopped")]
    Closed,
}

/// A source kind, as its parsed `[source]` section: everything the rest of tributary
/// asks of a source. Each source folder implements it on its config type, and
/// `config::SourceConfig` lists the kinds, one line each.
#[async_trait]
pub trait SourceKind: CommonSettings + Send + Sync {
    /// The server, for messages (`host:port`; never credentials).
    fn address(&self) -> String;

    /// Fills what the section left out that follows from the connector's name (the
    /// PostgreSQL slot and publication), before the section is validated.
    fn fill_defaults(&mut self, _connector: &str) {}

    /// The user it connects as.
    fn user(&self) -> &str;

    /// Checks what the section alone can tell, with `file:line` errors.
    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError>;

    /// The source of connector `connector`, and how logs and checkpoints describe it
    /// (`mariadb 127.0.0.1:3306`).
    fn open(&self, connector: &str, store: Arc<OffsetStore>) -> (Box<dyn Source>, String);

    /// Connects and runs the checks `tributary check` shows and the daemon runs at
    /// startup. `checkpoint` is the stored position, if any.
    async fn check(&self, checkpoint: Option<&Position>) -> Result<CheckReport, Failure>;

    /// The included tables and their columns as the server has them now, with the type
    /// names the stream gives (for `tributary policy diff`).
    async fn live_schemas(&self) -> Result<Vec<(String, Vec<Column>)>, Failure>;

    /// The row reader for the `lookup` enricher.
    fn lookup(&self, connector: &str) -> Arc<dyn Lookup>;

    /// The table reader for `tributary verify`.
    fn scan(&self, connector: &str) -> Arc<dyn scan::TableScan>;
}

/// Reads rows of the source database by key, for the `lookup` enricher. Values are
/// decoded exactly as the source's events and snapshots decode them.
#[async_trait]
pub trait Lookup: Send + Sync {
    /// The columns of `table` (`db.table`) as events name and type them; None when it
    /// does not exist.
    async fn describe(&self, table: &str) -> Result<Option<Vec<Column>>, Failure>;

    /// The rows of `table` whose column `key` is one of `keys`, whole (in `describe`'s
    /// column order).
    async fn fetch(&self, table: &str, key: &str, keys: &[Value]) -> Result<Vec<Row>, Failure>;
}

#[async_trait]
pub trait Source: Send {
    /// Connects and checks server settings and grants, before any local state is
    /// created: a misconfigured server fails here and leaves nothing behind.
    async fn preflight(&mut self) -> Result<(), SourceError>;

    /// Streams changes after `resume` (or from the configured start when `None`) into
    /// `tx`, reconnecting on transient errors, until `shutdown` fires or a fatal error.
    /// `checkpoints` follows the positions the pipeline stored after every sink
    /// acknowledged them: a source that confirms progress to its server (a Postgres
    /// slot) confirms those and nothing later.
    async fn run(
        &mut self,
        resume: Option<Position>,
        tx: QueueSender,
        checkpoints: Checkpoints,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError>;
}
