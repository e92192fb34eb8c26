//! Checkpoints: everything that takes part in one, and the one in flight.
//!
//! A checkpoint stores a transaction boundary's position together with what every
//! participant saves there: each sink's and internal stream's cursor, each stage's
//! state, the keyed state of stateful enrichers. All of it goes into the offsets store
//! in one transaction, and only once every participant's flush is durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::PipelineError;
use crate::event::{now_ms, Position};
use crate::offsets::{Checkpoint, OffsetStore, Saved};
use crate::schema::guard::{self, Guard};
use crate::schema::quarantine::{self, QuarantineStream};
use crate::sink::{Ack, Sink, SinkError};

/// What a participant saves with a checkpoint, once what it flushed is durable.
pub type Stored = BoxFuture<'static, Result<Vec<Saved>, SinkError>>;

/// Something whose state belongs to every checkpoint.
///
/// Sinks and the enrichment stage see the batch's `Commit` and `Rewind` messages
/// themselves; the pipeline calls `commit` and `rewind` on the stages that do not
/// (the guard, snapshot progress, the quarantine stream) as the messages pass.
#[async_trait]
pub trait Participant: Send {
    /// A transaction boundary passed: what came before it belongs to the next
    /// checkpoint.
    fn commit(&mut self) {}

    /// The source takes back what arrived since the last boundary (it resends it).
    fn rewind(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Hands on everything up to the last boundary; resolves with what to store once
    /// that is durable. What arrives after this call belongs to the next checkpoint.
    async fn flush(&mut self) -> Result<Stored, SinkError>;
}

/// A stream's acknowledgement as what the checkpoint saves: its cursor under `id`.
fn cursor(id: String, ack: Ack) -> Stored {
    Box::pin(async move {
        Ok(ack
            .await?
            .map(|c| Saved::Cursor(id, c))
            .into_iter()
            .collect())
    })
}

/// Saved at once (in-memory state as of the last boundary).
fn ready(saved: Vec<Saved>) -> Stored {
    Box::pin(std::future::ready(Ok(saved)))
}

#[async_trait]
impl Participant for Box<dyn Sink> {
    async fn flush(&mut self) -> Result<Stored, SinkError> {
        let id = self.id().to_string();
        Ok(cursor(id, Sink::flush(self.as_mut()).await?))
    }
}

#[async_trait]
impl Participant for Guard {
    fn commit(&mut self) {
        Guard::commit(self)
    }

    async fn flush(&mut self) -> Result<Stored, SinkError> {
        Ok(ready(vec![Saved::Stage(
            guard::STATE_ID.to_string(),
            self.state(),
        )]))
    }
}

#[async_trait]
impl Participant for QuarantineStream {
    fn commit(&mut self) {
        QuarantineStream::commit(self)
    }

    fn rewind(&mut self) -> Result<(), SinkError> {
        Ok(QuarantineStream::rewind(self)?)
    }

    async fn flush(&mut self) -> Result<Stored, SinkError> {
        Ok(cursor(
            quarantine::STREAM_ID.to_string(),
            crate::sink::ack_of(QuarantineStream::flush(self).await?),
        ))
    }
}

#[async_trait]
impl Participant for crate::enrich::Stage {
    /// The dead-letter stream's cursor and the steps' keyed state as of the boundary.
    async fn flush(&mut self) -> Result<Stored, SinkError> {
        let keyed: Vec<Saved> = self.state_updates().into_iter().map(Saved::Keyed).collect();
        let dead = crate::enrich::Stage::flush(self).await?;
        Ok(Box::pin(async move {
            let mut saved = keyed;
            if let Some(flushed) = dead {
                saved.push(Saved::Cursor(
                    crate::enrich::DEAD_LETTERS_ID.to_string(),
                    flushed.await?,
                ));
            }
            Ok(saved)
        }))
    }
}

/// Snapshot progress as of the last boundary. Sources send it ahead of the `Commit` it
/// belongs to (`SourceMessage::SnapshotProgress`).
#[derive(Default)]
pub struct SnapshotProgress {
    next: Option<Arc<serde_json::Value>>,
    committed: Option<Arc<serde_json::Value>>,
    /// The tables whose snapshot the newest progress shows unfinished.
    running: Vec<String>,
    /// The tables whose snapshot the newest progress shows done, with when it ended.
    finished: Vec<(String, u64)>,
}

impl SnapshotProgress {
    pub fn new(stored: Option<serde_json::Value>) -> Self {
        let mut p = SnapshotProgress {
            next: None,
            committed: stored.clone().map(Arc::new),
            running: Vec::new(),
            finished: Vec::new(),
        };
        p.read(stored);
        p
    }

