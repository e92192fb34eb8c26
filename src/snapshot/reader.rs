//! The reading side of a snapshot, shared by every source: which tables to read and
//! when (the initial queue, on-demand requests, `parallel_tables` at a time), each
//! table chunk after chunk from where its progress stands, failed reads retried with
//! backoff, and the hand-over of each chunk's rows to the stream task.
//!
//! A source only says how to connect, how to describe a table and how to read one chunk
//! (`ChunkSource`): its consistent-read primitive and its value decoding.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::merge::{Batch, Chunk, Cut, Emitted, Merger, NotEmitted, Request, Requests};
use super::{SnapshotMode, State, Status, TableProgress};
use crate::event::{now_ms, Position, Row, SourceMessage, TableSchema, Value};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::queue::QueueSender;

/// Rows per message to the stream task.
const BATCH_ROWS: usize = 256;

/// The first pause before a chunk the stream was too far behind is read again
/// (doubling, up to 16 s, while it stays behind).
const BEHIND_PAUSE: Duration = Duration::from_millis(500);

/// A table as a source reads it.
pub struct Described<T> {
    pub table: T,
    pub schema: Arc<TableSchema>,
    /// Whether it has a key to chunk by (without one: one full pass).
    pub keyed: bool,
    /// The server's row estimate.
    pub estimate: u64,
    /// The columns of each unique index other than the primary key (by name, in index
    /// order; partial and expression indexes left out): what a joined document's embed
    /// may join besides the key.
    pub unique: Vec<Vec<String>>,
}

/// How one chunk ended, as the stream settled it.
pub enum ChunkEnd {
    Finished,
    More,
    /// Not emitted (or cut short): read again from where the progress stands.
    Retry(String),
    /// Not emitted: the stream is far behind the cut (catching up a backlog). Read again
    /// from where the progress stands, after a pause.
    Behind(String),
}

/// What a source provides to be snapshotted.
#[async_trait]
pub trait ChunkSource: Send + Sync + 'static {
    type Conn: Send;
    type Table: Send + Sync;

    /// Why this source cannot take snapshots at all (said once per table).
    fn unsupported(&self) -> Option<&'static str> {
        None
    }

    /// A connection; the failure classified (lookups retry transient ones).
    async fn connect(&self) -> Result<Self::Conn, Failure>;

    /// The table's columns, key and estimate; None when it does not exist.
    async fn describe(
        &self,
        conn: &mut Self::Conn,
        table: &str,
    ) -> Result<Option<Described<Self::Table>>, Failure>;

    /// Reads the chunk after `after` (at most `limit` rows; all rows without a key),
    /// hands it to the stream through `requests` (`ChunkRows`), and returns once the
    /// stream settled it.
    async fn chunk(
        &self,
        conn: &mut Self::Conn,
        table: &Described<Self::Table>,
        after: Option<&[Value]>,
        limit: u64,
        requests: &Requests,
    ) -> Result<ChunkEnd, String>;

    async fn close(&self, _conn: Self::Conn) {}

    /// The stream's current end (what a change committed now would come after), and
    /// the version of an event there: every change committed before carries a lower
    /// one. For `tributary verify`, which reads without a stream.
    async fn position(&self, conn: &mut Self::Conn) -> Result<(Position, u64), Failure>;
}

/// How a source's snapshots start beside its stream.
pub struct Settings {
    pub mode: super::SnapshotMode,
    pub chunk_rows: u64,
    pub parallel_tables: usize,
    /// No checkpoint yet: with `initial`, every included table is queued.
    pub first_start: bool,
    /// The server lost the stored position (`when_needed`): every included table is
    /// queued again as a resync.
    pub resync: bool,
}

/// Snapshots running beside a stream; `stop` ends them once the stream ended.
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts a source's snapshots: the progress as of the checkpoint (with `initial` and
/// no checkpoint, every table `tables` lists queued), sent ahead of the stream so the
/// first checkpoint stores it (a crash before the first chunk still finds the tables
/// queued); the reader runs in its own task. Returns the merger for the stream task.
pub async fn start<S: ChunkSource>(
    source: S,
    store: Arc<OffsetStore>,
    settings: Settings,
    tables: impl std::future::Future<Output = Result<Vec<String>, String>>,
    tx: &mut QueueSender,
    shutdown: &CancellationToken,
) -> Result<(Merger, Running), String> {
    let mut state: State = store
        .stage_state_as(super::STATE_ID)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if settings.resync {
        state.resync(tables.await?, now_ms());
    } else if settings.first_start
        && state.tables.is_empty()
        && settings.mode != SnapshotMode::Never
    {
        for t in tables.await? {
            state.request(&t, 0);
        }
    }
    if !state.tables.is_empty() {
        let v = serde_json::to_value(&state).expect("the state serializes");
        tx.send(SourceMessage::SnapshotProgress(Arc::new(v)))
            .await
            .map_err(|_| "the pipeline stopped".to_string())?;
    }
    let state = Arc::new(Mutex::new(state));
    let (merger, requests) = Merger::new(state.clone());
    let reader = Arc::new(Reader {
        source,
        store,
        state,
        requests,
        chunk_rows: settings.chunk_rows,
    });
    let stop = shutdown.child_token();
    let task = tokio::spawn(reader.run(settings.parallel_tables, stop.clone()));
    Ok((merger, Running { stop, task }))
}

