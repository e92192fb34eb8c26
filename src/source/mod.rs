//! Sources: a stream of committed transactions, resumable from a `Position`.
//!
//! A source knows nothing about sinks: it pushes `SourceMessage`s into the bounded queue
//! and resumes from whatever checkpoint the pipeline hands it.

pub mod filter;
pub mod mysql;
pub mod postgres;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::event::Position;
use crate::pipeline::queue::QueueSender;

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

#[async_trait]
pub trait Source: Send {
    /// Connects and checks server settings and grants, before any local state is
    /// created: a misconfigured server fails here and leaves nothing behind.
    async fn preflight(&mut self) -> Result<(), SourceError>;

    /// Streams changes after `resume` (or from the configured start when `None`) into
    /// `tx`, reconnecting on transient errors, until `shutdown` fires or a fatal error.
    async fn run(
        &mut self,
        resume: Option<Position>,
        tx: QueueSender,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError>;
}
