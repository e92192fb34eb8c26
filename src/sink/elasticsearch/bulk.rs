//! Bulk request bodies.
//!
//! Every write carries the event's version with `version_type=external_gte`, deletes
//! too, so a replayed or reordered write can never overwrite newer data (DESIGN.md).

use std::ops::Range;

use sha2::Digest;

use std::sync::Arc;

use crate::event::{write_json_str, ChangeEvent, Op, Row, SourceMessage, Value};
use crate::sink::SharedBatch;

/// Where an event sits in a batch the pipeline shared with the sink: the batch and the
/// message's place in it.
pub type Origin = (SharedBatch, usize);

/// An item's event, kept until the cluster answered (for a dead letter): its place in
/// a batch the pipeline shared with the sink (a reference count, where a copy of the
/// event cost a seventh of the sink's CPU at its ceiling: bench/es_ceiling.sh), or a
/// copy of an event the sink was lent.
#[derive(Debug, Clone)]
enum Held {
    Shared(SharedBatch, usize),
    Copy(Box<ChangeEvent>),
}

impl Held {
    /// `e` itself when `origin` names the message `e` is (compared by address), else a
    /// copy.
    fn of(e: &ChangeEvent, origin: Option<&Origin>) -> Held {
        match origin {
            Some((batch, at)) if matches!(batch.get(*at), Some(SourceMessage::Change(x)) if std::ptr::eq(x, e)) => {
                Held::Shared(batch.clone(), *at)
            }
            _ => Held::Copy(Box::new(e.clone())),
        }
    }

    fn event(&self) -> &ChangeEvent {
        match self {
            Held::Shared(batch, at) => match &batch[*at] {
                SourceMessage::Change(e) => e,
                _ => unreachable!("Held::of checked that the message is a change"),
            },
            Held::Copy(e) => e,
        }
    }
}

/// One action (and its document) in the body, and the event it came from.
#[derive(Debug, Clone)]
pub struct Item {
    /// Bytes of the action line and document line in `Batch::body`.
    body: Range<usize>,
    pub alias: Arc<str>,
    /// The change's commit time on the source and when tributary read it (ms since
    /// the epoch), for the ack latency metrics.
    pub commit_ms: u64,
    pub read_ms: u64,
}

/// A bulk request being built.
#[derive(Debug, Default)]
pub struct Batch {
    body: Vec<u8>,
    /// Each item's event, kept until the cluster answered, for a dead letter.
    events: Vec<Held>,
    pub items: Vec<Item>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The request body's size.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Appends the action for `e` (index for inserts, updates and reads; delete for
    /// deletes) under document id `id`.
    pub fn push(&mut self, e: &ChangeEvent, alias: Arc<str>, id: &str) {
        self.push_with(e, alias, id, None, None)
    }

    /// The same, with the document given (a partial row merged with what the index
    /// holds) instead of written from the event's `after`, and where `e` sits in a
    /// shared batch (it is kept as that place instead of a copy).
    pub fn push_with(
        &mut self,
        e: &ChangeEvent,
        alias: Arc<str>,
        id: &str,
        document: Option<&[u8]>,
        origin: Option<&Origin>,
    ) {
        let delete = e.op == Op::Delete;
        self.push_action(e, alias, id, delete, document, origin)
    }

    /// A delete of document `id` with the event's version: the old document of an
    /// update that changed the row's id.
    pub fn push_delete(
        &mut self,
        e: &ChangeEvent,
        alias: Arc<str>,
        id: &str,
        origin: Option<&Origin>,
    ) {
        self.push_action(e, alias, id, true, None, origin)
    }

    fn push_action(
        &mut self,
        e: &ChangeEvent,
        alias: Arc<str>,
        id: &str,
        delete: bool,
        document: Option<&[u8]>,
        origin: Option<&Origin>,
    ) {
        let start = self.body.len();
        let (action, row) = if delete {
            ("delete", None)
        } else {
            ("index", e.after.as_ref())
        };
        let b = &mut self.body;
        b.extend_from_slice(b"{\"");
        b.extend_from_slice(action.as_bytes());
        b.extend_from_slice(b"\":{\"_index\":");
        write_json_str(b, &alias);
        b.extend_from_slice(b",\"_id\":");
        write_json_str(b, id);
        b.extend_from_slice(b",\"version\":");
        b.extend_from_slice(itoa::Buffer::new().format(e.version).as_bytes());
        b.extend_from_slice(b",\"version_type\":\"external_gte\"}}\n");
        match (document, row) {
            (Some(doc), _) => {
                b.extend_from_slice(doc);
                b.push(b'\n');
            }
            (None, Some(row)) => {
                e.write_row_json(row, b);
                b.push(b'\n');
            }
            (None, None) => {}
        }
        self.events.push(Held::of(e, origin));
        self.items.push(Item {
            body: start..self.body.len(),
            alias,
            commit_ms: e.source_ts_ms,
            read_ms: e.ts_ms,
        });
    }

