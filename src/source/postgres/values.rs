//! PostgreSQL values in their text output format (what pgoutput sends) -> exact event
//! values. The replication session pins DateStyle=ISO, TimeZone=UTC and
//! IntervalStyle=iso_8601, so dates, timestamps and intervals arrive in ISO forms;
//! timestamptz values with another offset are still converted to UTC here.

use serde_json::value::RawValue;

use crate::privacy::value;

use crate::event::Value;
use crate::temporal::{civil_from_days, epoch_secs};

/// How a column's text is decoded, from its type oid (and, for enums, domains and
/// arrays, from the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int,
    Float4,
    Float8,
    /// numeric: digits as a string, `NaN` and `Infinity` included.
    Numeric,
    /// text-like types kept as their text: text, varchar, char, name, uuid, date, time,
    /// timetz, interval, inet, cidr, macaddr, enums.
    Text,
    Bytea,
    /// `YYYY-MM-DD HH:MM:SS[.f]` -> `YYYY-MM-DDTHH:MM:SS[.f]`.
    Timestamp,
    /// -> ISO-8601 in UTC with `Z`.
    TimestampTz,
    Json,
    /// One-dimensional array of the element type.
    Array(Box<PgType>),
    /// A type tributary does not know: passed as its text (the source warns once per
    /// column).
    Unknown(u32),
}

/// Built-in type oids (pg_type.dat). Enums and domains are resolved through the
/// catalog by the source; everything else unknown is `Unknown`.
pub fn builtin(oid: u32) -> PgType {
    use PgType::*;
    match oid {
        16 => Bool,
        20 | 21 | 23 | 26 => Int,
        700 => Float4,
        701 => Float8,
        1700 => Numeric,
        25 | 1042 | 1043 | 19 | 18 | 2950 | 1082 | 1083 | 1266 | 1186 | 869 | 650 | 829 | 774 => {
            Text
        }
        17 => Bytea,
        1114 => Timestamp,
        1184 => TimestampTz,
        114 | 3802 => Json,
        1000 => Array(Box::new(Bool)),
        1005 | 1007 | 1016 | 1028 => Array(Box::new(Int)),
        1021 => Array(Box::new(Float4)),
        1022 => Array(Box::new(Float8)),
        1231 => Array(Box::new(Numeric)),
        1009 | 1014 | 1015 | 1003 | 2951 | 1182 | 1183 | 1270 | 1187 | 1041 | 651 | 1040 => {
            Array(Box::new(Text))
        }
        1001 => Array(Box::new(Bytea)),
        1115 => Array(Box::new(Timestamp)),
        1185 => Array(Box::new(TimestampTz)),
        199 | 3807 => Array(Box::new(Json)),
        other => Unknown(other),
    }
}

/// Decodes one value's text. Errors say what was expected; the caller adds table,
/// column and LSN.
pub fn decode_text(ty: &PgType, text: &[u8]) -> Result<Value, String> {
    let s = std::str::from_utf8(text).map_err(|_| "value is not UTF-8".to_string())?;
    Ok(match ty {
        PgType::Bool => match s {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(format!("{} is not a boolean", value(s))),
        },
        PgType::Int => Value::Int(
            s.parse()
                .map_err(|_| format!("{} is not an integer", value(s)))?,
        ),
        PgType::Float4 => match special_float(s) {
            Some(f) => Value::Float(f as f32),
            None => Value::Float(
                s.parse()
                    .map_err(|_| format!("{} is not a float4", value(s)))?,
            ),
        },
        PgType::Float8 => match special_float(s) {
            Some(f) => Value::Double(f),
            None => Value::Double(
                s.parse()
                    .map_err(|_| format!("{} is not a float8", value(s)))?,
            ),
        },
        PgType::Numeric => {
            let ok = matches!(s, "NaN" | "Infinity" | "-Infinity")
                || (!s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.'));
            if !ok {
                return Err(format!("{} is not a numeric", value(s)));
            }
            Value::Decimal(s.to_string())
        }
        PgType::Text | PgType::Unknown(_) => Value::String(s.to_string()),
        PgType::Bytea => Value::Bytes(bytea(s)?),
        PgType::Timestamp => Value::String(timestamp(s)?),
        PgType::TimestampTz => Value::String(timestamptz(s)?),
        PgType::Json => Value::Json(
            RawValue::from_string(s.to_string()).map_err(|e| format!("invalid JSON: {e}"))?,
        ),
        PgType::Array(elem) => {
            let mut items = Vec::new();
            for item in parse_array(s)? {
                items.push(match item {
                    None => Value::Null,
                    Some(t) => decode_text(elem, t.as_bytes())?,
                });
            }
            Value::Array(items)
        }
    })
}

fn special_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// bytea's hex output: `\x0102ff`.
fn bytea(s: &str) -> Result<Vec<u8>, String> {
    let hex = s
        .strip_prefix("\\x")
        .ok_or("bytea not in hex format (set bytea_output = hex)")?;
    if hex.len() % 2 != 0 {
        return Err("bytea hex of odd length".into());
    }
    // By bytes: a multi-byte character must be an error, not a cut inside it.
    let digit = |b: u8| (b as char).to_digit(16);
    hex.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
            _ => Err(format!("bad bytea hex at {}", i * 2)),
        })
        .collect()
}

