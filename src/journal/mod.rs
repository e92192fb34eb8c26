//! Journals: segmented append-only files of JSON records, a CRC32C per record. The
//! format of every stream tributary writes: the log sink's, the quarantine stream, and
//! the enrichment and Elasticsearch dead-letter streams.
//!
//! Record format, one per line: 8 lowercase hex digits of the CRC32C of the JSON, one
//! space, the JSON, `\n`; with `compression = "zstd"`, runs of such lines compressed as
//! blocks (`block`). Segments are `<index:020>.log` and rotate by size. A journal is
//! opened at the cursor stored with the last checkpoint and cuts everything past it,
//! so after any crash it holds each record once, in order. docs/log-format.md is the
//! specification for readers in other languages.

mod block;
mod reader;
mod retention;
mod writer;

pub use reader::{read_log, LogRecordError, Record, Tail};
pub use retention::Retention;
pub use writer::{Flushed, Journal, Settings};

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Segment size unless configured: 128 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;

/// A place in a journal: segment index and byte length of that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

impl Cursor {
    /// The cursor of an empty journal: storing it (then opening) empties the journal.
    pub fn empty() -> serde_json::Value {
        serde_json::to_value(Cursor {
            segment: 0,
            offset: 0,
        })
        .expect("a cursor serializes")
    }
}

/// When a journal's records reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// fsync before every checkpoint (survives power loss).
    #[default]
    Checkpoint,
    /// Leave it to the OS (survives a process crash, not a power loss).
    Never,
}

/// How a journal stores its records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// One record per line, readable with any text tool.
    #[default]
    None,
    /// Records in zstd-compressed blocks (`block`).
    Zstd,
}

/// A journal could not be written, named by its id.
#[derive(Debug, thiserror::Error)]
#[error("{stream}: {message}")]
pub struct JournalError {
    pub stream: String,
    pub message: String,
}

impl JournalError {
    pub fn new(stream: &str, message: impl Into<String>) -> Self {
        JournalError {
            stream: stream.to_string(),
            message: message.into(),
        }
    }
}

/// The file a journal writes once, when it is created, with the time (`created_ms`):
/// it has received every record since then (`reindex --from log:` tells by it
/// whether a log began before a table's snapshot).
const ORIGIN: &str = "origin.json";

/// Records that the journal in `dir` begins now.
pub(crate) fn write_origin(dir: &Path, mode: crate::files::FileMode) -> std::io::Result<()> {
    let body = serde_json::json!({ "created_ms": crate::event::now_ms() });
    mode.write_atomically(&dir.join(ORIGIN), body.to_string().as_bytes())
}

/// When the journal in `dir` was created (None for one an earlier release created).
pub fn created_ms(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(ORIGIN)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["created_ms"].as_u64()
}

/// A CRC-32C as the journal writes it: 8 lowercase hex digits (a record's and a
/// block's header).
fn crc_hex(v: u32) -> [u8; 8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| HEX[((v >> (28 - 4 * i)) & 0xf) as usize])
}

/// `00000000000000000007.log` for segment 7.
pub fn segment_name(index: u64) -> String {
    format!("{index:020}.log")
}

/// Segment indexes present in `dir`, sorted.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if stem.len() == 20 {
                if let Ok(i) = stem.parse() {
                    out.push(i);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}
