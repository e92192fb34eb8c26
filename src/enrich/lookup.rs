//! `kind = "lookup"` (content enricher): fields from another table of the source
//! database, by a key in the row:
//!
//! ```toml
//! [[enrich]]
//! table = "shop.orders"
//! kind = "lookup"
//! from = "shop.customers"
//! on = { customer_id = "id" }        # row column = looked-up key column
//! fields = { name = "customer_name" } # looked-up column = new field
//! ```
//!
//! Looked-up rows sit in a bounded LRU cache (`cache_size`, `ttl_secs`). The stage
//! fetches what a batch misses in one query per step before applying it (`prefetch`),
//! so throughput does not fall to one query per row. When the looked-up table is
//! captured too, its changes in the stream update the cache as they pass, so a row
//! enriched right after a looked-up row changed gets the new values. New fields keep
//! the looked-up columns' types (and mappings).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::Deserialize;

use super::config::{Kind, Tables};
use super::{Binding, Enricher, EventMeta, Layout};
use crate::event::{ChangeEvent, Column, Op, Row, TableSchema, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    /// The looked-up table, `db.table`.
    pub from: String,
    /// One pair: the row's column = the looked-up table's key column.
    pub on: BTreeMap<String, String>,
    /// Looked-up column = new field.
    pub fields: BTreeMap<String, String>,
    #[serde(default = "default_cache")]
    pub cache_size: usize,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_cache() -> usize {
    10_000
}
fn default_ttl() -> u64 {
    300
}

struct Cached {
    at: Instant,
    /// The `fields` values; None: no such row.
    values: Option<Row>,
}

pub struct Lookup {
    cfg: LookupConfig,
    /// The row's column and the looked-up key column.
    on: (String, String),
    /// (looked-up column, its type, new field), in `fields` order.
    fields: Vec<(String, String, String)>,
    cache: LruCache<CacheKey, Cached>,
    ttl: Duration,
    /// `from` split at its dot, to tell the looked-up table's changes cheaply.
    from: (String, String),
    /// The current batch's clock reading (the stage sets it): one per batch, not one
    /// per row.
    now: Instant,
}

/// A cache key: integers (the usual key) without formatting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Int(i64),
    UInt(u64),
    Text(String),
}

fn cache_key(v: &Value) -> CacheKey {
    match v {
        Value::Int(i) => CacheKey::Int(*i),
        Value::UInt(u) if *u <= i64::MAX as u64 => CacheKey::Int(*u as i64),
        Value::UInt(u) => CacheKey::UInt(*u),
        Value::String(s) => CacheKey::Text(s.clone()),
        other => CacheKey::Text(other.to_json()),
    }
}

/// What can be checked without the source: the shape of the entry.
pub fn check(c: &LookupConfig) -> Result<(), String> {
    if c.on.len() != 1 {
        return Err("`on` takes one pair: { row_column = \"key_column\" }".into());
    }
    if c.fields.is_empty() {
        return Err("`fields` names no column: { column = \"new_field\" }".into());
    }
    if c.cache_size == 0 {
        return Err("`cache_size` must be at least 1".into());
    }
    Ok(())
}

impl Lookup {
    /// `columns`: the looked-up table's columns, as the source describes them.
    pub fn new(c: &LookupConfig, columns: &[Column]) -> Result<Lookup, String> {
        check(c)?;
        let on =
            c.on.iter()
                .next()
                .map(|(a, b)| (a.clone(), b.clone()))
                .expect("one");
        let has = |name: &str| columns.iter().find(|col| col.name == name);
        if has(&on.1).is_none() {
            return Err(format!("{} has no column `{}`", c.from, on.1));
        }
        let mut fields = Vec::new();
        for (col, field) in &c.fields {
            let Some(column) = has(col) else {
                return Err(format!("{} has no column `{col}`", c.from));
            };
            fields.push((col.clone(), column.type_name.clone(), field.clone()));
        }
        let size = NonZeroUsize::new(c.cache_size).ok_or("`cache_size` must be at least 1")?;
        Ok(Lookup {
            cfg: c.clone(),
            on,
            fields,
            cache: LruCache::new(size),
            ttl: Duration::from_secs(c.ttl_secs),
            from: c
                .from
                .split_once('.')
                .map(|(d, t)| (d.to_string(), t.to_string()))
                .unwrap_or_default(),
            now: Instant::now(),
        })
    }

    /// The looked-up table and its key column, for fetching.
    pub fn source(&self) -> (&str, &str) {
        (&self.cfg.from, &self.on.1)
    }

    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    fn fresh(&self, key: &Value) -> bool {
        self.cache
            .peek(&cache_key(key))
            .is_some_and(|c| self.now.saturating_duration_since(c.at) < self.ttl)
    }

