//! Test kit: builders for schemas and events, a scripted in-memory source, and sinks
//! that record, fail or acknowledge slowly. With it the pipeline is tested without any
//! server (see `pipeline::tests`).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::event::{
    ChangeEvent, Column, Op, Position, SourceMessage, TableChange, TableSchema, Value,
};
use crate::queue::QueueSender;
use crate::sink::{Ack, Sink, SinkError};
use crate::source::{Checkpoints, Source, SourceError};

/// A `s.t` schema (key: the first column).
pub fn test_schema(version: u32, cols: &[(&str, &str)]) -> crate::event::TableSchema {
    crate::event::TableSchema::new(
        std::sync::Arc::from("c"),
        "postgres",
        "s".into(),
        "t".into(),
        cols.iter()
            .map(|(n, t)| crate::event::Column {
                name: n.to_string(),
                type_name: t.to_string(),
            })
            .collect(),
        vec![0],
        version,
    )
}

/// A table `db.table` of (name, type) columns, keyed by the first, at `version`.
pub fn table(name: &str, columns: &[(&str, &str)], version: u32) -> Arc<TableSchema> {
    keyed_table_at(name, columns, &[0], version)
}

/// A table `db.table` of (name, type) columns keyed by the columns at `key`.
pub fn keyed_table(name: &str, columns: &[(&str, &str)], key: &[usize]) -> Arc<TableSchema> {
    keyed_table_at(name, columns, key, 1)
}

/// The `[[document]]` entries of a connector file's text.
pub fn documents(text: &str) -> Result<Vec<crate::document::DocumentConfig>, toml::de::Error> {
    #[derive(serde::Deserialize)]
    struct File {
        document: Vec<crate::document::DocumentConfig>,
    }
    toml::from_str::<File>(text).map(|f| f.document)
}

fn keyed_table_at(
    name: &str,
    columns: &[(&str, &str)],
    key: &[usize],
    version: u32,
) -> Arc<TableSchema> {
    let (db, table) = name.split_once('.').expect("db.table");
    Arc::new(TableSchema::new(
        Arc::from("test"),
        "postgres",
        db.into(),
        table.into(),
        columns
            .iter()
            .map(|(n, t)| Column {
                name: n.to_string(),
                type_name: t.to_string(),
            })
            .collect(),
        key.to_vec(),
        version,
    ))
}

/// The position of WAL location `lsn`.
pub fn at(lsn: u64) -> Position {
    Position::Wal { lsn }
}

/// An insert of the row (`id`, then NULLs) at `lsn`.
pub fn insert(schema: &Arc<TableSchema>, id: i64, lsn: u64) -> SourceMessage {
    let mut row = vec![Value::Int(id)];
    row.resize(schema.columns.len(), Value::Null);
    SourceMessage::Change(ChangeEvent {
        op: Op::Create,
        table: schema.clone(),
        pos: at(lsn),
        txid: None,
        source_ts_ms: 0,
        before: None,
        after: Some(row),
        version: lsn,
        ts_ms: 0,
    })
}

/// A change of `schema` from `before` to `after` at `lsn` (its op from which is given).
pub fn row_change(
    schema: &Arc<TableSchema>,
    before: Option<Vec<Value>>,
    after: Option<Vec<Value>>,
    lsn: u64,
) -> SourceMessage {
    let op = match (&before, &after) {
        (None, _) => Op::Create,
        (Some(_), Some(_)) => Op::Update,
        (Some(_), None) => Op::Delete,
    };
    SourceMessage::Change(ChangeEvent {
        op,
        table: schema.clone(),
        pos: at(lsn),
        txid: None,
        source_ts_ms: 0,
        before,
        after,
        version: lsn,
        ts_ms: 0,
    })
}

pub fn commit(lsn: u64) -> SourceMessage {
    SourceMessage::Commit(at(lsn))
}

/// A table-level change as a source reads it from DDL.
pub fn schema_change(table: &str, change: crate::schema::SchemaChange) -> SourceMessage {
    SourceMessage::Schema(TableChange {
        table: table.into(),
        change: crate::event::Stated::Change(change),
    })
}

/// A message as the recording sinks note it: `c db.t 7` (op, table, first value),
/// `commit 0/A`, `rewind`.
pub fn label(m: &SourceMessage) -> String {
    match m {
        SourceMessage::Change(e) => {
            let id = e
                .key_row()
                .and_then(|r| r.first())
                .map(|v| v.to_text())
                .unwrap_or_default();
            format!("{} {} {id}", e.op.code(), e.table.qualified_name())
        }
        SourceMessage::Commit(p) => format!("commit {p}"),
        SourceMessage::Rewind => "rewind".into(),
        SourceMessage::Schema(t) => format!("schema {}", t.table),
        SourceMessage::SnapshotProgress(_) => "progress".into(),
    }
}

/// One step of a scripted source.
pub enum Step {
    Send(SourceMessage),
    /// Hands what is buffered to the pipeline (a batch ends here).
    Flush,
    /// Waits until the pipeline published a checkpoint at or past this position.
    AwaitCheckpoint(Position),
    /// Waits until notified (`Notify::notify_one`).
    Wait(Arc<tokio::sync::Notify>),
    /// Stops with this fatal error.
    Fail(String),
}

