//! The state a document is built from (docs/DESIGN.md, "Joined documents"), in a redb
//! file of its own: per node of a document's tree the rows of its table, keyed by the
//! table key, holding the columns the document needs and the version of their last
//! change; and per relation two indexes, of the child rows by the child's `on`
//! columns (the children of a parent row) and of the parent rows by the parent's `on`
//! columns (the parents of a child row), so neither needs a scan.
//!
//! Replay-safe: a change older than the row's version is skipped and one of the same
//! version applied again (as `external_gte` does; a delete leaves a versioned
//! tombstone), so the state may run ahead of the checkpoint and a replay ends where
//! the state is.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};

use super::codec;
use super::tree::{Node, Tree};
use crate::event::{Row, Value};

/// (node, key) -> `Stored`.
const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("document_rows");
/// (node, side, join value, key) -> (): `DOWN` indexes a node's rows by its own `on`
/// columns, `UP` a node's parent rows by the parent's `on` columns.
const LINKS: TableDefinition<&[u8], ()> = TableDefinition::new("document_links");
const DOWN: u8 = 0;
const UP: u8 = 1;
/// root key -> the newest version that changed its document and is not yet written.
/// Committed with the change that marked it, so a crash between the two never loses
/// a document to rebuild (the replay finds the state current and marks nothing).
const DIRTY: TableDefinition<&[u8], u64> = TableDefinition::new("document_dirty");
/// (epoch, root key) -> version: documents handed to the sinks (`State::take`) whose
/// checkpoint is not stored yet. A checkpoint stored after epoch E's documents were
/// flushed removes every epoch up to E (`State::covered`); what a crash leaves here goes
/// back to `DIRTY` on open, as the sinks may have lost it with their uncheckpointed tail.
const SENT: TableDefinition<&[u8], u64> = TableDefinition::new("document_sent");
/// "definition" -> the tree the rows were stored for (`Tree::definition`).
const META: TableDefinition<&str, &str> = TableDefinition::new("document_meta");

/// The META key set while the document's index wants rebuilding (`State::reindex_wanted`).
const REINDEX: &str = "reindex";

/// The layout of the rows (`codec`); a state of another format is rebuilt.
const FORMAT: u32 = 2;

/// redb's page cache per document state (its default, 1 GiB, would grow with the
/// file and count against the daemon's memory; the operating system caches the rest).
const CACHE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
#[error("document state {path}: {message}")]
pub struct StateError {
    path: String,
    message: String,
}

/// The state of one document's tree.
pub struct State {
    db: Database,
    path: String,
    tree: Tree,
    /// While the state is built (`prepare` found it new): since when (ms since the
    /// epoch), else 0. Changes then mark nothing: every root is marked once the
    /// snapshots are done (`finish_build`).
    building: AtomicU64,
    /// The newest version any change applied had.
    newest: AtomicU64,
}

impl State {
    /// Opens (or creates) the state file at `path` for `tree`, private to its owner.
    pub fn open(path: &Path, tree: Tree) -> Result<Self, StateError> {
        Self::open_with(path, tree, crate::files::FileMode::default())
    }

