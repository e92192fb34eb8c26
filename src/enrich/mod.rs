//! Enrichment: declarative steps between the schema guard and the sinks.
//!
//! Each `[[enrich]]` entry of the connector file names a table (or a glob) and a kind;
//! the entries that match a table form its chain, applied in file order to the `after`
//! and `before` images of its changes. An enricher is bound once per table layout
//! (`Enricher::bind`: which columns it reads, the layout after it) and then rewrites
//! rows of that layout (`Enricher::apply`). Adding a kind is a new file here and one
//! line in `config::build`.
//!
//! A step that fails on an event (a compute error, a value it cannot use) sends the
//! event to the enrichment dead-letter stream with the reason and the step, counts it,
//! and the pipeline goes on; a step that cannot bind to a table (a column it needs is
//! missing) is a configuration error and stops the daemon with the entry's file:line.

mod compute;
pub mod config;
mod dead_letters;
mod fields;
mod geo;
mod lookup;
mod track;

use std::collections::HashMap;
use std::sync::Arc;

pub use config::EnrichConfig;
pub use dead_letters::DeadLetters;

use crate::event::{ChangeEvent, Column, Row, SourceMessage, TableSchema, Value};
use crate::journal::JournalError;

/// The id the dead-letter stream's cursor is stored under.
pub const DEAD_LETTERS_ID: &str = "enrich-dead-letters";

/// The field flagged events carry their flags in (`["geo_point_invalid:location"]`).
pub const FLAGS_FIELD: &str = "_flags";

/// Type names of the fields enrichers add: `es:<Elasticsearch type>`, mapped as that
/// type (sink::elasticsearch::mapping), never mistaken for a source type.
pub fn field_type(es_type: &str) -> String {
    format!("es:{es_type}")
}

/// The `[[enrich]]` entries that apply to `db.table`, in order, as written: what the
/// enrichment stage does to the table's documents (sinks fingerprint it, so `check`
/// can tell an index written before the entries changed).
pub fn written_for(entries: &[EnrichConfig], db: &str, table: &str) -> serde_json::Value {
    entries
        .iter()
        .filter(|e| e.tables().matches(db, table))
        .map(|e| serde_json::json!({"kind": e.kind(), "entry": e.written}))
        .collect()
}

/// A table's columns and key as a step sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub columns: Vec<Column>,
    pub key: Vec<usize>,
}

