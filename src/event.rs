//! The one model every stage shares: change events, positions, rows and values.
//!
//! Events are serialized once, straight into a sink's buffer (`ChangeEvent::write_json`);
//! there is no intermediate JSON tree per row. The JSON form is in README.md and
//! docs/DESIGN.md.

pub mod consumer;
mod json;
mod schema_change;
pub mod stored;

pub use schema_change::{ChangeKind, SchemaChange, Stated};

pub use json::write_json_str;

use std::fmt;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// `resync`: the stream lost changes of the table (the server no longer had the
    /// stored position, `snapshot = "when_needed"`); a fresh snapshot of it follows.
    /// Consumers reset what they hold of the table: rows deleted in the gap are in no
    /// later event. Table-level, like a truncate: no rows.
    Resync,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Resync => "resync",
        }
    }

    /// The op of a code `code()` gives.
    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            "resync" => Op::Resync,
            _ => return None,
        })
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
    /// PostgreSQL: a WAL location, written `X/Y` in hex.
    Wal {
        #[serde(with = "lsn_text")]
        lsn: u64,
    },
    /// A Kafka source: the next offset to read of each partition the worker took
    /// records from, by `topic/partition` (what it commits to its consumer group).
    Kafka {
        offsets: Arc<std::collections::BTreeMap<String, i64>>,
    },
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
            (Position::Wal { lsn: a }, Position::Wal { lsn: b }) => Some(a >= b),
            (Position::Kafka { offsets: a }, Position::Kafka { offsets: b }) => Some(
                b.iter()
                    .all(|(p, o)| a.get(p).is_some_and(|mine| mine >= o)),
            ),
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
        if let Some(lsn) = parse_lsn(text) {
            return Ok(Position::Wal { lsn });
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

/// `u64` -> `X/Y` hex, the form PostgreSQL prints.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Serde for LSNs as PostgreSQL's `X/Y` text (checkpoints and events stay readable).
mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lsn: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_lsn(*lsn))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_lsn(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not an LSN like 0/16B3748"))
        })
    }
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
            Position::Wal { lsn } => write!(f, "lsn {}", format_lsn(*lsn)),
            Position::Kafka { offsets } => {
                write!(f, "kafka offsets")?;
                for (i, (p, o)) in offsets.iter().enumerate() {
                    write!(f, "{} {p}@{o}", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
        }
    }
}

/// A column value, exact for every source type (see the type table in README.md).
///
/// Its serde form (`event::stored`) tags every variant, so it reads back as the same
/// variant; sinks write the consumer JSON through `ChangeEvent::write_json` instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    Null,
    /// Not sent by the source, so not known: an unchanged TOASTed column in a Postgres
    /// `after` image (the row keeps its stored value), or a column outside the replica
    /// identity in a `before` image. Left out of the JSON (the event's `unchanged`
    /// lists the `after` ones); never null, never a placeholder.
    Absent,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// Stored by its bits: NaN, the infinities and -0.0 survive (JSON numbers cannot
    /// hold them).
    Float(#[serde(with = "stored::f32_bits")] f32),
    Double(#[serde(with = "stored::f64_bits")] f64),
    /// DECIMAL/NUMERIC: the digits as the server prints them, emitted as a JSON string.
    Decimal(String),
    /// Text.
    String(String),
    /// DATE, emitted as `YYYY-MM-DD` (zero dates keep their zeros).
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    /// DATETIME/TIMESTAMP, emitted as `YYYY-MM-DDTHH:MM:SS[.f]` with `fsp` fraction
    /// digits, and `Z` when `utc` (TIMESTAMP, timestamptz).
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
        fsp: u8,
        utc: bool,
    },
    /// TIME, emitted as `[-]HH:MM:SS[.f]`; hours may exceed 24.
    Time {
        negative: bool,
        hours: u32,
        minute: u8,
        second: u8,
        micros: u32,
        fsp: u8,
    },
    /// Binary values, emitted as base64.
    Bytes(#[serde(with = "stored::base64_bytes")] Vec<u8>),
    /// JSON documents, kept as their exact text and emitted as nested JSON.
    Json(Box<RawValue>),
    /// SET labels and arrays.
    Array(Vec<Value>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) | (Absent, Absent) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Double(a), Double(b)) => a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) | (String(a), String(b)) => a == b,
            (
                Date { year, month, day },
                Date {
                    year: y2,
                    month: m2,
                    day: d2,
                },
            ) => (year, month, day) == (y2, m2, d2),
            (
                DateTime {
                    year,
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    micros,
                    fsp,
                    utc,
                },
                DateTime {
                    year: y2,
                    month: mo2,
                    day: d2,
                    hour: h2,
                    minute: mi2,
                    second: s2,
                    micros: us2,
                    fsp: f2,
                    utc: u2,
                },
            ) => {
                (year, month, day, hour, minute, second, micros, fsp, utc)
                    == (y2, mo2, d2, h2, mi2, s2, us2, f2, u2)
            }
            (
                Time {
                    negative,
                    hours,
                    minute,
                    second,
                    micros,
                    fsp,
                },
                Time {
                    negative: n2,
                    hours: h2,
                    minute: mi2,
                    second: s2,
                    micros: us2,
                    fsp: f2,
                },
            ) => (negative, hours, minute, second, micros, fsp) == (n2, h2, mi2, s2, us2, f2),
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

