//! Reading whole tables without a stream, for `tributary verify`: each chunk through
//! the source's own snapshot read (its consistent-read primitive and value decoding,
//! `ChunkSource::chunk`), and rows by key, each read placed between two stream
//! positions so the caller can tell a difference from a change still on its way.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::lookup::{KeyReader, Keyed};
use crate::event::{Position, Row, TableSchema, Value};
use crate::failure::Failure;
use crate::snapshot::merge::{Batch, Cut, Emitted, NotEmitted, Request};
use crate::snapshot::reader::ChunkEnd;

/// Reads of one chunk before giving up when the server keeps asking for it again.
const CHUNK_TRIES: u32 = 10;

/// Where a read stands against the stream.
#[derive(Debug, Clone)]
pub struct Window {
    /// A change with a version at or below this one is in the rows read (unless it was
    /// not yet visible at that instant: see `exact`); above it, it may be or not.
    pub before: u64,
    /// The stream's end once the read was done: a consumer whose checkpoint is at or
    /// past it has every change the rows hold.
    pub after: Position,
    /// `before` is exact: the read was consistent with that stream position (MariaDB's
    /// consistent snapshot). Otherwise a transaction committing at the very instant of
    /// the read may be older than `before` yet missing from the rows.
    pub exact: bool,
}

/// One chunk of a table in key order.
pub struct Scanned {
    pub rows: Vec<Row>,
    /// Where the next chunk starts (None: the table has no rows after these).
    pub next: Option<Vec<Value>>,
    pub window: Window,
}

/// A table as `scan` reads it.
pub struct ScannedTable {
    pub schema: Arc<TableSchema>,
    /// The server's row estimate.
    pub estimate: u64,
    /// Its unique indexes besides the primary key (`Described::unique`).
    pub unique: Vec<Vec<String>>,
}

#[async_trait]
pub trait TableScan: Send + Sync {
    /// The table's schema; None when it does not exist.
    async fn table(&self, table: &str) -> Result<Option<ScannedTable>, Failure>;

    /// The rows after `after` (None: from the start), at most `limit`, in key order.
    async fn chunk(
        &self,
        table: &str,
        after: Option<&[Value]>,
        limit: u64,
    ) -> Result<Scanned, Failure>;

    /// The rows whose key (the table's key columns, in key order) is one of `keys`.
    async fn rows(&self, table: &str, keys: &[Vec<Value>]) -> Result<(Vec<Row>, Window), Failure>;
}

#[async_trait]
impl<R: KeyReader> TableScan for Keyed<R> {
    async fn table(&self, table: &str) -> Result<Option<ScannedTable>, Failure> {
        let mut slot = self.connection().await?;
        let conn = slot.as_mut().expect("connected");
        Ok(self.described(conn, table).await?.map(|t| ScannedTable {
            schema: t.schema.clone(),
            estimate: t.estimate,
            unique: t.unique.clone(),
        }))
    }

