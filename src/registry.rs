//! The one place that maps the kinds a connector file names to components: which
//! source, sinks and enrichment stage a connector runs, and the source's checks,
//! catalog and row reader. A source kind is a folder under `source/` plus its arm here
//! and its variant in `config::SourceConfig`; a sink kind likewise.

use std::sync::Arc;

use crate::config::{ConnectorConfig, SinkConfig, SourceConfig};
use crate::event::{Column, Position};
use crate::offsets::OffsetStore;
use crate::sink::{self, Sink, SinkError};
use crate::source::mysql::{self, Flavor, MysqlSource};
use crate::source::postgres::{self, PostgresSource};
use crate::source::{CheckReport, Lookup, Source};

/// The connector's source, and how logs and checkpoints describe it
/// (`mariadb 127.0.0.1:3306`).
pub fn source(cfg: &ConnectorConfig, store: Arc<OffsetStore>) -> (Box<dyn Source>, String) {
    let name = cfg.connector_name();
    match &cfg.source {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => {
            let s = MysqlSource::new(m.clone(), flavor(&cfg.source), &name, store);
            let d = s.describe();
            (Box::new(s), d)
        }
        SourceConfig::Postgres(p) => {
            let s = PostgresSource::new(p.clone(), &name, store);
            let d = s.describe();
            (Box::new(s), d)
        }
    }
}

fn flavor(cfg: &SourceConfig) -> Flavor {
    match cfg {
        SourceConfig::Mariadb(_) => Flavor::Mariadb,
        _ => Flavor::Mysql,
    }
}

/// Connects to the source's server and runs the checks `tributary check` shows and the
/// daemon runs at startup. `checkpoint` is the stored position, if any.
pub async fn check(
    cfg: &SourceConfig,
    checkpoint: Option<&Position>,
) -> Result<CheckReport, String> {
    let (mut report, address, user) = match cfg {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => {
            (mysql::check(m, flavor(cfg)).await?, m.address(), &m.user)
        }
        SourceConfig::Postgres(p) => (
            postgres::check(p, checkpoint).await?.0,
            p.address(),
            &p.user,
        ),
    };
    report
        .info
        .insert(0, format!("connected to {address} as {user}"));
    Ok(report)
}

/// The included tables and their columns as the source's server has them now, with
/// the type names the stream gives (for `tributary policy diff`).
pub async fn live_schemas(cfg: &SourceConfig) -> Result<Vec<(String, Vec<Column>)>, String> {
    match cfg {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => mysql::live_schemas(m).await,
        SourceConfig::Postgres(p) => postgres::live_schemas(p).await,
    }
}

/// The row reader of the connector's source (for the `lookup` enricher).
pub fn lookup(cfg: &SourceConfig, connector: &str) -> Arc<dyn Lookup> {
    match cfg {
        SourceConfig::Mariadb(m) | SourceConfig::Mysql(m) => {
            mysql::lookup(m, flavor(cfg), connector)
        }
        SourceConfig::Postgres(p) => postgres::lookup(p, connector),
    }
}

/// Opens the configured sinks, each positioned at its stored cursor. `policy` is the
/// connector's schema policy (sinks that map columns read its unindexed columns).
pub fn sinks(
    configs: &[SinkConfig],
    store: &OffsetStore,
    policy: &Arc<crate::schema::Policy>,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut out: Vec<Box<dyn Sink>> = Vec::new();
    for c in configs {
        let id = c.id();
        let cursor = store
            .sink_cursor(&id)
            .map_err(|e| SinkError::new(&id, e.to_string()))?;
        out.push(match c {
            SinkConfig::Log(l) => Box::new(sink::log::LogSink::open(id, l, cursor)?),
            SinkConfig::Elasticsearch(e) => Box::new(sink::elasticsearch::ElasticsearchSink::open(
                id,
                e,
                cursor,
                policy.clone(),
            )?),
            SinkConfig::Stdout(s) => Box::new(sink::stdout::StdoutSink::new(id, s)),
            SinkConfig::Null(_) => Box::new(sink::null::NullSink::new(id)),
        });
    }
    Ok(out)
}

/// The connector's enrichment stage (`[[enrich]]`), its state restored from `store`.
pub async fn enrich(
    cfg: &ConnectorConfig,
    store: &OffsetStore,
) -> Result<crate::enrich::Stage, crate::enrich::EnrichError> {
    crate::enrich::Stage::open(
        &cfg.enrich,
        &cfg.path,
        &cfg.enrich_dead_letter_dir(),
        || lookup(&cfg.source, &cfg.connector_name()),
        store,
    )
    .await
}