impl Value {
    /// The value's JSON text (tests, messages; sinks use `ChangeEvent::write_json`).
    pub fn to_json(&self) -> std::string::String {
        let mut out = Vec::new();
        json::write_value(&mut out, self);
        std::string::String::from_utf8(out).expect("the encoder writes UTF-8")
    }
    /// The value as plain text: text and decimals as they are; everything else its JSON
    /// text, without the quotes of those emitted as JSON strings (dates, times,
    /// base64 bytes).
    pub fn to_text(&self) -> std::string::String {
        match self {
            Value::String(text) | Value::Decimal(text) => text.clone(),
            other => {
                let j = other.to_json();
                match j.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(inner) => inner.to_string(),
                    None => j,
                }
            }
        }
    }
}

/// One column of a table as events describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The source's own type name (e.g. `bigint unsigned`, `varchar(50)`), for mappings and docs.
    pub type_name: String,
}

impl Column {
    /// The type name without its modifiers and signedness: `numeric(10,2)` ->
    /// `numeric`, `timestamp(3) with time zone` -> `timestamp with time zone`,
    /// `int unsigned` -> `int`.
    pub fn base_type(&self) -> String {
        let plain = plain_type(&self.type_name);
        plain.trim_end_matches(" unsigned").to_string()
    }
}

/// A type name without its modifiers (`numeric(10,2)` -> `numeric`); signedness stays.
pub fn plain_type(type_name: &str) -> String {
    let mut plain = String::with_capacity(type_name.len());
    let mut depth = 0;
    for ch in type_name.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
}

/// Something kept per table schema, looked up by the schema `Arc`'s address (every
/// event of one schema shares the `Arc`): one lookup per event without hashing or
/// formatting names. The map holds a `Weak`, so it never keeps a schema alive (the
/// source drops a layout an ALTER replaced; several caches holding it would keep every
/// layout ever seen), yet the allocation behind the address stays reserved while the
/// entry exists, so no other schema can take the address and find this entry.
pub struct PerSchema<V> {
    map: std::collections::HashMap<usize, (Weak<TableSchema>, V)>,
}

impl<V> Default for PerSchema<V> {
    fn default() -> Self {
        PerSchema {
            map: Default::default(),
        }
    }
}

impl<V> PerSchema<V> {
    pub fn get(&self, schema: &Arc<TableSchema>) -> Option<&V> {
        self.map
            .get(&(Arc::as_ptr(schema) as usize))
            .map(|(_, v)| v)
    }

    pub fn insert(&mut self, schema: &Arc<TableSchema>, value: V) {
        self.make_room(schema);
        self.map.insert(
            Arc::as_ptr(schema) as usize,
            (Arc::downgrade(schema), value),
        );
    }

