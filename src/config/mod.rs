//! Connector files (TOML) -> typed config.
//!
//! Every error names the file and, where the TOML parser knows it, the line and column,
//! plus the expected form. Unknown keys are errors (a typo must never be ignored).

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod kinds;
pub use crate::settings::{line_col, parse_toml, ConfigError, PasswordSetting, Secret};

/// A connector file: one pipeline from one source to one or more sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Connector name, used in events (`source.connector`) and logs. Defaults to the
    /// file's stem.
    #[serde(default)]
    pub name: Option<String>,
    pub source: SourceConfig,
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    pub state: StateConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[http]`: /metrics, /health, /ready, /status.
    #[serde(default)]
    pub http: crate::http::HttpConfig,
    /// `[metrics]`: the older spelling of `[http] listen`.
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    #[serde(default)]
    pub schema: SchemaConfig,
    /// `[[enrich]]`: enrichment steps, in order (see enrich::).
    #[serde(default)]
    pub enrich: Vec<crate::enrich::EnrichConfig>,
    /// `[enrichment]`: settings of the enrichment stage.
    #[serde(default)]
    pub enrichment: EnrichmentConfig,
    /// `[[document]]`: joined documents (see document::).
    #[serde(default)]
    pub document: Vec<crate::document::DocumentConfig>,
    /// The file this was read from (not a TOML key).
    #[serde(skip)]
    pub path: PathBuf,
}

/// A list of kinds: `$enum` (one variant per kind, holding the section's type), the
/// kind names `$names`, `kind()`, `$get()` (the section as the component's trait
/// `$kind`) and `of_kind` (deserializes the section of a named kind).
macro_rules! kind_list {
    ($enum:ident, $names:ident, $get:ident, $get_mut:ident -> $kind:path;
     $($name:literal => $variant:ident($cfg:ty)),* $(,)?) => {
        /// Deserialized by `kind` through `kinds::`, so errors keep their spans.
        #[derive(Debug, Clone)]
        pub enum $enum {
            $($variant($cfg)),*
        }

        pub(crate) const $names: &[&str] = &[$($name),*];

        impl $enum {
            pub fn kind(&self) -> &'static str {
                match self {
                    $($enum::$variant(_) => $name),*
                }
            }

            /// What the rest of tributary asks of this kind.
            pub fn $get(&self) -> &dyn $kind {
                match self {
                    $($enum::$variant(c) => c),*
                }
            }

            fn $get_mut(&mut self) -> &mut dyn $kind {
                match self {
                    $($enum::$variant(c) => c),*
                }
            }

            /// The section of `kind`, None for an unknown kind.
            fn of_kind<'de, D: serde::Deserializer<'de>>(
                kind: &str,
                d: D,
            ) -> Result<Option<$enum>, D::Error> {
                Ok(Some(match kind {
                    $($name => $enum::$variant(<$cfg>::deserialize(d)?),)*
                    _ => return Ok(None),
                }))
            }
        }
    };
}

// `[source]` kinds. A new source kind is its folder under `source/`, whose config type
// implements `source::SourceKind`, plus its line here.
kind_list! {
    SourceConfig, SOURCE_KINDS, source, source_mut -> crate::source::SourceKind;
    "mariadb" => Mariadb(crate::source::mysql::MysqlSourceConfig),
    "mysql" => Mysql(crate::source::mysql::MysqlSourceConfig),
    "postgres" => Postgres(crate::source::postgres::PostgresSourceConfig),
    "kafka" => Kafka(crate::source::kafka::KafkaSourceConfig),
}

impl SourceConfig {
    /// The include/exclude filter.
    pub fn filter(&self) -> crate::source::filter::TableFilter {
        self.source().filter()
    }
}

// `[[sink]]` kinds. A new sink kind is its file or folder under `sink/`, whose config
// type implements `sink::SinkKind`, plus its line here.
kind_list! {
    SinkConfig, SINK_KINDS, sink, sink_mut -> crate::sink::SinkKind;
    "log" => Log(crate::sink::log::LogSinkConfig),
    "elasticsearch" => Elasticsearch(Box<crate::sink::elasticsearch::ElasticsearchSinkConfig>),
    "kafka" => Kafka(Box<crate::sink::kafka::KafkaSinkConfig>),
    "stdout" => Stdout(crate::sink::stdout::StdoutSinkConfig),
    // Discards events after counting them: for benchmarks and dry runs.
    "null" => Null(crate::sink::null::NullSinkConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the offsets store (`offsets.redb`).
    pub dir: PathBuf,
    /// Of the files in the state dir, the quarantine and the enrichment dead letters
    /// (default "0600"; directories get the matching search bits).
    #[serde(default)]
    pub file_mode: crate::files::FileMode,
}

impl StateConfig {
    /// Opens the offsets store (the state dir and its files get `file_mode`).
    pub fn open_store(&self) -> Result<crate::offsets::OffsetStore, crate::offsets::OffsetError> {
        crate::offsets::OffsetStore::open(&self.dir, self.file_mode)
    }
}

/// `[schema]`: the schema guard.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// The policy file (schema-rules/*.toml); without one the built-in add-only rules
    /// apply (those of schema-rules/default.toml).
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Where quarantined tables' events wait for `tributary quarantine replay`
    /// (default `<state dir>/quarantine`).
    #[serde(default)]
    pub quarantine_dir: Option<PathBuf>,
}

/// `[enrichment]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// Where events an enrichment step failed on go (default
    /// `<state dir>/dead-letters/enrich`).
    #[serde(default)]
    pub dead_letter_dir: Option<PathBuf>,
}