    /// Bytes of the last item's bulk lines (action and document).
    pub fn last_item_bytes(&self) -> usize {
        self.items.last().map_or(0, |it| it.body.len())
    }

    /// Takes the last item back out: its alias and event.
    pub fn pop(&mut self) -> Option<(Arc<str>, ChangeEvent)> {
        let it = self.items.pop()?;
        self.body.truncate(it.body.start);
        let held = self.events.pop().expect("one event per item");
        Some((it.alias, held.event().clone()))
    }

    /// The NDJSON body (each line ends with a newline).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The event of an item, for a dead letter.
    pub fn event(&self, item: usize) -> &ChangeEvent {
        self.events[item].event()
    }

    /// A new batch holding only the given items (to retry them).
    pub fn subset(&self, items: &[usize]) -> Batch {
        let mut out = Batch::default();
        for &i in items {
            let it = &self.items[i];
            let b0 = out.body.len();
            out.body.extend_from_slice(&self.body[it.body.clone()]);
            out.events.push(self.events[i].clone());
            out.items.push(Item {
                body: b0..out.body.len(),
                alias: it.alias.clone(),
                commit_ms: it.commit_ms,
                read_ms: it.read_ms,
            });
        }
        out
    }
}

/// How a table's documents are identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocId {
    /// These columns' values: the primary key, or the columns the sink's `ids` names.
    Columns(Vec<usize>),
    /// A SHA-256 of the whole row (128 bits, hex), for tables without a key: identical
    /// rows share one document.
    RowHash,
}

impl DocId {
    /// The id of `row`: one column's value as text, several columns' values as JSON
    /// array text (which cannot collide across different keys), or the row's hash.
    /// None when a value it needs was not sent (`Value::Absent`).
    pub fn of(&self, e: &ChangeEvent, row: &Row) -> Option<String> {
        match self {
            DocId::RowHash => {
                if row.iter().any(|v| matches!(v, Value::Absent)) {
                    return None;
                }
                let mut text = Vec::with_capacity(256);
                e.write_row_json(row, &mut text);
                let digest = sha2::Sha256::digest(&text);
                let mut out = String::with_capacity(32);
                for b in &digest[..16] {
                    out.push_str(&format!("{b:02x}"));
                }
                Some(out)
            }
            DocId::Columns(cols) => columns_id(cols, row),
        }
    }
}

fn columns_id(cols: &[usize], row: &Row) -> Option<String> {
    if cols
        .iter()
        .any(|&i| matches!(row.get(i), None | Some(Value::Absent)))
    {
        return None;
    }
    match cols {
        [] => None,
        [i] => Some(match &row[*i] {
            Value::String(s) | Value::Decimal(s) => s.clone(),
            Value::Int(v) => v.to_string(),
            Value::UInt(v) => v.to_string(),
            other => other.to_json(),
        }),
        cols => {
            let mut out = String::from("[");
            for (n, i) in cols.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&row[*i].to_json());
            }
            out.push(']');
            Some(out)
        }
    }
}

