//! The exact, round-trippable form of a change event, for streams tributary reads back
//! itself (the quarantine stream, the dead-letter streams).
//!
//! The event JSON sinks write is for consumers: a DATE and a string of the same text,
//! an `int` and a `bigint unsigned`, a NaN double and the string "NaN" all look alike
//! there. Read back, that JSON would hand the sinks different values (a DATE key would
//! give another Elasticsearch `_id` than the live stream gives). This form keeps every
//! value's variant (`Value`'s serde form: floats by their bits, bytes as base64). The
//! quarantine stream takes the table's columns and key from the schema history by
//! `schema_version`; dead letters keep them beside the event (`StoredChange`), since the
//! Elasticsearch sink's events carry enriched layouts the history does not hold.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ChangeEvent, Column, Op, Position, Row, TableSchema, DOCUMENT_KIND};

/// A `ChangeEvent` without its table schema (stored once per version in the history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub db: String,
    pub table: String,
    pub schema_version: u32,
    /// The op code (`c`, `u`, `d`, `r`, `t`).
    pub op: String,
    pub pos: Position,
    #[serde(default)]
    pub txid: Option<Arc<str>>,
    pub source_ts_ms: u64,
    #[serde(default)]
    pub before: Option<Row>,
    #[serde(default)]
    pub after: Option<Row>,
    pub version: u64,
    pub ts_ms: u64,
}

impl StoredEvent {
    pub fn from_event(e: &ChangeEvent) -> Self {
        StoredEvent {
            db: e.table.db.clone(),
            table: e.table.table.clone(),
            schema_version: e.table.schema_version,
            op: e.op.code().to_string(),
            pos: e.pos.clone(),
            txid: e.txid.clone(),
            source_ts_ms: e.source_ts_ms,
            before: e.before.clone(),
            after: e.after.clone(),
            version: e.version,
            ts_ms: e.ts_ms,
        }
    }

    /// `db.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }

    /// The event again, with `schema` (the history's version `schema_version` of the
    /// table). Err when the rows do not fit the schema or the op is unknown.
    pub fn into_event(self, schema: Arc<TableSchema>) -> Result<ChangeEvent, String> {
        let op = Op::from_code(&self.op).ok_or_else(|| format!("unknown op `{}`", self.op))?;
        let width = schema.columns.len();
        let row = |r: Option<Row>, image: &str| -> Result<Option<Row>, String> {
            match r {
                None => Ok(None),
                Some(r) if r.len() == width => Ok(Some(r)),
                Some(r) => Err(format!(
                    "the {image} image has {} values, but version {} of {} has {width} columns",
                    r.len(),
                    schema.schema_version,
                    schema.qualified_name()
                )),
            }
        };
        Ok(ChangeEvent {
            op,
            before: row(self.before, "before")?,
            after: row(self.after, "after")?,
            table: schema,
            pos: self.pos,
            txid: self.txid,
            source_ts_ms: self.source_ts_ms,
            version: self.version,
            ts_ms: self.ts_ms,
        })
    }
}

/// Appends `e` in `StoredEvent`'s form to `out`.
pub fn write_stored(e: &ChangeEvent, out: &mut Vec<u8>) {
    serde_json::to_writer(out, &StoredEvent::from_event(e)).expect("writing to a Vec cannot fail");
}

