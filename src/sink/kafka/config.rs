//! `[[sink]] kind = "kafka"`: brokers, topic naming, topic creation, the transactional
//! producer's identity, and the client's security settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{ConfigError, PasswordSetting, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `kafka` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    /// Stable id (default `kafka:<first broker>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
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
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with `username` and a password
    /// from `password_env`, `password_file` or `password`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the brokers' certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Any other librdkafka producer setting, as `"name" = "value"` (for example
    /// `"compression.type" = "zstd"`); the settings above win.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Longest wait for one answer of the brokers (a transaction's commit is retried
    /// after it while the brokers are away).
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
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

fn default_true() -> bool {
    true
}

fn default_partitions() -> i32 {
    6
}

fn default_replication_factor() -> i32 {
    1
}

fn default_timeout() -> u64 {
    30
}

/// Settings tributary sets itself: a `properties` entry may not change them.
const OWN: &[&str] = &[
    "bootstrap.servers",
    "transactional.id",
    "enable.idempotence",
    "partitioner",
    "isolation.level",
];

impl KafkaSinkConfig {
    /// What the section alone can tell wrong, with `file:line` errors.
    pub fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, m: String| Err(ConfigError::at_key(path, text, key, &m));
        if self.brokers.is_empty() || self.brokers.iter().any(|b| !b.contains(':')) {
            return at(
                "brokers",
                "[[sink]] brokers must list at least one broker as host:port".into(),
            );
        }
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
        if let Some(p) = &self.security_protocol {
            if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                .contains(&p.to_ascii_lowercase().as_str())
            {
                return at(
                    "security_protocol",
                    format!("[[sink]] security_protocol `{p}`: use plaintext, ssl, sasl_plaintext or sasl_ssl"),
                );
            }
        }
        if let Some(m) = &self.sasl_mechanism {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                .contains(&m.to_ascii_uppercase().as_str())
            {
                return at(
                    "sasl_mechanism",
                    format!(
                        "[[sink]] sasl_mechanism `{m}`: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    ),
                );
            }
            if self.username.is_none() {
                return at(
                    "sasl_mechanism",
                    "[[sink]] sasl_mechanism is set but `username` is not".into(),
                );
            }
        }
        if let Some(k) = self.properties.keys().find(|k| OWN.contains(&k.as_str())) {
            return at(
                "properties",
                format!("[[sink]] properties: `{k}` is set by tributary itself (see the README's Kafka section)"),
            );
        }
        Ok(())
    }

    /// The password, resolved now (from its env var or file).
    pub fn secret(&self) -> Result<Option<Secret>, String> {
        PasswordSetting {
            password: self.password.as_ref(),
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        }
        .resolve("[[sink]] kind = \"kafka\":")
    }

    /// The settings every client of this sink shares (producer, admin, the progress
    /// reader): brokers and security.
    pub fn client(&self) -> Result<rdkafka::ClientConfig, String> {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", self.brokers.join(","));
        c.set(
            "socket.timeout.ms",
            (self.request_timeout_secs * 1000).to_string(),
        );
        if let Some(p) = &self.security_protocol {
            c.set("security.protocol", p.to_ascii_lowercase());
        }
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m.to_ascii_uppercase());
            c.set("sasl.username", self.username.clone().unwrap_or_default());
            if let Some(pw) = self.secret()? {
                c.set("sasl.password", pw.expose());
            }
        }
        if let Some(ca) = &self.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        Ok(c)
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
