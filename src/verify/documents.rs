//! `tributary verify` for a joined document (`[[document]]`): does its index hold
//! exactly the documents the source's tables build?
//!
//! The document's tables are read chunk by chunk through the source's snapshot read,
//! enriched as the daemon enriches them, into a state of verify's own (the daemon's
//! state is its own, and may be ahead of or behind the index), from which every
//! document is built exactly as the daemon builds it. Then:
//!
//! - the roots in key order: each document against the index's (`_mget`); none is
//!   *missing*, another one is *stale*;
//! - the index in key order: documents whose root was not read are *extra*.
//!
//! The tables are read one after the other while the daemon writes, so a difference may
//! be a change on its way. Once the daemon's checkpoint passed the last read, the
//! differing documents are looked at again: one the index holds with a version newer
//! than the first read was rewritten since (a change after that reached it) and is not
//! judged; a missing one whose root row is gone by now was deleted meanwhile. What a
//! change since the first read did not touch is what the tables built throughout the
//! reads, so what still differs is reported. `--repair` writes those documents (and
//! deletes the extra ones) with the version of a read after all that, so any newer
//! change wins, then looks once more.

use std::sync::Arc;

use serde_json::Value as Json;

use super::{enriched, Kind, CHUNK, MAX_SUSPECTS, PAGE};
use super::{equal, err, key_text, passed, progress, wait_for_daemon, TableReport, VerifyError};
use crate::config::ConnectorConfig;
use crate::document::stage::{document_schema, event, Shape};
use crate::document::state::{key_bytes, Built, State};
use crate::document::DocumentConfig;
use crate::enrich::Stage;
use crate::event::{ChangeEvent, PerSchema, TableSchema, Value};
use crate::sink::elasticsearch::verify::{IndexView, Repair};
use crate::sink::elasticsearch::DocId;
use crate::source::scan::{TableScan, Window};

/// Verifies document `def` against its index.
pub(super) async fn verify(
    cfg: &ConnectorConfig,
    view: &IndexView,
    scan: &dyn TableScan,
    stage: &mut Stage,
    def: &DocumentConfig,
    shape: &Shape,
    opts: &super::Options,
) -> Result<TableReport, VerifyError> {
    let name = def.name.get_ref();
    let schema = Arc::new(document_schema(&cfg.connector_name(), shape).map_err(err)?);
    let mut report = TableReport {
        table: format!("document {name}"),
        sink: view.sink.clone(),
        index: name.to_lowercase(),
        ..TableReport::default()
    };
    let Some(read) = read_tables(cfg, scan, stage, def, shape, opts.progress, "verify").await?
    else {
        return Ok(report);
    };
    let (state, first, last) = (&read.state, read.first, &read.last);
    let ids = DocId::Columns(schema.primary_key.clone());
    let render = |b: Built| -> Option<(String, Json, ChangeEvent)> {
        let e = event(&schema, b, &last.after, 0);
        let (id, doc) = view.expected(&e, &ids)?;
        Some((id, doc, e))
    };

    // The documents in root key order against the index.
    let mut suspects: Vec<Suspect> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = state.page(after.as_deref(), CHUNK as usize).map_err(err)?;
        let Some((k, _)) = page.last() else { break };
        after = Some(k.clone());
        report.rows += page.len() as u64;
        let built: Vec<(Vec<u8>, String, Json)> = page
            .into_iter()
            .filter_map(|(root, b)| render(b).map(|(id, doc, _)| (root, id, doc)))
            .collect();
        let wanted: Vec<String> = built.iter().map(|(_, id, _)| id.clone()).collect();
        let stored = view
            .get(&report.index, &wanted)
            .await
            .map_err(VerifyError)?;
        for (root, id, doc) in built {
            if !stored.get(&id).is_some_and(|s| equal(&s.source, &doc, &[])) {
                suspect(&mut suspects, root, id)?;
            }
        }
    }

    // The index in key order: documents without a root.
    let key_names: Vec<String> = schema
        .primary_key
        .iter()
        .map(|&i| schema.columns[i].name.clone())
        .collect();
    view.refresh(&report.index).await.map_err(VerifyError)?;
    let sort = view
        .sort_fields(&report.index, &key_names)
        .await
        .map_err(VerifyError)?;
    let mut page_after: Option<Json> = None;
    loop {
        let page = view
            .page(&report.index, &sort, page_after.as_ref(), PAGE)
            .await
            .map_err(VerifyError)?;
        let Some((_, last_sort)) = page.last() else {
            break;
        };
        page_after = Some(last_sort.clone());
        report.documents += page.len() as u64;
        for (d, _) in &page {
            let Some(key) = super::doc_key(&d.source, &key_names) else {
                continue;
            };
            let root = key_bytes(key.iter());
            if !state.has_root(&root).map_err(err)? {
                suspect(&mut suspects, root, d.id.clone())?;
            }
        }
    }

    // A second look, once the daemon passed the reads.
    wait_for_daemon(cfg, passed(&last.after)).await?;
    let root_table = scan
        .table(&shape.tree.nodes[0].table)
        .await
        .map_err(err)?
        .ok_or_else(|| {
            VerifyError(format!(
                "table {} does not exist in the source database",
                shape.tree.nodes[0].table
            ))
        })?
        .schema;
    let root_table = &*root_table;
    let second = Second {
        view,
        scan,
        state,
        render: &render,
        root_table,
        first,
    };
    let mut confirmed = second.look(&mut report, &suspects).await?;
    if opts.repair && !confirmed.is_empty() {
        for batch in confirmed.chunks(500) {
            let repairs: Vec<Repair> = batch
                .iter()
                .map(|c| match &c.doc {
                    Some(e) => Repair::Index {
                        event: e.clone(),
                        id: c.id.clone(),
                    },
                    None => Repair::Delete {
                        event: event(
                            &schema,
                            Built {
                                key: crate::document::state::key_values(&c.root)
                                    .unwrap_or_default(),
                                row: None,
                                version: c.version,
                            },
                            &last.after,
                            0,
                        ),
                        id: c.id.clone(),
                    },
                })
                .collect();
            report.repaired += view
                .write(&report.index, &repairs)
                .await
                .map_err(VerifyError)?;
        }
        // Looked at once more: a change that raced the repair shows here.
        let again: Vec<Suspect> = confirmed
            .into_iter()
            .map(|c| Suspect {
                root: c.root,
                id: c.id,
            })
            .collect();
        confirmed = second.look(&mut report, &again).await?;
    }
    for c in confirmed {
        let key = crate::document::state::key_values(&c.root).unwrap_or_default();
        report.record(c.kind, &key);
    }
    Ok(report)
}