    /// The key `row` (of `table`, as the source sent it) needs when it is not cached:
    /// for fetching a batch's misses at once.
    pub fn prefetch_key(&self, table: &TableSchema, row: &Row) -> Option<Value> {
        let i = table.columns.iter().position(|c| c.name == self.on.0)?;
        self.missing(&row[i])
    }

    /// The key a bound row needs when it is not cached (fetched before `apply`).
    pub fn needs(&self, b: &Binding, row: &Row) -> Option<Value> {
        self.missing(&row[b.at[0]])
    }

    /// `key`, when it is a key (not null, not absent) the cache lacks or holds stale.
    fn missing(&self, key: &Value) -> Option<Value> {
        (!matches!(key, Value::Null | Value::Absent) && !self.fresh(key)).then(|| key.clone())
    }

    /// Fetched rows (whole, in the looked-up table's column order `columns`) for
    /// `keys`; keys without a row are cached as missing.
    pub fn provide(&mut self, columns: &[Column], keys: &[Value], rows: Vec<Row>) {
        let now = self.now;
        let key_at = columns.iter().position(|c| c.name == self.on.1);
        let picks: Vec<Option<usize>> = self
            .fields
            .iter()
            .map(|(col, _, _)| columns.iter().position(|c| c.name == *col))
            .collect();
        for k in keys {
            self.cache.put(
                cache_key(k),
                Cached {
                    at: now,
                    values: None,
                },
            );
        }
        for row in rows {
            let Some(k) = key_at.map(|i| cache_key(&row[i])) else {
                continue;
            };
            let values = picks
                .iter()
                .map(|p| p.map_or(Value::Null, |i| row[i].clone()))
                .collect();
            self.cache.put(
                k,
                Cached {
                    at: now,
                    values: Some(values),
                },
            );
        }
    }

    /// A captured change of the looked-up table: the cache follows it.
    pub fn observe(&mut self, e: &ChangeEvent) {
        if e.table.table != self.from.1 || e.table.db != self.from.0 {
            return;
        }
        let cols = &e.table.columns;
        let Some(key_at) = cols.iter().position(|c| c.name == self.on.1) else {
            return;
        };
        if let Some(before) = &e.before {
            if !matches!(before[key_at], Value::Absent) {
                self.cache.pop(&cache_key(&before[key_at]));
            }
        }
        let Some(after) = e.after.as_ref().filter(|_| e.op != Op::Delete) else {
            return;
        };
        let values: Option<Row> = self
            .fields
            .iter()
            .map(|(col, _, _)| {
                cols.iter()
                    .position(|c| c.name == *col)
                    .map(|i| after[i].clone())
                    .filter(|v| !matches!(v, Value::Absent))
            })
            .collect();
        // A value the change did not carry (an unchanged TOASTed column): fetch again.
        if let Some(values) = values {
            self.cache.put(
                cache_key(&after[key_at]),
                Cached {
                    at: self.now,
                    values: Some(values),
                },
            );
        }
    }
}

impl Enricher for Lookup {
    fn append_only(&self) -> bool {
        true
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let at = vec![input.require(&self.on.0)?];
        let mut layout = input.clone();
        for (_, ty, field) in &self.fields {
            if layout.position(field).is_some() {
                return Err(format!(
                    "field `{field}` exists already: choose another name"
                ));
            }
            // The looked-up column's own type: mapped like it.
            layout.columns.push(Column {
                name: field.clone(),
                type_name: ty.clone(),
            });
        }
        Ok(Binding { at, layout })
    }

    fn apply(
        &mut self,
        b: &Binding,
        _meta: &EventMeta<'_>,
        row: &mut Row,
        _flags: &mut Vec<String>,
    ) -> Result<(), String> {
        let key = &row[b.at[0]];
        if matches!(key, Value::Absent) {
            row.extend(self.fields.iter().map(|_| Value::Absent));
            return Ok(());
        }
        if matches!(key, Value::Null) {
            row.extend(self.fields.iter().map(|_| Value::Null));
            return Ok(());
        }
        match self.cache.get(&cache_key(key)) {
            Some(c) => {
                match &c.values {
                    Some(v) => row.extend(v.iter().cloned()),
                    None => row.extend(self.fields.iter().map(|_| Value::Null)),
                }
                Ok(())
            }
            None => Err(format!(
                "no {} row fetched for {} = {}",
                self.cfg.from,
                self.on.1,
                key.to_json()
            )),
        }
    }

    fn as_lookup(&mut self) -> Option<&mut Lookup> {
        Some(self)
    }
}
impl Kind for LookupConfig {
    /// Built by the stage, which asks the source for the looked-up table.
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Err("built by the stage".into())
    }

    fn check(&self) -> Result<(), String> {
        check(self)
    }
}
