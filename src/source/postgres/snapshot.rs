//! Snapshot chunks from PostgreSQL. A snapshot has no WAL position, so each chunk is
//! placed in the stream with a marker (a watermark, DBLog-style, but without a table):
//!
//! 1. `BEGIN ISOLATION LEVEL REPEATABLE READ` and `pg_current_snapshot()`: the MVCC
//!    snapshot the chunk is read in, and which transactions it saw.
//! 2. The chunk is handed to the stream task, then a second connection commits the
//!    marker: a transactional `pg_logical_emit_message` under `synchronous_commit =
//!    local`, so the commit flushes the WAL and the stream sees it at once (a
//!    non-transactional message waits in an unflushed WAL page until something else
//!    commits: up to seconds on a quiet server). Every transaction the snapshot saw
//!    committed before the marker's transaction, so the stream has carried all of them
//!    when it shows the marker's commit: that is where the chunk is emitted.
//! 3. The rows are read (text output, the same forms pgoutput sends, decoded by the
//!    same `values::decode_text`) and flow through the stream task as it emits them,
//!    leaving out keys the stream changed in transactions the snapshot did not see.
//!
//! Snapshot rows get the marker transaction's commit LSN as their version. Streamed changes carry their
//! transaction's commit LSN (stream.rs), so a change the snapshot saw is older than the
//! marker and one it did not see is newer (or left the row out of the chunk).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::catalog::{index_columns, quote_ident, unique_indexes, Index, TypeCache};
use super::config::PostgresSourceConfig;
use super::connect::{classify, query_client};
use super::values::{decode_text, PgType};
use crate::event::{now_ms, Column, Position, Row, TableSchema, Value};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::settings::Secret;
use crate::snapshot::merge::{Cut, Requests, SnapshotView};
use crate::snapshot::reader::{register, select_all, versioned, ChunkEnd, ChunkSource, Described};

/// The prefix of marker messages (`pg_logical_emit_message`).
pub const MARKER_PREFIX: &str = "tributary.snapshot";

/// A reader's connections: one reads chunks in their snapshots, the other commits the
/// markers meanwhile (opened by the first chunk: lookups read through `reader` only).
pub struct Conns {
    reader: Client,
    marker: Option<Client>,
}

/// A table as the snapshot reads it.
pub struct PgTable {
    oid: u32,
    /// Each column's name and type as described: a chunk whose snapshot sees others
    /// (an ALTER during the table's snapshot) is not read with these.
    signature: Vec<(String, String)>,
    types: Vec<PgType>,
    /// Key columns to chunk by (empty: one pass), with the SQL type names to cast the
    /// resume key's text to.
    chunk_key: Vec<usize>,
    key_types: Vec<String>,
}

/// PostgreSQL as a snapshot source (snapshot::reader).
pub struct Chunks {
    pub cfg: PostgresSourceConfig,
    pub connector: Arc<str>,
    /// Where the schema versions of snapshotted tables are recorded (None for lookups).
    pub store: Option<Arc<OffsetStore>>,
    pub password: Option<Secret>,
}

