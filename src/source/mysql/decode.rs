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
        if col.col_type == ColumnType::MYSQL_TYPE_TIME2 {
            row.push(read_time2(buf, col.fsp).map_err(|m| err(&col.name, m))?);
            continue;
        }
        if col.col_type == ColumnType::MYSQL_TYPE_TIMESTAMP2 {
            row.push(read_timestamp2(buf, col.fsp).map_err(|m| err(&col.name, m))?);
            continue;
        }
        if col.col_type == ColumnType::MYSQL_TYPE_INT24 {
            row.push(read_int24(buf, col.unsigned).map_err(|m| err(&col.name, m))?);
            continue;
        }
        let ctx = (col.col_type, col.meta.as_slice(), col.unsigned, false);
        let raw: BinlogValue<'_> = buf
            .parse(ctx)
            .map_err(|e| err(&col.name, format!("cannot decode {:?}: {e}", col.col_type)))?;
        row.push(convert(col, raw).map_err(|m| err(&col.name, m))?);
    }
    Ok(row)
}

/// Makes a mysql_common value exact for its column.
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
        (
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
            | MYSQL_TYPE_LONGLONG,
            MyValue::Int(i),
        ) => Value::Int(i),
        (MYSQL_TYPE_LONGLONG, MyValue::UInt(u)) => Value::UInt(u),
        (
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG,
            MyValue::UInt(u),
        ) => Value::Int(u as i64),
        (MYSQL_TYPE_FLOAT, MyValue::Float(f)) => Value::Float(f),
        (MYSQL_TYPE_DOUBLE, MyValue::Double(d)) => Value::Double(d),
        (MYSQL_TYPE_NEWDECIMAL, MyValue::Bytes(b)) => Value::Decimal(ascii(b)?),
        (MYSQL_TYPE_YEAR, MyValue::Bytes(b)) => {
            // mysql_common reports 1900 + stored byte; byte 0 is the year 0000.
            let y: i64 = ascii(b)?.parse().map_err(|e| format!("YEAR: {e}"))?;
            Value::Int(if y == 1900 { 0 } else { y })
        }
        (MYSQL_TYPE_BIT, MyValue::Bytes(b)) => {
            if b.len() > 8 {
                return Err(format!("BIT value of {} bytes", b.len()));
            }
            Value::UInt(b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64))
        }
        (MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE, MyValue::Date(y, m, d, ..)) => Value::Date {
            year: y,
            month: m,
            day: d,
        },
        (MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            Value::DateTime {
                year: y,
                month: mo,
                day: d,
                hour: h,
                minute: mi,
                second: s,
                micros: us,
                fsp: col.fsp,
                utc: false,
            }
        }
        (MYSQL_TYPE_TIMESTAMP2, MyValue::Bytes(b)) => {
            let text = ascii(b)?;
            let (sec, usec) = match text.split_once('.') {
                Some((s, u)) => (s.parse::<i64>(), u.parse::<u32>()),
                None => (text.parse::<i64>(), Ok(0)),
            };
            let (sec, usec) = (
                sec.map_err(|e| e.to_string())?,
                usec.map_err(|e| e.to_string())?,
            );
            timestamp_value(sec, usec, col.fsp)
        }
        (MYSQL_TYPE_TIMESTAMP, MyValue::Int(sec)) => timestamp_value(sec, 0, 0),
        (MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2, MyValue::Time(neg, days, h, m, s, us)) => {
            Value::Time {
                negative: neg,
                hours: days * 24 + h as u32,
                minute: m,
                second: s,
                micros: us,
                fsp: col.fsp,
            }
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
            let bits = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
            let mut labels = Vec::new();
            for (i, label) in col.labels.iter().enumerate() {
                if bits & (1 << i) != 0 {
                    labels.push(Value::String(label.clone()));
                }
            }
            Value::Array(labels)
        }
        (MYSQL_TYPE_GEOMETRY, MyValue::Bytes(b)) => {
            // Stored as a 4-byte SRID followed by WKB; events carry the WKB.
            if b.len() < 4 {
                return Err("GEOMETRY shorter than its SRID".into());
            }
            Value::Bytes(b[4..].to_vec())
        }
        (MYSQL_TYPE_STRING, MyValue::Bytes(mut b)) => match col.charset {
            Some(Charset::Binary) | None => {
                // The server strips trailing zero bytes of BINARY(n) in the binlog.
                if b.len() < col.fixed_len {
                    b.resize(col.fixed_len, 0);
                }
                Value::Bytes(b)
            }
            Some(cs) => text(cs, b)?,
        },
        (MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_BLOB, MyValue::Bytes(b)) => {
            match col.charset {
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
            }
        }
        (t, v) => return Err(format!("unsupported value {v:?} for column type {t:?}")),
    })
}

