//! The document state's row encoding: binary, exact (every `Value` variant reads back
//! as itself) and quick to read. A document's build reads dozens of rows, so the
//! encoding decides its cost: the JSON form (`event::stored`) spent most of a build in
//! parsing.
//!
//! A row: its version (8 bytes), flags (live, render cached), the values when live,
//! and when cached the JSON object the row renders to with everything below it (see
//! `State`): `version u64 | flags u8 | [count u16, value...] | [len u32, json]`.

use serde_json::value::RawValue;

use crate::event::Value;

const LIVE: u8 = 1;
const CACHED: u8 = 2;

/// A row as the state holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub version: u64,
    /// The node's stored columns (`Node::stored`); None once deleted (a tombstone).
    pub values: Option<Vec<Value>>,
    /// The row's rendered object, with its embeds and nests (not kept for roots).
    pub render: Option<String>,
}

pub fn encode(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + row.render.as_ref().map_or(0, String::len));
    out.extend_from_slice(&row.version.to_le_bytes());
    let flags =
        if row.values.is_some() { LIVE } else { 0 } | if row.render.is_some() { CACHED } else { 0 };
    out.push(flags);
    if let Some(values) = &row.values {
        out.extend_from_slice(&(values.len() as u16).to_le_bytes());
        for v in values {
            value(&mut out, v);
        }
    }
    if let Some(r) = &row.render {
        bytes(&mut out, r.as_bytes());
    }
    out
}

pub fn decode(b: &[u8]) -> Result<Row, String> {
    let mut r = Reader { b, at: 0 };
    let version = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let flags = r.u8()?;
    let values = if flags & LIVE != 0 {
        let n = r.u16()? as usize;
        let mut vs = Vec::with_capacity(n);
        for _ in 0..n {
            vs.push(r.value()?);
        }
        Some(vs)
    } else {
        None
    };
    let render = if flags & CACHED != 0 {
        Some(r.string()?)
    } else {
        None
    };
    Ok(Row {
        version,
        values,
        render,
    })
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Absent => out.push(1),
        Value::Bool(b) => out.extend_from_slice(&[2, *b as u8]),
        Value::Int(i) => {
            out.push(3);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            out.push(4);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(5);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Double(d) => {
            out.push(6);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
        }
        Value::Decimal(s) => {
            out.push(7);
            bytes(out, s.as_bytes());
        }
        Value::String(s) => {
            out.push(8);
            bytes(out, s.as_bytes());
        }
        Value::Date { year, month, day } => {
            out.push(9);
            out.extend_from_slice(&year.to_le_bytes());
            out.extend_from_slice(&[*month, *day]);
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
            out.push(10);
            out.extend_from_slice(&year.to_le_bytes());
            out.extend_from_slice(&[*month, *day, *hour, *minute, *second]);
            out.extend_from_slice(&micros.to_le_bytes());
            out.extend_from_slice(&[*fsp, *utc as u8]);
        }
        Value::Time {
            negative,
            hours,
            minute,
            second,
            micros,
            fsp,
        } => {
            out.push(11);
            out.push(*negative as u8);
            out.extend_from_slice(&hours.to_le_bytes());
            out.extend_from_slice(&[*minute, *second]);
            out.extend_from_slice(&micros.to_le_bytes());
            out.push(*fsp);
        }
        Value::Bytes(b) => {
            out.push(12);
            bytes(out, b);
        }
        Value::Json(j) => {
            out.push(13);
            bytes(out, j.get().as_bytes());
        }
        Value::Array(items) => {
            out.push(14);
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for i in items {
                value(out, i);
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("a stored row ends early (at byte {})", self.at))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())
    }

    fn value(&mut self) -> Result<Value, String> {
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Absent,
            2 => Value::Bool(self.u8()? != 0),
            3 => Value::Int(self.u64()? as i64),
            4 => Value::UInt(self.u64()?),
            5 => Value::Float(f32::from_bits(self.u32()?)),
            6 => Value::Double(f64::from_bits(self.u64()?)),
            7 => Value::Decimal(self.string()?),
            8 => Value::String(self.string()?),
            9 => Value::Date {
                year: self.u16()?,
                month: self.u8()?,
                day: self.u8()?,
            },
            10 => Value::DateTime {
                year: self.u16()?,
                month: self.u8()?,
                day: self.u8()?,
                hour: self.u8()?,
                minute: self.u8()?,
                second: self.u8()?,
                micros: self.u32()?,
                fsp: self.u8()?,
                utc: self.u8()? != 0,
            },
            11 => Value::Time {
                negative: self.u8()? != 0,
                hours: self.u32()?,
                minute: self.u8()?,
                second: self.u8()?,
                micros: self.u32()?,
                fsp: self.u8()?,
            },
            12 => Value::Bytes(self.bytes()?.to_vec()),
            13 => Value::Json(RawValue::from_string(self.string()?).map_err(|e| e.to_string())?),
            14 => {
                let n = self.u32()? as usize;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.value()?);
                }
                Value::Array(items)
            }
            t => return Err(format!("a stored value of unknown type {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_reads_back_as_itself() {
        let values = vec![
            Value::Null,
            Value::Absent,
            Value::Bool(true),
            Value::Int(-5),
            Value::UInt(u64::MAX),
            Value::Float(f32::NAN),
            Value::Double(-0.0),
            Value::Decimal("-001.50".into()),
            Value::String("ü \"x\"".into()),
            Value::Date {
                year: 0,
                month: 0,
                day: 0,
            },
            Value::DateTime {
                year: 2024,
                month: 2,
                day: 29,
                hour: 23,
                minute: 59,
                second: 58,
                micros: 123456,
                fsp: 6,
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
            Value::Bytes(vec![0, 255, 10]),
            Value::Json(RawValue::from_string(r#"{"a": [1, 2.50]}"#.into()).unwrap()),
            Value::Array(vec![Value::String("a".into()), Value::Null]),
        ];
        let row = Row {
            version: 42,
            values: Some(values),
            render: Some(r#"{"id":1}"#.into()),
        };
        let back = decode(&encode(&row)).unwrap();
        // NaN is not equal to itself: compare the encodings.
        assert_eq!(encode(&back), encode(&row));
        assert_eq!(back.version, 42);
        assert_eq!(back.render.as_deref(), Some(r#"{"id":1}"#));
        let tombstone = Row {
            version: 7,
            values: None,
            render: None,
        };
        assert_eq!(decode(&encode(&tombstone)).unwrap(), tombstone);
        assert!(
            decode(&encode(&row)[..20]).is_err(),
            "a cut row is an error"
        );
    }
}
