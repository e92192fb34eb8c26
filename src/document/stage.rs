//! The pipeline stage that maintains joined documents: it applies every change of the
//! tables a document reads to that document's state, and at a transaction boundary
//! hands the sinks the documents the changes affected, each built once with the
//! version of the newest change that affected it (docs/DESIGN.md, "Joined
//! documents").
//!
//! A document reaches the sinks as a change event of the document's own schema
//! (`kind` = `DOCUMENT_KIND`, one column per top-level field, the root's key as its
//! key): `Op::Create` carries the whole document, `Op::Delete` its key. Sinks that
//! write JSON show it as a `doc` / `doc_delete` event.
//!
//! Delivery: documents taken from the state belong to the current epoch; a checkpoint
//! closes the epoch at its flush (everything taken before it precedes the boundary the
//! checkpoint stores) and, once stored, tells the state the epoch is delivered. What a
//! crash leaves undelivered is built again on the next start.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::state::{Built, State, StateError};
use super::tree::Tree;
use super::DocumentConfig;
use crate::event::{
    now_ms, ChangeEvent, Column, Op, PerSchema, Position, Row, SourceMessage, TableSchema, Value,
    DOCUMENT_KIND,
};
use crate::offsets::Saved;
use crate::pipeline::checkpoint::{Participant, SnapshotProgress, Stored};
use crate::sink::SinkError;

/// The id the documents' progress is saved under with each checkpoint (for `status`).
pub const STATE_ID: &str = "documents";

/// The least checkpoint interval under a backlog while documents are maintained. Each
/// checkpoint makes the document state durable (`Participant::flush`), which writes
/// every page changed since the last and waits for the disk, on the pipeline's loop;
/// pages change again and again between checkpoints (the marks, the upper levels of the
/// trees), so fewer checkpoints write far less. Measured with bench/documents.sh's load
/// at 30,000 customers: 14,400-20,000 child changes/s at 200 ms, 32,700-59,900 at
/// 1,000 ms, with a third of the CPU. A caught-up pipeline still checkpoints at once.
pub const CHECKPOINT_FLOOR_MS: u64 = 1_000;

/// How many documents are built and handed on at a time: a change that affects a
/// million documents goes out in pages of this many, each through the sinks (which
/// wait while their queues are full) before the next is built.
pub const PAGE: usize = 1_000;

/// A document's definition resolved against its tables, for the sinks that map it.
#[derive(Debug, Clone)]
pub struct Shape {
    pub tree: Tree,
    /// Each table the document reads, in the layout the stage expects (enriched).
    pub schemas: BTreeMap<String, Arc<TableSchema>>,
}

impl Shape {
    pub fn schema_of(&self, table: &str) -> Option<&TableSchema> {
        self.schemas.get(table).map(|s| &**s)
    }
}

/// The documents' shapes by name: what the sinks are told (`SinkContext::documents`).
pub type Shapes = Arc<BTreeMap<String, Shape>>;

/// Shapes of documents this process did not define but reads events of (a Kafka
/// worker, from the records' `schema` headers), by name: one connector per process,
/// so one document per name.
static LEARNED: std::sync::RwLock<BTreeMap<String, Arc<Shape>>> =
    std::sync::RwLock::new(BTreeMap::new());

/// Keeps `shape` for the sinks (see `shape_of`).
pub fn learn_shape(shape: Shape) {
    LEARNED
        .write()
        .expect("not poisoned")
        .insert(shape.tree.name.clone(), Arc::new(shape));
}

/// The shape of document `name`: the connector's own definition, or one learned.
pub fn shape_of(defined: &Shapes, name: &str) -> Option<Arc<Shape>> {
    match defined.get(name) {
        Some(s) => Some(Arc::new(s.clone())),
        None => LEARNED.read().expect("not poisoned").get(name).cloned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("document `{document}`: {message}")]
    Definition { document: String, message: String },
}

struct Maintained {
    state: State,
    /// The document's own schema (see the module docs).
    schema: Arc<TableSchema>,
    /// The tables it reads.
    tables: HashSet<String>,
    /// Per event schema of one of those tables: its nodes and how its rows project
    /// onto them.
    projections: PerSchema<Vec<(usize, Vec<Option<usize>>)>>,
    /// Documents handed on, and the fan-out of each change (metric handles).
    written: metrics::Counter,
    fanout: metrics::Histogram,
}

/// Every `[[document]]` of a connector.
pub struct Documents {
    docs: Vec<Maintained>,
    /// The epoch documents taken now belong to.
    epoch: u64,
    /// The epoch the checkpoint in flight closed.
    closed: Option<u64>,
    /// Whether some document may wait to be built (false once a `take` found none).
    waiting: bool,
    /// Whether the changes applied reach the states late (`State::late_changes`).
    late: bool,
    /// `reindex_wanted`.
    reindex: BTreeSet<String>,
}

impl Documents {
    /// No documents.
    pub fn none() -> Self {
        Documents {
            docs: Vec::new(),
            epoch: 0,
            closed: None,
            waiting: false,
            late: false,
            reindex: BTreeSet::new(),
        }
    }

