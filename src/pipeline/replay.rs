//! `tributary quarantine replay`: sends a quarantined table's events on to the sinks
//! once the policy lets its schema change through.
//!
//! Runs while the daemon is stopped (it needs the offsets store, which one process
//! holds). The daemon stopped at a checkpoint; the quarantine stream holds the table's
//! changes up to it, and the source holds everything after it. So replaying the stream,
//! releasing the table in the guard's state and storing that with the sinks' cursors
//! in one commit leaves nothing lost or doubled: the next run sends the table's later
//! changes straight on. A replay that fails before that commit changes nothing stored
//! (the log sinks are cut back on their next open; Elasticsearch writes are versioned,
//! so running the replay again converges).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::config::ConnectorConfig;
use crate::document::stage::{Documents, Shapes, PAGE};
use crate::event::{ChangeEvent, SourceMessage};
use crate::journal::LogRecordError;
use crate::offsets::{OffsetError, OffsetStore, Saved};
use crate::registry;
use crate::schema::guard::{Guard, Pass};
use crate::schema::history::Schemas;
use crate::schema::quarantine::{self, QuarantineRecord, QuarantineStream};
use crate::schema::Policy;
use crate::sink::Sink;

use super::checkpoint::{flush_all, Participant, SnapshotProgress};
use super::PipelineError;

/// Events handed to the sinks per batch.
pub(super) const BATCH: usize = 1024;

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Released tables with the number of changes sent on.
    pub replayed: BTreeMap<String, u64>,
    /// Tables still quarantined.
    pub remaining: Vec<String>,
}

/// The offsets store for a replay (`command` names it in the error): it needs the
/// daemon stopped.
pub(crate) fn open_store(
    cfg: &ConnectorConfig,
    command: &str,
) -> Result<Arc<OffsetStore>, PipelineError> {
    cfg.state.open_store().map(Arc::new).map_err(|e| match e {
        OffsetError::InUse { path } => PipelineError::Stopped(format!(
            "{command}: the daemon of {} is running (state dir {} is in use): stop it first (its checkpoint keeps every change), replay, then start it again",
            cfg.path.display(),
            path.display()
        )),
        other => other.into(),
    })
}

