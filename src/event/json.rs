//! The change-event JSON encoder: writes straight into a sink's buffer.
//!
//! Pieces that repeat in every event of a table (the source block up to `pos`, every
//! `"column":` key) are rendered once per schema; numbers go through itoa/ryu; strings
//! are escaped in runs rather than byte by byte.

use base64::Engine;

use super::{ChangeEvent, Column, Row, Value};

/// JSON text shared by every event of one table schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableFragments {
    /// `,"source":{"connector":..,"kind":..,"db":..,"table":..,"pos":`
    source_prefix: Vec<u8>,
    /// `"name":` per column.
    pub(super) keys: Vec<Vec<u8>>,
}

impl TableFragments {
    pub(super) fn new(
        connector: &str,
        kind: &str,
        db: &str,
        table: &str,
        columns: &[Column],
    ) -> Self {
        let mut p = Vec::new();
        p.extend_from_slice(b",\"source\":{\"connector\":");
        write_json_str(&mut p, connector);
        p.extend_from_slice(b",\"kind\":");
        write_json_str(&mut p, kind);
        p.extend_from_slice(b",\"db\":");
        write_json_str(&mut p, db);
        p.extend_from_slice(b",\"table\":");
        write_json_str(&mut p, table);
        p.extend_from_slice(b",\"pos\":");
        let keys = columns
            .iter()
            .map(|c| {
                let mut k = Vec::with_capacity(c.name.len() + 3);
                write_json_str(&mut k, &c.name);
                k.push(b':');
                k
            })
            .collect();
        TableFragments {
            source_prefix: p,
            keys,
        }
    }
}