/// A document's tables as read from the source into a state of its own (in the state
/// dir, as large as the daemon's; removed when dropped), from which every document is
/// built as the daemon builds it.
pub(crate) struct Read {
    pub state: State,
    /// The version of the first read: every change after it is not in some rows.
    pub first: u64,
    /// The last read's window.
    pub last: Window,
    _remove: Remove,
}

/// Reads every table of document `def` chunk by chunk through the snapshot read,
/// enriched as the daemon enriches them, into a new state (building: nothing is
/// marked). None when the tables hold no row at all.
pub(crate) async fn read_tables(
    cfg: &ConnectorConfig,
    scan: &dyn TableScan,
    stage: &mut Stage,
    def: &DocumentConfig,
    shape: &Shape,
    show: bool,
    what: &str,
) -> Result<Option<Read>, VerifyError> {
    let name = def.name.get_ref();
    let dir = crate::document::stage::state_dir(&cfg.state.dir);
    cfg.state.file_mode.create_dir_all(&dir).map_err(err)?;
    let path = dir.join(format!(".{what}-{name}-{}.redb", std::process::id()));
    let remove = Remove(path.clone());
    let state = State::open_with(&path, shape.tree.clone(), cfg.state.file_mode).map_err(err)?;
    state.prepare().map_err(err)?;
    let mut first: Option<u64> = None;
    let mut last: Option<Window> = None;
    for table in def.tables() {
        let Some(scanned) = scan.table(table).await.map_err(err)? else {
            return Err(VerifyError(format!(
                "table {table} does not exist in the source database"
            )));
        };
        let bar = progress(show, &format!("{what} {name}: {table}"), scanned.estimate);
        let mut projections: PerSchema<Vec<(usize, Vec<Option<usize>>)>> = PerSchema::default();
        let mut after: Option<Vec<Value>> = None;
        loop {
            let chunk = scan
                .chunk(table, after.as_deref(), CHUNK)
                .await
                .map_err(err)?;
            bar.inc(chunk.rows.len() as u64);
            first.get_or_insert(chunk.window.before);
            let events = enriched(stage, &scanned.schema, chunk.rows, &chunk.window).await?;
            let mut changes = state.changes().map_err(err)?;
            for e in &events {
                let nodes = projections.get_or_insert_with(&e.table, || {
                    let tree = &shape.tree;
                    tree.nodes_of(table)
                        .map(|n| (n, tree.nodes[n].project(&e.table)))
                        .collect()
                });
                for (n, proj) in nodes.iter() {
                    changes
                        .apply_node(*n, proj, None, e.after.as_ref(), e.version)
                        .map_err(err)?;
                }
            }
            changes.commit().map_err(err)?;
            last = Some(chunk.window);
            match chunk.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        bar.finish_and_clear();
    }
    Ok(match (first, last) {
        (Some(first), Some(last)) => Some(Read {
            state,
            first,
            last,
            _remove: remove,
        }),
        _ => None,
    })
}

/// Removes a state file when dropped.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A document that differed in the first pass.
struct Suspect {
    root: Vec<u8>,
    id: String,
}

fn suspect(suspects: &mut Vec<Suspect>, root: Vec<u8>, id: String) -> Result<(), VerifyError> {
    if suspects.len() >= MAX_SUSPECTS {
        return Err(VerifyError(format!(
            "more than {MAX_SUSPECTS} documents differ from the index: it is far from the tables; `tributary reindex --document` rebuilds it"
        )));
    }
    suspects.push(Suspect { root, id });
    Ok(())
}

struct Confirmed {
    kind: Kind,
    root: Vec<u8>,
    id: String,
    /// The document as the tables build it (None: no root row).
    doc: Option<ChangeEvent>,
    /// The version a repair writes with.
    version: u64,
}

/// What the second look needs: the daemon passed every read.
struct Second<'a> {
    view: &'a IndexView,
    scan: &'a dyn TableScan,
    state: &'a State,
    render: &'a dyn Fn(Built) -> Option<(String, Json, ChangeEvent)>,
    root_table: &'a TableSchema,
    /// The version of the first read.
    first: u64,
}

