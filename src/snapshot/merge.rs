//! The stream side of a snapshot: snapshot rows enter the stream at a transaction
//! boundary past their chunk's cut, minus the rows whose keys the stream changed after
//! the cut.
//!
//! Why that is exact: a chunk holds each row as of its cut. Every change the cut
//! includes is in it; every other change is in the stream. At the boundary where the
//! rows are emitted, a row the stream did not change past the cut still has the chunk's
//! value, and a row it changed has its newer state in the stream already (so the
//! chunk's is left out). The stream task reads no further while it emits, and tracks
//! the keys of a table from before its chunk's cut (`Request::Track` is acknowledged
//! first), so no change between the cut and the emission escapes it.
//!
//! A cut is either a stream position (MariaDB: the binlog position of a consistent
//! snapshot) or an MVCC snapshot (PostgreSQL: which transactions it saw), due where the
//! stream shows the chunk's marker (see `Cut`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::progress::Progress;
use super::{State, Status};
use crate::event::{now_ms, ChangeEvent, Op, Position, Row, SourceMessage, TableSchema, Value};
use crate::queue::QueueSender;

/// Transactions remembered for the check in `take` (see `SnapshotView::running`): far
/// more than stream past in the moment between a commit record and its visibility.
const RECENT_TRANSACTIONS: usize = 16_384;

/// Keys a tracked table may collect while its chunk waits for the stream to reach the
/// cut (each about 150 bytes: some 8 MiB). A stream further behind than that (catching
/// up a backlog) drops the chunk, which is read again once the stream caught up: the
/// memory stays bounded, and a chunk read later has fewer changes to wait for.
pub const MAX_TRACKED_KEYS: usize = 50_000;

/// What a chunk reader sends, in order: rows, then the end.
#[derive(Debug)]
pub enum Batch {
    Rows(Vec<Row>),
    /// All rows were sent. `finished`: the table has no rows after these;
    /// `last_key`: the key of the last row read (in the source's own form), where the
    /// next chunk starts.
    End {
        finished: bool,
        last_key: Option<Vec<Value>>,
    },
    /// The read failed after `last_key` (the key of the last row sent, if any). Rows
    /// already sent count (they are right as of the cut) and the retry goes on after
    /// them; with none, the chunk is read again.
    Failed {
        why: String,
        last_key: Option<Vec<Value>>,
    },
}

/// What a chunk's rows are consistent with.
pub enum Cut {
    /// A stream position: the chunk holds every change at or before it and none after.
    /// Due at the first boundary at or past it; rows get `version`.
    Position { at: Position, version: u64 },
    /// An MVCC snapshot: the chunk holds the changes of the transactions it saw. Due
    /// where the stream shows its marker, which the reader writes into the stream after
    /// taking the snapshot (so every transaction the snapshot saw streamed before it).
    Snapshot(Box<dyn SnapshotView>),
}

/// An MVCC snapshot as the merge needs it (implemented by the source).
pub trait SnapshotView: Send + Sync {
    /// The marker the stream shows where the chunk is due.
    fn marker(&self) -> &str;
    /// Whether the snapshot saw the changes of transaction `txid` (as events carry it).
    fn sees(&self, txid: Option<&str>) -> bool;
    /// The transactions running when the snapshot was taken, as events name them. A
    /// transaction's commit can reach the stream a moment before it becomes visible;
    /// if one of these streamed before the table was tracked, its changes would be
    /// missed, so the chunk is read again.
    fn running(&self) -> Vec<String>;
}

/// One chunk of a table, consistent with the stream at `cut`.
pub struct Chunk {
    pub table: Arc<TableSchema>,
    pub cut: Cut,
    pub rows: mpsc::Receiver<Batch>,
    /// Resolved once the chunk was emitted (or dropped): rows emitted, and whether the
    /// table is finished.
    pub emitted: oneshot::Sender<Result<Emitted, NotEmitted>>,
}

