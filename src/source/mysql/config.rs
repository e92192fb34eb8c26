//! `[source] kind = "mariadb" | "mysql"`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{ConfigError, PasswordSetting};
use crate::source::filter::TableFilter;
use crate::source::CommonSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// `mariadb` or `mysql` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// Local demos only: prefer `password_env` or `password_file`.
    #[serde(default)]
    pub password: Option<crate::settings::Secret>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Replica server id; must be unique among the server's replicas.
    pub server_id: u32,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start when there is no checkpoint.
    #[serde(default)]
    pub start: StartFrom,
    /// How to resume from a checkpoint.
    #[serde(default)]
    pub resume: ResumeBy,
    /// Seconds of silence after which the server sends a heartbeat; three missed
    /// heartbeats mean the connection is dead and the source reconnects.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_max_backoff")]
    pub max_reconnect_backoff_secs: u64,
    /// `initial` (default), `never` or `when_needed`: see snapshot::SnapshotMode.
    #[serde(default)]
    pub snapshot: crate::snapshot::SnapshotMode,
    /// Rows per snapshot chunk (read in primary-key order).
    #[serde(default = "crate::snapshot::default_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// Tables snapshotted at once (one connection each).
    #[serde(default = "crate::snapshot::default_parallel_tables")]
    pub snapshot_parallel_tables: usize,
    /// TLS (see `tls`): `disabled`, `preferred` (default), `required`, `verify_ca`,
    /// `verify_identity`.
    #[serde(default)]
    pub ssl_mode: super::tls::SslMode,
    #[serde(default)]
    pub ssl_ca: Option<PathBuf>,
    #[serde(default)]
    pub ssl_cert: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key: Option<PathBuf>,
    #[serde(default)]
    pub get_server_public_key: bool,
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The server's current binlog position: only changes made from now on.
    #[default]
    Current,
    /// The oldest binlog the server still has.
    Earliest,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeBy {
    /// MariaDB: resume by GTID state (survives a switch to another server of the same
    /// replication topology); MySQL falls back to `file`.
    #[default]
    Gtid,
    /// Binlog file name and offset.
    File,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    3306
}
fn default_heartbeat() -> u64 {
    10
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_backoff() -> u64 {
    30
}

impl MysqlSourceConfig {
    pub(crate) fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        if self.server_id == 0 {
            return Err(ConfigError::at_key(
                path,
                text,
                "server_id",
                "[source] server_id must be a non-zero number no other replica of this server uses",
            ));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 4_000_000 {
            return Err(ConfigError::at_key(
                path,
                text,
                "heartbeat_secs",
                "[source] heartbeat_secs must be between 1 and 4000000",
            ));
        }
        self.tls()
            .validate(path, text, self.flavor() == super::Flavor::Mysql)?;
        self.validate_common(path, text)
    }

    /// The TLS settings, for connections.
    pub fn tls(&self) -> super::tls::TlsSettings {
        super::tls::TlsSettings {
            ssl_mode: self.ssl_mode,
            ssl_ca: self.ssl_ca.clone(),
            ssl_cert: self.ssl_cert.clone(),
            ssl_key: self.ssl_key.clone(),
            get_server_public_key: self.get_server_public_key,
            tls_server_name: self.tls_server_name.clone(),
        }
    }

    /// MariaDB or MySQL, as `kind` says.
    pub fn flavor(&self) -> super::Flavor {
        if self.kind == "mysql" {
            super::Flavor::Mysql
        } else {
            super::Flavor::Mariadb
        }
    }

    /// `host:port`, for messages (never includes credentials).
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl CommonSettings for MysqlSourceConfig {
    fn password_setting(&self) -> PasswordSetting<'_> {
        PasswordSetting {
            password: self.password.as_ref(),
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        }
    }

    fn table_filter(&self) -> Result<TableFilter, String> {
        TableFilter::new(&self.include, &self.exclude)
    }

    fn snapshot_fields(&self) -> (crate::snapshot::SnapshotMode, u64, usize) {
        (
            self.snapshot,
            self.snapshot_chunk_rows,
            self.snapshot_parallel_tables,
        )
    }
}
