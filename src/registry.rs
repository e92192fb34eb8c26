//! Builds a connector's components from its config: the source, the sinks and the
//! enrichment stage. The kinds themselves are listed once each in `config`
//! (the `kind_list!`s) and `enrich::config` (`kinds!`); each kind's
//! config type says how it is opened (`SourceKind`, `SinkKind`, `enrich::config::Kind`).

use std::sync::Arc;

use crate::config::{ConnectorConfig, SinkConfig};
use crate::offsets::OffsetStore;
use crate::sink::{Sink, SinkContext, SinkError};
use crate::source::Source;

/// The connector's source, and how logs and checkpoints describe it
/// (`mariadb 127.0.0.1:3306`).
pub fn source(cfg: &ConnectorConfig, store: Arc<OffsetStore>) -> (Box<dyn Source>, String) {
    cfg.source.source().open(&cfg.connector_name(), store)
}

/// What the sinks are told as they open: `policy`, and the enrichment entries that
/// shape each table's documents.
pub fn sink_context(
    cfg: &ConnectorConfig,
    policy: crate::schema::Policy,
    documents: crate::document::stage::Shapes,
) -> SinkContext {
    let entries = Arc::new(cfg.enrich.clone());
    SinkContext {
        documents,
        policy: Arc::new(policy),
        upstream: Arc::new(move |db, table| crate::enrich::written_for(&entries, db, table)),
        state_dir: Some(cfg.state.dir.clone()),
        connector: cfg.connector_name(),
    }
}

/// Opens the configured sinks, each positioned at its stored cursor.
pub fn sinks(
    configs: &[SinkConfig],
    store: &OffsetStore,
    context: &SinkContext,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut out: Vec<Box<dyn Sink>> = Vec::new();
    for c in configs {
        let id = c.id();
        let cursor = store
            .sink_cursor(&id)
            .map_err(|e| SinkError::new(&id, e.to_string()))?;
        out.push(c.sink().open(id, cursor, context)?);
    }
    Ok(out)
}

/// The connector's enrichment stage (`[[enrich]]`), its state restored from `store`.
pub async fn enrich(
    cfg: &ConnectorConfig,
    store: &Arc<OffsetStore>,
) -> Result<crate::enrich::Stage, crate::enrich::EnrichError> {
    crate::enrich::Stage::open(
        &cfg.enrich,
        &cfg.path,
        &cfg.enrich_dead_letters(),
        || cfg.source.source().lookup(&cfg.connector_name()),
        store,
    )
    .await
}