pub(super) fn write_event(out: &mut Vec<u8>, e: &ChangeEvent) {
    if e.table.kind == super::DOCUMENT_KIND {
        return write_document(out, e);
    }
    let t = &e.table;
    let f = &t.fragments;
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(e.op.code().as_bytes());
    out.push(b'"');
    out.extend_from_slice(&f.source_prefix);
    write_pos(out, &e.pos);
    out.extend_from_slice(b",\"txid\":");
    match &e.txid {
        Some(t) => write_json_str(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts_ms\":");
    write_u64(out, e.source_ts_ms);
    out.extend_from_slice(b"},\"key\":");
    write_key(out, e);
    out.extend_from_slice(b",\"before\":");
    write_row(out, &f.keys, e.before.as_ref());
    out.extend_from_slice(b",\"after\":");
    write_row(out, &f.keys, e.after.as_ref());
    if e.is_partial() {
        // Absent values are left out of `after`; name them so a consumer knows they
        // kept their stored value rather than becoming null.
        out.extend_from_slice(b",\"unchanged\":[");
        let after = e.after.as_ref().expect("partial implies after");
        let mut first = true;
        for (c, v) in t.columns.iter().zip(after) {
            if matches!(v, Value::Absent) {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_json_str(out, &c.name);
            }
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"schema_version\":");
    write_u64(out, t.schema_version as u64);
    out.extend_from_slice(b",\"version\":");
    write_u64(out, e.version);
    out.extend_from_slice(b",\"ts_ms\":");
    write_u64(out, e.ts_ms);
    out.push(b'}');
}

/// The source position as serde writes it (`Position` is untagged: its fields in
/// declaration order), the two stream kinds without going through serde (every event
/// carries one).
fn write_pos(out: &mut Vec<u8>, pos: &super::Position) {
    use super::Position;
    match pos {
        Position::Binlog { file, offset, gtid } => {
            out.extend_from_slice(b"{\"file\":");
            write_json_str(out, file);
            out.extend_from_slice(b",\"offset\":");
            write_u64(out, *offset);
            if let Some(g) = gtid {
                out.extend_from_slice(b",\"gtid\":");
                write_json_str(out, g);
            }
            out.push(b'}');
        }
        Position::Wal { lsn } => {
            out.extend_from_slice(b"{\"lsn\":\"");
            out.extend_from_slice(super::format_lsn(*lsn).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        Position::Kafka { .. } => {
            serde_json::to_writer(&mut *out, pos).expect("writing to a Vec cannot fail")
        }
    }
}

/// The event's key columns as an object (null without a key).
pub(super) fn write_key(out: &mut Vec<u8>, e: &ChangeEvent) {
    let t = &e.table;
    match e.key_row() {
        Some(row) if !t.primary_key.is_empty() => {
            out.push(b'{');
            for (n, &i) in t.primary_key.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&t.fragments.keys[i]);
                write_value(out, &row[i]);
            }
            out.push(b'}');
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// A joined document's event: `{"op":"doc","document":..,"key":{..},"doc":{..},
/// "version":..,"ts_ms":..}`, or `doc_delete` without `doc`.
fn write_document(out: &mut Vec<u8>, e: &ChangeEvent) {
    let t = &e.table;
    out.extend_from_slice(match e.after {
        Some(_) => b"{\"op\":\"doc\",\"document\":",
        None => b"{\"op\":\"doc_delete\",\"document\":",
    });
    write_json_str(out, &t.table);
    out.extend_from_slice(b",\"connector\":");
    write_json_str(out, &t.connector);
    out.extend_from_slice(b",\"key\":");
    write_key(out, e);
    if let Some(doc) = &e.after {
        out.extend_from_slice(b",\"doc\":");
        write_row(out, &t.fragments.keys, Some(doc));
    }
    out.extend_from_slice(b",\"version\":");
    write_u64(out, e.version);
    out.extend_from_slice(b",\"ts_ms\":");
    write_u64(out, e.ts_ms);
    out.push(b'}');
}

pub(super) fn write_row(out: &mut Vec<u8>, keys: &[Vec<u8>], row: Option<&Row>) {
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    let mut first = true;
    for (k, v) in keys.iter().zip(row) {
        if matches!(v, Value::Absent) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(k);
        write_value(out, v);
    }
    out.push(b'}');
}

pub(super) fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        // Rows skip absent values; one inside an array or key cannot occur.
        Value::Null | Value::Absent => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::UInt(u) => write_u64(out, *u),
        Value::Float(f) => {
            if f.is_finite() {
                out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes());
            } else {
                write_non_finite(out, *f as f64);
            }
        }
        Value::Double(d) => {
            if d.is_finite() {
                out.extend_from_slice(ryu::Buffer::new().format_finite(*d).as_bytes());
            } else {
                write_non_finite(out, *d);
            }
        }
        Value::Decimal(s) | Value::String(s) => write_json_str(out, s),
        Value::Bytes(b) => {
            out.push(b'"');
            let start = out.len();
            let len = base64::encoded_len(b.len(), true).expect("fits in memory");
            out.resize(start + len, 0);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(b, &mut out[start..])
                .expect("sized above");
            out.truncate(start + n);
            out.push(b'"');
        }
        Value::Json(j) => out.extend_from_slice(j.get().as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Date { year, month, day } => {
            out.push(b'"');
            write_date(out, *year, *month, *day);
            out.push(b'"');
        }
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
            fsp,
            utc,
        } => {
            out.push(b'"');
            write_date(out, *year, *month, *day);
            out.push(b'T');
            write_hms(out, *hour as u32, *minute, *second);
            write_fraction(out, *micros, *fsp);
            if *utc {
                out.push(b'Z');
            }
            out.push(b'"');
        }
        Value::Time {
            negative,
            hours,
            minute,
            second,
            micros,
            fsp,
        } => {
            out.push(b'"');
            if *negative {
                out.push(b'-');
            }
            write_hms(out, *hours, *minute, *second);
            write_fraction(out, *micros, *fsp);
            out.push(b'"');
        }
    }
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// JSON has no NaN or infinities: they are emitted as the strings "NaN", "Infinity" and
/// "-Infinity" (PostgreSQL's spelling).
fn write_non_finite(out: &mut Vec<u8>, d: f64) {
    out.extend_from_slice(if d.is_nan() {
        b"\"NaN\""
    } else if d > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    });
}

/// Zero-padded decimal digits.
fn write_padded(out: &mut Vec<u8>, v: u32, width: usize) {
    // The widths of dates and times, pushed as arrays of a known length: a slice of a
    // variable one is a call to memcpy per field, a few percent of a log sink's CPU.
    let d = |n: u32| b'0' + (n % 10) as u8;
    match width {
        2 if v < 100 => return out.extend_from_slice(&[d(v / 10), d(v)]),
        4 if v < 10_000 => {
            return out.extend_from_slice(&[d(v / 1000), d(v / 100), d(v / 10), d(v)])
        }
        _ => {}
    }
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    let mut n = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i.min(buf.len() - width.min(10))..]);
}