/// Why a chunk was not emitted, or only in part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotEmitted {
    /// Read it again, from where the progress stands.
    Retry(String),
    /// The stream is too far behind the chunk's cut (`MAX_TRACKED_KEYS`): read it again
    /// after a while, once the stream caught up.
    Behind(String),
}

#[derive(Debug, Clone, Copy)]
pub struct Emitted {
    pub rows: u64,
    pub finished: bool,
}

/// What chunk readers ask of the stream task.
pub enum Request {
    /// Start tracking the keys the stream changes in `table`; acknowledged once it
    /// does, so a cut taken after the ack is covered.
    Track {
        table: String,
        /// A resync's first chunk: the table, for the `resync` event the stream shows
        /// where tracking begins (at a transaction boundary, so the event is a
        /// transaction of its own and every change of the table after it is tracked).
        resync: Option<Arc<TableSchema>>,
        ack: oneshot::Sender<()>,
    },
    Chunk(Chunk),
}

/// The handle readers send requests through.
pub type Requests = mpsc::Sender<Request>;

/// Where and by which transaction a key last changed.
struct Changed {
    pos: Position,
    txid: Option<Arc<str>>,
}

/// A tracked table: its changed keys since `since` (a count of `Merger::recent`).
#[derive(Default)]
struct Tracked {
    since: u64,
    keys: HashMap<Vec<u8>, Changed>,
    /// More than `max_tracked_keys` changed: `keys` was let go, and the chunk whose cut
    /// came before is refused (`NotEmitted::Behind`).
    overflowed: bool,
}

/// Held by the stream task.
pub struct Merger {
    requests: mpsc::Receiver<Request>,
    tracked: HashMap<String, Tracked>,
    waiting: VecDeque<Chunk>,
    /// The last transactions that changed included tables, and how many ever did.
    recent: VecDeque<Arc<str>>,
    recent_total: u64,
    state: Arc<Mutex<State>>,
    progress: Progress,
    max_tracked_keys: usize,
    /// Resync tracks waiting for a transaction boundary (`at_boundary`).
    resyncs: Vec<(Arc<TableSchema>, oneshot::Sender<()>)>,
    /// `db.table` of the change being noted, built here rather than allocated per
    /// change (`qualified_name` was 8% of a catch-up's CPU while a snapshot ran).
    name: String,
}

impl Merger {
    pub fn new(state: Arc<Mutex<State>>) -> (Merger, Requests) {
        let (tx, rx) = mpsc::channel(16);
        (
            Merger {
                requests: rx,
                tracked: HashMap::new(),
                waiting: VecDeque::new(),
                recent: VecDeque::new(),
                recent_total: 0,
                state,
                progress: Progress::default(),
                max_tracked_keys: MAX_TRACKED_KEYS,
                resyncs: Vec::new(),
                name: String::new(),
            },
            tx,
        )
    }

    /// Hands a streamed change on. Every change goes through here: the merge must see
    /// each one (a TRUNCATE too) to leave out the chunk rows it made stale. Err when the
    /// pipeline is gone.
    pub async fn pass(&mut self, tx: &mut QueueSender, e: ChangeEvent) -> Result<(), ()> {
        self.note(&e);
        tx.send(SourceMessage::Change(e)).await.map_err(|_| ())
    }

    /// Notes a streamed change (cheap when no table is tracked).
    pub fn note(&mut self, e: &ChangeEvent) {
        if let Some(t) = &e.txid {
            // The events of one transaction share their txid: the pointer test is
            // the usual answer, the text comparison the rare one.
            if self
                .recent
                .back()
                .is_none_or(|last| !Arc::ptr_eq(last, t) && last != t)
            {
                if self.recent.len() == RECENT_TRANSACTIONS {
                    self.recent.pop_front();
                }
                self.recent.push_back(t.clone());
                self.recent_total += 1;
            }
        }
        if self.tracked.is_empty() {
            return;
        }
        self.name.clear();
        self.name.push_str(&e.table.db);
        self.name.push('.');
        self.name.push_str(&e.table.table);
        let Some(tracked) = self.tracked.get_mut(&self.name) else {
            return;
        };
        if tracked.overflowed {
            return;
        }
        let changed = || Changed {
            pos: e.pos.clone(),
            txid: e.txid.clone(),
        };
        if e.op == Op::Truncate || e.table.primary_key.is_empty() {
            // Every row may have changed: nothing read before it may be emitted.
            tracked.keys.insert(Vec::new(), changed());
            return;
        }
        for row in [e.before.as_ref(), e.after.as_ref()].into_iter().flatten() {
            if let Some(k) = key_bytes(&e.table, row) {
                tracked.keys.insert(k, changed());
            }
        }
        if tracked.keys.len() > self.max_tracked_keys {
            self.overflow(&e.table.qualified_name());
        }
    }