/// Makes markers unique within this process (with the slot and the start time, unique
/// among connectors and restarts).
static MARKERS: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl ChunkSource for Chunks {
    type Conn = Conns;
    type Table = PgTable;

    async fn connect(&self) -> Result<Conns, Failure> {
        Ok(Conns {
            reader: query_client(&self.cfg, self.password.as_ref()).await?,
            marker: None,
        })
    }

    async fn describe(
        &self,
        conns: &mut Conns,
        table: &str,
    ) -> Result<Option<Described<PgTable>>, Failure> {
        let conn = &conns.reader;
        let fail = |e: tokio_postgres::Error| {
            classify(&self.cfg, &e).reword(|m| format!("reading the catalog for {table}: {m}"))
        };
        let Some((oid, schema, name, identity)) = find(conn, table).await.map_err(fail)? else {
            return Ok(None);
        };
        // A snapshot beside the stream needs the stream to carry the table's later
        // changes (not lookups and reads of their own, which have no store).
        if self.store.is_some() {
            self.publish(
                conn,
                oid,
                table,
                &format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
            )
            .await?;
        }
        let rows = conn.query(COLUMNS, &[&oid]).await.map_err(fail)?;
        let mut cache = TypeCache::default();
        let mut types = Vec::with_capacity(rows.len());
        let mut columns = Vec::with_capacity(rows.len());
        for r in &rows {
            types.push(cache.resolve(conn, r.get(1)).await.map_err(fail)?);
            columns.push(Column {
                name: r.get(0),
                type_name: r.get(2),
            });
        }
        // The key events carry (stream.rs): the primary key, else the replica identity
        // index.
        let mut key_names = index_columns(conn, oid, Index::Primary)
            .await
            .map_err(fail)?;
        if key_names.is_empty() && identity == "i" {
            key_names = index_columns(conn, oid, Index::ReplicaIdentity)
                .await
                .map_err(fail)?;
        }
        let key: Vec<usize> = key_names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let unique = unique_indexes(conn, oid).await.map_err(fail)?;
        let estimate: f32 = conn
            .query_one("SELECT reltuples FROM pg_class WHERE oid = $1", &[&oid])
            .await
            .map_err(fail)?
            .get(0);
        let key_types = key.iter().map(|&i| columns[i].type_name.clone()).collect();
        let signature = signature(&rows);
        let schema = TableSchema::new(
            self.connector.clone(),
            "postgres",
            schema,
            name,
            columns,
            key.clone(),
            0,
        );
        Ok(Some(Described {
            schema: versioned(self.store.as_deref(), schema).map_err(Failure::Fatal)?,
            keyed: !key.is_empty(),
            table: PgTable {
                oid,
                signature,
                types,
                chunk_key: key,
                key_types,
            },
            // -1: never analyzed.
            estimate: estimate.max(0.0) as u64,
            unique,
        }))
    }

    async fn position(&self, conns: &mut Conns) -> Result<(Position, u64), Failure> {
        let text: String = conns
            .reader
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| classify(&self.cfg, &e))?
            .get(0);
        let lsn = crate::event::parse_lsn(&text)
            .ok_or_else(|| Failure::Fatal(format!("unexpected pg_current_wal_lsn() `{text}`")))?;
        Ok((Position::Wal { lsn }, lsn))
    }

    async fn chunk(
        &self,
        conns: &mut Conns,
        t: &Described<PgTable>,
        after: Option<&[Value]>,
        limit: u64,
        requests: &Requests,
    ) -> Result<ChunkEnd, String> {
        let sql_err = |e: tokio_postgres::Error| self.sql_error(e);
        if conns.marker.is_none() {
            let marker = self.query_client().await?;
            marker
                .batch_execute("SET synchronous_commit = local")
                .await
                .map_err(sql_err)?;
            conns.marker = Some(marker);
        }
        let conn = &conns.reader;
        conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(sql_err)?;
        let result = self
            .chunk_in_snapshot(conns, t, after, limit, requests)
            .await;
        // Read-only work: a failed COMMIT loses nothing (the connection is gone then,
        // and the retry opens another).
        let _ = conn.batch_execute("COMMIT").await;
        result
    }
}

