//! The Kafka sink's writer: one thread that owns the transactional producer (its calls
//! block on the brokers) and takes the sink's work in commit order through a bounded
//! channel.
//!
//! Transactions: records go into the open Kafka transaction as they come. A flush
//! commits it at a source transaction boundary: at once when the last thing taken was
//! a boundary, else at the next one (a commit in the middle of a source transaction
//! would show half of it). Each commit carries a progress record (`progress`) naming
//! the boundary it ends at, so a restart from an older checkpoint skips what Kafka
//! holds already. A rewind of records already produced, or a transaction the brokers
//! abort, loses the transaction: the connector starts again from its checkpoint.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::sync::{mpsc, oneshot};

use super::config::KafkaSinkConfig;
use super::progress;
use crate::event::Position;
use crate::kafka::errors::{explain, is_retriable};
use crate::kafka::record;
use crate::sink::SinkError;

/// A record for a topic, as the sink built it from an event.
pub struct Record {
    pub topic: std::sync::Arc<str>,
    pub key: Option<Vec<u8>>,
    /// None: a tombstone.
    pub value: Option<Vec<u8>>,
    pub op: &'static str,
    pub version: u64,
    pub schema_version: u32,
    /// The `schema` header (`kafka::record`), shared by the records of one layout.
    pub schema: std::sync::Arc<[u8]>,
}

/// What the sink hands the writer, in commit order.
pub enum Work {
    Records(Vec<Record>),
    Boundary(Position),
    /// Commit what came before the last boundary; answer once Kafka has it.
    Flush(oneshot::Sender<Result<(), SinkError>>),
    Rewind,
}

pub struct Writer {
    id: String,
    cfg: KafkaSinkConfig,
    producer: ThreadedProducer<DefaultProducerContext>,
    admin: AdminClient<DefaultClientContext>,
    runtime: tokio::runtime::Handle,
    transactional_id: String,
    /// Where the connector resumes (its checkpoint), to compare with Kafka's progress.
    resume: Option<Position>,
    timeout: Duration,
    known_topics: HashSet<String>,
    in_transaction: bool,
    /// Records produced since the last boundary (a commit now would split a source
    /// transaction).
    tail: bool,
    last_boundary: Option<Position>,
    /// Flushes waiting for the next boundary.
    waiting: Vec<oneshot::Sender<Result<(), SinkError>>>,
    /// Skipping what Kafka holds already, up to this boundary.
    skip_through: Option<Position>,
    failed: Option<SinkError>,
    produced: metrics::Counter,
    committed: metrics::Counter,
}