    /// Too many keys of `table` changed since tracking began: lets them go. The chunk
    /// waiting for the stream (or, when none waits yet, the one on its way, whose cut
    /// was taken before) is refused as `Behind`; the next chunk's cut comes after that
    /// answer, so fresh tracking covers it.
    fn overflow(&mut self, table: &str) {
        let why = format!(
            "the stream is more than {} changed keys of {table} behind the chunk's cut",
            self.max_tracked_keys
        );
        match self
            .waiting
            .iter()
            .position(|c| c.table.qualified_name() == table)
        {
            Some(i) => {
                let chunk = self.waiting.remove(i).expect("found");
                self.track(table.to_string());
                let _ = chunk.emitted.send(Err(NotEmitted::Behind(why)));
            }
            None => {
                if let Some(t) = self.tracked.get_mut(table) {
                    t.keys = HashMap::new();
                    t.overflowed = true;
                }
            }
        }
    }

    /// The next request (for the stream task's select).
    pub async fn recv(&mut self) -> Option<Request> {
        self.requests.recv().await
    }

    /// Takes the requests already sent (a reader sends a chunk before writing its
    /// marker, so the chunk is here when the stream shows the marker).
    pub fn take_sent(&mut self) {
        while let Ok(r) = self.requests.try_recv() {
            self.take(r);
        }
    }

    /// Takes a request; chunks wait for `emit_due` / `emit_marked`.
    pub fn take(&mut self, r: Request) {
        match r {
            Request::Track {
                resync: Some(schema),
                ack,
                ..
            } => self.resyncs.push((schema, ack)),
            Request::Track { table, ack, .. } => {
                self.track(table);
                let _ = ack.send(());
            }
            Request::Chunk(c) => {
                let name = c.table.qualified_name();
                if self.tracked.get(&name).is_some_and(|t| t.overflowed) {
                    self.track(name.clone());
                    let why = format!("the stream fell more than {} changed keys of {name} behind while the chunk was read", self.max_tracked_keys);
                    let _ = c.emitted.send(Err(NotEmitted::Behind(why)));
                    return;
                }
                if let Cut::Snapshot(view) = &c.cut {
                    if let Some(why) = self.missed(&name, view.as_ref()) {
                        let _ = c.emitted.send(Err(NotEmitted::Retry(why)));
                        return;
                    }
                }
                // One chunk per table at a time: an older one was given up by its
                // reader (its marker never came).
                self.waiting.retain(|w| w.table.qualified_name() != name);
                self.waiting.push_back(c);
            }
        }
    }

    fn track(&mut self, table: String) {
        self.tracked.insert(
            table,
            Tracked {
                since: self.recent_total,
                keys: HashMap::new(),
                overflowed: false,
            },
        );
    }

    /// Why a snapshot chunk of `table` cannot be merged: a transaction the snapshot saw
    /// running streamed before tracking began (or may have: it fell out of `recent`).
    fn missed(&self, table: &str, view: &dyn SnapshotView) -> Option<String> {
        let Some(tracked) = self.tracked.get(table) else {
            return Some(format!("{table} is not tracked by the stream"));
        };
        let running: HashSet<String> = view.running().into_iter().collect();
        if running.is_empty() {
            return None;
        }
        let first = self.recent_total - self.recent.len() as u64;
        if tracked.since < first {
            return Some(
                "the stream moved on too far to check the snapshot's running transactions".into(),
            );
        }
        let before = (tracked.since - first) as usize;
        self.recent
            .iter()
            .take(before)
            .find(|t| running.contains(t.as_ref()))
            .map(|t| {
                format!("transaction {t} reached the stream before the snapshot saw it committed")
            })
    }

