//! Sinks: accept batches of source messages, acknowledge once durable.
//!
//! A sink sees changes, transaction boundaries and rewinds in commit order. `flush`
//! hands everything up to the last boundary on (written, sent) and returns an `Ack`
//! that resolves, once that is durable, with the sink's cursor at the boundary. The
//! pipeline keeps accepting batches while an ack is pending, and stores the cursors
//! and the source position together when every ack resolved.

pub mod elasticsearch;
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
}

impl SinkError {
    pub fn new(sink: &str, message: impl Into<String>) -> Self {
        SinkError::Failed {
            sink: sink.to_string(),
            message: message.into(),
        }
    }
}

#[async_trait]
pub trait Sink: Send {
    /// Stable id; its cursor is stored under it.
    fn id(&self) -> &str;

    /// Takes a batch in commit order. May buffer. `SourceMessage::Rewind` drops what
    /// arrived since the last `Commit`.
    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError>;

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

    /// The sink, positioned at its stored `cursor`. `policy` is the connector's schema
    /// policy (sinks that map columns read its unindexed columns).
    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        policy: &Arc<Policy>,
    ) -> Result<Box<dyn Sink>, SinkError>;
}

impl<T: SinkKind + ?Sized> SinkKind for Box<T> {
    fn id(&self) -> String {
        (**self).id()
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        (**self).validate(path, text)
    }

    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        policy: &Arc<Policy>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        (**self).open(id, cursor, policy)
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