impl Layout {
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The position of a column a step reads, or why it cannot bind.
    pub fn require(&self, name: &str) -> Result<usize, String> {
        self.position(name).ok_or_else(|| {
            format!(
                "no column `{name}` (the table has: {})",
                self.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// Adds a field at the end; an existing column of that name is an error (a step
    /// never overwrites source data silently).
    pub fn add(&mut self, name: &str, es_type: &str) -> Result<usize, String> {
        if self.position(name).is_some() {
            return Err(format!(
                "field `{name}` exists already: choose another name"
            ));
        }
        self.columns.push(Column {
            name: name.to_string(),
            type_name: field_type(es_type),
        });
        Ok(self.columns.len() - 1)
    }
}

/// A step bound to one layout: the positions it reads (in its own order) and the
/// layout after it.
#[derive(Debug, Clone)]
pub struct Binding {
    pub at: Vec<usize>,
    pub layout: Layout,
}

/// What a step may read about the event besides the row.
pub struct EventMeta<'a> {
    pub event: &'a ChangeEvent,
    /// The row is the `after` image (else `before`).
    pub after: bool,
}

/// One enrichment kind.
pub trait Enricher: Send {
    /// Binds to a table layout (once per layout).
    fn bind(&self, input: &Layout) -> Result<Binding, String>;

    /// Rewrites one row image of the bound layout in place (its length becomes the
    /// output layout's). `flags` collects the event's flags. Err: the event goes to the
    /// dead-letter stream with the reason.
    fn apply(
        &mut self,
        b: &Binding,
        meta: &EventMeta<'_>,
        row: &mut Row,
        flags: &mut Vec<String>,
    ) -> Result<(), String>;

    /// Whether it may flag events (the chain then adds `_flags`).
    fn flags(&self) -> bool {
        false
    }

    /// Whether `apply` may fail (the event then goes to the dead letters as the source
    /// gave it, for `dead-letters replay`); steps that never fail say so.
    fn may_fail(&self) -> bool {
        true
    }

    /// Whether `apply` only appends values, leaving the row's values before them as
    /// they were. In a chain of such steps a failed event's source rows are its rows
    /// cut back to the source's width; a chain with another step (`drop`) and a step
    /// that may fail keeps a copy of each event's source rows instead.
    fn append_only(&self) -> bool {
        false
    }

    /// Steps that keep state per key (`track`) implement the rest. The state as of the
    /// last transaction boundary is stored with each checkpoint, so a restart (which
    /// replays from the checkpoint) gives the output of an uninterrupted run.
    ///
    /// A stable name the state is stored under (None: stateless).
    fn state_owner(&self) -> Option<String> {
        None
    }

    /// At startup: the reader of the state stored under `state_owner` (as of the last
    /// checkpoint). Steps read it as keys come, so the state in memory can stay
    /// bounded (the store holds every key).
    fn restore(&mut self, _stored: StoredKeys) {}

    /// A transaction boundary: what changed belongs to the next checkpoint.
    fn commit(&mut self) {}

    /// The open transaction's changes are dropped (its events come again).
    fn rewind(&mut self) {}

    /// The keys changed since the last call, with their values as of the last
    /// boundary (None: removed).
    fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        Vec::new()
    }

    /// The lookup step (the stage fetches its rows).
    fn as_lookup(&mut self) -> Option<&mut lookup::Lookup> {
        None
    }
}

/// Reads a stateful step's keys from the offsets store, as of the last checkpoint.
#[derive(Clone)]
pub struct StoredKeys {
    store: Arc<crate::offsets::OffsetStore>,
    owner: String,
}

impl StoredKeys {
    pub fn new(store: Arc<crate::offsets::OffsetStore>, owner: String) -> Self {
        StoredKeys { store, owner }
    }

    /// The stored value of `key`; Err names the state dir.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .keyed_get(&self.owner, key)
            .map_err(|e| format!("reading the stored state of {}: {e}", self.owner))
    }
}

/// One `[[enrich]]` entry, built.
struct Step {
    /// `file:line kind` for messages.
    origin: String,
    tables: crate::source::filter::TableFilter,
    enricher: Box<dyn Enricher>,
    /// For lookups: the looked-up table's columns (the order fetched rows come in).
    from_columns: Vec<Column>,
}

/// A table layout's chain: the steps that apply, bound, and the schema after them.
struct Chain {
    /// Keeps the source schema alive, so its address stays its key.
    _source: Arc<TableSchema>,
    schema: Arc<TableSchema>,
    steps: Vec<(usize, Binding)>,
    /// A step may flag events: the last field is `_flags`.
    flags: bool,
    /// A step may fail and one rewrites values in place: the events' source rows are
    /// kept until the chain is done (by the time a step fails, the steps before it, or
    /// it on the other image, have rewritten them).
    keep_source: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("{0}")]
    Config(String),
    /// The dead-letter stream could not be written.
    #[error(transparent)]
    DeadLetters(#[from] JournalError),
}

/// The enrichment stage of a pipeline.
pub struct Stage {
    steps: Vec<Step>,
    /// By the address of the source schema.
    chains: HashMap<usize, Option<Arc<Chain>>>,
    dead: Option<DeadLetters>,
    /// Reads looked-up rows (when a step looks up).
    lookups: Option<Arc<dyn crate::source::Lookup>>,
    /// Lookups applied and keys fetched for them, this run (for the hit rate).
    looked_up: u64,
    fetched: u64,
}

/// Keys per lookup query.
const LOOKUP_BATCH: usize = 500;

/// Table layouts whose chains are kept bound.
const MAX_CHAINS: usize = 4096;

impl Stage {
    /// The stage for the `[[enrich]]` entries of the connector file `file`; the
    /// dead-letter stream is opened in `dead_letters` at its stored cursor (only when
    /// there are entries). `lookups` gives the source's row reader, asked for only when
    /// a step looks up.
    pub async fn open(
        entries: &[EnrichConfig],
        file: &std::path::Path,
        dead_letters: &crate::journal::Settings,
        lookups: impl FnOnce() -> Arc<dyn crate::source::Lookup>,
        store: &Arc<crate::offsets::OffsetStore>,
    ) -> Result<Stage, EnrichError> {
        let mut stage = Stage::detached(entries, file, lookups, Some(store)).await?;
        if !stage.steps.is_empty() {
            let cursor = store
                .sink_cursor(DEAD_LETTERS_ID)
                .map_err(|e| EnrichError::Config(e.to_string()))?;
            stage.dead = Some(DeadLetters::open(dead_letters, cursor)?);
        }
        Ok(stage)
    }