/// Queue bounds and checkpoint cadence between the source and the sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most events queued between source and sinks.
    pub queue_events: usize,
    /// Most bytes (approximate, in memory) queued between source and sinks.
    pub queue_bytes: usize,
    /// How often the position is checkpointed, at most, in milliseconds.
    pub checkpoint_interval_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_events: 16_384,
            queue_bytes: 16 << 20,
            checkpoint_interval_ms: 200,
        }
    }
}

impl ConnectorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read connector file: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut cfg: ConnectorConfig =
            kinds::with_kind_plan(path, text, || parse_toml(path, text))?;
        cfg.path = path.to_path_buf();
        // Names and places a user need not spell out, derived from the connector.
        let (name, state_dir) = (cfg.connector_name(), cfg.state.dir.clone());
        cfg.source.source_mut().fill_defaults(&name);
        for s in cfg.sinks.iter_mut() {
            s.sink_mut().fill_defaults(&state_dir);
        }
        // Each [[enrich]] entry's line, for errors found when a table binds.
        let mut headers = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim() == "[[enrich]]")
            .map(|(i, _)| i + 1);
        for e in cfg.enrich.iter_mut() {
            e.line = headers.next().unwrap_or(0);
        }
        // And what each entry says, as written (the file parsed above, so it parses).
        if let Ok(doc) = toml::from_str::<toml::Table>(text) {
            let written = doc.get("enrich").and_then(|e| e.as_array());
            for (e, w) in cfg.enrich.iter_mut().zip(written.into_iter().flatten()) {
                let mut w = serde_json::to_value(w).unwrap_or_default();
                if let Some(m) = w.as_object_mut() {
                    m.remove("table");
                }
                e.written = w;
            }
        }
        cfg.validate(text)?;
        Ok(cfg)
    }

    /// The quarantine stream's directory.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.schema
            .quarantine_dir
            .clone()
            .unwrap_or_else(|| self.state.dir.join("quarantine"))
    }

    /// The quarantine stream: its directory, written with `[state] file_mode`.
    pub fn quarantine_journal(&self) -> crate::journal::Settings {
        crate::journal::Settings::at(&self.quarantine_dir(), self.state.file_mode)
    }

    /// The enrichment dead-letter stream's directory.
    pub fn enrich_dead_letter_dir(&self) -> PathBuf {
        self.enrichment
            .dead_letter_dir
            .clone()
            .unwrap_or_else(|| self.state.dir.join("dead-letters").join("enrich"))
    }

    /// The enrichment dead-letter stream, written with `[state] file_mode`.
    pub fn enrich_dead_letters(&self) -> crate::journal::Settings {
        crate::journal::Settings::at(&self.enrich_dead_letter_dir(), self.state.file_mode)
    }

    /// The connector's schema policy (errors name the policy file, line and column).
    pub fn policy(&self) -> Result<crate::schema::Policy, ConfigError> {
        match &self.schema.policy {
            Some(path) => crate::schema::Policy::load(path),
            None => Ok(crate::schema::Policy::add_only()),
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let p = &self.path;
        self.policy()?;
        if self.sinks.is_empty() {
            return Err(ConfigError::new(
                p,
                "no [[sink]] section: add at least one, e.g. [[sink]] kind = \"log\" dir = \"data/log\"",
            ));
        }
        self.source.source().validate(p, text)?;
        let mut seen = std::collections::HashSet::new();
        for sink in &self.sinks {
            sink.sink().validate(p, text)?;
            let id = sink.id();
            if !seen.insert(id.clone()) {
                return Err(ConfigError::new(
                    p,
                    format!("two sinks share the id `{id}`: give them different `dir` or `name`"),
                ));
            }
        }
        for e in &self.enrich {
            if let Err((_, msg)) = e.validate() {
                return Err(ConfigError {
                    path: p.to_path_buf(),
                    line_col: Some((e.line, 1)),
                    message: msg,
                });
            }
        }
        crate::document::check_definitions(p, text, &self.document)?;
        if !self.document.is_empty() {
            let filter = self.source.source().filter();
            let captured = |t: &str| {
                t.split_once('.')
                    .is_some_and(|(db, table)| filter.matches(db, table))
            };
            for d in &self.document {
                crate::document::check_captured(p, text, d, &captured)?;
            }
        }
        if self.pipeline.queue_events == 0 || self.pipeline.queue_bytes < 4096 {
            return Err(ConfigError::at_key(
                p,
                text,
                "queue_events",
                "[pipeline] queue_events must be > 0 and queue_bytes >= 4096",
            ));
        }
        Ok(())
    }

    /// The connector's name: `name` or the file stem.
    pub fn connector_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "tributary".into())
        })
    }
}