/// The document id by primary key (None for tables without one).
pub fn document_id(e: &ChangeEvent) -> Option<String> {
    columns_id(&e.table.primary_key, e.key_row()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, Position, TableSchema};
    use std::sync::Arc;

    fn event(op: Op, pk: Vec<usize>, after: Vec<Value>) -> ChangeEvent {
        let cols = ["a", "b"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                type_name: "varchar".into(),
            })
            .collect();
        ChangeEvent {
            op,
            table: Arc::new(TableSchema::new(
                "c".into(),
                "mariadb",
                "db".into(),
                "t".into(),
                cols,
                pk,
                1,
            )),
            pos: Position::Binlog {
                file: "binlog.000001".into(),
                offset: 4,
                gtid: None,
            },
            txid: None,
            source_ts_ms: 0,
            before: if op == Op::Delete {
                Some(after.clone())
            } else {
                None
            },
            after: if op == Op::Delete { None } else { Some(after) },
            version: 77,
            ts_ms: 0,
        }
    }

    #[test]
    fn ids_are_unambiguous() {
        let v = |a: &str, b: &str| vec![Value::String(a.into()), Value::String(b.into())];
        assert_eq!(
            document_id(&event(Op::Create, vec![0], v("x", "y"))).unwrap(),
            "x"
        );
        let ab = document_id(&event(Op::Create, vec![0, 1], v("a,b", "c"))).unwrap();
        let a_bc = document_id(&event(Op::Create, vec![0, 1], v("a", "b,c"))).unwrap();
        assert_eq!(ab, r#"["a,b","c"]"#);
        assert_ne!(ab, a_bc);
        assert!(document_id(&event(Op::Create, vec![], v("a", "b"))).is_none());
    }

    #[test]
    fn row_hash_ids_follow_the_whole_row() {
        let v = |a: &str, b: &str| vec![Value::String(a.into()), Value::String(b.into())];
        let e = event(Op::Create, vec![], v("a", "b"));
        let id = DocId::RowHash.of(&e, e.after.as_ref().unwrap()).unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        // The same row, the same id (on any run); another row, another id.
        assert_eq!(DocId::RowHash.of(&e, &v("a", "b")).unwrap(), id);
        assert_ne!(DocId::RowHash.of(&e, &v("a", "c")).unwrap(), id);
        assert_ne!(DocId::RowHash.of(&e, &v("ab", "")).unwrap(), id);
        // A value that was not sent: no id rather than a wrong one.
        let partial = vec![Value::String("a".into()), Value::Absent];
        assert!(DocId::RowHash.of(&e, &partial).is_none());
        assert!(DocId::Columns(vec![1]).of(&e, &partial).is_none());
        assert_eq!(DocId::Columns(vec![0]).of(&e, &partial).unwrap(), "a");
    }

    #[test]
    fn an_event_of_a_shared_batch_is_held_in_place_and_a_lent_one_is_copied() {
        let e = event(Op::Create, vec![0], vec![Value::Int(1), Value::Null]);
        let shared: SharedBatch = Arc::new(vec![
            SourceMessage::Rewind,
            SourceMessage::Change(e.clone()),
        ]);
        let SourceMessage::Change(inside) = &shared[1] else {
            unreachable!()
        };
        let mut b = Batch::default();
        b.push_with(inside, "t".into(), "1", None, Some(&(shared.clone(), 1)));
        // The wrong place, or an event from elsewhere: a copy, never the wrong event.
        b.push_with(inside, "t".into(), "1", None, Some(&(shared.clone(), 0)));
        b.push_with(&e, "t".into(), "1", None, Some(&(shared.clone(), 1)));
        assert!(std::ptr::eq(b.event(0), inside));
        assert!(!std::ptr::eq(b.event(1), inside));
        assert!(!std::ptr::eq(b.event(2), &e));
        assert_eq!(b.event(1).after, inside.after);
        assert_eq!(b.event(2).after, e.after);
        // Held while the batch holds it; let go with it.
        assert_eq!(Arc::strong_count(&shared), 2);
        let retry = b.subset(&[0]);
        assert!(std::ptr::eq(retry.event(0), inside));
        drop((b, retry));
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn an_id_change_is_a_delete_then_an_index() {
        let mut b = Batch::default();
        let e = event(Op::Update, vec![0], vec![Value::Int(2), Value::Null]);
        b.push_delete(&e, "t".into(), "1", None);
        b.push(&e, "t".into(), "2");
        let body = String::from_utf8(b.body().to_vec()).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert!(
            lines[0].starts_with(r#"{"delete":{"_index":"t","_id":"1","version":"#),
            "{body}"
        );
        assert!(
            lines[1].starts_with(r#"{"index":{"_index":"t","_id":"2","version":"#),
            "{body}"
        );
        assert_eq!(lines.len(), 3, "{body}");
    }

    #[test]
    fn bodies_carry_external_versions() {
        let mut b = Batch::default();
        b.push(
            &event(Op::Create, vec![0], vec![Value::Int(1), Value::Null]),
            "t".into(),
            "1",
        );
        b.push(
            &event(Op::Delete, vec![0], vec![Value::Int(2), Value::Null]),
            "t".into(),
            "2",
        );
        let text = String::from_utf8(b.body().to_vec()).unwrap();
        assert_eq!(
            text,
            "{\"index\":{\"_index\":\"t\",\"_id\":\"1\",\"version\":77,\"version_type\":\"external_gte\"}}\n{\"a\":1,\"b\":null}\n\
             {\"delete\":{\"_index\":\"t\",\"_id\":\"2\",\"version\":77,\"version_type\":\"external_gte\"}}\n"
        );
        let only_delete = b.subset(&[1]);
        assert!(String::from_utf8(only_delete.body().to_vec())
            .unwrap()
            .starts_with("{\"delete\""));
        assert_eq!(only_delete.event(0).op, Op::Delete);
    }

    #[test]
    fn the_last_item_is_measured_and_taken_back_whole() {
        let mut b = Batch::default();
        b.push(
            &event(Op::Create, vec![0], vec![Value::Int(1), Value::Null]),
            "t".into(),
            "1",
        );
        let body = b.body().to_vec();
        b.push(
            &event(
                Op::Create,
                vec![0],
                vec![Value::Int(2), Value::String("x".repeat(500))],
            ),
            "u".into(),
            "2",
        );
        assert!(b.last_item_bytes() > 500 && b.last_item_bytes() < 650);
        let (alias, event) = b.pop().unwrap();
        assert_eq!(&*alias, "u");
        assert_eq!(event.after.unwrap()[1], Value::String("x".repeat(500)));
        assert_eq!((b.body(), b.events.len()), (&body[..], 1));
        assert_eq!(b.items.len(), 1);
    }
}