impl Second<'_> {
    /// Looks at suspects again, 500 at a time: their documents in the index, and the
    /// root rows read once more. Returns what still differs.
    async fn look(
        &self,
        report: &mut TableReport,
        suspects: &[Suspect],
    ) -> Result<Vec<Confirmed>, VerifyError> {
        let mut out = Vec::new();
        for batch in suspects.chunks(500) {
            out.extend(self.look_batch(report, batch).await?);
        }
        Ok(out)
    }

    async fn look_batch(
        &self,
        report: &mut TableReport,
        suspects: &[Suspect],
    ) -> Result<Vec<Confirmed>, VerifyError> {
        let Second {
            view,
            scan,
            state,
            render,
            root_table,
            first,
        } = *self;
        let keys: Vec<Vec<Value>> = suspects
            .iter()
            .map(|s| crate::document::state::key_values(&s.root).map_err(VerifyError))
            .collect::<Result<_, _>>()?;
        // Roots there now; read after every change that touched an unchanged document, so
        // its version orders a repair after them.
        let (rows, window) = scan
            .rows(&root_table.qualified_name(), &keys)
            .await
            .map_err(err)?;
        let now = super::row_keys(root_table, &rows);
        let wanted: Vec<String> = suspects.iter().map(|s| s.id.clone()).collect();
        let stored = view
            .get(&report.index, &wanted)
            .await
            .map_err(VerifyError)?;
        let mut out = Vec::new();
        for (s, key) in suspects.iter().zip(&keys) {
            let index = stored.get(&s.id);
            // Rewritten since the first read: a change reached it, not judged.
            if index.is_some_and(|d| d.version > first) {
                report.changing += 1;
                continue;
            }
            let built = state.built(&s.root).map_err(err)?.and_then(|b| {
                render(Built {
                    version: window.before,
                    ..b
                })
            });
            let kind = match (&built, index) {
                (Some((_, doc, _)), Some(d)) if equal(&d.source, doc, &[]) => continue,
                (Some(_), Some(_)) => Kind::Stale,
                // Deleted since it was read: its delete reached the index.
                (Some(_), None) if !now.contains(&key_text(key)) => continue,
                (Some(_), None) => Kind::Missing,
                (None, Some(_)) => Kind::Extra,
                (None, None) => continue,
            };
            out.push(Confirmed {
                kind,
                root: s.root.clone(),
                id: s.id.clone(),
                doc: built.map(|(_, _, e)| e),
                version: window.before,
            });
        }
        Ok(out)
    }
}
