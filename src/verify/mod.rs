//! `tributary verify`: does each Elasticsearch index hold exactly its table?
//!
//! Two passes per table, then a second look at whatever differed:
//!
//! - the table in key order, chunk by chunk through the source's snapshot read: each
//!   row goes through the enrichment chain and is rendered as the sink renders it, and
//!   the index's document of that id is fetched (`_mget`): none is *missing*, another
//!   one is *stale*;
//! - the index in key order (`search_after`): documents whose key has no row are
//!   *extra*.
//!
//! A difference may only be a change on its way (the daemon runs beside verify). So
//! the differing keys are looked at again once the daemon's checkpoint passed the
//! read: rows by key, read between two stream positions, and the documents once the
//! checkpoint passed the second read too. A document newer than that read (its version
//! is the change's) changed meanwhile and is not judged; what still differs is
//! reported. `--repair` writes those rows and deletes those documents with the read's
//! version, so any newer change wins, then looks once more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value as Json;

use crate::config::ConnectorConfig;
use crate::enrich::Stage;
use crate::event::{ChangeEvent, Op, Position, Row, SourceMessage, TableSchema, Value};
use crate::offsets::{OffsetError, OffsetStore};
use crate::sink::elasticsearch::verify::{IndexView, Repair, Stored};
use crate::sink::elasticsearch::DocId;
use crate::source::scan::{key_text, TableScan, Window};

pub(crate) mod documents;

/// Rows per chunk (and per `_mget`).
const CHUNK: u64 = 1000;
/// Documents per page of the index (at most `max_result_window`, 10,000 by default):
/// large pages, since a page costs a sort (the stand-in sorts everything per page).
const PAGE: usize = 5_000;
/// Differing keys held for the second look; past it the table is reported as far
/// from its index (re-snapshot it instead).
const MAX_SUSPECTS: usize = 100_000;
/// Keys listed per kind of difference.
const LISTED: usize = 10;
/// The daemon's checkpoint standing still this long counts as caught up (an idle
/// stream takes no new checkpoints).
const IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

pub(crate) fn err(e: impl std::fmt::Display) -> VerifyError {
    VerifyError(e.to_string())
}

/// What to verify.
#[derive(Debug, Default)]
pub struct Options {
    /// `db.table`s (with `documents` empty as well: every included table and every
    /// document).
    pub tables: Vec<String>,
    /// `[[document]]` names.
    pub documents: Vec<String>,
    /// The Elasticsearch sink (by name; needed when there are several).
    pub sink: Option<String>,
    pub repair: bool,
    /// Draw a progress bar per table.
    pub progress: bool,
}

/// One table's outcome.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub sink: String,
    pub index: String,
    pub rows: u64,
    pub documents: u64,
    pub missing: u64,
    pub stale: u64,
    pub extra: u64,
    /// Keys that changed while verify looked at them (not judged).
    pub changing: u64,
    /// Rows an enrichment step fails on (their changes are dead letters, not documents).
    pub not_enriched: u64,
    pub repaired: u64,
    pub first_missing: Vec<String>,
    pub first_stale: Vec<String>,
    pub first_extra: Vec<String>,
    /// Why the table was not verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl TableReport {
    pub fn differences(&self) -> u64 {
        self.missing + self.stale + self.extra
    }

    /// Counts a confirmed difference of key `key`, listed among the first few.
    fn record(&mut self, kind: Kind, key: &[Value]) {
        let (count, list) = match kind {
            Kind::Missing => (&mut self.missing, &mut self.first_missing),
            Kind::Stale => (&mut self.stale, &mut self.first_stale),
            Kind::Extra => (&mut self.extra, &mut self.first_extra),
        };
        *count += 1;
        if list.len() < LISTED {
            list.push(key_text(key).replace('\u{1f}', ","));
        }
    }
}

/// A key that differed in the first pass.
struct Suspect {
    key: Vec<Value>,
    /// Its document's id (the row's, or the extra document's).
    id: String,
}

