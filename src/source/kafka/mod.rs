//! `[source] kind = "kafka"`: a worker of a consumer group. It reads the records a
//! Kafka sink wrote (`kafka::record`), turns them back into change events, and hands
//! them to the pipeline like a database source: enrichment and the sinks run as they
//! do for the connector that read the database. The group's offsets are committed only
//! after every sink acknowledged the records before them (at-least-once; versioned
//! Elasticsearch writes make the index exact), and a partition taken away in a
//! rebalance is checkpointed and committed before it is released (`consumer`).
//!
//! A worker has no state of its own worth keeping: it resumes from its group's
//! offsets, not from its local checkpoint, so adding a worker is starting one.

pub mod config;
mod consumer;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use config::KafkaSourceConfig;

use crate::event::{Column, Position, Row, Value};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::queue::QueueSender;
use crate::settings::ConfigError;
use crate::source::scan::{Scanned, ScannedTable, TableScan, Window};
use crate::source::{CheckReport, Checkpoints, Lookup, Source, SourceError, SourceKind};

const SECTION: &str = "[source]";

#[async_trait]
impl SourceKind for KafkaSourceConfig {
    fn address(&self) -> String {
        KafkaSourceConfig::address(self)
    }

    fn user(&self) -> &str {
        self.connection.username.as_deref().unwrap_or("")
    }

    fn validate(&self, path: &std::path::Path, text: &str) -> Result<(), ConfigError> {
        self.validate_section(path, text)
    }

    fn open(&self, _connector: &str, _store: Arc<OffsetStore>) -> (Box<dyn Source>, String) {
        let desc = format!("kafka {} group {}", self.address(), self.group);
        (Box::new(KafkaSource { cfg: self.clone() }), desc)
    }

    async fn check(&self, _checkpoint: Option<&Position>) -> Result<CheckReport, Failure> {
        let cfg = self.clone();
        tokio::task::spawn_blocking(move || check(&cfg))
            .await
            .map_err(|e| Failure::Fatal(e.to_string()))?
    }

    async fn live_schemas(&self) -> Result<Vec<(String, Vec<Column>)>, Failure> {
        refuse("policy diff")
    }

    fn lookup(&self, _connector: &str) -> Arc<dyn Lookup> {
        Arc::new(NoDatabase)
    }

    fn scan(&self, _connector: &str) -> Arc<dyn TableScan> {
        Arc::new(NoDatabase)
    }
}

/// What a command or enricher that reads the source database is told by a worker.
const NO_DATABASE: &str = "a kafka source has no database to read for {what}: run it with the connector file of the tributary that reads the database (the one whose Kafka sink fills these topics)";