fn write_date(out: &mut Vec<u8>, y: u16, m: u8, d: u8) {
    write_padded(out, y as u32, 4);
    out.push(b'-');
    write_padded(out, m as u32, 2);
    out.push(b'-');
    write_padded(out, d as u32, 2);
}

fn write_hms(out: &mut Vec<u8>, h: u32, m: u8, s: u8) {
    write_padded(out, h, 2);
    out.push(b':');
    write_padded(out, m as u32, 2);
    out.push(b':');
    write_padded(out, s as u32, 2);
}

/// `.f` with exactly `fsp` digits (nothing when fsp is 0).
fn write_fraction(out: &mut Vec<u8>, micros: u32, fsp: u8) {
    if fsp == 0 {
        return;
    }
    let fsp = (fsp as u32).min(6);
    out.push(b'.');
    write_padded(out, micros / 10u32.pow(6 - fsp), fsp as usize);
}

/// Writes `s` as a JSON string. Runs of bytes that need no escaping are copied whole.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_serde_json() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\nt\tcr\r",
            "\u{1}\u{8}\u{c}\u{1f}\u{7f}",
            "ünï 😀",
            "",
        ] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn temporal_values() {
        let dt = Value::DateTime {
            year: 2024,
            month: 2,
            day: 29,
            hour: 3,
            minute: 4,
            second: 5,
            micros: 120_000,
            fsp: 2,
            utc: true,
        };
        assert_eq!(dt.to_json(), "\"2024-02-29T03:04:05.12Z\"");
        let t = Value::Time {
            negative: true,
            hours: 838,
            minute: 59,
            second: 59,
            micros: 1,
            fsp: 6,
        };
        assert_eq!(t.to_json(), "\"-838:59:59.000001\"");
        let zero = Value::Date {
            year: 0,
            month: 0,
            day: 0,
        };
        assert_eq!(zero.to_json(), "\"0000-00-00\"");
    }

    #[test]
    fn positions_as_serde_writes_them() {
        use crate::event::Position;
        let offsets = std::collections::BTreeMap::from([("t/0".to_string(), 7i64)]);
        for pos in [
            Position::Binlog {
                file: "binlog.000003".into(),
                offset: 1234,
                gtid: Some("0-1-57,1-2-3".into()),
            },
            Position::Binlog {
                file: "mysql-bin.\"1".into(),
                offset: 0,
                gtid: None,
            },
            Position::Wal { lsn: 0x016B_3748 },
            Position::Wal { lsn: u64::MAX },
            Position::Kafka {
                offsets: std::sync::Arc::new(offsets),
            },
        ] {
            let mut out = Vec::new();
            write_pos(&mut out, &pos);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&pos).unwrap()
            );
        }
    }

    #[test]
    fn padded_digits_of_every_width() {
        for (v, width, text) in [
            (0, 2, "00"),
            (7, 2, "07"),
            (99, 2, "99"),
            (123, 2, "123"),
            (5, 4, "0005"),
            (2024, 4, "2024"),
            (12345, 4, "12345"),
            (120, 6, "000120"),
            (1, 1, "1"),
        ] {
            let mut out = Vec::new();
            write_padded(&mut out, v, width);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{v} in {width}");
        }
    }
}
