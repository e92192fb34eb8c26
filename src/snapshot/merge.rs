//! The stream side of a snapshot: snapshot rows enter the stream at a transaction
//! boundary at or past their chunk's cut, minus the rows whose keys the stream changed
//! after the cut.
//!
//! Why that is exact: a chunk holds each row as of its cut. Every change before the cut
//! is in it; a change after the cut is in the stream. At the boundary where the rows are
//! emitted, a row the stream did not touch since the cut still has the chunk's value,
//! and a row it touched has its newer state in the stream already (so the chunk's is
//! left out). The stream task reads no further while it emits, and tracks the keys of a
//! table from before its chunk's cut (`Request::Track` is acknowledged first), so no
//! change between the cut and the emission escapes it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::progress::Progress;
use super::{State, Status};
use crate::event::{now_ms, ChangeEvent, Op, Position, Row, SourceMessage, TableSchema, Value};
use crate::pipeline::queue::QueueSender;

/// What a chunk reader sends, in order: rows, then the end.
#[derive(Debug)]
pub enum Batch {
    Rows(Vec<Row>),
    /// All rows were sent. `finished`: the table has no rows after these;
    /// `last_key`: the key of the last row read (dropped or not), where the next chunk
    /// starts.
    End {
        finished: bool,
        last_key: Option<Vec<Value>>,
    },
    /// The read failed. Rows already emitted count (they are right as of the cut) and
    /// the retry goes on after the last one; with none, the chunk is read again.
    Failed(String),
}

/// One chunk of a table, consistent with the stream at `cut`.
pub struct Chunk {
    pub table: Arc<TableSchema>,
    pub cut: Position,
    /// The version snapshot rows get: the version a change at `cut` would have.
    pub version: u64,
    pub rows: mpsc::Receiver<Batch>,
    /// Resolved once the chunk was emitted (or dropped): rows emitted, and whether the
    /// table is finished.
    pub emitted: oneshot::Sender<Result<Emitted, String>>,
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
        ack: oneshot::Sender<()>,
    },
    Chunk(Chunk),
}

/// The handle readers send requests through.
pub type Requests = mpsc::Sender<Request>;

/// Held by the stream task.
pub struct Merger {
    requests: mpsc::Receiver<Request>,
    /// Per tracked table: each changed key and where it last changed.
    tracked: HashMap<String, HashMap<Vec<u8>, Position>>,
    waiting: VecDeque<Chunk>,
    state: Arc<Mutex<State>>,
    progress: Progress,
}

impl Merger {
    pub fn new(state: Arc<Mutex<State>>) -> (Merger, Requests) {
        let (tx, rx) = mpsc::channel(16);
        (
            Merger {
                requests: rx,
                tracked: HashMap::new(),
                waiting: VecDeque::new(),
                state,
                progress: Progress::default(),
            },
            tx,
        )
    }

    /// Notes a streamed change (cheap when no table is tracked).
    pub fn note(&mut self, e: &ChangeEvent) {
        if self.tracked.is_empty() {
            return;
        }
        let Some(keys) = self.tracked.get_mut(&e.table.qualified_name()) else {
            return;
        };
        if e.op == Op::Truncate || e.table.primary_key.is_empty() {
            // Every row may have changed: nothing read before it may be emitted.
            keys.insert(Vec::new(), e.pos.clone());
            return;
        }
        for row in [e.before.as_ref(), e.after.as_ref()].into_iter().flatten() {
            if let Some(k) = key_bytes(&e.table, row) {
                keys.insert(k, e.pos.clone());
            }
        }
    }

    /// The next request (for the stream task's select).
    pub async fn recv(&mut self) -> Option<Request> {
        self.requests.recv().await
    }

    /// Takes a request; chunks wait for `emit_due`.
    pub fn take(&mut self, r: Request) {
        match r {
            Request::Track { table, ack } => {
                self.tracked.entry(table).or_default();
                let _ = ack.send(());
            }
            Request::Chunk(c) => self.waiting.push_back(c),
        }
    }

    /// Whether chunks wait for the stream to pass their cut.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// At a transaction boundary `at`: emits every waiting chunk whose cut the stream
    /// has passed, each followed by the progress and a boundary at `at`. Err when the
    /// pipeline is gone.
    pub async fn emit_due(&mut self, at: &Position, tx: &mut QueueSender) -> Result<(), ()> {
        while let Some(i) = self
            .waiting
            .iter()
            .position(|c| at.at_or_after(&c.cut) == Some(true))
        {
            let chunk = self.waiting.remove(i).expect("found");
            self.emit(chunk, at, tx).await?;
        }
        Ok(())
    }