    /// At a transaction boundary `at` (the stream is between transactions): shows the
    /// `resync` event of each table whose resync starts, as a transaction of its own,
    /// and starts tracking it. Err when the pipeline is gone.
    pub async fn at_boundary(&mut self, at: &Position, tx: &mut QueueSender) -> Result<(), ()> {
        for (table, ack) in std::mem::take(&mut self.resyncs) {
            let ts = now_ms();
            let e = ChangeEvent {
                op: Op::Resync,
                table: table.clone(),
                pos: at.clone(),
                txid: None,
                source_ts_ms: ts,
                before: None,
                after: None,
                version: 0,
                ts_ms: ts,
            };
            tracing::info!(table = %table.qualified_name(), at = %at, "resync: the table's fresh snapshot starts");
            tx.send(SourceMessage::Change(e)).await.map_err(|_| ())?;
            tx.send(SourceMessage::Commit(at.clone()))
                .await
                .map_err(|_| ())?;
            self.track(table.qualified_name());
            let _ = ack.send(());
        }
        Ok(())
    }

    /// Whether resyncs wait for a transaction boundary.
    pub fn has_resyncs(&self) -> bool {
        !self.resyncs.is_empty()
    }

    /// Whether chunks wait for the stream to pass their cut.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// At a transaction boundary `at`: emits every waiting chunk whose position cut the
    /// stream has passed, each followed by the progress and a boundary at `at`. Err
    /// when the pipeline is gone.
    pub async fn emit_due(&mut self, at: &Position, tx: &mut QueueSender) -> Result<(), ()> {
        while let Some(i) = self.waiting.iter().position(
            |c| matches!(&c.cut, Cut::Position { at: cut, .. } if at.at_or_after(cut) == Some(true)),
        ) {
            let chunk = self.waiting.remove(i).expect("found");
            let Cut::Position { version, .. } = chunk.cut else {
                unreachable!("matched a position cut")
            };
            self.emit(chunk, at, version, tx).await?;
        }
        Ok(())
    }

    /// Where the stream shows `marker` (a boundary `at`): emits the snapshot chunk
    /// waiting for it, its rows at `version`, and says whether one was. Unknown markers
    /// (another connector's, or a chunk given up) are ignored.
    pub async fn emit_marked(
        &mut self,
        marker: &str,
        at: &Position,
        version: u64,
        tx: &mut QueueSender,
    ) -> Result<bool, ()> {
        self.take_sent();
        let Some(i) = self
            .waiting
            .iter()
            .position(|c| matches!(&c.cut, Cut::Snapshot(v) if v.marker() == marker))
        else {
            return Ok(false);
        };
        let chunk = self.waiting.remove(i).expect("found");
        self.emit(chunk, at, version, tx).await?;
        Ok(true)
    }