/// Verifies the chosen tables against the chosen Elasticsearch sink's indexes.
pub async fn verify(
    cfg: &ConnectorConfig,
    opts: &Options,
) -> Result<Vec<TableReport>, VerifyError> {
    let view = index_view(cfg, opts.sink.as_deref())?;
    let source = cfg.source.source();
    let scan = source.scan(&cfg.connector_name());
    let everything = opts.tables.is_empty() && opts.documents.is_empty();
    for d in &opts.documents {
        if !cfg.document.iter().any(|def| def.name.get_ref() == d) {
            return Err(VerifyError(format!(
                "--document {d}: {} defines no such [[document]]",
                cfg.path.display()
            )));
        }
    }
    let tables = if !everything {
        opts.tables.clone()
    } else {
        let mut t: Vec<String> = source
            .live_schemas()
            .await
            .map_err(err)?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        t.sort();
        // Those the sink gives an index of their own (`tables`).
        t.retain(|name| view.indexes_table(name));
        t
    };
    let lookups = source.lookup(&cfg.connector_name());
    let mut stage = Stage::detached(&cfg.enrich, &cfg.path, || lookups, None)
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    for t in &tables {
        let mut v = Verifier {
            cfg,
            view: &view,
            scan: scan.as_ref(),
            stage: &mut stage,
            report: TableReport {
                table: t.clone(),
                sink: view.sink.clone(),
                ..TableReport::default()
            },
            suspects: Vec::new(),
            suspected: Default::default(),
            too_many: false,
        };
        v.table(t, opts).await?;
        out.push(v.report);
    }
    let documents: Vec<&crate::document::DocumentConfig> = cfg
        .document
        .iter()
        .filter(|d| everything || opts.documents.contains(d.name.get_ref()))
        .collect();
    if !documents.is_empty() {
        let shapes = crate::pipeline::document_shapes(cfg, &mut stage)
            .await
            .map_err(err)?;
        for def in documents {
            let shape = &shapes[def.name.get_ref()];
            out.push(
                documents::verify(cfg, &view, scan.as_ref(), &mut stage, def, shape, opts).await?,
            );
        }
    }
    Ok(out)
}

/// The Elasticsearch sink verify reads: `--sink`, else the only one.
pub(crate) fn index_view(
    cfg: &ConnectorConfig,
    name: Option<&str>,
) -> Result<IndexView, VerifyError> {
    let sinks: Vec<_> = cfg
        .sinks
        .iter()
        .filter_map(|s| match s {
            crate::config::SinkConfig::Elasticsearch(es) => Some((s.id(), es)),
            _ => None,
        })
        .collect();
    let names = || {
        sinks
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match name {
        Some(n) => sinks.iter().find(|(id, _)| id == n).ok_or_else(|| {
            VerifyError(format!(
                "--sink {n}: {} has no such Elasticsearch sink (it has: {})",
                cfg.path.display(),
                names()
            ))
        })?,
        None if sinks.len() == 1 => &sinks[0],
        None if sinks.is_empty() => {
            return Err(VerifyError(format!(
                "{} has no Elasticsearch sink: verify compares tables with their indexes",
                cfg.path.display()
            )))
        }
        None => {
            return Err(VerifyError(format!(
                "{} has several Elasticsearch sinks ({}): choose one with --sink",
                cfg.path.display(),
                names()
            )))
        }
    };
    let context =
        crate::registry::sink_context(cfg, cfg.policy().map_err(err)?, Default::default());
    IndexView::open(chosen.0.clone(), chosen.1, context).map_err(VerifyError)
}

struct Verifier<'a> {
    cfg: &'a ConnectorConfig,
    view: &'a IndexView,
    scan: &'a dyn TableScan,
    stage: &'a mut Stage,
    report: TableReport,
    /// In the order they were found (key order, pass by pass).
    suspects: Vec<Suspect>,
    /// Their key texts.
    suspected: std::collections::HashSet<String>,
    too_many: bool,
}