/// A table layout read from the catalog, with the schema version the stream gives the
/// same layout, recorded in the schema history (without a store, for lookups: as it is).
pub fn versioned(
    store: Option<&OffsetStore>,
    schema: TableSchema,
) -> Result<Arc<TableSchema>, String> {
    let Some(store) = store else {
        return Ok(Arc::new(schema));
    };
    let version = store
        .schema_version(&schema.qualified_name(), schema.layout_fingerprint())
        .map_err(|e| e.to_string())?;
    let schema = schema.with_version(version);
    store.record_schema(&schema).map_err(|e| e.to_string())?;
    Ok(Arc::new(schema))
}

/// `SELECT <every column> FROM <db>.<table>`, identifiers quoted the source's way: the
/// start of every chunk and lookup statement.
pub fn select_all(s: &TableSchema, quote: fn(&str) -> String) -> String {
    let cols: Vec<String> = s.columns.iter().map(|c| quote(&c.name)).collect();
    format!(
        "SELECT {} FROM {}.{}",
        cols.join(", "),
        quote(&s.db),
        quote(&s.table)
    )
}

/// Runs a source's snapshots beside its stream.
struct Reader<S: ChunkSource> {
    source: S,
    store: Arc<OffsetStore>,
    state: Arc<Mutex<State>>,
    requests: Requests,
    chunk_rows: u64,
}

