//! Sources: a stream of committed transactions, resumable from a `Position`.
//!
//! A source knows nothing about sinks: it pushes `SourceMessage`s into the bounded queue
//! and resumes from whatever checkpoint the pipeline hands it.

pub mod filter;
pub mod lookup;
pub mod mysql;
pub mod postgres;
pub mod session;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::event::Position;
use crate::pipeline::queue::QueueSender;

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

/// Connects to the source's server and runs the checks `tributary check` shows and the
/// daemon runs at startup. `checkpoint` is the stored position, if any.
pub async fn check(
    cfg: &crate::config::SourceConfig,
    checkpoint: Option<&Position>,
) -> Result<CheckReport, String> {
    use crate::config::SourceConfig;
    match cfg {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => {
            let mut report = mysql::check(m, matches!(cfg, SourceConfig::Mariadb(_))).await?;
            report
                .info
                .insert(0, format!("connected to {} as {}", m.address(), m.user));
            Ok(report)
        }
        SourceConfig::Postgres(p) => {
            let (mut report, _, _) = postgres::check(p, checkpoint).await?;
            report
                .info
                .insert(0, format!("connected to {} as {}", p.address(), p.user));
            Ok(report)
        }
    }
}

/// The included tables and their columns as the source's server has them now, with
/// the type names the stream gives (for `tributary policy diff`).
pub async fn live_schemas(
    cfg: &crate::config::SourceConfig,
) -> Result<Vec<(String, Vec<crate::event::Column>)>, String> {
    use crate::config::SourceConfig;
    match cfg {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => mysql::live_schemas(m).await,
        SourceConfig::Postgres(p) => postgres::live_schemas(p).await,
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

/// Reads rows of the source database by key, for the `lookup` enricher. Values are
/// decoded exactly as the source's events and snapshots decode them.
#[async_trait]
pub trait Lookup: Send + Sync {
    /// The columns of `table` (`db.table`) as events name and type them; None when it
    /// does not exist.
    async fn describe(&self, table: &str) -> Result<Option<Vec<crate::event::Column>>, String>;

    /// The rows of `table` whose column `key` is one of `keys`, whole (in `describe`'s
    /// column order).
    async fn fetch(
        &self,
        table: &str,
        key: &str,
        keys: &[crate::event::Value],
    ) -> Result<Vec<crate::event::Row>, String>;
}

/// The lookup reader of the connector's source.
pub fn lookup(cfg: &crate::config::SourceConfig, connector: &str) -> std::sync::Arc<dyn Lookup> {
    use crate::config::SourceConfig;
    match cfg {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => {
            mysql::lookup(m, matches!(cfg, SourceConfig::Mariadb(_)), connector)
        }
        SourceConfig::Postgres(p) => postgres::lookup(p, connector),
    }
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