/// `2024-02-29 12:34:56.78` -> `2024-02-29T12:34:56.78`; `infinity` stays as is.
fn timestamp(s: &str) -> Result<String, String> {
    if s == "infinity" || s == "-infinity" || s.ends_with(" BC") {
        return Ok(s.to_string());
    }
    let (d, t) = s
        .split_once(' ')
        .ok_or_else(|| format!("{} is not a timestamp", value(s)))?;
    // Pushed, not `format!`: every timestamp of every change comes through here, and the
    // formatting machinery with its reallocations was 5% of the stream's CPU (perf).
    let mut out = String::with_capacity(s.len());
    out.push_str(d);
    out.push('T');
    out.push_str(t);
    Ok(out)
}

/// `n` as two digits (0..=99), zero-padded.
fn push2(out: &mut String, n: i64) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// `2024-02-29 12:34:56.78+05:30` -> `2024-02-29T07:04:56.78Z`.
fn timestamptz(s: &str) -> Result<String, String> {
    if s == "infinity" || s == "-infinity" || s.ends_with(" BC") {
        return Ok(s.to_string());
    }
    let bad = || format!("{} is not a timestamptz", value(s));
    let (date, rest) = s.split_once(' ').ok_or_else(bad)?;
    let sign_at = rest.rfind(['+', '-']).ok_or_else(bad)?;
    let (time, offset) = rest.split_at(sign_at);
    let (clock, fraction) = match time.split_once('.') {
        Some((c, f)) => (c, Some(f)),
        None => (time, None),
    };
    let num =
        |v: Option<&str>| -> Result<i64, String> { v.ok_or_else(bad)?.parse().map_err(|_| bad()) };
    let mut dp = date.splitn(3, '-');
    let (y, mo, d) = (num(dp.next())?, num(dp.next())?, num(dp.next())?);
    let mut tp = clock.splitn(3, ':');
    let (h, mi, sec) = (num(tp.next())?, num(tp.next())?, num(tp.next())?);
    let neg = offset.starts_with('-');
    let mut op = offset[1..].splitn(3, ':');
    let off = num(op.next())? * 3600
        + op.next()
            .map(|m| m.parse::<i64>().map_err(|_| bad()))
            .transpose()?
            .unwrap_or(0)
            * 60
        + op.next()
            .map(|x| x.parse::<i64>().map_err(|_| bad()))
            .transpose()?
            .unwrap_or(0);
    let secs = epoch_secs(y, mo as u32, d as u32, h, mi, sec) - if neg { -off } else { off };
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut out = String::with_capacity(s.len() + 2);
    if (0..=9999).contains(&y) {
        push2(&mut out, y / 100);
        push2(&mut out, y % 100);
    } else {
        out.push_str(&format!("{y:04}"));
    }
    for (sep, n) in [
        ('-', mo as i64),
        ('-', d as i64),
        ('T', rem / 3600),
        (':', rem % 3600 / 60),
        (':', rem % 60),
    ] {
        out.push(sep);
        push2(&mut out, n);
    }
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    out.push('Z');
    Ok(out)
}

