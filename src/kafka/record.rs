//! The record format: what the Kafka sink writes besides the event and what the Kafka
//! source reads back.
//!
//! The value is the change event exactly as log streams write it; the key is the row's
//! key as JSON. Headers: `op`, `version`, `schema_version`, and `schema`: the table's
//! layout (columns with their source types, key, source kind), so a consumer that
//! never saw the source database knows every column's type (what Elasticsearch
//! mappings and the exact reading of values need). It is the same bytes for every
//! record of one layout: the sink renders it once per layout, the source parses it
//! once per layout, and batch compression takes its repeats away on the wire.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::document::stage::Shape;
use crate::document::tree::Tree;
use crate::event::{Column, TableSchema, DOCUMENT_KIND};

pub const OP: &str = "op";
pub const VERSION: &str = "version";
pub const SCHEMA_VERSION: &str = "schema_version";
pub const SCHEMA: &str = "schema";

/// The `op` header of a joined document's events (`doc_delete` after its root went).
pub const DOC_OPS: [&str; 2] = ["doc", "doc_delete"];

/// The `schema` header's JSON.
#[derive(Serialize, Deserialize)]
struct Layout<'a> {
    connector: Cow<'a, str>,
    kind: Cow<'a, str>,
    db: Cow<'a, str>,
    table: Cow<'a, str>,
    schema_version: u32,
    /// `[name, type]` pairs, in column order.
    columns: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The key's column names, in key order.
    key: Vec<Cow<'a, str>>,
    /// A joined document's: its tree and the layouts of its tables, what a worker's
    /// sinks map the document from (nests as `nested`, leaves by their columns' types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    document: Option<DocumentLayout<'a>>,
}

#[derive(Serialize, Deserialize)]
struct DocumentLayout<'a> {
    tree: Cow<'a, Tree>,
    tables: Vec<Layout<'a>>,
}

fn layout(t: &TableSchema) -> Layout<'_> {
    Layout {
        connector: (&*t.connector).into(),
        kind: t.kind.into(),
        db: (&*t.db).into(),
        table: (&*t.table).into(),
        schema_version: t.schema_version,
        columns: t
            .columns
            .iter()
            .map(|c| ((&*c.name).into(), (&*c.type_name).into()))
            .collect(),
        key: t
            .primary_key
            .iter()
            .map(|&i| (&*t.columns[i].name).into())
            .collect(),
        document: None,
    }
}

/// The `schema` header of `t`'s records; a joined document's carries its `shape`.
pub fn schema_header(t: &TableSchema, shape: Option<&Shape>) -> Vec<u8> {
    let mut out = layout(t);
    out.document = shape.map(|s| DocumentLayout {
        tree: Cow::Borrowed(&s.tree),
        tables: s.schemas.values().map(|t| layout(t)).collect(),
    });
    serde_json::to_vec(&out).expect("a layout always renders")
}

