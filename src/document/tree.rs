//! A document's definition resolved against its tables' schemas: a tree of nodes, the
//! root first, each with its columns as indexes into its table's columns.

use super::{DocumentConfig, RelationConfig, Shape};
use crate::event::TableSchema;

/// One table's place in a document.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// `db.table`.
    pub table: String,
    /// The field of the enclosing object (empty for the root).
    pub field: String,
    /// A nest (an array) rather than an embed (an object or null).
    pub nested: bool,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// The join: (column of the parent's table, column of this table), per `on` pair.
    pub on: Vec<(usize, usize)>,
    /// The table's key columns.
    pub key: Vec<usize>,
    /// The columns the object shows, and their names.
    pub columns: Vec<usize>,
    pub column_names: Vec<String>,
    /// A nest's order.
    pub order_by: Vec<usize>,
    /// The columns the state keeps of each row, in this order: every column above and
    /// each child's parent side of `on`.
    pub stored: Vec<usize>,
    /// Their names (a row of another layout is read by them: `project`).
    pub stored_names: Vec<String>,
}

impl Node {
    /// The projection of a row in the layout the tree was resolved against.
    pub fn identity(&self) -> Vec<Option<usize>> {
        self.stored.iter().map(|&i| Some(i)).collect()
    }

    /// The projection of a row of `table` as it is now (a column added before a stored
    /// one moves it; one that is gone reads as NULL).
    pub fn project(&self, table: &TableSchema) -> Vec<Option<usize>> {
        self.stored_names
            .iter()
            .map(|name| table.columns.iter().position(|c| &c.name == name))
            .collect()
    }

    /// Where column `col` of the table sits in the stored values.
    pub fn slot(&self, col: usize) -> usize {
        self.stored
            .iter()
            .position(|&c| c == col)
            .expect("the stored columns hold every column a node uses")
    }
}

/// A document's nodes; `nodes[0]` is the root. It travels in a Kafka record's
/// `schema` header (`kafka::record`), so a worker maps documents it never defined.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tree {
    pub name: String,
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Resolves `def` against the schemas `schema_of` finds (see
    /// `check_against_schemas`, which names what fails here with its line).
    pub fn resolve<'s>(
        def: &DocumentConfig,
        schema_of: &dyn Fn(&str) -> Option<&'s TableSchema>,
    ) -> Result<Tree, String> {
        let table = |name: &str| schema_of(name).ok_or_else(|| format!("no table `{name}`"));
        let root = table(def.root.get_ref())?;
        let mut tree = Tree {
            name: def.name.get_ref().clone(),
            nodes: vec![node(
                root,
                String::new(),
                false,
                None,
                Vec::new(),
                None,
                None,
            )?],
        };
        let mut stack: Vec<(usize, Shape, &RelationConfig)> =
            def.children().map(|(s, r)| (0, s, r)).collect();
        stack.reverse();
        while let Some((p, shape, r)) = stack.pop() {
            let parent = table(&tree.nodes[p].table)?;
            let from = table(r.from.get_ref())?;
            let mut on = Vec::new();
            for (pc, fc) in r.on.get_ref() {
                on.push((column(parent, pc)?, column(from, fc)?));
            }
            let n = tree.nodes.len();
            tree.nodes.push(node(
                from,
                r.field.get_ref().clone(),
                shape == Shape::Nest,
                Some(p),
                on,
                r.columns.as_ref().map(|c| c.get_ref().as_slice()),
                r.order_by.as_ref().map(|c| c.get_ref().as_slice()),
            )?);
            tree.nodes[p].children.push(n);
            let mut below: Vec<_> = r.children().map(|(s, c)| (n, s, c)).collect();
            below.reverse();
            stack.extend(below);
        }
        // What each node keeps: its own columns, plus each child's parent side.
        for n in 0..tree.nodes.len() {
            let mut stored = Vec::new();
            let node = &tree.nodes[n];
            let own = node.on.iter().map(|&(_, c)| c);
            let parent_sides = node
                .children
                .iter()
                .flat_map(|&c| tree.nodes[c].on.iter().map(|&(p, _)| p));
            for c in node
                .key
                .iter()
                .chain(&node.columns)
                .chain(&node.order_by)
                .copied()
                .chain(own)
                .chain(parent_sides)
            {
                if !stored.contains(&c) {
                    stored.push(c);
                }
            }
            let table = table(&tree.nodes[n].table)?;
            tree.nodes[n].stored_names = stored
                .iter()
                .map(|&i| table.columns[i].name.clone())
                .collect();
            tree.nodes[n].stored = stored;
        }
        Ok(tree)
    }

    /// What the state's rows depend on, as text: each node's table, place, join and
    /// stored columns (by name). A state stored for another definition is rebuilt.
    pub fn definition(&self) -> String {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "table": n.table,
                    "field": n.field,
                    "nested": n.nested,
                    "parent": n.parent,
                    "on": n.parent.map(|p| {
                        let parent = &self.nodes[p];
                        n.on.iter()
                            .map(|&(pc, c)| {
                                (
                                    &parent.stored_names[parent.slot(pc)],
                                    &n.stored_names[n.slot(c)],
                                )
                            })
                            .collect::<Vec<_>>()
                    }),
                    "stored": n.stored_names,
                    "key": n.key.iter().map(|&k| n.slot(k)).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::Value::Array(nodes).to_string()
    }

    /// The nodes reading `table`.
    pub fn nodes_of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = usize> + 'a {
        (0..self.nodes.len()).filter(move |&n| self.nodes[n].table == table)
    }
}

fn node(
    t: &TableSchema,
    field: String,
    nested: bool,
    parent: Option<usize>,
    on: Vec<(usize, usize)>,
    columns: Option<&[String]>,
    order_by: Option<&[String]>,
) -> Result<Node, String> {
    let index = |c: &String| column(t, c);
    let columns: Vec<usize> = match columns {
        Some(cs) => cs.iter().map(index).collect::<Result<_, _>>()?,
        None => (0..t.columns.len()).collect(),
    };
    let order_by = match order_by {
        Some(cs) => cs.iter().map(index).collect::<Result<_, _>>()?,
        None if nested => t.primary_key.clone(),
        None => Vec::new(),
    };
    if t.primary_key.is_empty() {
        return Err(format!(
            "`{}` has no primary key: a document needs one to tell its rows apart",
            t.qualified_name()
        ));
    }
    Ok(Node {
        table: t.qualified_name(),
        field,
        nested,
        parent,
        children: Vec::new(),
        on,
        key: t.primary_key.clone(),
        column_names: columns.iter().map(|&i| t.columns[i].name.clone()).collect(),
        columns,
        order_by,
        stored: Vec::new(),
        stored_names: Vec::new(),
    })
}

/// Where column `name` sits in `t`.
fn column(t: &TableSchema, name: &str) -> Result<usize, String> {
    t.columns
        .iter()
        .position(|k| k.name == name)
        .ok_or_else(|| format!("`{}` has no column `{name}`", t.qualified_name()))
}