    /// The newest progress, stored at the next boundary.
    pub fn update(&mut self, progress: Arc<serde_json::Value>) {
        self.read(Some((*progress).clone()));
        self.next = Some(progress);
    }

    fn read(&mut self, progress: Option<serde_json::Value>) {
        let state = crate::snapshot::State::from_stored(progress);
        self.running = state.unfinished();
        self.finished = state
            .tables
            .iter()
            .filter(|(_, t)| t.status == crate::snapshot::Status::Done)
            .map(|(name, t)| (name.clone(), t.finished_ms.unwrap_or(0)))
            .collect();
    }

    /// Whether `table`'s snapshot is done, finished at or after `since_ms`.
    pub fn done_since(&self, table: &str, since_ms: u64) -> bool {
        self.finished
            .iter()
            .any(|(t, at)| t == table && *at >= since_ms)
    }

    /// Whether `table`'s snapshot is under way (or waiting to start).
    pub fn running(&self, table: &str) -> bool {
        self.running.iter().any(|t| t == table)
    }
}

#[async_trait]
impl Participant for SnapshotProgress {
    fn commit(&mut self) {
        if let Some(v) = self.next.take() {
            self.committed = Some(v);
        }
    }

    async fn flush(&mut self) -> Result<Stored, SinkError> {
        let saved = self
            .committed
            .as_deref()
            .map(|v| Saved::Stage(crate::snapshot::STATE_ID.to_string(), v.clone()));
        Ok(ready(saved.into_iter().collect()))
    }
}

/// Flushes every participant; the future resolves with everything they save, once
/// each is durable. The one list of what a checkpoint stores, for the daemon and for
/// `tributary quarantine replay` alike.
pub async fn flush_all(parts: Vec<&mut dyn Participant>) -> Result<Stored, SinkError> {
    let mut pending = Vec::with_capacity(parts.len());
    for p in parts {
        pending.push(p.flush().await?);
    }
    Ok(Box::pin(async move {
        let mut saved = Vec::with_capacity(pending.len());
        for p in pending {
            saved.extend(p.await?);
        }
        Ok(saved)
    }))
}

/// A checkpoint whose participants flushed; resolves with its position once every
/// one acknowledged durability and the store holds it.
type InFlight = BoxFuture<'static, Result<Position, PipelineError>>;

/// The pending boundary, the checkpoint in flight (at most one), and where stored
/// checkpoints go: the offsets store, then the source (which may confirm them to its
/// server).
pub struct Checkpointer {
    store: Arc<OffsetStore>,
    source_desc: String,
    published: tokio::sync::watch::Sender<Option<Position>>,
    pending: Option<Position>,
    in_flight: Option<InFlight>,
    interval: Duration,
    last: Instant,
    /// A caught-up checkpoint waits for the spacing floor until then.
    wake: Option<Instant>,
}

/// How soon a checkpoint may begin after the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Under a backlog: once the checkpoint interval passed, so checkpoints (and with
    /// them the sinks' requests and fsyncs) stay few and large.
    Interval,
    /// Caught up with the source: a change should not wait for the interval, but
    /// checkpoints stay `CAUGHT_UP_SPACING` apart (a source that only looks caught up
    /// between two reads of a backlog would otherwise checkpoint back to back).
    CaughtUp,
    /// The timer, `--until`, a halt, shutdown: at once.
    Now,
}

/// The least time between caught-up checkpoints (at most the interval): 100
/// checkpoints a second at most, a change waiting at most this long for one to begin.
pub const CAUGHT_UP_SPACING: Duration = Duration::from_millis(10);

impl Checkpointer {
    /// The connector's state dir (where on-demand snapshots are requested).
    pub fn state_dir(&self) -> &std::path::Path {
        self.store.dir()
    }

    pub fn new(
        store: Arc<OffsetStore>,
        source_desc: String,
        published: tokio::sync::watch::Sender<Option<Position>>,
        interval: Duration,
    ) -> Self {
        Checkpointer {
            store,
            source_desc,
            published,
            pending: None,
            in_flight: None,
            interval,
            last: Instant::now(),
            wake: None,
        }
    }

    /// A transaction boundary passed: the next checkpoint may be taken there.
    pub fn boundary(&mut self, position: Position) {
        self.pending = Some(position);
    }

