//! Writes each change as one JSON line on standard output.

use std::io::Write;

use async_trait::async_trait;
use serde::Deserialize;

use super::{acked, Ack, Sink, SinkError};
use crate::event::SourceMessage;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `stdout` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
}

impl super::SinkKind for StdoutSinkConfig {
    fn id(&self) -> String {
        "stdout".into()
    }

    fn open(
        &self,
        id: String,
        _cursor: Option<serde_json::Value>,
        _context: &super::SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(StdoutSink::new(id, self)))
    }
}

pub struct StdoutSink {
    id: String,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new(id: String, _cfg: &StdoutSinkConfig) -> Self {
        StdoutSink {
            id,
            buf: Vec::new(),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        for m in batch {
            if let SourceMessage::Change(e) = m {
                e.write_json(&mut self.buf);
                self.buf.push(b'\n');
            }
        }
        // A rewound transaction may already be on the terminal: stdout is a view, not a
        // durable stream, so it is not taken back.
        if self.buf.len() > 1 << 16 {
            let _durable_now = self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<Ack, SinkError> {
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|_| out.flush())
            .map_err(|e| SinkError::new(&self.id, format!("writing to stdout: {e}")))?;
        self.buf.clear();
        Ok(acked(None))
    }
}