impl Verifier<'_> {
    async fn table(&mut self, name: &str, opts: &Options) -> Result<(), VerifyError> {
        let Some(t) = self.scan.table(name).await.map_err(err)? else {
            return Err(VerifyError(format!(
                "table {name} does not exist in the source database"
            )));
        };
        let schema = t.schema;
        self.report.index = self.view.alias(&schema);
        let ids = match self.view.doc_id(&schema).map_err(VerifyError)? {
            Some(DocId::Columns(c)) if !schema.primary_key.is_empty() => DocId::Columns(c),
            Some(DocId::RowHash) => {
                self.report.skipped =
                    Some("ids = \"row_hash\": documents have no key to compare by".into());
                return Ok(());
            }
            _ => {
                self.report.skipped = Some("the table has no primary key".into());
                return Ok(());
            }
        };
        let volatile = self.stage.stateful_fields(&schema).map_err(err)?;
        let bar = progress(opts.progress, &format!("verify {name}"), t.estimate);

        // The table in key order.
        let mut after: Option<Vec<Value>> = None;
        let mut last_window: Option<Window>;
        loop {
            let chunk = self
                .scan
                .chunk(name, after.as_deref(), CHUNK)
                .await
                .map_err(err)?;
            self.report.rows += chunk.rows.len() as u64;
            bar.inc(chunk.rows.len() as u64);
            let looked = self
                .expected(&schema, chunk.rows, &chunk.window, &ids)
                .await?;
            let stored = self
                .view
                .get(
                    &self.report.index,
                    &looked.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
                )
                .await
                .map_err(VerifyError)?;
            for l in looked {
                let same = stored
                    .get(&l.id)
                    .is_some_and(|s| equal(&s.source, &l.doc, &volatile));
                if !same {
                    self.suspect(l.key, l.id);
                }
            }
            last_window = Some(chunk.window);
            match chunk.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        bar.finish_and_clear();

        // The index in key order: documents without a row.
        let key_names: Vec<String> = schema
            .primary_key
            .iter()
            .map(|&i| schema.columns[i].name.clone())
            .collect();
        self.view
            .refresh(&self.report.index)
            .await
            .map_err(VerifyError)?;
        let sort = self
            .view
            .sort_fields(&self.report.index, &key_names)
            .await
            .map_err(VerifyError)?;
        let mut page_after: Option<Json> = None;
        loop {
            let page = self
                .view
                .page(&self.report.index, &sort, page_after.as_ref(), PAGE)
                .await
                .map_err(VerifyError)?;
            let Some((_, last)) = page.last() else { break };
            page_after = Some(last.clone());
            self.report.documents += page.len() as u64;
            let keys: Vec<(Vec<Value>, String)> = page
                .iter()
                .filter_map(|(d, _)| Some((doc_key(&d.source, &key_names)?, d.id.clone())))
                .collect();
            let (rows, window) = self
                .scan
                .rows(
                    name,
                    &keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                )
                .await
                .map_err(err)?;
            let present = row_keys(&schema, &rows);
            for (k, id) in keys {
                if !present.contains(&key_text(&k)) {
                    self.suspect(k, id);
                }
            }
            last_window = Some(window);
        }

        // A second look at what differed, once the daemon caught up with the reads.
        if let Some(w) = &last_window {
            wait_for_daemon(self.cfg, passed(&w.after)).await?;
        }
        let suspects = std::mem::take(&mut self.suspects);
        self.suspected.clear();
        let mut confirmed = Vec::new();
        for batch in suspects.chunks(500) {
            confirmed.extend(self.look(name, &schema, &ids, &volatile, batch).await?);
        }
        if opts.repair && !confirmed.is_empty() {
            let mut repairs = Vec::new();
            for c in &confirmed {
                repairs.push(match &c.row {
                    Some(e) => Repair::Index {
                        event: e.clone(),
                        id: c.id.clone(),
                    },
                    None => Repair::Delete {
                        event: tombstone(&schema, c.version),
                        id: c.id.clone(),
                    },
                });
            }
            for chunk in repairs.chunks(500) {
                self.report.repaired += self
                    .view
                    .write(&self.report.index, chunk)
                    .await
                    .map_err(VerifyError)?;
            }
            // Looked at once more: a change that raced the repair shows here.
            let again: Vec<Suspect> = confirmed
                .into_iter()
                .map(|c| Suspect {
                    key: c.key,
                    id: c.id,
                })
                .collect();
            confirmed = Vec::new();
            for batch in again.chunks(500) {
                confirmed.extend(self.look(name, &schema, &ids, &volatile, batch).await?);
            }
        }
        for c in confirmed {
            self.report.record(c.kind, &c.key);
        }
        if self.too_many {
            return Err(VerifyError(format!(
                "{name}: more than {MAX_SUSPECTS} keys differ from {}: the index is far from the table; snapshot the table again (tributary snapshot --table {name})",
                self.report.index
            )));
        }
        Ok(())
    }

    fn suspect(&mut self, key: Vec<Value>, id: String) {
        if self.suspects.len() >= MAX_SUSPECTS {
            self.too_many = true;
            return;
        }
        if self.suspected.insert(key_text(&key)) {
            self.suspects.push(Suspect { key, id });
        }
    }

    /// The rows as the sink would index them: enriched, with their ids and documents.
    async fn expected(
        &mut self,
        schema: &Arc<TableSchema>,
        rows: Vec<Row>,
        window: &Window,
        ids: &DocId,
    ) -> Result<Vec<Looked>, VerifyError> {
        let n = rows.len() as u64;
        let out = render(self.stage, self.view, schema, rows, window, ids).await?;
        self.report.not_enriched += n - out.len() as u64;
        Ok(out)
    }

    /// Looks at suspects again: rows by key, then (once the daemon passed that read)
    /// their documents. Returns what still differs.
    async fn look(
        &mut self,
        name: &str,
        schema: &Arc<TableSchema>,
        ids: &DocId,
        volatile: &[String],
        suspects: &[Suspect],
    ) -> Result<Vec<Confirmed>, VerifyError> {
        let keys: Vec<Vec<Value>> = suspects.iter().map(|s| s.key.clone()).collect();
        let (rows, window) = self.scan.rows(name, &keys).await.map_err(err)?;
        // Keys with a row, whether or not the row can be enriched.
        let present = row_keys(schema, &rows);
        let looked = self.expected(schema, rows, &window, ids).await?;
        wait_for_daemon(self.cfg, passed(&window.after)).await?;
        let mut wanted: Vec<String> = suspects.iter().map(|s| s.id.clone()).collect();
        wanted.extend(looked.iter().map(|l| l.id.clone()));
        wanted.sort();
        wanted.dedup();
        let stored = self
            .view
            .get(&self.report.index, &wanted)
            .await
            .map_err(VerifyError)?;
        let changing = |s: &Stored| s.version > window.before;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for l in looked {
            seen.insert(key_text(&l.key));
            let kind = match stored.get(&l.id) {
                Some(s) if changing(s) => {
                    self.report.changing += 1;
                    continue;
                }
                Some(s) if equal(&s.source, &l.doc, volatile) => continue,
                Some(_) => Kind::Stale,
                None => Kind::Missing,
            };
            out.push(Confirmed {
                kind,
                key: l.key,
                id: l.id,
                version: window.before,
                row: Some(l.event),
            });
        }
        for s in suspects {
            let k = key_text(&s.key);
            // Judged above, or a row an enrichment step fails on (its changes are dead
            // letters: whatever document it has is not judged).
            if seen.contains(&k) || present.contains(&k) {
                continue;
            }
            // No row: a document is extra.
            match stored.get(&s.id) {
                None => {}
                Some(d) if changing(d) => self.report.changing += 1,
                Some(_) => out.push(Confirmed {
                    kind: Kind::Extra,
                    key: s.key.clone(),
                    id: s.id.clone(),
                    version: window.before,
                    row: None,
                }),
            }
        }
        // In the suspects' order (the rows come back in any order).
        let order: HashMap<String, usize> = suspects
            .iter()
            .enumerate()
            .map(|(i, s)| (key_text(&s.key), i))
            .collect();
        out.sort_by_key(|c| order.get(&key_text(&c.key)).copied().unwrap_or(usize::MAX));
        Ok(out)
    }
}

