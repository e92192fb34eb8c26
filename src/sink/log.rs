//! Log stream sink: change events as JSON lines in a journal (see `journal`: segments,
//! a CRC32C per record, cut back to the checkpoint on open), so after any crash the log
//! holds each change once, in commit order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::event::SourceMessage;
use crate::journal::{Compression, Fsync, Journal, Retention, Settings};
use crate::metrics::AckLatency;
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
    /// `zstd`: records in compressed blocks of about 256 KiB (docs/log-format.md);
    /// `none`: one JSON record per line.
    #[serde(default = "default_compression")]
    pub compression: Compression,
}

fn default_compression() -> Compression {
    Compression::Zstd
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
            compression: self.compression,
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
    latency: Arc<AckLatency>,
    /// The changes written since the last flush, as runs of equal commit and read
    /// times (`Run`), for the ack latency once the flush is durable.
    runs: Vec<Run>,
    /// How many of `runs` end at or before the last transaction boundary (what the
    /// next flush covers; a rewind drops the rest).
    runs_committed: usize,
}

/// Changes in a row that share commit and read times (ms): one entry per run keeps
/// the latency bookkeeping a few bytes per transaction, not per change.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    commit_ms: u64,
    read_ms: u64,
    n: usize,
}

impl LogSink {
    /// Opens the log at `cursor`, cutting anything written past it.
    pub fn open(
        id: String,
        cfg: &LogSinkConfig,
        cursor: Option<serde_json::Value>,
    ) -> Result<Self, SinkError> {
        let latency = Arc::new(AckLatency::new(&id));
        Ok(LogSink {
            journal: Journal::open(id, &cfg.journal(), cursor)?,
            scratch: Vec::with_capacity(4096),
            dir: cfg.dir.clone(),
            retention: cfg.retention(),
            stored: None,
            latency,
            runs: Vec::new(),
            runs_committed: 0,
        })
    }

    fn append(&mut self, event: &crate::event::ChangeEvent) -> Result<(), SinkError> {
        self.scratch.clear();
        event.write_json(&mut self.scratch);
        self.journal.append_json(&self.scratch)?;
        // A run never reaches back over the last boundary (a rewind cuts there).
        let open = self.runs.len() > self.runs_committed;
        match self.runs.last_mut() {
            Some(r) if open && r.commit_ms == event.source_ts_ms && r.read_ms == event.ts_ms => {
                r.n += 1
            }
            _ => self.runs.push(Run {
                commit_ms: event.source_ts_ms,
                read_ms: event.ts_ms,
                n: 1,
            }),
        }
        Ok(())
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
                SourceMessage::Commit(_) => {
                    self.journal.mark_boundary();
                    self.runs_committed = self.runs.len();
                }
                SourceMessage::Rewind => {
                    self.journal.rewind()?;
                    self.runs.truncate(self.runs_committed);
                }
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
        let flushed = self.journal.flush().await?;
        // The segment of the cursor this flush stores (a compressed log's last block
        // reaches the file in the flush).
        self.stored = Some(self.journal.boundary_segment());
        // The changes up to the boundary are acknowledged once the flush is durable.
        let runs: Vec<Run> = self.runs.drain(..self.runs_committed).collect();
        self.runs_committed = 0;
        let latency = self.latency.clone();
        Ok(Box::pin(async move {
            let cursor = flushed.await?;
            let now = crate::event::now_ms();
            for r in runs {
                latency.record_many(now, r.commit_ms, r.read_ms, r.n);
            }
            Ok(Some(cursor))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{commit, insert, table};

    fn timed(m: SourceMessage, commit_ms: u64, read_ms: u64) -> SourceMessage {
        match m {
            SourceMessage::Change(mut e) => {
                e.source_ts_ms = commit_ms;
                e.ts_ms = read_ms;
                SourceMessage::Change(e)
            }
            other => other,
        }
    }

    #[tokio::test]
    async fn the_ack_latency_counts_each_flushed_change_once_and_none_a_rewind_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: LogSinkConfig =
            toml::from_str(&format!("dir = {:?}", dir.path().join("log"))).unwrap();
        let mut sink = LogSink::open("log:t".into(), &cfg, None).unwrap();
        let t = table("db.t", &[("id", "int")], 1);
        sink.accept(&[
            timed(insert(&t, 1, 10), 1000, 1001),
            timed(insert(&t, 2, 11), 1000, 1001),
            commit(12),
            // Rewound: its transaction comes again.
            timed(insert(&t, 3, 13), 2000, 2001),
            SourceMessage::Rewind,
            timed(insert(&t, 3, 13), 2000, 2002),
            commit(14),
            // After the last boundary: the next flush's.
            timed(insert(&t, 4, 15), 3000, 3001),
        ])
        .await
        .unwrap();
        assert_eq!(
            sink.runs,
            [
                Run {
                    commit_ms: 1000,
                    read_ms: 1001,
                    n: 2
                },
                Run {
                    commit_ms: 2000,
                    read_ms: 2002,
                    n: 1
                },
                Run {
                    commit_ms: 3000,
                    read_ms: 3001,
                    n: 1
                },
            ]
        );
        assert_eq!(sink.runs_committed, 2);
        sink.flush().await.unwrap().await.unwrap();
        assert_eq!(
            sink.runs,
            [Run {
                commit_ms: 3000,
                read_ms: 3001,
                n: 1
            }]
        );
        assert_eq!(sink.runs_committed, 0);
    }
}