    /// Opens the state of each document under `dir` (`<dir>/<name>.redb`), resolving
    /// each against `shapes`. Returns the stage and the tables whose rows a state that
    /// is new (or was built for another definition, and is rebuilt) still needs: the
    /// caller asks for their snapshots unless the initial snapshot brings them.
    pub fn open(
        connector: &str,
        defs: &[DocumentConfig],
        shapes: &BTreeMap<String, Shape>,
        dir: &Path,
        mode: crate::files::FileMode,
    ) -> Result<(Self, Vec<String>), DocumentError> {
        let mut docs = Vec::new();
        let mut to_fill = Vec::new();
        let mut reindex = BTreeSet::new();
        for def in defs {
            let name = def.name.get_ref();
            let shape = shapes.get(name).ok_or_else(|| DocumentError::Definition {
                document: name.clone(),
                message: "its tables were not read".into(),
            })?;
            mode.create_dir_all(dir)
                .map_err(|e| DocumentError::Definition {
                    document: name.clone(),
                    message: format!("creating {}: {e}", dir.display()),
                })?;
            let path = dir.join(format!("{name}.redb"));
            let state = State::open_with(&path, shape.tree.clone(), mode)?;
            if state.prepare()? {
                to_fill.extend(def.tables().into_iter().map(str::to_string));
            }
            crate::health::documents_built(name, 0, state.dirty_count()?);
            let schema = Arc::new(document_schema(connector, shape)?);
            if state.reindex_wanted()? {
                tracing::info!(document = %name, "the document's definition changed: its index is rebuilt with the new mapping beside the stream, and the alias moved to it once filled");
                reindex.insert(rebuild_name(&schema));
            }
            docs.push(Maintained {
                schema,
                tables: def.tables().into_iter().map(str::to_string).collect(),
                state,
                projections: PerSchema::default(),
                written: crate::metrics::documents_written(name),
                fanout: crate::metrics::document_fanout(name),
            });
        }
        to_fill.sort();
        to_fill.dedup();
        Ok((
            Documents {
                docs,
                epoch: 0,
                closed: None,
                waiting: true,
                late: false,
                reindex,
            },
            to_fill,
        ))
    }

