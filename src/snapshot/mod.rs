//! Snapshots: the rows a table already holds, read in primary-key chunks while the
//! stream keeps running, and merged into it so that the stream plus the snapshot rows
//! equal the source at every checkpoint.
//!
//! What every source shares lives here: the settings, the progress stored with each
//! checkpoint, on-demand requests, and the stream side of the merge (`merge`). Each
//! source reads its chunks its own way and gives each chunk a *cut*: a stream position
//! the chunk's rows are consistent with (MariaDB/MySQL: the binlog position of a
//! consistent snapshot). The stream emits the chunk's rows once it has passed the cut,
//! leaving out the rows whose keys changed after the cut (the stream carried their newer
//! state already). Snapshot rows get the version of their cut, so versioned writes
//! order them correctly against streamed changes whichever arrives first.

pub mod merge;
pub mod progress;
pub mod reader;
pub mod requests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Value;

/// The id the progress is stored under, next to the sinks' cursors.
pub const STATE_ID: &str = "snapshot";

/// `[source] snapshot`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// On the first start (no checkpoint): snapshot every included table, then keep
    /// streaming (the two run together).
    #[default]
    Initial,
    /// Never on its own; `tributary snapshot --table` still works.
    Never,
    /// Like `initial`, and when the stored position is gone from the server (purged
    /// binlog, dropped slot): resume from the server's current position and snapshot
    /// every included table again as a *resync* (a `resync` event first, so consumers
    /// reset the table; the Elasticsearch sink fills a new index and swaps the alias),
    /// instead of stopping.
    WhenNeeded,
}

/// What a source reports when the server no longer has the stored position (`what`
/// names how: a purged binlog file, a dropped slot): a warning under `when_needed`,
/// which resyncs, else an error naming both ways out.
pub fn position_lost(mode: SnapshotMode, what: &str) -> Result<String, String> {
    if mode == SnapshotMode::WhenNeeded {
        Ok(format!(
            "{what}: the changes since are lost to the stream. [source] snapshot = \"when_needed\": resuming from the server's current position and resyncing every included table (a `resync` event, then a fresh snapshot; each Elasticsearch index is rebuilt beside the stream and swapped in)"
        ))
    } else {
        Err(format!(
            "{what}: the changes since are lost to the stream. Set [source] snapshot = \"when_needed\" to resync every included table by itself, or re-snapshot the tables and run `tributary offsets reset --connector <file>`"
        ))
    }
}

/// Checks `[source] snapshot_chunk_rows` and `snapshot_parallel_tables` (every source
/// has them): the key at fault and what to write instead.
pub fn check_settings(
    chunk_rows: u64,
    parallel_tables: usize,
) -> Result<(), (&'static str, &'static str)> {
    let must = "[source] snapshot_chunk_rows and snapshot_parallel_tables must be at least 1";
    if chunk_rows == 0 {
        return Err(("snapshot_chunk_rows", must));
    }
    if parallel_tables == 0 {
        return Err(("snapshot_parallel_tables", must));
    }
    Ok(())
}

pub fn default_chunk_rows() -> u64 {
    10_000
}

pub fn default_parallel_tables() -> usize {
    2
}

/// Where each table's snapshot stands; stored with every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub tables: BTreeMap<String, TableProgress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableProgress {
    pub status: Status,
    /// The key of the last row read (exact values): the next chunk starts after it.
    #[serde(default)]
    pub after: Option<Vec<Value>>,
    /// Rows emitted so far.
    #[serde(default)]
    pub rows: u64,
    /// The server's row estimate when the table started.
    #[serde(default)]
    pub estimate: u64,
    #[serde(default)]
    pub chunks: u64,
    /// The request this run answers (ms since the epoch; 0 for the initial snapshot).
    #[serde(default)]
    pub requested_ms: u64,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// A resync after a lost position: the stream shows a `resync` event of the table
    /// before its first chunk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
}

impl TableProgress {
    pub fn pending(requested_ms: u64) -> Self {
        TableProgress {
            status: Status::Pending,
            after: None,
            rows: 0,
            estimate: 0,
            chunks: 0,
            requested_ms,
            started_ms: None,
            finished_ms: None,
            resync: false,
        }
    }
}

impl State {
    pub fn from_stored(v: Option<serde_json::Value>) -> State {
        v.and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// Tables with a snapshot still to do, in name order.
    pub fn unfinished(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(_, p)| p.status != Status::Done)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Queues a table (a request, or the initial snapshot). A table already running
    /// for an older request starts over: its rows may predate whatever made the
    /// operator ask again.
    pub fn request(&mut self, table: &str, requested_ms: u64) -> bool {
        match self.tables.get(table) {
            Some(p) if p.requested_ms >= requested_ms => false,
            _ => {
                self.tables
                    .insert(table.to_string(), TableProgress::pending(requested_ms));
                true
            }
        }
    }
}

impl State {
    /// Queues every table again as a resync (the stream lost changes of each): what
    /// ran or finished before counts no more.
    pub fn resync(&mut self, tables: Vec<String>, requested_ms: u64) {
        self.tables.clear();
        for t in tables {
            let mut p = TableProgress::pending(requested_ms);
            p.resync = true;
            self.tables.insert(t, p);
        }
    }
}

/// For `tributary status`: each table's snapshot progress.
pub fn summary(state: &serde_json::Value) -> serde_json::Value {
    let state = State::from_stored(Some(state.clone()));
    state
        .tables
        .into_iter()
        .map(|(t, p)| {
            (
                t,
                serde_json::json!({
                    "status": p.status,
                    "rows": p.rows,
                    "estimate": p.estimate,
                    "chunks": p.chunks,
                    "started_ms": p.started_ms,
                    "finished_ms": p.finished_ms,
                    "resync": p.resync,
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}
