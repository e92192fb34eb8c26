//! Reading back the event JSON sinks write for consumers (log streams), for
//! `tributary reindex --from log:NAME`.
//!
//! That JSON does not say which variant a value had (a DATE and a string of the same
//! text look alike; see `stored`), but a sink needs no more than to render the value
//! again byte for byte: every value comes back as the JSON it was written as
//! (`Value::Json`), except the values of text columns, which come back as text, so
//! that the id of a table keyed by one text column comes out unquoted as the live sink
//! makes it (a DATE key's id is its quoted JSON, from `Value::Date`; as `Value::Json`
//! it is that same text). Columns left out of a row (unchanged TOAST values) come
//! back absent. A document or id rendered from such an event equals the live sink's.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ChangeEvent, Column, Op, Position, Row, TableSchema, Value};

/// One record of a log stream, its rows still as written.
#[derive(Debug, Deserialize)]
pub struct ConsumerEvent {
    pub op: String,
    pub source: Source,
    #[serde(default)]
    before: Option<HashMap<String, Box<RawValue>>>,
    #[serde(default)]
    after: Option<HashMap<String, Box<RawValue>>>,
    pub schema_version: u32,
    pub version: u64,
    pub ts_ms: u64,
}

/// The record's `source` block.
#[derive(Debug, Deserialize)]
pub struct Source {
    pub db: String,
    pub table: String,
    pub pos: Position,
    #[serde(default)]
    pub txid: Option<Arc<str>>,
    pub ts_ms: u64,
}

impl ConsumerEvent {
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("not a change event: {e}"))
    }

    pub fn op(&self) -> Option<Op> {
        Op::from_code(&self.op)
    }

    /// The event with `schema` (the columns its rows were written with). Err when a
    /// row has a column the schema lacks.
    pub fn into_event(self, schema: Arc<TableSchema>) -> Result<ChangeEvent, String> {
        let op = self
            .op()
            .ok_or_else(|| format!("unknown op `{}`", self.op))?;
        Ok(ChangeEvent {
            op,
            before: row(&schema, schema.kind, self.before)?,
            after: row(&schema, schema.kind, self.after)?,
            table: schema,
            pos: self.source.pos,
            txid: self.source.txid,
            source_ts_ms: self.source.ts_ms,
            version: self.version,
            ts_ms: self.ts_ms,
        })
    }
}

/// A joined document's record (`doc` / `doc_delete`), its fields still as written.
#[derive(Debug, Deserialize)]
pub struct ConsumerDocument {
    pub op: String,
    #[serde(default)]
    key: Option<HashMap<String, Box<RawValue>>>,
    #[serde(default)]
    doc: Option<HashMap<String, Box<RawValue>>>,
    pub version: u64,
    pub ts_ms: u64,
}

impl ConsumerDocument {
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("not a document event: {e}"))
    }

    /// The document's event with `schema` (the document's own: the root's columns,
    /// then one per embed or nest, read back as JSON), its root columns read as a
    /// `root_kind` source's; `pos` is where it was read. A `doc_delete` carries the
    /// key in its row, as the document stage makes it.
    pub fn into_event(
        self,
        schema: Arc<TableSchema>,
        root_kind: &str,
        pos: Position,
    ) -> Result<ChangeEvent, String> {
        let (op, before, after) = match (self.op.as_str(), self.doc) {
            ("doc", Some(doc)) => (Op::Create, None, row(&schema, root_kind, Some(doc))?),
            ("doc_delete", _) => {
                let mut key = self.key.unwrap_or_default();
                let mut row: Row = vec![Value::Null; schema.columns.len()];
                for &i in &schema.primary_key {
                    let c = &schema.columns[i];
                    let raw = key
                        .remove(&c.name)
                        .ok_or_else(|| format!("the key lacks column {}", c.name))?;
                    row[i] = value(root_kind, c, raw)?;
                }
                (Op::Delete, Some(row), None)
            }
            (op, _) => return Err(format!("not a document event: op `{op}`")),
        };
        Ok(ChangeEvent {
            op,
            table: schema,
            pos,
            txid: None,
            source_ts_ms: self.ts_ms,
            before,
            after,
            version: self.version,
            ts_ms: self.ts_ms,
        })
    }
}

fn row(
    schema: &TableSchema,
    kind: &str,
    written: Option<HashMap<String, Box<RawValue>>>,
) -> Result<Option<Row>, String> {
    let Some(mut written) = written else {
        return Ok(None);
    };
    let row = schema
        .columns
        .iter()
        .map(|c| match written.remove(&c.name) {
            Some(raw) => value(kind, c, raw),
            None => Ok(Value::Absent),
        })
        .collect::<Result<Row, String>>()?;
    if !written.is_empty() {
        let mut extra: Vec<String> = written.into_keys().collect();
        extra.sort();
        return Err(format!(
            "column(s) {} are not in version {} of {}",
            extra.join(", "),
            schema.schema_version,
            schema.qualified_name()
        ));
    }
    Ok(Some(row))
}

fn value(kind: &str, column: &Column, raw: Box<RawValue>) -> Result<Value, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(Value::Null);
    }
    if text.starts_with('"') && holds_text(kind, column) {
        return serde_json::from_str(text)
            .map(Value::String)
            .map_err(|e| format!("column {}: {e}", column.name));
    }
    Ok(Value::Json(raw))
}