/// A row as the sink would index it.
pub(crate) struct Looked {
    pub key: Vec<Value>,
    pub id: String,
    pub doc: Json,
    /// The enriched read event, versioned at the read.
    pub event: ChangeEvent,
}

/// Rows read in `window`, enriched and rendered as the sink would index them (rows an
/// enrichment step fails on, or without an id, are left out).
pub(crate) async fn render(
    stage: &mut Stage,
    view: &IndexView,
    schema: &Arc<TableSchema>,
    rows: Vec<Row>,
    window: &Window,
    ids: &DocId,
) -> Result<Vec<Looked>, VerifyError> {
    let enriched = enriched(stage, schema, rows, window).await?;
    let mut out = Vec::with_capacity(enriched.len());
    for e in enriched {
        let Some((id, doc)) = view.expected(&e, ids) else {
            continue;
        };
        let key = e.key_row().map(|r| {
            e.table
                .primary_key
                .iter()
                .map(|&i| r[i].clone())
                .collect::<Vec<_>>()
        });
        out.push(Looked {
            key: key.unwrap_or_default(),
            id,
            doc,
            event: e,
        });
    }
    Ok(out)
}

/// Rows read in `window` as read events, enriched as the daemon enriches them (rows a
/// step fails on are left out: their changes are dead letters).
pub(crate) async fn enriched(
    stage: &mut Stage,
    schema: &Arc<TableSchema>,
    rows: Vec<Row>,
    window: &Window,
) -> Result<Vec<ChangeEvent>, VerifyError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = Vec::with_capacity(rows.len() + 1);
    for row in rows {
        batch.push(SourceMessage::Change(read_event(schema, row, window)));
    }
    batch.push(SourceMessage::Commit(window.after.clone()));
    Ok(stage
        .apply(batch)
        .await
        .map_err(err)?
        .into_iter()
        .filter_map(|m| match m {
            SourceMessage::Change(e) => Some(e),
            _ => None,
        })
        .collect())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Missing,
    Stale,
    Extra,
}