    /// Every state built already (tests drive the stage without snapshots).
    #[cfg(test)]
    pub fn built(self) -> Self {
        for d in &self.docs {
            if d.state.building_since().is_some() {
                d.state.finish_build().expect("the build ends");
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The documents whose index was built for another definition and wants a new one
    /// (see `State::reindex_wanted`), as `document NAME` (how rebuilds name them).
    pub fn reindex_wanted(&self) -> &BTreeSet<String> {
        &self.reindex
    }

    /// `name` (`document NAME`)'s index was rebuilt for its current definition.
    pub fn reindexed(&mut self, name: &str) -> Result<(), DocumentError> {
        if self.reindex.remove(name) {
            for d in self.docs.iter().filter(|d| rebuild_name(&d.schema) == name) {
                d.state.reindexed()?;
            }
        }
        Ok(())
    }

    /// The changes applied from now on reach the states late: a replay of changes a
    /// quarantine or the enrichment held back (see `State::late_changes`).
    pub fn late(mut self) -> Self {
        self.late = true;
        self
    }

    /// Applies the changes among `messages` to the states of the documents that read
    /// their tables (one write transaction per document, without an fsync: see
    /// `Participant::flush`).
    pub fn apply(&mut self, messages: &[SourceMessage]) -> Result<(), DocumentError> {
        let late = self.late;
        for d in self.docs.iter_mut() {
            let mut changes = None;
            for m in messages {
                let SourceMessage::Change(e) = m else {
                    continue;
                };
                // (Per schema, once: empty for a table the document does not read.)
                let tree = d.state.tree();
                let nodes = d.projections.get_or_insert_with(&e.table, || {
                    tree.nodes_of(&e.table.qualified_name())
                        .map(|n| (n, tree.nodes[n].project(&e.table)))
                        .collect()
                });
                if nodes.is_empty() {
                    continue;
                }
                let c = match &mut changes {
                    Some(c) => c,
                    None if late => changes.insert(d.state.late_changes()?),
                    None => changes.insert(d.state.changes()?),
                };
                let before = c.marked();
                for (n, proj) in nodes.iter() {
                    match e.op {
                        Op::Truncate | Op::Resync => c.truncate_node(*n, e.version)?,
                        _ => {
                            c.apply_node(*n, proj, e.before.as_ref(), e.after.as_ref(), e.version)?
                        }
                    }
                }
                let marked = c.marked() - before;
                d.fanout.record(marked as f64);
                self.waiting |= marked > 0;
            }
            if let Some(c) = changes {
                c.commit()?;
            }
        }
        Ok(())
    }

    /// Up to `limit` documents the changes so far affected, built now, as events at
    /// `pos` (the boundary they precede). A document that reads a table whose snapshot
    /// runs waits: it is built once, after the snapshot, instead of once per chunk. A
    /// state being built waits until the snapshot of each of its tables finished after
    /// the build began; then every root is built.
    pub fn take(
        &mut self,
        limit: usize,
        pos: &Position,
        source_ts_ms: u64,
        snapshot: &SnapshotProgress,
    ) -> Result<Vec<SourceMessage>, DocumentError> {
        let mut out = Vec::new();
        let mut any_held = false;
        for d in &self.docs {
            if out.len() >= limit {
                break;
            }
            if let Some(since) = d.state.building_since() {
                if d.tables.iter().all(|t| snapshot.done_since(t, since)) {
                    let n = d.state.finish_build()?;
                    tracing::info!(document = %d.schema.table, documents = n, "document state built from the snapshots: building every document");
                } else {
                    any_held = true;
                    continue;
                }
            }
            if d.tables.iter().any(|t| snapshot.running(t)) {
                any_held = true;
                continue;
            }
            let (built, left) = d.state.take(limit - out.len(), self.epoch)?;
            d.written.increment(built.len() as u64);
            crate::health::documents_built(&d.schema.table, built.len() as u64, left);
            out.extend(
                built
                    .into_iter()
                    .map(|b| SourceMessage::Change(event(&d.schema, b, pos, source_ts_ms))),
            );
        }
        if out.len() < limit && !any_held {
            self.waiting = false;
        }
        Ok(out)
    }

    /// Whether some document may wait to be built: after a restart (what the last run
    /// handed on without a stored checkpoint), or marked while its tables' snapshot ran.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// The checkpoint whose flush closed the last epoch is stored: its documents are
    /// delivered.
    pub fn stored(&mut self) -> Result<(), DocumentError> {
        if let Some(epoch) = self.closed.take() {
            for d in &self.docs {
                d.state.covered(epoch)?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Participant for Documents {
    /// Makes the states durable (every change up to the boundary, and the marks of the
    /// documents still to build) before the checkpoint is, and closes the epoch.
    async fn flush(&mut self) -> Result<Stored, SinkError> {
        for d in &self.docs {
            d.state
                .persist()
                .map_err(|e| SinkError::new("documents", e.to_string()))?;
        }
        if self.docs.is_empty() {
            return Ok(Box::pin(std::future::ready(Ok(Vec::new()))));
        }
        self.closed = Some(self.epoch);
        self.epoch += 1;
        // What `tributary status` shows beside a running daemon.
        let saved = Saved::Stage(STATE_ID.to_string(), crate::health::documents());
        Ok(Box::pin(std::future::ready(Ok(vec![saved]))))
    }
}

/// The document's own schema: the root's columns, then one column per embed or nest
/// (type `document object` / `document nested`, values as JSON); its key the root's.
pub(crate) fn document_schema(
    connector: &str,
    shape: &Shape,
) -> Result<TableSchema, DocumentError> {
    let root = &shape.tree.nodes[0];
    let table = shape
        .schema_of(&root.table)
        .ok_or_else(|| DocumentError::Definition {
            document: shape.tree.name.clone(),
            message: format!("no table `{}`", root.table),
        })?;
    let mut columns: Vec<Column> = root
        .columns
        .iter()
        .map(|&i| table.columns[i].clone())
        .collect();
    let key = root
        .key
        .iter()
        .map(|k| {
            root.columns
                .iter()
                .position(|c| c == k)
                .ok_or_else(|| DocumentError::Definition {
                    document: shape.tree.name.clone(),
                    message: format!(
                        "the root's key column `{}` is not among its columns",
                        table.columns[*k].name
                    ),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for &c in &root.children {
        let child = &shape.tree.nodes[c];
        columns.push(Column {
            name: child.field.clone(),
            type_name: if child.nested {
                "document nested".into()
            } else {
                "document object".into()
            },
        });
    }
    Ok(TableSchema::new(
        Arc::from(connector),
        DOCUMENT_KIND,
        String::new(),
        shape.tree.name.clone(),
        columns,
        key,
        1,
    ))
}

/// A built document as an event of the document's schema.
pub(crate) fn event(
    schema: &Arc<TableSchema>,
    b: Built,
    pos: &Position,
    source_ts_ms: u64,
) -> ChangeEvent {
    let (op, before, after) = match b.row {
        Some(row) => (Op::Create, None, Some(row)),
        None => {
            let mut row: Row = vec![Value::Null; schema.columns.len()];
            for (&i, v) in schema.primary_key.iter().zip(b.key) {
                row[i] = v;
            }
            (Op::Delete, Some(row), None)
        }
    };
    ChangeEvent {
        op,
        table: schema.clone(),
        pos: pos.clone(),
        txid: None,
        source_ts_ms,
        before,
        after,
        version: b.version,
        ts_ms: now_ms(),
    }
}

/// How index rebuilds name a document: `document NAME`.
pub fn rebuild_name(schema: &TableSchema) -> String {
    format!("{DOCUMENT_KIND} {}", schema.table)
}

/// The document an index rebuild's name (`rebuild_name`) names, if it names one.
pub fn rebuilt_document(name: &str) -> Option<&str> {
    name.strip_prefix(DOCUMENT_KIND)?.strip_prefix(' ')
}

/// Where a connector keeps its documents' states.
pub fn state_dir(connector_state: &Path) -> PathBuf {
    connector_state.join("documents")
}
