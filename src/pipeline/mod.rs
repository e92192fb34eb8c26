//! source -> guard -> enrichment -> sinks, through a bounded queue; checkpoint on
//! acknowledgement.
//!
//! The position of a transaction boundary is written to the offsets store only after
//! every participant (sinks, internal streams, stages) flushed everything up to it,
//! together with what each saves there (`checkpoint`). `route` decides where a batch's
//! messages go, `runner` holds the loop's state, `drive` is the loop around it.

pub mod checkpoint;
pub mod dead_letters;
pub mod rebuild;
pub mod replay;
pub mod route;
pub mod runner;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::checkpoint::{Checkpointer, SnapshotProgress};
use self::runner::{Flow, Runner, Stages};
use std::collections::BTreeMap;

use crate::config::ConnectorConfig;
use crate::document::stage::{Documents, Shape, Shapes};
use crate::document::tree::Tree;
use crate::event::Position;
use crate::offsets::OffsetStore;
use crate::queue;
use crate::registry;
use crate::schema::guard::Guard;
use crate::schema::quarantine::{self, QuarantineStream};
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
    Config(#[from] crate::settings::ConfigError),
    #[error(transparent)]
    Halt(#[from] Box<crate::schema::Halt>),
    #[error("quarantine replay: {0}")]
    Replay(String),
    #[error("dead-letters: {0}")]
    DeadLetters(String),
    /// A command that needs the daemon stopped found it running.
    #[error("{0}")]
    Stopped(String),
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Document(#[from] crate::document::stage::DocumentError),
}

/// What a finished run did.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub changes: u64,
    pub transactions: u64,
    pub checkpoints: u64,
    pub last_checkpoint: Option<Position>,
}

/// Runs the connector until `shutdown` fires (then drains and checkpoints), an error,
/// or (with `until`) a checkpoint at or past that position.
pub async fn run(
    cfg: &ConnectorConfig,
    shutdown: CancellationToken,
    until: Option<Position>,
    reindexer: Option<rebuild::Reindexer>,
) -> Result<RunStats, PipelineError> {
    let store = Arc::new(open_store(&cfg.state).await?);
    let (mut source, source_desc) = registry::source(cfg, store.clone());
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
    let mut enrich = registry::enrich(cfg, &store).await?;
    let (documents, shapes) = open_documents(cfg, &store, &mut enrich).await?;
    let stages = Stages {
        sinks: registry::sinks(
            &cfg.sinks,
            &store,
            &registry::sink_context(cfg, policy.clone(), shapes),
        )?,
        quarantine: QuarantineStream::open(
            &cfg.quarantine_journal(),
            store.sink_cursor(quarantine::STREAM_ID)?,
        )?,
        enrich,
        documents,
        guard: Guard::restore(policy, &store)?,
        snapshot: SnapshotProgress::new(store.stage_state(crate::snapshot::STATE_ID)?),
    };
    let cfg_for_reload = cfg.clone();
    let loop_cfg = Loop {
        queue_events: cfg.pipeline.queue_events,
        queue_bytes: cfg.pipeline.queue_bytes,
        checkpoint_interval: checkpoint_interval(cfg),
        until,
        reload: Box::new(move || cfg_for_reload.policy()),
        hangups: hangups(),
        reindexer,
    };
    drive(source, source_desc, store, stages, loop_cfg, shutdown).await
}

/// `[pipeline] checkpoint_interval_ms`, raised under a backlog to the floor of what
/// makes each checkpoint cost more (said once at start): joined documents
/// (`CHECKPOINT_FLOOR_MS`) and sinks that ask for one (a Kafka sink's
/// `transaction_interval_ms`). Caught up, checkpoints come at once all the same.
fn checkpoint_interval(cfg: &ConnectorConfig) -> Duration {
    let ms = cfg.pipeline.checkpoint_interval_ms.max(1);
    let documents = (!cfg.document.is_empty()).then_some((
        crate::document::stage::CHECKPOINT_FLOOR_MS,
        "joined documents: each checkpoint makes the document state durable, rewriting every page changed since the last",
    ));
    let floors = cfg.sinks.iter().filter_map(|s| s.sink().checkpoint_floor());
    match documents.into_iter().chain(floors).max_by_key(|(f, _)| *f) {
        Some((floor, why)) if ms < floor => {
            tracing::info!(
                checkpoint_interval_ms = ms,
                under_backlog_ms = floor,
                "under a backlog, checkpoints come every {floor} ms ({why})"
            );
            Duration::from_millis(floor)
        }
        _ => Duration::from_millis(ms),
    }
}

/// The connector's joined documents: each resolved against its tables as the server
/// has them now (in the layout enrichment gives them), its state opened. A state that
/// is new or was built for another definition needs every row of its tables: their
/// snapshots are requested, unless this is the first start and the initial snapshot
/// reads them anyway.
async fn open_documents(
    cfg: &ConnectorConfig,
    store: &OffsetStore,
    enrich: &mut crate::enrich::Stage,
) -> Result<(Documents, Shapes), PipelineError> {
    if cfg.document.is_empty() {
        return Ok((Documents::none(), Shapes::default()));
    }
    let shapes = document_shapes(cfg, enrich).await?;
    let (documents, to_fill) = Documents::open(
        &cfg.connector_name(),
        &cfg.document,
        &shapes,
        &crate::document::stage::state_dir(&cfg.state.dir),
        cfg.state.file_mode,
    )?;
    let (mode, _, _) = cfg.source.source().snapshot_fields();
    let first_start = store.checkpoint()?.is_none();
    if !to_fill.is_empty() && (!first_start || mode == crate::snapshot::SnapshotMode::Never) {
        for t in &to_fill {
            crate::snapshot::requests::request(&cfg.state.dir, t).map_err(|e| {
                PipelineError::Source(format!(
                    "requesting a snapshot of {t} for a joined document: {e}"
                ))
            })?;
        }
        tracing::info!(tables = ?to_fill, "joined documents built anew: snapshots of their tables requested");
    }
    Ok((documents, Arc::new(shapes)))
}

/// Each `[[document]]` of the connector resolved against its tables as the server has
/// them now, in the layout enrichment gives them (the daemon's stage, and verify).
pub async fn document_shapes(
    cfg: &ConnectorConfig,
    enrich: &mut crate::enrich::Stage,
) -> Result<BTreeMap<String, Shape>, PipelineError> {
    let kind = cfg.source.source();
    let scan = kind.scan(&cfg.connector_name());
    let mut schemas = BTreeMap::new();
    let mut unique = BTreeMap::new();
    for t in cfg.document.iter().flat_map(|d| d.tables()) {
        if schemas.contains_key(t) {
            continue;
        }
        let found = scan
            .table(t)
            .await
            .map_err(|e| PipelineError::Source(format!("[[document]]: reading table {t}: {e}")))?;
        let Some(found) = found else {
            return Err(PipelineError::Source(format!(
                "[[document]] reads table {t}, which the server does not have (or tributary's user cannot see); `tributary check` names the entry"
            )));
        };
        schemas.insert(t.to_string(), enrich.layout(&found.schema)?);
        unique.insert(t.to_string(), found.unique);
    }
    // What `tributary check` says, at start too: a definition the tables do not fit
    // (a column gone, an embed that could match two rows) is named with its line.
    let text = std::fs::read_to_string(&cfg.path).unwrap_or_default();
    let mut shapes = BTreeMap::new();
    for d in &cfg.document {
        let catalogued = |t: &str| {
            schemas
                .get(t)
                .map(|s| (&**s, unique.get(t).map_or(&[][..], Vec::as_slice)))
        };
        crate::document::check_against_schemas(&cfg.path, &text, d, &catalogued)
            .map_err(|e| PipelineError::Source(e.to_string()))?;
        let lookup = |t: &str| schemas.get(t).map(|s| &**s);
        let tree = Tree::resolve(d, &lookup).map_err(|m| {
            PipelineError::Source(format!(
                "[[document]] `{}`: {m}; `tributary check --connector {}` names the line",
                d.name.get_ref(),
                cfg.path.display()
            ))
        })?;
        let own = d
            .tables()
            .into_iter()
            .map(|t| (t.to_string(), schemas[t].clone()))
            .collect();
        shapes.insert(d.name.get_ref().clone(), Shape { tree, schemas: own });
    }
    Ok(shapes)
}

/// Loads the schema policy again.
pub type Reload =
    Box<dyn Fn() -> Result<crate::schema::Policy, crate::settings::ConfigError> + Send + Sync>;

/// How the loop runs, besides its stages.
pub struct Loop {
    pub queue_events: usize,
    pub queue_bytes: usize,
    pub checkpoint_interval: Duration,
    /// Stop after checkpointing at or past this position.
    pub until: Option<Position>,
    /// Loads the policy again (on a hangup).
    pub reload: Reload,
    /// Each message asks for a policy reload (SIGHUP in the daemon).
    pub hangups: tokio::sync::mpsc::Receiver<()>,
    /// Rebuilds indexes the schema guard's `reindex` verdict asks for (None: they wait).
    pub reindexer: Option<rebuild::Reindexer>,
}

/// Runs `source` into `stages` until the source ends, `shutdown` fires (then drains
/// and checkpoints), an error, or `until`. Everything here works without servers: the
/// tests drive it with a scripted source and recording sinks (see `testkit`).
pub async fn drive(
    mut source: Box<dyn Source>,
    source_desc: String,
    store: Arc<OffsetStore>,
    mut stages: Stages,
    mut cfg: Loop,
    shutdown: CancellationToken,
) -> Result<RunStats, PipelineError> {
    let quarantined = stages.guard.quarantined();
    if !quarantined.is_empty() {
        let tables: Vec<&String> = quarantined.keys().collect();
        tracing::warn!(?tables, "quarantined tables: their changes go to the quarantine stream until `tributary quarantine replay`");
    }
    // Record where every stream starts, so a log written before the first checkpoint
    // is cut back on the next start instead of looking foreign.
    let initial = checkpoint::flush_all(stages.participants()).await?.await?;
    store.commit(None, &initial)?;

    let resume = store.checkpoint()?.map(|c| c.position);
    match &resume {
        Some(p) => tracing::info!(position = %p, "resuming from checkpoint"),
        None => tracing::info!("no checkpoint: starting from [source] start"),
    }
    let (tx, mut rx) = queue::bounded(cfg.queue_events, cfg.queue_bytes);
    let source_stop = shutdown.child_token();
    let source_token = source_stop.clone();
    let (published, checkpoints) = tokio::sync::watch::channel(resume.clone());
    let resumed_at = resume.clone();
    crate::health::source(crate::health::Source::Connecting);
    let source_task =
        tokio::spawn(async move { source.run(resume, tx, checkpoints, source_token).await });
    let checkpointer = Checkpointer::new(store, source_desc, published, cfg.checkpoint_interval);
    let mut runner = Runner::new(stages, checkpointer, cfg.until.take());
    runner.resumed_at(resumed_at);
    let mut rebuilds = rebuild::Rebuilds::new(cfg.reindexer.take());
    rebuilds.start(&runner.rebuilds_wanted());

    let mut ticker = tokio::time::interval(cfg.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (A disabled branch's future is still built: any instant does for it.)
    let sleep_until = |at: Option<std::time::Instant>| {
        tokio::time::sleep_until(at.map_or_else(tokio::time::Instant::now, Into::into))
    };
    let result: Result<(), PipelineError> = async {
        loop {
            let wake = runner.checkpoint_wake();
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    let caught_up = rx.is_empty();
                    if runner.on_batch(batch, caught_up).await? == Flow::Stop {
                        break;
                    }
                    rebuilds.start(&runner.rebuilds_wanted());
                }
                stored = runner.checkpoint_stored() => {
                    runner.on_stored(stored?)?;
                    if rx.is_empty() {
                        runner.on_caught_up().await?;
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => runner.on_caught_up().await?,
                Some(()) = cfg.hangups.recv() => runner.on_reload((cfg.reload)()),
                (table, result) = rebuilds.ended() => {
                    if rebuilds.settle(&table, result) {
                        runner.rebuilt(&table)?;
                    }
                    rebuilds.start(&runner.rebuilds_wanted());
                }
                _ = ticker.tick() => {
                    crate::notify::keep_alive();
                    runner.on_tick().await?;
                    rebuilds.start(&runner.rebuilds_wanted());
                }
            }
        }
        Ok(())
    }
    .await;

    // Past --until (or after an error) the source may still be sending: stop it, and
    // closing the queue releases it. (A source that ended is not bothered by either.)
    source_stop.cancel();
    drop(rx);
    if let Err(e) = result {
        // Nothing past the last checkpoint counts.
        let _ = source_task.await;
        return Err(e);
    }
    // The source ended (shutdown, error or --until): final checkpoint.
    let stats = runner.finish().await?;
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
async fn open_store(
    state: &crate::config::StateConfig,
) -> Result<OffsetStore, crate::offsets::OffsetError> {
    let mut tries = 0;
    loop {
        match state.open_store() {
            Err(crate::offsets::OffsetError::InUse { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// SIGHUP (where there is one) as reload requests.
fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut s) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            });
            return rx;
        }
    }
    // No hangups: the receiver stays open and silent.
    std::mem::forget(tx);
    rx
}