/// TIMESTAMP(fsp): seconds since the epoch (4 bytes, big endian) and the fraction in
/// 1-3 bytes, as the server's my_timestamp_from_binary reads it. Decoded here to skip
/// mysql_common's round trip through a formatted string on the hot path.
pub fn read_timestamp2(buf: &mut ParseBuf<'_>, fsp: u8) -> Result<Value, String> {
    let frac_len = (fsp as usize).div_ceil(2);
    let b = buf
        .checked_eat(4 + frac_len)
        .ok_or("row image ends inside a TIMESTAMP")?;
    let sec = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64;
    let frac = b[4..].iter().fold(0u32, |acc, x| (acc << 8) | *x as u32);
    let micros = match frac_len {
        1 => frac * 10_000,
        2 => frac * 100,
        _ => frac,
    };
    Ok(timestamp_value(sec, micros, fsp))
}

/// MEDIUMINT, decoded here: mysql_common's signed 24-bit read does not sign-extend
/// (-8388608 comes back as 8388608).
pub fn read_int24(buf: &mut ParseBuf<'_>, unsigned: bool) -> Result<Value, String> {
    let b = buf
        .checked_eat(3)
        .ok_or("row image ends inside a MEDIUMINT")?;
    let v = b[0] as i64 | (b[1] as i64) << 8 | (b[2] as i64) << 16;
    Ok(Value::Int(if !unsigned && v & 0x80_0000 != 0 {
        v - 0x100_0000
    } else {
        v
    }))
}