    pub fn get_or_insert_with(
        &mut self,
        schema: &Arc<TableSchema>,
        f: impl FnOnce() -> V,
    ) -> &mut V {
        self.make_room(schema);
        &mut self
            .map
            .entry(Arc::as_ptr(schema) as usize)
            .or_insert_with(|| (Arc::downgrade(schema), f()))
            .1
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Before a new schema goes in, entries of schemas nothing uses any more go (new
    /// schemas are rare: a reconnect, a DDL, a new table, so the sweep costs nothing per
    /// event). Past `MAX_SCHEMAS` live ones the map starts over: what it holds is
    /// derived per schema and cheap to derive again.
    fn make_room(&mut self, schema: &Arc<TableSchema>) {
        if self.map.contains_key(&(Arc::as_ptr(schema) as usize)) {
            return;
        }
        self.map.retain(|_, (weak, _)| weak.strong_count() > 0);
        if self.map.len() >= MAX_SCHEMAS {
            self.map.clear();
        }
    }
}

/// Schemas a `PerSchema` keeps before it starts over.
pub const MAX_SCHEMAS: usize = 1024;

/// The `kind` of a joined document's schema (`document::stage`): its events are
/// documents, not row changes.
pub const DOCUMENT_KIND: &str = "document";

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
    /// JSON pieces that are the same for every event of this schema, rendered once.
    fragments: json::TableFragments,
}

impl TableSchema {
    pub fn new(
        connector: Arc<str>,
        kind: &'static str,
        db: String,
        table: String,
        columns: Vec<Column>,
        primary_key: Vec<usize>,
        schema_version: u32,
    ) -> Self {
        let fragments = json::TableFragments::new(&connector, kind, &db, &table, &columns);
        TableSchema {
            connector,
            kind,
            db,
            table,
            columns,
            primary_key,
            schema_version,
            fragments,
        }
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }

    /// The same table with other columns and key (an enriched layout).
    pub fn with_layout(&self, columns: Vec<Column>, primary_key: Vec<usize>) -> Self {
        TableSchema::new(
            self.connector.clone(),
            self.kind,
            self.db.clone(),
            self.table.clone(),
            columns,
            primary_key,
            self.schema_version,
        )
    }

    /// The same table at another schema version.
    pub fn with_version(&self, schema_version: u32) -> Self {
        TableSchema {
            schema_version,
            ..self.clone()
        }
    }

    /// What events show of the layout (column names and types, the key), as a number:
    /// equal layouts get the same schema version however they were read (a binlog
    /// table map, the catalog for a snapshot).
    pub fn layout_fingerprint(&self) -> u64 {
        let mut crc = 0u32;
        for c in &self.columns {
            crc = crc32c::crc32c_append(crc, c.name.as_bytes());
            crc = crc32c::crc32c_append(crc, &[0]);
            crc = crc32c::crc32c_append(crc, c.type_name.as_bytes());
            crc = crc32c::crc32c_append(crc, &[1]);
        }
        for &k in &self.primary_key {
            crc = crc32c::crc32c_append(crc, &(k as u32).to_le_bytes());
        }
        ((crc as u64) << 32) | ((self.columns.len() as u64) << 16) | self.primary_key.len() as u64
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
    /// Whether the `after` image lacks some values (unchanged TOAST): sinks merge such a
    /// row into what they hold instead of replacing it.
    pub fn is_partial(&self) -> bool {
        self.after
            .as_ref()
            .is_some_and(|r| r.iter().any(|v| matches!(v, Value::Absent)))
    }

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

impl ChangeEvent {
    /// Appends the event's JSON (one line, no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        json::write_event(out, self);
    }

    /// Appends the event's key as the `key` field of its JSON has it: an object of the
    /// key columns, `null` for a table without a key.
    pub fn write_key_json(&self, out: &mut Vec<u8>) {
        json::write_key(out, self);
    }

    /// Appends one row image of this event's table as a JSON object (column -> value).
    pub fn write_row_json(&self, row: &Row, out: &mut Vec<u8>) {
        json::write_row(out, &self.table.fragments.keys, Some(row));
    }

    pub fn to_json(&self) -> std::string::String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        std::string::String::from_utf8(out).expect("the encoder writes UTF-8")
    }
}

/// What a source hands to the pipeline, in commit order.
#[derive(Debug, Clone)]
pub enum SourceMessage {
    /// A row change inside the current transaction.
    Change(ChangeEvent),
    /// The end of a transaction: everything before it may be checkpointed at `Position`,
    /// the position to resume from.
    Commit(Position),
    /// The source lost its connection inside a transaction and will resend that
    /// transaction from its start: sinks drop what they got after the last `Commit`.
    Rewind,
    /// A DDL statement changed a captured table in a way its rows do not show yet
    /// (created, dropped, renamed, a column renamed or retyped): for the schema guard;
    /// sinks ignore it.
    Schema(TableChange),
    /// Snapshot progress as of the next `Commit` (snapshot::State as JSON): stored with
    /// the checkpoint there; sinks ignore it.
    SnapshotProgress(Arc<serde_json::Value>),
}

/// A table-level schema change a source read from DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChange {
    /// `db.table` (MariaDB/MySQL) or `schema.table`.
    pub table: String,
    pub change: Stated,
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

