//! Sinks: accept batches of source messages, acknowledge once durable.
//!
//! A sink sees changes, transaction boundaries and rewinds in commit order. `flush`
//! makes everything up to the last boundary durable and returns the sink's cursor at
//! that boundary; the pipeline stores the cursors and the source position together.

pub mod log;
pub mod null;
pub mod stdout;

use async_trait::async_trait;

use crate::config::SinkConfig;
use crate::event::SourceMessage;
use crate::offsets::OffsetStore;

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

    /// Makes everything up to the last `Commit` durable. Returns the cursor to store
    /// with the checkpoint (None for sinks that keep no position).
    async fn flush(&mut self) -> Result<Option<serde_json::Value>, SinkError>;
}

/// Opens the configured sinks, each positioned at its stored cursor.
pub fn open_sinks(
    configs: &[SinkConfig],
    store: &OffsetStore,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut out: Vec<Box<dyn Sink>> = Vec::new();
    for c in configs {
        let id = c.id();
        let cursor = store
            .sink_cursor(&id)
            .map_err(|e| SinkError::new(&id, e.to_string()))?;
        out.push(match c {
            SinkConfig::Log(l) => Box::new(log::LogSink::open(id, l, cursor)?),
            SinkConfig::Stdout(s) => Box::new(stdout::StdoutSink::new(id, s)),
            SinkConfig::Null(_) => Box::new(null::NullSink::new(id)),
        });
    }
    Ok(out)
}