/// The brokers answer, and which topics the section names they have.
fn check(cfg: &KafkaSourceConfig) -> Result<CheckReport, Failure> {
    let md = crate::kafka::connection::reach(&cfg.connection, SECTION).map_err(Failure::Fatal)?;
    let mut report = CheckReport::default();
    report.info.push(format!(
        "Kafka brokers {} answer: {} broker(s)",
        cfg.connection.brokers(),
        md.brokers().len()
    ));
    let have: Vec<&str> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name())
        .collect();
    match cfg.pattern().map_err(|e| Failure::Fatal(e.to_string()))? {
        Some(re) => {
            let p = re.as_str();
            let n = have.iter().filter(|t| re.is_match(t)).count();
            if n == 0 {
                report.warnings.push(format!(
                    "no topic matches `{p}` yet: the worker waits for one"
                ));
            } else {
                report.info.push(format!("{n} topic(s) match `{p}`"));
            }
        }
        None => {
            for t in &cfg.topics {
                if have.contains(&t.as_str()) {
                    report.info.push(format!("topic {t} exists"));
                } else {
                    // A worker may start before the sink that creates its topics.
                    report.warnings.push(format!(
                        "topic {t} does not exist (yet): the worker waits for it; check [source] topics if no connector's Kafka sink writes it"
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// For `tributary status`: per partition of the worker's topics, the group's committed
/// offset, the partition's end and the lag between them.
pub async fn group_status(cfg: &KafkaSourceConfig) -> Result<serde_json::Value, String> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || group_offsets(&cfg))
        .await
        .map_err(|e| e.to_string())?
}

fn group_offsets(cfg: &KafkaSourceConfig) -> Result<serde_json::Value, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let md = crate::kafka::connection::reach(&cfg.connection, SECTION)?;
    let pattern = cfg.pattern().map_err(|e| e.to_string())?;
    let mut list = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.error().is_none()) {
        if cfg.reads(pattern.as_ref(), t.name()) {
            for p in t.partitions() {
                list.add_partition(t.name(), p.id());
            }
        }
    }
    // A consumer of the group that never subscribes: it reads the group's offsets
    // without joining (no rebalance of the running workers).
    let consumer: BaseConsumer = cfg
        .connection
        .client(SECTION)?
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| crate::kafka::errors::explain(&e))?;
    let timeout = cfg.connection.query_timeout();
    let committed = consumer.committed_offsets(list, timeout).map_err(|e| {
        format!(
            "reading group {}'s offsets: {}",
            cfg.group,
            crate::kafka::errors::explain(&e)
        )
    })?;
    // Every partition's end in one request (timestamp -1: the latest offset; for a
    // read_committed client, the last stable one), not one round trip per partition.
    let mut latest = TopicPartitionList::new();
    for e in committed.elements() {
        latest
            .add_partition_offset(e.topic(), e.partition(), Offset::End)
            .map_err(|err| err.to_string())?;
    }
    let ends = consumer.offsets_for_times(latest, timeout).map_err(|e| {
        format!(
            "reading the topics' ends: {}",
            crate::kafka::errors::explain(&e)
        )
    })?;
    let mut partitions = serde_json::Map::new();
    let mut total_lag = 0i64;
    let offset = |o: Offset| match o {
        Offset::Offset(o) => Some(o),
        _ => None,
    };
    for e in committed.elements() {
        let end = ends
            .find_partition(e.topic(), e.partition())
            .and_then(|p| offset(p.offset()));
        let at = offset(e.offset());
        // No commit yet: the whole partition is behind (its start may have been
        // deleted by retention; the lag is then an upper bound).
        let lag = end.map(|end| (end - at.unwrap_or(0)).max(0));
        total_lag += lag.unwrap_or(0);
        partitions.insert(
            format!("{}/{}", e.topic(), e.partition()),
            serde_json::json!({ "committed": at, "end": end, "lag": lag }),
        );
    }
    Ok(serde_json::json!({
        "group": cfg.group,
        "brokers": cfg.connection.brokers(),
        "lag": total_lag,
        "partitions": partitions,
    }))
}

struct KafkaSource {
    cfg: KafkaSourceConfig,
}

#[async_trait]
impl Source for KafkaSource {
    async fn preflight(&mut self) -> Result<(), SourceError> {
        let report = self
            .cfg
            .check(None)
            .await
            .map_err(|e| SourceError::Fatal(e.message().to_string()))?;
        report.require_ready(&self.cfg.address())
    }

    /// Resumes from the group's committed offsets: `resume` (the local checkpoint) is
    /// at or behind them, as offsets are committed after it is stored.
    async fn run(
        &mut self,
        _resume: Option<Position>,
        tx: QueueSender,
        checkpoints: Checkpoints,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let worker = consumer::Worker::new(&self.cfg, tx, checkpoints, shutdown)?;
        tokio::task::spawn_blocking(move || worker.run())
            .await
            .map_err(|e| SourceError::Fatal(format!("the Kafka consumer failed: {e}")))?
    }
}

/// The lookup and scan of a kafka source: each call says there is no database.
struct NoDatabase;

fn refuse<T>(what: &str) -> Result<T, Failure> {
    Err(Failure::Fatal(NO_DATABASE.replace("{what}", what)))
}

#[async_trait]
impl Lookup for NoDatabase {
    async fn describe(&self, _table: &str) -> Result<Option<Vec<Column>>, Failure> {
        refuse("the lookup enricher")
    }

    async fn fetch(&self, _table: &str, _key: &str, _keys: &[Value]) -> Result<Vec<Row>, Failure> {
        refuse("the lookup enricher")
    }
}

#[async_trait]
impl TableScan for NoDatabase {
    async fn table(&self, _table: &str) -> Result<Option<ScannedTable>, Failure> {
        refuse("verify, snapshots or joined documents")
    }

    async fn chunk(
        &self,
        _t: &str,
        _after: Option<&[Value]>,
        _limit: u64,
    ) -> Result<Scanned, Failure> {
        refuse("verify")
    }

    async fn rows(&self, _t: &str, _keys: &[Vec<Value>]) -> Result<(Vec<Row>, Window), Failure> {
        refuse("verify")
    }
}

#[cfg(test)]
mod tests;
