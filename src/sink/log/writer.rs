//! Appends records to segments; tracks the cursor at the last transaction boundary.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{list_segments, segment_name, Fsync, LogSinkConfig};
use crate::event::SourceMessage;
use crate::sink::{acked, Ack, Sink, SinkError};

/// A place in the log: segment index and byte length of that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

pub struct LogSink {
    id: String,
    dir: PathBuf,
    segment_bytes: u64,
    fsync: Fsync,
    out: BufWriter<File>,
    /// Where the next record goes.
    end: Cursor,
    /// The end of the last complete transaction.
    boundary: Cursor,
    /// The boundary the last flush made durable: a flush with nothing new since then
    /// needs no fsync (a quiet stream, like an empty quarantine, costs nothing).
    flushed: Cursor,
    /// Segments closed since the last flush, still to be fsynced.
    unsynced: Vec<PathBuf>,
    new_files: bool,
    scratch: Vec<u8>,
}

impl LogSink {
    /// Opens the log at `cursor`, cutting anything written past it.
    pub fn open(
        id: String,
        cfg: &LogSinkConfig,
        cursor: Option<serde_json::Value>,
    ) -> Result<Self, SinkError> {
        let dir = cfg.dir.clone();
        let err = |m: String| SinkError::new(&id, m);
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(format!("cannot create log dir {}: {e}", dir.display())))?;
        let segments =
            list_segments(&dir).map_err(|e| err(format!("cannot list {}: {e}", dir.display())))?;
        let cursor: Option<Cursor> = match cursor {
            Some(v) => Some(
                serde_json::from_value(v)
                    .map_err(|e| err(format!("stored cursor is corrupt: {e}")))?,
            ),
            None => None,
        };
        let start = match cursor {
            None if !segments.is_empty() => {
                return Err(err(format!(
                    "log dir {} already holds segments, but the state dir has no record of writing them; \
                     point [[sink]] dir at an empty directory or move the old segments away",
                    dir.display()
                )))
            }
            None => Cursor { segment: 0, offset: 0 },
            Some(c) => c,
        };
        // Cut everything past the checkpointed cursor.
        let mut cut = 0u64;
        for s in segments.iter().filter(|s| **s > start.segment) {
            let p = dir.join(segment_name(*s));
            cut += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&p)
                .map_err(|e| err(format!("cannot remove {}: {e}", p.display())))?;
        }
        let path = dir.join(segment_name(start.segment));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        if len < start.offset {
            return Err(err(format!(
                "segment {} is {len} bytes, but the checkpoint says {} bytes were written and synced: \
                 the log lost data outside tributary's control. Move the log dir away and re-snapshot, or reset the offsets",
                path.display(),
                start.offset
            )));
        }
        if len > start.offset {
            cut += len - start.offset;
            file.set_len(start.offset)
                .map_err(|e| err(format!("cannot truncate {}: {e}", path.display())))?;
            file.sync_all().map_err(|e| err(e.to_string()))?;
        }
        if cut > 0 {
            tracing::info!(sink = %id, bytes = cut, "cut log records written after the last checkpoint");
        }
        sync_dir(&dir).map_err(|e| err(e.to_string()))?;
        Ok(LogSink {
            id,
            dir,
            segment_bytes: cfg.segment_bytes,
            fsync: cfg.fsync,
            out: BufWriter::with_capacity(1 << 20, file),
            end: start,
            boundary: start,
            flushed: start,
            unsynced: Vec::new(),
            new_files: false,
            scratch: Vec::with_capacity(4096),
        })
    }

    fn err(&self, m: impl Into<String>) -> SinkError {
        SinkError::new(&self.id, m)
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        self.dir.join(segment_name(index))
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .map_err(|e| self.err(format!("write: {e}")))?;
        self.unsynced.push(self.segment_path(self.end.segment));
        let next = self.end.segment + 1;
        let path = self.segment_path(next);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.err(format!("cannot create {}: {e}", path.display())))?;
        self.out = BufWriter::with_capacity(1 << 20, file);
        self.end = Cursor {
            segment: next,
            offset: 0,
        };
        self.new_files = true;
        Ok(())
    }

    fn append(&mut self, event: &crate::event::ChangeEvent) -> Result<(), SinkError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        event.write_json(&mut scratch);
        let r = self.append_json(&scratch);
        self.scratch = scratch;
        r
    }

    /// Appends one record of any JSON (dead letters use it); one line, no newline.
    /// Appends `record` serialized as JSON (through `scratch`, reused by the caller).
    pub fn append_record<T: serde::Serialize>(
        &mut self,
        record: &T,
        scratch: &mut Vec<u8>,
    ) -> Result<(), SinkError> {
        scratch.clear();
        serde_json::to_writer(&mut *scratch, record).expect("writing to a Vec cannot fail");
        self.append_json(scratch)
    }

    pub fn append_json(&mut self, json: &[u8]) -> Result<(), SinkError> {
        let crc = crc32c::crc32c(json);
        let mut head = [0u8; 9];
        write_hex(crc, &mut head);
        head[8] = b' ';
        let w = &mut self.out;
        w.write_all(&head)
            .and_then(|_| w.write_all(json))
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| {
                SinkError::new(&self.id, format!("write to {}: {e}", self.dir.display()))
            })?;
        self.end.offset += json.len() as u64 + 10;
        if self.end.offset >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Everything appended so far belongs to complete units (for streams that are not
    /// fed `SourceMessage`s, like dead letters).
    pub fn mark_boundary(&mut self) {
        self.boundary = self.end;
    }

    /// Drops records after the last boundary (a transaction the source will resend).
    pub fn rewind(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .map_err(|e| self.err(format!("write: {e}")))?;
        for s in (self.boundary.segment + 1)..=self.end.segment {
            let p = self.segment_path(s);
            std::fs::remove_file(&p)
                .map_err(|e| self.err(format!("remove {}: {e}", p.display())))?;
            self.unsynced.retain(|u| u != &p);
        }
        let path = self.segment_path(self.boundary.segment);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| self.err(format!("open {}: {e}", path.display())))?;
        file.set_len(self.boundary.offset)
            .map_err(|e| self.err(format!("truncate {}: {e}", path.display())))?;
        self.out = BufWriter::with_capacity(1 << 20, file);
        self.end = self.boundary;
        Ok(())
    }
}