impl SinkConfig {
    /// A stable id for the sink, under which its cursor is stored in the offsets store.
    pub fn id(&self) -> String {
        self.sink().id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "shop"
[source]
kind = "mariadb"
host = "127.0.0.1"
port = 3306
user = "tributary"
password = "x"
server_id = 4242
include = ["shop.*"]

[[sink]]
kind = "log"
dir = "data/log"

[state]
dir = "data/state"
"#;

    #[test]
    fn parses_a_good_file() {
        let c = ConnectorConfig::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.connector_name(), "shop");
        assert_eq!(c.sinks.len(), 1);
        assert_eq!(c.source.kind(), "mariadb");
    }

    /// A PostgreSQL slot and publication, and an Elasticsearch sink's dead-letter
    /// stream, need not be spelled out: they follow from the connector.
    #[test]
    fn names_and_places_follow_from_the_connector() {
        let text = GOOD
            .replace("name = \"shop\"", "name = \"Shop-EU 2\"")
            .replace(
                "kind = \"mariadb\"\nhost = \"127.0.0.1\"\nport = 3306",
                "kind = \"postgres\"\nhost = \"127.0.0.1\"\nport = 5432\ndatabase = \"app\"",
            )
            .replace("server_id = 4242\n", "")
            .replace(
                "[state]",
                "[[sink]]\nkind = \"elasticsearch\"\nname = \"search\"\nurls = [\"http://es1:9200\"]\n\n[[sink]]\nkind = \"elasticsearch\"\nurls = [\"http://es2:9200\"]\ndead_letter_dir = \"dl\"\n\n[state]",
            );
        let c = ConnectorConfig::parse(Path::new("c.toml"), &text).unwrap();
        let SourceConfig::Postgres(pg) = &c.source else {
            panic!("a postgres source")
        };
        assert_eq!(
            (pg.slot.as_str(), pg.publication.as_str()),
            ("tributary_shop_eu_2", "tributary_shop_eu_2")
        );
        assert!(pg.derived_names, "check says so");
        let dirs: Vec<_> = c.sinks[1..]
            .iter()
            .map(|s| s.sink().dead_letter_dir().unwrap())
            .collect();
        assert_eq!(
            dirs,
            [Path::new("data/state/dead-letters/search"), Path::new("dl")]
        );
        // Given names stay.
        let given = text.replace(
            "database = \"app\"",
            "database = \"app\"\nslot = \"mine\"\npublication = \"pub\"",
        );
        let c = ConnectorConfig::parse(Path::new("c.toml"), &given).unwrap();
        let SourceConfig::Postgres(pg) = &c.source else {
            unreachable!()
        };
        assert_eq!((pg.slot.as_str(), pg.publication.as_str()), ("mine", "pub"));
        assert!(!pg.derived_names);
    }