    async fn emit(&mut self, mut c: Chunk, at: &Position, tx: &mut QueueSender) -> Result<(), ()> {
        let name = c.table.qualified_name();
        let changed = self.tracked.remove(&name).unwrap_or_default();
        let truncated = changed
            .get(&Vec::new())
            .is_some_and(|p| c.cut.at_or_after(p) == Some(false));
        if truncated && c.table.primary_key.is_empty() {
            // Without a key the changed rows cannot be told apart: read it again (the
            // next cut is taken closer to the stream, so this is rare).
            self.tracked.entry(name).or_default();
            let _ = c.emitted.send(Err(
                "the table changed between the chunk's cut and its turn in the stream".into(),
            ));
            return Ok(());
        }
        let mut emitted = 0u64;
        // The key of the last row received: where a chunk cut short resumes.
        let mut last_seen: Option<Vec<Value>> = None;
        let ts = now_ms();
        let end = loop {
            match c.rows.recv().await {
                Some(Batch::Rows(rows)) => {
                    if let Some(last) = rows.last().filter(|_| !c.table.primary_key.is_empty()) {
                        last_seen = Some(
                            c.table
                                .primary_key
                                .iter()
                                .map(|&i| last[i].clone())
                                .collect(),
                        );
                    }
                    for row in rows {
                        let moved = truncated
                            || key_bytes(&c.table, &row)
                                .and_then(|k| changed.get(&k))
                                .is_some_and(|p| c.cut.at_or_after(p) == Some(false));
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
                            version: c.version,
                            ts_ms: ts,
                        };
                        tx.send(SourceMessage::Change(e)).await.map_err(|_| ())?;
                    }
                }
                Some(Batch::End { finished, last_key }) => break Ok((finished, last_key)),
                Some(Batch::Failed(m)) => break Err(m),
                None => break Err("the chunk reader stopped".to_string()),
            }
        };
        let (finished, last_key, failure) = match end {
            Ok((finished, last_key)) => (finished, last_key, None),
            // Cut short (the reader lost its connection): the rows emitted are right as
            // of the cut, so they count; the retry goes on after the last one.
            Err(m) if last_seen.is_some() => (false, last_seen, Some(m)),
            Err(m) => {
                self.tracked.entry(name).or_default();
                let _ = c.emitted.send(Err(m));
                return Ok(());
            }
        };
        tracing::debug!(table = %name, cut = %c.cut, at = %at, emitted, finished, "snapshot chunk emitted");
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
            self.tracked.entry(name).or_default();
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
            Some(m) => Err(m),
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
    use crate::pipeline::queue::{bounded, QueueReceiver};

    fn schema() -> Arc<TableSchema> {
        Arc::new(crate::schema::test_schema(
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
    ) -> (Merger, oneshot::Receiver<Result<Emitted, String>>) {
        let (mut m, _requests) = Merger::new(Arc::new(Mutex::new(State::default())));
        let (ack, _) = oneshot::channel();
        m.take(Request::Track {
            table: "s.t".into(),
            ack,
        });
        let (rows_tx, rows_rx) = mpsc::channel(4);
        let (emitted_tx, emitted_rx) = oneshot::channel();
        m.take(Request::Chunk(Chunk {
            table: schema(),
            cut: at(cut),
            version: cut,
            rows: rows_rx,
            emitted: emitted_tx,
        }));
        let last_key = rows.last().map(|r| vec![r[0].clone()]);
        rows_tx.send(Batch::Rows(rows)).await.unwrap();
        rows_tx
            .send(Batch::End {
                finished: true,
                last_key,
            })
            .await
            .unwrap();
        (m, emitted_rx)
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

    #[tokio::test]
    async fn a_truncate_after_the_cut_leaves_every_row_out() {
        let (mut tx, mut rx) = bounded(1024, 1 << 20);
        let (mut m, emitted) = setup(100, vec![row(1, "a"), row(2, "b")]).await;
        m.note(&change(Op::Truncate, 0, 105));
        m.emit_due(&at(120), &mut tx).await.unwrap();
        assert!(read_ids(&drain(&mut tx, &mut rx).await).is_empty());
        assert_eq!(emitted.await.unwrap().unwrap().rows, 0);
    }
}