fn write_hex(v: u32, out: &mut [u8; 9]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in 0..8 {
        out[i] = HEX[((v >> (28 - 4 * i)) & 0xf) as usize];
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl Sink for LogSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        for m in batch {
            match m {
                SourceMessage::Change(e) => self.append(e)?,
                SourceMessage::Commit(_) => self.boundary = self.end,
                SourceMessage::Rewind => self.rewind()?,
                SourceMessage::Schema(_) | SourceMessage::SnapshotProgress(_) => {}
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<Ack, SinkError> {
        self.out
            .flush()
            .map_err(|e| self.err(format!("write: {e}")))?;
        let cursor = serde_json::to_value(self.boundary).expect("cursor serializes");
        let unchanged =
            self.boundary == self.flushed && self.unsynced.is_empty() && !self.new_files;
        self.flushed = self.boundary;
        if self.fsync == Fsync::Never || unchanged {
            self.unsynced.clear();
            self.new_files = false;
            return Ok(acked(Some(cursor)));
        }
        // fsync off the pipeline thread: later batches are written meanwhile, and the
        // checkpoint is stored only when this resolves.
        let mut files = Vec::new();
        for p in std::mem::take(&mut self.unsynced) {
            files.push((
                File::open(&p).map_err(|e| self.err(format!("open {}: {e}", p.display())))?,
                p,
            ));
        }
        let current = self
            .out
            .get_ref()
            .try_clone()
            .map_err(|e| self.err(e.to_string()))?;
        files.push((current, self.segment_path(self.end.segment)));
        let dir = std::mem::take(&mut self.new_files).then(|| self.dir.clone());
        let id = self.id.clone();
        Ok(Box::pin(async move {
            let synced = tokio::task::spawn_blocking(move || -> Result<(), String> {
                for (f, p) in files {
                    f.sync_data()
                        .map_err(|e| format!("fsync {}: {e}", p.display()))?;
                }
                if let Some(d) = dir {
                    sync_dir(&d).map_err(|e| format!("fsync {}: {e}", d.display()))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| SinkError::new(&id, format!("fsync task: {e}")))?;
            synced.map_err(|m| SinkError::new(&id, m))?;
            Ok(Some(cursor))
        }))
    }
}