impl Chunks {
    /// Makes sure the publication carries table `oid` (a table the schema guard let in
    /// after the start: tables.rs), adding it when `alter_publication` allows; then
    /// waits until every transaction older than the change ended, so that what the
    /// stream does not carry of the table (changes decoded before it was published)
    /// is visible to the snapshot's first chunk. Refused, it fails transiently: the
    /// reader tries again with backoff, naming the statement for the owner.
    async fn publish(
        &self,
        conn: &Client,
        oid: u32,
        table: &str,
        quoted: &str,
    ) -> Result<(), Failure> {
        let publication = &self.cfg.publication;
        let fail = |e: tokio_postgres::Error| {
            classify(&self.cfg, &e).reword(|m| format!("reading publication `{publication}`: {m}"))
        };
        if super::tables::publishes(conn, publication, oid)
            .await
            .map_err(fail)?
        {
            return Ok(());
        }
        let statement = format!(
            "ALTER PUBLICATION {} ADD TABLE {quoted};",
            quote_ident(publication)
        );
        if !self.cfg.alter_publication {
            return Err(Failure::Transient(format!(
                "{table} is not in publication `{publication}` and [source] alter_publication = false: its snapshot waits until the publication's owner runs {statement}"
            )));
        }
        conn.batch_execute(&statement).await.map_err(|e| {
            Failure::Transient(format!(
                "adding {table} to publication `{publication}`: {}; its snapshot waits until the owner of the publication and the table runs {statement} (or set [source] user to one)",
                e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
            ))
        })?;
        tracing::info!(table, publication = %publication, "table added to the publication");
        let horizon: i64 = conn
            .query_one(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await
            .map_err(fail)?
            .get(0);
        let began = std::time::Instant::now();
        let mut said = false;
        loop {
            let oldest: i64 = conn
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                    &[],
                )
                .await
                .map_err(fail)?
                .get(0);
            if oldest >= horizon {
                return Ok(());
            }
            if !said && began.elapsed() > std::time::Duration::from_secs(10) {
                said = true;
                tracing::info!(table, "waiting for transactions older than the publication change to end before its snapshot");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn query_client(&self) -> Result<Client, String> {
        query_client(&self.cfg, self.password.as_ref())
            .await
            .map_err(|e| e.message().to_string())
    }

    fn sql_error(&self, e: tokio_postgres::Error) -> String {
        classify(&self.cfg, &e).message().to_string()
    }

    async fn chunk_in_snapshot(
        &self,
        conns: &Conns,
        t: &Described<PgTable>,
        after: Option<&[Value]>,
        limit: u64,
        requests: &Requests,
    ) -> Result<ChunkEnd, String> {
        let sql_err = |e: tokio_postgres::Error| self.sql_error(e);
        let conn = &conns.reader;
        // The first statement takes the transaction's snapshot.
        let text: String = conn
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(sql_err)?
            .get(0);
        if let Some(ms) = marker_delay_ms() {
            // Tests widen the window between the snapshot and its marker, so changes
            // land in it and the merge must leave them out.
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let marker = format!(
            "{}/{}/{}",
            self.cfg.slot,
            now_ms(),
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let view = PgSnapshot::parse(&text, marker.clone())
            .ok_or_else(|| format!("unexpected pg_current_snapshot() `{text}`"))?;
        // The catalog as of the chunk's snapshot: its rows must go out with the
        // columns the stream has at the chunk's marker, or a column added meanwhile
        // would be missing from documents newer than the change that filled it. The
        // error makes the reader describe the table again.
        let now = conn
            .query(COLUMNS, &[&t.table.oid])
            .await
            .map_err(sql_err)?;
        if signature(&now) != t.table.signature {
            return Err(format!(
                "the columns of {} changed during its snapshot: reading it again with the new ones",
                t.schema.qualified_name()
            ));
        }
        let (mut rows, settled) =
            register(requests, t.schema.clone(), Cut::Snapshot(Box::new(view))).await?;
        // Committed after the chunk was handed over, so the stream finds it waiting. If
        // this fails the marker may never come: the chunk is given up (the next one of
        // the table replaces it in the stream task) and the read retried.
        conns
            .marker
            .as_ref()
            .expect("opened by chunk")
            .query_one(
                "SELECT pg_logical_emit_message(true, $1, $2)::text",
                &[&MARKER_PREFIX, &marker],
            )
        .await
        .map_err(|e| {
            let m = sql_err(e);
            if m.contains("permission denied") {
                format!("{m}: snapshots write a marker with pg_logical_emit_message; grant EXECUTE on it to [source] user")
            } else {
                m
            }
        })?;
        let sql = select(&t.schema, &t.table, after, limit);
        let read = async {
            let stream = conn.simple_query_raw(&sql).await.map_err(sql_err)?;
            futures_util::pin_mut!(stream);
            while let Some(msg) = stream.try_next().await.map_err(sql_err)? {
                let SimpleQueryMessage::Row(r) = msg else {
                    continue;
                };
                let out = decode_row(t, &r)?;
                // The key's text forms: exactly what the next chunk's literal needs.
                let key = t.keyed.then(|| {
                    t.table
                        .chunk_key
                        .iter()
                        .map(|&i| Value::String(r.get(i).unwrap_or_default().to_string()))
                        .collect()
                });
                if !rows.push(out, key).await {
                    return Ok(false);
                }
            }
            Ok::<_, String>(true)
        }
        .await;
        match read {
            Ok(true) => rows.end(limit, t.keyed).await,
            Ok(false) => {}
            Err(e) => {
                rows.fail(e.clone()).await;
                // The marker is in the stream: wait for it to settle what it got, so
                // the retry starts after the progress it recorded.
                let _ = settled.wait().await;
                return Err(e);
            }
        }
        settled.wait().await
    }
}

/// A table's columns, in order: name, type oid, type with modifiers.
const COLUMNS: &str =
    "SELECT attname, atttypid, format_type(atttypid, atttypmod) FROM pg_attribute \
     WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum";

/// Names and types of `COLUMNS` rows.
fn signature(rows: &[tokio_postgres::Row]) -> Vec<(String, String)> {
    rows.iter().map(|r| (r.get(0), r.get(2))).collect()
}

/// `TRIBUTARY_TEST_MARKER_DELAY_MS`: a pause between taking a chunk's snapshot and
/// writing its marker, for tests only (it makes the window the merge covers wide
/// enough for a test writer to land changes in it).
fn marker_delay_ms() -> Option<u64> {
    static DELAY: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("TRIBUTARY_TEST_MARKER_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// A text-format row as event values (the stream's decoder).
fn decode_row(t: &Described<PgTable>, r: &tokio_postgres::SimpleQueryRow) -> Result<Row, String> {
    let mut out = Vec::with_capacity(t.table.types.len());
    for (i, ty) in t.table.types.iter().enumerate() {
        out.push(match r.get(i) {
            None => Value::Null,
            Some(s) => decode_text(ty, s.as_bytes()).map_err(|e| {
                format!(
                    "cannot decode {}.{} ({}): {e}",
                    t.schema.qualified_name(),
                    t.schema.columns[i].name,
                    t.schema.columns[i].type_name
                )
            })?,
        });
    }
    Ok(out)
}

impl Chunks {
    /// The rows of `t` whose column `key` is one of `keys` (for lookups).
    pub(super) async fn rows_by_key(
        &self,
        conns: &Conns,
        t: &Described<PgTable>,
        key: usize,
        keys: &[Value],
    ) -> Result<Vec<Row>, Failure> {
        let s = &t.schema;
        let ty = &s.columns[key].type_name;
        let list: Vec<String> = keys
            .iter()
            .map(|k| format!("{}::{ty}", literal(&k.to_text())))
            .collect();
        let sql = format!(
            "{} WHERE {} IN ({})",
            select_all(s, quote_ident),
            quote_ident(&s.columns[key].name),
            list.join(", ")
        );
        let mut out = Vec::new();
        for msg in conns
            .reader
            .simple_query(&sql)
            .await
            .map_err(|e| classify(&self.cfg, &e))?
        {
            if let SimpleQueryMessage::Row(r) = msg {
                out.push(decode_row(t, &r).map_err(Failure::Fatal)?);
            }
        }
        Ok(out)
    }
}

/// The table `schema.name` names (split at the dot that names an existing table), with
/// its oid and replica identity.
async fn find(
    conn: &Client,
    table: &str,
) -> Result<Option<(u32, String, String, String)>, tokio_postgres::Error> {
    for (i, _) in table.match_indices('.') {
        let (schema, name) = (&table[..i], &table[i + 1..]);
        if let Some(r) = conn
            .query_opt(
                "SELECT c.oid, c.relreplident::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &name],
            )
            .await?
        {
            return Ok(Some((r.get(0), schema.into(), name.into(), r.get(1))));
        }
    }
    Ok(None)
}

/// The chunk's statement: every column (text output) in key order after `after` (the
/// previous chunk's last key, as text cast to the key's types).
fn select(s: &TableSchema, t: &PgTable, after: Option<&[Value]>, limit: u64) -> String {
    let mut sql = select_all(s, quote_ident);
    if t.chunk_key.is_empty() {
        return sql;
    }
    let key: Vec<String> = t
        .chunk_key
        .iter()
        .map(|&i| quote_ident(&s.columns[i].name))
        .collect();
    if let Some(after) = after {
        let literals: Vec<String> = after
            .iter()
            .zip(&t.key_types)
            .map(|(v, ty)| format!("{}::{ty}", literal(&v.to_text())))
            .collect();
        sql.push_str(&format!(
            " WHERE ({}) > ({})",
            key.join(", "),
            literals.join(", ")
        ));
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", key.join(", ")));
    sql
}

/// A string literal that reads the same whatever standard_conforming_strings says.
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// `pg_current_snapshot()`: which transactions the chunk's snapshot saw.
struct PgSnapshot {
    marker: String,
    xmax: u64,
    running: HashSet<u64>,
}

impl PgSnapshot {
    /// `xmin:xmax:xip,...` (64-bit transaction ids).
    fn parse(text: &str, marker: String) -> Option<PgSnapshot> {
        let mut parts = text.split(':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let running = match parts.next()? {
            "" => HashSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(PgSnapshot {
            marker,
            xmax,
            running,
        })
    }

    /// A 32-bit xid as events carry it, widened to 64 bits next to `xmax` (the
    /// transactions a stream carries around a snapshot are close to it).
    fn widen(&self, xid: u32) -> u64 {
        let diff = xid.wrapping_sub(self.xmax as u32) as i32;
        (self.xmax as i64 + diff as i64) as u64
    }
}

impl SnapshotView for PgSnapshot {
    fn marker(&self) -> &str {
        &self.marker
    }

    fn sees(&self, txid: Option<&str>) -> bool {
        let Some(xid) = txid.and_then(|t| t.parse::<u32>().ok()) else {
            return true;
        };
        let full = self.widen(xid);
        full < self.xmax && !self.running.contains(&full)
    }

    fn running(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|x| (*x as u32).to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility() {
        let s = PgSnapshot::parse("100:105:100,103", "m".into()).unwrap();
        assert!(s.sees(Some("99")));
        assert!(!s.sees(Some("100")));
        assert!(s.sees(Some("101")));
        assert!(!s.sees(Some("103")));
        assert!(s.sees(Some("104")));
        assert!(!s.sees(Some("105")));
        assert!(!s.sees(Some("200")));
        let mut running = s.running();
        running.sort();
        assert_eq!(running, vec!["100", "103"]);
        // 32-bit xids across an epoch boundary.
        let epoch = 1u64 << 32;
        let s = PgSnapshot::parse(&format!("{}:{}:", epoch - 2, epoch + 2), "m".into()).unwrap();
        assert!(s.sees(Some(&(u32::MAX - 1).to_string())));
        assert!(s.sees(Some("1")));
        assert!(!s.sees(Some("2")));
        assert!(PgSnapshot::parse("1:2", "m".into()).is_none());
    }

    #[test]
    fn literals_read_the_same_under_any_setting() {
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
    }
}
