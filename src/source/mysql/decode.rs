//! Row images -> exact values.
//!
//! The row loop (bitmaps, images) is ours so table metadata is decoded once per table
//! map, not per row; each value is decoded by mysql_common's `BinlogValue`, then made
//! exact with the column's metadata (charset, signedness, labels, fsp, padding).

use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::value::Value as MyValue;
use serde_json::value::RawValue;

use super::charset::Charset;
use super::raw;
use super::table::{ColumnInfo, TableInfo};
use crate::event::{Row, Value};

/// A value that cannot be decoded. The caller adds table and position.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {message}")]
pub struct DecodeError {
    pub column: String,
    pub message: String,
}

/// Reads one row image (null bitmap + values) for the columns marked in `present`.
/// `present` holds one flag per table column.
pub fn read_image<'a>(
    buf: &mut ParseBuf<'a>,
    table: &'a TableInfo,
    present: &[bool],
) -> Result<Row, DecodeError> {
    let err = |column: &str, message: String| DecodeError {
        column: column.to_string(),
        message,
    };
    let n_present = present.iter().filter(|p| **p).count();
    let bitmap: &[u8] = buf
        .checked_eat(n_present.div_ceil(8))
        .ok_or_else(|| err("", "row image ends inside its null bitmap".into()))?;
    let mut row = Vec::with_capacity(table.columns.len());
    // Absent columns are an error (FULL row images), so the image index is the column's.
    for (image_idx, (col, &is_present)) in table.columns.iter().zip(present).enumerate() {
        if !is_present {
            return Err(err(
                &col.name,
                "column missing from the row image: the server's binlog_row_image is not FULL \
                 (SET GLOBAL binlog_row_image = 'FULL')"
                    .into(),
            ));
        }
        let is_null = bitmap[image_idx / 8] & (1 << (image_idx % 8)) != 0;
        if is_null {
            row.push(Value::Null);
            continue;
        }
        row.push(decode_value(buf, col).map_err(|m| err(&col.name, m))?);
    }
    Ok(row)
}

/// One non-null value: the common types straight from the bytes (raw.rs), the rest
/// through mysql_common's `BinlogValue`.
fn decode_value<'a>(buf: &mut ParseBuf<'a>, col: &'a ColumnInfo) -> Result<Value, String> {
    use ColumnType::*;
    match col.col_type {
        MYSQL_TYPE_TINY => raw::read_int(buf, 1, col.unsigned),
        MYSQL_TYPE_SHORT => raw::read_int(buf, 2, col.unsigned),
        MYSQL_TYPE_LONG => raw::read_int(buf, 4, col.unsigned),
        MYSQL_TYPE_LONGLONG => raw::read_int(buf, 8, col.unsigned),
        MYSQL_TYPE_INT24 => raw::read_int24(buf, col.unsigned),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => {
            let max_len = u16::from_le_bytes(meta2(col)?) as usize;
            raw::read_short_string(buf, max_len, col.charset, 0)
        }
        MYSQL_TYPE_STRING => {
            let pad = if matches!(col.charset, Some(Charset::Binary) | None) {
                col.fixed_len
            } else {
                0
            };
            raw::read_short_string(buf, col.fixed_len, col.charset, pad)
        }
        MYSQL_TYPE_DATETIME2 => raw::read_datetime2(buf, col.fsp),
        MYSQL_TYPE_TIMESTAMP2 => raw::read_timestamp2(buf, col.fsp),
        MYSQL_TYPE_TIME2 => raw::read_time2(buf, col.fsp),
        MYSQL_TYPE_NEWDECIMAL => {
            let [precision, scale] = meta2(col)?;
            raw::read_decimal(buf, precision, scale)
        }
        _ => {
            let ctx = (col.col_type, col.meta.as_slice(), col.unsigned, false);
            let value: BinlogValue<'_> = buf
                .parse(ctx)
                .map_err(|e| format!("cannot decode {:?}: {e}", col.col_type))?;
            convert(col, value)
        }
    }
}

/// The two metadata bytes of a VARCHAR (max length) or DECIMAL (precision, scale).
fn meta2(col: &ColumnInfo) -> Result<[u8; 2], String> {
    match col.meta.as_slice() {
        [a, b, ..] => Ok([*a, *b]),
        _ => Err(format!(
            "{:?} column without its table-map metadata",
            col.col_type
        )),
    }
}