impl<S: ChunkSource> Reader<S> {
    /// Works through the tables the state lists as unfinished (`workers` at a time),
    /// and through requests as they come; ends at shutdown. A failed read is retried
    /// with backoff while the stream keeps running.
    pub async fn run(self: Arc<Self>, workers: usize, shutdown: CancellationToken) {
        let queue = Arc::new(tokio::sync::Mutex::new(VecDeque::new()));
        let state_dir = self.store.dir().to_path_buf();
        let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut queued = HashSet::new();
        loop {
            // New requests, and the unfinished tables of the state.
            let now_pending: Vec<String> = {
                let mut st = self.state.lock().expect("not poisoned");
                for (table, at) in super::requests::pending(&state_dir) {
                    if st.request(&table, at) {
                        tracing::info!(table, "snapshot requested");
                    }
                }
                st.unfinished()
            };
            for t in now_pending {
                if queued.insert(t.clone()) {
                    if let Some(why) = self.source.unsupported() {
                        // Said once per table; retrying cannot help.
                        tracing::error!(table = %t, "snapshot not taken: {why}");
                        continue;
                    }
                    queue.lock().await.push_back(t);
                }
            }
            running.retain(|h| !h.is_finished());
            while running.len() < workers.max(1) && !queue.lock().await.is_empty() {
                let me = self.clone();
                let queue = queue.clone();
                let stop = shutdown.clone();
                running.push(tokio::spawn(async move {
                    while let Some(table) = queue.lock().await.pop_front() {
                        me.table_with_retries(&table, &stop).await;
                    }
                }));
            }
            // Tables whose snapshot finished may be requested again.
            {
                let st = self.state.lock().expect("not poisoned");
                queued.retain(|t| st.tables.get(t).is_some_and(|p| p.status != Status::Done));
                for (t, p) in &st.tables {
                    if p.status == Status::Done {
                        super::requests::served(&state_dir, t, p.requested_ms);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// A failed read (lost connection, server restart) is retried with backoff, from
    /// the last chunk the stream emitted.
    async fn table_with_retries(&self, table: &str, stop: &CancellationToken) {
        crate::health::snapshot_started(table);
        self.table_retried(table, stop).await;
        crate::health::snapshot_ended(table);
    }

    async fn table_retried(&self, table: &str, stop: &CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        while let Err(e) = self.table(table, stop).await {
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!(table, error = %e, retry_in_s = backoff.as_secs(), "snapshot read failed; retrying from its last chunk");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn table(&self, table: &str, stop: &CancellationToken) -> Result<(), String> {
        let mut conn = self.source.connect().await.map_err(|f| f.to_string())?;
        let Some(t) = self
            .source
            .describe(&mut conn, table)
            .await
            .map_err(|f| f.to_string())?
        else {
            tracing::warn!(table, "snapshot skipped: the table no longer exists");
            self.finish_missing(table);
            return Ok(());
        };
        let (after, resync) = {
            let mut st = self.state.lock().expect("not poisoned");
            let p = st
                .tables
                .entry(table.to_string())
                .or_insert_with(|| TableProgress::pending(0));
            if p.status == Status::Pending {
                p.status = Status::Running;
                p.started_ms = Some(now_ms());
                p.estimate = t.estimate;
            }
            (p.after.clone(), p.resync && p.chunks == 0)
        };
        if !t.keyed {
            tracing::warn!(table, "snapshot: the table has no primary key usable for chunks: read in one pass, which holds the stream at its cut while it runs");
        }
        let resume_after = after.as_ref().map(|k| {
            let key: Vec<String> = k.iter().map(|v| v.to_json()).collect();
            crate::privacy::value(&key.join(", "))
        });
        tracing::info!(
            table,
            estimate = t.estimate,
            resume_after,
            "snapshot of table started"
        );

        // Track the table's keys in the stream before the first cut is taken.
        let (ack, acked) = oneshot::channel();
        self.requests
            .send(Request::Track {
                table: table.to_string(),
                // A resync's `resync` event, until its first chunk is in the stream
                // (a retried or resumed first chunk shows it again).
                resync: resync.then(|| t.schema.clone()),
                ack,
            })
            .await
            .map_err(|_| "the stream stopped")?;
        acked.await.map_err(|_| "the stream stopped")?;

        let limit = self.chunk_rows.max(1);
        let mut after = after;
        let mut pause = BEHIND_PAUSE;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            match self
                .source
                .chunk(&mut conn, &t, after.as_deref(), limit, &self.requests)
                .await?
            {
                ChunkEnd::Finished => break,
                ChunkEnd::More => pause = BEHIND_PAUSE,
                ChunkEnd::Retry(why) => tracing::debug!(table, why, "snapshot chunk read again"),
                ChunkEnd::Behind(why) => {
                    if pause == BEHIND_PAUSE {
                        tracing::info!(
                            table,
                            why,
                            "snapshot waits for the stream to catch up; the chunk is read again"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                    pause = (pause * 2).min(Duration::from_secs(16));
                }
            }
            // From where the stream's progress says (a chunk cut short may have
            // emitted part of its rows).
            after = self
                .state
                .lock()
                .expect("not poisoned")
                .tables
                .get(table)
                .and_then(|p| p.after.clone());
        }
        self.source.close(conn).await;
        Ok(())
    }

    fn finish_missing(&self, table: &str) {
        let mut st = self.state.lock().expect("not poisoned");
        if let Some(p) = st.tables.get_mut(table) {
            p.status = Status::Done;
            p.finished_ms = Some(now_ms());
        }
    }
}

/// The rows of one chunk on their way to the stream task; made by `register`.
pub struct ChunkRows {
    tx: mpsc::Sender<Batch>,
    batch: Vec<Row>,
    count: u64,
    /// The key of the last row pushed, in the source's own form.
    last_key: Option<Vec<Value>>,
}

/// The stream's answer for one chunk; made by `register`.
pub struct Settled(oneshot::Receiver<Result<Emitted, NotEmitted>>);

/// Hands a chunk of `schema` consistent with `cut` to the stream task. The rows follow
/// through the returned `ChunkRows`.
pub async fn register(
    requests: &Requests,
    schema: Arc<TableSchema>,
    cut: Cut,
) -> Result<(ChunkRows, Settled), String> {
    let (rows_tx, rows_rx) = mpsc::channel(8);
    let (emitted_tx, emitted_rx) = oneshot::channel();
    requests
        .send(Request::Chunk(Chunk {
            table: schema,
            cut,
            rows: rows_rx,
            emitted: emitted_tx,
        }))
        .await
        .map_err(|_| "the stream stopped")?;
    Ok((
        ChunkRows {
            tx: rows_tx,
            batch: Vec::with_capacity(BATCH_ROWS),
            count: 0,
            last_key: None,
        },
        Settled(emitted_rx),
    ))
}

impl ChunkRows {
    /// Passes one row on, with its key in the source's form (None without a key).
    /// False when the stream dropped the chunk (stop reading).
    pub async fn push(&mut self, row: Row, key: Option<Vec<Value>>) -> bool {
        self.batch.push(row);
        self.last_key = key;
        self.count += 1;
        if self.batch.len() >= BATCH_ROWS {
            return self.send_batch().await;
        }
        true
    }

    async fn send_batch(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let rows = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS));
        self.tx.send(Batch::Rows(rows)).await.is_ok()
    }

    /// All rows were read: the table is finished when the chunk came back short of
    /// `limit` (or it has no key: one pass).
    pub async fn end(mut self, limit: u64, keyed: bool) {
        self.send_batch().await;
        let finished = !keyed || self.count < limit;
        let _ = self
            .tx
            .send(Batch::End {
                finished,
                last_key: self.last_key.take(),
            })
            .await;
    }

    /// The read failed: the rows read so far go on (they are right as of the cut).
    pub async fn fail(mut self, why: String) {
        self.send_batch().await;
        let _ = self
            .tx
            .send(Batch::Failed {
                why,
                last_key: self.last_key.take(),
            })
            .await;
    }
}

impl Settled {
    /// Waits for the stream to emit (or drop) the chunk.
    pub async fn wait(self) -> Result<ChunkEnd, String> {
        match self.0.await {
            Ok(Ok(e)) if e.finished => Ok(ChunkEnd::Finished),
            Ok(Ok(_)) => Ok(ChunkEnd::More),
            Ok(Err(NotEmitted::Retry(why))) => Ok(ChunkEnd::Retry(why)),
            Ok(Err(NotEmitted::Behind(why))) => Ok(ChunkEnd::Behind(why)),
            Err(_) => Err("the stream stopped".into()),
        }
    }
}
