//! Joined documents (`[[document]]`): one search document built from several tables,
//! maintained from the change stream like a materialized view (docs/DESIGN.md,
//! "Joined documents").
//!
//! This room holds the definition: what a connector file says (`DocumentConfig`), the
//! checks that need only the file (names, shape, depth, cycles) and the checks against
//! the tables' schemas (unknown tables and columns, an embed joined on a key of its
//! table). Each error names the file, line and column of what it is about.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::event::TableSchema;
use crate::settings::{line_col, ConfigError};

mod codec;
pub mod stage;
pub mod state;
pub mod tree;

/// How deep embeds and nests may go below the root.
pub const MAX_LEVELS: usize = 4;

/// One `[[document]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentConfig {
    /// The index alias (the concrete index is `<name>_v1` behind it).
    pub name: Spanned<String>,
    /// `db.table`: one document per row of it, `_id` its key.
    pub root: Spanned<String>,
    #[serde(default)]
    pub embed: Vec<RelationConfig>,
    #[serde(default)]
    pub nest: Vec<RelationConfig>,
}

/// A `[[document.embed]]` (many-to-one: an object or null) or `[[document.nest]]`
/// (one-to-many: an array), at any level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationConfig {
    /// The field of the enclosing object that holds it.
    pub field: Spanned<String>,
    /// `db.table` the rows come from.
    pub from: Spanned<String>,
    /// column of the enclosing row = column of `from`, one pair per join column.
    pub on: Spanned<BTreeMap<String, String>>,
    /// The columns of `from` in the object; default every column.
    #[serde(default)]
    pub columns: Option<Spanned<Vec<String>>>,
    /// A nest's order; default the key of `from`. Not for embeds.
    #[serde(default)]
    pub order_by: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub embed: Vec<RelationConfig>,
    #[serde(default)]
    pub nest: Vec<RelationConfig>,
}

/// Many-to-one or one-to-many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Embed,
    Nest,
}

impl Shape {
    fn section(self) -> &'static str {
        match self {
            Shape::Embed => "embed",
            Shape::Nest => "nest",
        }
    }
}

impl RelationConfig {
    /// The relations one level down, each with its shape.
    fn children(&self) -> impl Iterator<Item = (Shape, &RelationConfig)> {
        relations(&self.embed, &self.nest)
    }
}

impl DocumentConfig {
    /// The relations right below the root, each with its shape.
    pub fn children(&self) -> impl Iterator<Item = (Shape, &RelationConfig)> {
        relations(&self.embed, &self.nest)
    }

    /// Every table the document reads: the root's, then each relation's, depth first.
    pub fn tables(&self) -> Vec<&str> {
        std::iter::once(&self.root)
            .chain(self.relation_tables())
            .map(|t| t.get_ref().as_str())
            .collect()
    }

    /// Each relation's `from`, depth first, as written.
    fn relation_tables(&self) -> Vec<&Spanned<String>> {
        let mut out = Vec::new();
        let mut stack: Vec<&RelationConfig> = self.children().map(|(_, r)| r).collect();
        stack.reverse();
        while let Some(r) = stack.pop() {
            out.push(&r.from);
            let mut below: Vec<&RelationConfig> = r.children().map(|(_, c)| c).collect();
            below.reverse();
            stack.extend(below);
        }
        out
    }
}

fn relations<'a>(
    embed: &'a [RelationConfig],
    nest: &'a [RelationConfig],
) -> impl Iterator<Item = (Shape, &'a RelationConfig)> {
    embed
        .iter()
        .map(|r| (Shape::Embed, r))
        .chain(nest.iter().map(|r| (Shape::Nest, r)))
}

/// Places errors in the connector file.
struct At<'a> {
    path: &'a Path,
    text: &'a str,
}

impl At<'_> {
    fn error<T>(&self, what: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line_col: Some(line_col(self.text, what.span().start)),
            message: message.into(),
        }
    }
}

