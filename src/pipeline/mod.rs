//! source -> sinks, through a bounded queue; checkpoint on acknowledgement.
//!
//! The position of a transaction boundary is written to the offsets store only after
//! every sink flushed everything up to it, together with each sink's cursor there.

pub mod queue;
pub mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::{ConnectorConfig, SourceConfig};
use crate::event::{now_ms, Position, SourceMessage};
use crate::offsets::{Checkpoint, OffsetStore};
use crate::schema::guard::{self, Guard, Pass};
use crate::schema::quarantine::{self, QuarantineStream};
use crate::sink::{open_sinks, Ack, Sink, SinkError};
use crate::source::mysql::MysqlSource;
use crate::source::postgres::PostgresSource;
use crate::source::{Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Offsets(#[from] crate::offsets::OffsetError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Halt(#[from] Box<crate::schema::Halt>),
    #[error("quarantine replay: {0}")]
    Replay(String),
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
}

/// What a finished run did.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub changes: u64,
    pub transactions: u64,
    pub checkpoints: u64,
    pub last_checkpoint: Option<Position>,
}

/// Builds the source described by the connector file.
pub fn build_source(cfg: &ConnectorConfig, store: Arc<OffsetStore>) -> (Box<dyn Source>, String) {
    let name = cfg.connector_name();
    match &cfg.source {
        SourceConfig::Mariadb(m) => {
            let s = MysqlSource::new(m.clone(), true, &name, store);
            let d = s.describe();
            (Box::new(s), d)
        }
        SourceConfig::Mysql(m) => {
            let s = MysqlSource::new(m.clone(), false, &name, store);
            let d = s.describe();
            (Box::new(s), d)
        }
        SourceConfig::Postgres(p) => {
            let s = PostgresSource::new(p.clone(), &name, store);
            let d = s.describe();
            (Box::new(s), d)
        }
    }
}

