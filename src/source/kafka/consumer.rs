//! The worker's consumer: one blocking thread that polls the group's partitions, turns
//! each record back into a change event, and commits the group's offsets once the
//! pipeline stored a checkpoint past them.
//!
//! Boundaries: the records of one partition are in commit order per key, but the
//! partitions interleave freely, so the source's transactions cannot be rebuilt here.
//! The worker puts a boundary (`SourceMessage::Commit`) after every
//! `boundary_records` records and whenever it has nothing more to read; its position
//! is the next offset of every partition it holds (`Position::Kafka`). A checkpoint
//! there means every sink has every record before those offsets.
//!
//! Rebalances: before a partition is taken away, the worker puts a boundary, waits
//! until the pipeline checkpointed it, and commits the partition's offset, so the next
//! owner starts where this one's sinks stopped. (A worker killed on the spot commits
//! nothing more: its successor reads again from the last commit, which versioned
//! writes make harmless.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::config::KafkaSourceConfig;
use super::SECTION;
use crate::event::consumer::{ConsumerDocument, ConsumerEvent};
use crate::event::{ChangeEvent, Position, SourceMessage, TableSchema};
use crate::kafka::errors::explain;
use crate::kafka::record::{self, Layouts};
use crate::queue::QueueSender;
use crate::source::filter::TableFilter;
use crate::source::{Checkpoints, CommonSettings, SourceError};

/// How long a revoked partition waits for the pipeline to checkpoint what was read of
/// it; past that it is released uncommitted (its next owner reads some records again).
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// How often the consumer lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

pub struct Worker {
    consumer: BaseConsumer<Context>,
    reader: Reader,
    shutdown: CancellationToken,
}

/// Turns records into change events and hands them on.
struct Reader {
    shared: Arc<Shared>,
    layouts: Layouts,
    filter: TableFilter,
    boundary_records: usize,
    /// `tributary_kafka_consumed_total` of the group (looked up once, not per record).
    consumed: metrics::Counter,
}

/// What the polling loop and the rebalance callback (which runs inside `poll`, on the
/// same thread) share.
struct Shared {
    state: Mutex<State>,
    runtime: Handle,
    group: String,
    /// `tributary_kafka_group_commits_total` of the group.
    commits: metrics::Counter,
}

struct State {
    tx: QueueSender,
    checkpoints: Checkpoints,
    /// The next offset of each partition held, by `topic/partition`.
    offsets: BTreeMap<String, i64>,
    /// Records handed on since the last boundary.
    pending: usize,
    /// What was last committed to the group, by `topic/partition`.
    committed: BTreeMap<String, i64>,
    /// The worker is leaving: a revocation now commits what is checkpointed, no more.
    closing: bool,
}

struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    /// librdkafka's statistics (every `LAG_EVERY`): the lag of each partition held.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    crate::metrics::kafka_lag(
                        &self.shared.group,
                        &partition_name(topic, *partition),
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = partition_names(list);
            let mut state = self.shared.state.lock().expect("not poisoned");
            if consumer.assignment_lost() {
                // The group went on without this worker (its session expired, the
                // coordinator lost it): the partitions may have a new owner already, and
                // a commit would be refused. What was read since the last commit is read
                // again by that owner.
                self.shared.forget(&mut state, &revoked);
                tracing::warn!(group = %self.shared.group, partitions = ?revoked, "kafka partitions lost: the group dropped this worker; their next owner reads them from the last commit");
                return;
            }
            let ok = self.shared.release(consumer, &mut state, &revoked);
            tracing::info!(group = %self.shared.group, partitions = ?revoked, committed = ok, "kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = partition_names(list);
                tracing::info!(group = %self.shared.group, partitions = ?assigned, "kafka partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.shared.group, error = %explain(e), "kafka rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

fn partition_names(list: &TopicPartitionList) -> Vec<String> {
    list.elements()
        .iter()
        .map(|e| partition_name(e.topic(), e.partition()))
        .collect()
}

fn split_name(name: &str) -> Option<(&str, i32)> {
    let (t, p) = name.rsplit_once('/')?;
    Some((t, p.parse().ok()?))
}

impl Shared {
    fn send(&self, state: &mut State, m: SourceMessage) -> Result<(), SourceError> {
        self.runtime
            .block_on(state.tx.send(m))
            .map_err(|_| SourceError::Closed)
    }

    /// Puts a boundary after the records handed on (if any), and hands on the batch.
    ///
    /// The position of a partition is the consumer's where it is further: past the
    /// transaction markers after the last record (control records take offsets but
    /// never reach the worker), so a group that read everything commits the end of the
    /// partition and shows no lag.
    fn boundary(
        &self,
        consumer: &BaseConsumer<Context>,
        state: &mut State,
    ) -> Result<(), SourceError> {
        let mut advanced = false;
        if let Ok(positions) = consumer.position() {
            for e in positions.elements() {
                let Offset::Offset(at) = e.offset() else {
                    continue;
                };
                let name = partition_name(e.topic(), e.partition());
                if let Some(mine) = state.offsets.get_mut(&name) {
                    if at > *mine {
                        *mine = at;
                        advanced = true;
                    }
                }
            }
        }
        if state.pending > 0 || advanced {
            let pos = Position::Kafka {
                offsets: Arc::new(state.offsets.clone()),
            };
            self.send(state, SourceMessage::Commit(pos))?;
            state.pending = 0;
        }
        self.runtime
            .block_on(state.tx.flush())
            .map_err(|_| SourceError::Closed)
    }

    /// Offsets of `partitions` the pipeline stored a checkpoint at, which the group
    /// does not have yet.
    fn stored(state: &State, partitions: &[String]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        if let Some(Position::Kafka { offsets }) = &*state.checkpoints.borrow() {
            for p in partitions {
                let (Some(&at), Some((topic, partition))) = (offsets.get(p), split_name(p)) else {
                    continue;
                };
                if state.committed.get(p) != Some(&at) {
                    let _ = list.add_partition_offset(topic, partition, Offset::Offset(at));
                }
            }
        }
        list
    }

    /// Commits `list` to the group; false (and a warning) when the brokers refused.
    fn commit(
        &self,
        consumer: &BaseConsumer<Context>,
        state: &mut State,
        list: &TopicPartitionList,
    ) -> bool {
        if list.count() == 0 {
            return true;
        }
        match consumer.commit(list, CommitMode::Sync) {
            Ok(()) => {
                for e in list.elements() {
                    if let Offset::Offset(at) = e.offset() {
                        state
                            .committed
                            .insert(partition_name(e.topic(), e.partition()), at);
                    }
                }
                self.commits.increment(1);
                true
            }
            Err(e) => {
                // Not a loss: the next commit, or the partition's next owner reading
                // from the previous one, covers it.
                tracing::warn!(group = %self.group, error = %explain(&e), "committing the group's offsets; they are committed with the next checkpoint");
                false
            }
        }
    }

    /// Checkpoints what was read of `partitions` (a boundary, and a wait for the
    /// pipeline to store it) unless the worker is leaving and did so already, then
    /// commits what is checkpointed of them; whether the group took it.
    fn settle(
        &self,
        consumer: &BaseConsumer<Context>,
        state: &mut State,
        partitions: &[String],
    ) -> bool {
        if !state.closing && self.boundary(consumer, state).is_ok() {
            let target: BTreeMap<String, i64> = partitions
                .iter()
                .filter_map(|p| state.offsets.get(p).map(|o| (p.clone(), *o)))
                .collect();
            if !self.wait_for(state, &target, REVOKE_WAIT) {
                tracing::warn!(group = %self.group, partitions = ?partitions, "the sinks did not acknowledge the partitions' records within {} s: their next owner reads them again", REVOKE_WAIT.as_secs());
            }
        }
        let list = Self::stored(state, partitions);
        self.commit(consumer, state, &list)
    }

    /// A revocation: the partitions settled, then forgotten.
    fn release(
        &self,
        consumer: &BaseConsumer<Context>,
        state: &mut State,
        revoked: &[String],
    ) -> bool {
        let ok = self.settle(consumer, state, revoked);
        self.forget(state, revoked);
        ok
    }

    fn forget(&self, state: &mut State, partitions: &[String]) {
        for p in partitions {
            state.offsets.remove(p);
            state.committed.remove(p);
        }
    }

    /// Waits up to `limit` for a stored checkpoint at or past `target`.
    fn wait_for(&self, state: &mut State, target: &BTreeMap<String, i64>, limit: Duration) -> bool {
        if target.is_empty() {
            return true;
        }
        let target = Position::Kafka {
            offsets: Arc::new(target.clone()),
        };
        let checkpoints = &mut state.checkpoints;
        self.runtime.block_on(async {
            tokio::time::timeout(limit, async {
                loop {
                    let reached = checkpoints
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|c| c.at_or_after(&target) == Some(true));
                    if reached {
                        return true;
                    }
                    if checkpoints.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await
            .unwrap_or(false)
        })
    }
}

impl Worker {
    pub fn new(
        cfg: &KafkaSourceConfig,
        tx: QueueSender,
        checkpoints: Checkpoints,
        shutdown: CancellationToken,
    ) -> Result<Worker, SourceError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tx,
                checkpoints,
                offsets: BTreeMap::new(),
                pending: 0,
                committed: BTreeMap::new(),
                closing: false,
            }),
            runtime: Handle::current(),
            group: cfg.group.clone(),
            commits: crate::metrics::kafka_group_commits(&cfg.group),
        });
        let fatal = |m: String| SourceError::Fatal(m);
        let mut client = cfg.connection.client(SECTION).map_err(fatal)?;
        client
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            // A group's first worker reads the topics from their start: nothing
            // published before it joined is skipped.
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", LAG_EVERY.as_millis().to_string());
        // A topic that does not exist yet (the sink creates it with its first record),
        // or a new one a pattern matches, is found within this (librdkafka: 5 min).
        if !cfg
            .connection
            .properties
            .contains_key("topic.metadata.refresh.interval.ms")
        {
            client.set("topic.metadata.refresh.interval.ms", "10000");
        }
        let consumer: BaseConsumer<Context> = client
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|e| fatal(format!("[source] kind = \"kafka\": {}", explain(&e))))?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| fatal(format!("[source] topics: {}", explain(&e))))?;
        Ok(Worker {
            consumer,
            reader: Reader {
                shared,
                layouts: Layouts::default(),
                filter: cfg.filter(),
                boundary_records: cfg.boundary_records,
                consumed: crate::metrics::kafka_consumed(&cfg.group),
            },
            shutdown,
        })
    }

    /// Polls until shutdown or a fatal error; then checkpoints and commits what it
    /// read, and leaves the group.
    pub fn run(mut self) -> Result<(), SourceError> {
        crate::health::source(crate::health::Source::Streaming);
        let result = self.poll_loop();
        if !matches!(result, Err(SourceError::Fatal(_))) {
            self.leave();
        }
        result
    }

    fn poll_loop(&mut self) -> Result<(), SourceError> {
        let mut down_since: Option<Instant> = None;
        while !self.shutdown.is_cancelled() {
            self.commit_stored();
            let pending = self
                .reader
                .shared
                .state
                .lock()
                .expect("not poisoned")
                .pending;
            let wait = Duration::from_millis(if pending > 0 { 0 } else { 100 });
            match self.consumer.poll(wait) {
                None => {
                    let mut state = self.reader.shared.state.lock().expect("not poisoned");
                    self.reader.shared.boundary(&self.consumer, &mut state)?;
                }
                Some(Ok(m)) => {
                    if down_since.take().is_some() {
                        crate::health::source(crate::health::Source::Streaming);
                    }
                    self.reader.take(&self.consumer, &m)?;
                }
                // Brokers away, a coordinator moving: librdkafka reconnects by itself.
                Some(Err(e)) if !is_fatal(&e) => {
                    if down_since.is_none() {
                        tracing::warn!(group = %self.reader.shared.group, error = %explain(&e), "kafka consumer: retrying");
                        crate::health::source(crate::health::Source::Down(explain(&e)));
                        down_since = Some(Instant::now());
                    }
                }
                Some(Err(e)) => {
                    return Err(SourceError::Fatal(format!(
                        "[source] kind = \"kafka\" ({}): {}",
                        self.reader.shared.group,
                        explain(&e)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Commits the offsets of the newest stored checkpoint the group lacks.
    fn commit_stored(&self) {
        let mut state = self.reader.shared.state.lock().expect("not poisoned");
        if !state.checkpoints.has_changed().unwrap_or(false) {
            return;
        }
        state.checkpoints.borrow_and_update();
        let held: Vec<String> = state.offsets.keys().cloned().collect();
        let list = Shared::stored(&state, &held);
        self.reader.shared.commit(&self.consumer, &mut state, &list);
    }

    /// Shutdown: a boundary after what was read, the checkpoint there, its offsets
    /// committed; then the consumer leaves the group (its revocation commits nothing
    /// new).
    fn leave(self) {
        {
            let mut state = self.reader.shared.state.lock().expect("not poisoned");
            let held: Vec<String> = state.offsets.keys().cloned().collect();
            self.reader.shared.settle(&self.consumer, &mut state, &held);
            state.closing = true;
        }
        tracing::info!(group = %self.reader.shared.group, "leaving the kafka consumer group");
        drop(self.consumer);
    }
}

impl Reader {
    /// One record: the change event it holds, handed on.
    fn take(
        &mut self,
        consumer: &BaseConsumer<Context>,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), SourceError> {
        let name = partition_name(m.topic(), m.partition());
        let at = || {
            format!(
                "topic {} partition {} offset {}",
                m.topic(),
                m.partition(),
                m.offset()
            )
        };
        let header = |key: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == key).and_then(|h| h.value))
        };
        let event = match m.payload() {
            // A tombstone (`tombstones = true`): the delete before it carried the change.
            None => None,
            Some(value) => {
                let document = header(record::OP)
                    .is_some_and(|op| record::DOC_OPS.iter().any(|d| d.as_bytes() == op));
                let schema = header(record::SCHEMA).ok_or_else(|| {
                    SourceError::Fatal(format!(
                        "{}: the record has no `schema` header: it was not written by a tributary Kafka sink (or by one older than the kafka source)",
                        at()
                    ))
                })?;
                let schema = self
                    .layouts
                    .schema(schema)
                    .map_err(|e| SourceError::Fatal(format!("{}: {e}", at())))?;
                if document {
                    // (The topics choose the documents: `include` names tables.)
                    let text = std::str::from_utf8(value)
                        .map_err(|e| SourceError::Fatal(format!("{}: {e}", at())))?;
                    let pos = Position::Kafka {
                        offsets: Arc::new([(name.clone(), m.offset() + 1)].into()),
                    };
                    let event = document_event(text, schema, pos)
                        .map_err(|e| SourceError::Fatal(format!("{}: {e}", at())))?;
                    Some(event)
                } else if self.filter.matches(&schema.db, &schema.table) {
                    let text = std::str::from_utf8(value)
                        .map_err(|e| SourceError::Fatal(format!("{}: {e}", at())))?;
                    let event = ConsumerEvent::parse(text)
                        .and_then(|c| c.into_event(schema))
                        .map_err(|e| SourceError::Fatal(format!("{}: {e}", at())))?;
                    Some(event)
                } else {
                    None
                }
            }
        };
        let mut state = self.shared.state.lock().expect("not poisoned");
        if let Some(event) = event {
            self.shared.send(&mut state, SourceMessage::Change(event))?;
        }
        state.offsets.insert(name, m.offset() + 1);
        state.pending += 1;
        self.consumed.increment(1);
        if state.pending >= self.boundary_records {
            self.shared.boundary(consumer, &mut state)?;
        }
        Ok(())
    }
}

/// A joined document's record as the document's event; its shape came with the
/// record's `schema` header (the sinks map the document from it).
fn document_event(
    text: &str,
    schema: Arc<TableSchema>,
    pos: Position,
) -> Result<ChangeEvent, String> {
    let shape = crate::document::stage::shape_of(&Default::default(), &schema.table)
        .ok_or_else(|| {
            format!(
                "document `{}`: the `schema` header carries no shape (written by a tributary older than workers of documents)",
                schema.table
            )
        })?;
    let root_kind = shape
        .schema_of(&shape.tree.nodes[0].table)
        .map_or(schema.kind, |t| t.kind);
    ConsumerDocument::parse(text)?.into_event(schema, root_kind, pos)
}

/// Errors a consumer cannot get past by waiting: the user must act.
fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        crate::kafka::errors::code(e),
        Some(
            C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidGroupId
        )
    )
}