/// A source that plays a script, then ends (which ends the run with a final
/// checkpoint). It notes where it was asked to resume.
pub struct ScriptedSource {
    script: Vec<Step>,
    pub resumed_from: Arc<Mutex<Option<Position>>>,
}

impl ScriptedSource {
    pub fn new(messages: impl IntoIterator<Item = Step>) -> Self {
        ScriptedSource {
            script: messages.into_iter().collect(),
            resumed_from: Arc::default(),
        }
    }

    /// The messages, handed over in one batch per `Commit`.
    pub fn batches(messages: impl IntoIterator<Item = SourceMessage>) -> Self {
        let mut steps = Vec::new();
        for m in messages {
            let boundary = matches!(m, SourceMessage::Commit(_));
            steps.push(Step::Send(m));
            if boundary {
                steps.push(Step::Flush);
            }
        }
        Self::new(steps)
    }
}

#[async_trait]
impl Source for ScriptedSource {
    async fn preflight(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    async fn run(
        &mut self,
        resume: Option<Position>,
        mut tx: QueueSender,
        mut checkpoints: Checkpoints,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        *self.resumed_from.lock().unwrap() = resume;
        for step in std::mem::take(&mut self.script) {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match step {
                Step::Send(m) => tx.send(m).await.map_err(|_| SourceError::Closed)?,
                Step::Flush => tx.flush().await.map_err(|_| SourceError::Closed)?,
                Step::AwaitCheckpoint(p) => {
                    tx.flush().await.map_err(|_| SourceError::Closed)?;
                    let reached = |c: &Option<Position>| {
                        c.as_ref().is_some_and(|c| c.at_or_after(&p) == Some(true))
                    };
                    tokio::select! {
                        r = checkpoints.wait_for(reached) => { r.map_err(|_| SourceError::Closed)?; }
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Step::Wait(n) => {
                    tx.flush().await.map_err(|_| SourceError::Closed)?;
                    n.notified().await
                }
                Step::Fail(m) => return Err(SourceError::Fatal(m)),
            }
        }
        tx.flush().await.map_err(|_| SourceError::Closed)?;
        Ok(())
    }
}

/// What a recording sink saw.
#[derive(Default, Debug)]
pub struct Recorded {
    /// Every accepted message's label, in order.
    pub accepted: Vec<String>,
    /// `accepted` as of each flush call.
    pub flushed_at: Vec<usize>,
    /// Flushes whose ack resolved.
    pub acked: usize,
    /// Flushes called while an earlier ack had not resolved.
    pub overlapping_flushes: usize,
}

/// How a recording sink acknowledges.
#[derive(Clone)]
pub enum Acks {
    /// At once.
    Now,
    /// When the test adds a permit (one per flush).
    Gated(Arc<Semaphore>),
    /// The n-th flush's ack (from 1) and every later one fail.
    FailFrom(usize),
}

/// A sink that records what it accepts; its cursor is the number of messages accepted
/// up to the flush (`{"n": ..}`).
pub struct RecordingSink {
    id: String,
    acks: Acks,
    pub seen: Arc<Mutex<Recorded>>,
    /// Acks not yet resolved.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl RecordingSink {
    pub fn new(id: &str, acks: Acks) -> Self {
        RecordingSink {
            id: id.into(),
            acks,
            seen: Arc::default(),
            open: Arc::default(),
        }
    }
}

#[async_trait]
impl Sink for RecordingSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        let mut seen = self.seen.lock().unwrap();
        seen.accepted.extend(batch.iter().map(label));
        Ok(())
    }

    async fn flush(&mut self) -> Result<Ack, SinkError> {
        use std::sync::atomic::Ordering;
        let (n, nth) = {
            let mut seen = self.seen.lock().unwrap();
            if self.open.load(Ordering::SeqCst) > 0 {
                seen.overlapping_flushes += 1;
            }
            let n = seen.accepted.len();
            seen.flushed_at.push(n);
            (n, seen.flushed_at.len())
        };
        self.open.fetch_add(1, Ordering::SeqCst);
        let (seen, open, acks, id) = (
            self.seen.clone(),
            self.open.clone(),
            self.acks.clone(),
            self.id.clone(),
        );
        Ok(Box::pin(async move {
            match acks {
                Acks::Now => {}
                Acks::Gated(permits) => permits
                    .acquire()
                    .await
                    .map_err(|_| SinkError::new(&id, "gate closed"))?
                    .forget(),
                Acks::FailFrom(k) if nth >= k => {
                    open.fetch_sub(1, Ordering::SeqCst);
                    return Err(SinkError::new(&id, format!("flush {nth} failed")));
                }
                Acks::FailFrom(_) => {}
            }
            open.fetch_sub(1, Ordering::SeqCst);
            seen.lock().unwrap().acked += 1;
            Ok(Some(serde_json::json!({ "n": n })))
        }))
    }
}

/// Cases per property test of the decoders: `default`, or `TRIBUTARY_FUZZ_CASES` for a
/// longer run (bench/fuzz_decoders.sh).
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("TRIBUTARY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
