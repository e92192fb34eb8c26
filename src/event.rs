//! The one model every stage shares: change events, positions, rows and values.
//!
//! Events are serialized once, straight into a sink's buffer (`serde_json::to_writer`);
//! there is no intermediate JSON tree per row. The JSON form is documented in
//! docs/events.md and DESIGN.md.

use std::fmt;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Insert (`c`).
    Create,
    /// Update (`u`).
    Update,
    /// Delete (`d`).
    Delete,
    /// Snapshot read (`r`).
    Read,
    /// Truncate (`t`).
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// A point in a source's change log. Totally ordered within one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Position {
    /// MySQL/MariaDB: binlog file and byte offset; `gtid` is the MariaDB GTID state
    /// (one `domain-server-seq` per domain, comma separated) when known.
    /// Strings are shared (`Arc`): every event of a transaction carries the same ones.
    Binlog {
        file: Arc<str>,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gtid: Option<Arc<str>>,
    },
    /// PostgreSQL: a WAL location, `X/Y` in hex.
    Wal { lsn: String },
}

impl Position {
    /// Whether `self` is at or past `other`; `None` when they are not comparable (different
    /// source kinds or binlog base names).
    pub fn at_or_after(&self, other: &Position) -> Option<bool> {
        match (self, other) {
            (
                Position::Binlog {
                    file: a,
                    offset: oa,
                    ..
                },
                Position::Binlog {
                    file: b,
                    offset: ob,
                    ..
                },
            ) => {
                let split = |f: &str| {
                    f.rsplit_once('.')
                        .map(|(base, n)| (base.to_string(), n.parse::<u64>().ok()))
                };
                match (split(a), split(b)) {
                    (Some((ba, Some(na))), Some((bb, Some(nb)))) if ba == bb => {
                        Some((na, *oa) >= (nb, *ob))
                    }
                    _ => None,
                }
            }
            (Position::Wal { lsn: a }, Position::Wal { lsn: b }) => {
                Some(parse_lsn(a)? >= parse_lsn(b)?)
            }
            _ => None,
        }
    }

    /// Parses `binlog.000003:1234` or a Postgres LSN `0/16B3748`.
    pub fn parse(text: &str) -> Result<Position, String> {
        if let Some((file, off)) = text.rsplit_once(':') {
            let offset = off
                .parse()
                .map_err(|_| format!("bad offset in `{text}` (expected FILE:OFFSET)"))?;
            return Ok(Position::Binlog {
                file: file.into(),
                offset,
                gtid: None,
            });
        }
        if parse_lsn(text).is_some() {
            return Ok(Position::Wal {
                lsn: text.to_string(),
            });
        }
        Err(format!(
            "`{text}` is neither FILE:OFFSET nor an LSN like 0/16B3748"
        ))
    }
}

/// `X/Y` hex -> u64.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Binlog { file, offset, gtid } => {
                write!(f, "{file}:{offset}")?;
                if let Some(g) = gtid {
                    write!(f, " (gtid {g})")?;
                }
                Ok(())
            }
            Position::Wal { lsn } => write!(f, "lsn {lsn}"),
        }
    }
}

/// A column value, exact for every source type (see the type table in README.md).
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// DECIMAL/NUMERIC: the digits as the server prints them, emitted as a JSON string.
    Decimal(String),
    /// Text and formatted temporal values (ISO-8601 dates, times, timestamps).
    String(String),
    /// Binary values, emitted as base64.
    Bytes(Vec<u8>),
    /// JSON documents, kept as their exact text and emitted as nested JSON.
    Json(Box<RawValue>),
    /// SET labels and arrays.
    Array(Vec<Value>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Double(a), Double(b)) => a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) | (String(a), String(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Json(a), Json(b)) => a.get() == b.get(),
            (Array(a), Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    /// Rough heap + inline size, used to bound queues by bytes.
    pub fn approx_size(&self) -> usize {
        let inline = std::mem::size_of::<Value>();
        inline
            + match self {
                Value::Decimal(s) | Value::String(s) => s.len(),
                Value::Bytes(b) => b.len(),
                Value::Json(j) => j.get().len(),
                Value::Array(a) => a.iter().map(Value::approx_size).sum(),
                _ => 0,
            }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => serialize_float(s, *f as f64, Some(*f)),
            Value::Double(d) => serialize_float(s, *d, None),
            Value::Decimal(d) | Value::String(d) => s.serialize_str(d),
            Value::Bytes(b) => {
                use base64::Engine;
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::Json(j) => j.serialize(s),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
        }
    }
}

/// JSON has no NaN or infinities: they are emitted as the strings "NaN", "Infinity" and
/// "-Infinity" (PostgreSQL's spelling). Finite f32 values are written with the shortest
/// f32 representation so 0.3 stays 0.3, not 0.30000001192092896.
fn serialize_float<S: Serializer>(s: S, d: f64, as_f32: Option<f32>) -> Result<S::Ok, S::Error> {
    if d.is_nan() {
        s.serialize_str("NaN")
    } else if d.is_infinite() {
        s.serialize_str(if d > 0.0 { "Infinity" } else { "-Infinity" })
    } else if let Some(f) = as_f32 {
        s.serialize_f32(f)
    } else {
        s.serialize_f64(d)
    }
}

/// One column of a table as events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The source's own type name (e.g. `bigint unsigned`, `varchar`), for mappings and docs.
    pub type_name: String,
}

