//! Appends records to segments; tracks the cursor at the last transaction boundary.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;

use super::block::{Compressor, BLOCK_BYTES};
use super::{list_segments, segment_name, Compression, Cursor, Fsync, JournalError};
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
    pub compression: Compression,
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
            compression: Compression::None,
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
    /// With compression: the record lines not in a block yet, and how many of their
    /// bytes end at the last boundary (None: the boundary is on disk, at `boundary`).
    /// A block ends at a boundary when it holds one, so that every boundary (what a
    /// flush stores, what a rewind goes back to) is at a block's end or in `pending`.
    blocks: Option<Blocks>,
}

struct Blocks {
    compressor: Compressor,
    pending: Vec<u8>,
    pending_boundary: Option<usize>,
    /// A block given to the compressor and not written yet: whether it ends at the
    /// last boundary.
    in_flight: Option<bool>,
    /// A buffer of records the compressor gave back, for the next pending records.
    spare: Vec<u8>,
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
        let blocks = match cfg.compression {
            Compression::None => None,
            Compression::Zstd => Some(Blocks {
                compressor: Compressor::new()
                    .map_err(|e| err(format!("cannot start zstd: {e}")))?,
                pending: Vec::with_capacity(BLOCK_BYTES + (64 << 10)),
                pending_boundary: None,
                in_flight: None,
                spare: Vec::new(),
            }),
        };
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
            blocks,
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
        head[..8].copy_from_slice(&super::crc_hex(crc));
        head[8] = b' ';
        if let Some(b) = &mut self.blocks {
            b.pending.extend_from_slice(&head);
            b.pending.extend_from_slice(json);
            b.pending.push(b'\n');
            if b.pending.len() >= BLOCK_BYTES {
                // Up to the boundary in it, if there is one: the rest of that
                // transaction waits for the next block.
                let upto = b.pending_boundary.unwrap_or(usize::MAX);
                self.write_block(upto)?;
            }
            return Ok(());
        }
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

    /// Gives the first `upto` bytes of the pending records (all of them when `upto`
    /// is past their end) to the compressor, once the block before is written.
    fn write_block(&mut self, upto: usize) -> Result<(), JournalError> {
        self.finish_block()?;
        let Some(b) = &mut self.blocks else {
            return Ok(());
        };
        let upto = upto.min(b.pending.len());
        if upto == 0 {
            return Ok(());
        }
        // The records after `upto` go on in the spare buffer; the block's records move.
        let mut next = std::mem::take(&mut b.spare);
        next.extend_from_slice(&b.pending[upto..]);
        b.pending.truncate(upto);
        let records = std::mem::replace(&mut b.pending, next);
        let at_boundary = match b.pending_boundary.take() {
            Some(at) if at == upto => true,
            // Callers write up to the boundary or, without one, everything.
            Some(at) => unreachable!("a block past the boundary at {at} of {upto}"),
            None => false,
        };
        b.compressor
            .give(records)
            .map_err(|e| JournalError::new(&self.id, format!("zstd: {e}")))?;
        b.in_flight = Some(at_boundary);
        Ok(())
    }

