//! Values decoded straight from the row image, for the column types that dominate real
//! tables (integers, CHAR/VARCHAR, DATETIME, DECIMAL) and for the types mysql_common
//! gets wrong (MEDIUMINT, negative TIME with a fraction).
//!
//! The generic path (mysql_common's `BinlogValue`) builds an intermediate value per
//! column; these read the bytes once into the event model. The unit tests check every
//! decoder here against mysql_common (or the server's own packing) on the same bytes,
//! and tests/mariadb_types.rs checks them against a real server.

use mysql_common::io::ParseBuf;

use super::charset::Charset;
use crate::event::Value;

fn take<'a>(buf: &mut ParseBuf<'a>, n: usize, what: &str) -> Result<&'a [u8], String> {
    buf.checked_eat(n)
        .ok_or_else(|| format!("row image ends inside a {what}"))
}

fn be(bytes: &[u8]) -> i64 {
    bytes.iter().fold(0i64, |acc, x| (acc << 8) | *x as i64)
}

/// TINYINT, SMALLINT, INT, BIGINT: `width` little-endian bytes.
pub fn read_int(buf: &mut ParseBuf<'_>, width: usize, unsigned: bool) -> Result<Value, String> {
    let b = take(buf, width, "integer")?;
    let mut raw = [0u8; 8];
    raw[..width].copy_from_slice(b);
    let u = u64::from_le_bytes(raw);
    if unsigned {
        return Ok(if width == 8 {
            Value::UInt(u)
        } else {
            Value::Int(u as i64)
        });
    }
    let shift = 64 - 8 * width as u32;
    Ok(Value::Int(((u << shift) as i64) >> shift))
}

/// MEDIUMINT: three little-endian bytes. (mysql_common does not sign-extend it:
/// -8388608 comes back as 8388608.)
pub fn read_int24(buf: &mut ParseBuf<'_>, unsigned: bool) -> Result<Value, String> {
    let b = take(buf, 3, "MEDIUMINT")?;
    let v = b[0] as i64 | (b[1] as i64) << 8 | (b[2] as i64) << 16;
    Ok(Value::Int(if !unsigned && v & 0x80_0000 != 0 {
        v - 0x100_0000
    } else {
        v
    }))
}

/// CHAR/VARCHAR/BINARY/VARBINARY: a 1-byte length when the column's byte length is
/// under 256, else 2 bytes; then the bytes. `pad_to` zero-pads BINARY(n), whose
/// trailing zero bytes the server strips in the binlog.
pub fn read_short_string(
    buf: &mut ParseBuf<'_>,
    max_len: usize,
    charset: Option<Charset>,
    pad_to: usize,
) -> Result<Value, String> {
    let len = if max_len < 256 {
        take(buf, 1, "string length")?[0] as usize
    } else {
        let b = take(buf, 2, "string length")?;
        u16::from_le_bytes([b[0], b[1]]) as usize
    };
    let bytes = take(buf, len, "string")?;
    match charset {
        Some(Charset::Binary) | None => {
            let mut v = bytes.to_vec();
            if v.len() < pad_to {
                v.resize(pad_to, 0);
            }
            Ok(Value::Bytes(v))
        }
        Some(Charset::Utf8) => std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| format!("{len} bytes that are not valid UTF-8")),
        Some(cs) => cs
            .decode(bytes.to_vec())
            .map(Value::String)
            .map_err(|_| format!("{len} bytes that are not valid in the column's character set")),
    }
}

/// DATETIME(fsp): 5 big-endian bytes of packed date and time, then 0-3 bytes of
/// fraction (the server's my_datetime_packed_from_binary).
pub fn read_datetime2(buf: &mut ParseBuf<'_>, fsp: u8) -> Result<Value, String> {
    const DATETIMEF_INT_OFS: i64 = 0x80_0000_0000;
    let int = be(take(buf, 5, "DATETIME")?) - DATETIMEF_INT_OFS;
    let micros = match fsp {
        1 | 2 => take(buf, 1, "DATETIME")?[0] as i8 as i64 * 10_000,
        3 | 4 => {
            let b = take(buf, 2, "DATETIME")?;
            i16::from_be_bytes([b[0], b[1]]) as i64 * 100
        }
        5 | 6 => {
            let b = take(buf, 3, "DATETIME")?;
            (be(b) << 40) >> 40
        }
        _ => 0,
    };
    let int = int.unsigned_abs();
    let ymd = int >> 17;
    let ym = ymd >> 5;
    let hms = int % (1 << 17);
    Ok(Value::DateTime {
        year: (ym / 13) as u16,
        month: (ym % 13) as u8,
        day: (ymd % 32) as u8,
        hour: (hms >> 12) as u8,
        minute: ((hms >> 6) % 64) as u8,
        second: (hms % 64) as u8,
        micros: micros.unsigned_abs() as u32,
        fsp,
        utc: false,
    })
}

