//! The quarantine stream: where a quarantined table's events wait for
//! `tributary quarantine replay`.
//!
//! A journal (the segment format of every stream, CRC per record) under
//! `[schema] quarantine_dir` (default `<state dir>/quarantine`). Its cursor is stored
//! with every checkpoint like a sink's, so after a crash it holds each quarantined
//! change once, exactly as the other sinks hold the rest. Records keep the events in
//! their exact form (`event::stored`), so a replay hands the sinks the same values the
//! live stream would have.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::stored::StoredEvent;
use crate::event::{ChangeEvent, PerSchema};
use crate::journal::{read_log, Cursor, Flushed, Journal, JournalError, LogRecordError, Settings};

/// The id its cursor is stored under, next to the sinks' cursors.
pub const STREAM_ID: &str = "quarantine";

/// One quarantined change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The table's quarantine epoch (see `guard::Quarantined`).
    pub epoch: u64,
    pub event: StoredEvent,
}

pub struct QuarantineStream {
    log: Journal,
    counters: PerSchema<metrics::Counter>,
    scratch: Vec<u8>,
}

impl QuarantineStream {
    /// Opens the stream in `dir` at its stored cursor, cutting what was written after
    /// the last checkpoint (the source sends it again).
    pub fn open(at: &Settings, cursor: Option<serde_json::Value>) -> Result<Self, JournalError> {
        Ok(QuarantineStream {
            log: Journal::open(STREAM_ID.to_string(), at, cursor)?,
            counters: PerSchema::default(),
            scratch: Vec::with_capacity(4096),
        })
    }

    /// The cursor of an empty stream: storing it (then opening) empties the stream.
    pub fn empty_cursor() -> serde_json::Value {
        Cursor::empty()
    }

    pub fn append(&mut self, epoch: u64, e: &ChangeEvent) -> Result<(), JournalError> {
        let record = QuarantineRecord {
            epoch,
            event: StoredEvent::from_event(e),
        };
        self.log.append_record(&record, &mut self.scratch)?;
        self.counters
            .get_or_insert_with(&e.table, || {
                crate::metrics::quarantined(&e.table.qualified_name())
            })
            .increment(1);
        Ok(())
    }

    /// A transaction boundary: what was appended belongs to the next checkpoint.
    pub fn commit(&mut self) {
        self.log.mark_boundary();
    }

    /// Drops what was appended after the last boundary.
    pub fn rewind(&mut self) -> Result<(), JournalError> {
        self.log.rewind()
    }

    /// Like a sink's flush: the cursor at the last boundary, once durable.
    pub async fn flush(&mut self) -> Result<Flushed, JournalError> {
        self.log.flush().await
    }
}

/// Calls `f` with every record in `dir`, in order, until it returns false.
pub fn read_records(
    dir: &Path,
    mut f: impl FnMut(QuarantineRecord) -> bool,
) -> Result<u64, LogRecordError> {
    let mut bad = None;
    let n = read_log(dir, |r| {
        match serde_json::from_str::<QuarantineRecord>(&r.json) {
            Ok(q) => f(q),
            Err(e) => {
                bad = Some(LogRecordError::Corrupt {
                    path: dir.join(crate::journal::segment_name(r.segment)),
                    line: r.line,
                    message: format!("not a quarantine record: {e}"),
                });
                false
            }
        }
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(n),
    }
}
