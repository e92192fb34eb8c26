//! Kafka sink: every change (and joined document event) as a record of its table's
//! topic, keyed by the row's key, in transactions that commit at the connector's
//! checkpoints, so `read_committed` consumers see each change once, in commit order
//! per key (docs/DESIGN.md, "Kafka").
//!
//! `config` holds the section; `producer` the writer thread and its transactions;
//! `progress` what Kafka already holds after a crash.

pub mod config;
mod producer;
pub mod progress;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::event::{
    ChangeEvent, Op, PerSchema, Position, SourceMessage, TableSchema, DOCUMENT_KIND,
};
use crate::kafka::record;
use crate::settings::ConfigError;
use crate::sink::{Ack, Sink, SinkContext, SinkError, SinkKind};
pub use config::KafkaSinkConfig;
use producer::{Record, Work, Writer};

/// Batches of records waiting for the writer (each batch is one `accept`).
const QUEUE: usize = 64;

impl SinkKind for KafkaSinkConfig {
    fn id(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "kafka:{}",
                self.connection
                    .brokers
                    .first()
                    .map(String::as_str)
                    .unwrap_or("")
            )
        })
    }

    fn validate(&self, path: &std::path::Path, text: &str) -> Result<(), ConfigError> {
        self.validate_section(path, text)
    }

    fn checkpoint_floor(&self) -> Option<(u64, &'static str)> {
        Some((
            self.transaction_interval_ms,
            "a Kafka sink: each checkpoint commits a Kafka transaction (transaction_interval_ms)",
        ))
    }

    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        context: &SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError> {
        // The cursor is the boundary of the checkpoint the sink acknowledged last:
        // where the connector resumes.
        let resume: Option<Position> = cursor
            .and_then(|c| c.get("checkpoint").cloned())
            .and_then(|p| serde_json::from_value(p).ok());
        let writer = Writer::new(id.clone(), self.clone(), &context.connector, resume)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name(format!("kafka-{id}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| SinkError::new(&id, format!("starting the writer: {e}")))?;
        Ok(Box::new(KafkaSink {
            id,
            cfg: self.clone(),
            connector: context.connector.clone(),
            work: tx,
            last_boundary: None,
            layouts: PerSchema::default(),
            documents: context.documents.clone(),
        }))
    }
}

pub struct KafkaSink {
    id: String,
    cfg: KafkaSinkConfig,
    connector: String,
    work: mpsc::Sender<Work>,
    last_boundary: Option<Position>,
    /// The `schema` header and the topic of each layout, rendered once.
    layouts: PerSchema<(Arc<[u8]>, Arc<str>)>,
    /// The joined documents' shapes, for their `schema` headers.
    documents: crate::document::stage::Shapes,
}

impl KafkaSink {
    async fn send(&self, w: Work) -> Result<(), SinkError> {
        self.work
            .send(w)
            .await
            .map_err(|_| SinkError::new(&self.id, "the Kafka writer stopped"))
    }

    /// The records of one change: the event, and a tombstone after a delete when
    /// `tombstones` is set.
    fn records(&mut self, e: &ChangeEvent, out: &mut Vec<Record>) {
        let t = &e.table;
        // Per layout, rendered once: the `schema` header and the topic's name.
        let (cfg, connector, documents) = (&self.cfg, &self.connector, &self.documents);
        let (schema, topic) = self
            .layouts
            .get_or_insert_with(t, || {
                // (A worker passing documents on carries the shape it learned.)
                let shape = (t.kind == DOCUMENT_KIND)
                    .then(|| crate::document::stage::shape_of(documents, &t.table))
                    .flatten();
                let header = record::schema_header(t, shape.as_deref());
                (header.into(), topic_of(cfg, connector, t))
            })
            .clone();
        let mut key = Vec::new();
        e.write_key_json(&mut key);
        let key = (key.as_slice() != b"null").then_some(key);
        let mut value = Vec::with_capacity(256);
        e.write_json(&mut value);
        let op = if t.kind == DOCUMENT_KIND {
            if e.op == Op::Delete {
                "doc_delete"
            } else {
                "doc"
            }
        } else {
            e.op.code()
        };
        let tombstone = self.cfg.tombstones && e.op == Op::Delete && key.is_some();
        out.push(Record {
            topic: topic.clone(),
            key: key.clone(),
            value: Some(value),
            op,
            version: e.version,
            schema_version: t.schema_version,
            schema: schema.clone(),
        });
        if tombstone {
            out.push(Record {
                topic,
                key,
                value: None,
                op,
                version: e.version,
                schema_version: t.schema_version,
                schema,
            });
        }
    }
}

/// The topic of table (or joined document) `t`'s records.
fn topic_of(cfg: &KafkaSinkConfig, connector: &str, t: &TableSchema) -> Arc<str> {
    let name = if t.kind == DOCUMENT_KIND {
        config::topic_name(
            &cfg.document_topic,
            &[("connector", connector), ("document", &t.table)],
        )
    } else {
        config::topic_name(
            &cfg.topic,
            &[("connector", connector), ("db", &t.db), ("table", &t.table)],
        )
    };
    name.into()
}

#[async_trait]
impl Sink for KafkaSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        let mut records = Vec::new();
        for m in batch {
            match m {
                SourceMessage::Change(e) => self.records(e, &mut records),
                SourceMessage::Commit(pos) => {
                    if !records.is_empty() {
                        self.send(Work::Records(std::mem::take(&mut records)))
                            .await?;
                    }
                    self.send(Work::Boundary(pos.clone())).await?;
                    self.last_boundary = Some(pos.clone());
                }
                SourceMessage::Rewind => {
                    if !records.is_empty() {
                        self.send(Work::Records(std::mem::take(&mut records)))
                            .await?;
                    }
                    self.send(Work::Rewind).await?;
                }
                SourceMessage::Schema(_) | SourceMessage::SnapshotProgress(_) => {}
            }
        }
        if !records.is_empty() {
            self.send(Work::Records(records)).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<Ack, SinkError> {
        let (ack, done) = oneshot::channel();
        self.send(Work::Flush(ack)).await?;
        let id = self.id.clone();
        let cursor = self
            .last_boundary
            .as_ref()
            .map(|p| serde_json::json!({ "checkpoint": p }));
        Ok(Box::pin(async move {
            done.await
                .map_err(|_| SinkError::new(&id, "the Kafka writer stopped"))??;
            Ok(cursor)
        }))
    }
}

/// For `tributary check`: whether the brokers answer (their number), and with
/// `create_topics = false` whether the progress topic exists.
pub async fn ping(cfg: &KafkaSinkConfig) -> Result<String, String> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let md = crate::kafka::connection::reach(&cfg.connection, "[[sink]]")?;
        let brokers = cfg.connection.brokers();
        let progress = md
            .topics()
            .iter()
            .any(|t| t.name() == cfg.progress_topic && t.error().is_none());
        if !cfg.create_topics && !progress {
            return Err(format!(
                "{brokers} answer, but topic {} does not exist and create_topics = false: create it (one partition, cleanup.policy=compact)",
                cfg.progress_topic
            ));
        }
        Ok(format!(
            "Kafka brokers {brokers} answer: {} broker(s), {} topic(s)",
            md.brokers().len(),
            md.topics().len()
        ))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// For `tributary status`: the sink's transactional id and the source boundary its
/// last committed Kafka transaction ends at (what Kafka holds).
pub async fn status(cfg: &KafkaSinkConfig, connector: &str) -> Result<serde_json::Value, String> {
    let cfg = cfg.clone();
    let id = cfg.transactional_id(connector);
    tokio::task::spawn_blocking(move || {
        let held = progress::read(&cfg, &id, cfg.connection.query_timeout())?;
        Ok(serde_json::json!({
            "brokers": cfg.connection.brokers(),
            "transactional_id": id,
            "progress_topic": cfg.progress_topic,
            "kafka_holds_through": held,
        }))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests;
