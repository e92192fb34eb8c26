//! Lookups by key against the source database (the `lookup` enricher), shared by the
//! sources: a source that can snapshot can also read rows by key (`KeyReader`), with
//! the same table descriptions and value decoding. One connection, reopened when it
//! fails. A transient failure (connection refused or reset, server restarting) is
//! retried with backoff for as long as it lasts, holding the pipeline like a sink
//! outage does; only failures retrying cannot fix reach the caller (whose event then
//! goes to the dead letters).

use crate::failure::Failure;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::Lookup;
use crate::event::{Column, Row, Value};
use crate::snapshot::reader::{ChunkSource, Described};

/// A snapshot source that also reads rows by key.
#[async_trait]
pub trait KeyReader: ChunkSource {
    /// The rows of `t` whose column `key` is one of `keys`.
    async fn rows(
        &self,
        conn: &mut Self::Conn,
        t: &Described<Self::Table>,
        key: usize,
        keys: &[Value],
    ) -> Result<Vec<Row>, Failure>;
}

/// The longest pause between retries of a lookup during an outage.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Keyed<R: KeyReader> {
    pub(super) reader: R,
    conn: tokio::sync::Mutex<Option<R::Conn>>,
    tables: Mutex<HashMap<String, Arc<Described<R::Table>>>>,
}

impl<R: KeyReader> Keyed<R> {
    pub fn new(reader: R) -> Self {
        Keyed {
            reader,
            conn: tokio::sync::Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// The connection, opened if there is none, held for the caller's reads
    /// (`scan`).
    pub(super) async fn connection(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<R::Conn>>, Failure> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            *slot = Some(self.reader.connect().await?);
        }
        Ok(slot)
    }

    /// The table as the reader describes it (kept once read).
    pub(super) async fn described(
        &self,
        conn: &mut R::Conn,
        table: &str,
    ) -> Result<Option<Arc<Described<R::Table>>>, Failure> {
        self.table(conn, table).await
    }

    /// The table, which must exist.
    pub(super) async fn existing(
        &self,
        conn: &mut R::Conn,
        table: &str,
    ) -> Result<Arc<Described<R::Table>>, Failure> {
        self.table(conn, table)
            .await?
            .ok_or_else(|| Failure::Fatal(format!("{table} no longer exists")))
    }

    async fn table(
        &self,
        conn: &mut R::Conn,
        table: &str,
    ) -> Result<Option<Arc<Described<R::Table>>>, Failure> {
        if let Some(t) = self.tables.lock().expect("not poisoned").get(table) {
            return Ok(Some(t.clone()));
        }
        let Some(t) = self.reader.describe(conn, table).await? else {
            return Ok(None);
        };
        let t = Arc::new(t);
        self.tables
            .lock()
            .expect("not poisoned")
            .insert(table.to_string(), t.clone());
        Ok(Some(t))
    }

    /// Runs `op` on the connection, reconnecting and retrying while it fails for a
    /// transient reason (`failure::retry`).
    async fn run(&self, op: Op<'_>) -> Result<Done, Failure> {
        let what = op.what();
        crate::failure::retry(
            "lookup",
            &what,
            MAX_BACKOFF,
            || crate::metrics::lookup_retry(op.table()),
            || async {
                let mut slot = self.conn.lock().await;
                if slot.is_none() {
                    *slot = Some(self.reader.connect().await?);
                }
                let conn = slot.as_mut().expect("connected");
                let done = self.once(conn, &op).await;
                if matches!(&done, Err(f) if f.is_transient()) {
                    // A fresh connection for the next try.
                    *slot = None;
                }
                done
            },
        )
        .await
        .map_err(|m| Failure::Fatal(format!("{what}: {m}")))
    }

    async fn once(&self, conn: &mut R::Conn, op: &Op<'_>) -> Result<Done, Failure> {
        match op {
            Op::Describe(table) => Ok(Done::Columns(
                self.table(conn, table)
                    .await?
                    .map(|t| t.schema.columns.clone()),
            )),
            Op::Fetch { table, key, keys } => {
                let t = self.existing(conn, table).await?;
                let k = t
                    .schema
                    .columns
                    .iter()
                    .position(|c| c.name == *key)
                    .ok_or_else(|| Failure::Fatal(format!("{table} has no column `{key}`")))?;
                Ok(Done::Rows(self.reader.rows(conn, &t, k, keys).await?))
            }
        }
    }
}

enum Op<'a> {
    Describe(&'a str),
    Fetch {
        table: &'a str,
        key: &'a str,
        keys: &'a [Value],
    },
}

impl Op<'_> {
    fn table(&self) -> &str {
        match self {
            Op::Describe(t) | Op::Fetch { table: t, .. } => t,
        }
    }

    fn what(&self) -> String {
        match self {
            Op::Describe(t) => format!("describing {t} for a lookup"),
            Op::Fetch { table, .. } => format!("a lookup in {table}"),
        }
    }
}

enum Done {
    Columns(Option<Vec<Column>>),
    Rows(Vec<Row>),
}

#[async_trait]
impl<R: KeyReader> Lookup for Keyed<R> {
    async fn describe(&self, table: &str) -> Result<Option<Vec<Column>>, Failure> {
        match self.run(Op::Describe(table)).await? {
            Done::Columns(c) => Ok(c),
            Done::Rows(_) => unreachable!("describe gives columns"),
        }
    }

    async fn fetch(&self, table: &str, key: &str, keys: &[Value]) -> Result<Vec<Row>, Failure> {
        match self.run(Op::Fetch { table, key, keys }).await? {
            Done::Rows(r) => Ok(r),
            Done::Columns(_) => unreachable!("fetch gives rows"),
        }
    }
}