    /// `open` with the file mode of `[state] file_mode` (the file holds row data).
    pub fn open_with(
        path: &Path,
        tree: Tree,
        mode: crate::files::FileMode,
    ) -> Result<Self, StateError> {
        let err = |m: String| StateError {
            path: path.display().to_string(),
            message: m,
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| err(e.to_string()))?;
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        mode.apply(&file).map_err(|e| err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        tx.open_table(ROWS).map_err(|e| err(e.to_string()))?;
        tx.open_table(LINKS).map_err(|e| err(e.to_string()))?;
        tx.open_table(DIRTY).map_err(|e| err(e.to_string()))?;
        tx.open_table(SENT).map_err(|e| err(e.to_string()))?;
        tx.commit().map_err(|e| err(e.to_string()))?;
        let state = State {
            db,
            path: path.display().to_string(),
            tree,
            building: AtomicU64::new(0),
            newest: AtomicU64::new(0),
        };
        state.resend()?;
        state.read_meta()?;
        Ok(state)
    }

    /// The build in progress and the newest version, as the file recorded them.
    fn read_meta(&self) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let number = |k: &str| -> Result<u64, StateError> {
                Ok(meta
                    .get(k)
                    .map_err(|e| self.err(e))?
                    .and_then(|v| v.value().parse().ok())
                    .unwrap_or(0))
            };
            self.building.store(number("building")?, Ordering::Relaxed);
            self.newest.store(number("newest")?, Ordering::Relaxed);
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Since when the state is being built (see `building`), if it is.
    pub fn building_since(&self) -> Option<u64> {
        Some(self.building.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }

    /// Ends the build: marks every root dirty with the newest version applied (each
    /// document is then built once), in the write transaction that ends it. Returns how
    /// many roots it marked.
    ///
    /// The roots deleted while the build ran are marked too (their documents are
    /// deleted): an index the alias already had may hold them. And the end is durable
    /// at once, not with the next checkpoint: documents go to the sinks right after it,
    /// and a crash that lost it would build again, marking only the roots alive then, so
    /// that a document sent by the first build and deleted before the second would stay
    /// in the index (found by the PostgreSQL kill -9 test).
    pub fn finish_build(&self) -> Result<u64, StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let version = self.newest.load(Ordering::Relaxed);
        let mut marked = 0;
        {
            let rows = tx.open_table(ROWS).map_err(|e| self.err(e))?;
            let mut dirty = tx.open_table(DIRTY).map_err(|e| self.err(e))?;
            let prefix = row_key(0, &[]);
            for item in rows.range(prefix.as_slice()..).map_err(|e| self.err(e))? {
                let (k, _) = item.map_err(|e| self.err(e))?;
                let Some(root) = k.value().strip_prefix(prefix.as_slice()) else {
                    break;
                };
                dirty.insert(root, version).map_err(|e| self.err(e))?;
                marked += 1;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.remove("building").map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.building.store(0, Ordering::Relaxed);
        Ok(marked)
    }

    /// Makes sure the state holds rows for the tree it was opened with: a new state, or
    /// one stored for another definition of the document (other tables, columns or
    /// joins), is emptied and records the tree. Returns whether it was: then it needs
    /// every row of the document's tables (a snapshot of each).
    pub fn prepare(&self) -> Result<bool, StateError> {
        let definition = format!("format {FORMAT}: {}", self.tree.definition());
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let stale = {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let held = meta
                .get("definition")
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_string());
            let stale = held.as_deref() != Some(definition.as_str());
            // Another definition (not only another format of the rows): the index was
            // built for it, with its mapping, and gets a new one (`reindex_wanted`).
            let redefined = held
                .as_deref()
                .and_then(|h| h.split_once(": "))
                .is_some_and(|(_, d)| d != self.tree.definition());
            if redefined {
                meta.insert(REINDEX, "1").map_err(|e| self.err(e))?;
            }
            if stale {
                let since = crate::event::now_ms().max(1);
                meta.insert("definition", definition.as_str())
                    .map_err(|e| self.err(e))?;
                meta.insert("building", since.to_string().as_str())
                    .map_err(|e| self.err(e))?;
                self.building.store(since, Ordering::Relaxed);
            }
            stale
        };
        if stale {
            tx.delete_table(ROWS).map_err(|e| self.err(e))?;
            tx.delete_table(LINKS).map_err(|e| self.err(e))?;
            tx.delete_table(DIRTY).map_err(|e| self.err(e))?;
            tx.delete_table(SENT).map_err(|e| self.err(e))?;
            tx.open_table(ROWS).map_err(|e| self.err(e))?;
            tx.open_table(LINKS).map_err(|e| self.err(e))?;
            tx.open_table(DIRTY).map_err(|e| self.err(e))?;
            tx.open_table(SENT).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(stale)
    }

    /// Whether the document's index was built for another definition and wants a new
    /// one (`prepare` found the definition changed; kept until `reindexed`).
    pub fn reindex_wanted(&self) -> Result<bool, StateError> {
        // (`open_with` created the meta table.)
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta.get(REINDEX).map_err(|e| self.err(e))?.is_some())
    }

    /// The document's index was rebuilt for the current definition.
    pub fn reindexed(&self) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.open_table(META)
            .map_err(|e| self.err(e))?
            .remove(REINDEX)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Marks dirty again every document handed on without a stored checkpoint after it
    /// (a crash lost the checkpoint, and the sinks may have lost the documents).
    fn resend(&self) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut sent = tx.open_table(SENT).map_err(|e| self.err(e))?;
            let mut dirty = tx.open_table(DIRTY).map_err(|e| self.err(e))?;
            loop {
                let chunk = first_keys(&sent, &[], 10_000).map_err(|e| self.err(e))?;
                if chunk.is_empty() {
                    break;
                }
                for at in chunk {
                    let version = sent
                        .remove(at.as_slice())
                        .map_err(|e| self.err(e))?
                        .map_or(0, |v| v.value());
                    let root = &at[8..];
                    let held = dirty.get(root).map_err(|e| self.err(e))?.map(|v| v.value());
                    if held.is_none_or(|h| h < version) {
                        dirty.insert(root, version).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Applies one change (see `Changes::apply`) and commits it durably; returns how
    /// many roots it marked.
    pub fn apply(
        &self,
        table: &str,
        before: Option<&Row>,
        after: Option<&Row>,
        version: u64,
    ) -> Result<u64, StateError> {
        let mut changes = self.changes()?;
        changes.apply(table, before, after, version)?;
        let marked = changes.commit()?;
        self.persist()?;
        Ok(marked)
    }

    /// Starts a batch of changes: one write transaction, committed by
    /// `Changes::commit` without an fsync; `persist` makes every committed batch
    /// durable at once (a checkpoint's flush: the state must be on disk before a
    /// checkpoint past its changes is).
    pub fn changes(&self) -> Result<Changes<'_>, StateError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::None)
            .map_err(|e| self.err(e))?;
        Ok(Changes {
            state: self,
            tx,
            marked: 0,
            floor: 0,
        })
    }

    /// `changes` for changes that reach the state late: a replay of what a quarantine
    /// or a failed enrichment held back while the state went on. The index may hold
    /// the documents they affect at a version newer than theirs already (written for
    /// a later change of another table), which would refuse them; so they mark those
    /// documents with at least the newest version the state has applied, the version
    /// of a document built from everything it holds now.
    pub fn late_changes(&self) -> Result<Changes<'_>, StateError> {
        let mut c = self.changes()?;
        c.floor = self.newest.load(Ordering::Relaxed);
        Ok(c)
    }

    /// Makes every batch committed so far durable.
    pub fn persist(&self) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` dirty root keys after `after` (None: from the first), in key order,
    /// each with the version that marked it: the documents to build and write.
    pub fn dirty(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let dirty = tx.open_table(DIRTY).map_err(|e| self.err(e))?;
        let range = match after {
            Some(a) => {
                dirty.range::<&[u8]>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => dirty.range::<&[u8]>(..),
        }
        .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in range.take(limit) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((k.value().to_vec(), v.value()));
        }
        Ok(out)
    }

    /// Takes up to `limit` dirty documents (in root key order) to hand to the sinks in
    /// `epoch`: each built from the state as it is now, with the version that marked it
    /// last. Their marks move to the sent set until a checkpoint covers the epoch
    /// (`covered`). Committed without an fsync, like a batch of changes. Returns them
    /// and how many stay marked.
    pub fn take(&self, limit: usize, epoch: u64) -> Result<(Vec<Built>, u64), StateError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::None)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let left;
        {
            let mut dirty = tx.open_table(DIRTY).map_err(|e| self.err(e))?;
            let mut sent = tx.open_table(SENT).map_err(|e| self.err(e))?;
            let mut rows = tx.open_table(ROWS).map_err(|e| self.err(e))?;
            let links = tx.open_table(LINKS).map_err(|e| self.err(e))?;
            let mut fill = Fill::new();
            for root in first_keys(&dirty, &[], limit).map_err(|e| self.err(e))? {
                let version = dirty
                    .remove(root.as_slice())
                    .map_err(|e| self.err(e))?
                    .map_or(0, |v| v.value());
                let mut at = epoch.to_be_bytes().to_vec();
                at.extend_from_slice(&root);
                sent.insert(at.as_slice(), version)
                    .map_err(|e| self.err(e))?;
                let row = self.top_row(&rows, &links, &root, &mut fill)?;
                out.push(Built {
                    key: key_values(&root).map_err(|e| self.err(e))?,
                    row,
                    version,
                });
                // What was rendered below the root is cached in its rows, so the next
                // document that holds them (or this one, changed elsewhere) reuses it.
                for (at, render) in fill.drain(..) {
                    let Some(mut row) = stored_row(&rows, &at).map_err(|e| self.err(e))? else {
                        continue;
                    };
                    row.render = Some(render);
                    rows.insert(at.as_slice(), codec::encode(&row).as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            left = ReadableTableMetadata::len(&dirty).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok((out, left))
    }

    /// A checkpoint covering every document taken in epochs up to `epoch` is stored:
    /// they are delivered for good.
    pub fn covered(&self, epoch: u64) -> Result<(), StateError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::None)
            .map_err(|e| self.err(e))?;
        {
            let mut sent = tx.open_table(SENT).map_err(|e| self.err(e))?;
            let end = (epoch + 1).to_be_bytes();
            loop {
                let chunk = first_keys(&sent, &[], 10_000).map_err(|e| self.err(e))?;
                let done = chunk.len() < 10_000;
                let mut removed = 0;
                for at in chunk.iter().take_while(|k| k.as_slice() < end.as_slice()) {
                    sent.remove(at.as_slice()).map_err(|e| self.err(e))?;
                    removed += 1;
                }
                if done || removed < chunk.len() {
                    break;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` documents of live roots after root key `after` (None: from the
    /// first), in root key order, built from the state as it is, without marks or
    /// cached renders (for `tributary verify`); each with the version of its root row.
    pub fn page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Built)>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let rows = tx.open_table(ROWS).map_err(|e| self.err(e))?;
        let links = tx.open_table(LINKS).map_err(|e| self.err(e))?;
        let prefix = row_key(0, &[]);
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(row_key(0, a)),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        for item in rows
            .range::<&[u8]>((
                from.as_ref().map(|k| k.as_slice()),
                std::ops::Bound::Unbounded,
            ))
            .map_err(|e| self.err(e))?
        {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let Some(root) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            if let Some(b) = self.root_document(&rows, &links, root)? {
                out.push((root.to_vec(), b));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The document of root key `root` as `page` builds it; None when its root row
    /// does not exist.
    pub fn built(&self, root: &[u8]) -> Result<Option<Built>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let rows = tx.open_table(ROWS).map_err(|e| self.err(e))?;
        let links = tx.open_table(LINKS).map_err(|e| self.err(e))?;
        self.root_document(&rows, &links, root)
    }

    /// Whether root key `root` has a live row (without building its document).
    pub fn has_root(&self, root: &[u8]) -> Result<bool, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let rows = tx.open_table(ROWS).map_err(|e| self.err(e))?;
        Ok(row_values(&rows, 0, root)
            .map_err(|e| self.err(e))?
            .is_some())
    }

    /// `built` within a read transaction's tables.
    fn root_document(
        &self,
        rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
        links: &impl ReadableTable<&'static [u8], ()>,
        root: &[u8],
    ) -> Result<Option<Built>, StateError> {
        let Some(stored) = stored_row(rows, &row_key(0, root)).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        if stored.values.is_none() {
            return Ok(None);
        }
        let row = self.top_row(rows, links, root, &mut Fill::new())?;
        let key = key_values(root).map_err(|e| self.err(e))?;
        Ok(Some(Built {
            key,
            row,
            version: stored.version,
        }))
    }

    /// How many documents are marked dirty (for `status`; counts every mark).
    pub fn dirty_count(&self) -> Result<u64, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let dirty = tx.open_table(DIRTY).map_err(|e| self.err(e))?;
        ReadableTableMetadata::len(&dirty).map_err(|e| self.err(e))
    }

    /// The root row `root` as a document's top-level fields: the root's columns, then
    /// each embed or nest as JSON (see `render`); None when the root row does not exist.
    fn top_row(
        &self,
        rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
        links: &impl ReadableTable<&'static [u8], ()>,
        root: &[u8],
        fill: &mut Fill,
    ) -> Result<Option<Row>, StateError> {
        let Some(values) = row_values(rows, 0, root).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let node = &self.tree.nodes[0];
        let mut row: Row = node
            .columns
            .iter()
            .map(|&i| values[node.slot(i)].clone())
            .collect();
        for &c in &node.children {
            let mut json = String::new();
            self.render_child(rows, links, 0, &values, c, &mut json, &mut Some(&mut *fill))?;
            let raw = serde_json::value::RawValue::from_string(json).map_err(|e| self.err(e))?;
            row.push(Value::Json(raw));
        }
        Ok(Some(row))
    }

    /// Row `key` of node `n` becomes `row` (None: deleted) at `version`, unless the
    /// state holds that version or a newer one; the documents it left and joined go to
    /// `mark`.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        rows: &mut Table<&'static [u8], &'static [u8]>,
        links: &mut Table<&'static [u8], ()>,
        n: usize,
        key: &[u8],
        row: Option<(&Row, &Projection)>,
        version: u64,
        mark: &mut dyn FnMut(Vec<u8>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let at = row_key(n, key);
        let old = stored_row(&*rows, &at).map_err(|e| self.err(e))?;
        // Like Elasticsearch's `external_gte`: an older version is a replay of what the
        // state has passed; an equal one is applied (a PostgreSQL transaction's changes
        // share its commit LSN, so a row changed twice in one transaction must take
        // both, and a replay of the transaction ends where it ended).
        if old.as_ref().is_some_and(|o| o.version > version) {
            return Ok(());
        }
        let old = old.and_then(|o| o.values);
        // A value the source did not send (an unchanged TOASTed column) keeps the
        // stored one.
        let new: Option<Vec<Value>> = row.map(|(r, proj)| {
            proj.iter()
                .enumerate()
                .map(
                    |(slot, at)| match (at.map_or(&Value::Null, |i| &r[i]), &old) {
                        (Value::Absent, Some(o)) => o[slot].clone(),
                        (v, _) => v.clone(),
                    },
                )
                .collect()
        });
        // The documents the row was in, before it changes, and those it is in after
        // (none while the state is built: every root is marked at its end).
        self.newest.fetch_max(version, Ordering::Relaxed);
        let walk = self.building_since().is_none();
        if let Some(v) = old.as_ref().filter(|_| walk) {
            self.roots_of(rows, &*links, n, v, mark)?;
        }
        // An update that keeps the row's own join values keeps its parents: one walk
        // marks its documents (and drops their cached renders) for both.
        let node = &self.tree.nodes[n];
        let own = |v: &Vec<Value>| join_bytes(node.on.iter().map(|&(_, o)| &v[node.slot(o)]));
        let same_parents = match (&old, &new) {
            (Some(o), Some(v)) => node.parent.is_none() || own(o) == own(v),
            _ => false,
        };
        self.relink(links, n, key, old.as_deref(), new.as_deref())?;
        let stored = codec::Row {
            version,
            values: new,
            render: None,
        };
        rows.insert(at.as_slice(), codec::encode(&stored).as_slice())
            .map_err(|e| self.err(e))?;
        if let Some(v) = stored.values.as_ref().filter(|_| walk && !same_parents) {
            self.roots_of(rows, &*links, n, v, mark)?;
        }
        // A root the state never held, deleted: its document may be in the index all
        // the same (written before the state was rebuilt), and goes.
        if walk && node.parent.is_none() && old.is_none() && stored.values.is_none() {
            mark(key.to_vec())?;
        }
        Ok(())
    }

    /// Moves row `key` of node `n` in the indexes from its old values to its new ones.
    fn relink(
        &self,
        links: &mut Table<&'static [u8], ()>,
        n: usize,
        key: &[u8],
        old: Option<&[Value]>,
        new: Option<&[Value]>,
    ) -> Result<(), StateError> {
        let node = &self.tree.nodes[n];
        // As a child: by its own `on` columns. As a parent: by each child's parent side.
        let mut sides: Vec<(usize, u8, Vec<usize>)> = Vec::new();
        if node.parent.is_some() {
            sides.push((n, DOWN, node.on.iter().map(|&(_, own)| own).collect()));
        }
        for &c in &node.children {
            let child = &self.tree.nodes[c];
            sides.push((c, UP, child.on.iter().map(|&(parent, _)| parent).collect()));
        }
        for (at, side, cols) in sides {
            let value = |vals: &[Value]| join_bytes(cols.iter().map(|&i| &vals[node.slot(i)]));
            let (was, is) = (old.and_then(value), new.and_then(value));
            if was == is {
                continue;
            }
            if let Some(v) = was {
                links
                    .remove(link_key(at, side, &v, key).as_slice())
                    .map_err(|e| self.err(e))?;
            }
            if let Some(v) = is {
                links
                    .insert(link_key(at, side, &v, key).as_slice(), ())
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Marks the root keys of the documents row `values` of node `n` is in, walking the
    /// parent indexes up one level at a time without collecting them. The rows passed
    /// on the way lose their cached render (it shows the row as it was).
    fn roots_of(
        &self,
        rows: &mut Table<&'static [u8], &'static [u8]>,
        links: &impl ReadableTable<&'static [u8], ()>,
        n: usize,
        values: &[Value],
        mark: &mut dyn FnMut(Vec<u8>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let node = &self.tree.nodes[n];
        let Some(p) = node.parent else {
            return mark(key_bytes(node.key.iter().map(|&i| &values[node.slot(i)])));
        };
        let Some(value) = join_bytes(node.on.iter().map(|&(_, own)| &values[node.slot(own)]))
        else {
            return Ok(()); // a NULL join value joins no row
        };
        let prefix = link_key(n, UP, &value, &[]);
        for item in links.range(prefix.as_slice()..).map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let Some(parent_key) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            let at = row_key(p, parent_key);
            let Some(mut parent) = stored_row(&*rows, &at).map_err(|e| self.err(e))? else {
                continue;
            };
            let Some(pv) = parent.values.take() else {
                continue;
            };
            if parent.render.take().is_some() {
                let stale = codec::Row {
                    values: Some(pv),
                    ..parent
                };
                rows.insert(at.as_slice(), codec::encode(&stale).as_slice())
                    .map_err(|e| self.err(e))?;
                let pv = stale.values.expect("set above");
                self.roots_of(rows, links, p, &pv, mark)?;
            } else {
                self.roots_of(rows, links, p, &pv, mark)?;
            }
        }
        Ok(())
    }

    /// The document of root key `root` (from `key_bytes`) as JSON, built from the state;
    /// None when the root row does not exist.
    pub fn render(&self, root: &[u8]) -> Result<Option<String>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let rows = tx.open_table(ROWS).map_err(|e| self.err(e))?;
        let links = tx.open_table(LINKS).map_err(|e| self.err(e))?;
        let Some(values) = row_values(&rows, 0, root).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let mut out = String::new();
        self.render_node(&rows, &links, 0, &values, &mut out, &mut None)?;
        Ok(Some(out))
    }

    /// Writes node `n`'s object for its row `values`: its columns, then each child.
    /// Rows below it render from their cached render where they have one; those
    /// rendered here go to `fill` (when given) to be cached.
    fn render_node(
        &self,
        rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
        links: &impl ReadableTable<&'static [u8], ()>,
        n: usize,
        values: &[Value],
        out: &mut String,
        fill: &mut Option<&mut Fill>,
    ) -> Result<(), StateError> {
        let node = &self.tree.nodes[n];
        out.push('{');
        let mut first = true;
        let mut field = |name: &str, out: &mut String| {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(name).expect("a string"));
            out.push(':');
        };
        for (name, &i) in node.column_names.iter().zip(&node.columns) {
            field(name, out);
            out.push_str(&values[node.slot(i)].to_json());
        }
        for &c in &node.children {
            field(&self.tree.nodes[c].field, out);
            self.render_child(rows, links, n, values, c, out, fill)?;
        }
        out.push('}');
        Ok(())
    }

    /// Child `c` of node `n`'s row `values`: its rows joined to it, as an object (or
    /// null) or an array in `order_by` order.
    #[allow(clippy::too_many_arguments)]
    fn render_child(
        &self,
        rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
        links: &impl ReadableTable<&'static [u8], ()>,
        n: usize,
        values: &[Value],
        c: usize,
        out: &mut String,
        fill: &mut Option<&mut Fill>,
    ) -> Result<(), StateError> {
        let node = &self.tree.nodes[n];
        let child: &Node = &self.tree.nodes[c];
        let mut found: Vec<(Vec<u8>, Vec<Value>, Option<String>)> = Vec::new();
        if let Some(value) = join_bytes(
            child
                .on
                .iter()
                .map(|&(parent, _)| &values[node.slot(parent)]),
        ) {
            for key in linked(links, c, DOWN, &value).map_err(|e| self.err(e))? {
                let Some(row) = stored_row(rows, &row_key(c, &key)).map_err(|e| self.err(e))?
                else {
                    continue;
                };
                if let Some(v) = row.values {
                    found.push((key, v, row.render));
                }
                if !child.nested {
                    break; // an embed joins the key of its table: one row at most
                }
            }
        }
        if !child.nested && found.is_empty() {
            out.push_str("null");
            return Ok(());
        }
        found.sort_by(|a, b| {
            child
                .order_by
                .iter()
                .map(|&i| compare(&a.1[child.slot(i)], &b.1[child.slot(i)]))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if child.nested {
            out.push('[');
        }
        for (i, (key, v, cached)) in found.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match cached {
                Some(r) => out.push_str(r),
                None => {
                    let start = out.len();
                    self.render_node(rows, links, c, v, out, fill)?;
                    if let Some(f) = fill.as_deref_mut() {
                        f.push((row_key(c, key), out[start..].to_string()));
                    }
                }
            }
        }
        if child.nested {
            out.push(']');
        }
        Ok(())
    }
}

/// Renders made while building documents, to cache in their rows: (row key, JSON).
type Fill = Vec<(Vec<u8>, String)>;

/// A batch of changes in one write transaction (see `State::changes`).
pub struct Changes<'s> {
    state: &'s State,
    tx: WriteTransaction,
    marked: u64,
    /// The least version a document is marked with (`State::late_changes`).
    floor: u64,
}

impl Changes<'_> {
    /// Applies one change of `table` (`db.table`): `before` and `after` are whole rows
    /// in the table's column order (None: the row did not exist / no longer exists), at
    /// `version`. Marks dirty (see `State::dirty`) the root rows whose documents it
    /// affects, before and after the change (an order moving between customers affects
    /// both): a fan-out to a million documents is marked on disk, never held in memory.
    /// A change older than what the state holds changes nothing and marks nothing.
    pub fn apply(
        &mut self,
        table: &str,
        before: Option<&Row>,
        after: Option<&Row>,
        version: u64,
    ) -> Result<(), StateError> {
        let state = self.state;
        for n in state.tree.nodes_of(table) {
            let proj = state.tree.nodes[n].identity();
            self.apply_node(n, &proj, before, after, version)?;
        }
        Ok(())
    }

    /// `apply` for node `n`, with rows in a layout of their own: `proj` says where
    /// each of the node's stored columns sits in them (see `Node::project`).
    pub fn apply_node(
        &mut self,
        n: usize,
        proj: &Projection,
        before: Option<&Row>,
        after: Option<&Row>,
        version: u64,
    ) -> Result<(), StateError> {
        let state = self.state;
        let err = |e: &dyn std::fmt::Display| state.err(e);
        let mut rows = self.tx.open_table(ROWS).map_err(|e| err(&e))?;
        let mut links = self.tx.open_table(LINKS).map_err(|e| err(&e))?;
        let mut dirty = self.tx.open_table(DIRTY).map_err(|e| err(&e))?;
        let marked = &mut self.marked;
        let mut mark = marker(&mut dirty, version.max(self.floor), marked, &err);
        let node = &state.tree.nodes[n];
        let key_of = |r: &Row| {
            key_bytes(
                node.key
                    .iter()
                    .map(|&k| proj[node.slot(k)].map_or(&Value::Null, |i| &r[i])),
            )
        };
        // A key change is the old row's delete and the new row's insert.
        let parts = match (before.map(key_of), after.map(key_of)) {
            (Some(b), Some(a)) if b != a => vec![(b, None), (a, after)],
            (_, Some(a)) => vec![(a, after)],
            (Some(b), None) => vec![(b, None)],
            (None, None) => Vec::new(),
        };
        for (key, row) in parts {
            let row = row.map(|r| (r, proj));
            state.put(&mut rows, &mut links, n, &key, row, version, &mut mark)?;
        }
        Ok(())
    }

    /// Every row of node `n` is deleted at `version` (a TRUNCATE of its table), in
    /// chunks of keys so that a large table is not held in memory.
    pub fn truncate_node(&mut self, n: usize, version: u64) -> Result<(), StateError> {
        let state = self.state;
        let err = |e: &dyn std::fmt::Display| state.err(e);
        let mut rows = self.tx.open_table(ROWS).map_err(|e| err(&e))?;
        let mut links = self.tx.open_table(LINKS).map_err(|e| err(&e))?;
        let mut dirty = self.tx.open_table(DIRTY).map_err(|e| err(&e))?;
        let marked = &mut self.marked;
        let mut mark = marker(&mut dirty, version.max(self.floor), marked, &err);
        let prefix = row_key(n, &[]);
        let mut after: Vec<u8> = prefix.clone();
        loop {
            let chunk = first_keys(&rows, &after, 1_000).map_err(|e| err(&e))?;
            let chunk: Vec<Vec<u8>> = chunk
                .into_iter()
                .filter(|k| k.as_slice() != after.as_slice())
                .take_while(|k| k.starts_with(&prefix))
                .collect();
            let Some(last) = chunk.last() else { break };
            after = last.clone();
            for at in &chunk {
                state.put(
                    &mut rows,
                    &mut links,
                    n,
                    &at[prefix.len()..],
                    None,
                    version,
                    &mut mark,
                )?;
            }
        }
        Ok(())
    }

    /// Roots marked so far in this batch (a root marked by two changes counts twice).
    pub fn marked(&self) -> u64 {
        self.marked
    }

    /// Commits the batch (durable with the next `State::persist`); returns how many
    /// roots it marked dirty.
    pub fn commit(self) -> Result<u64, StateError> {
        let state = self.state;
        {
            // Kept over a restart: the version the build's end marks every root with,
            // and the floor of late changes (`State::late_changes`).
            let newest = state.newest.load(Ordering::Relaxed).to_string();
            let mut meta = self.tx.open_table(META).map_err(|e| state.err(e))?;
            meta.insert("newest", newest.as_str())
                .map_err(|e| state.err(e))?;
        }
        self.tx.commit().map_err(|e| state.err(e))?;
        Ok(self.marked)
    }
}

/// Where each of a node's stored columns sits in a row of its table as events carry
/// it (None: the layout has no such column, read as NULL).
pub type Projection = [Option<usize>];

/// A document built for the sinks (`State::take`).
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The root row's key values.
    pub key: Vec<Value>,
    /// The top-level fields (see `State::top_row`); None: no root row, the document is
    /// deleted.
    pub row: Option<Row>,
    /// The newest change that affected it.
    pub version: u64,
}

/// Marks a root dirty with `version` unless a newer change marked it already, counting
/// the marks in `marked`.
fn marker<'t, 'txn, E: Fn(&dyn std::fmt::Display) -> StateError>(
    dirty: &'t mut Table<'txn, &'static [u8], u64>,
    version: u64,
    marked: &'t mut u64,
    err: &'t E,
) -> impl FnMut(Vec<u8>) -> Result<(), StateError> + use<'t, 'txn, E> {
    move |root: Vec<u8>| {
        let newer = match dirty.get(root.as_slice()).map_err(|e| err(&e))? {
            Some(v) => v.value() < version,
            None => true,
        };
        if newer {
            dirty
                .insert(root.as_slice(), version)
                .map_err(|e| err(&e))?;
            *marked += 1;
        }
        Ok(())
    }
}

/// Up to `limit` keys of `table` from `from` on (inclusive), in order.
fn first_keys<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static [u8], V>,
    from: &[u8],
    limit: usize,
) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for item in table.range(from..).map_err(|e| e.to_string())?.take(limit) {
        let (k, _) = item.map_err(|e| e.to_string())?;
        out.push(k.value().to_vec());
    }
    Ok(out)
}

