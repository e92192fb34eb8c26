//! `[[sink]] kind = "elasticsearch"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::{ConfigError, PasswordSetting, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// `elasticsearch` (chooses this config; see config::kinds).
    #[serde(default)]
    pub kind: String,
    /// Stable id (default `elasticsearch:<first url>`).
    #[serde(default)]
    pub name: Option<String>,
    /// One or more node URLs (`https://es1:9200`), used round robin.
    pub urls: Vec<NodeUrl>,
    /// Basic auth user; its password from `password_env`, `password_file` or `password`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// API key as `id:key`, from this environment variable (instead of basic auth).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// PEM file of the CA that signed the cluster's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Alias name per table: `{db}` and `{table}` are replaced by the names encoded as
    /// `names` says (lowercased, characters Elasticsearch refuses as `%xx`). The
    /// concrete index behind it is `<alias>_v1`.
    #[serde(default = "default_index")]
    pub index: String,
    /// Per-table alias names: `"shop.orders" = "orders"`.
    #[serde(default)]
    pub indexes: BTreeMap<String, String>,
    /// Which tables get an index of their own next to the joined documents (every
    /// `[[document]]` gets its index): `"all"` (default), `"none"`, or a list of
    /// `db.table` globs.
    #[serde(default)]
    pub tables: TableSelection,
    /// A bulk request is sent when it holds this many documents ...
    #[serde(default = "default_batch_docs")]
    pub batch_docs: usize,
    /// ... or this many bytes, ...
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// A document whose bulk lines are larger than this goes to the dead-letter stream
    /// with its size instead of being sent (default 90 MiB, below Elasticsearch's
    /// 100 MB `http.max_content_length`). A request the cluster still refuses as too
    /// large (413) is split; a single document it refuses is dead-lettered.
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: usize,
    /// ... or when its oldest document waited this long (and at every checkpoint).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Bulk requests in flight at once. Each document always goes through the same
    /// one of these lanes, so its writes stay in commit order.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
    /// Longest wait between retries of 429, 5xx and connection errors (retried forever).
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// `index.gc_deletes`: how long delete tombstones keep their version, so a replay
    /// after a restart cannot bring a deleted row back. Longer than any restart.
    #[serde(default = "default_gc_deletes")]
    pub gc_deletes: String,
    /// Document ids for chosen tables: `"shop.audit" = "row_hash"` (a hash of the whole
    /// row) or `"shop.events" = ["device", "seq"]` (columns whose values are unique).
    /// Tables without a primary key that are not listed are skipped with a warning.
    #[serde(default)]
    pub ids: BTreeMap<String, IdConfig>,
    /// DECIMAL/NUMERIC mapping: `keyword` (exact) or `scaled_float`.
    #[serde(default)]
    pub decimal: DecimalMapping,
    /// Documents the cluster rejects for good (mapping errors, other 400s) go to this
    /// log stream with the reason (a rejection is never dropped). Default:
    /// `<state dir>/dead-letters/<sink name>`.
    #[serde(default)]
    pub dead_letter_dir: PathBuf,
    /// Of the dead-letter stream's files (default "0600"; the dir gets the matching
    /// search bits).
    #[serde(default)]
    pub file_mode: crate::files::FileMode,
}

/// The `tables` setting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TableSelection {
    /// `"all"` or `"none"`.
    Word(String),
    Globs(Vec<String>),
}

impl Default for TableSelection {
    fn default() -> Self {
        TableSelection::Word("all".into())
    }
}

impl TableSelection {
    /// The selection as a matcher of `db.table` names, or why it is not one.
    pub fn matcher(&self) -> Result<Option<globset::GlobSet>, String> {
        match self {
            TableSelection::Word(w) if w == "all" => Ok(None),
            TableSelection::Word(w) if w == "none" => Ok(Some(globset::GlobSet::empty())),
            TableSelection::Word(w) => Err(format!(
                "[[sink]] tables = \"{w}\": write \"all\", \"none\" or a list of db.table globs"
            )),
            TableSelection::Globs(globs) => {
                let mut b = globset::GlobSetBuilder::new();
                for g in globs {
                    b.add(
                        globset::Glob::new(g)
                            .map_err(|e| format!("[[sink]] tables: pattern `{g}`: {e}"))?,
                    );
                }
                b.build().map(Some).map_err(|e| e.to_string())
            }
        }
    }
}