    /// What the sinks fingerprint: the entries that apply to a table, as written, but
    /// which tables they name.
    #[test]
    fn enrich_entries_are_kept_as_written_for_the_tables_they_apply_to() {
        let with = |steps: &str| {
            let text = GOOD.replace("[state]", &format!("{steps}\n[state]"));
            ConnectorConfig::parse(Path::new("c.toml"), &text).unwrap()
        };
        let c = with(
            "[[enrich]]\ntable = \"shop.orders\"\nkind = \"set\"\nfields = { region = \"eu\" }\n\n[[enrich]]\ntable = \"shop.other\"\nkind = \"drop\"\ncolumns = [\"x\"]\n",
        );
        let orders = crate::enrich::written_for(&c.enrich, "shop", "orders");
        assert_eq!(
            orders,
            serde_json::json!([{"kind": "set", "entry": {"kind": "set", "fields": {"region": "eu"}}}])
        );
        assert_eq!(
            crate::enrich::written_for(&c.enrich, "shop", "nothing"),
            serde_json::json!([])
        );
        // Naming the table another way changes nothing; a value does.
        let glob = with(
            "[[enrich]]\ntable = [\"shop.ord*\"]\nkind = \"set\"\nfields = { region = \"eu\" }\n",
        );
        assert_eq!(
            crate::enrich::written_for(&glob.enrich, "shop", "orders"),
            orders
        );
        let other = with(
            "[[enrich]]\ntable = \"shop.orders\"\nkind = \"set\"\nfields = { region = \"us\" }\n",
        );
        assert_ne!(
            crate::enrich::written_for(&other.enrich, "shop", "orders"),
            orders
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let text = GOOD.replace("password = \"x\"", "password = \"hunter2\"").replace(
            "[state]",
            "[[sink]]\nkind = \"elasticsearch\"\nurls = [\"https://elastic:hunter3@es1:9200\"]\nuser = \"elastic\"\npassword = \"hunter4\"\ndead_letter_dir = \"dl\"\n\n[state]",
        );
        let c = ConnectorConfig::parse(Path::new("c.toml"), &text).unwrap();
        let shown = format!("{c:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("es1:9200"), "{shown}");
        // The values are still there for use.
        assert_eq!(
            c.source
                .source()
                .password_setting()
                .resolve("")
                .unwrap()
                .unwrap()
                .expose(),
            "hunter2"
        );
    }

    #[test]
    fn tls_settings_that_do_not_fit_are_named() {
        for (add, want) in [
            ("ssl_cert = \"c.pem\"", "ssl_cert and ssl_key go together"),
            (
                "ssl_mode = \"disabled\"\nssl_ca = \"ca.pem\"",
                "ssl_ca is set but ssl_mode = \"disabled\"",
            ),
            (
                "ssl_mode = \"verify_ca\"\nssl_ca = \"/nonexistent/ca.pem\"",
                "ssl_ca = \"/nonexistent/ca.pem\": No such file",
            ),
        ] {
            let text = GOOD.replace("server_id = 4242", &format!("server_id = 4242\n{add}"));
            let e = ConnectorConfig::parse(Path::new("c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{add}: {e}");
        }
        let mysql = GOOD
            .replace("kind = \"mariadb\"", "kind = \"mysql\"")
            .replace(
                "server_id = 4242",
                "server_id = 4242\nssl_mode = \"disabled\"",
            );
        let e = ConnectorConfig::parse(Path::new("c.toml"), &mysql)
            .unwrap_err()
            .to_string();
        assert!(e.contains("get_server_public_key = true"), "{e}");
        let accepted = mysql.replace(
            "ssl_mode = \"disabled\"",
            "ssl_mode = \"disabled\"\nget_server_public_key = true",
        );
        assert!(ConnectorConfig::parse(Path::new("c.toml"), &accepted).is_ok());
    }

    #[test]
    fn an_elasticsearch_password_without_a_user_is_an_error() {
        let text = GOOD.replace(
            "[state]",
            "[[sink]]\nkind = \"elasticsearch\"\nurls = [\"http://es1:9200\"]\npassword_env = \"ES_PW\"\ndead_letter_dir = \"dl\"\n\n[state]",
        );
        let e = ConnectorConfig::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:19:1: [[sink]] password_env is set but `user` is not"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let bad = GOOD.replace("server_id = 4242", "server_id = 4242\nserverid = 1");
        let e = ConnectorConfig::parse(Path::new("conn/c.toml"), &bad).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("conn/c.toml:10:1: unknown field `serverid`"),
            "{msg}"
        );
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line() {
        let bad = GOOD.replace("port = 3306", "port = \"3306\"");
        let e = ConnectorConfig::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:6:8:"), "{e}");
        assert!(e.to_string().contains("u16"), "{e}");
    }

    #[test]
    fn unknown_sink_kind_lists_the_kinds() {
        let bad = GOOD.replace("kind = \"log\"", "kind = \"lgo\"");
        let e = ConnectorConfig::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(e.to_string().contains("log"), "{e}");
        assert!(e.to_string().contains("stdout"), "{e}");
    }

    #[test]
    fn file_modes_default_private_and_a_bad_one_names_its_line() {
        let c = ConnectorConfig::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.state.file_mode.bits(), 0o600);
        let wide = GOOD.replace(
            "dir = \"data/state\"",
            "dir = \"data/state\"\nfile_mode = \"0640\"",
        );
        let c = ConnectorConfig::parse(Path::new("c.toml"), &wide).unwrap();
        assert_eq!(c.state.file_mode.dir_bits(), 0o750);
        let bad = GOOD.replace(
            "dir = \"data/log\"",
            "dir = \"data/log\"\nfile_mode = \"0755\"",
        );
        let e = ConnectorConfig::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:15:13:"), "{e}");
        assert!(e.to_string().contains("no execute"), "{e}");
    }

    #[test]
    fn line_col_is_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}

#[cfg(test)]
mod enrich_example {
    use super::ConnectorConfig;

    /// The documented example uses every kind and stays valid.
    #[test]
    fn the_example_connector_uses_every_kind() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("connectors")
            .join("enrich-example.toml");
        let cfg = ConnectorConfig::load(&path).unwrap();
        let mut kinds: Vec<&str> = cfg.enrich.iter().map(|e| e.kind()).collect();
        kinds.sort();
        kinds.dedup();
        let mut all = crate::enrich::config::KINDS.to_vec();
        all.sort();
        assert_eq!(kinds, all);
        assert!(cfg.enrich.iter().all(|e| e.line > 0));
    }
}
