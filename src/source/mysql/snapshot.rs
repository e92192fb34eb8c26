//! Snapshot chunks from MariaDB: each chunk is read inside its own
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT`, whose `binlog_snapshot_file` /
//! `binlog_snapshot_position` are the exact binlog position the read is consistent
//! with: the chunk's cut (see snapshot::merge).
//!
//! Rows are read with the binary protocol (exact FLOAT/DOUBLE, dates as parts) in a
//! UTC session and converted to the same values the binlog decoder gives for the same
//! column, so a snapshot row and a streamed row of the same data are equal.

use std::sync::Arc;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};
use serde_json::value::RawValue;

use super::catalog::{self, json_columns, quote_ident, stream_type_name};
use super::config::MysqlSourceConfig;
use super::connect::{classify, connect};
use super::raw;
use super::stream::{file_sequence, row_version};
use crate::event::{Column, Position, TableSchema, Value};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::settings::Secret;
use crate::snapshot::merge::{Cut, Requests};
use crate::snapshot::reader::{register, select_all, versioned, ChunkEnd, ChunkSource, Described};

/// "Table definition has changed, please retry transaction".
const ER_TABLE_DEF_CHANGED: u16 = 1412;
use crate::source::filter::TableFilter;

/// How one column's SELECT value becomes an event value.
#[derive(Debug, Clone)]
struct SnapColumn {
    name: String,
    data_type: String,
    unsigned: bool,
    fsp: u8,
    json: bool,
    /// BINARY/VARBINARY/BLOB (no character set): bytes, not text.
    binary: bool,
}

/// A table as the snapshot reads it.
pub(super) struct SnapTable {
    columns: Vec<SnapColumn>,
    /// Each column's name and COLUMN_TYPE as described: a chunk whose snapshot sees
    /// others (an ALTER during the table's snapshot) is not read with these.
    signature: Vec<(String, String)>,
    /// The key to chunk by (empty: one full scan).
    chunk_key: Vec<usize>,
}

/// MariaDB as a snapshot source (snapshot::reader).
pub(super) struct Chunks {
    pub cfg: MysqlSourceConfig,
    pub flavor: super::Flavor,
    pub connector: Arc<str>,
    /// Where the schema versions of snapshotted tables are recorded (None for lookups).
    pub store: Option<Arc<OffsetStore>>,
    pub password: Option<Secret>,
}

#[async_trait]
impl ChunkSource for Chunks {
    type Conn = Conn;
    type Table = SnapTable;

    fn unsupported(&self) -> Option<&'static str> {
        (!self.flavor.is_mariadb()).then_some("it needs MariaDB's consistent-snapshot binlog position (binlog_snapshot_file/position); MySQL 8 snapshots are not built yet")
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let mut conn = connect(&self.cfg, self.password.as_ref()).await?;
        conn.query_drop("SET time_zone = '+00:00'")
            .await
            .map_err(|e| classify(&self.cfg, &e))?;
        Ok(conn)
    }

    async fn position(&self, conn: &mut Conn) -> Result<(Position, u64), Failure> {
        let row: Option<mysql_async::Row> = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(|e| classify(&self.cfg, &e))?;
        let (file, offset) = row
            .and_then(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
            .ok_or_else(|| {
                Failure::Fatal("SHOW MASTER STATUS returned nothing: the binlog is off".into())
            })?;
        let version = row_version(file_sequence(&file), offset, 0);
        Ok((
            Position::Binlog {
                file: Arc::from(file.as_str()),
                offset,
                gtid: None,
            },
            version,
        ))
    }

    async fn close(&self, conn: Conn) {
        let _ = conn.disconnect().await;
    }

    async fn describe(
        &self,
        conn: &mut Conn,
        table: &str,
    ) -> Result<Option<Described<SnapTable>>, Failure> {
        self.describe_table(conn, table).await
    }

    /// One chunk inside its own consistent snapshot; returns once the stream emitted it.
    async fn chunk(
        &self,
        conn: &mut Conn,
        t: &Described<SnapTable>,
        after: Option<&[Value]>,
        limit: u64,
        requests: &Requests,
    ) -> Result<ChunkEnd, String> {
        let sql_err = |e: mysql_async::Error| format!("{}: {e}", self.cfg.address());
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(sql_err)?;
        let status: Vec<(String, String)> = conn
            .query("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(sql_err)?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let (Some(file), Some(offset)) = (
            get("binlog_snapshot_file"),
            get("binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok()),
        ) else {
            return Err(
                "the server reports no binlog_snapshot_file/position (is the binlog on?)".into(),
            );
        };
        let cut = Cut::Position {
            version: row_version(file_sequence(&file), offset, 0),
            at: Position::Binlog {
                file: Arc::from(file.as_str()),
                offset,
                gtid: None,
            },
        };
        // The chunk's rows must go out with the columns the stream has where they are
        // due (past the cut), or a column added meanwhile would be missing from
        // documents newer than the change that filled it. An ALTER after this look
        // makes the read fail with 1412 (and the retry looks again); the error makes
        // the reader describe the table again.
        let now = signature(conn, &t.schema.db, &t.schema.table)
            .await
            .map_err(sql_err)?;
        if now != t.table.signature {
            let _ = conn.query_drop("COMMIT").await;
            return Err(format!(
                "the columns of {} changed during its snapshot: reading it again with the new ones",
                t.schema.qualified_name()
            ));
        }
        let (mut rows, settled) = register(requests, t.schema.clone(), cut).await?;
        let key = &t.table.chunk_key;
        let (sql, params) = select(&t.schema, key, after, limit);
        let read = async {
            let mut result = conn.exec_iter(sql, params).await?;
            while let Some(row) = result.next().await? {
                let values = row.unwrap();
                let mut out = Vec::with_capacity(values.len());
                for (c, v) in t.table.columns.iter().zip(values) {
                    out.push(convert(c, v).map_err(|m| {
                        mysql_async::Error::Other(format!("column `{}`: {m}", c.name).into())
                    })?);
                }
                let k = (!key.is_empty()).then(|| key.iter().map(|&i| out[i].clone()).collect());
                if !rows.push(out, k).await {
                    // The stream dropped the chunk (it changed without a key to tell
                    // rows apart).
                    return Ok::<_, mysql_async::Error>(false);
                }
            }
            Ok(true)
        }
        .await;
        let _ = conn.query_drop("COMMIT").await;
        match read {
            Ok(true) => rows.end(limit, t.keyed).await,
            Ok(false) => {}
            Err(e) => {
                rows.fail(e.to_string()).await;
                // Wait for the stream to settle what it got, so the retry starts after
                // the progress it recorded.
                let settled = settled.wait().await;
                // A TRUNCATE or ALTER after the snapshot began: the server asks for the
                // transaction again (error 1412), and a new snapshot reads the table as
                // it is now.
                if matches!(&e, mysql_async::Error::Server(s) if s.code == ER_TABLE_DEF_CHANGED) {
                    return settled;
                }
                return Err(sql_err(e));
            }
        }
        settled.wait().await
    }
}

impl Chunks {
    /// The table's columns, key and row estimate from information_schema; None when it
    /// does not exist.
    async fn describe_table(
        &self,
        conn: &mut Conn,
        table: &str,
    ) -> Result<Option<Described<SnapTable>>, Failure> {
        let sql_err = |e: mysql_async::Error| {
            classify(&self.cfg, &e)
                .reword(|m| format!("reading information_schema for {table}: {m}"))
        };
        let Some((db, name)) = split(conn, table).await.map_err(sql_err)? else {
            return Ok(None);
        };
        type ColRow = (String, String, String, Option<u64>, Option<String>);
        let cols: Vec<ColRow> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, DATETIME_PRECISION, CHARACTER_SET_NAME \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&db, &name),
            )
            .await
            .map_err(sql_err)?;
        if cols.is_empty() {
            return Ok(None);
        }
        let key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (&db, &name),
            )
            .await
            .map_err(sql_err)?;
        // Unique indexes but the primary key, one row per column in index order (a
        // functional key part of MySQL 8 has no column name: such an index is left out).
        let unique_rows: Vec<(String, Option<String>)> = conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (&db, &name),
            )
            .await
            .map_err(sql_err)?;
        let mut unique: Vec<(String, Option<Vec<String>>)> = Vec::new();
        for (index, column) in unique_rows {
            match unique.last_mut() {
                Some((at, cols)) if *at == index => {
                    *cols = cols.take().zip(column).map(|(mut c, n)| {
                        c.push(n);
                        c
                    })
                }
                _ => unique.push((index, column.map(|n| vec![n]))),
            }
        }
        let estimate: Option<Option<u64>> = conn
            .exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&db, &name),
            )
            .await
            .map_err(sql_err)?;
        let json = if self.flavor.is_mariadb() {
            json_columns(conn, &db, &name).await.map_err(sql_err)?
        } else {
            Default::default()
        };
        let signature = cols
            .iter()
            .map(|(n, _, column_type, ..)| (n.clone(), column_type.clone()))
            .collect();
        let mut columns = Vec::with_capacity(cols.len());
        let mut event_columns = Vec::with_capacity(cols.len());
        for (cname, data_type, column_type, precision, charset) in cols {
            let is_json = json.contains(&cname);
            event_columns.push(Column {
                name: cname.clone(),
                type_name: stream_type_name(&data_type, &column_type, is_json),
            });
            columns.push(SnapColumn {
                name: cname,
                data_type: data_type.to_ascii_lowercase(),
                unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
                fsp: precision.unwrap_or(0) as u8,
                json: is_json,
                binary: charset.is_none(),
            });
        }
        let primary_key: Vec<usize> = key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let chunk_key = if primary_key
            .iter()
            .any(|&i| matches!(columns[i].data_type.as_str(), "enum" | "set"))
        {
            // ENUMs sort by index but compare with strings by text: no safe key range.
            Vec::new()
        } else {
            primary_key.clone()
        };
        let schema = TableSchema::new(
            self.connector.clone(),
            self.flavor.kind(),
            db,
            name,
            event_columns,
            primary_key,
            0,
        );
        Ok(Some(Described {
            schema: versioned(self.store.as_deref(), schema).map_err(Failure::Fatal)?,
            keyed: !chunk_key.is_empty(),
            table: SnapTable {
                columns,
                signature,
                chunk_key,
            },
            estimate: estimate.flatten().unwrap_or(0),
            unique: unique.into_iter().filter_map(|(_, cols)| cols).collect(),
        }))
    }
}

/// The table's columns as information_schema has them now: name, COLUMN_TYPE.
async fn signature(
    conn: &mut Conn,
    db: &str,
    name: &str,
) -> Result<Vec<(String, String)>, mysql_async::Error> {
    conn.exec(
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        (db, name),
    )
    .await
}

/// `db.table` split at the dot that names an existing table (names may hold dots).
async fn split(
    conn: &mut Conn,
    table: &str,
) -> Result<Option<(String, String)>, mysql_async::Error> {
    for (i, _) in table.match_indices('.') {
        let (db, name) = (&table[..i], &table[i + 1..]);
        let found: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, name),
            )
            .await?;
        if found.is_some() {
            return Ok(Some((db.to_string(), name.to_string())));
        }
    }
    Ok(None)
}

/// The chunk's SELECT and its parameters (the key to start after).
fn select(
    s: &TableSchema,
    chunk_key: &[usize],
    after: Option<&[Value]>,
    limit: u64,
) -> (String, Vec<MyValue>) {
    let mut sql = select_all(s, quote_ident);
    let mut params = Vec::new();
    if chunk_key.is_empty() {
        return (sql, params);
    }
    let key: Vec<String> = chunk_key
        .iter()
        .map(|&i| quote_ident(&s.columns[i].name))
        .collect();
    if let Some(after) = after {
        let marks = vec!["?"; key.len()].join(", ");
        sql.push_str(&format!(" WHERE ({}) > ({marks})", key.join(", ")));
        params = after.iter().map(param).collect();
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", key.join(", ")));
    (sql, params)
}

/// A key value as a statement parameter.
fn param(v: &Value) -> MyValue {
    match v {
        Value::Null | Value::Absent => MyValue::NULL,
        Value::Bool(b) => MyValue::Int(*b as i64),
        Value::Int(i) => MyValue::Int(*i),
        Value::UInt(u) => MyValue::UInt(*u),
        Value::Float(f) => MyValue::Float(*f),
        Value::Double(d) => MyValue::Double(*d),
        Value::Decimal(s) | Value::String(s) => MyValue::Bytes(s.clone().into_bytes()),
        Value::Date { year, month, day } => MyValue::Date(*year, *month, *day, 0, 0, 0, 0),
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
            ..
        } => MyValue::Date(*year, *month, *day, *hour, *minute, *second, *micros),
        Value::Time {
            negative,
            hours,
            minute,
            second,
            micros,
            ..
        } => MyValue::Time(
            *negative,
            hours / 24,
            (hours % 24) as u8,
            *minute,
            *second,
            *micros,
        ),
        Value::Bytes(b) => MyValue::Bytes(b.clone()),
        Value::Json(j) => MyValue::Bytes(j.get().as_bytes().to_vec()),
        Value::Array(a) => MyValue::Bytes(
            a.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_json(),
                })
                .collect::<Vec<_>>()
                .join(",")
                .into_bytes(),
        ),
    }
}

/// A SELECT value (binary protocol, UTC session) as the binlog decoder gives it.
fn convert(c: &SnapColumn, v: MyValue) -> Result<Value, String> {
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| "text that is not UTF-8".to_string());
    Ok(match (c.data_type.as_str(), v) {
        (_, MyValue::NULL) => Value::Null,
        ("tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint", MyValue::Int(i)) => {
            if c.unsigned {
                Value::UInt(i as u64)
            } else {
                Value::Int(i)
            }
        }
        (_, MyValue::UInt(u)) => Value::UInt(u),
        ("year", MyValue::Int(y)) => Value::Int(y),
        ("float", MyValue::Float(f)) => Value::Float(f),
        ("float", MyValue::Double(d)) => Value::Float(d as f32),
        ("double" | "real" | "double precision", MyValue::Double(d)) => Value::Double(d),
        ("decimal" | "numeric", MyValue::Bytes(b)) => Value::Decimal(text(b)?),
        ("bit", MyValue::Bytes(b)) => raw::bit_value(&b)?,
        ("date", MyValue::Date(year, month, day, ..)) => Value::Date { year, month, day },
        ("datetime", v @ MyValue::Date(..)) => {
            raw::datetime_from_mysql(&v, c.fsp, false).expect("matched a date")
        }
        // The zero TIMESTAMP is 0 seconds in the binlog.
        ("timestamp", MyValue::Date(0, 0, 0, ..)) => raw::timestamp_value(0, 0, c.fsp),
        ("timestamp", v @ MyValue::Date(..)) => {
            raw::datetime_from_mysql(&v, c.fsp, true).expect("matched a date")
        }
        ("time", v @ MyValue::Time(..)) => raw::time_from_mysql(&v, c.fsp).expect("matched a time"),
        ("enum", MyValue::Bytes(b)) => Value::String(text(b)?),
        ("set", MyValue::Bytes(b)) => {
            let s = text(b)?;
            Value::Array(if s.is_empty() {
                Vec::new()
            } else {
                s.split(',').map(|l| Value::String(l.to_string())).collect()
            })
        }
        (
            "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
            | "geometrycollection" | "geometry",
            MyValue::Bytes(b),
        ) => raw::geometry_value(&b)?,
        (_, MyValue::Bytes(b)) if c.json => Value::Json(
            RawValue::from_string(text(b)?)
                .map_err(|e| format!("JSON column holds invalid JSON: {e}"))?,
        ),
        (_, MyValue::Bytes(b)) if c.binary => Value::Bytes(b),
        (_, MyValue::Bytes(b)) => Value::String(text(b)?),
        (t, v) => return Err(format!("unsupported value {v:?} for a {t} column")),
    })
}

/// Tables to snapshot at this start: with `initial` and no checkpoint, every included
/// table (read from information_schema).
pub(super) async fn included_tables(
    cfg: &MysqlSourceConfig,
    password: Option<&Secret>,
    filter: &TableFilter,
) -> Result<Vec<String>, String> {
    let mut conn = connect(cfg, password)
        .await
        .map_err(|e| e.message().to_string())?;
    let tables = catalog::included_tables(&mut conn, filter)
        .await
        .map_err(|e| format!("listing tables at {}: {e}", cfg.address()))?;
    let _ = conn.disconnect().await;
    Ok(tables
        .into_iter()
        .map(|(db, t)| format!("{db}.{t}"))
        .collect())
}

impl Chunks {
    /// The rows of `t` whose column `key` is one of `keys` (for lookups), decoded like
    /// snapshot rows.
    pub(super) async fn rows_by_key(
        &self,
        conn: &mut Conn,
        t: &Described<SnapTable>,
        key: usize,
        keys: &[Value],
    ) -> Result<Vec<crate::event::Row>, Failure> {
        let s = &t.schema;
        let sql = format!(
            "{} WHERE {} IN ({})",
            select_all(s, quote_ident),
            quote_ident(&s.columns[key].name),
            vec!["?"; keys.len()].join(", ")
        );
        let params: Vec<MyValue> = keys.iter().map(param).collect();
        let rows: Vec<mysql_async::Row> = conn
            .exec(sql, params)
            .await
            .map_err(|e| classify(&self.cfg, &e))?;
        rows.into_iter()
            .map(|row| {
                t.table
                    .columns
                    .iter()
                    .zip(row.unwrap())
                    .map(|(c, v)| {
                        convert(c, v)
                            .map_err(|m| Failure::Fatal(format!("column `{}`: {m}", c.name)))
                    })
                    .collect()
            })
            .collect()
    }
}
