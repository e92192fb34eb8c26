//! Sinks: accept batches of source messages, acknowledge once durable.
//!
//! A sink sees changes, transaction boundaries and rewinds in commit order. `flush`
//! hands everything up to the last boundary on (written, sent) and returns an `Ack`
//! that resolves, once that is durable, with the sink's cursor at the boundary. The
//! pipeline keeps accepting batches while an ack is pending, and stores the cursors
//! and the source position together when every ack resolved.

pub mod elasticsearch;
pub mod kafka;
pub mod log;
pub mod null;
pub mod stdout;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use std::path::Path;
use std::sync::Arc;

use crate::event::SourceMessage;
use crate::schema::Policy;
use crate::settings::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {message}")]
    Failed { sink: String, message: String },
    /// The sink lost what it took since the last checkpoint and cannot take it again
    /// from where it stands (a Kafka transaction aborted): the connector starts over
    /// from its checkpoint, which resends it.
    #[error("sink {sink}: {message}; starting again from the checkpoint")]
    FromCheckpoint { sink: String, message: String },
}

impl SinkError {
    pub fn new(sink: &str, message: impl Into<String>) -> Self {
        SinkError::Failed {
            sink: sink.to_string(),
            message: message.into(),
        }
    }
}

/// What shapes `db`.`table`'s documents before they reach a sink (see `SinkContext`).
pub type Upstream = Arc<dyn Fn(&str, &str) -> serde_json::Value + Send + Sync>;

/// A batch of messages the pipeline shares with the sinks (`Sink::accept_shared`).
pub type SharedBatch = Arc<Vec<SourceMessage>>;

/// What the rest of the connector tells a sink as it opens.
#[derive(Clone)]
pub struct SinkContext {
    /// The connector's schema policy (sinks that map columns read its unindexed columns).
    pub policy: Arc<Policy>,
    /// What shapes `db`.`table`'s documents before they reach the sink (its enrichment
    /// entries as written), for sinks that record which configuration wrote them.
    pub upstream: Upstream,
    /// The connector's state dir (None in unit tests): where sinks meet the commands
    /// that work beside a running daemon (`tributary reindex`).
    pub state_dir: Option<std::path::PathBuf>,
    /// The connector's joined documents by name, for sinks that map them.
    pub documents: crate::document::stage::Shapes,
    /// The connector's name (what names its Kafka topics and transactions).
    pub connector: String,
}

#[async_trait]
pub trait Sink: Send {
    /// Stable id; its cursor is stored under it.
    fn id(&self) -> &str;

    /// Takes a batch in commit order. May buffer. `SourceMessage::Rewind` drops what
    /// arrived since the last `Commit`.
    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError>;

    /// `accept` for a batch the pipeline hands over shared: a sink that keeps events
    /// after it returned (until a server answered them) holds the batch instead of
    /// copying each event. The default borrows it.
    async fn accept_shared(&mut self, batch: &SharedBatch) -> Result<(), SinkError> {
        self.accept(batch).await
    }

    /// Hands on everything up to the last `Commit`; the returned `Ack` resolves when it
    /// is durable, with the cursor to store with the checkpoint (None for sinks that
    /// keep no position). Data accepted after this call is not covered by the ack.
    async fn flush(&mut self) -> Result<Ack, SinkError>;
}

/// A sink kind, as its parsed `[[sink]]` section. Each sink implements it on its config
/// type, and `config::SinkConfig` lists the kinds, one line each.
pub trait SinkKind: Send + Sync {
    /// A stable id, under which the sink's cursor is stored.
    fn id(&self) -> String;

    /// Checks what the section alone can tell, with `file:line` errors.
    fn validate(&self, _path: &Path, _text: &str) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Fills what the section left out that has a place under the connector's state
    /// dir (the Elasticsearch dead-letter stream), before it is validated.
    fn fill_defaults(&mut self, _state_dir: &Path) {}

    /// The sink, positioned at its stored `cursor`.
    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        context: &SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError>;

    /// The directory of the sink's dead-letter stream, for sinks that keep one (records
    /// with a `replay` field, `tributary dead-letters`). Its write cursor is the sink's.
    fn dead_letter_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// The shortest interval between checkpoints under a backlog this sink asks for,
    /// and why (a sink whose every acknowledgement costs a round of its own: a Kafka
    /// transaction's commit). Caught up, checkpoints come at once all the same.
    fn checkpoint_floor(&self) -> Option<(u64, &'static str)> {
        None
    }
}

impl<T: SinkKind + ?Sized> SinkKind for Box<T> {
    fn id(&self) -> String {
        (**self).id()
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        (**self).validate(path, text)
    }

    fn fill_defaults(&mut self, state_dir: &Path) {
        (**self).fill_defaults(state_dir)
    }

    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        context: &SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError> {
        (**self).open(id, cursor, context)
    }

    fn dead_letter_dir(&self) -> Option<std::path::PathBuf> {
        (**self).dead_letter_dir()
    }

    fn checkpoint_floor(&self) -> Option<(u64, &'static str)> {
        (**self).checkpoint_floor()
    }
}

/// A sink's acknowledgement of a flush: its cursor once the data is durable.
pub type Ack = BoxFuture<'static, Result<Option<serde_json::Value>, SinkError>>;

impl From<crate::journal::JournalError> for SinkError {
    fn from(e: crate::journal::JournalError) -> Self {
        SinkError::Failed {
            sink: e.stream,
            message: e.message,
        }
    }
}

/// A journal's flush as a sink's acknowledgement.
pub fn ack_of(flushed: crate::journal::Flushed) -> Ack {
    Box::pin(async move { Ok(Some(flushed.await?)) })
}

/// An acknowledgement that is already durable.
pub fn acked(cursor: Option<serde_json::Value>) -> Ack {
    Box::pin(std::future::ready(Ok(cursor)))
}
