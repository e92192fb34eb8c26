//! Log stream sink: change events as JSON lines in a journal (see `journal`: segments,
//! a CRC32C per record, cut back to the checkpoint on open), so after any crash the log
//! holds each change once, in commit order.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use crate::event::SourceMessage;
use crate::journal::{Fsync, Journal, Retention, Settings};
use crate::settings::ConfigError;
use crate::sink::{Ack, Sink, SinkError, SinkKind};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    /// `log` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// Optional stable id (default `log:<dir>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Rotate to a new segment after this many bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// `checkpoint`: fsync before every checkpoint (survives power loss).
    /// `never`: leave it to the OS (survives a process crash, not a power loss).
    #[serde(default)]
    pub fsync: Fsync,
    /// Of the segments (default "0600"; the dir gets the matching search bits).
    #[serde(default)]
    pub file_mode: crate::files::FileMode,
    /// Delete the oldest segments once the log is larger than this (off when absent).
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// Delete segments last written longer ago than this (off when absent).
    #[serde(default)]
    pub retention_hours: Option<u64>,
}

fn default_segment_bytes() -> u64 {
    crate::journal::DEFAULT_SEGMENT_BYTES
}

impl LogSinkConfig {
    fn journal(&self) -> Settings {
        Settings {
            dir: self.dir.clone(),
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            file_mode: self.file_mode,
        }
    }

    fn retention(&self) -> Retention {
        Retention {
            bytes: self.retention_bytes,
            max_age: self
                .retention_hours
                .map(|h| std::time::Duration::from_secs(h * 3600)),
        }
    }

    fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        if self
            .retention_bytes
            .is_some_and(|b| b < 2 * self.segment_bytes)
        {
            return Err(ConfigError::at_key(
                path,
                text,
                "retention_bytes",
                "[[sink]] retention_bytes must be at least two segments (2 x segment_bytes): whole segments are deleted, and the one being written stays",
            ));
        }
        if self.segment_bytes < 4096 {
            return Err(ConfigError::at_key(
                path,
                text,
                "segment_bytes",
                "[[sink]] segment_bytes must be at least 4096",
            ));
        }
        Ok(())
    }
}

impl SinkKind for LogSinkConfig {
    fn id(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("log:{}", self.dir.display()))
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        self.validate_section(path, text)
    }

    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        _context: &super::SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(LogSink::open(id, self, cursor)?))
    }
}

/// The log sink: each change event's JSON appended to its journal.
pub struct LogSink {
    journal: Journal,
    scratch: Vec<u8>,
    dir: PathBuf,
    retention: Retention,
    /// The segment of the previous flush's cursor: stored by the time the next flush
    /// begins (one checkpoint is in flight at most), so segments before it are free
    /// to go.
    stored: Option<u64>,
}

impl LogSink {
    /// Opens the log at `cursor`, cutting anything written past it.
    pub fn open(
        id: String,
        cfg: &LogSinkConfig,
        cursor: Option<serde_json::Value>,
    ) -> Result<Self, SinkError> {
        Ok(LogSink {
            journal: Journal::open(id, &cfg.journal(), cursor)?,
            scratch: Vec::with_capacity(4096),
            dir: cfg.dir.clone(),
            retention: cfg.retention(),
            stored: None,
        })
    }

    fn append(&mut self, event: &crate::event::ChangeEvent) -> Result<(), SinkError> {
        self.scratch.clear();
        event.write_json(&mut self.scratch);
        Ok(self.journal.append_json(&self.scratch)?)
    }
}

#[async_trait]
impl Sink for LogSink {
    fn id(&self) -> &str {
        self.journal.id()
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        for m in batch {
            match m {
                SourceMessage::Change(e) => self.append(e)?,
                SourceMessage::Commit(_) => self.journal.mark_boundary(),
                SourceMessage::Rewind => self.journal.rewind()?,
                SourceMessage::Schema(_) | SourceMessage::SnapshotProgress(_) => {}
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<Ack, SinkError> {
        if let Some(stored) = self.stored {
            match self.retention.apply(&self.dir, stored) {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(sink = %self.journal.id(), segments = ?deleted, "retention: deleted log segments")
                }
                Ok(_) => {}
                // Disk space is at stake, not data: say so and go on.
                Err(e) => {
                    tracing::warn!(sink = %self.journal.id(), error = %e, "retention: cannot delete log segments")
                }
            }
        }
        self.stored = Some(self.journal.boundary_segment());
        Ok(crate::sink::ack_of(self.journal.flush().await?))
    }
}
