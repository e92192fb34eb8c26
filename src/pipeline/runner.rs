//! The pipeline loop's state and one method per thing that can happen to it: a batch
//! arrives, a checkpoint is stored, the operator asks for a policy reload, the timer
//! ticks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::{Checkpointer, Due, Participant, SnapshotProgress};
use super::route::{route, Routed, Stop};
use super::{PipelineError, RunStats};
use crate::document::stage::{Documents, PAGE};
use crate::event::{Position, SourceMessage};
use crate::queue::Batch;
use crate::schema::guard::Guard;
use crate::schema::quarantine::QuarantineStream;
use crate::schema::Policy;
use crate::settings::ConfigError;
use crate::sink::{SharedBatch, Sink};

/// Whether the loop goes on after a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Go,
    /// `--until` was reached and checkpointed.
    Stop,
}

/// Where passed changes go and what stores state with each checkpoint.
pub struct Stages {
    pub guard: Guard,
    pub snapshot: SnapshotProgress,
    /// The changes of quarantined tables.
    pub quarantine: QuarantineStream,
    /// Enrichment before the sinks, and its dead-letter stream.
    pub enrich: crate::enrich::Stage,
    /// Joined documents, built from what enrichment passed, for the sinks.
    pub documents: Documents,
    pub sinks: Vec<Box<dyn Sink>>,
}

impl Stages {
    /// Everything that takes part in a checkpoint.
    pub fn participants(&mut self) -> Vec<&mut dyn Participant> {
        let mut parts: Vec<&mut dyn Participant> = Vec::with_capacity(self.sinks.len() + 4);
        parts.push(&mut self.guard);
        parts.push(&mut self.snapshot);
        parts.push(&mut self.quarantine);
        parts.push(&mut self.enrich);
        parts.push(&mut self.documents);
        for s in self.sinks.iter_mut() {
            parts.push(s);
        }
        parts
    }

