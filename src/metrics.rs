//! Metrics: one home for their names and the Prometheus endpoint.
//!
//! Stages record through the `metrics` facade (free when no exporter is installed);
//! `[http] listen = "127.0.0.1:9187"` in the connector file serves them at
//! `http://<listen>/metrics` in the Prometheus text format (http.rs). Histograms are rendered as
//! summaries with quantiles 0.5, 0.9, 0.99, 0.999.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, histogram, Counter};
use serde::Deserialize;

use crate::event::Op;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[metrics]`: the older spelling of `[http]` (http::HttpConfig::of).
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

/// Installs the Prometheus recorder; the handle renders what it recorded (http.rs
/// serves it at `/metrics`).
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_quantiles(&[0.5, 0.9, 0.99, 0.999])
        .map_err(|e| format!("[http] metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("[http] metrics: {e}"))
}

/// Row changes that entered the pipeline, by table and op.
pub fn changes(table: &str, op: Op) -> Counter {
    counter!("tributary_changes_total", "table" => table.to_string(), "op" => op.code())
}

/// Joined documents built and handed to the sinks, by document.
pub fn documents_written(document: &str) -> Counter {
    counter!("tributary_documents_written_total", "document" => document.to_string())
}

/// Records a Kafka sink produced (committed or not), by sink.
pub fn kafka_produced(sink: &str) -> Counter {
    counter!("tributary_kafka_produced_total", "sink" => sink.to_string())
}

/// Kafka transactions a sink committed, by sink.
pub fn kafka_transactions(sink: &str) -> Counter {
    counter!("tributary_kafka_transactions_total", "sink" => sink.to_string())
}

/// Records a Kafka source took from its topics, by group.
pub fn kafka_consumed(group: &str) -> Counter {
    counter!("tributary_kafka_consumed_total", "group" => group.to_string())
}

/// Offset commits a Kafka source made to its group, by group.
pub fn kafka_group_commits(group: &str) -> Counter {
    counter!("tributary_kafka_group_commits_total", "group" => group.to_string())
}

/// Records of a partition after a Kafka source's position, by group and partition
/// (`topic/partition`).
pub fn kafka_lag(group: &str, partition: &str) -> metrics::Gauge {
    metrics::gauge!("tributary_kafka_consumer_lag", "group" => group.to_string(), "partition" => partition.to_string())
}

/// How many documents one change affected (its fan-out), by document.
pub fn document_fanout(document: &str) -> metrics::Histogram {
    metrics::histogram!("tributary_document_fanout", "document" => document.to_string())
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
    metrics::gauge!("tributary_last_checkpoint_timestamp_seconds")
        .set(crate::event::now_ms() as f64 / 1000.0);
}

/// What `/ready` says, as gauges (set every few seconds by the HTTP server): how long
/// the oldest change not in a stored checkpoint has waited, and 1 when ready.
pub fn readiness(lag: Duration, ready: bool) {
    metrics::gauge!("tributary_lag_seconds").set(lag.as_secs_f64());
    metrics::gauge!("tributary_ready").set(if ready { 1.0 } else { 0.0 });
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
        self.record_many(now_ms, commit_ms, read_ms, 1)
    }

    /// `n` changes of the same commit and read times at once.
    pub fn record_many(&self, now_ms: u64, commit_ms: u64, read_ms: u64, n: usize) {
        if commit_ms > 0 {
            self.commit
                .record_many(now_ms.saturating_sub(commit_ms) as f64 / 1000.0, n);
        }
        self.read
            .record_many(now_ms.saturating_sub(read_ms) as f64 / 1000.0, n);
    }
}

/// A schema change the guard let through, by table, kind and verdict.
pub fn schema_change(table: &str, kind: &'static str, verdict: &'static str) {
    counter!("tributary_schema_changes_total", "table" => table.to_string(), "change" => kind, "verdict" => verdict)
        .increment(1);
}