/// Runs the connector until `shutdown` fires (then drains and checkpoints), an error,
/// or (with `until`) a checkpoint at or past that position.
pub async fn run(
    cfg: &ConnectorConfig,
    shutdown: CancellationToken,
    until: Option<Position>,
) -> Result<RunStats, PipelineError> {
    let store = Arc::new(open_store(&cfg.state.dir).await?);
    let (mut source, source_desc) = build_source(cfg, store.clone());
    if let Err(e) = source.preflight().await {
        drop(source);
        // Leave no trace of a run that never started: a state dir this run created
        // holds nothing but empty tables.
        if store.checkpoint()?.is_none() && store.sink_cursors()?.is_empty() {
            drop(store);
            let _ = std::fs::remove_file(cfg.state.dir.join("offsets.redb"));
            let _ = std::fs::remove_dir(&cfg.state.dir);
        }
        return Err(PipelineError::Source(e.to_string()));
    }
    let policy = cfg.policy()?;
    let mut outputs = Outputs {
        sinks: open_sinks(&cfg.sinks, &store, &Arc::new(policy.clone()))?,
        quarantine: QuarantineStream::open(
            &cfg.quarantine_dir(),
            store.sink_cursor(quarantine::STREAM_ID)?,
        )?,
        enrich: crate::enrich::Stage::open(cfg, &store).await?,
    };
    let mut guard = Guard::new(policy, store.sink_cursor(guard::STATE_ID)?);
    if !guard.quarantined().is_empty() {
        let tables: Vec<&String> = guard.quarantined().keys().collect();
        tracing::warn!(?tables, "quarantined tables: their changes go to the quarantine stream until `tributary quarantine replay`");
    }
    let mut hangup = Hangup::new();
    // Record where every sink starts, so a log written before the first checkpoint is
    // cut back on the next start instead of looking foreign.
    let mut initial = Vec::new();
    for (id, ack) in outputs.flush().await? {
        if let Some(c) = ack.await? {
            initial.push((id, c));
        }
    }
    store.commit(None, &initial)?;

    let resume = store.checkpoint()?.map(|c| c.position);
    match &resume {
        Some(p) => tracing::info!(position = %p, "resuming from checkpoint"),
        None => tracing::info!("no checkpoint: starting from [source] start"),
    }
    let (tx, mut rx) = queue::bounded(cfg.pipeline.queue_events, cfg.pipeline.queue_bytes);
    let source_stop = shutdown.child_token();
    let source_token = source_stop.clone();
    let (published, checkpoints) = tokio::sync::watch::channel(resume.clone());
    let source_task =
        tokio::spawn(async move { source.run(resume, tx, checkpoints, source_token).await });
    let ledger = Ledger {
        store: store.clone(),
        source_desc: &source_desc,
        published,
    };

    let interval = Duration::from_millis(cfg.pipeline.checkpoint_interval_ms.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = RunStats::default();
    let mut counters = ChangeCounters::default();
    let mut pending: Option<Position> = None;
    // Snapshot progress: the newest from the source, and as of the last boundary.
    let mut snapshot_next: Option<Arc<serde_json::Value>> = None;
    let mut snapshot = Snapshot(store.sink_cursor(crate::snapshot::STATE_ID)?.map(Arc::new));
    // At most one checkpoint waits for its sinks' acks while batches keep flowing.
    let mut in_flight: Option<InFlight> = None;
    let mut last_cp = Instant::now();
    let mut last_report = Instant::now();
    let mut reported_changes = 0u64;

    let result: Result<(), PipelineError> = async {
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(mut batch) = batch else { break };
                    // With --until, nothing past the first boundary at or after it.
                    let mut reached = false;
                    let mut halted = None;
                    // Changes of tables the policy ignores.
                    let mut skipped = Vec::new();
                    let mut take = batch.messages.len();
                    // After the last transaction boundary in this batch.
                    let mut boundary = 0;
                    let transactions_before = stats.transactions;
                    for (i, m) in batch.messages.iter().enumerate() {
                        match m {
                            SourceMessage::Change(e) => match guard.check(e) {
                                Ok(Pass::Yes) => {
                                    stats.changes += 1;
                                    counters.count(e);
                                }
                                Ok(Pass::Skip) => skipped.push(i),
                                Ok(Pass::Quarantine(epoch)) => {
                                    outputs.quarantine.append(epoch, e)?;
                                    skipped.push(i);
                                }
                                Err(h) => {
                                    // Nothing of the transaction with the change goes on.
                                    halted = Some(h);
                                    take = boundary;
                                    break;
                                }
                            },
                            SourceMessage::Schema(tc) => {
                                if let Err(h) = guard.table_change(tc) {
                                    halted = Some(h);
                                    take = boundary;
                                    break;
                                }
                            }
                            SourceMessage::SnapshotProgress(v) => snapshot_next = Some(v.clone()),
                            SourceMessage::Commit(p) => {
                                boundary = i + 1;
                                guard.commit();
                                if let Some(v) = snapshot_next.take() {
                                    snapshot.0 = Some(v);
                                }
                                outputs.quarantine.commit();
                                stats.transactions += 1;
                                pending = Some(p.clone());
                                if until.as_ref().is_some_and(|u| p.at_or_after(u) == Some(true)) {
                                    reached = true;
                                    take = i + 1;
                                    break;
                                }
                            }
                            SourceMessage::Rewind => outputs.quarantine.rewind()?,
                        }
                    }
                    if halted.is_some() || reached {
                        // Nothing past the cut reaches the quarantine stream either.
                        outputs.quarantine.rewind()?;
                    }
                    // Counted once per batch: a metric lookup per transaction costs.
                    crate::metrics::transactions(stats.transactions - transactions_before);
                    // Enrichment rewrites events in place: it takes the batch's own.
                    let enrich = !outputs.enrich.is_empty();
                    let owned: Option<Vec<SourceMessage>> = if !skipped.is_empty() {
                        Some(
                            batch.messages[..take]
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| skipped.binary_search(i).is_err())
                                .map(|(_, m)| m.clone())
                                .collect(),
                        )
                    } else if enrich {
                        let mut v = std::mem::take(&mut batch.messages);
                        v.truncate(take);
                        Some(v)
                    } else {
                        None
                    };
                    // (It sees only what passed, which ends at a boundary when cut.)
                    let owned = match owned {
                        Some(v) if enrich => Some(outputs.enrich.apply(v).await?),
                        other => other,
                    };
                    let passed: &[SourceMessage] = match &owned {
                        Some(v) => v,
                        None => &batch.messages[..take],
                    };
                    for s in outputs.sinks.iter_mut() {
                        s.accept(passed).await?;
                    }
                    drop(batch);
                    if let Some(h) = halted {
                        // Everything before the change is checkpointed; the change is not.
                        checkpoint_now(&ledger, &guard, &snapshot, &mut outputs, &mut pending, &mut in_flight, &mut stats).await?;
                        source_stop.cancel();
                        return Err(h.into());
                    }
                    if reached {
                        checkpoint_now(&ledger, &guard, &snapshot, &mut outputs, &mut pending, &mut in_flight, &mut stats).await?;
                        tracing::info!(until = %until.as_ref().expect("checked"), "reached --until position");
                        source_stop.cancel();
                        break;
                    }
                    if in_flight.is_none() && pending.is_some() && last_cp.elapsed() >= interval {
                        in_flight = begin_checkpoint(&ledger, &guard, &snapshot, &mut outputs, &mut pending).await?;
                        last_cp = Instant::now();
                    }
                }
                done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    ledger.stored(done?, &mut stats);
                }
                _ = hangup.recv() => {
                    // SIGHUP: the operator edited the policy file.
                    match cfg.policy() {
                        Ok(p) => {
                            guard.set_policy(p);
                            tracing::info!(policy = ?cfg.schema.policy, "schema policy reloaded");
                            if !guard.quarantined().is_empty() {
                                let tables: Vec<&String> = guard.quarantined().keys().collect();
                                tracing::warn!(?tables, "quarantined tables stay quarantined until `tributary quarantine replay` (stop the daemon, replay, start it again)");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "schema policy not reloaded; the previous one stays in force"),
                    }
                }
                _ = ticker.tick() => {
                    if in_flight.is_none() && pending.is_some() {
                        in_flight = begin_checkpoint(&ledger, &guard, &snapshot, &mut outputs, &mut pending).await?;
                        last_cp = Instant::now();
                    }
                    if last_report.elapsed() >= Duration::from_secs(30) {
                        let n = stats.changes - reported_changes;
                        tracing::info!(
                            changes = stats.changes,
                            per_s = (n as f64 / last_report.elapsed().as_secs_f64()) as u64,
                            position = ?stats.last_checkpoint.as_ref().map(|p| p.to_string()),
                            "progress"
                        );
                        reported_changes = stats.changes;
                        last_report = Instant::now();
                    }
                }
            }
        }
        Ok(())
    }
    .await;

    if let Err(e) = result {
        // A sink failed: stop the source; nothing past the last checkpoint counts.
        source_stop.cancel();
        drop(rx);
        let _ = source_task.await;
        return Err(e);
    }
    // Past --until the source may still be sending: closing the queue releases it.
    drop(rx);
    // The source ended (shutdown, error or --until): final checkpoint.
    checkpoint_now(
        &ledger,
        &guard,
        &snapshot,
        &mut outputs,
        &mut pending,
        &mut in_flight,
        &mut stats,
    )
    .await?;
    outputs.enrich.log_summary();
    match source_task.await {
        Ok(Ok(())) => Ok(stats),
        Ok(Err(SourceError::Closed)) => Ok(stats),
        Ok(Err(SourceError::Fatal(m))) => Err(PipelineError::Source(m)),
        Err(join) => Err(PipelineError::Source(format!(
            "the source task failed: {join}"
        ))),
    }
}