/// A DATETIME (or, in a UTC session, a TIMESTAMP: `utc`) as mysql_common reports it,
/// in the event model.
pub fn datetime_from_mysql(v: &mysql_common::value::Value, fsp: u8, utc: bool) -> Option<Value> {
    let mysql_common::value::Value::Date(year, month, day, hour, minute, second, micros) = *v
    else {
        return None;
    };
    Some(Value::DateTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        micros,
        fsp,
        utc,
    })
}

/// A TIME as mysql_common reports it (days and hours apart), in the event model.
pub fn time_from_mysql(v: &mysql_common::value::Value, fsp: u8) -> Option<Value> {
    let mysql_common::value::Value::Time(negative, days, h, minute, second, micros) = *v else {
        return None;
    };
    Some(Value::Time {
        negative,
        hours: days * 24 + h as u32,
        minute,
        second,
        micros,
        fsp,
    })
}

/// A BIT value's bytes (big endian) as a number.
pub fn bit_value(b: &[u8]) -> Result<Value, String> {
    if b.len() > 8 {
        return Err(format!("BIT value of {} bytes", b.len()));
    }
    Ok(Value::UInt(
        b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64),
    ))
}

/// A stored GEOMETRY (4-byte SRID, then WKB): events carry the WKB.
pub fn geometry_value(b: &[u8]) -> Result<Value, String> {
    if b.len() < 4 {
        return Err("GEOMETRY shorter than its SRID".into());
    }
    Ok(Value::Bytes(b[4..].to_vec()))
}

/// TIMESTAMP(fsp): seconds since the epoch (4 bytes, big endian) and the fraction in
/// 1-3 bytes, as the server's my_timestamp_from_binary reads it.
pub fn read_timestamp2(buf: &mut ParseBuf<'_>, fsp: u8) -> Result<Value, String> {
    let frac_len = (fsp as usize).div_ceil(2);
    let b = take(buf, 4 + frac_len, "TIMESTAMP")?;
    let sec = be(&b[..4]);
    let frac = be(&b[4..]) as u32;
    let micros = match frac_len {
        1 => frac * 10_000,
        2 => frac * 100,
        _ => frac,
    };
    Ok(timestamp_value(sec, micros, fsp))
}

/// A TIMESTAMP (seconds since the epoch, UTC). The zero timestamp keeps its zero
/// digits: `0000-00-00T00:00:00Z`.
pub fn timestamp_value(sec: i64, micros: u32, fsp: u8) -> Value {
    let (year, month, day, rem) = if sec == 0 && micros == 0 {
        (0, 0, 0, 0)
    } else {
        let (y, m, d) = crate::temporal::civil_from_days(sec.div_euclid(86_400));
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

/// TIME(fsp) in the binlog's packed form. mysql_common's TIME(1)/TIME(2) path
/// subtracts from an unsigned fraction, so negative values with a fraction overflow
/// (a panic in debug builds, a wrong time in release builds). This follows the
/// server's my_time_packed_from_binary with signed arithmetic.
pub fn read_time2(buf: &mut ParseBuf<'_>, fsp: u8) -> Result<Value, String> {
    const TIMEF_INT_OFS: i64 = 0x80_0000;
    const TIMEF_OFS: i64 = 0x8000_0000_0000;
    let packed = match fsp {
        1 | 2 => {
            let b = take(buf, 4, "TIME")?;
            let (mut int, mut frac) = (be(&b[..3]) - TIMEF_INT_OFS, b[3] as i64);
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x100;
            }
            int * (1 << 24) + frac * 10_000
        }
        3 | 4 => {
            let b = take(buf, 5, "TIME")?;
            let (mut int, mut frac) = (be(&b[..3]) - TIMEF_INT_OFS, be(&b[3..]));
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x1_0000;
            }
            int * (1 << 24) + frac * 100
        }
        5 | 6 => be(take(buf, 6, "TIME")?) - TIMEF_OFS,
        _ => (be(take(buf, 3, "TIME")?) - TIMEF_INT_OFS) * (1 << 24),
    };
    let abs = packed.unsigned_abs();
    let hms = abs >> 24;
    Ok(Value::Time {
        negative: packed < 0,
        hours: ((hms >> 12) % (1 << 10)) as u32,
        minute: ((hms >> 6) % (1 << 6)) as u8,
        second: (hms % (1 << 6)) as u8,
        micros: (abs % (1 << 24)) as u32,
        fsp,
    })
}

