//! How a Kafka client reaches the brokers: the settings `[[sink]] kind = "kafka"` and
//! `[source] kind = "kafka"` share (brokers, TLS, SASL, other librdkafka settings).
//!
//! Both sections flatten `Connection` into themselves; the keys neither knows land in
//! `Unknown`, which `check_section` reports with their line (serde cannot deny unknown
//! fields through a flattened struct).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{ConfigError, PasswordSetting, Secret};

#[derive(Debug, Clone, Deserialize)]
pub struct Connection {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
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
    /// Any other librdkafka setting, as `"name" = "value"` (for example
    /// `"compression.type" = "zstd"`); the settings tributary sets itself win.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Longest wait for one answer of the brokers.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
}

/// The keys of a section that flattens `Connection` which no field took.
pub type Unknown = BTreeMap<String, toml::Value>;

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
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

impl Connection {
    /// What the settings alone can tell wrong, with `file:line` errors; `section` is
    /// `[[sink]]` or `[source]`, `unknown` the keys of the section nothing took.
    pub fn check_section(
        &self,
        section: &str,
        unknown: &Unknown,
        path: &Path,
        text: &str,
    ) -> Result<(), ConfigError> {
        let at = |key: &str, m: String| Err(ConfigError::at_key(path, text, key, &m));
        if let Some(k) = unknown.keys().next() {
            return at(
                k,
                format!("{section} kind = \"kafka\": unknown setting `{k}` (the README's Kafka section lists them)"),
            );
        }
        if self.brokers.is_empty() || self.brokers.iter().any(|b| !b.contains(':')) {
            return at(
                "brokers",
                format!("{section} brokers must list at least one broker as host:port"),
            );
        }
        if let Some(p) = &self.security_protocol {
            if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                .contains(&p.to_ascii_lowercase().as_str())
            {
                return at(
                    "security_protocol",
                    format!("{section} security_protocol `{p}`: use plaintext, ssl, sasl_plaintext or sasl_ssl"),
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
                        "{section} sasl_mechanism `{m}`: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    ),
                );
            }
            if self.username.is_none() {
                return at(
                    "sasl_mechanism",
                    format!("{section} sasl_mechanism is set but `username` is not"),
                );
            }
        }
        if let Some(k) = self.properties.keys().find(|k| OWN.contains(&k.as_str())) {
            return at(
                "properties",
                format!("{section} properties: `{k}` is set by tributary itself (see the README's Kafka section)"),
            );
        }
        Ok(())
    }

    /// `password`, `password_env`, `password_file`.
    pub fn password_setting(&self) -> PasswordSetting<'_> {
        PasswordSetting {
            password: self.password.as_ref(),
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        }
    }

    /// The password, resolved now (from its env var or file).
    pub fn secret(&self, section: &str) -> Result<Option<Secret>, String> {
        self.password_setting()
            .resolve(&format!("{section} kind = \"kafka\":"))
    }

    /// The longest wait for one answer of a command that reads the cluster (`check`,
    /// `status`): `request_timeout_secs`, at most 10 s.
    pub fn query_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.request_timeout_secs.clamp(1, 10))
    }

    /// The settings every client shares (producer, consumer, admin): brokers and
    /// security. `section` names the section in errors.
    pub fn client(&self, section: &str) -> Result<rdkafka::ClientConfig, String> {
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
            if let Some(pw) = self.secret(section)? {
                c.set("sasl.password", pw.expose());
            }
        }
        if let Some(ca) = &self.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        Ok(c)
    }

    /// The brokers, for messages.
    pub fn brokers(&self) -> String {
        self.brokers.join(", ")
    }
}

/// For `tributary check`: the cluster's metadata, when the brokers answer. Blocking:
/// run it off the async threads. A failure says what librdkafka saw last (a refused
/// login, a TLS handshake), not only that the metadata did not come.
pub fn reach(conn: &Connection, section: &str) -> Result<rdkafka::metadata::Metadata, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = conn.brokers();
    let consumer: BaseConsumer<LastError> = conn
        .client(section)?
        .set("allow.auto.create.topics", "false")
        // What the context keeps: librdkafka tells nothing below the `log` crate's
        // level, which is off in commands that print instead of logging.
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning)
        .create_with_context(LastError::default())
        .map_err(|e| format!("{brokers}: {e}"))?;
    consumer.fetch_metadata(None, conn.query_timeout()).map_err(|e| {
        // Errors wait in the client's queue until served.
        let _ = consumer.poll(std::time::Duration::from_millis(100));
        let seen = consumer.context().0.lock().expect("not poisoned").take();
        let mut m = format!(
            "cannot reach the Kafka brokers {brokers}: {}",
            super::errors::explain(&e)
        );
        if let Some(seen) = seen {
            m.push_str(&format!(" ({seen})"));
        }
        if conn.sasl_mechanism.is_some() || conn.security_protocol.is_some() {
            m.push_str("; if they are up, check security_protocol, sasl_mechanism, username and the password (password_env/password_file), and ca_file");
        }
        m
    })
}

/// A client context that keeps the last error librdkafka reported.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl rdkafka::ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(fac, message, "librdkafka");
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            *self.0.lock().expect("not poisoned") = Some(message.to_string());
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka");
        *self.0.lock().expect("not poisoned") = Some(reason.to_string());
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}