/// The checks that need only the connector file: names, the `db.table` form, fields,
/// `on` pairs, `order_by` on nests only, at most `MAX_LEVELS` levels, no table joined
/// below itself (a cycle), no two documents of one name.
pub fn check_definitions(
    path: &Path,
    text: &str,
    documents: &[DocumentConfig],
) -> Result<(), ConfigError> {
    let at = At { path, text };
    let mut names = HashSet::new();
    for d in documents {
        let name = d.name.get_ref();
        if let Some(why) = invalid_name(name) {
            return Err(at.error(&d.name, format!("[[document]] name {why}")));
        }
        if !names.insert(name.as_str()) {
            return Err(at.error(
                &d.name,
                format!("two [[document]] entries are named `{name}`: each is an index alias of its own"),
            ));
        }
        qualified(&at, &d.root, "root")?;
        let mut path = vec![d.root.get_ref().as_str()];
        check_level(&at, name, d.children(), &mut path)?;
    }
    Ok(())
}

/// One level's relations (and, depth first, theirs). `path` holds the tables from the
/// root down to the enclosing one.
fn check_level<'a>(
    at: &At<'_>,
    document: &str,
    relations: impl Iterator<Item = (Shape, &'a RelationConfig)>,
    path: &mut Vec<&'a str>,
) -> Result<(), ConfigError> {
    let mut fields = HashSet::new();
    for (shape, r) in relations {
        let section = shape.section();
        let field = r.field.get_ref();
        if field.is_empty() || field.starts_with('_') || field.contains('.') {
            return Err(at.error(
                &r.field,
                format!("[[document.{section}]] field `{field}` of document `{document}`: a field name is not empty, does not start with `_` and has no `.`"),
            ));
        }
        if !fields.insert(field.as_str()) {
            return Err(at.error(
                &r.field,
                format!("document `{document}`: two embeds or nests at one level write the field `{field}`"),
            ));
        }
        let from = qualified(at, &r.from, "from")?;
        if path.len() > MAX_LEVELS {
            return Err(at.error(
                &r.from,
                format!("document `{document}`: `{from}` is {} levels below the root; embeds and nests go {MAX_LEVELS} levels deep at most", path.len()),
            ));
        }
        if let Some(i) = path.iter().position(|t| *t == from) {
            let chain = path[i..].join(" -> ");
            return Err(at.error(
                &r.from,
                format!("document `{document}`: `{from}` is joined below itself ({chain} -> {from}), a cycle; a document is a tree of distinct tables"),
            ));
        }
        if r.on.get_ref().is_empty() {
            return Err(at.error(
                &r.on,
                format!("document `{document}`, field `{field}`: `on` names no columns; write `on = {{ enclosing_column = \"column_of_{}\" }}`", r.from.get_ref().rsplit('.').next().unwrap_or("from")),
            ));
        }
        if let (Shape::Embed, Some(order)) = (shape, &r.order_by) {
            return Err(at.error(
                order,
                format!("document `{document}`, field `{field}`: an embed is one object (or null) and has no order; `order_by` is for [[document.nest]]"),
            ));
        }
        path.push(from);
        check_level(at, document, r.children(), path)?;
        path.pop();
    }
    Ok(())
}

/// Why `name` cannot name a document's alias; None when it can. Stricter than
/// Elasticsearch (which also takes some punctuation), so the name is the same
/// everywhere it appears: index, metrics, log events.
fn invalid_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !name.starts_with(['_', '-']);
    (!ok).then(|| {
        format!("`{name}` is not a valid alias: use lowercase letters, digits, `_` and `-` (not first), at most 200 characters")
    })
}

/// A `db.table` setting.
fn qualified<'a>(at: &At<'_>, v: &'a Spanned<String>, key: &str) -> Result<&'a str, ConfigError> {
    let s = v.get_ref();
    match s.split_once('.') {
        Some((db, t)) if !db.is_empty() && !t.is_empty() && !t.contains('.') => Ok(s),
        _ => Err(at.error(
            v,
            format!("[[document]] {key} = \"{s}\": write the table as `db.table` (PostgreSQL: `schema.table`)"),
        )),
    }
}