/// Makes a mysql_common value exact for its column: the types decode_value leaves to
/// mysql_common (FLOAT, DOUBLE, YEAR, BIT, DATE, old-format temporals, ENUM, SET,
/// GEOMETRY, BLOB/TEXT, JSON).
pub fn convert(col: &ColumnInfo, raw: BinlogValue<'_>) -> Result<Value, String> {
    use ColumnType::*;
    let v = match raw {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let json = serde_json::Value::try_from(j).map_err(|e| format!("binary JSON: {e}"))?;
            let raw = RawValue::from_string(json.to_string()).map_err(|e| e.to_string())?;
            return Ok(Value::Json(raw));
        }
        BinlogValue::JsonDiff(_) => {
            return Err(
                "partial JSON update: set binlog_row_value_options = '' on the server".into(),
            )
        }
    };
    Ok(match (col.col_type, v) {
        (_, MyValue::NULL) => Value::Null,
        (MYSQL_TYPE_FLOAT, MyValue::Float(f)) => Value::Float(f),
        (MYSQL_TYPE_DOUBLE, MyValue::Double(d)) => Value::Double(d),
        (MYSQL_TYPE_YEAR, MyValue::Bytes(b)) => {
            // mysql_common reports 1900 + stored byte; byte 0 is the year 0000.
            let y: i64 = ascii(b)?.parse().map_err(|e| format!("YEAR: {e}"))?;
            Value::Int(if y == 1900 { 0 } else { y })
        }
        (MYSQL_TYPE_BIT, MyValue::Bytes(b)) => raw::bit_value(&b)?,
        (MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE, MyValue::Date(y, m, d, ..)) => Value::Date {
            year: y,
            month: m,
            day: d,
        },
        (MYSQL_TYPE_DATETIME, v @ MyValue::Date(..)) => {
            raw::datetime_from_mysql(&v, col.fsp, false).expect("matched a date")
        }
        (MYSQL_TYPE_TIMESTAMP, MyValue::Int(sec)) => raw::timestamp_value(sec, 0, 0),
        (MYSQL_TYPE_TIME, v @ MyValue::Time(..)) => {
            raw::time_from_mysql(&v, col.fsp).expect("matched a time")
        }
        (MYSQL_TYPE_ENUM, MyValue::Int(idx)) => {
            // Index 0 is the empty string MySQL stores for invalid values.
            if idx == 0 {
                Value::String(String::new())
            } else {
                Value::String(col.labels.get(idx as usize - 1).cloned().ok_or_else(|| {
                    format!("ENUM index {idx} outside its {} labels", col.labels.len())
                })?)
            }
        }
        (MYSQL_TYPE_SET, MyValue::Bytes(b)) => {
            if col.labels.len() > 64 {
                return Err(format!(
                    "SET with {} members (the server allows 64)",
                    col.labels.len()
                ));
            }
            let bits = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
            let mut labels = Vec::new();
            for (i, label) in col.labels.iter().enumerate() {
                if bits & (1u64 << i) != 0 {
                    labels.push(Value::String(label.clone()));
                }
            }
            Value::Array(labels)
        }
        (MYSQL_TYPE_GEOMETRY, MyValue::Bytes(b)) => raw::geometry_value(&b)?,
        (MYSQL_TYPE_BLOB, MyValue::Bytes(b)) => match col.charset {
            Some(Charset::Binary) | None => Value::Bytes(b),
            Some(cs) if col.json => {
                let s = match text(cs, b)? {
                    Value::String(s) => s,
                    _ => unreachable!("text() returns strings"),
                };
                Value::Json(
                    RawValue::from_string(s)
                        .map_err(|e| format!("JSON column holds invalid JSON: {e}"))?,
                )
            }
            Some(cs) => text(cs, b)?,
        },
        (t, v) => {
            return Err(format!(
                "unsupported value {} for column type {t:?}",
                crate::privacy::value(&format!("{v:?}"))
            ))
        }
    })
}

fn ascii(b: Vec<u8>) -> Result<String, String> {
    String::from_utf8(b).map_err(|_| "non-ASCII numeric text".to_string())
}

fn text(cs: Charset, b: Vec<u8>) -> Result<Value, String> {
    cs.decode(b).map(Value::String).map_err(|b| {
        format!(
            "{} bytes that are not valid in the column's character set",
            b.len()
        )
    })
}