    /// Writes the block the compressor is working on, if any (waiting for it).
    fn finish_block(&mut self) -> Result<(), JournalError> {
        let Some(b) = &mut self.blocks else {
            return Ok(());
        };
        let Some(at_boundary) = b.in_flight.take() else {
            return Ok(());
        };
        let (block, mut records) = b
            .compressor
            .take()
            .map_err(|e| JournalError::new(&self.id, format!("zstd: {e}")))?;
        records.clear();
        b.spare = records;
        self.out.write_all(&block).map_err(|e| {
            JournalError::new(&self.id, format!("write to {}: {e}", self.dir.display()))
        })?;
        self.end.offset += block.len() as u64;
        if at_boundary {
            // The block ends at the boundary: it is on disk now.
            self.boundary = self.end;
        }
        if self.end.offset >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Everything appended so far belongs to complete units (a transaction boundary).
    pub fn mark_boundary(&mut self) {
        match &mut self.blocks {
            Some(b) if !b.pending.is_empty() => b.pending_boundary = Some(b.pending.len()),
            // At the end of the block being compressed.
            Some(b) if b.in_flight.is_some() => b.in_flight = Some(true),
            _ => self.boundary = self.end,
        }
    }

    /// Drops records after the last boundary (a transaction the source will resend).
    pub fn rewind(&mut self) -> Result<(), JournalError> {
        self.finish_block()?;
        if let Some(b) = &mut self.blocks {
            match b.pending_boundary {
                // Nothing after the boundary reached the disk.
                Some(at) => {
                    b.pending.truncate(at);
                    return Ok(());
                }
                None => b.pending.clear(),
            }
        }
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

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Hands everything up to the last boundary to the OS; resolves with the cursor
    /// there once durable (fsynced, unless `fsync = never`). Records appended after
    /// this call are not covered.
    pub async fn flush(&mut self) -> Result<Flushed, JournalError> {
        if let Some(at) = self.blocks.as_ref().and_then(|b| b.pending_boundary) {
            self.write_block(at)?;
        }
        self.finish_block()?;
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

#[cfg(test)]
mod tests {
    use super::super::{read_log, Tail};
    use super::*;

    /// Appends transaction `t` of `n` records (`{"t":t,"i":i}`, padded so that a large
    /// transaction passes a block's size), its boundary marked when `commit`.
    fn transaction(j: &mut Journal, t: u64, n: u64, commit: bool, kept: &mut Vec<String>) {
        for i in 0..n {
            let json = format!("{{\"t\":{t},\"i\":{i},\"pad\":\"{:0>80}\"}}", t * i);
            j.append_json(json.as_bytes()).unwrap();
            kept.push(json);
        }
        if commit {
            j.mark_boundary();
        }
    }

    fn records(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        read_log(dir, |r| {
            out.push(r.json);
            true
        })
        .unwrap();
        out
    }

    /// Both forms hold exactly the committed records after rewinds (of records still
    /// gathering and of a block already written), after a crash past the checkpoint
    /// (a block written after it), and across rotations.
    #[tokio::test]
    async fn every_committed_record_once_through_rewinds_crashes_and_rotations() {
        for compression in [Compression::None, Compression::Zstd] {
            let tmp = tempfile::tempdir().unwrap();
            let cfg = Settings {
                segment_bytes: 64 << 10,
                compression,
                ..Settings::at(&tmp.path().join("log"), FileMode::default())
            };
            let mut want = Vec::new();
            let mut gone = Vec::new();
            let mut j = Journal::open("t".into(), &cfg, None).unwrap();
            transaction(&mut j, 1, 5, true, &mut want);
            // Larger than a block: written in blocks before its boundary.
            transaction(&mut j, 2, 3000, true, &mut want);
            transaction(&mut j, 3, 3, false, &mut gone);
            j.rewind().unwrap();
            // A rewind of a transaction that already reached the disk in blocks.
            transaction(&mut j, 4, 3000, false, &mut gone);
            j.rewind().unwrap();
            transaction(&mut j, 5, 2, true, &mut want);
            let cursor = j.flush().await.unwrap().await.unwrap();
            assert_eq!(records(&cfg.dir), want, "{compression:?}");
            // Written after the checkpoint, then a crash: cut on open.
            transaction(&mut j, 6, 10, true, &mut gone);
            transaction(&mut j, 7, 3000, false, &mut gone);
            drop(j);
            let mut j = Journal::open("t".into(), &cfg, Some(cursor)).unwrap();
            assert_eq!(records(&cfg.dir), want, "{compression:?}");
            transaction(&mut j, 8, 4, true, &mut want);
            j.flush().await.unwrap().await.unwrap();
            let segments = list_segments(&cfg.dir).unwrap();
            assert_eq!(records(&cfg.dir), want, "{compression:?}");
            match compression {
                Compression::None => assert!(segments.len() > 3, "{segments:?}"),
                // 25x smaller: the same records fit one segment.
                Compression::Zstd => {
                    let bytes: u64 = segments
                        .iter()
                        .map(|s| {
                            std::fs::metadata(cfg.dir.join(segment_name(*s)))
                                .unwrap()
                                .len()
                        })
                        .sum();
                    let plain: usize = want.iter().map(|r| r.len() + 10).sum();
                    assert!(bytes * 5 < plain as u64, "{bytes} bytes for {plain}");
                }
            }
        }
    }

    /// A boundary right after a block went to the compressor (nothing pending) is at
    /// that block's end: the checkpoint keeps it, and what follows is cut.
    #[tokio::test]
    async fn a_boundary_after_a_whole_block_is_that_blocks_end() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Settings {
            compression: Compression::Zstd,
            ..Settings::at(&tmp.path().join("log"), FileMode::default())
        };
        let big = |c: char| format!("{{\"pad\":\"{}\"}}", c.to_string().repeat(BLOCK_BYTES));
        let mut j = Journal::open("t".into(), &cfg, None).unwrap();
        j.append_json(big('a').as_bytes()).unwrap();
        assert!(
            j.blocks.as_ref().unwrap().pending.is_empty(),
            "given to the compressor"
        );
        j.mark_boundary();
        let cursor = j.flush().await.unwrap().await.unwrap();
        j.append_json(big('b').as_bytes()).unwrap();
        j.append_json(b"{\"c\":1}").unwrap();
        drop(j);
        let j = Journal::open("t".into(), &cfg, Some(cursor)).unwrap();
        assert_eq!(records(&cfg.dir), [big('a')]);
        drop(j);
    }

    /// A follower of a compressed log gets every record once, in order, as blocks
    /// arrive, and the positions `read_log` gives.
    #[tokio::test]
    async fn a_follower_reads_blocks_as_they_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Settings {
            segment_bytes: 32 << 10,
            compression: Compression::Zstd,
            ..Settings::at(&tmp.path().join("log"), FileMode::default())
        };
        let mut j = Journal::open("t".into(), &cfg, None).unwrap();
        let mut tail = Tail::new(&cfg.dir, None);
        let mut seen = Vec::new();
        let mut want = Vec::new();
        for t in 0..20 {
            transaction(&mut j, t, 1 + t * 200, true, &mut want);
            j.flush().await.unwrap().await.unwrap();
            while let Some(r) = tail.poll().unwrap() {
                seen.push((r.segment, r.line, r.json));
            }
            assert_eq!(seen.len(), want.len());
        }
        let mut listed = Vec::new();
        read_log(&cfg.dir, |r| {
            listed.push((r.segment, r.line, r.json));
            true
        })
        .unwrap();
        assert_eq!(seen, listed);
        assert!(listed.last().unwrap().0 > 0, "rotated");
        // Resuming after a record in the middle of a block.
        let (s, l, _) = &listed[1000];
        let mut resumed = Tail::new(&cfg.dir, Some((*s, *l)));
        let mut rest = Vec::new();
        while let Some(r) = resumed.poll().unwrap() {
            rest.push((r.segment, r.line, r.json));
        }
        assert_eq!(rest, listed[1001..]);
    }
}