    #[test]
    fn per_schema_caches_start_over_past_their_cap() {
        let mut m = PerSchema::default();
        let schemas: Vec<Arc<TableSchema>> = (0..MAX_SCHEMAS + 10)
            .map(|_| Arc::new(crate::testkit::test_schema(1, &[("id", "int")])))
            .collect();
        for (i, s) in schemas.iter().enumerate() {
            m.insert(s, i);
            assert!(m.len() <= MAX_SCHEMAS);
        }
        assert_eq!(m.get(schemas.last().unwrap()), Some(&(MAX_SCHEMAS + 9)));
        // A schema it holds is updated in place, never a reason to start over.
        let last = schemas.last().unwrap();
        let before = m.len();
        m.insert(last, 0);
        assert_eq!(m.len(), before);
    }

    #[test]
    fn per_schema_caches_let_go_of_schemas_nothing_uses() {
        let mut m = PerSchema::default();
        let kept = Arc::new(crate::testkit::test_schema(1, &[("id", "int")]));
        m.insert(&kept, "kept");
        for _ in 0..100 {
            // An ALTER's layout: in use while its events are, then dropped.
            let passing = Arc::new(crate::testkit::test_schema(2, &[("id", "int")]));
            m.insert(&passing, "passing");
            assert_eq!(m.get(&passing), Some(&"passing"));
        }
        // The last one is still in the map until the next schema comes.
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&kept), Some(&"kept"));
        let next = Arc::new(crate::testkit::test_schema(3, &[("id", "int")]));
        m.insert(&next, "next");
        assert_eq!(m.len(), 2, "only the live schemas stay");
        assert_eq!(m.get(&kept), Some(&"kept"));
    }

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            "demo".into(),
            "mariadb",
            "shop".into(),
            "orders".into(),
            vec![
                Column {
                    name: "id".into(),
                    type_name: "bigint unsigned".into(),
                },
                Column {
                    name: "status".into(),
                    type_name: "varchar".into(),
                },
            ],
            vec![0],
            3,
        ))
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
        let json = e.to_json();
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
        assert_eq!(p("1/0").at_or_after(&p("0/FFFFFFFF")), Some(true));
        let wal = p("A/16B3748");
        assert_eq!(wal.to_string(), "lsn A/16B3748");
        let json = serde_json::to_string(&wal).unwrap();
        assert_eq!(json, r#"{"lsn":"A/16B3748"}"#);
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), wal);
        assert_eq!(p("a.000001:4").at_or_after(&p("b.000001:4")), None);
        assert!(Position::parse("nonsense").is_err());
    }

    #[test]
    fn temporal_values_compare_by_value_not_by_text() {
        let t = |micros| Value::Time {
            negative: false,
            hours: 1,
            minute: 2,
            second: 3,
            micros,
            fsp: 2,
        };
        // Both print as "01:02:03.12"; they are still different values.
        assert_eq!(t(120_000).to_json(), t(129_999).to_json());
        assert_ne!(t(120_000), t(129_999));
        assert_eq!(t(120_000), t(120_000));
    }

    #[test]
    fn values_serialize_exactly() {
        let j = |v: Value| v.to_json();
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