/// A change with its table's columns and key: what a dead-letter record keeps so the
/// change can be sent again exactly as it was (`tributary dead-letters replay`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredChange {
    pub columns: Vec<Column>,
    pub key: Vec<usize>,
    pub event: StoredEvent,
    /// `document` for a joined document's event (a table's change: absent, its kind
    /// is the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl StoredChange {
    /// Appends `{"columns":..,"key":..,"event":..}` for `e` to `out`.
    pub fn write(e: &ChangeEvent, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"columns\":");
        serde_json::to_writer(&mut *out, &e.table.columns).expect("writing to a Vec cannot fail");
        out.extend_from_slice(b",\"key\":");
        serde_json::to_writer(&mut *out, &e.table.primary_key)
            .expect("writing to a Vec cannot fail");
        out.extend_from_slice(b",\"event\":");
        write_stored(e, out);
        if e.table.kind == DOCUMENT_KIND {
            out.extend_from_slice(b",\"kind\":\"document\"");
        }
        out.push(b'}');
    }

    /// What the change is of, as `dead-letters` names it: `db.table`, or `document
    /// NAME`.
    pub fn name(&self) -> String {
        match self.kind.as_deref() {
            Some(DOCUMENT_KIND) => format!("{DOCUMENT_KIND} {}", self.event.table),
            _ => self.event.qualified_name(),
        }
    }

    /// The change again, its table rebuilt for `connector` (a `kind` source; a
    /// document's event keeps its own kind).
    pub fn into_event(
        self,
        connector: Arc<str>,
        kind: &'static str,
    ) -> Result<ChangeEvent, String> {
        let kind = match self.kind.as_deref() {
            Some(DOCUMENT_KIND) => DOCUMENT_KIND,
            _ => kind,
        };
        let schema = TableSchema::new(
            connector,
            kind,
            self.event.db.clone(),
            self.event.table.clone(),
            self.columns,
            self.key,
            self.event.schema_version,
        );
        if let Some(&k) = schema
            .primary_key
            .iter()
            .find(|&&k| k >= schema.columns.len())
        {
            return Err(format!(
                "key column {k} is outside the {} columns",
                schema.columns.len()
            ));
        }
        self.event.into_event(Arc::new(schema))
    }
}

/// Floats by their bits.
pub(super) mod f32_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        u32::deserialize(d).map(f32::from_bits)
    }
}