impl Writer {
    pub fn new(
        id: String,
        cfg: KafkaSinkConfig,
        connector: &str,
        resume: Option<Position>,
    ) -> Result<Self, SinkError> {
        let err = |m: String| SinkError::new(&id, m);
        let transactional_id = cfg.transactional_id(connector);
        let timeout = Duration::from_secs(cfg.connection.request_timeout_secs.max(1));
        let mut client = cfg.client().map_err(err)?;
        client.set("allow.auto.create.topics", "false");
        let admin: AdminClient<DefaultClientContext> = client
            .create()
            .map_err(|e| err(format!("the Kafka admin client: {e}")))?;
        let mut producer = client.clone();
        // (A `compression.type` among `properties` is the user's word over ours.)
        if !cfg.connection.properties.contains_key("compression.type") {
            producer.set("compression.type", &cfg.compression);
        }
        let producer: ThreadedProducer<DefaultProducerContext> = producer
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            // The Java clients' partitioner: every Kafka client agrees where a key lives.
            .set("partitioner", "murmur2_random")
            // A commit waits for the brokers while they are away; the transaction
            // outlives an outage of up to 15 minutes (the brokers' default maximum).
            .set("transaction.timeout.ms", "900000")
            .set("message.timeout.ms", "900000")
            // Memory: at most this much waits in the producer's queue.
            .set("queue.buffering.max.kbytes", "65536")
            .create()
            .map_err(|e| err(format!("the Kafka producer: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| err("the Kafka sink opens inside the daemon's runtime".into()))?;
        Ok(Writer {
            produced: crate::metrics::kafka_produced(&id),
            committed: crate::metrics::kafka_transactions(&id),
            id,
            cfg,
            producer,
            admin,
            runtime,
            transactional_id,
            resume,
            timeout,
            known_topics: HashSet::new(),
            in_transaction: false,
            tail: false,
            last_boundary: None,
            waiting: Vec::new(),
            skip_through: None,
            failed: None,
        })
    }

    fn fail(&self, m: impl Into<String>) -> SinkError {
        SinkError::new(&self.id, m)
    }

    /// Runs until the sink is dropped: takes over the transactional id (which aborts
    /// what a previous writer left open), reads the progress, then the work.
    pub fn run(mut self, mut work: mpsc::Receiver<Work>) {
        if let Err(e) = self.start() {
            self.failed = Some(e);
        }
        while let Some(w) = work.blocking_recv() {
            if let Some(e) = &self.failed {
                if let Work::Flush(ack) = w {
                    let _ = ack.send(Err(clone_error(e)));
                }
                continue;
            }
            if let Err(e) = self.take(w) {
                tracing::error!(sink = %self.id, error = %e, "the Kafka sink stops");
                for ack in self.waiting.drain(..) {
                    let _ = ack.send(Err(clone_error(&e)));
                }
                self.failed = Some(e);
            }
        }
        if self.in_transaction {
            // Not acknowledged: the next start sends it again.
            let _ = self.producer.abort_transaction(self.timeout);
        }
    }

    fn start(&mut self) -> Result<(), SinkError> {
        let mut pause = Duration::from_secs(1);
        loop {
            match self.producer.init_transactions(self.timeout) {
                Ok(()) => break,
                Err(e) if is_retriable(&e) => {
                    tracing::warn!(sink = %self.id, brokers = %self.cfg.connection.brokers.join(","), error = %e, "cannot reach the Kafka brokers to take over transactional id {}; trying again", self.transactional_id);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    return Err(self.fail(format!(
                        "taking over transactional id {} at {}: {}",
                        self.transactional_id,
                        self.cfg.connection.brokers.join(","),
                        explain(&e)
                    )))
                }
            }
        }
        self.ensure_topic(&self.cfg.progress_topic.clone(), true)?;
        let held = progress::read(&self.cfg, &self.transactional_id, self.timeout)
            .map_err(|m| self.fail(m))?;
        if let Some(p) = held {
            let behind = match &self.resume {
                Some(c) => c.at_or_after(&p) != Some(true),
                None => false,
            };
            if behind {
                tracing::info!(sink = %self.id, through = %p, "Kafka holds the changes up to a later position than the checkpoint: skipping them");
                self.skip_through = Some(p);
            }
        }
        Ok(())
    }

    fn take(&mut self, w: Work) -> Result<(), SinkError> {
        match w {
            Work::Records(records) => {
                if self.skip_through.is_some() {
                    return Ok(());
                }
                for r in records {
                    self.produce(r)?;
                }
            }
            Work::Boundary(pos) => {
                if let Some(through) = &self.skip_through {
                    if pos.at_or_after(through) == Some(true) {
                        if pos.to_string() != through.to_string() {
                            tracing::warn!(sink = %self.id, boundary = %pos, through = %through, "the stream passed Kafka's progress without meeting it: sending from here");
                        }
                        self.skip_through = None;
                    }
                }
                self.tail = false;
                self.last_boundary = Some(pos);
                if !self.waiting.is_empty() {
                    self.commit()?;
                    for ack in self.waiting.drain(..) {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
            Work::Flush(ack) => {
                if self.tail {
                    self.waiting.push(ack);
                } else {
                    self.commit()?;
                    let _ = ack.send(Ok(()));
                }
            }
            Work::Rewind => {
                if self.tail {
                    let _ = self.producer.abort_transaction(self.timeout);
                    self.in_transaction = false;
                    return Err(SinkError::FromCheckpoint {
                        sink: self.id.clone(),
                        message: "the source resends a transaction part of which is in the open Kafka transaction, which was aborted".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn produce(&mut self, r: Record) -> Result<(), SinkError> {
        if !self.known_topics.contains(&*r.topic) {
            self.ensure_topic(&r.topic, false)?;
        }
        if !self.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(|e| self.fail(format!("beginning a transaction: {}", explain(&e))))?;
            self.in_transaction = true;
        }
        let version = r.version.to_string();
        let schema_version = r.schema_version.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: record::OP,
                value: Some(r.op),
            })
            .insert(Header {
                key: record::VERSION,
                value: Some(&version),
            })
            .insert(Header {
                key: record::SCHEMA_VERSION,
                value: Some(&schema_version),
            })
            .insert(Header {
                key: record::SCHEMA,
                value: Some(&*r.schema),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The producer's queue is full: wait while it drains.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(self.fail(format!("producing to {}: {}", r.topic, explain(&e))))
                }
            }
        }
        self.produced.increment(1);
        self.tail = true;
        Ok(())
    }

    /// Commits the open transaction with a progress record of the last boundary.
    fn commit(&mut self) -> Result<(), SinkError> {
        if !self.in_transaction {
            return Ok(());
        }
        if let Some(pos) = self.last_boundary.clone() {
            let value = progress::record(&pos);
            let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&self.cfg.progress_topic)
                .key(self.transactional_id.as_str())
                .payload(value.as_slice())
                .partition(0);
            if let Err((e, _)) = self.producer.send(record) {
                return Err(self.fail(format!(
                    "producing the progress record to {}: {}",
                    self.cfg.progress_topic,
                    explain(&e)
                )));
            }
        }
        let mut pause = Duration::from_millis(200);
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Ok(()) => break,
                Err(e) if requires_abort(&e) => {
                    let _ = self.producer.abort_transaction(self.timeout);
                    self.in_transaction = false;
                    return Err(SinkError::FromCheckpoint {
                        sink: self.id.clone(),
                        message: format!("the brokers aborted the transaction: {}", explain(&e)),
                    });
                }
                Err(e) if is_retriable(&e) => {
                    tracing::warn!(sink = %self.id, error = %explain(&e), "committing the Kafka transaction: the brokers do not answer; trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    return Err(self.fail(format!("committing a transaction: {}", explain(&e))))
                }
            }
        }
        self.in_transaction = false;
        self.committed.increment(1);
        Ok(())
    }

    /// Makes sure `topic` exists: creates it (the progress topic compacted, with one
    /// partition) when `create_topics`, else says it is missing.
    fn ensure_topic(&mut self, topic: &str, progress: bool) -> Result<(), SinkError> {
        let exists = self.topic_exists(topic)?;
        if !exists {
            if !self.cfg.create_topics {
                return Err(self.fail(format!(
                    "topic {topic} does not exist and create_topics = false: create it (or set create_topics = true)"
                )));
            }
            let partitions = if progress { 1 } else { self.cfg.partitions };
            let mut new = NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(self.cfg.replication_factor),
            );
            if progress {
                new = new.set("cleanup.policy", "compact");
            }
            let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
            let created = self
                .runtime
                .block_on(self.admin.create_topics(&[new], &opts))
                .map_err(|e| self.fail(format!("creating topic {topic}: {}", explain(&e))))?;
            for r in created {
                match r {
                    Ok(_) => {
                        tracing::info!(sink = %self.id, topic, partitions, "created topic")
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, code)) => {
                        return Err(self.fail(format!("creating topic {t}: {code}")));
                    }
                }
            }
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }

    fn topic_exists(&self, topic: &str) -> Result<bool, SinkError> {
        let mut pause = Duration::from_secs(1);
        loop {
            match self
                .producer
                .client()
                .fetch_metadata(Some(topic), self.timeout)
            {
                Ok(md) => {
                    return Ok(md.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    }))
                }
                Err(e) if is_retriable(&e) => {
                    tracing::warn!(sink = %self.id, topic, error = %explain(&e), "reading topic metadata: trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    return Err(self.fail(format!(
                        "reading the metadata of topic {topic}: {}",
                        explain(&e)
                    )))
                }
            }
        }
    }
}

fn clone_error(e: &SinkError) -> SinkError {
    match e {
        SinkError::Failed { sink, message } => SinkError::Failed {
            sink: sink.clone(),
            message: message.clone(),
        },
        SinkError::FromCheckpoint { sink, message } => SinkError::FromCheckpoint {
            sink: sink.clone(),
            message: message.clone(),
        },
    }
}

fn requires_abort(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort())
}