    async fn emit(
        &mut self,
        mut c: Chunk,
        at: &Position,
        version: u64,
        tx: &mut QueueSender,
    ) -> Result<(), ()> {
        let name = c.table.qualified_name();
        let changed = self.tracked.remove(&name).unwrap_or_default().keys;
        let newer = |ch: &Changed| match &c.cut {
            Cut::Position { at: cut, .. } => cut.at_or_after(&ch.pos) == Some(false),
            Cut::Snapshot(view) => !view.sees(ch.txid.as_deref()),
        };
        let truncated = changed.get(&Vec::new()).is_some_and(newer);
        if truncated && c.table.primary_key.is_empty() {
            // Without a key the changed rows cannot be told apart: read it again (the
            // next cut is taken closer to the stream, so this is rare).
            self.track(name);
            let _ = c.emitted.send(Err(NotEmitted::Retry(
                "the table changed between the chunk's cut and its turn in the stream".into(),
            )));
            return Ok(());
        }
        let mut emitted = 0u64;
        let ts = now_ms();
        let end = loop {
            match c.rows.recv().await {
                Some(Batch::Rows(rows)) => {
                    for row in rows {
                        let moved = truncated
                            || key_bytes(&c.table, &row)
                                .and_then(|k| changed.get(&k))
                                .is_some_and(newer);
                        if moved {
                            continue;
                        }
                        emitted += 1;
                        let e = ChangeEvent {
                            op: Op::Read,
                            table: c.table.clone(),
                            pos: at.clone(),
                            txid: None,
                            source_ts_ms: ts,
                            before: None,
                            after: Some(row),
                            version,
                            ts_ms: ts,
                        };
                        tx.send(SourceMessage::Change(e)).await.map_err(|_| ())?;
                    }
                }
                Some(Batch::End { finished, last_key }) => break Ok((finished, last_key)),
                Some(Batch::Failed { why, last_key }) => break Err((why, last_key)),
                None => break Err(("the chunk reader stopped".to_string(), None)),
            }
        };
        let (finished, last_key, failure) = match end {
            Ok((finished, last_key)) => (finished, last_key, None),
            // Cut short (the reader lost its connection): the rows sent are right as of
            // the cut, so they count; the retry goes on after the last one.
            Err((why, Some(last))) => (false, Some(last), Some(why)),
            Err((why, None)) => {
                self.track(name);
                let _ = c.emitted.send(Err(NotEmitted::Retry(why)));
                return Ok(());
            }
        };
        tracing::debug!(table = %name, at = %at, emitted, finished, "snapshot chunk emitted");
        let snapshot = {
            let mut state = self.state.lock().expect("not poisoned");
            let p = state
                .tables
                .entry(name.clone())
                .or_insert_with(|| super::TableProgress::pending(0));
            p.rows += emitted;
            p.chunks += 1;
            if last_key.is_some() {
                p.after = last_key;
            }
            if finished {
                p.status = Status::Done;
                p.finished_ms = Some(now_ms());
            } else {
                p.status = Status::Running;
            }
            self.progress.update(&name, p);
            serde_json::to_value(&*state).expect("the state serializes")
        };
        if !finished {
            // Keys changed from here on matter to the next chunk (its cut comes later).
            self.track(name);
        }
        tx.send(SourceMessage::SnapshotProgress(Arc::new(snapshot)))
            .await
            .map_err(|_| ())?;
        tx.send(SourceMessage::Commit(at.clone()))
            .await
            .map_err(|_| ())?;
        let _ = c.emitted.send(match failure {
            None => Ok(Emitted {
                rows: emitted,
                finished,
            }),
            Some(m) => Err(NotEmitted::Retry(m)),
        });
        Ok(())
    }
}