    /// The same steps without a dead-letter stream (an event a step fails on is only
    /// taken out) and, without `store`, without stored state (`tributary verify`,
    /// which runs beside the daemon: the daemon holds both).
    pub async fn detached(
        entries: &[EnrichConfig],
        file: &std::path::Path,
        lookups: impl FnOnce() -> Arc<dyn crate::source::Lookup>,
        store: Option<&Arc<crate::offsets::OffsetStore>>,
    ) -> Result<Stage, EnrichError> {
        let mut steps = Vec::new();
        let mut reader = Some(lookups);
        let mut lookups: Option<Arc<dyn crate::source::Lookup>> = None;
        for e in entries {
            let origin = format!("{}:{} {}", file.display(), e.line, e.kind());
            let (mut enricher, from_columns) = match &e.spec {
                config::Spec::Lookup(c) => {
                    let source =
                        lookups.get_or_insert_with(|| (reader.take().expect("asked for once"))());
                    let columns = source
                        .describe(&c.from)
                        .await
                        .map_err(|why| EnrichError::Config(format!("{origin}: {why}")))?
                        .ok_or_else(|| {
                            EnrichError::Config(format!(
                                "{origin}: table `{}` (from) does not exist in the source database",
                                c.from
                            ))
                        })?;
                    let l = lookup::Lookup::new(c, &columns)
                        .map_err(|why| EnrichError::Config(format!("{origin}: {why}")))?;
                    (Box::new(l) as Box<dyn Enricher>, columns)
                }
                _ => (e.build()?, Vec::new()),
            };
            if let (Some(owner), Some(store)) = (enricher.state_owner(), store) {
                enricher.restore(StoredKeys::new(store.clone(), owner));
            }
            steps.push(Step {
                origin,
                tables: e.tables(),
                enricher,
                from_columns,
            });
        }
        Ok(Stage {
            steps,
            lookups,
            ..Stage::none()
        })
    }

    /// The table as the sinks see it: its enriched layout (itself when no step
    /// applies).
    pub fn layout(&mut self, table: &Arc<TableSchema>) -> Result<Arc<TableSchema>, EnrichError> {
        Ok(match self.chain(table)? {
            Some(chain) => chain.schema.clone(),
            None => table.clone(),
        })
    }

    /// The fields of `table`'s enriched layout that steps keeping state per key add
    /// (`track`): they depend on the history of the key, not on the row alone.
    pub fn stateful_fields(
        &mut self,
        table: &Arc<TableSchema>,
    ) -> Result<Vec<String>, EnrichError> {
        let Some(chain) = self.chain(table)? else {
            return Ok(Vec::new());
        };
        let mut before: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let mut out = Vec::new();
        for (i, b) in &chain.steps {
            if self.steps[*i].enricher.state_owner().is_some() {
                out.extend(
                    b.layout
                        .columns
                        .iter()
                        .filter(|c| !before.contains(&c.name.as_str()))
                        .map(|c| c.name.clone()),
                );
            }
            before = b.layout.columns.iter().map(|c| c.name.as_str()).collect();
        }
        Ok(out)
    }