/// The schema a layout describes.
fn table_schema(layout: Layout<'_>) -> Result<TableSchema, String> {
    let kind = source_kind(&layout.kind).ok_or_else(|| {
        format!(
            "the `schema` header names source kind `{}`, which this tributary does not know",
            layout.kind
        )
    })?;
    let columns: Vec<Column> = layout
        .columns
        .iter()
        .map(|(n, t)| Column {
            name: n.to_string(),
            type_name: t.to_string(),
        })
        .collect();
    let key = layout
        .key
        .iter()
        .map(|k| {
            columns.iter().position(|c| c.name == *k).ok_or_else(|| {
                format!("the `schema` header's key column `{k}` is not among its columns")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TableSchema::new(
        Arc::from(&*layout.connector),
        kind,
        layout.db.into_owned(),
        layout.table.into_owned(),
        columns,
        key,
        layout.schema_version,
    ))
}

/// Layouts a consumer keeps before it starts over (each is a few hundred bytes).
const MAX_LAYOUTS: usize = 4096;

/// The schemas of the `schema` headers a consumer met, one `Arc` per layout: every
/// event of one layout shares it, as events from a database source do (sinks key
/// their caches by it).
#[derive(Default)]
pub struct Layouts {
    seen: HashMap<Box<[u8]>, Arc<TableSchema>>,
}

impl Layouts {
    /// The schema a `schema` header describes. A joined document's shape, when the
    /// header carries one, is kept for the sinks (`document::stage::learn_shape`).
    pub fn schema(&mut self, header: &[u8]) -> Result<Arc<TableSchema>, String> {
        if let Some(s) = self.seen.get(header) {
            return Ok(s.clone());
        }
        let mut layout: Layout<'_> = serde_json::from_slice(header)
            .map_err(|e| format!("the `schema` header is not a tributary layout: {e}"))?;
        let document = layout.document.take();
        let schema = Arc::new(table_schema(layout)?);
        if let Some(d) = document {
            let mut schemas = std::collections::BTreeMap::new();
            for t in d.tables {
                let t = table_schema(t)?;
                schemas.insert(t.qualified_name(), Arc::new(t));
            }
            crate::document::stage::learn_shape(Shape {
                tree: d.tree.into_owned(),
                schemas,
            });
        }
        if self.seen.len() >= MAX_LAYOUTS {
            self.seen.clear();
        }
        self.seen.insert(header.into(), schema.clone());
        Ok(schema)
    }
}

/// The `&'static` kind name of a source kind (or of joined documents).
fn source_kind(name: &str) -> Option<&'static str> {
    crate::config::SOURCE_KINDS
        .iter()
        .chain(std::iter::once(&DOCUMENT_KIND))
        .find(|k| **k == name)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_reads_back_as_the_schema_it_was_written_from_and_is_shared() {
        let t = TableSchema::new(
            "shop".into(),
            "mariadb",
            "db".into(),
            "orders".into(),
            vec![
                Column {
                    name: "tenant".into(),
                    type_name: "int unsigned".into(),
                },
                Column {
                    name: "id".into(),
                    type_name: "bigint".into(),
                },
                Column {
                    name: "amount".into(),
                    type_name: "decimal(10,2)".into(),
                },
            ],
            vec![1, 0],
            3,
        );
        let header = schema_header(&t, None);
        let mut layouts = Layouts::default();
        let back = layouts.schema(&header).unwrap();
        assert_eq!(*back, t);
        assert!(Arc::ptr_eq(&back, &layouts.schema(&header).unwrap()));
    }

    /// A document's header carries its shape: a consumer learns it whole (the tree and
    /// its tables' layouts), so its sinks map the document as the reader's would.
    #[test]
    fn a_document_header_carries_its_shape() {
        let tree = crate::document::tests::shop_tree(crate::document::tests::SHOP);
        let schemas = crate::document::tests::shop_schemas();
        let shape = Shape {
            tree: Tree {
                name: "learned_customers".into(),
                ..tree
            },
            schemas: schemas
                .iter()
                .map(|t| (t.qualified_name(), t.clone()))
                .collect(),
        };
        let doc = crate::document::stage::document_schema("shop", &shape).unwrap();
        let header = schema_header(&doc, Some(&shape));
        let mut layouts = Layouts::default();
        let back = layouts.schema(&header).unwrap();
        assert_eq!(*back, doc);
        let learned =
            crate::document::stage::shape_of(&Default::default(), "learned_customers").unwrap();
        assert_eq!(learned.tree.definition(), shape.tree.definition());
        for (name, t) in &shape.schemas {
            assert_eq!(learned.schemas[name], *t, "{name}");
        }
        // A table's header carries none.
        let table = schema_header(&schemas[0], None);
        assert!(!String::from_utf8_lossy(&table).contains("\"document\""));
    }

    #[test]
    fn a_foreign_header_is_named() {
        let mut layouts = Layouts::default();
        let e = layouts.schema(b"{\"x\":1}").unwrap_err();
        assert!(e.contains("not a tributary layout"), "{e}");
        let t = TableSchema::new(
            "c".into(),
            "oracle",
            "d".into(),
            "t".into(),
            vec![],
            vec![],
            1,
        );
        let e = layouts.schema(&schema_header(&t, None)).unwrap_err();
        assert!(e.contains("source kind `oracle`"), "{e}");
    }
}
