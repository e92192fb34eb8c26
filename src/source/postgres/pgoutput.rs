//! pgoutput (protocol version 1) message decoder.
//!
//! Decodes the logical replication messages PostgreSQL's pgoutput plugin sends inside
//! XLogData, borrowing from the message buffer: tuple values stay byte slices until the
//! value decoder turns them into the event model. Layouts follow the PostgreSQL
//! documentation, "Logical Replication Message Formats".

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        /// LSN just past the commit record: where a consumer resumes.
        end_lsn: u64,
        commit_ts: i64,
    },
    Origin {
        lsn: u64,
        name: &'a str,
    },
    Relation(Relation<'a>),
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        relation: u32,
        new: Tuple<'a>,
    },
    Update {
        relation: u32,
        /// The old key ('K', REPLICA IDENTITY DEFAULT/INDEX when the key changed) or the
        /// whole old row ('O', REPLICA IDENTITY FULL).
        old: Option<OldTuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        relation: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relations: Vec<u32>,
    },
    /// pg_logical_emit_message.
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: &'a str,
        content: &'a [u8],
    },
}

/// A table's layout, sent before the first change under it and after each change of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation<'a> {
    pub oid: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    /// REPLICA IDENTITY: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row image of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// Only the replica identity columns (others are null).
    Key(Tuple<'a>),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(Tuple<'a>),
}

pub type Tuple<'a> = Vec<Datum<'a>>;

/// One column of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    /// An unchanged TOASTed value: not sent; the row keeps its current value.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(&'a [u8]),
    /// The value in the type's binary format (when `binary` was requested).
    Binary(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message `{kind}`: {message}")]
pub struct DecodeError {
    pub kind: char,
    pub message: String,
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: char,
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl Into<String>) -> DecodeError {
        DecodeError {
            kind: self.kind,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err(format!("ends {} bytes early", n - self.buf.len())));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A NUL-terminated string.
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("string without its terminating NUL"))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| self.err("string is not UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.u16()? as usize;
        let mut out = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.u32()? as usize;
                    Datum::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Datum::Binary(self.take(len)?)
                }
                other => {
                    return Err(self.err(format!("unknown tuple column kind {:?}", other as char)))
                }
            });
        }
        Ok(out)
    }

    fn expect(&mut self, want: u8) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got != want {
            return Err(self.err(format!(
                "expected {:?}, found {:?}",
                want as char, got as char
            )));
        }
        Ok(())
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// Decodes one pgoutput message. Unknown message kinds are an error, never skipped.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&kind, body) = buf.split_first().ok_or(DecodeError {
        kind: '?',
        message: "empty message".into(),
    })?;
    let mut r = Reader {
        buf: body,
        kind: kind as char,
    };
    let msg = match kind {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_ts: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_ts: r.u64()? as i64,
        },
        b'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.str()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.str()?;
            let name = r.str()?;
            let replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n.min(r.buf.len()));
            for _ in 0..n {
                columns.push(RelationColumn {
                    key: r.u8()? & 1 == 1,
                    name: r.str()?,
                    type_oid: r.u32()?,
                    type_modifier: r.u32()? as i32,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.str()?,
            name: r.str()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                other => return Err(r.err(format!("expected K, O or N, found {:?}", other as char))),
            };
            if old.is_some() {
                r.expect(b'N')?;
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.err(format!("expected K or O, found {:?}", other as char))),
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity(n.min(r.buf.len() / 4));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.u64()?;
            let prefix = r.str()?;
            let len = r.u32()? as usize;
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: r.take(len)?,
            }
        }
        other => {
            return Err(DecodeError {
                kind: other as char,
                message: "unknown message type (streamed transactions need protocol 2+, which tributary does not request)"
                    .into(),
            })
        }
    };
    r.done()?;
    Ok(msg)
}

