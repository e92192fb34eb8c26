//! Log stream sink: segmented append-only files of JSON lines, a CRC32C per record.
//!
//! Record format, one per line: 8 lowercase hex digits of the CRC32C of the JSON, one
//! space, the JSON event, `\n`. Segments are `<index:020>.log` and rotate by size.
//! On open the sink cuts everything past the cursor stored with the last checkpoint, so
//! after any crash the log holds each change once, in commit order.

mod reader;
mod writer;

pub use reader::{read_log, LogRecordError, Record};
pub use writer::{Cursor, LogSink};

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    #[default]
    Checkpoint,
    Never,
}

fn default_segment_bytes() -> u64 {
    128 << 20
}

impl LogSinkConfig {
    /// A stream in `dir` with the defaults (streams tributary keeps for itself).
    pub fn at(dir: &Path) -> Self {
        LogSinkConfig {
            kind: "log".into(),
            dir: dir.to_path_buf(),
            name: None,
            segment_bytes: default_segment_bytes(),
            fsync: Fsync::Checkpoint,
        }
    }

    pub(crate) fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
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
