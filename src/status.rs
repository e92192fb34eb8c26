//! What `tributary status` prints and the daemon's `/status` serves: the checkpoint
//! and its age, each sink's cursor, the schema guard's tables, snapshot and reindex
//! progress, (PostgreSQL) the slot as the server sees it, and (Kafka) a worker group's
//! offsets and lag, and what Kafka holds of each Kafka sink.
//!
//! A running daemon holds the offsets store, so beside it the report comes from the
//! `status.json` it writes with every checkpoint (the store stays the truth).

use std::path::Path;

use serde_json::{json, Map, Value as Json};

use crate::config::{ConnectorConfig, SourceConfig};
use crate::event::{format_lsn, now_ms};
use crate::offsets::OffsetStore;
use crate::sink::elasticsearch::dual;

/// The report as JSON; Err names what could not be read.
pub async fn report(cfg: &ConnectorConfig) -> Result<Json, String> {
    let (running, checkpoint, sinks, stages) = match cfg.state.open_store() {
        Ok(store) => (
            false,
            store.checkpoint().map_err(|e| e.to_string())?,
            store
                .sink_cursors()
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect::<Map<_, _>>(),
            store
                .stage_states()
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect::<Map<_, _>>(),
        ),
        Err(_) => (
            true,
            OffsetStore::reported_checkpoint(&cfg.state.dir),
            OffsetStore::reported(&cfg.state.dir, "cursors"),
            OffsetStore::reported(&cfg.state.dir, "stages"),
        ),
    };
    let guard_state = stages.get(crate::schema::guard::STATE_ID);
    let snapshot_state = stages.get(crate::snapshot::STATE_ID);
    let mut out = json!({
        "connector": cfg.connector_name(),
        "source": cfg.source.kind(),
        "running": running,
        "checkpoint": checkpoint.as_ref().map(|c| json!({
            "position": c.position,
            "age_s": now_ms().saturating_sub(c.at_ms) / 1000,
        })),
        "sinks": sinks,
        "tables": guard_state.map(crate::schema::guard::summary),
        "snapshot": snapshot_state.map(crate::snapshot::summary),
        "reindex": reindexes(&cfg.state.dir),
    });
    if !cfg.document.is_empty() {
        // Inside the daemon (`/status`) its own count, current while a fan-out runs;
        // beside it, the count saved with the last checkpoint.
        let live = crate::health::documents();
        out["documents"] = if live.as_object().is_some_and(|m| !m.is_empty()) {
            live
        } else {
            stages
                .get(crate::document::stage::STATE_ID)
                .cloned()
                .unwrap_or(Json::Null)
        };
    }
    if let SourceConfig::Postgres(p) = &cfg.source {
        out["slot"] = slot(p).await?;
    }
    if let SourceConfig::Kafka(k) = &cfg.source {
        out["kafka_group"] = crate::source::kafka::group_status(k)
            .await
            .unwrap_or_else(|e| json!({ "error": e }));
    }
    // What Kafka holds of each Kafka sink (the brokers' answer, or why there is none:
    // a status must show even while the brokers are away).
    let mut kafka = Map::new();
    for sink in &cfg.sinks {
        if let crate::config::SinkConfig::Kafka(k) = sink {
            let v = crate::sink::kafka::status(k, &cfg.connector_name())
                .await
                .unwrap_or_else(|e| json!({ "error": e }));
            kafka.insert(sink.id(), v);
        }
    }
    if !kafka.is_empty() {
        out["kafka_sinks"] = Json::Object(kafka);
    }
    Ok(out)
}

/// Reindexes and resyncs running beside the daemon: per alias, the table, the index
/// being filled, rows written of the estimate, and the phase.
fn reindexes(state_dir: &Path) -> Json {
    let running: Map<String, Json> = dual::requests(state_dir)
        .into_iter()
        .map(|(alias, r)| {
            let answer =
                dual::read_answer(state_dir, &alias).filter(|a| a.requested_ms == r.requested_ms);
            let phase = match &answer {
                None => "waiting for the daemon".to_string(),
                Some(a) => match &a.stopped {
                    Some(why) => format!("failing: {why}"),
                    None if r.resync => "resync: the daemon's snapshot fills it (see snapshot), changes go to both indexes".to_string(),
                    None => "filling (the daemon writes changes to both indexes)".to_string(),
                },
            };
            let v = json!({
                "table": r.table,
                "sink": r.sink,
                "index": r.index,
                "rows": r.rows,
                "estimate": r.estimate,
                "phase": phase,
                "resync": r.resync,
            });
            (alias, v)
        })
        .collect();
    Json::Object(running)
}

/// The replication slot as the server reports it.
async fn slot(p: &crate::source::postgres::PostgresSourceConfig) -> Result<Json, String> {
    use crate::source::postgres::{checks, connect};
    use crate::source::CommonSettings;
    let password = p.password()?;
    let client = connect::query_client(p, password.as_ref())
        .await
        .map_err(|e| e.message().to_string())?;
    let slot = checks::slot_info(&client, &p.slot)
        .await
        .map_err(|e| checks::db_message(&e))?;
    Ok(match slot {
        None => json!({"name": p.slot, "exists": false}),
        Some(s) => json!({
            "name": p.slot,
            "exists": true,
            "active_pid": s.active_pid,
            "confirmed_flush_lsn": s.confirmed_flush.map(format_lsn),
            "retained_wal_bytes": s.retained_bytes,
            "lag_bytes": s.lag_bytes,
            "retained_wal_warning": s.retained_bytes.is_some_and(|b| (b >> 20) as u64 >= p.retained_wal_warn_mb),
        }),
    })
}