    /// Whether a checkpoint waits for its participants.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether a new checkpoint may begin: none in flight, a boundary pending and the
    /// time `due` asks for passed. A caught-up checkpoint refused for its spacing sets
    /// `wake` for when it may.
    pub fn may_begin(&mut self, due: Due) -> bool {
        if self.in_flight.is_some() || self.pending.is_none() {
            self.wake = None; // what it waited for is in flight or taken
            return false;
        }
        let since = self.last.elapsed();
        match due {
            Due::Now => true,
            Due::Interval => since >= self.interval,
            Due::CaughtUp => {
                let spacing = CAUGHT_UP_SPACING.min(self.interval);
                if since < spacing {
                    self.wake = Some(self.last + spacing);
                }
                since >= spacing
            }
        }
    }

    /// When a caught-up checkpoint refused for its spacing may begin.
    pub fn wake_at(&self) -> Option<Instant> {
        self.wake
    }

    /// Flushes every participant up to the pending boundary and puts the checkpoint in
    /// flight. The store's commit (an fsync) runs on a blocking thread inside it, so
    /// batches keep flowing to the sinks meanwhile.
    pub async fn begin(&mut self, parts: Vec<&mut dyn Participant>) -> Result<(), PipelineError> {
        debug_assert!(self.in_flight.is_none(), "one checkpoint in flight at most");
        let Some(position) = self.pending.take() else {
            return Ok(());
        };
        let began = Instant::now();
        crate::health::checkpoint_began();
        self.last = began;
        self.wake = None;
        let saved = flush_all(parts).await?;
        let store = self.store.clone();
        let source = self.source_desc.clone();
        self.in_flight = Some(Box::pin(async move {
            let saved = saved.await?;
            let acked = began.elapsed();
            let cp = Checkpoint {
                position,
                source,
                at_ms: now_ms(),
            };
            let cp =
                tokio::task::spawn_blocking(move || store.commit(Some(&cp), &saved).map(|()| cp))
                    .await
                    .map_err(|e| {
                        PipelineError::Source(format!("the checkpoint writer failed: {e}"))
                    })??;
            crate::metrics::checkpoint(acked, began.elapsed() - acked);
            Ok(cp.position)
        }));
        Ok(())
    }

    /// Waits for the checkpoint in flight (pending forever when there is none, so it
    /// can sit in a `select!`).
    pub async fn settle(&mut self) -> Result<Position, PipelineError> {
        match self.in_flight.as_mut() {
            Some(f) => {
                let r = f.await;
                self.in_flight = None;
                r
            }
            None => std::future::pending().await,
        }
    }

    /// A checkpoint the store holds: handed to the source, which may now confirm it to
    /// its server.
    pub fn publish(&self, position: Position) {
        self.published.send_replace(Some(position));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::FileMode;

    fn checkpointer(dir: &std::path::Path, interval: Duration) -> Checkpointer {
        let store = Arc::new(OffsetStore::open(dir, FileMode::default()).unwrap());
        let (published, _) = tokio::sync::watch::channel(None);
        Checkpointer::new(store, "test".into(), published, interval)
    }

    #[tokio::test]
    async fn caught_up_checkpoints_wait_for_the_spacing_and_backlogged_ones_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = checkpointer(dir.path(), Duration::from_secs(60));
        assert!(!c.may_begin(Due::Now), "nothing pending");
        c.boundary(Position::Wal { lsn: 1 });
        // Just after the last one: a backlog waits for the interval, a caught-up
        // pipeline for the spacing, and is told when.
        assert!(!c.may_begin(Due::Interval));
        assert_eq!(c.wake_at(), None);
        assert!(!c.may_begin(Due::CaughtUp));
        let wake = c.wake_at().expect("a wake-up for the spacing");
        assert!(wake <= Instant::now() + CAUGHT_UP_SPACING);
        tokio::time::sleep(CAUGHT_UP_SPACING).await;
        assert!(!c.may_begin(Due::Interval), "the interval has not passed");
        assert!(c.may_begin(Due::CaughtUp));
        c.begin(Vec::new()).await.unwrap();
        assert_eq!(c.wake_at(), None, "begun: nothing to wake for");
        // One in flight at most, whatever is due.
        c.boundary(Position::Wal { lsn: 2 });
        assert!(!c.may_begin(Due::Now));
        assert_eq!(c.settle().await.unwrap(), Position::Wal { lsn: 1 });
        assert!(c.may_begin(Due::Now));
    }

    #[tokio::test]
    async fn the_spacing_never_exceeds_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = checkpointer(dir.path(), Duration::from_millis(2));
        c.boundary(Position::Wal { lsn: 1 });
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert!(c.may_begin(Due::CaughtUp));
    }
}