/// The values of a key written by `key_bytes`.
pub fn key_values(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or("a truncated key")?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (value, tail) = tail.split_at_checked(len).ok_or("a truncated key")?;
        out.push(serde_json::from_slice(value).map_err(|e| e.to_string())?);
        rest = tail;
    }
    Ok(out)
}

/// The live values of row `key` of node `n`; None when absent or deleted.
fn row_values(
    rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
    n: usize,
    key: &[u8],
) -> Result<Option<Vec<Value>>, String> {
    Ok(stored_row(rows, &row_key(n, key))?.and_then(|s| s.values))
}

/// The row stored at `at` (from `row_key`), tombstones included.
fn stored_row(
    rows: &impl ReadableTable<&'static [u8], &'static [u8]>,
    at: &[u8],
) -> Result<Option<codec::Row>, String> {
    match rows.get(at).map_err(|e| e.to_string())? {
        Some(v) => codec::decode(v.value()).map(Some),
        None => Ok(None),
    }
}

/// The row keys linked to `value` on `side` of node `n`.
fn linked(
    links: &impl ReadableTable<&'static [u8], ()>,
    n: usize,
    side: u8,
    value: &[u8],
) -> Result<Vec<Vec<u8>>, String> {
    let prefix = link_key(n, side, value, &[]);
    let mut out = Vec::new();
    for item in links
        .range(prefix.as_slice()..)
        .map_err(|e| e.to_string())?
    {
        let (k, _) = item.map_err(|e| e.to_string())?;
        let Some(key) = k.value().strip_prefix(prefix.as_slice()) else {
            break;
        };
        out.push(key.to_vec());
    }
    Ok(out)
}

