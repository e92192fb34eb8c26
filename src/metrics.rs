//! Metrics: one home for their names and the Prometheus endpoint.
//!
//! Stages record through the `metrics` facade (free when no exporter is installed);
//! `[metrics] listen = "127.0.0.1:9187"` in the connector file serves them at
//! `http://<listen>/metrics` in the Prometheus text format. Histograms are rendered as
//! summaries with quantiles 0.5, 0.9, 0.99, 0.999.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, histogram, Counter};
use serde::Deserialize;

use crate::event::Op;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (off when absent; a loopback address such as
    /// 127.0.0.1:9187 keeps it on this host).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Serving other hosts on purpose: silences the warning a non-loopback `listen`
    /// gives.
    #[serde(default)]
    pub allow_remote: bool,
}

impl MetricsConfig {
    /// The warning a `listen` address other hosts can reach deserves, unless
    /// `allow_remote` says it is meant.
    pub fn remote_warning(&self) -> Option<String> {
        let addr = self.listen?;
        (!addr.ip().is_loopback() && !self.allow_remote).then(|| {
            format!(
                "[metrics] listen = \"{addr}\" serves table names and change rates to other hosts, without authentication: listen on 127.0.0.1 (behind a proxy that authenticates), or set allow_remote = true if that is meant"
            )
        })
    }
}

/// Serves the metrics on `cfg.listen`, if set. Call inside the tokio runtime.
pub fn install(cfg: &MetricsConfig) -> Result<(), String> {
    let Some(addr) = cfg.listen else {
        return Ok(());
    };
    if let Some(w) = cfg.remote_warning() {
        tracing::warn!("{w}");
    }
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_quantiles(&[0.5, 0.9, 0.99, 0.999])
        .map_err(|e| format!("[metrics]: {e}"))?
        .install()
        .map_err(|e| {
            format!("[metrics] listen = \"{addr}\": {e} (is another process using the port?)")
        })?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// Row changes that entered the pipeline, by table and op.
pub fn changes(table: &str, op: Op) -> Counter {
    counter!("tributary_changes_total", "table" => table.to_string(), "op" => op.code())
}

/// Changes of a quarantined table written to the quarantine stream.
pub fn quarantined(table: &str) -> Counter {
    counter!("tributary_quarantined_changes_total", "table" => table.to_string())
}

/// Rows a table's snapshot emitted so far, and the server's estimate of its total.
pub fn snapshot_rows(table: &str, rows: u64, estimate: u64) {
    metrics::gauge!("tributary_snapshot_rows", "table" => table.to_string()).set(rows as f64);
    metrics::gauge!("tributary_snapshot_rows_estimate", "table" => table.to_string())
        .set(estimate as f64);
}

pub fn transactions(n: u64) {
    counter!("tributary_transactions_total").increment(n);
}

/// A checkpoint stored after every sink acknowledged it: how long the sinks took to
/// acknowledge, and the store to commit.
pub fn checkpoint(acked: Duration, stored: Duration) {
    counter!("tributary_checkpoints_total").increment(1);
    histogram!("tributary_checkpoint_ack_seconds").record(acked.as_secs_f64());
    histogram!("tributary_checkpoint_store_seconds").record(stored.as_secs_f64());
}

/// A document (or message) a sink rejected for good and wrote to its dead-letter stream.
pub fn dead_letter(sink: &str, index: &str, error_type: &str) {
    counter!("tributary_dead_letters_total", "sink" => sink.to_string(), "index" => index.to_string(), "error_type" => error_type.to_string())
        .increment(1);
}

/// An event an enrichment step failed on, sent to the enrichment dead-letter stream.
pub fn enrich_dead_letter(table: &str, kind: &str) {
    counter!("tributary_enrich_dead_letters_total", "table" => table.to_string(), "kind" => kind.to_string())
        .increment(1);
}

/// Keys a lookup step fetched from the source (cache misses).
pub fn enrich_lookup_fetches(table: &str, keys: u64) {
    counter!("tributary_enrich_lookup_fetches_total", "from" => table.to_string()).increment(keys);
}

/// One request to a sink's server (a bulk request), from send to response.
pub fn sink_request(sink: &str, took: Duration) {
    histogram!("tributary_sink_request_seconds", "sink" => sink.to_string())
        .record(took.as_secs_f64());
}

/// Requests retried after a connection error, 429 or 5xx.
/// A lookup query retried after a transient failure (the source database was away).
pub fn lookup_retry(table: &str) {
    counter!("tributary_enrich_lookup_retries_total", "table" => table.to_string()).increment(1);
}

pub fn sink_retry(sink: &str) {
    counter!("tributary_sink_retries_total", "sink" => sink.to_string()).increment(1);
}

/// Time from a change's commit on the source (`from = "commit"`) and from when
/// tributary read it (`from = "read"`) to its acknowledgement by a sink's server.
/// Commit times are as exact as the source gives them: microseconds on PostgreSQL,
/// whole seconds in MariaDB/MySQL binlog headers (so there `read` is the useful one).
pub struct AckLatency {
    commit: metrics::Histogram,
    read: metrics::Histogram,
}

impl AckLatency {
    pub fn new(sink: &str) -> Self {
        AckLatency {
            commit: histogram!("tributary_sink_ack_latency_seconds", "sink" => sink.to_string(), "from" => "commit"),
            read: histogram!("tributary_sink_ack_latency_seconds", "sink" => sink.to_string(), "from" => "read"),
        }
    }

    pub fn record(&self, now_ms: u64, commit_ms: u64, read_ms: u64) {
        if commit_ms > 0 {
            self.commit
                .record(now_ms.saturating_sub(commit_ms) as f64 / 1000.0);
        }
        self.read
            .record(now_ms.saturating_sub(read_ms) as f64 / 1000.0);
    }
}

/// A schema change the guard let through, by table, kind and verdict.
pub fn schema_change(table: &str, kind: &'static str, verdict: &'static str) {
    counter!("tributary_schema_changes_total", "table" => table.to_string(), "change" => kind, "verdict" => verdict)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_other_hosts_reach_is_warned_about_unless_allowed() {
        let cfg = |listen: &str, allow_remote| MetricsConfig {
            listen: Some(listen.parse().unwrap()),
            allow_remote,
        };
        assert_eq!(cfg("127.0.0.1:9187", false).remote_warning(), None);
        assert_eq!(cfg("[::1]:9187", false).remote_warning(), None);
        let w = cfg("0.0.0.0:9187", false).remote_warning().unwrap();
        assert!(
            w.contains("allow_remote") && w.contains("0.0.0.0:9187"),
            "{w}"
        );
        assert!(cfg("10.0.0.5:9187", false).remote_warning().is_some());
        assert_eq!(cfg("0.0.0.0:9187", true).remote_warning(), None);
        assert_eq!(MetricsConfig::default().remote_warning(), None);
    }
}
