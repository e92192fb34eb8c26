//! Counts and discards changes: for benchmarks (source and pipeline cost alone).

use async_trait::async_trait;
use serde::Deserialize;

use super::{acked, Ack, Sink, SinkError};
use crate::event::SourceMessage;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {
    /// `null` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
}

impl super::SinkKind for NullSinkConfig {
    fn id(&self) -> String {
        "null".into()
    }

    fn open(
        &self,
        id: String,
        _cursor: Option<serde_json::Value>,
        _context: &super::SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(NullSink::new(id)))
    }
}

pub struct NullSink {
    id: String,
    pub changes: u64,
}

impl NullSink {
    pub fn new(id: String) -> Self {
        NullSink { id, changes: 0 }
    }
}

#[async_trait]
impl Sink for NullSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        self.changes += batch
            .iter()
            .filter(|m| matches!(m, SourceMessage::Change(_)))
            .count() as u64;
        Ok(())
    }

    async fn flush(&mut self) -> Result<Ack, SinkError> {
        Ok(acked(None))
    }
}
