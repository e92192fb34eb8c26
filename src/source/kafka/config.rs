//! `[source] kind = "kafka"`: a worker of a consumer group reading the topics a Kafka
//! sink writes.

use std::path::Path;

use serde::Deserialize;

use crate::kafka::connection::Unknown;
use crate::kafka::Connection;
use crate::settings::{ConfigError, PasswordSetting};
use crate::snapshot::SnapshotMode;
use crate::source::filter::TableFilter;
use crate::source::CommonSettings;

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSourceConfig {
    /// `kafka` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    /// The consumer group: the workers of one group share the topics' partitions, each
    /// partition read by one of them at a time.
    pub group: String,
    /// Topic names, or one regular expression starting with `^` (librdkafka's
    /// convention) that also takes topics created later.
    pub topics: Vec<String>,
    /// `db.table` globs of the records to take (default all); the others are skipped.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Records between two boundaries the worker hands the pipeline (its checkpoints
    /// fall on them).
    #[serde(default = "default_boundary_records")]
    pub boundary_records: usize,
    /// Brokers and security (shared with the Kafka sink).
    #[serde(flatten)]
    pub connection: Connection,
    /// Keys no field took (reported by `validate_section`).
    #[serde(flatten)]
    pub unknown: Unknown,
}

fn default_boundary_records() -> usize {
    1000
}

impl KafkaSourceConfig {
    pub fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, m: String| Err(ConfigError::at_key(path, text, key, &m));
        self.connection
            .check_section("[source]", &self.unknown, path, text)?;
        if self.group.trim().is_empty() {
            return at(
                "group",
                "[source] group must name the consumer group".into(),
            );
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return at(
                "topics",
                "[source] topics must list topic names, or one regular expression starting with `^`".into(),
            );
        }
        if self.topics.len() > 1 && self.topics.iter().any(|t| t.starts_with('^')) {
            return at(
                "topics",
                "[source] topics: a regular expression (`^...`) stands alone; list names or give one pattern".into(),
            );
        }
        if let Err(e) = self.pattern() {
            return at(
                "topics",
                format!("[source] topics: `{}`: {e}", self.topics[0]),
            );
        }
        if self.boundary_records == 0 {
            return at(
                "boundary_records",
                "[source] boundary_records must be at least 1".into(),
            );
        }
        self.validate_common(path, text)
    }

    /// The topic pattern, when `topics` is one regular expression (`^...`) rather
    /// than names.
    pub fn pattern(&self) -> Result<Option<regex::Regex>, regex::Error> {
        match self.topics.first() {
            Some(p) if p.starts_with('^') => regex::Regex::new(p).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the worker reads `topic` (its name is listed, or the pattern matches).
    pub fn reads(&self, pattern: Option<&regex::Regex>, topic: &str) -> bool {
        match pattern {
            Some(re) => re.is_match(topic),
            None => self.topics.iter().any(|t| t == topic),
        }
    }

    /// `host:port` of the brokers, for messages.
    pub fn address(&self) -> String {
        self.connection.brokers.join(",")
    }
}

impl CommonSettings for KafkaSourceConfig {
    fn password_setting(&self) -> PasswordSetting<'_> {
        self.connection.password_setting()
    }

    fn table_filter(&self) -> Result<TableFilter, String> {
        TableFilter::new(&self.include, &self.exclude)
    }

    /// A worker reads what the topics hold: there is no table to snapshot.
    fn snapshot_fields(&self) -> (SnapshotMode, u64, usize) {
        (
            SnapshotMode::Never,
            crate::snapshot::default_chunk_rows(),
            crate::snapshot::default_parallel_tables(),
        )
    }
}