struct Confirmed {
    kind: Kind,
    key: Vec<Value>,
    id: String,
    /// The version a repair writes with (the read's).
    version: u64,
    /// The row as the sink would index it (None: no row).
    row: Option<ChangeEvent>,
}

/// The keys of `rows`, as key texts.
fn row_keys(schema: &TableSchema, rows: &[Row]) -> std::collections::HashSet<String> {
    rows.iter()
        .map(|r| {
            key_text(
                &schema
                    .primary_key
                    .iter()
                    .map(|&i| r[i].clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// A row read as a snapshot read event, versioned at the read.
fn read_event(schema: &Arc<TableSchema>, row: Row, window: &Window) -> ChangeEvent {
    ChangeEvent {
        op: Op::Read,
        table: schema.clone(),
        pos: window.after.clone(),
        txid: None,
        source_ts_ms: crate::event::now_ms(),
        before: None,
        after: Some(row),
        version: window.before,
        ts_ms: crate::event::now_ms(),
    }
}

/// An event carrying only a version, for a delete.
fn tombstone(schema: &Arc<TableSchema>, version: u64) -> ChangeEvent {
    ChangeEvent {
        op: Op::Delete,
        table: schema.clone(),
        pos: Position::Wal { lsn: 0 },
        txid: None,
        source_ts_ms: 0,
        before: None,
        after: None,
        version,
        ts_ms: 0,
    }
}

/// Whether a stored document equals the expected one, fields that depend on a key's
/// history (`track`) left out.
fn equal(stored: &Json, expected: &Json, volatile: &[String]) -> bool {
    if volatile.is_empty() {
        return stored == expected;
    }
    let strip = |v: &Json| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for f in volatile {
                o.remove(f);
            }
        }
        v
    };
    strip(stored) == strip(expected)
}

/// A document's key values (None when one is missing).
fn doc_key(source: &Json, names: &[String]) -> Option<Vec<Value>> {
    names
        .iter()
        .map(|n| match &source[n] {
            Json::Number(x) => Some(match (x.as_i64(), x.as_u64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(u)) => Value::UInt(u),
                _ => Value::Double(x.as_f64()?),
            }),
            Json::String(s) => Some(Value::String(s.clone())),
            Json::Bool(b) => Some(Value::Bool(*b)),
            _ => None,
        })
        .collect()
}

/// Whether a checkpoint is at or past `at`.
fn passed(at: &Position) -> impl Fn(&crate::offsets::Checkpoint) -> bool + '_ {
    move |c| c.position.at_or_after(at) != Some(false)
}

/// Waits until the daemon reports a checkpoint `done` says is far enough: at once when
/// it is not running (nothing is on its way then), and when its checkpoint stood still
/// for a while (an idle stream takes no checkpoints).
pub(crate) async fn wait_for_daemon(
    cfg: &ConnectorConfig,
    done: impl Fn(&crate::offsets::Checkpoint) -> bool,
) -> Result<(), VerifyError> {
    let mut last = None;
    let mut since = Instant::now();
    loop {
        if !cfg.state.dir.join("offsets.redb").exists() {
            return Ok(());
        }
        match OffsetStore::open(&cfg.state.dir, cfg.state.file_mode) {
            Err(OffsetError::InUse { .. }) => {}
            _ => return Ok(()),
        }
        let cp = OffsetStore::reported_checkpoint(&cfg.state.dir);
        if cp.as_ref().is_some_and(&done) {
            return Ok(());
        }
        // Standing still means no new position (a checkpoint at the same one again
        // brings nothing new).
        let at = cp.map(|c| c.position);
        if at != last {
            last = at;
            since = Instant::now();
        } else if since.elapsed() > IDLE {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn progress(show: bool, name: &str, estimate: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(estimate.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} rows ({per_sec})")
            .expect("a valid template"),
    );
    bar.set_message(name.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_compare_without_the_stateful_fields() {
        let a = serde_json::json!({"id": 1, "track": {"points": []}});
        let b = serde_json::json!({"id": 1, "track": {"points": [1]}});
        assert!(!equal(&a, &b, &[]));
        assert!(equal(&a, &b, &["track".to_string()]));
    }

    #[test]
    fn document_keys_read_back_as_values() {
        let d = serde_json::json!({"a": 5, "b": "x", "c": 18446744073709551615u64, "d": null});
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let k = doc_key(&d, &names(&["a", "b", "c"])).unwrap();
        assert_eq!(
            key_text(&k),
            key_text(&[
                Value::Int(5),
                Value::String("x".into()),
                Value::UInt(u64::MAX)
            ])
        );
        assert!(doc_key(&d, &names(&["d"])).is_none());
    }
}