/// A WAL location as PostgreSQL prints it: `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages as the server lays them out.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn b(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut w = self.b(b't').u32(v.len() as u32);
            w.0.extend_from_slice(v.as_bytes());
            w
        }
    }

    #[test]
    fn begin_commit_and_lsns() {
        let b = W::default()
            .b(b'B')
            .u64(0x16_B374_D848)
            .u64(800_000_000_000_000)
            .u32(771)
            .0;
        assert_eq!(
            decode(&b).unwrap(),
            Message::Begin {
                final_lsn: 0x16_B374_D848,
                commit_ts: 800_000_000_000_000,
                xid: 771
            }
        );
        let c = W::default().b(b'C').b(0).u64(10).u64(20).u64(30).0;
        assert_eq!(
            decode(&c).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 10,
                end_lsn: 20,
                commit_ts: 30
            }
        );
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }

    #[test]
    fn relation_and_type() {
        let m = W::default()
            .b(b'R')
            .u32(16_384)
            .s("public")
            .s("orders")
            .b(b'd')
            .u16(2)
            .b(1)
            .s("id")
            .u32(20)
            .u32(u32::MAX) // typmod -1
            .b(0)
            .s("note")
            .u32(1043)
            .u32(104)
            .0;
        let Message::Relation(r) = decode(&m).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.oid, r.namespace, r.name, r.replica_identity),
            (16_384, "public", "orders", b'd')
        );
        assert_eq!(
            r.columns[0],
            RelationColumn {
                key: true,
                name: "id",
                type_oid: 20,
                type_modifier: -1
            }
        );
        assert_eq!(r.columns[1].type_modifier, 104);
        let t = W::default().b(b'Y').u32(99_999).s("public").s("mood").0;
        assert_eq!(
            decode(&t).unwrap(),
            Message::Type {
                oid: 99_999,
                namespace: "public",
                name: "mood"
            }
        );
    }

    #[test]
    fn changes_with_nulls_and_unchanged_toast() {
        let ins = W::default()
            .b(b'I')
            .u32(7)
            .b(b'N')
            .u16(3)
            .text("42")
            .b(b'n')
            .text("")
            .0;
        assert_eq!(
            decode(&ins).unwrap(),
            Message::Insert {
                relation: 7,
                new: vec![Datum::Text(b"42"), Datum::Null, Datum::Text(b"")]
            }
        );
        // REPLICA IDENTITY FULL update with an unchanged TOASTed column in the new row.
        let upd = W::default()
            .b(b'U')
            .u32(7)
            .b(b'O')
            .u16(2)
            .text("1")
            .text("old")
            .b(b'N')
            .u16(2)
            .text("1")
            .b(b'u')
            .0;
        assert_eq!(
            decode(&upd).unwrap(),
            Message::Update {
                relation: 7,
                old: Some(OldTuple::Full(vec![Datum::Text(b"1"), Datum::Text(b"old")])),
                new: vec![Datum::Text(b"1"), Datum::UnchangedToast],
            }
        );
        let plain = W::default().b(b'U').u32(7).b(b'N').u16(1).text("x").0;
        assert!(matches!(
            decode(&plain).unwrap(),
            Message::Update { old: None, .. }
        ));
        let del = W::default()
            .b(b'D')
            .u32(7)
            .b(b'K')
            .u16(2)
            .text("1")
            .b(b'n')
            .0;
        assert_eq!(
            decode(&del).unwrap(),
            Message::Delete {
                relation: 7,
                old: OldTuple::Key(vec![Datum::Text(b"1"), Datum::Null])
            }
        );
    }

    #[test]
    fn truncate_message_and_origin() {
        let t = W::default().b(b'T').u32(2).b(3).u32(7).u32(8).0;
        assert_eq!(
            decode(&t).unwrap(),
            Message::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![7, 8]
            }
        );
        let m = W::default().b(b'M').b(1).u64(5).s("app").u32(3).0;
        let mut m = m;
        m.extend_from_slice(b"abc");
        assert_eq!(
            decode(&m).unwrap(),
            Message::LogicalMessage {
                transactional: true,
                lsn: 5,
                prefix: "app",
                content: b"abc"
            }
        );
        let o = W::default().b(b'O').u64(9).s("upstream").0;
        assert_eq!(
            decode(&o).unwrap(),
            Message::Origin {
                lsn: 9,
                name: "upstream"
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(decode(&[]).is_err());
        let e = decode(b"S\0\0").unwrap_err();
        assert_eq!(e.kind, 'S');
        let short = W::default().b(b'I').u32(7).b(b'N').u16(1).b(b't').u32(10).0;
        assert!(decode(&short).unwrap_err().message.contains("early"));
        let trailing = W::default().b(b'B').u64(1).u64(2).u32(3).b(0).0;
        assert!(decode(&trailing).unwrap_err().message.contains("trailing"));
        let bad_kind = W::default().b(b'I').u32(7).b(b'N').u16(1).b(b'x').0;
        assert!(decode(&bad_kind).is_err());
        let no_nul = W::default().b(b'Y').u32(1).0;
        let mut no_nul = no_nul;
        no_nul.extend_from_slice(b"public");
        assert!(decode(&no_nul).unwrap_err().message.contains("NUL"));
    }

    /// Real message layouts, to mutate.
    fn samples() -> Vec<Vec<u8>> {
        vec![
            W::default().b(b'B').u64(1).u64(2).u32(3).0,
            W::default().b(b'C').b(0).u64(10).u64(20).u64(30).0,
            W::default()
                .b(b'R')
                .u32(16_384)
                .s("public")
                .s("orders")
                .b(b'd')
                .u16(2)
                .b(1)
                .s("id")
                .u32(20)
                .u32(u32::MAX)
                .b(0)
                .s("note")
                .u32(1043)
                .u32(104)
                .0,
            W::default()
                .b(b'I')
                .u32(7)
                .b(b'N')
                .u16(3)
                .text("42")
                .b(b'n')
                .text("")
                .0,
            W::default()
                .b(b'U')
                .u32(7)
                .b(b'O')
                .u16(1)
                .text("1")
                .b(b'N')
                .u16(1)
                .b(b'u')
                .0,
            W::default().b(b'D').u32(7).b(b'K').u16(1).text("1").0,
            W::default().b(b'T').u32(2).b(0).u32(7).u32(8).0,
            W::default().b(b'Y').u32(99_999).s("public").s("mood").0,
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testkit::fuzz_cases(2000)))]

        /// Any bytes: an error or a message, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(kind in proptest::sample::select(b"BCRIUDTYOMX".to_vec()), body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut m = vec![kind];
            m.extend(body);
            let _ = decode(&m);
        }

        /// Real messages with bytes changed, cut or added.
        #[test]
        fn mutated_messages_never_panic(which in 0usize..8, at in proptest::prelude::any::<usize>(), byte in proptest::prelude::any::<u8>(), cut in proptest::prelude::any::<bool>()) {
            let mut m = samples()[which].clone();
            let i = at % m.len();
            if cut {
                m.truncate(i.max(1));
            } else {
                m[i] = byte;
            }
            let _ = decode(&m);
        }
    }
}