/// One table's document id setting (see `ids`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IdConfig {
    /// `"row_hash"`.
    Named(String),
    Columns(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalMapping {
    #[default]
    Keyword,
    ScaledFloat,
}

fn default_index() -> String {
    "{db}_{table}".into()
}
fn default_batch_docs() -> usize {
    1000
}
fn default_batch_bytes() -> usize {
    5 << 20
}
fn default_max_document_bytes() -> usize {
    90 << 20
}
fn default_linger_ms() -> u64 {
    50
}
fn default_concurrency() -> usize {
    2
}
fn default_timeout() -> u64 {
    30
}
fn default_max_backoff() -> u64 {
    30
}
fn default_gc_deletes() -> String {
    "24h".into()
}

impl ElasticsearchSinkConfig {
    pub(crate) fn validate_section(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::at_key(
                path,
                text,
                "urls",
                "[[sink]] urls needs at least one node URL, e.g. [\"http://127.0.0.1:9200\"]",
            ));
        }
        for u in &self.urls {
            if elasticsearch::http::Url::parse(u).is_err() {
                return Err(ConfigError::at_key(
                    path,
                    text,
                    "urls",
                    format!(
                        "[[sink]] `{}` is not a URL (expected http(s)://host:port)",
                        redact(u)
                    ),
                ));
            }
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err(ConfigError::at_key(
                path,
                text,
                "concurrency",
                "[[sink]] concurrency (bulk requests in flight) must be 1..=64",
            ));
        }
        if self.batch_docs == 0 || self.batch_bytes < 1024 {
            return Err(ConfigError::at_key(
                path,
                text,
                "batch_docs",
                "[[sink]] batch_docs must be > 0 and batch_bytes >= 1024",
            ));
        }
        let template = self
            .index
            .replace("{db}", "db")
            .replace("{table}", "table")
            .to_lowercase();
        if let Some(why) = super::names::invalid_index_name(&template) {
            return Err(ConfigError::at_key(
                path,
                text,
                "index",
                format!(
                    "[[sink]] index = \"{}\": {why} (with {{db}} and {{table}} filled in)",
                    self.index
                ),
            ));
        }
        if let Err(m) = self.tables.matcher() {
            return Err(ConfigError::at_key(path, text, "tables", m));
        }
        for (table, alias) in &self.indexes {
            if let Some(why) = super::names::invalid_index_name(&alias.to_lowercase()) {
                return Err(ConfigError::at_key(
                    path,
                    text,
                    "indexes",
                    format!("[[sink]] indexes.\"{table}\": {why}"),
                ));
            }
        }
        let given = [
            ("password", self.password.is_some()),
            ("password_env", self.password_env.is_some()),
            ("password_file", self.password_file.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(_, set)| *set) {
            if self.user.is_none() {
                return Err(ConfigError::at_key(
                    path,
                    text,
                    key,
                    format!("[[sink]] {key} is set but `user` is not: basic auth needs both (or use api_key_env)"),
                ));
            }
        }
        if self.max_document_bytes < 1024 {
            return Err(ConfigError::at_key(
                path,
                text,
                "max_document_bytes",
                "[[sink]] max_document_bytes must be >= 1024 (default 94371840, 90 MiB)",
            ));
        }
        for (table, id) in &self.ids {
            let ok = match id {
                IdConfig::Named(n) => n == "row_hash",
                IdConfig::Columns(c) => !c.is_empty(),
            };
            if !ok {
                return Err(ConfigError::at_key(
                    path,
                    text,
                    "ids",
                    format!("[[sink]] ids.\"{table}\" must be \"row_hash\" or a list of column names, e.g. [\"device\", \"seq\"]"),
                ));
            }
        }
        if !self.index.contains("{table}") && self.indexes.is_empty() {
            return Err(ConfigError::at_key(
                path,
                text,
                "index",
                "[[sink]] index must contain {table} (one index per table), e.g. \"{db}_{table}\"",
            ));
        }
        Ok(())
    }

    pub fn id(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "elasticsearch:{}",
                redact(self.urls.first().map(NodeUrl::as_str).unwrap_or(""))
            )
        })
    }

    /// The alias for a table: its `indexes` entry, else the `index` template with the
    /// encoded names (`names::alias`).
    pub fn alias(&self, db: &str, table: &str) -> String {
        if let Some(a) = self.indexes.get(&format!("{db}.{table}")) {
            return a.to_lowercase();
        }
        super::names::alias(&self.index, db, table)
    }

    pub fn password(&self) -> Result<Option<Secret>, String> {
        PasswordSetting {
            password: self.password.as_ref(),
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        }
        .resolve("[[sink]] elasticsearch:")
    }
}

/// A node URL as written in the file. It may carry `user:password@`, so its `Debug`
/// shows it without them.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct NodeUrl(String);

impl NodeUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl std::ops::Deref for NodeUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A URL without user info, for messages and ids.
pub fn redact(url: &str) -> String {
    match elasticsearch::http::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}