    /// A stage without steps: hands every batch on as it is.
    pub fn none() -> Stage {
        Stage {
            steps: Vec::new(),
            chains: HashMap::new(),
            dead: None,
            lookups: None,
            looked_up: 0,
            fetched: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Enriches the changes of `batch` in place (in order, with its boundaries);
    /// events a step failed on go to the dead-letter stream instead.
    pub async fn apply(
        &mut self,
        batch: Vec<SourceMessage>,
    ) -> Result<Vec<SourceMessage>, EnrichError> {
        if self.steps.is_empty() {
            return Ok(batch);
        }
        // One clock reading per batch for the lookup caches' TTL.
        let now = std::time::Instant::now();
        for s in self.steps.iter_mut() {
            if let Some(l) = s.enricher.as_lookup() {
                l.set_now(now);
            }
        }
        if self.lookups.is_some() {
            self.prefetch(&batch).await?;
        }
        // Rewritten where they lie; dead-lettered ones are taken out at the end.
        let mut batch = batch;
        let mut dead = Vec::new();
        for (n, m) in batch.iter_mut().enumerate() {
            match m {
                SourceMessage::Change(e) => {
                    // Lookups follow the looked-up table's changes as they pass.
                    for s in self.steps.iter_mut() {
                        if let Some(l) = s.enricher.as_lookup() {
                            l.observe(e);
                        }
                    }
                    if !self.enrich(e).await? {
                        dead.push(n);
                    }
                }
                SourceMessage::Commit(_) => {
                    if let Some(dead) = self.dead.as_mut() {
                        dead.commit();
                    }
                    for s in self.steps.iter_mut() {
                        s.enricher.commit();
                    }
                }
                SourceMessage::Rewind => {
                    if let Some(dead) = self.dead.as_mut() {
                        dead.rewind()?;
                    }
                    for s in self.steps.iter_mut() {
                        s.enricher.rewind();
                    }
                }
                _ => {}
            }
        }
        if !dead.is_empty() {
            let mut n = 0;
            batch.retain(|_| {
                n += 1;
                dead.binary_search(&(n - 1)).is_err()
            });
        }
        Ok(batch)
    }

    /// Fetches, one query per lookup step (in batches of keys), the looked-up rows the
    /// batch's changes need and the cache lacks. A failed fetch is left to `enrich`,
    /// which tries each event's key again and dead-letters the event if that fails.
    async fn prefetch(&mut self, batch: &[SourceMessage]) -> Result<(), EnrichError> {
        let mut wanted: HashMap<usize, Vec<Value>> = HashMap::new();
        for m in batch {
            let SourceMessage::Change(e) = m else {
                continue;
            };
            let Some(row) = e.after.as_ref() else {
                continue;
            };
            let Some(chain) = self.chain(&e.table)? else {
                continue;
            };
            for &(i, _) in &chain.steps {
                if let Some(l) = self.steps[i].enricher.as_lookup() {
                    if let Some(k) = l.prefetch_key(&e.table, row) {
                        wanted.entry(i).or_default().push(k);
                    }
                }
            }
        }
        for (i, mut keys) in wanted {
            keys.sort_by_cached_key(|k| k.to_json());
            keys.dedup();
            for chunk in keys.chunks(LOOKUP_BATCH) {
                if let Err(why) = self.fetch(i, chunk).await {
                    tracing::warn!(step = %self.steps[i].origin, error = %crate::privacy::text(&why), "lookup prefetch failed; each event tries its key again");
                }
            }
        }
        Ok(())
    }

    /// Fetches `keys` for lookup step `i` into its cache.
    async fn fetch(&mut self, i: usize, keys: &[Value]) -> Result<(), String> {
        let source = self.lookups.clone().expect("a lookup step has a source");
        let step = &mut self.steps[i];
        let l = step.enricher.as_lookup().expect("a lookup step");
        let (from, key) = l.source();
        let (from, key) = (from.to_string(), key.to_string());
        let rows = source
            .fetch(&from, &key, keys)
            .await
            .map_err(|f| f.to_string())?;
        self.fetched += keys.len() as u64;
        crate::metrics::enrich_lookup_fetches(&from, keys.len() as u64);
        let l = step.enricher.as_lookup().expect("a lookup step");
        l.provide(&step.from_columns, keys, rows);
        Ok(())
    }

    /// The chain for a table layout, bound on first sight.
    fn chain(&mut self, table: &Arc<TableSchema>) -> Result<Option<Arc<Chain>>, EnrichError> {
        let key = Arc::as_ptr(table) as usize;
        if !self.chains.contains_key(&key) {
            // Layouts come and go with reconnects and DDL; a long-lived daemon must
            // not keep every one it ever saw (binding again is cheap).
            if self.chains.len() >= MAX_CHAINS {
                self.chains.clear();
            }
            let chain = self.bind(table)?.map(Arc::new);
            self.chains.insert(key, chain);
        }
        Ok(self.chains.get(&key).cloned().flatten())
    }

    /// The keyed state changed since the last checkpoint, as of the last boundary, for
    /// the store (`<owner>\0<key>`).
    pub fn state_updates(&mut self) -> Vec<crate::offsets::StateUpdate> {
        let mut out = Vec::new();
        for s in self.steps.iter_mut() {
            let Some(owner) = s.enricher.state_owner() else {
                continue;
            };
            for (key, value) in s.enricher.take_changes() {
                out.push((format!("{owner}\0{key}"), value));
            }
        }
        out
    }

    /// Logs what the lookups did this run (at exit).
    pub fn log_summary(&self) {
        if self.looked_up > 0 {
            let hit_rate = 1.0 - self.fetched as f64 / self.looked_up as f64;
            tracing::info!(
                lookups = self.looked_up,
                fetched = self.fetched,
                hit_rate = (hit_rate * 1000.0).round() / 1000.0,
                "enrichment lookups"
            );
        }
    }

    /// The dead-letter stream's flush (None without steps).
    pub async fn flush(&mut self) -> Result<Option<crate::journal::Flushed>, JournalError> {
        match self.dead.as_mut() {
            Some(d) => Ok(Some(d.flush().await?)),
            None => Ok(None),
        }
    }

    /// Enriches `e` in place; false when it went to the dead-letter stream.
    async fn enrich(&mut self, e: &mut ChangeEvent) -> Result<bool, EnrichError> {
        let Some(chain) = self.chain(&e.table)? else {
            return Ok(true);
        };
        let source = chain
            .keep_source
            .then(|| [e.before.clone(), e.after.clone()]);
        // The rows are taken out while the steps rewrite them (the metadata stays).
        let mut images = [e.before.take(), e.after.take()];
        // Room for every field the steps add, once.
        let width = chain.schema.columns.len();
        for row in images.iter_mut().flatten() {
            row.reserve(width.saturating_sub(row.len()));
        }
        let mut flags = Vec::new();
        // Flags describe the row as it is now: `after`, or `before` for a delete.
        let mut ignored = Vec::new();
        let flag_image = if images[1].is_some() { 1 } else { 0 };
        for (k, (i, b)) in chain.steps.iter().enumerate() {
            // A lookup whose key the cache lacks (prefetch missed it, or it was
            // invalidated since): fetched now.
            let needed: Vec<Value> = match self.steps[*i].enricher.as_lookup() {
                Some(l) => {
                    self.looked_up += 1;
                    images
                        .iter()
                        .flatten()
                        .filter_map(|row| l.needs(b, row))
                        .collect()
                }
                None => Vec::new(),
            };
            let mut failure = None;
            if !needed.is_empty() {
                if let Err(why) = self.fetch(*i, &needed).await {
                    failure = Some(why);
                }
            }
            let step = &mut self.steps[*i];
            if failure.is_none() {
                for (n, row) in images.iter_mut().enumerate() {
                    let Some(row) = row else { continue };
                    let flags = if n == flag_image {
                        &mut flags
                    } else {
                        &mut ignored
                    };
                    let meta = EventMeta {
                        event: e,
                        after: n == 1,
                    };
                    if let Err(why) = step.enricher.apply(b, &meta, row, flags) {
                        failure = Some(why);
                        break;
                    }
                }
            }
            if let Some(why) = failure {
                // The event as the failing step saw it: the rows as they stood, under
                // the layout before the step.
                let origin = step.origin.clone();
                let layout = match k {
                    0 => Layout {
                        columns: e.table.columns.clone(),
                        key: e.table.primary_key.clone(),
                    },
                    _ => chain.steps[k - 1].1.layout.clone(),
                };
                let [before, after] = images;
                let seen = ChangeEvent {
                    table: Arc::new(e.table.with_layout(layout.columns, layout.key)),
                    before,
                    after,
                    ..e.clone()
                };
                // The event as the source gave it, to be sent again through the whole
                // chain once the cause is fixed.
                // The rows as the source gave them: kept, or (every step only appends)
                // cut back to the source's width.
                let [before, after] = source.unwrap_or_else(|| {
                    let width = e.table.columns.len();
                    [&seen.before, &seen.after]
                        .map(|r| r.as_ref().map(|r| r[..width.min(r.len())].to_vec()))
                });
                let sent = ChangeEvent {
                    before,
                    after,
                    ..e.clone()
                };
                if let Some(dead) = self.dead.as_mut() {
                    dead.append(&seen, &sent, &origin, &why)?;
                }
                return Ok(false);
            }
        }
        if chain.flags {
            flags.sort();
            flags.dedup();
            let v = if flags.is_empty() {
                Value::Null
            } else {
                Value::Array(flags.into_iter().map(Value::String).collect())
            };
            for row in images.iter_mut().flatten() {
                row.push(v.clone());
            }
        }
        let [before, after] = images;
        e.before = before;
        e.after = after;
        e.table = chain.schema.clone();
        Ok(true)
    }

    /// Binds the matching steps to a table's layout; None when none matches.
    fn bind(&self, table: &Arc<TableSchema>) -> Result<Option<Chain>, EnrichError> {
        let mut layout = Layout {
            columns: table.columns.clone(),
            key: table.primary_key.clone(),
        };
        let mut steps = Vec::new();
        let mut flags = false;
        let (mut may_fail, mut rewrites) = (false, false);
        for (i, s) in self.steps.iter().enumerate() {
            if !s.tables.matches(&table.db, &table.table) {
                continue;
            }
            may_fail |= s.enricher.may_fail();
            rewrites |= !s.enricher.append_only();
            let b = s.enricher.bind(&layout).map_err(|why| {
                EnrichError::Config(format!(
                    "{}: cannot enrich {}: {why}",
                    s.origin,
                    table.qualified_name()
                ))
            })?;
            layout = b.layout.clone();
            flags |= s.enricher.flags();
            steps.push((i, b));
        }
        if steps.is_empty() {
            return Ok(None);
        }
        if flags {
            layout.add(FLAGS_FIELD, "keyword").map_err(|why| {
                EnrichError::Config(format!("cannot enrich {}: {why}", table.qualified_name()))
            })?;
        }
        let schema = table.with_layout(layout.columns, layout.key);
        Ok(Some(Chain {
            _source: table.clone(),
            schema: Arc::new(schema),
            steps,
            flags,
            keep_source: may_fail && rewrites,
        }))
    }
}

#[cfg(test)]
pub(crate) fn test_event() -> ChangeEvent {
    ChangeEvent {
        op: crate::event::Op::Create,
        table: Arc::new(crate::testkit::test_schema(1, &[("id", "int")])),
        pos: crate::event::Position::Wal { lsn: 1 },
        txid: None,
        source_ts_ms: 0,
        before: None,
        after: Some(vec![Value::Int(1)]),
        version: 1,
        ts_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Position};

    fn entry(spec: config::Spec) -> EnrichConfig {
        EnrichConfig {
            table: vec!["s.t".into()],
            spec,
            line: 1,
            written: serde_json::Value::Null,
        }
    }

    /// The source rows a failed event's dead letter holds: exact whether the chain only
    /// appends (rows cut back) or also drops a column (rows kept).
    #[tokio::test]
    async fn a_dead_letter_holds_the_source_rows_in_either_kind_of_chain() {
        let meta = || {
            entry(config::Spec::Meta(
                toml::from_str("table = \"s.t\"\nfields = { op = \"_op\" }").unwrap(),
            ))
        };
        let compute = || {
            entry(config::Spec::Compute(
                toml::from_str(
                    "table = \"s.t\"\nfield = \"per\"\nexpr = \"100 / qty\"\ntype = \"long\"",
                )
                .unwrap(),
            ))
        };
        let drop = entry(config::Spec::Drop(
            toml::from_str("table = \"s.t\"\ncolumns = [\"note\"]").unwrap(),
        ));
        for (chain, keeps) in [
            (vec![meta(), compute()], false),
            (vec![meta(), drop, compute()], true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut stage = Stage::detached(
                &chain,
                std::path::Path::new("c.toml"),
                || unreachable!("no lookups"),
                None,
            )
            .await
            .unwrap();
            let at = crate::journal::Settings::at(dir.path(), crate::files::FileMode::default());
            stage.dead = Some(DeadLetters::open(&at, None).unwrap());
            let schema = Arc::new(crate::testkit::test_schema(
                1,
                &[("id", "int"), ("qty", "int"), ("note", "text")],
            ));
            assert_eq!(stage.chain(&schema).unwrap().unwrap().keep_source, keeps);
            let row = |q| vec![Value::Int(7), Value::Int(q), Value::String("n".into())];
            let e = ChangeEvent {
                op: Op::Update,
                table: schema.clone(),
                pos: Position::Wal { lsn: 9 },
                txid: None,
                source_ts_ms: 1,
                before: Some(row(1)),
                after: Some(row(0)),
                version: 9,
                ts_ms: 2,
            };
            let out = stage
                .apply(vec![
                    SourceMessage::Change(e.clone()),
                    SourceMessage::Commit(Position::Wal { lsn: 9 }),
                ])
                .await
                .unwrap();
            assert_eq!(out.len(), 1, "the event went to the dead letters");
            stage.flush().await.unwrap().unwrap().await.unwrap();
            let mut records = Vec::new();
            crate::journal::read_log(dir.path(), |r| {
                records.push(r.json);
                true
            })
            .unwrap();
            assert_eq!(records.len(), 1);
            #[derive(serde::Deserialize)]
            struct Record {
                replay: crate::event::stored::StoredChange,
            }
            let r: Record = serde_json::from_str(&records[0]).unwrap();
            let back = r.replay.into_event("c".into(), "postgres").unwrap();
            assert_eq!(
                (back.before, back.after),
                (e.before.clone(), e.after.clone())
            );
            assert_eq!(back.table.columns, schema.columns);
        }
    }
}
