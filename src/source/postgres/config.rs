//! `[source] kind = "postgres"`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{ConfigError, PasswordSetting};
use crate::source::filter::TableFilter;
use crate::source::CommonSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    /// Local demos only: prefer `password_env` or `password_file`.
    #[serde(default)]
    pub password: Option<crate::settings::Secret>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// libpq's sslmode: disable, prefer, require, verify-ca, verify-full.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate (PEM) for verify-ca / verify-full; the bundled Mozilla roots
    /// otherwise.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) and its key, for servers that ask for one (`cert`
    /// authentication, or `clientcert=verify-ca` in pg_hba.conf).
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// The logical replication slot (pgoutput); created when missing. Default:
    /// `tributary_<connector name>` (lower case, other characters as `_`).
    #[serde(default)]
    pub slot: String,
    /// The publication listing the included tables; created when missing (never FOR
    /// ALL TABLES: that makes UPDATE/DELETE fail on the source's tables without a
    /// primary key or replica identity). Default: like `slot`.
    #[serde(default)]
    pub publication: String,
    /// `slot` or `publication` was left out and named after the connector (`check`
    /// says so).
    #[serde(skip)]
    pub derived_names: bool,
    /// `schema.table` globs.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Seconds between standby status updates (also when idle), so the server sees the
    /// confirmed position advance and releases WAL.
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_max_backoff")]
    pub max_reconnect_backoff_secs: u64,
    /// Startup warns when the slot holds back more WAL than this many megabytes.
    #[serde(default = "default_wal_warn_mb")]
    pub retained_wal_warn_mb: u64,
    /// `initial` (default), `never` or `when_needed`: see snapshot::SnapshotMode.
    #[serde(default)]
    pub snapshot: crate::snapshot::SnapshotMode,
    /// Rows per snapshot chunk (read in primary-key order).
    #[serde(default = "crate::snapshot::default_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// Tables snapshotted at once (one connection each).
    #[serde(default = "crate::snapshot::default_parallel_tables")]
    pub snapshot_parallel_tables: usize,
    /// Seconds between looks at the catalog for included tables created, dropped or
    /// renamed while streaming (PostgreSQL does not replicate DDL); 0: never.
    #[serde(default = "default_catalog_poll")]
    pub catalog_poll_secs: u64,
    /// Whether tributary adds a table the schema guard let in (`table_created =
    /// "allow"`) to the publication itself (`ALTER PUBLICATION ... ADD TABLE`, which
    /// needs ownership of both). When false, or when the server refuses, the table's
    /// snapshot waits, and says every try (at most every 30 s) which statement the
    /// owner should run.
    #[serde(default = "default_true")]
    pub alter_publication: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it (libpq's default).
    #[default]
    Prefer,
    /// TLS, without verifying the certificate.
    Require,
    /// TLS, certificate signed by `sslrootcert` (or a system root).
    VerifyCa,
    /// verify-ca, and the certificate names `host`.
    VerifyFull,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_status_interval() -> u64 {
    10
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_backoff() -> u64 {
    30
}
fn default_wal_warn_mb() -> u64 {
    1024
}
fn default_catalog_poll() -> u64 {
    30
}
fn default_true() -> bool {
    true
}

/// `tributary_<name>` as a slot or publication name: lower case, any other character
/// as `_`, at most 63 bytes.
pub fn default_name(connector: &str) -> String {
    let mut out = String::from("tributary_");
    out.extend(connector.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        }
    }));
    out.truncate(63);
    out
}

impl PostgresSourceConfig {
    pub(crate) fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, msg: String| Err(ConfigError::at_key(path, text, key, msg));
        for (key, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            if !valid_identifier(name) {
                return at(
                    key,
                    format!(
                        "[source] {key} `{name}` must be 1-63 lower-case letters, digits or underscores (a PostgreSQL {key} name)"
                    ),
                );
            }
        }
        if self.status_interval_secs == 0 || self.status_interval_secs > 3600 {
            return at(
                "status_interval_secs",
                "[source] status_interval_secs must be between 1 and 3600".into(),
            );
        }
        if self.sslrootcert.is_some()
            && !matches!(self.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        {
            return at(
                "sslrootcert",
                "[source] sslrootcert is only used with sslmode = \"verify-ca\" or \"verify-full\""
                    .into(),
            );
        }
        if self.sslcert.is_some() != self.sslkey.is_some() {
            let key = if self.sslcert.is_some() {
                "sslcert"
            } else {
                "sslkey"
            };
            return at(
                key,
                "[source] sslcert and sslkey go together (the client certificate and its key)"
                    .into(),
            );
        }
        if self.sslcert.is_some() && self.sslmode == SslMode::Disable {
            return at(
                "sslcert",
                "[source] sslcert is set but sslmode = \"disable\"".into(),
            );
        }
        self.validate_common(path, text)
    }

    /// `host:port/database`, for messages (never includes credentials).
    pub fn address(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }
}

impl CommonSettings for PostgresSourceConfig {
    fn password_setting(&self) -> PasswordSetting<'_> {
        PasswordSetting {
            password: self.password.as_ref(),
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        }
    }

    fn table_filter(&self) -> Result<TableFilter, String> {
        TableFilter::postgres(&self.include, &self.exclude)
    }

    fn snapshot_fields(&self) -> (crate::snapshot::SnapshotMode, u64, usize) {
        (
            self.snapshot,
            self.snapshot_chunk_rows,
            self.snapshot_parallel_tables,
        )
    }
}

/// Slot and publication names: what PostgreSQL accepts unquoted, so they can be
/// written into replication commands as they are.
fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::valid_identifier;

    #[test]
    fn slot_names() {
        assert!(valid_identifier("tributary_orders"));
        assert!(!valid_identifier("Orders"));
        assert!(!valid_identifier("a-b"));
        assert!(!valid_identifier("1abc"));
        assert!(!valid_identifier(""));
        assert!(!valid_identifier(&"a".repeat(64)));
    }
}