/// Bytes holding 0..=9 decimal digits in the binary DECIMAL format.
const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// DECIMAL(precision, scale) in the server's binary format (decimal2bin): groups of nine
/// digits in 4 big-endian bytes, partial groups at both ends, the sign in the top bit
/// and negative numbers stored inverted. Emitted as the digits the server prints.
pub fn read_decimal(buf: &mut ParseBuf<'_>, precision: u8, scale: u8) -> Result<Value, String> {
    let (precision, scale) = (precision as usize, scale as usize);
    // 65 digits is the server's maximum (and 40 bytes hold them).
    if scale > precision || precision == 0 || precision > 65 {
        return Err(format!("DECIMAL({precision},{scale}) metadata is invalid"));
    }
    let intg = precision - scale;
    let (intg0, intg0x) = (intg / 9, intg % 9);
    let (frac0, frac0x) = (scale / 9, scale % 9);
    let size = intg0 * 4 + DIG2BYTES[intg0x] + frac0 * 4 + DIG2BYTES[frac0x];
    let raw = take(buf, size, "DECIMAL")?;
    let mut bytes = [0u8; 40];
    let bytes = &mut bytes[..size];
    bytes.copy_from_slice(raw);
    let negative = bytes[0] & 0x80 == 0;
    if negative {
        for b in bytes.iter_mut() {
            *b = !*b;
        }
    }
    bytes[0] ^= 0x80;

    let mut out = String::with_capacity(precision + 3);
    if negative {
        out.push('-');
    }
    let mut at = 0usize;
    let mut group = |len: usize| {
        let v = be(&bytes[at..at + len]) as u64;
        at += len;
        v
    };
    // Integer part: leading partial group, then full groups; no leading zeros.
    let mut int_digits = String::new();
    if intg0x > 0 {
        let v = group(DIG2BYTES[intg0x]);
        if v > 0 {
            int_digits.push_str(itoa::Buffer::new().format(v));
        }
    }
    for _ in 0..intg0 {
        let v = group(4);
        if int_digits.is_empty() {
            if v > 0 {
                int_digits.push_str(itoa::Buffer::new().format(v));
            }
        } else {
            push_digits(&mut int_digits, v, 9);
        }
    }
    if int_digits.is_empty() {
        out.push('0');
    } else {
        out.push_str(&int_digits);
    }
    if scale > 0 {
        out.push('.');
        for _ in 0..frac0 {
            let v = group(4);
            push_digits(&mut out, v, 9);
        }
        if frac0x > 0 {
            let v = group(DIG2BYTES[frac0x]);
            push_digits(&mut out, v, frac0x);
        }
    }
    Ok(Value::Decimal(out))
}