/// TIME(fsp) in the binlog's packed form, decoded here rather than by mysql_common:
/// its TIME(1)/TIME(2) path subtracts from an unsigned fraction, so negative values
/// with a fraction overflow (a panic in debug builds, a wrong time in release builds).
/// Follows the server's my_time_packed_from_binary with signed arithmetic.
pub fn read_time2(buf: &mut ParseBuf<'_>, fsp: u8) -> Result<Value, String> {
    const TIMEF_INT_OFS: i64 = 0x80_0000;
    const TIMEF_OFS: i64 = 0x8000_0000_0000;
    let mut take = |n: usize| -> Result<i64, String> {
        let b = buf
            .checked_eat(n)
            .ok_or("row image ends inside a TIME value")?;
        Ok(b.iter().fold(0i64, |acc, x| (acc << 8) | *x as i64))
    };
    let packed = match fsp {
        1 | 2 => {
            let (mut int, mut frac) = (take(3)? - TIMEF_INT_OFS, take(1)?);
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x100;
            }
            int * (1 << 24) + frac * 10_000
        }
        3 | 4 => {
            let (mut int, mut frac) = (take(3)? - TIMEF_INT_OFS, take(2)?);
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x1_0000;
            }
            int * (1 << 24) + frac * 100
        }
        5 | 6 => take(6)? - TIMEF_OFS,
        _ => (take(3)? - TIMEF_INT_OFS) * (1 << 24),
    };
    let neg = packed < 0;
    let abs = packed.unsigned_abs();
    let hms = abs >> 24;
    let micros = (abs % (1 << 24)) as u32;
    let (h, m, s) = (
        (hms >> 12) % (1 << 10),
        (hms >> 6) % (1 << 6),
        hms % (1 << 6),
    );
    Ok(Value::Time {
        negative: neg,
        hours: h as u32,
        minute: m as u8,
        second: s as u8,
        micros,
        fsp,
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

/// A TIMESTAMP (seconds since the epoch, UTC). The zero timestamp keeps its zero
/// digits: `0000-00-00T00:00:00Z`.
pub fn timestamp_value(sec: i64, micros: u32, fsp: u8) -> Value {
    let (year, month, day, rem) = if sec == 0 && micros == 0 {
        (0, 0, 0, 0)
    } else {
        let (y, m, d) = civil_from_days(sec.div_euclid(86_400));
        (y as u16, m as u8, d as u8, sec.rem_euclid(86_400) as u32)
    };
    Value::DateTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem % 3600 / 60) as u8,
        second: (rem % 60) as u8,
        micros,
        fsp,
        utc: true,
    }
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (H. Hinnant).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(sec: i64, micros: u32, fsp: u8) -> String {
        timestamp_value(sec, micros, fsp)
            .to_json()
            .trim_matches('"')
            .to_string()
    }

    #[test]
    fn timestamps_are_utc_iso() {
        assert_eq!(ts(0, 0, 0), "0000-00-00T00:00:00Z");
        assert_eq!(ts(1, 0, 0), "1970-01-01T00:00:01Z");
        assert_eq!(ts(2147483647, 999999, 6), "2038-01-19T03:14:07.999999Z");
        assert_eq!(ts(951782400, 120000, 2), "2000-02-29T00:00:00.12Z");
    }

    /// Packs a time the way the server's my_time_packed_to_binary does.
    fn pack_time(neg: bool, h: i64, m: i64, s: i64, micros: i64, fsp: u8) -> Vec<u8> {
        let int = (h << 12) | (m << 6) | s;
        let mut packed = (int << 24) + micros;
        if neg {
            packed = -packed;
        }
        let be = |v: i64, n: usize| {
            (0..n)
                .rev()
                .map(|i| (v >> (8 * i)) as u8)
                .collect::<Vec<u8>>()
        };
        // The server's my_time_packed_to_binary: `>>` floors, `%` and `/` truncate,
        // and the fraction is stored through a wrapping cast.
        let int_part = packed >> 24;
        let frac = packed % (1 << 24);
        let mut out = be(int_part + 0x80_0000, 3);
        match fsp {
            1 | 2 => out.push((frac / 10_000) as u8),
            3 | 4 => out.extend(be((frac / 100) as u16 as i64, 2)),
            5 | 6 => return be(packed + 0x8000_0000_0000, 6),
            _ => {}
        }
        out
    }

    #[test]
    fn time2_all_precisions_and_signs() {
        let cases = [
            (false, 838, 59, 59, 0, 0, "838:59:59"),
            (true, 838, 59, 59, 0, 0, "-838:59:59"),
            (true, 0, 0, 1, 500_000, 1, "-00:00:01.5"),
            (true, 838, 59, 59, 900_000, 1, "-838:59:59.9"),
            (false, 12, 34, 56, 780_000, 2, "12:34:56.78"),
            (true, 1, 2, 3, 40_000, 2, "-01:02:03.04"),
            (true, 0, 0, 0, 1_000, 3, "-00:00:00.001"),
            (true, 100, 0, 0, 123_400, 4, "-100:00:00.1234"),
            (true, 1, 2, 3, 40_506, 6, "-01:02:03.040506"),
            (false, 0, 0, 0, 1, 6, "00:00:00.000001"),
        ];
        for (neg, h, m, s, us, fsp, want) in cases {
            let bytes = pack_time(neg, h, m, s, us, fsp);
            let mut buf = ParseBuf(&bytes);
            assert_eq!(
                read_time2(&mut buf, fsp).unwrap().to_json(),
                format!("\"{want}\""),
                "fsp {fsp}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn timestamp2_fractions() {
        let read = |b: &[u8], fsp| {
            read_timestamp2(&mut ParseBuf(b), fsp)
                .unwrap()
                .to_json()
                .trim_matches('"')
                .to_string()
        };
        assert_eq!(read(&[0x7f, 0xff, 0xff, 0xff], 0), "2038-01-19T03:14:07Z");
        assert_eq!(read(&[0, 0, 0, 1, 12], 2), "1970-01-01T00:00:01.12Z");
        assert_eq!(
            read(&[0, 0, 0, 1, 0x27, 0x06], 3),
            "1970-01-01T00:00:01.999Z"
        );
        assert_eq!(
            read(&[0, 0, 0, 1, 0x0f, 0x42, 0x3f], 6),
            "1970-01-01T00:00:01.999999Z"
        );
        assert_eq!(
            read(&[0, 0, 0, 0, 0, 0, 0], 6),
            "0000-00-00T00:00:00.000000Z"
        );
    }

    #[test]
    fn int24_signs() {
        let read = |b: [u8; 3], u| read_int24(&mut ParseBuf(&b), u).unwrap();
        assert_eq!(read([0, 0, 0x80], false), Value::Int(-8_388_608));
        assert_eq!(read([0xff, 0xff, 0x7f], false), Value::Int(8_388_607));
        assert_eq!(read([0xff, 0xff, 0xff], false), Value::Int(-1));
        assert_eq!(read([0xff, 0xff, 0xff], true), Value::Int(16_777_215));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11016), (2000, 2, 29));
    }
}