/// Whether the sources decode the column's values as text (`Value::String` or
/// `Value::Decimal`, rendered alike): every type but floats, dates, times, binary
/// strings and JSON on MariaDB/MySQL, every type but floats, bytea and JSON on
/// PostgreSQL (whose dates and timestamps are text already). Fields enrichers add and
/// arrays are kept as JSON.
fn holds_text(kind: &str, column: &Column) -> bool {
    if column.type_name.starts_with("es:") || column.type_name.ends_with("[]") {
        return false;
    }
    let base = column.base_type();
    // NaN and the infinities are written as strings; their ids are quoted JSON.
    if matches!(
        base.as_str(),
        "float" | "double" | "real" | "double precision"
    ) {
        return false;
    }
    match kind {
        "postgres" => !matches!(base.as_str(), "bytea" | "json" | "jsonb"),
        _ => !matches!(
            base.as_str(),
            "date"
                | "time"
                | "datetime"
                | "timestamp"
                | "binary"
                | "varbinary"
                | "tinyblob"
                | "blob"
                | "mediumblob"
                | "longblob"
                | "geometry"
                | "json"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(kind: &'static str, types: &[(&str, &str)], key: Vec<usize>) -> Arc<TableSchema> {
        Arc::new(TableSchema::new(
            "c".into(),
            kind,
            "db".into(),
            "t".into(),
            types
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    type_name: t.to_string(),
                })
                .collect(),
            key,
            1,
        ))
    }

    fn event(kind: &'static str, types: &[(&str, &str)], after: Row) -> ChangeEvent {
        ChangeEvent {
            op: Op::Update,
            table: schema(kind, types, vec![0]),
            pos: Position::Binlog {
                file: "binlog.000001".into(),
                offset: 4,
                gtid: None,
            },
            txid: Some("0-1-5".into()),
            source_ts_ms: 7,
            before: None,
            after: Some(after),
            version: 99,
            ts_ms: 8,
        }
    }

    /// Written by the log sink, read back: the same JSON, and the same document and id.
    fn round_trip(kind: &'static str, types: &[(&str, &str)], after: Row) -> ChangeEvent {
        let e = event(kind, types, after);
        let mut json = Vec::new();
        e.write_json(&mut json);
        let back = ConsumerEvent::parse(std::str::from_utf8(&json).unwrap())
            .unwrap()
            .into_event(e.table.clone())
            .unwrap();
        let mut again = Vec::new();
        back.write_json(&mut again);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            String::from_utf8(again).unwrap()
        );
        assert_eq!(
            crate::sink::elasticsearch::document_id(&e),
            crate::sink::elasticsearch::document_id(&back)
        );
        back
    }

    #[test]
    fn text_keys_come_back_as_text_and_other_values_as_written() {
        let back = round_trip(
            "mariadb",
            &[
                ("code", "varchar(20)"),
                ("d", "date"),
                ("x", "double"),
                ("b", "mediumblob"),
            ],
            vec![
                Value::String("a\"b".into()),
                Value::Date {
                    year: 2024,
                    month: 2,
                    day: 29,
                },
                Value::Double(f64::NAN),
                Value::Bytes(vec![0, 1, 255]),
            ],
        );
        let after = back.after.unwrap();
        assert_eq!(after[0], Value::String("a\"b".into()));
        assert!(matches!(after[2], Value::Json(_)));
    }

    #[test]
    fn a_date_key_keeps_its_quoted_id() {
        round_trip(
            "mariadb",
            &[("d", "date"), ("n", "int")],
            vec![
                Value::Date {
                    year: 2024,
                    month: 1,
                    day: 2,
                },
                Value::Int(5),
            ],
        );
        // PostgreSQL dates are text.
        let back = round_trip(
            "postgres",
            &[("d", "date"), ("n", "numeric(10,2)")],
            vec![
                Value::String("2024-01-02".into()),
                Value::Decimal("1.50".into()),
            ],
        );
        assert_eq!(back.after.unwrap()[0], Value::String("2024-01-02".into()));
        // A NaN is written as a string, but its id is quoted JSON.
        round_trip(
            "postgres",
            &[("x", "double precision")],
            vec![Value::Double(f64::NAN)],
        );
    }

    #[test]
    fn unchanged_values_come_back_absent_and_unknown_columns_are_refused() {
        let back = round_trip(
            "postgres",
            &[("id", "integer"), ("doc", "text")],
            vec![Value::Int(1), Value::Absent],
        );
        assert!(back.is_partial());
        let narrow = schema("postgres", &[("doc", "text")], vec![0]);
        let e = event(
            "postgres",
            &[("id", "integer"), ("doc", "text")],
            vec![Value::Int(1), Value::String("x".into())],
        );
        let mut json = Vec::new();
        e.write_json(&mut json);
        let err = ConsumerEvent::parse(std::str::from_utf8(&json).unwrap())
            .unwrap()
            .into_event(narrow)
            .unwrap_err();
        assert!(
            err.contains("column(s) id are not in version 1 of db.t"),
            "{err}"
        );
    }
}