fn row_key(n: usize, key: &[u8]) -> Vec<u8> {
    let mut out = (n as u16).to_be_bytes().to_vec();
    out.extend_from_slice(key);
    out
}

fn link_key(n: usize, side: u8, value: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = (n as u16).to_be_bytes().to_vec();
    out.push(side);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(key);
    out
}

/// A table key as bytes (each value's exact stored form, length-prefixed).
pub fn key_bytes<'a>(values: impl Iterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        let b = serde_json::to_vec(v).expect("values serialize");
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out
}

/// Join values as bytes that are equal exactly when SQL's `=` would join them across
/// the two tables' types (an INT and a BIGINT UNSIGNED of the same number, a DECIMAL
/// 1.50 and 1.5); None when one is NULL (NULL joins nothing).
pub fn join_bytes<'a>(values: impl Iterator<Item = &'a Value>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        let part: Vec<u8> = match v {
            Value::Null | Value::Absent => return None,
            Value::Int(i) => format!("n{i}").into_bytes(),
            Value::UInt(u) => format!("n{u}").into_bytes(),
            Value::Decimal(d) => format!("n{}", normalize_decimal(d)).into_bytes(),
            Value::String(s) => [b"s".as_slice(), s.as_bytes()].concat(),
            other => [b"j".as_slice(), other.to_json().as_bytes()].concat(),
        };
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(&part);
    }
    Some(out)
}

/// `-001.500` -> `-1.5`, `0.0` -> `0`: one spelling per number.
fn normalize_decimal(d: &str) -> String {
    let (neg, digits) = match d.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, d.strip_prefix('+').unwrap_or(d)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let body = if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    };
    if neg && body != "0" {
        format!("-{body}")
    } else {
        body
    }
}

/// The order of `order_by`: numbers by value, text by its bytes (a binary collation),
/// NULLs first, anything else by its JSON.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let number = |v: &Value| -> Option<f64> {
        match v {
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f as f64),
            Value::Double(d) => Some(*d),
            Value::Decimal(d) => d.parse().ok(),
            _ => None,
        }
    };
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::UInt(x), Value::UInt(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => a.to_json().cmp(&b.to_json()),
        },
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