    /// Appends the batch's quarantined changes to the quarantine stream, with its
    /// boundaries and rewinds in order (only walked when the batch holds either).
    fn quarantine(&mut self, messages: &[SourceMessage], r: &Routed) -> Result<(), PipelineError> {
        let q = &mut self.quarantine;
        if r.quarantined.is_empty() && !r.rewinds {
            if r.commits > 0 {
                q.commit();
            }
        } else {
            let mut next = r.quarantined.iter().peekable();
            for (i, m) in messages.iter().enumerate() {
                match m {
                    SourceMessage::Commit(_) => q.commit(),
                    SourceMessage::Rewind => q.rewind()?,
                    SourceMessage::Change(e) => {
                        if let Some((_, epoch)) = next.next_if(|(at, _)| *at == i) {
                            q.append(*epoch, e)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        if r.stop.is_some() {
            // Nothing past the cut reaches the quarantine stream either.
            q.rewind()?;
        }
        Ok(())
    }
}

pub struct Runner {
    stages: Stages,
    checkpoints: Checkpointer,
    until: Option<Position>,
    stats: RunStats,
    counters: ChangeCounters,
    last_report: Instant,
    reported_changes: u64,
    /// The last transaction boundary the sinks were handed (or resumed from), and
    /// whether nothing of a later transaction was handed on since (see
    /// `documents_when_idle`).
    last_boundary: Option<Position>,
    at_boundary: bool,
    /// A checkpoint is stored (or the run resumed from one). Until then the first
    /// boundary is checkpointed before anything after it is taken (see `on_batch`).
    anchored: bool,
}

impl Runner {
    pub fn new(stages: Stages, checkpoints: Checkpointer, until: Option<Position>) -> Self {
        Runner {
            stages,
            checkpoints,
            until,
            stats: RunStats::default(),
            counters: ChangeCounters::default(),
            last_report: Instant::now(),
            reported_changes: 0,
            last_boundary: None,
            at_boundary: true,
            anchored: false,
        }
    }

    /// Where the run resumed (the stored checkpoint's position).
    pub fn resumed_at(&mut self, position: Option<Position>) {
        self.anchored = position.is_some();
        self.last_boundary = position;
    }

    pub fn guard(&self) -> &crate::schema::guard::Guard {
        &self.stages.guard
    }

    /// The indexes to rebuild beside the stream: tables a schema-guard `reindex`
    /// verdict named, and documents whose definition changed (`document NAME`).
    pub fn rebuilds_wanted(&self) -> std::borrow::Cow<'_, std::collections::BTreeSet<String>> {
        let tables = self.stages.guard.reindex_wanted();
        let documents = self.stages.documents.reindex_wanted();
        if documents.is_empty() {
            return std::borrow::Cow::Borrowed(tables);
        }
        std::borrow::Cow::Owned(tables.union(documents).cloned().collect())
    }

    /// The index of `name` (a table, or `document NAME`) was rebuilt.
    pub fn rebuilt(&mut self, name: &str) -> Result<(), PipelineError> {
        if crate::document::stage::rebuilt_document(name).is_some() {
            self.stages.documents.reindexed(name)?;
        } else {
            self.stages.guard.reindexed(name);
        }
        Ok(())
    }

    /// Routes a batch, sends what passed to the enrichment stage and the sinks, and
    /// begins a checkpoint when one is due: at once when the pipeline has caught up
    /// with the source (`caught_up`: no batch waits behind this one), else once the
    /// checkpoint interval passed.
    pub async fn on_batch(
        &mut self,
        mut batch: Batch,
        caught_up: bool,
    ) -> Result<Flow, PipelineError> {
        crate::health::batch();
        let stats = &mut self.stats;
        let counters = &mut self.counters;
        let r = route(
            &batch.messages,
            &mut self.stages.guard,
            &mut self.stages.snapshot,
            self.until.as_ref(),
            |e| {
                stats.changes += 1;
                counters.count(e);
            },
        );
        for table in &r.snapshots {
            // The snapshot reader takes requests from these files (also after a
            // restart); a table it cannot write for is caught again by the source's
            // next look at the catalog.
            match crate::snapshot::requests::request(self.checkpoints.state_dir(), table) {
                Ok(_) => tracing::info!(table = %table, "table let in: snapshot requested"),
                Err(e) => {
                    tracing::error!(table = %table, error = %e, "table let in, but its snapshot could not be requested; `tributary snapshot --table` asks again")
                }
            }
        }
        self.stats.transactions += r.commits;
        // Counted once per batch: a metric lookup per transaction costs.
        crate::metrics::transactions(r.commits);
        self.stages.quarantine(&batch.messages[..r.take], &r)?;
        if let Some(p) = &r.last_commit {
            self.checkpoints.boundary(p.clone());
        }

        // Enrichment rewrites events in place: it takes the batch's own.
        let enrich = !self.stages.enrich.is_empty();
        let owned: Option<Vec<SourceMessage>> = if !r.skipped.is_empty() {
            Some(
                batch.messages[..r.take]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| r.skipped.binary_search(i).is_err())
                    .map(|(_, m)| m.clone())
                    .collect(),
            )
        } else if enrich {
            let mut v = std::mem::take(&mut batch.messages);
            v.truncate(r.take);
            Some(v)
        } else {
            None
        };
        // (It sees only what passed, which ends at a boundary when cut.)
        let owned = match owned {
            Some(v) if enrich => Some(self.stages.enrich.apply(v).await?),
            other => other,
        };
        let passed = match owned {
            Some(v) => v,
            None => {
                let mut v = std::mem::take(&mut batch.messages);
                v.truncate(r.take);
                v
            }
        };
        drop(batch);
        if let Some(p) = &r.last_commit {
            self.last_boundary = Some(p.clone());
        }
        let mut after_last_commit = passed
            .iter()
            .rev()
            .take_while(|m| !matches!(m, SourceMessage::Commit(_)));
        let opened = after_last_commit.any(|m| matches!(m, SourceMessage::Change(_)));
        self.at_boundary = !opened && (r.last_commit.is_some() || self.at_boundary);
        if self.stages.documents.is_empty() {
            self.send(passed).await?;
        } else {
            self.send_with_documents(passed).await?;
        }

        match r.stop {
            Some(Stop::Halt(h)) => {
                // Everything before the change is checkpointed; the change is not.
                self.checkpoint_now().await?;
                crate::health::halted(format!(
                    "the schema guard halted on {}: {}",
                    h.table, h.change
                ));
                Err(h.into())
            }
            Some(Stop::Reached) => {
                self.checkpoint_now().await?;
                tracing::info!(until = %self.until.as_ref().expect("set"), "reached --until position");
                Ok(Flow::Stop)
            }
            // Nothing is checkpointed yet: the first boundary (a source announces where
            // it starts) is stored before anything after it is taken. A crash before the
            // run's first regular checkpoint then resumes there and replays what came
            // between, instead of starting again from wherever the source stands by then
            // and missing the deletes of rows the sinks got from the first attempt.
            None if !self.anchored && r.last_commit.is_some() => {
                self.checkpoint_now().await?;
                Ok(Flow::Go)
            }
            None => {
                let due = if caught_up {
                    Due::CaughtUp
                } else {
                    Due::Interval
                };
                self.begin_checkpoint(due).await?;
                Ok(Flow::Go)
            }
        }
    }

    /// Hands `messages` to every sink, shared: one that keeps events until a server
    /// answered holds the batch rather than a copy of each event.
    async fn send(&mut self, messages: Vec<SourceMessage>) -> Result<(), PipelineError> {
        send_to(&mut self.stages.sinks, messages).await
    }

    /// `send` with the joined documents: the changes go into the documents' states, and
    /// before the batch's last transaction boundary come the documents they affected,
    /// each built once, so that the checkpoint at that boundary waits for them. Pages
    /// of `PAGE` documents go to the sinks one after the other (a change affecting a
    /// million documents is never held at once). What follows the boundary (a
    /// transaction not complete yet) is applied after the documents are built, so none
    /// shows half a transaction.
    async fn send_with_documents(
        &mut self,
        mut messages: Vec<SourceMessage>,
    ) -> Result<(), PipelineError> {
        let Some(cut) = messages
            .iter()
            .rposition(|m| matches!(m, SourceMessage::Commit(_)))
        else {
            self.stages.documents.apply(&messages)?;
            return self.send(messages).await;
        };
        let tail = messages.split_off(cut);
        self.stages.documents.apply(&messages)?;
        let SourceMessage::Commit(pos) = &tail[0] else {
            unreachable!("the cut is at a commit")
        };
        // The commit time of the newest change before it (for the ack latency).
        let ts = messages
            .iter()
            .rev()
            .find_map(|m| match m {
                SourceMessage::Change(e) => Some(e.source_ts_ms),
                _ => None,
            })
            .unwrap_or_else(crate::event::now_ms);
        append_documents(&mut self.stages, pos, ts, &mut messages).await?;
        self.stages.documents.apply(&tail)?;
        messages.extend(tail);
        self.send(messages).await
    }

    /// Waits for the checkpoint in flight to be stored (pending while there is none).
    pub async fn checkpoint_stored(&mut self) -> Result<Position, PipelineError> {
        self.checkpoints.settle().await
    }

    /// A checkpoint the store holds: counted, and handed to the source.
    pub fn on_stored(&mut self, position: Position) -> Result<(), PipelineError> {
        self.anchored = true;
        self.stages.documents.stored()?;
        crate::health::checkpoint_stored();
        self.stats.checkpoints += 1;
        self.stats.last_checkpoint = Some(position.clone());
        self.checkpoints.publish(position);
        Ok(())
    }

    /// SIGHUP: the operator edited the policy file. A policy that does not load leaves
    /// the one in force.
    pub fn on_reload(&mut self, policy: Result<Policy, ConfigError>) {
        match policy {
            Ok(p) => {
                self.stages.guard.set_policy(p);
                tracing::info!("schema policy reloaded");
                let quarantined = self.stages.guard.quarantined();
                if !quarantined.is_empty() {
                    let tables: Vec<&String> = quarantined.keys().collect();
                    tracing::warn!(?tables, "quarantined tables stay quarantined until `tributary quarantine replay` (stop the daemon, replay, start it again)");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "schema policy not reloaded; the previous one stays in force")
            }
        }
    }

    /// A checkpoint was stored and no batch waits, or a caught-up checkpoint's spacing
    /// passed: what arrived meanwhile is checkpointed now rather than at the next tick.
    pub async fn on_caught_up(&mut self) -> Result<(), PipelineError> {
        self.begin_checkpoint(Due::CaughtUp).await.map(|_| ())
    }

    /// Begins a checkpoint when `due` allows one; whether it did.
    async fn begin_checkpoint(&mut self, due: Due) -> Result<bool, PipelineError> {
        if !self.checkpoints.may_begin(due) {
            return Ok(false);
        }
        self.checkpoints.begin(self.stages.participants()).await?;
        Ok(true)
    }

    /// When a caught-up checkpoint waits for its spacing (see `Due::CaughtUp`).
    pub fn checkpoint_wake(&self) -> Option<std::time::Instant> {
        self.checkpoints.wake_at()
    }

    /// Documents that wait without a transaction boundary to come before (those a
    /// crash left undelivered, those marked while their tables' snapshot ran): handed
    /// on at the last boundary again, when nothing of a later transaction was handed
    /// on since (the documents would show it, and the sinks would take its changes as
    /// committed).
    async fn documents_when_idle(&mut self) -> Result<(), PipelineError> {
        if !self.stages.documents.waiting() || !self.at_boundary {
            return Ok(());
        }
        let Some(pos) = self.last_boundary.clone() else {
            return Ok(());
        };
        let mut messages = Vec::new();
        let ts = crate::event::now_ms();
        if !append_documents(&mut self.stages, &pos, ts, &mut messages).await? {
            return Ok(()); // none was ready (a snapshot holds them): no boundary to repeat
        }
        messages.push(SourceMessage::Commit(pos.clone()));
        send_to(&mut self.stages.sinks, messages).await?;
        self.checkpoints.boundary(pos);
        Ok(())
    }

    /// The timer: documents waiting while idle, a checkpoint when none is in flight,
    /// and a progress line every 30 s.
    pub async fn on_tick(&mut self) -> Result<(), PipelineError> {
        self.documents_when_idle().await?;
        self.begin_checkpoint(Due::Now).await?;
        if self.last_report.elapsed() >= Duration::from_secs(30) {
            let n = self.stats.changes - self.reported_changes;
            tracing::info!(
                changes = self.stats.changes,
                per_s = (n as f64 / self.last_report.elapsed().as_secs_f64()) as u64,
                position = ?self.stats.last_checkpoint.as_ref().map(|p| p.to_string()),
                "progress"
            );
            self.reported_changes = self.stats.changes;
            self.last_report = Instant::now();
        }
        Ok(())
    }

    /// Settles the checkpoint in flight, then checkpoints what is pending and waits for
    /// it: for `--until`, a halt and the final checkpoint at exit.
    pub async fn checkpoint_now(&mut self) -> Result<(), PipelineError> {
        if self.checkpoints.in_flight() {
            let p = self.checkpoints.settle().await?;
            self.on_stored(p)?;
        }
        if self.begin_checkpoint(Due::Now).await? {
            let p = self.checkpoints.settle().await?;
            self.on_stored(p)?;
        }
        Ok(())
    }

    /// The final checkpoint and summary of a run that ended without an error.
    pub async fn finish(mut self) -> Result<RunStats, PipelineError> {
        self.checkpoint_now().await?;
        self.stages.enrich.log_summary();
        Ok(self.stats)
    }
}

/// Appends to `messages` the documents waiting to be built, as events at `pos`; each
/// full page goes to the sinks before the next is built, the last stays in `messages`.
/// Whether any document was built.
async fn append_documents(
    stages: &mut Stages,
    pos: &Position,
    ts: u64,
    messages: &mut Vec<SourceMessage>,
) -> Result<bool, PipelineError> {
    let mut any = false;
    loop {
        let page = stages.documents.take(PAGE, pos, ts, &stages.snapshot)?;
        let full = page.len() >= PAGE;
        any |= !page.is_empty();
        messages.extend(page);
        if !full {
            return Ok(any);
        }
        send_to(&mut stages.sinks, std::mem::take(messages)).await?;
    }
}

/// Hands `messages` to every sink (see `Runner::send`).
async fn send_to(
    sinks: &mut [Box<dyn Sink>],
    messages: Vec<SourceMessage>,
) -> Result<(), PipelineError> {
    let shared: SharedBatch = Arc::new(messages);
    for s in sinks.iter_mut() {
        s.accept_shared(&shared).await?;
    }
    Ok(())
}

/// `tributary_changes_total` handles by table and op, looked up once per schema (the
/// label lookup is too slow to repeat for every change).
#[derive(Default)]
struct ChangeCounters {
    by_table: crate::event::PerSchema<Vec<(crate::event::Op, metrics::Counter)>>,
}

impl ChangeCounters {
    fn count(&mut self, e: &crate::event::ChangeEvent) {
        let counters = self.by_table.get_or_insert_with(&e.table, Vec::new);
        match counters.iter().find(|(op, _)| *op == e.op) {
            Some((_, c)) => c.increment(1),
            None => {
                let c = crate::metrics::changes(&e.table.qualified_name(), e.op);
                c.increment(1);
                counters.push((e.op, c));
            }
        }
    }
}