/// A one-dimensional array literal: `{1,NULL,"a,b","q\"uote"}`. None for NULL items.
fn parse_array(s: &str) -> Result<Vec<Option<String>>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or_else(|| {
            format!(
                "{} is not an array literal (arrays with bounds are not supported)",
                value(s)
            )
        })?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        match chars.peek() {
            Some('{') => return Err("multi-dimensional arrays are not supported".into()),
            Some('"') => {
                chars.next();
                let mut item = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => item.push(chars.next().ok_or("array ends inside an escape")?),
                        Some('"') => break,
                        Some(c) => item.push(c),
                        None => return Err("array ends inside a quoted item".into()),
                    }
                }
                out.push(Some(item));
            }
            _ => {
                let mut item = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    item.push(c);
                    chars.next();
                }
                out.push(if item == "NULL" { None } else { Some(item) });
            }
        }
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {} in array", value(&c.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(ty: PgType, s: &str) -> String {
        decode_text(&ty, s.as_bytes()).unwrap().to_json()
    }

    #[test]
    fn scalars() {
        assert_eq!(
            j(PgType::Int, "-9223372036854775808"),
            "-9223372036854775808"
        );
        assert_eq!(j(PgType::Bool, "t"), "true");
        assert_eq!(j(PgType::Float4, "3.14"), "3.14");
        assert_eq!(j(PgType::Float8, "-Infinity"), "\"-Infinity\"");
        assert_eq!(j(PgType::Float8, "NaN"), "\"NaN\"");
        assert_eq!(j(PgType::Numeric, "-12.50"), "\"-12.50\"");
        assert_eq!(j(PgType::Numeric, "Infinity"), "\"Infinity\"");
        assert_eq!(j(PgType::Bytea, "\\x00ff10"), "\"AP8Q\"");
        assert_eq!(j(PgType::Json, "{\"a\": [1, 2.50]}"), "{\"a\": [1, 2.50]}");
        assert!(decode_text(&PgType::Int, b"1.5").is_err());
        assert!(decode_text(&PgType::Bytea, b"abc").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            j(PgType::Timestamp, "2024-02-29 12:34:56.78"),
            "\"2024-02-29T12:34:56.78\""
        );
        assert_eq!(
            j(PgType::TimestampTz, "2024-02-29 12:34:56.789+00"),
            "\"2024-02-29T12:34:56.789Z\""
        );
        assert_eq!(
            j(PgType::TimestampTz, "2024-03-01 01:00:00+05:30"),
            "\"2024-02-29T19:30:00Z\""
        );
        assert_eq!(
            j(PgType::TimestampTz, "1999-12-31 20:00:00-08"),
            "\"2000-01-01T04:00:00Z\""
        );
        assert_eq!(j(PgType::TimestampTz, "infinity"), "\"infinity\"");
        // Years beyond four digits, and one that the offset moves to year 0.
        assert_eq!(
            j(PgType::TimestampTz, "12345-06-07 08:09:10.5+00"),
            "\"12345-06-07T08:09:10.5Z\""
        );
        assert_eq!(
            j(PgType::TimestampTz, "0001-01-01 00:30:00+01"),
            "\"0000-12-31T23:30:00Z\""
        );
        assert_eq!(
            j(PgType::Timestamp, "0099-01-02 03:04:05"),
            "\"0099-01-02T03:04:05\""
        );
    }

    #[test]
    fn arrays() {
        let t = PgType::Array(Box::new(PgType::Text));
        assert_eq!(
            j(t.clone(), r#"{a,NULL,"b,c","q\"uote","NULL",""}"#),
            r#"["a",null,"b,c","q\"uote","NULL",""]"#
        );
        assert_eq!(
            j(PgType::Array(Box::new(PgType::Int)), "{1,2,-3}"),
            "[1,2,-3]"
        );
        assert_eq!(j(t.clone(), "{}"), "[]");
        assert!(decode_text(&PgType::Array(Box::new(PgType::Int)), b"{{1,2},{3,4}}").is_err());
        assert_eq!(builtin(1007), PgType::Array(Box::new(PgType::Int)));
        assert_eq!(builtin(99_999), PgType::Unknown(99_999));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testkit::fuzz_cases(3000)))]

        /// Any text for any type the stream decodes: an error or a value, never a panic.
        #[test]
        fn arbitrary_text_never_panics(oid in proptest::sample::select(vec![16u32, 17, 20, 21, 23, 25, 700, 701, 1700, 1082, 1083, 1114, 1184, 1186, 2950, 114, 3802, 1007, 1009, 1016, 869, 0]), text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)) {
            let _ = decode_text(&builtin(oid), &text);
        }

        /// Text shaped like the server's output, bent.
        #[test]
        fn near_misses_never_panic(oid in proptest::sample::select(vec![17u32, 1700, 1082, 1114, 1184, 1186, 1007, 1009]), text in "[-+0-9a-fA-F\\\\x{}\", .:TZé]{0,40}") {
            let _ = decode_text(&builtin(oid), text.as_bytes());
        }
    }

    #[test]
    fn bytea_with_a_multibyte_character_is_an_error() {
        // Four bytes, even, with a character across the first pair's boundary.
        assert!(decode_text(&builtin(17), "\\x0é1".as_bytes()).is_err());
        assert!(decode_text(&builtin(17), "\\xé".as_bytes()).is_err());
    }
}
