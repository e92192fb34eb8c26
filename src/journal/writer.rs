//! Appends records to segments; tracks the cursor at the last transaction boundary.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;

use super::{list_segments, segment_name, Cursor, Fsync, JournalError};
use crate::files::FileMode;

/// A flush's acknowledgement: the cursor at the last boundary (as stored JSON), once
/// durable.
pub type Flushed = BoxFuture<'static, Result<serde_json::Value, JournalError>>;

/// Where a journal lives and how it writes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    /// Rotate to a new segment after this many bytes.
    pub segment_bytes: u64,
    pub fsync: Fsync,
    /// Of the segments; the directory gets the matching search bits.
    pub file_mode: FileMode,
}

impl Settings {
    /// A journal in `dir` with the defaults (streams tributary keeps for itself), its
    /// files written with `file_mode`.
    pub fn at(dir: &Path, file_mode: FileMode) -> Self {
        Settings {
            dir: dir.to_path_buf(),
            segment_bytes: super::DEFAULT_SEGMENT_BYTES,
            fsync: Fsync::Checkpoint,
            file_mode,
        }
    }
}

/// The writing end of a journal.
pub struct Journal {
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
    file_mode: FileMode,
}

impl Journal {
    /// Opens the journal at `cursor`, cutting anything written past it. `id` names it
    /// in errors and logs.
    pub fn open(
        id: String,
        cfg: &Settings,
        cursor: Option<serde_json::Value>,
    ) -> Result<Self, JournalError> {
        let dir = cfg.dir.clone();
        let err = |m: String| JournalError::new(&id, m);
        cfg.file_mode
            .create_dir_all(&dir)
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
            None => {
                super::write_origin(&dir, cfg.file_mode).map_err(|e| {
                    err(format!("cannot write {}: {e}", dir.join("origin.json").display()))
                })?;
                Cursor { segment: 0, offset: 0 }
            }
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
        let file = cfg
            .file_mode
            .options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
        // A segment an earlier release wrote gets the mode too.
        cfg.file_mode
            .apply(&file)
            .map_err(|e| err(format!("cannot set the mode of {}: {e}", path.display())))?;
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
        Ok(Journal {
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
            file_mode: cfg.file_mode,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The segment the next flush's cursor will be in.
    pub fn boundary_segment(&self) -> u64 {
        self.boundary.segment
    }

    fn err(&self, m: impl Into<String>) -> JournalError {
        JournalError::new(&self.id, m)
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        self.dir.join(segment_name(index))
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.out
            .flush()
            .map_err(|e| self.err(format!("write: {e}")))?;
        self.unsynced.push(self.segment_path(self.end.segment));
        let next = self.end.segment + 1;
        let path = self.segment_path(next);
        let file = self
            .file_mode
            .options()
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

    /// Appends `record` serialized as JSON (through `scratch`, reused by the caller).
    pub fn append_record<T: serde::Serialize>(
        &mut self,
        record: &T,
        scratch: &mut Vec<u8>,
    ) -> Result<(), JournalError> {
        scratch.clear();
        serde_json::to_writer(&mut *scratch, record).expect("writing to a Vec cannot fail");
        self.append_json(scratch)
    }

    /// Appends one record of JSON text: one line, no newline in it.
    pub fn append_json(&mut self, json: &[u8]) -> Result<(), JournalError> {
        let crc = crc32c::crc32c(json);
        let mut head = [0u8; 9];
        write_hex(crc, &mut head);
        head[8] = b' ';
        let w = &mut self.out;
        w.write_all(&head)
            .and_then(|_| w.write_all(json))
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| {
                JournalError::new(&self.id, format!("write to {}: {e}", self.dir.display()))
            })?;
        self.end.offset += json.len() as u64 + 10;
        if self.end.offset >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Everything appended so far belongs to complete units (a transaction boundary).
    pub fn mark_boundary(&mut self) {
        self.boundary = self.end;
    }

    /// Drops records after the last boundary (a transaction the source will resend).
    pub fn rewind(&mut self) -> Result<(), JournalError> {
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

impl Journal {
    /// Hands everything up to the last boundary to the OS; resolves with the cursor
    /// there once durable (fsynced, unless `fsync = never`). Records appended after
    /// this call are not covered.
    pub async fn flush(&mut self) -> Result<Flushed, JournalError> {
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
            return Ok(Box::pin(std::future::ready(Ok(cursor))));
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
            .map_err(|e| JournalError::new(&id, format!("fsync task: {e}")))?;
            synced.map_err(|m| JournalError::new(&id, m))?;
            Ok(cursor)
        }))
    }
}