/// Every table `document` reads is captured: `captured("db.table")` says whether the
/// source's include/exclude lists take it.
pub fn check_captured(
    path: &Path,
    text: &str,
    document: &DocumentConfig,
    captured: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let at = At { path, text };
    let mut tables = std::iter::once(&document.root).chain(document.relation_tables());
    match tables.find(|t| !captured(t.get_ref())) {
        Some(t) => Err(at.error(
            t,
            format!("document `{}` reads `{}`, which the source does not capture: add it to [source] include (a document needs every table it reads in the stream)", document.name.get_ref(), t.get_ref()),
        )),
        None => Ok(()),
    }
}

/// A table as the checks against the server see it: its schema and the columns of each
/// of its unique indexes besides the primary key.
pub type Catalogued<'s> = (&'s TableSchema, &'s [Vec<String>]);

/// The checks against the tables' current schemas (`schema_of` looks a `db.table` up;
/// None: the server has no such table): every column named in `on`, `columns` and
/// `order_by` exists on its side, and an embed's `from` side of `on` holds the key or a
/// unique index of its table (so at most one row matches).
pub fn check_against_schemas<'s>(
    path: &Path,
    text: &str,
    document: &DocumentConfig,
    schema_of: &dyn Fn(&str) -> Option<Catalogued<'s>>,
) -> Result<(), ConfigError> {
    let at = At { path, text };
    let name = document.name.get_ref();
    let table = |v: &Spanned<String>| {
        schema_of(v.get_ref()).ok_or_else(|| {
            at.error(
                v,
                format!("document `{name}` reads `{}`, which the server does not have (or tributary's user cannot see)", v.get_ref()),
            )
        })
    };
    let (root, _) = table(&document.root)?;
    let mut stack: Vec<(&TableSchema, Shape, &RelationConfig)> =
        document.children().map(|(s, r)| (root, s, r)).collect();
    while let Some((enclosing, shape, r)) = stack.pop() {
        let (from, unique) = table(&r.from)?;
        let field = r.field.get_ref();
        let missing = |t: &TableSchema, cols: &mut dyn Iterator<Item = &String>| {
            for c in cols {
                if !t.columns.iter().any(|k| &k.name == c) {
                    return Some(format!(
                        "document `{name}`, field `{field}`: `{}` has no column `{c}`",
                        t.qualified_name()
                    ));
                }
            }
            None
        };
        let on = r.on.get_ref();
        if let Some(m) =
            missing(enclosing, &mut on.keys()).or_else(|| missing(from, &mut on.values()))
        {
            return Err(at.error(&r.on, m));
        }
        for list in [&r.columns, &r.order_by].into_iter().flatten() {
            if let Some(m) = missing(from, &mut list.get_ref().iter()) {
                return Err(at.error(list, m));
            }
        }
        if shape == Shape::Embed {
            // At most one row matches when the joined columns hold every column of the
            // key or of a unique index (a NULL joins nothing, so nullable ones do too).
            let key: Vec<&str> = from
                .primary_key
                .iter()
                .map(|&i| from.columns[i].name.as_str())
                .collect();
            let joined: HashSet<&str> = on.values().map(String::as_str).collect();
            let keys = std::iter::once(key.clone())
                .filter(|k| !k.is_empty())
                .chain(
                    unique
                        .iter()
                        .map(|u| u.iter().map(String::as_str).collect()),
                );
            let candidates: Vec<Vec<&str>> = keys.collect();
            if !candidates
                .iter()
                .any(|k| k.iter().all(|c| joined.contains(c)))
            {
                let named = if candidates.is_empty() {
                    "it has neither a key nor a unique index".to_string()
                } else {
                    candidates
                        .iter()
                        .map(|k| format!("({})", k.join(", ")))
                        .collect::<Vec<_>>()
                        .join(" or ")
                };
                return Err(at.error(
                    &r.on,
                    format!("document `{name}`, embed `{field}`: `on` must join the key or a unique index of `{}` so that at most one row matches: {named}; for many rows use [[document.nest]]", from.qualified_name()),
                ));
            }
        }
        stack.extend(r.children().map(|(s, c)| (from, s, c)));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