    async fn chunk(
        &self,
        table: &str,
        after: Option<&[Value]>,
        limit: u64,
    ) -> Result<Scanned, Failure> {
        let mut tries = 0;
        loop {
            match self.chunk_once(table, after, limit).await? {
                Ok(scanned) => return Ok(scanned),
                // The table's definition changed under the read (a TRUNCATE or ALTER):
                // a new snapshot reads it as it is now.
                Err(why) if tries < CHUNK_TRIES => {
                    tries += 1;
                    tracing::debug!(table, why, "chunk read again");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(why) => {
                    return Err(Failure::Fatal(format!(
                        "{table}: read {CHUNK_TRIES} times, the chunk was never whole: {why}"
                    )))
                }
            }
        }
    }

    async fn rows(&self, table: &str, keys: &[Vec<Value>]) -> Result<(Vec<Row>, Window), Failure> {
        let mut slot = self.connection().await?;
        let conn = slot.as_mut().expect("connected");
        let t = self.existing(conn, table).await?;
        let key = t.schema.primary_key.clone();
        let Some(&first) = key.first() else {
            return Err(Failure::Fatal(format!("{table} has no key")));
        };
        // By the first key column (one query), then the whole key.
        let mut firsts: Vec<Value> = keys.iter().filter_map(|k| k.first().cloned()).collect();
        firsts.sort_by_cached_key(|v| v.to_json());
        firsts.dedup();
        let wanted: HashSet<String> = keys.iter().map(|k| key_text(k)).collect();
        let (_, before) = self.reader.position(conn).await?;
        let rows = if firsts.is_empty() {
            Vec::new()
        } else {
            self.reader.rows(conn, &t, first, &firsts).await?
        };
        let (after, _) = self.reader.position(conn).await?;
        let rows = rows
            .into_iter()
            .filter(|r| {
                wanted.contains(&key_text(
                    &key.iter().map(|&i| r[i].clone()).collect::<Vec<_>>(),
                ))
            })
            .collect();
        Ok((
            rows,
            Window {
                before,
                after,
                exact: false,
            },
        ))
    }
}

impl<R: KeyReader> Keyed<R> {
    /// One chunk; Err(why) when the reader asks for it to be read again.
    async fn chunk_once(
        &self,
        table: &str,
        after: Option<&[Value]>,
        limit: u64,
    ) -> Result<Result<Scanned, String>, Failure> {
        let mut slot = self.connection().await?;
        let conn = slot.as_mut().expect("connected");
        let t = self.existing(conn, table).await?;
        let (_, before) = self.reader.position(conn).await?;
        // The chunk reader hands its rows to a stream task; here, to this collector,
        // which settles the chunk as emitted once it has every row.
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        let collect = async {
            let mut rows = Vec::new();
            while let Some(request) = rx.recv().await {
                let mut c = match request {
                    Request::Track { ack, .. } => {
                        let _ = ack.send(());
                        continue;
                    }
                    Request::Chunk(c) => c,
                };
                let mut end = Err("the chunk reader stopped".to_string());
                while let Some(b) = c.rows.recv().await {
                    match b {
                        Batch::Rows(r) => rows.extend(r),
                        Batch::End { finished, last_key } => {
                            end = Ok((finished, last_key));
                            break;
                        }
                        Batch::Failed { why, .. } => {
                            end = Err(why);
                            break;
                        }
                    }
                }
                let settled = match &end {
                    Ok((finished, _)) => Ok(Emitted {
                        rows: rows.len() as u64,
                        finished: *finished,
                    }),
                    Err(why) => Err(NotEmitted::Retry(why.clone())),
                };
                let _ = c.emitted.send(settled);
                return Some((rows, c.cut, end));
            }
            None
        };
        let (read, collected) = tokio::join!(
            async {
                let r = self.reader.chunk(conn, &t, after, limit, &tx).await;
                drop(tx);
                r
            },
            collect
        );
        if let ChunkEnd::Retry(why) = read.map_err(Failure::Fatal)? {
            return Ok(Err(why));
        }
        let Some((rows, cut, end)) = collected else {
            return Err(Failure::Fatal(format!(
                "{table}: the chunk reader sent no chunk"
            )));
        };
        let (finished, last_key) = end.map_err(Failure::Fatal)?;
        let window = match cut {
            Cut::Position { at, version } => Window {
                before: version,
                after: at,
                exact: true,
            },
            Cut::Snapshot(view) => Window {
                before,
                after: self.reader.position(conn).await?.0,
                exact: view.running().is_empty(),
            },
        };
        Ok(Ok(Scanned {
            rows,
            next: if finished { None } else { last_key },
            window,
        }))
    }
}

/// A key's values as one comparable text.
pub fn key_text(key: &[Value]) -> String {
    key.iter()
        .map(|v| v.to_json())
        .collect::<Vec<_>>()
        .join("\u{1f}")
}
