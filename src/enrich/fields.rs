//! The field enrichers: `meta` (event metadata as fields), `rename`, `drop` and `set`
//! (a constant).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::config::{Kind, Tables};
use super::{Binding, Enricher, EventMeta, Layout};
use crate::event::{Row, Value};

/// `kind = "meta"`: `fields = { table = "_table", op = "_op", ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    /// Metadata name -> field name.
    pub fields: BTreeMap<String, String>,
}

/// What `meta` can add, and the field type of each.
const META: &[(&str, &str)] = &[
    ("connector", "keyword"),
    ("source_kind", "keyword"),
    ("db", "keyword"),
    ("table", "keyword"),
    ("op", "keyword"),
    ("commit_ts", "date"),
    ("position", "keyword"),
    ("txid", "keyword"),
    ("schema_version", "long"),
    ("version", "long"),
];

pub struct Meta {
    /// (metadata name, field name), in name order.
    fields: Vec<(&'static str, String)>,
}

impl Meta {
    pub fn new(c: &MetaConfig) -> Result<Meta, String> {
        let mut fields = Vec::new();
        for (name, field) in &c.fields {
            let Some((known, _)) = META.iter().find(|(m, _)| m == name) else {
                return Err(format!(
                    "unknown metadata `{name}`; one of: {}",
                    META.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
                ));
            };
            fields.push((*known, field.clone()));
        }
        Ok(Meta { fields })
    }
}

impl Enricher for Meta {
    fn append_only(&self) -> bool {
        true
    }

    fn may_fail(&self) -> bool {
        false
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let mut layout = input.clone();
        for (name, field) in &self.fields {
            let ty = META.iter().find(|m| m.0 == *name).expect("checked").1;
            layout.add(field, ty)?;
        }
        Ok(Binding {
            at: Vec::new(),
            layout,
        })
    }

    fn apply(
        &mut self,
        _b: &Binding,
        meta: &EventMeta<'_>,
        row: &mut Row,
        _flags: &mut Vec<String>,
    ) -> Result<(), String> {
        let e = meta.event;
        for (name, _) in &self.fields {
            row.push(match *name {
                "connector" => Value::String(e.table.connector.to_string()),
                "source_kind" => Value::String(e.table.kind.to_string()),
                "db" => Value::String(e.table.db.clone()),
                "table" => Value::String(e.table.table.clone()),
                "op" => Value::String(e.op.code().to_string()),
                "commit_ts" => crate::temporal::utc_from_ms(e.source_ts_ms),
                "position" => Value::String(e.pos.to_string()),
                "txid" => e
                    .txid
                    .as_ref()
                    .map_or(Value::Null, |t| Value::String(t.to_string())),
                "schema_version" => Value::Int(e.table.schema_version as i64),
                "version" => Value::UInt(e.version),
                _ => unreachable!("checked in new"),
            });
        }
        Ok(())
    }
}

/// `kind = "rename"`: `columns = { old = "new" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    pub columns: BTreeMap<String, String>,
}

pub struct Rename {
    columns: Vec<(String, String)>,
}

impl Rename {
    pub fn new(c: &RenameConfig) -> Result<Rename, String> {
        if c.columns.is_empty() {
            return Err("`columns` names no column: { old = \"new\" }".into());
        }
        Ok(Rename {
            columns: c.columns.clone().into_iter().collect(),
        })
    }
}

impl Enricher for Rename {
    fn append_only(&self) -> bool {
        true
    }

    fn may_fail(&self) -> bool {
        false
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let mut layout = input.clone();
        for (old, new) in &self.columns {
            let i = input.require(old)?;
            if layout.position(new).is_some() {
                return Err(format!("cannot rename `{old}` to `{new}`: `{new}` exists"));
            }
            layout.columns[i].name = new.clone();
        }
        Ok(Binding {
            at: Vec::new(),
            layout,
        })
    }

    fn apply(
        &mut self,
        _b: &Binding,
        _meta: &EventMeta<'_>,
        _row: &mut Row,
        _flags: &mut Vec<String>,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// `kind = "drop"`: `columns = ["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    pub columns: Vec<String>,
}

pub struct Drop {
    columns: Vec<String>,
}

impl Drop {
    pub fn new(c: &DropConfig) -> Drop {
        Drop {
            columns: c.columns.clone(),
        }
    }
}

impl Enricher for Drop {
    fn may_fail(&self) -> bool {
        false
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let mut at = Vec::new();
        for c in &self.columns {
            let i = input.require(c)?;
            if input.key.contains(&i) {
                return Err(format!(
                    "`{c}` is part of the key (documents are found by it)"
                ));
            }
            at.push(i);
        }
        at.sort_unstable();
        at.dedup();
        let keep = |i: usize| !at.contains(&i);
        let columns = input
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, c)| c.clone())
            .collect();
        // Key positions shift left past each dropped column.
        let key = input
            .key
            .iter()
            .map(|&k| k - at.iter().filter(|&&d| d < k).count())
            .collect();
        Ok(Binding {
            at,
            layout: Layout { columns, key },
        })
    }

    fn apply(
        &mut self,
        b: &Binding,
        _meta: &EventMeta<'_>,
        row: &mut Row,
        _flags: &mut Vec<String>,
    ) -> Result<(), String> {
        for &i in b.at.iter().rev() {
            row.remove(i);
        }
        Ok(())
    }
}

/// `kind = "set"`: `fields = { region = "eu", weight = 1.5 }` (string, integer, float
/// or boolean constants).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    pub fields: BTreeMap<String, toml::Value>,
}

pub struct Set {
    fields: Vec<(String, &'static str, Value)>,
}

impl Set {
    pub fn new(c: &SetConfig) -> Result<Set, String> {
        let mut fields = Vec::new();
        for (name, v) in &c.fields {
            let (ty, value) = match v {
                toml::Value::String(s) => ("keyword", Value::String(s.clone())),
                toml::Value::Integer(i) => ("long", Value::Int(*i)),
                toml::Value::Float(f) => ("double", Value::Double(*f)),
                toml::Value::Boolean(b) => ("boolean", Value::Bool(*b)),
                other => {
                    return Err(format!(
                        "field `{name}`: {} is not a constant this step sets (string, integer, float or boolean)",
                        other.type_str()
                    ))
                }
            };
            fields.push((name.clone(), ty, value));
        }
        Ok(Set { fields })
    }
}

impl Enricher for Set {
    fn append_only(&self) -> bool {
        true
    }

    fn may_fail(&self) -> bool {
        false
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let mut layout = input.clone();
        for (name, ty, _) in &self.fields {
            layout.add(name, ty)?;
        }
        Ok(Binding {
            at: Vec::new(),
            layout,
        })
    }

    fn apply(
        &mut self,
        _b: &Binding,
        _meta: &EventMeta<'_>,
        row: &mut Row,
        _flags: &mut Vec<String>,
    ) -> Result<(), String> {
        row.extend(self.fields.iter().map(|f| f.2.clone()));
        Ok(())
    }
}

impl Kind for MetaConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(Meta::new(self)?))
    }
}

impl Kind for RenameConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(Rename::new(self)?))
    }
}

impl Kind for DropConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(Drop::new(self)))
    }
}

impl Kind for SetConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(Set::new(self)?))
    }
}