/// Opens the offsets store, waiting up to 5 s while another process holds it: a
/// `tributary status` or `offsets show` run at that moment holds it for milliseconds,
/// and must not make a starting daemon fail.
async fn open_store(dir: &std::path::Path) -> Result<OffsetStore, crate::offsets::OffsetError> {
    let mut tries = 0;
    loop {
        match OffsetStore::open(dir) {
            Err(crate::offsets::OffsetError::InUse { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// A checkpoint whose sinks flushed; resolves with its position once every sink
/// acknowledged durability and the store holds it. The store's commit (an fsync) runs
/// on a blocking thread, so batches keep flowing to the sinks meanwhile.
type InFlight = BoxFuture<'static, Result<Position, PipelineError>>;

/// Flushes every sink up to the pending transaction boundary and returns the
/// checkpoint to wait for (None when nothing is pending).
async fn begin_checkpoint(
    ledger: &Ledger<'_>,
    guard: &Guard,
    snapshot: &Snapshot,
    outputs: &mut Outputs,
    pending: &mut Option<Position>,
) -> Result<Option<InFlight>, PipelineError> {
    let Some(position) = pending.take() else {
        return Ok(None);
    };
    let began = Instant::now();
    let acks = outputs.flush().await?;
    let store = ledger.store.clone();
    let source = ledger.source_desc.to_string();
    // The guard's decisions up to the boundary belong to the checkpoint too.
    let guard_state = guard.state();
    let snapshot_state = snapshot.0.as_deref().cloned();
    // So do the enrichment steps' keyed state (as of the boundary).
    let keyed = outputs.enrich.state_updates();
    Ok(Some(Box::pin(async move {
        let mut cursors = Vec::with_capacity(acks.len() + 1);
        cursors.push((guard::STATE_ID.to_string(), guard_state));
        if let Some(s) = snapshot_state {
            cursors.push((crate::snapshot::STATE_ID.to_string(), s));
        }
        for (id, ack) in acks {
            if let Some(c) = ack.await? {
                cursors.push((id, c));
            }
        }
        let acked = began.elapsed();
        let cp = Checkpoint {
            position,
            source,
            at_ms: now_ms(),
        };
        let cp = tokio::task::spawn_blocking(move || {
            store
                .commit_with_state(Some(&cp), &cursors, &keyed)
                .map(|()| cp)
        })
        .await
        .map_err(|e| PipelineError::Source(format!("the checkpoint writer failed: {e}")))??;
        crate::metrics::checkpoint(acked, began.elapsed() - acked);
        Ok(cp.position)
    })))
}

/// Settles the checkpoint in flight, then checkpoints what is pending and waits for it:
/// for --until and for the final checkpoint at exit.
async fn checkpoint_now(
    ledger: &Ledger<'_>,
    guard: &Guard,
    snapshot: &Snapshot,
    outputs: &mut Outputs,
    pending: &mut Option<Position>,
    in_flight: &mut Option<InFlight>,
    stats: &mut RunStats,
) -> Result<(), PipelineError> {
    if let Some(f) = in_flight.take() {
        ledger.stored(f.await?, stats);
    }
    if let Some(f) = begin_checkpoint(ledger, guard, snapshot, outputs, pending).await? {
        ledger.stored(f.await?, stats);
    }
    Ok(())
}

/// Snapshot progress as of the last transaction boundary, stored with each checkpoint.
struct Snapshot(Option<Arc<serde_json::Value>>);

/// Where passed changes go: the sinks, and the quarantine stream for the changes of
/// quarantined tables. Both are part of every checkpoint.
struct Outputs {
    sinks: Vec<Box<dyn Sink>>,
    quarantine: QuarantineStream,
    /// Enrichment before the sinks, and its dead-letter stream.
    enrich: crate::enrich::Stage,
}

impl Outputs {
    /// Flushes everything up to the last boundary: each output's id and ack.
    async fn flush(&mut self) -> Result<Vec<(String, Ack)>, SinkError> {
        let mut acks = Vec::with_capacity(self.sinks.len() + 1);
        for s in self.sinks.iter_mut() {
            acks.push((s.id().to_string(), s.flush().await?));
        }
        acks.push((
            quarantine::STREAM_ID.to_string(),
            self.quarantine.flush().await?,
        ));
        if let Some(ack) = self.enrich.flush().await? {
            acks.push((crate::enrich::DEAD_LETTERS_ID.to_string(), ack));
        }
        Ok(acks)
    }
}

/// Where acknowledged checkpoints go: the offsets store, then the source (which may
/// confirm them to its server).
struct Ledger<'a> {
    store: Arc<OffsetStore>,
    source_desc: &'a str,
    published: tokio::sync::watch::Sender<Option<Position>>,
}

impl Ledger<'_> {
    /// A checkpoint the store holds: counted, and handed to the source.
    fn stored(&self, position: Position, stats: &mut RunStats) {
        stats.checkpoints += 1;
        stats.last_checkpoint = Some(position.clone());
        // Only after the store has it: a source may now confirm it to its server.
        self.published.send_replace(Some(position));
    }
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

/// SIGHUP, where there is one (it reloads the schema policy).
struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangup {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Hangup(signal(SignalKind::hangup()).ok())
        }
        #[cfg(not(unix))]
        Hangup()
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.0.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}