/// Replays the quarantined changes of `only` (every quarantined table when empty).
pub async fn replay(cfg: &ConnectorConfig, only: &[String]) -> Result<ReplayReport, PipelineError> {
    let store = open_store(cfg, "quarantine replay")?;
    let policy = cfg.policy()?;
    let quarantined = Guard::restore(policy.clone(), &store)?
        .quarantined()
        .clone();
    let mut report = ReplayReport::default();
    if quarantined.is_empty() {
        return Ok(report);
    }
    for t in only {
        if !quarantined.contains_key(t) {
            return Err(PipelineError::Replay(format!(
                "table {t} is not quarantined (quarantined: {})",
                quarantined.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let chosen: HashMap<String, u64> = quarantined
        .iter()
        .filter(|(t, _)| only.is_empty() || only.contains(t))
        .map(|(t, q)| (t.clone(), q.epoch))
        .collect();

    // Opening cuts what was written after the last checkpoint: the daemon writes it
    // again when it resumes there.
    let journal = cfg.quarantine_journal();
    let dir = journal.dir.clone();
    drop(QuarantineStream::open(
        &journal,
        store.sink_cursor(quarantine::STREAM_ID)?,
    )?);
    let mut schemas = Schemas::new(
        cfg.connector_name().into(),
        cfg.source.kind(),
        store.schema_history()?,
    );

    // First pass, sending nothing: every schema the records carry must pass the policy
    // now, or no sink sees any of them.
    let mut dry = release(Guard::restore(policy.clone(), &store)?, &chosen);
    let mut last: HashMap<String, u32> = HashMap::new();
    let (mut rx, reader) = records(&dir, &chosen);
    while let Some(r) = rx.recv().await {
        let name = r.event.qualified_name();
        if last.get(&name) == Some(&r.event.schema_version) {
            continue;
        }
        last.insert(name, r.event.schema_version);
        let probe = ChangeEvent {
            before: None,
            after: None,
            ..event(&mut schemas, cfg, r)?
        };
        decide(&mut dry, &probe)?;
    }
    finish(reader).await?;

    // Second pass: send them on, in stream order.
    let mut guard = release(Guard::restore(policy.clone(), &store)?, &chosen);
    // The same enrichment and joined documents as the live stream (their state and
    // dead letters stored with the replay's commit).
    let mut onward = Onward::every_stage(cfg, &store, policy)
        .await
        .map_err(|e| PipelineError::Replay(e.to_string()))?;
    for t in chosen.keys() {
        report.replayed.insert(t.clone(), 0);
    }
    let mut batch: Vec<SourceMessage> = Vec::with_capacity(BATCH + 1);
    let (mut rx, reader) = records(&dir, &chosen);
    while let Some(r) = rx.recv().await {
        let e = event(&mut schemas, cfg, r)?;
        if decide(&mut guard, &e)? {
            *report
                .replayed
                .get_mut(&e.table.qualified_name())
                .expect("a chosen table") += 1;
            batch.push(SourceMessage::Change(e));
            if batch.len() >= BATCH {
                onward.send(&mut batch).await?;
            }
        }
    }
    finish(reader).await?;
    onward.send(&mut batch).await?;

    // One commit: the sinks' cursors past the replayed changes, the enrichment's state
    // and dead letters, the documents' states, and the guard with the tables released
    // and their new layout accepted.
    guard.commit();
    let mut saved = onward.flush(vec![&mut guard]).await?;
    report.remaining = guard.quarantined().keys().cloned().collect();
    let emptied = report.remaining.is_empty();
    if emptied {
        saved.push(Saved::Cursor(
            quarantine::STREAM_ID.to_string(),
            QuarantineStream::empty_cursor(),
        ));
    }
    store.commit(None, &saved)?;
    onward.stored()?;
    if emptied {
        // Nothing waits any more: opening at the empty cursor removes the records.
        drop(QuarantineStream::open(
            &journal,
            Some(QuarantineStream::empty_cursor()),
        )?);
    }
    Ok(report)
}

/// Where a replay sends changes on, as the live pipeline would have: through the
/// enrichment and the joined documents to the sinks (changes that reached none of
/// them: quarantined, or refused by an enrichment step), or to one sink alone (what
/// that sink refused; the rest of the pipeline has it). Shared by both replays
/// (`dead_letters`).
pub(super) struct Onward {
    enrich: crate::enrich::Stage,
    documents: Documents,
    sinks: Vec<Box<dyn Sink>>,
    snapshot: SnapshotProgress,
}

impl Onward {
    /// Every stage after the guard.
    pub async fn every_stage(
        cfg: &ConnectorConfig,
        store: &Arc<OffsetStore>,
        policy: Policy,
    ) -> Result<Self, PipelineError> {
        let mut enrich = registry::enrich(cfg, store).await?;
        let (documents, shapes) = super::open_documents(cfg, store, &mut enrich).await?;
        let sinks = registry::sinks(
            &cfg.sinks,
            store,
            &registry::sink_context(cfg, policy, shapes),
        )?;
        Ok(Onward {
            enrich,
            // The documents' states went on without these changes.
            documents: documents.late(),
            sinks,
            snapshot: SnapshotProgress::new(store.stage_state(crate::snapshot::STATE_ID)?),
        })
    }

    /// The sink `id` alone. It maps a document it refused from the document's shape,
    /// read from the server as the daemon reads it.
    pub async fn one_sink(
        cfg: &ConnectorConfig,
        store: &Arc<OffsetStore>,
        policy: Policy,
        id: &str,
    ) -> Result<Self, PipelineError> {
        let shapes = if cfg.document.is_empty() {
            Shapes::default()
        } else {
            // The enrichment only for the layouts it gives the tables: no stream of
            // its own is opened (this replay writes none).
            let lookups = cfg.source.source().lookup(&cfg.connector_name());
            let mut enrich =
                crate::enrich::Stage::detached(&cfg.enrich, &cfg.path, || lookups, Some(store))
                    .await?;
            Arc::new(super::document_shapes(cfg, &mut enrich).await?)
        };
        // Opening what the replay writes to cuts its stream back to its last
        // checkpoint, before it is read.
        let sinks = registry::sinks(
            &cfg.sinks,
            store,
            &registry::sink_context(cfg, policy, shapes),
        )?
        .into_iter()
        .filter(|k| k.id() == id)
        .collect();
        Ok(Onward {
            enrich: crate::enrich::Stage::none(),
            documents: Documents::none(),
            sinks,
            snapshot: SnapshotProgress::default(),
        })
    }

    /// Sends a batch of replayed changes on, closed by a commit at its last change, and
    /// after it the documents they affected: sinks flush up to a boundary (a replay is
    /// stored as a whole at its end, so where the boundaries fall does not matter).
    pub async fn send(&mut self, batch: &mut Vec<SourceMessage>) -> Result<(), PipelineError> {
        let Some(SourceMessage::Change(last)) = batch.last() else {
            return Ok(());
        };
        let (pos, ts) = (last.pos.clone(), last.source_ts_ms);
        batch.push(SourceMessage::Commit(pos.clone()));
        let enriched = self.enrich.apply(std::mem::take(batch)).await?;
        self.documents.apply(&enriched)?;
        self.deliver(&enriched).await?;
        loop {
            let mut page = self.documents.take(PAGE, &pos, ts, &self.snapshot)?;
            if page.is_empty() {
                return Ok(());
            }
            page.push(SourceMessage::Commit(pos.clone()));
            self.deliver(&page).await?;
        }
    }

    async fn deliver(&mut self, messages: &[SourceMessage]) -> Result<(), PipelineError> {
        for s in self.sinks.iter_mut() {
            s.accept(messages).await?;
        }
        Ok(())
    }

    /// Flushes `first` and every stage the replay wrote to: what to store in the
    /// replay's one commit. `stored` must follow that commit.
    pub async fn flush<'a>(
        &'a mut self,
        mut first: Vec<&'a mut dyn Participant>,
    ) -> Result<Vec<Saved>, PipelineError> {
        if !self.enrich.is_empty() {
            first.push(&mut self.enrich);
        }
        first.push(&mut self.documents);
        for s in self.sinks.iter_mut() {
            first.push(s);
        }
        Ok(flush_all(first).await?.await?)
    }

    /// The replay's commit is stored: the documents it built are delivered.
    pub fn stored(&mut self) -> Result<(), PipelineError> {
        Ok(self.documents.stored()?)
    }
}

/// The records of the chosen tables' current epochs, in stream order, read on a
/// blocking thread through a bounded channel (memory stays bounded whatever the size
/// of the stream). Dropping the receiver stops the reader.
fn records(
    dir: &Path,
    chosen: &HashMap<String, u64>,
) -> (
    tokio::sync::mpsc::Receiver<QuarantineRecord>,
    tokio::task::JoinHandle<Result<u64, LogRecordError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(BATCH);
    let dir = dir.to_path_buf();
    let chosen = chosen.clone();
    let reader = tokio::task::spawn_blocking(move || {
        quarantine::read_records(&dir, |r| {
            if chosen.get(&r.event.qualified_name()) != Some(&r.epoch) {
                return true;
            }
            tx.blocking_send(r).is_ok()
        })
    });
    (rx, reader)
}

async fn finish(
    reader: tokio::task::JoinHandle<Result<u64, LogRecordError>>,
) -> Result<(), PipelineError> {
    reader
        .await
        .map_err(|e| PipelineError::Replay(format!("the quarantine reader failed: {e}")))?
        .map_err(|e| PipelineError::Replay(format!("quarantine stream: {e}")))?;
    Ok(())
}

/// Releases the chosen tables from quarantine in `guard`.
fn release(mut guard: Guard, chosen: &HashMap<String, u64>) -> Guard {
    for t in chosen.keys() {
        guard.release(t);
    }
    guard
}

/// Whether the event goes on (false: its table is ignored now); Err when the policy
/// still stops it.
fn decide(guard: &mut Guard, e: &ChangeEvent) -> Result<bool, PipelineError> {
    match guard.check(e) {
        Ok(Pass::Yes) => Ok(true),
        Ok(Pass::Skip) => Ok(false),
        Ok(Pass::Quarantine(_)) => {
            let table = e.table.qualified_name();
            let q = &guard.quarantined()[&table];
            Err(PipelineError::Replay(format!(
                "the policy still quarantines {table}: {} ({}: quarantine). Edit the policy, then replay again; nothing was sent",
                q.changes.join("; "),
                q.rule
            )))
        }
        Err(h) => Err(PipelineError::Replay(format!(
            "{table}: the policy now halts at a change the quarantined events carry: {change} ({rule}: {kind} = \"halt\"). Edit the policy, then replay again; nothing was sent",
            table = h.table,
            change = h.change,
            rule = h.ruling.origin,
            kind = h.ruling.kind.key(),
        ))),
    }
}

/// The record's event, with its table schema from the history.
fn event(
    schemas: &mut Schemas,
    cfg: &ConnectorConfig,
    r: QuarantineRecord,
) -> Result<ChangeEvent, PipelineError> {
    let version = r.event.schema_version;
    let schema = schemas
        .get(&r.event.db, &r.event.table, version)
        .ok_or_else(|| {
            PipelineError::Replay(format!(
                "version {version} of {} is not in the schema history of {}: its quarantined events cannot be rebuilt",
                r.event.qualified_name(),
                cfg.state.dir.display()
            ))
        })?;
    r.event
        .into_event(schema)
        .map_err(|m| PipelineError::Replay(format!("quarantine stream: {m}")))
}