pub(super) mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// Bytes as base64 (a JSON array of numbers would be about four times larger).
pub(super) mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Value;
    use serde_json::value::RawValue;

    fn every_value() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Absent,
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Float(f32::NAN),
            Value::Float(-0.0),
            Value::Double(f64::NEG_INFINITY),
            Value::Double(0.1),
            Value::Decimal("-0.50".into()),
            Value::String("2024-01-02".into()),
            Value::Date {
                year: 2024,
                month: 1,
                day: 2,
            },
            Value::Date {
                year: 0,
                month: 0,
                day: 0,
            },
            Value::DateTime {
                year: 2024,
                month: 1,
                day: 2,
                hour: 3,
                minute: 4,
                second: 5,
                micros: 129_999,
                fsp: 2,
                utc: true,
            },
            Value::Time {
                negative: true,
                hours: 838,
                minute: 59,
                second: 59,
                micros: 0,
                fsp: 0,
            },
            Value::Bytes(vec![0, 1, 255]),
            Value::Json(RawValue::from_string(r#"{"a": [1, 2.50]}"#.into()).unwrap()),
            Value::Array(vec![Value::String("a".into()), Value::Null, Value::Int(3)]),
            Value::String("tab\t quote\" back\\ nul\u{0} \u{1f} é 😀".into()),
            Value::Decimal("12345678901234567890.000001".into()),
            Value::Bool(false),
        ]
    }

    #[test]
    fn every_value_reads_back_as_the_same_variant() {
        let values = every_value();
        let text = serde_json::to_string(&values).unwrap();
        let back: Vec<Value> = serde_json::from_str(&text).unwrap();
        // PartialEq on Value compares floats by bits: NaN equals NaN, -0.0 is not 0.0.
        assert_eq!(values, back, "{text}");
        assert_ne!(Value::Float(0.0), back[6]);
        // A string that looks like a date stays a string.
        assert!(matches!(back[10], Value::String(_)));
    }

    #[test]
    fn an_event_round_trips_with_its_schema() {
        let schema = Arc::new(crate::testkit::test_schema(
            3,
            &[("id", "int"), ("d", "date")],
        ));
        let e = ChangeEvent {
            op: Op::Update,
            table: schema.clone(),
            pos: Position::parse("0/16B3748").unwrap(),
            txid: Some("77".into()),
            source_ts_ms: 5,
            before: Some(vec![Value::Int(1), Value::Absent]),
            after: Some(vec![
                Value::Int(1),
                Value::Date {
                    year: 2024,
                    month: 2,
                    day: 29,
                },
            ]),
            version: 9,
            ts_ms: 6,
        };
        let text = serde_json::to_string(&StoredEvent::from_event(&e)).unwrap();
        let stored: StoredEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(stored.qualified_name(), "s.t");
        let back = stored.into_event(schema.clone()).unwrap();
        assert_eq!(back.to_json(), e.to_json());
        assert_eq!(back.after, e.after);
        assert_eq!(back.before, e.before);
        // A row that does not fit the schema is refused, not padded.
        let narrow = Arc::new(crate::testkit::test_schema(3, &[("id", "int")]));
        let stored: StoredEvent = serde_json::from_str(&text).unwrap();
        let err = stored.into_event(narrow).unwrap_err();
        assert!(
            err.contains("has 2 values, but version 3 of s.t has 1 columns"),
            "{err}"
        );
    }

    /// The borrowed writer gives `StoredEvent`'s form, and a `StoredChange` rebuilds
    /// the event with its (enriched) layout, no schema history needed.
    #[test]
    fn a_stored_change_round_trips_with_its_layout() {
        let schema = crate::testkit::test_schema(
            4,
            &[("id", "int"), ("d", "date"), ("added", "es:keyword")],
        );
        let e = ChangeEvent {
            op: Op::Delete,
            table: Arc::new(schema),
            pos: Position::parse("0/16B3748").unwrap(),
            txid: None,
            source_ts_ms: 5,
            before: Some(vec![
                Value::Int(1),
                Value::Date {
                    year: 2024,
                    month: 2,
                    day: 29,
                },
                Value::Double(f64::NAN),
            ]),
            after: None,
            version: 9,
            ts_ms: 6,
        };
        let mut change = Vec::new();
        StoredChange::write(&e, &mut change);
        let back: StoredChange = serde_json::from_slice(&change).unwrap();
        let back = back.into_event("c".into(), "postgres").unwrap();
        assert_eq!(back.table.columns, e.table.columns);
        assert_eq!(back.table.primary_key, e.table.primary_key);
        assert_eq!(back.before, e.before);
        assert_eq!((back.op, back.version), (Op::Delete, 9));
        // A key outside the columns is refused, not indexed into.
        let mut bad: StoredChange = serde_json::from_slice(&change).unwrap();
        bad.key = vec![7];
        assert!(bad.into_event("c".into(), "postgres").is_err());
    }

    /// A joined document's event comes back as a document's (the sink maps and routes
    /// it by that kind), named `document NAME`; a table's takes the source's kind.
    #[test]
    fn a_stored_document_keeps_its_kind() {
        let doc = TableSchema::new(
            "c".into(),
            DOCUMENT_KIND,
            String::new(),
            "customers".into(),
            vec![
                Column {
                    name: "id".into(),
                    type_name: "int".into(),
                },
                Column {
                    name: "orders".into(),
                    type_name: "document nested".into(),
                },
            ],
            vec![0],
            1,
        );
        let e = ChangeEvent {
            op: Op::Create,
            table: Arc::new(doc),
            pos: Position::parse("0/16B3748").unwrap(),
            txid: None,
            source_ts_ms: 5,
            before: None,
            after: Some(vec![
                Value::Int(1),
                Value::Json(serde_json::value::RawValue::from_string("[]".into()).unwrap()),
            ]),
            version: 9,
            ts_ms: 6,
        };
        let mut stored = Vec::new();
        StoredChange::write(&e, &mut stored);
        let back: StoredChange = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.name(), "document customers");
        let back = back.into_event("c".into(), "mariadb").unwrap();
        assert_eq!(back.table.kind, DOCUMENT_KIND);
        assert_eq!(back.after, e.after);

        let table = crate::testkit::test_schema(4, &[("id", "int")]);
        let e = ChangeEvent {
            table: Arc::new(table),
            after: Some(vec![Value::Int(1)]),
            ..e
        };
        let mut stored = Vec::new();
        StoredChange::write(&e, &mut stored);
        assert!(!String::from_utf8_lossy(&stored).contains("\"kind\""));
        let back: StoredChange = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.name(), e.table.qualified_name());
        assert_eq!(
            back.into_event("c".into(), "mariadb").unwrap().table.kind,
            "mariadb"
        );
    }

    /// The written form reads back as the event, every variant included.
    #[test]
    fn write_stored_reads_back_as_the_event() {
        let values = every_value();
        let names: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        let cols: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "text")).collect();
        let e = ChangeEvent {
            op: Op::Update,
            table: Arc::new(crate::testkit::test_schema(2, &cols)),
            pos: Position::parse("0/16B3748").unwrap(),
            txid: Some("x\"1".into()),
            source_ts_ms: u64::MAX,
            before: None,
            after: Some(values),
            version: 3,
            ts_ms: 4,
        };
        let mut text = Vec::new();
        write_stored(&e, &mut text);
        let back: StoredEvent = serde_json::from_slice(&text).unwrap();
        assert_eq!(back, StoredEvent::from_event(&e));
    }
}