/// A table as events reference it: identity, columns in order, primary key, schema version.
/// Shared by every event of the table (one allocation per schema, not per row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub connector: Arc<str>,
    pub kind: &'static str,
    pub db: String,
    pub table: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`, in key order. Empty when the table has no primary key.
    pub primary_key: Vec<usize>,
    pub schema_version: u32,
}

impl TableSchema {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }
}

/// Column values in table column order.
pub type Row = Vec<Value>;

/// One committed row change.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub op: Op,
    pub table: Arc<TableSchema>,
    /// Where the change sits in the source's log.
    pub pos: Position,
    /// Transaction id (MariaDB GTID, MySQL GTID or xid, Postgres xid) when known.
    pub txid: Option<Arc<str>>,
    /// Commit time at the source, milliseconds since the epoch.
    pub source_ts_ms: u64,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// Strictly increases for every change of the same row in commit order (DESIGN.md).
    pub version: u64,
    /// When tributary read the change, milliseconds since the epoch.
    pub ts_ms: u64,
}

impl ChangeEvent {
    /// The row image that identifies the row: `after`, or `before` for deletes.
    pub fn key_row(&self) -> Option<&Row> {
        match self.op {
            Op::Delete => self.before.as_ref(),
            _ => self.after.as_ref().or(self.before.as_ref()),
        }
    }

    /// Rough in-memory size, used to bound queues by bytes.
    pub fn approx_size(&self) -> usize {
        let row = |r: &Option<Row>| {
            r.as_ref()
                .map(|r| r.iter().map(Value::approx_size).sum::<usize>())
                .unwrap_or(0)
        };
        std::mem::size_of::<ChangeEvent>() + row(&self.before) + row(&self.after)
    }
}

/// Serializes a row as an object keyed by column name.
struct RowJson<'a> {
    columns: &'a [Column],
    row: &'a Row,
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.row.len()))?;
        for (col, v) in self.columns.iter().zip(self.row.iter()) {
            m.serialize_entry(&col.name, v)?;
        }
        m.end()
    }
}

struct KeyJson<'a> {
    table: &'a TableSchema,
    row: &'a Row,
}

impl Serialize for KeyJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.table.primary_key.len()))?;
        for &i in &self.table.primary_key {
            if let (Some(col), Some(v)) = (self.table.columns.get(i), self.row.get(i)) {
                m.serialize_entry(&col.name, v)?;
            }
        }
        m.end()
    }
}

struct SourceJson<'a>(&'a ChangeEvent);

impl Serialize for SourceJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut m = s.serialize_struct("source", 7)?;
        m.serialize_field("connector", &*e.table.connector)?;
        m.serialize_field("kind", e.table.kind)?;
        m.serialize_field("db", &e.table.db)?;
        m.serialize_field("table", &e.table.table)?;
        m.serialize_field("pos", &e.pos)?;
        m.serialize_field("txid", &e.txid.as_deref())?;
        m.serialize_field("ts_ms", &e.source_ts_ms)?;
        m.end()
    }
}

impl Serialize for ChangeEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let cols = &self.table.columns;
        let mut m = s.serialize_struct("event", 8)?;
        m.serialize_field("op", self.op.code())?;
        m.serialize_field("source", &SourceJson(self))?;
        match (self.key_row(), self.table.primary_key.is_empty()) {
            (Some(row), false) => m.serialize_field(
                "key",
                &KeyJson {
                    table: &self.table,
                    row,
                },
            )?,
            _ => m.serialize_field("key", &())?,
        }
        m.serialize_field("before", &image(cols, &self.before))?;
        m.serialize_field("after", &image(cols, &self.after))?;
        m.serialize_field("schema_version", &self.table.schema_version)?;
        m.serialize_field("version", &self.version)?;
        m.serialize_field("ts_ms", &self.ts_ms)?;
        m.end()
    }
}

fn image<'a>(columns: &'a [Column], row: &'a Option<Row>) -> Option<RowJson<'a>> {
    row.as_ref().map(|row| RowJson { columns, row })
}

/// What a source hands to the pipeline, in commit order.
#[derive(Debug)]
pub enum SourceMessage {
    /// A row change inside the current transaction.
    Change(ChangeEvent),
    /// The end of a transaction: everything before it may be checkpointed at `Position`,
    /// the position to resume from.
    Commit(Position),
    /// The source lost its connection inside a transaction and will resend that
    /// transaction from its start: sinks drop what they got after the last `Commit`.
    Rewind,
}

impl SourceMessage {
    pub fn approx_size(&self) -> usize {
        match self {
            SourceMessage::Change(e) => e.approx_size(),
            _ => 64,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            connector: "demo".into(),
            kind: "mariadb",
            db: "shop".into(),
            table: "orders".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "bigint unsigned".into(),
                },
                Column {
                    name: "status".into(),
                    type_name: "varchar".into(),
                },
            ],
            primary_key: vec![0],
            schema_version: 3,
        })
    }

    #[test]
    fn event_json_matches_the_documented_shape() {
        let e = ChangeEvent {
            op: Op::Update,
            table: table(),
            pos: Position::Binlog {
                file: "binlog.000003".into(),
                offset: 1234,
                gtid: Some("0-1-57".into()),
            },
            txid: Some("0-1-57".into()),
            source_ts_ms: 1763800000000,
            before: Some(vec![Value::UInt(u64::MAX), Value::String("new".into())]),
            after: Some(vec![Value::UInt(u64::MAX), Value::String("paid".into())]),
            version: 42,
            ts_ms: 1763800000012,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"op":"u","source":{"connector":"demo","kind":"mariadb","db":"shop","table":"orders","pos":{"file":"binlog.000003","offset":1234,"gtid":"0-1-57"},"txid":"0-1-57","ts_ms":1763800000000},"key":{"id":18446744073709551615},"before":{"id":18446744073709551615,"status":"new"},"after":{"id":18446744073709551615,"status":"paid"},"schema_version":3,"version":42,"ts_ms":1763800000012}"#
        );
    }

    #[test]
    fn positions_compare_within_a_source() {
        let p = |s: &str| Position::parse(s).unwrap();
        assert_eq!(
            p("binlog.000010:4").at_or_after(&p("binlog.000009:999999")),
            Some(true)
        );
        assert_eq!(
            p("binlog.000010:4").at_or_after(&p("binlog.000010:5")),
            Some(false)
        );
        assert_eq!(p("0/16B3748").at_or_after(&p("0/16B3747")), Some(true));
        assert_eq!(p("a.000001:4").at_or_after(&p("b.000001:4")), None);
        assert!(Position::parse("nonsense").is_err());
    }

    #[test]
    fn values_serialize_exactly() {
        let j = |v: Value| serde_json::to_string(&v).unwrap();
        assert_eq!(j(Value::Float(0.3)), "0.3");
        assert_eq!(j(Value::Double(0.1)), "0.1");
        assert_eq!(j(Value::Double(f64::NAN)), "\"NaN\"");
        assert_eq!(j(Value::Float(f32::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(j(Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(j(Value::Decimal("-0.50".into())), "\"-0.50\"");
        assert_eq!(j(Value::Bytes(vec![0, 1, 255])), "\"AAH/\"");
        let raw = RawValue::from_string(r#"{"a": [1, 2.50]}"#.into()).unwrap();
        assert_eq!(j(Value::Json(raw)), r#"{"a": [1, 2.50]}"#);
        assert_eq!(
            j(Value::Array(vec![Value::String("a".into()), Value::Null])),
            r#"["a",null]"#
        );
    }
}