/// `v` zero-padded to `width` digits.
fn push_digits(out: &mut String, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    for _ in s.len()..width {
        out.push('0');
    }
    out.push_str(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::binlog::decimal::Decimal;

    /// The server's decimal2bin for a text already shaped to DECIMAL(p,s).
    fn encode_decimal(shaped: &str, p: usize, s: usize) -> Vec<u8> {
        let neg = shaped.starts_with('-');
        let digits: Vec<u8> = shaped
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        let (int, frac) = digits.split_at(p - s);
        let num = |ds: &[u8]| ds.iter().fold(0u64, |a, d| a * 10 + *d as u64);
        let mut out = Vec::new();
        let mut put = |v: u64, len: usize| out.extend_from_slice(&v.to_be_bytes()[8 - len..]);
        let lead = int.len() % 9;
        if lead > 0 {
            put(num(&int[..lead]), DIG2BYTES[lead]);
        }
        for g in int[lead..].chunks(9) {
            put(num(g), 4);
        }
        for g in frac.chunks(9) {
            put(num(g), if g.len() == 9 { 4 } else { DIG2BYTES[g.len()] });
        }
        out[0] ^= 0x80;
        if neg {
            for b in out.iter_mut() {
                *b = !*b;
            }
        }
        out
    }

    /// Encodes `text` as the server would for DECIMAL(p,s), decodes it with ours, and
    /// checks the text against mysql_common's reader on the same bytes.
    fn dec(text: &str, p: u8, s: u8) -> String {
        // Zero-padded to the column's shape, mysql_common writes the column's layout.
        let (sign, digits) = text.strip_prefix('-').map_or(("", text), |d| ("-", d));
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = if p == s { "" } else { int };
        let shaped = format!(
            "{sign}{int:0>iw$}{dot}{frac:0<fw$}",
            iw = (p - s) as usize,
            dot = if s > 0 { "." } else { "" },
            fw = s as usize
        );
        let bytes = encode_decimal(&shaped, p as usize, s as usize);
        // mysql_common's reader is the oracle for the text of the same bytes.
        let oracle = Decimal::read_bin(&bytes[..], p as usize, s as usize, false)
            .unwrap()
            .to_string();
        let mut buf = ParseBuf(&bytes);
        let Value::Decimal(got) = read_decimal(&mut buf, p, s).unwrap() else {
            panic!("not a decimal")
        };
        assert!(buf.is_empty(), "{text}: bytes left over");
        assert_eq!(got, oracle, "{text} as DECIMAL({p},{s})");
        got
    }

    #[test]
    fn decimals_match_mysql_common() {
        assert_eq!(dec("-12.50", 10, 2), "-12.50");
        assert_eq!(dec("0.00", 10, 2), "0.00");
        assert_eq!(dec("-0.50", 10, 2), "-0.50");
        assert_eq!(dec("99999", 5, 0), "99999");
        assert_eq!(dec("0", 5, 0), "0");
        assert_eq!(dec("1000000000.000000001", 19, 9), "1000000000.000000001");
        let max = "99999999999999999999999999999999999.999999999999999999999999999999";
        assert_eq!(dec(max, 65, 30), max);
        assert_eq!(dec(&format!("-{max}"), 65, 30), format!("-{max}"));
        assert_eq!(
            dec("0.000000000000000000000000000001", 65, 30),
            "0.000000000000000000000000000001"
        );
        assert_eq!(dec("123456789012.5", 13, 1), "123456789012.5");
        // a spread of precisions and scales with pseudo-random digits
        let mut x = 0x2545F4914F6CDD1Du64;
        for p in 1..=65u8 {
            for s in [0, 1, 2, 4, 9, 10, 18, 30]
                .into_iter()
                .filter(|s| *s <= p && *s <= 30)
            {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let digits: String = (0..p)
                    .map(|i| char::from(b'0' + ((x >> (i % 60)) % 10) as u8))
                    .collect();
                let (int, frac) = digits.split_at((p - s) as usize);
                let int = int.trim_start_matches('0');
                let text = match (int.is_empty(), s) {
                    (true, 0) => "0".to_string(),
                    (true, _) => format!("0.{frac}"),
                    (false, 0) => int.to_string(),
                    (false, _) => format!("{int}.{frac}"),
                };
                let signed = if x & 1 == 1 { format!("-{text}") } else { text };
                dec(&signed, p, s);
            }
        }
    }

    #[test]
    fn integers_sign_extend() {
        let read = |b: &[u8], u| read_int(&mut ParseBuf(b), b.len(), u).unwrap();
        assert_eq!(read(&[0x80], false), Value::Int(-128));
        assert_eq!(read(&[0xff], true), Value::Int(255));
        assert_eq!(read(&[0x00, 0x80], false), Value::Int(-32768));
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0x7f], false),
            Value::Int(2147483647)
        );
        assert_eq!(read(&[0, 0, 0, 0x80], false), Value::Int(-2147483648));
        assert_eq!(read(&[0xff; 8], true), Value::UInt(u64::MAX));
        assert_eq!(
            read(&[0, 0, 0, 0, 0, 0, 0, 0x80], false),
            Value::Int(i64::MIN)
        );
        let read24 = |b: [u8; 3], u| read_int24(&mut ParseBuf(&b), u).unwrap();
        assert_eq!(read24([0, 0, 0x80], false), Value::Int(-8_388_608));
        assert_eq!(read24([0xff, 0xff, 0x7f], false), Value::Int(8_388_607));
        assert_eq!(read24([0xff, 0xff, 0xff], false), Value::Int(-1));
        assert_eq!(read24([0xff, 0xff, 0xff], true), Value::Int(16_777_215));
    }

    #[test]
    fn datetime2_matches_mysql_common() {
        use mysql_common::binlog::misc::{datetime_from_packed, my_datetime_packed_from_binary};
        // 2024-02-29 12:34:56.789 packed as the server does, at every precision.
        let ymd = ((2024 * 13 + 2) << 5) | 29;
        let hms = (12 << 12) | (34 << 6) | 56;
        let int = ((ymd << 17) | hms) + 0x80_0000_0000i64;
        for fsp in 0..=6u8 {
            let mut bytes: Vec<u8> = (0..5).rev().map(|i| (int >> (8 * i)) as u8).collect();
            match fsp {
                1 | 2 => bytes.push(78),
                3 | 4 => bytes.extend_from_slice(&7890i16.to_be_bytes()),
                5 | 6 => bytes.extend_from_slice(&789_000i32.to_be_bytes()[1..]),
                _ => {}
            }
            let oracle = datetime_from_packed(
                my_datetime_packed_from_binary(&bytes[..], fsp as u32).unwrap(),
            );
            let got = read_datetime2(&mut ParseBuf(&bytes), fsp).unwrap();
            let want = datetime_from_mysql(&oracle, fsp, false).expect("a date");
            assert_eq!(got, want, "fsp {fsp}");
        }
    }

    #[test]
    fn short_strings() {
        let v = read_short_string(
            &mut ParseBuf(&[3, b'a', b'b', b'c']),
            40,
            Some(Charset::Utf8),
            0,
        )
        .unwrap();
        assert_eq!(v, Value::String("abc".into()));
        let v = read_short_string(
            &mut ParseBuf(&[2, 0, 0xc3, 0xa9]),
            1200,
            Some(Charset::Utf8),
            0,
        )
        .unwrap();
        assert_eq!(v, Value::String("é".into()));
        let v = read_short_string(&mut ParseBuf(&[1, 7]), 4, Some(Charset::Binary), 4).unwrap();
        assert_eq!(v, Value::Bytes(vec![7, 0, 0, 0]));
        assert!(read_short_string(&mut ParseBuf(&[1, 0xff]), 4, Some(Charset::Utf8), 0).is_err());
        assert!(read_short_string(&mut ParseBuf(&[5, 1]), 4, Some(Charset::Utf8), 0).is_err());
    }

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
    fn civil_dates_are_shared() {
        assert_eq!(crate::temporal::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::temporal::civil_from_days(-1), (1969, 12, 31));
        assert_eq!(crate::temporal::civil_from_days(11016), (2000, 2, 29));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testkit::fuzz_cases(3000)))]

        /// Any DECIMAL metadata and bytes: digits or an error, never a panic (precision
        /// beyond 65 once overran a fixed buffer).
        #[test]
        fn decimals_from_any_metadata_and_bytes(precision in proptest::prelude::any::<u8>(), scale in proptest::prelude::any::<u8>(), data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)) {
            let mut buf = ParseBuf(&data);
            let _ = read_decimal(&mut buf, precision, scale);
        }

        /// The temporal and integer readers on any bytes.
        #[test]
        fn fixed_width_readers_take_any_bytes(fsp in 0u8..12, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
            let _ = read_datetime2(&mut ParseBuf(&data), fsp);
            let _ = read_timestamp2(&mut ParseBuf(&data), fsp);
            let _ = read_time2(&mut ParseBuf(&data), fsp);
            let _ = read_int24(&mut ParseBuf(&data), fsp % 2 == 0);
            let _ = bit_value(&data);
            let _ = geometry_value(&data);
        }
    }

    #[test]
    fn a_decimal_wider_than_the_server_allows_is_an_error() {
        let data = [0x80u8; 120];
        assert!(read_decimal(&mut ParseBuf(&data), 90, 2).is_err());
    }
}