/// The bytes that identify a row's key (the primary key's values); None without one.
pub fn key_bytes(schema: &TableSchema, row: &Row) -> Option<Vec<u8>> {
    if schema.primary_key.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(32);
    for &i in &schema.primary_key {
        out.extend_from_slice(row.get(i)?.to_json().as_bytes());
        out.push(0);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{bounded, QueueReceiver};

    fn schema() -> Arc<TableSchema> {
        Arc::new(crate::testkit::test_schema(
            1,
            &[("id", "int"), ("v", "text")],
        ))
    }

    fn row(id: i64, v: &str) -> Row {
        vec![Value::Int(id), Value::String(v.into())]
    }

    fn at(lsn: u64) -> Position {
        Position::Wal { lsn }
    }

    fn change(op: Op, id: i64, lsn: u64) -> ChangeEvent {
        ChangeEvent {
            op,
            table: schema(),
            pos: at(lsn),
            txid: None,
            source_ts_ms: 0,
            before: None,
            after: (op != Op::Truncate).then(|| row(id, "streamed")),
            version: lsn,
            ts_ms: 0,
        }
    }

    /// A merger tracking `s.t`, and a chunk of `rows` cut at `cut` already queued.
    async fn setup(
        cut: u64,
        rows: Vec<Row>,
    ) -> (Merger, oneshot::Receiver<Result<Emitted, NotEmitted>>) {
        let (mut m, _requests) = Merger::new(Arc::new(Mutex::new(State::default())));
        let (ack, _) = oneshot::channel();
        m.take(Request::Track {
            resync: None,
            table: "s.t".into(),
            ack,
        });
        let emitted = position_chunk(&mut m, cut, rows);
        (m, emitted)
    }

    /// Sends a chunk's rows and its end, as a reader does (a dropped chunk ignores them).
    async fn feed(rows_tx: mpsc::Sender<Batch>, rows: Vec<Row>, finished: bool) {
        let last_key = rows.last().map(|r| vec![r[0].clone()]);
        let _ = rows_tx.send(Batch::Rows(rows)).await;
        let _ = rows_tx.send(Batch::End { finished, last_key }).await;
    }

    async fn drain(tx: &mut QueueSender, rx: &mut QueueReceiver) -> Vec<SourceMessage> {
        tx.flush().await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(b)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv()).await
        {
            out.extend(b.messages);
        }
        out
    }

    fn read_ids(messages: &[SourceMessage]) -> Vec<(i64, u64)> {
        messages
            .iter()
            .filter_map(|m| match m {
                SourceMessage::Change(e) if e.op == Op::Read => match e.after.as_ref()?[0] {
                    Value::Int(id) => Some((id, e.version)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn rows_changed_after_the_cut_are_left_out() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, emitted) = setup(100, vec![row(1, "a"), row(2, "b"), row(3, "c")]).await;
        m.note(&change(Op::Update, 1, 90)); // before the cut: the chunk has it
        m.note(&change(Op::Update, 2, 110)); // after: the stream carried it
                                             // The stream has not reached the cut: nothing yet.
        m.emit_due(&at(95), &mut tx).await.unwrap();
        assert!(m.has_waiting());
        m.emit_due(&at(120), &mut tx).await.unwrap();
        let out = drain(&mut tx, &mut rx).await;
        assert_eq!(read_ids(&out), vec![(1, 100), (3, 100)]);
        assert!(matches!(
            out[out.len() - 2],
            SourceMessage::SnapshotProgress(_)
        ));
        assert!(matches!(&out[out.len() - 1], SourceMessage::Commit(p) if *p == at(120)));
        let e = emitted.await.unwrap().unwrap();
        assert_eq!((e.rows, e.finished), (2, true));
    }

    /// A resync's `resync` event waits for a transaction boundary, comes as a
    /// transaction of its own, and only then is the table tracked (the reader takes its
    /// cut after the ack): a change after the event is tracked, one before is not.
    #[tokio::test]
    async fn a_resync_event_marks_where_tracking_begins() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, _requests) = Merger::new(Arc::new(Mutex::new(State::default())));
        let (ack, mut acked) = oneshot::channel();
        m.take(Request::Track {
            resync: Some(schema()),
            table: "s.t".into(),
            ack,
        });
        assert!(m.has_resyncs());
        m.note(&change(Op::Update, 1, 90)); // the rest of a transaction: not tracked
        assert!(acked.try_recv().is_err(), "acked before the boundary");
        m.at_boundary(&at(95), &mut tx).await.unwrap();
        assert!(acked.try_recv().is_ok());
        assert!(!m.has_resyncs());
        let out = drain(&mut tx, &mut rx).await;
        assert!(
            matches!(&out[..], [SourceMessage::Change(e), SourceMessage::Commit(p)]
                if e.op == Op::Resync && e.table.qualified_name() == "s.t" && *p == at(95)),
            "{out:?}"
        );
        m.note(&change(Op::Update, 2, 110));
        let emitted = position_chunk(&mut m, 100, vec![row(1, "a"), row(2, "b")]);
        m.emit_due(&at(120), &mut tx).await.unwrap();
        assert_eq!(read_ids(&drain(&mut tx, &mut rx).await), vec![(1, 100)]);
        assert_eq!(emitted.await.unwrap().unwrap().rows, 1);
    }

    #[tokio::test]
    async fn a_truncate_after_the_cut_leaves_every_row_out() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, emitted) = setup(100, vec![row(1, "a"), row(2, "b")]).await;
        m.note(&change(Op::Truncate, 0, 105));
        m.emit_due(&at(120), &mut tx).await.unwrap();
        assert!(read_ids(&drain(&mut tx, &mut rx).await).is_empty());
        assert_eq!(emitted.await.unwrap().unwrap().rows, 0);
    }
    /// A snapshot that saw every transaction but those named.
    struct View {
        marker: String,
        unseen: Vec<&'static str>,
    }

    impl SnapshotView for View {
        fn marker(&self) -> &str {
            &self.marker
        }
        fn sees(&self, txid: Option<&str>) -> bool {
            txid.is_none_or(|t| !self.unseen.contains(&t))
        }
        fn running(&self) -> Vec<String> {
            self.unseen.iter().map(|s| s.to_string()).collect()
        }
    }

    fn change_in(op: Op, id: i64, lsn: u64, txid: &str) -> ChangeEvent {
        ChangeEvent {
            txid: Some(Arc::from(txid)),
            ..change(op, id, lsn)
        }
    }

    async fn snapshot_chunk(
        m: &mut Merger,
        unseen: Vec<&'static str>,
        rows: Vec<Row>,
    ) -> oneshot::Receiver<Result<Emitted, NotEmitted>> {
        let (rows_tx, rows_rx) = mpsc::channel(4);
        let (emitted_tx, emitted_rx) = oneshot::channel();
        m.take(Request::Chunk(Chunk {
            table: schema(),
            cut: Cut::Snapshot(Box::new(View {
                marker: "m1".into(),
                unseen,
            })),
            rows: rows_rx,
            emitted: emitted_tx,
        }));
        feed(rows_tx, rows, false).await;
        emitted_rx
    }

    #[tokio::test]
    async fn a_snapshot_chunk_leaves_out_rows_of_transactions_it_did_not_see() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, _requests) = Merger::new(Arc::new(Mutex::new(State::default())));
        let (ack, _) = oneshot::channel();
        m.take(Request::Track {
            resync: None,
            table: "s.t".into(),
            ack,
        });
        let emitted = snapshot_chunk(&mut m, vec!["9"], vec![row(1, "a"), row(2, "b")]).await;
        m.note(&change_in(Op::Update, 1, 90, "8")); // seen: the chunk has it
        m.note(&change_in(Op::Update, 2, 95, "9")); // running at the snapshot: newer
                                                    // A position boundary does not emit a snapshot chunk; another marker neither.
        m.emit_due(&at(200), &mut tx).await.unwrap();
        m.emit_marked("other", &at(200), 200, &mut tx)
            .await
            .unwrap();
        assert!(m.has_waiting());
        m.emit_marked("m1", &at(300), 300, &mut tx).await.unwrap();
        let out = drain(&mut tx, &mut rx).await;
        assert_eq!(read_ids(&out), vec![(1, 300)]);
        assert!(matches!(&out[out.len() - 1], SourceMessage::Commit(p) if *p == at(300)));
        let e = emitted.await.unwrap().unwrap();
        assert_eq!((e.rows, e.finished), (1, false));
    }

    #[tokio::test]
    async fn a_running_transaction_streamed_before_tracking_makes_the_chunk_read_again() {
        let (mut m, _requests) = Merger::new(Arc::new(Mutex::new(State::default())));
        // Transaction 9 reached the stream, then tracking began, then the snapshot
        // still saw 9 running (its commit was not yet visible).
        m.note(&change_in(Op::Update, 1, 90, "9"));
        let (ack, _) = oneshot::channel();
        m.take(Request::Track {
            resync: None,
            table: "s.t".into(),
            ack,
        });
        let emitted = snapshot_chunk(&mut m, vec!["9"], vec![row(1, "stale")]).await;
        assert!(!m.has_waiting());
        let Err(NotEmitted::Retry(why)) = emitted.await.unwrap() else {
            panic!("a retry")
        };
        assert!(why.contains("transaction 9"), "{why}");
        // The same transaction streamed after tracking began is fine.
        let (ack, _) = oneshot::channel();
        m.take(Request::Track {
            resync: None,
            table: "s.t".into(),
            ack,
        });
        m.note(&change_in(Op::Update, 1, 95, "10"));
        let _emitted = snapshot_chunk(&mut m, vec!["10"], vec![row(1, "x")]).await;
        assert!(m.has_waiting());
    }

    /// A position chunk of `rows` cut at `cut`, handed to `m` (rows sent in the
    /// background, as a reader would).
    fn position_chunk(
        m: &mut Merger,
        cut: u64,
        rows: Vec<Row>,
    ) -> oneshot::Receiver<Result<Emitted, NotEmitted>> {
        let (rows_tx, rows_rx) = mpsc::channel(4);
        let (emitted_tx, emitted_rx) = oneshot::channel();
        m.take(Request::Chunk(Chunk {
            table: schema(),
            cut: Cut::Position {
                at: at(cut),
                version: cut,
            },
            rows: rows_rx,
            emitted: emitted_tx,
        }));
        tokio::spawn(feed(rows_tx, rows, true));
        emitted_rx
    }

    #[tokio::test]
    async fn a_stream_far_behind_the_cut_drops_the_chunk_and_lets_its_keys_go() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, emitted) = setup(1000, vec![row(1, "a"), row(2, "b")]).await;
        m.max_tracked_keys = 3;
        for id in 10..13 {
            m.note(&change(Op::Update, id, 500 + id as u64));
        }
        assert!(m.has_waiting(), "at the limit, not past it");
        m.note(&change(Op::Update, 13, 513));
        assert!(!m.has_waiting());
        assert!(matches!(emitted.await.unwrap(), Err(NotEmitted::Behind(_))));
        assert!(m.tracked["s.t"].keys.is_empty(), "tracking starts over");

        // The chunk read again, with a later cut, is merged with the keys changed
        // since: row 2 changed after the new cut and is left out.
        let again = position_chunk(&mut m, 2000, vec![row(1, "a"), row(2, "b")]);
        m.note(&change(Op::Update, 2, 2100));
        m.emit_due(&at(2200), &mut tx).await.unwrap();
        assert_eq!(read_ids(&drain(&mut tx, &mut rx).await), vec![(1, 2000)]);
        assert_eq!(again.await.unwrap().unwrap().rows, 1);
    }

    #[tokio::test]
    async fn a_chunk_cut_before_tracking_overflowed_is_refused_when_it_comes() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, _requests) = Merger::new(Arc::new(Mutex::new(State::default())));
        m.max_tracked_keys = 2;
        let (ack, _) = oneshot::channel();
        m.take(Request::Track {
            resync: None,
            table: "s.t".into(),
            ack,
        });
        // Overflows while the reader reads (no chunk waits yet).
        for id in 10..14 {
            m.note(&change(Op::Update, id, 500 + id as u64));
        }
        assert!(m.tracked["s.t"].overflowed && m.tracked["s.t"].keys.is_empty());
        let refused = position_chunk(&mut m, 400, vec![row(10, "old")]);
        assert!(matches!(refused.await.unwrap(), Err(NotEmitted::Behind(_))));
        assert!(!m.has_waiting());
        // Tracking started over with the refusal: the next chunk is merged.
        m.note(&change(Op::Update, 11, 700));
        let next = position_chunk(&mut m, 600, vec![row(10, "a"), row(11, "b")]);
        m.emit_due(&at(800), &mut tx).await.unwrap();
        assert_eq!(read_ids(&drain(&mut tx, &mut rx).await), vec![(10, 600)]);
        assert_eq!(next.await.unwrap().unwrap().rows, 1);
    }
}
