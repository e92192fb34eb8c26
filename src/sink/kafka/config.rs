//! `[[sink]] kind = "kafka"`: brokers, topic naming, topic creation, the transactional
//! producer's identity, and the client's security settings.

use std::path::Path;

use serde::Deserialize;

use crate::kafka::connection::Unknown;
use crate::kafka::Connection;
use crate::settings::ConfigError;

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSinkConfig {
    /// `kafka` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    /// Stable id (default `kafka:<first broker>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The topic of a table's changes: `{connector}`, `{db}` and `{table}` are replaced
    /// (Debezium's naming by default); a name without them is one topic for all.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The topic of a joined document's events: `{connector}` and `{document}`.
    #[serde(default = "default_document_topic")]
    pub document_topic: String,
    /// Where each Kafka transaction records the source position it ends at, so a
    /// restart knows what Kafka already holds (one partition, compacted; keyed by the
    /// transactional id, so connectors may share it).
    #[serde(default = "default_progress_topic")]
    pub progress_topic: String,
    /// Create missing topics (with `partitions` and `replication_factor`); false: a
    /// missing topic stops the sink with its name.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// A record with the deleted row's key and no value after each delete, so that a
    /// compacted topic forgets the row.
    #[serde(default)]
    pub tombstones: bool,
    /// The producer's `transactional.id` (default `tributary.<connector>`): one writer
    /// per id; a new one fences the old and aborts its open transaction.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Under a backlog, a Kafka transaction lasts at least this long: each checkpoint
    /// commits one, and a commit stalls the producer for a round trip to every
    /// partition written (caught up, it commits at once all the same).
    #[serde(default = "default_transaction_interval")]
    pub transaction_interval_ms: u64,
    /// Compression of the producer's record batches: `lz4` (default), `zstd`,
    /// `snappy`, `gzip` or `none` (a `compression.type` in `properties` wins). Every
    /// record of a layout repeats its `schema`
    /// header, which compression takes away: lz4 made the sink faster against the
    /// stand-in broker (less to send and store) for little CPU of ours.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Brokers and security (shared with the Kafka source).
    #[serde(flatten)]
    pub connection: Connection,
    /// Keys no field took (reported by `validate_section`).
    #[serde(flatten)]
    pub unknown: Unknown,
}

fn default_topic() -> String {
    "{connector}.{db}.{table}".into()
}

fn default_document_topic() -> String {
    "{connector}.{document}".into()
}

fn default_progress_topic() -> String {
    "tributary.progress".into()
}

/// The values `compression` takes (librdkafka's `compression.type`).
pub const COMPRESSIONS: [&str; 5] = ["lz4", "zstd", "snappy", "gzip", "none"];

fn default_compression() -> String {
    "lz4".into()
}

fn default_true() -> bool {
    true
}

fn default_transaction_interval() -> u64 {
    1000
}

fn default_partitions() -> i32 {
    6
}

fn default_replication_factor() -> i32 {
    1
}

impl KafkaSinkConfig {
    /// What the section alone can tell wrong, with `file:line` errors.
    pub fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, m: String| Err(ConfigError::at_key(path, text, key, &m));
        self.connection
            .check_section("[[sink]]", &self.unknown, path, text)?;
        for (key, template, allowed) in [
            ("topic", &self.topic, &["connector", "db", "table"][..]),
            (
                "document_topic",
                &self.document_topic,
                &["connector", "document"][..],
            ),
            ("progress_topic", &self.progress_topic, &[][..]),
        ] {
            if let Some(m) = template_problem(template, allowed) {
                return at(key, format!("[[sink]] {key}: {m}"));
            }
        }
        if !COMPRESSIONS.contains(&self.compression.as_str()) {
            return at(
                "compression",
                format!(
                    "[[sink]] compression must be one of {} (got \"{}\")",
                    COMPRESSIONS
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.compression
                ),
            );
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return at(
                if self.partitions < 1 {
                    "partitions"
                } else {
                    "replication_factor"
                },
                "[[sink]] partitions and replication_factor must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// The settings every client of this sink shares (producer, admin, the progress
    /// reader): brokers and security.
    pub fn client(&self) -> Result<rdkafka::ClientConfig, String> {
        self.connection.client("[[sink]]")
    }

    pub fn transactional_id(&self, connector: &str) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("tributary.{connector}"))
    }
}

/// Why `template` is not a usable topic name template (its `{placeholders}` must be
/// among `allowed`; the rest must be characters Kafka accepts).
fn template_problem(template: &str, allowed: &[&str]) -> Option<String> {
    let mut rest = template;
    let mut literal = String::new();
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Some(format!("`{template}` has a `{{` without its `}}`"));
        };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            return Some(if allowed.is_empty() {
                format!("`{template}` is a fixed name: no `{{{name}}}`")
            } else {
                format!(
                    "`{{{name}}}` is not one of {}",
                    allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
        rest = &rest[open + close + 1..];
    }
    literal.push_str(rest);
    if template.is_empty() {
        return Some("the name is empty".into());
    }
    literal
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| {
            format!(
                "`{template}`: Kafka topic names take letters, digits, `.`, `_` and `-`, not `{c}`"
            )
        })
}

/// Topic `template` with its placeholders filled in; characters Kafka does not take in
/// a topic name become `_`.
pub fn topic_name(template: &str, parts: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in parts {
        let clean: String = value
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        out = out.replace(&format!("{{{name}}}"), &clean);
    }
    out.truncate(249);
    out
}
