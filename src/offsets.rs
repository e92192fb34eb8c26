//! Durable local state (redb, `<state dir>/offsets.redb`): the source checkpoint, each
//! stream's cursor at that checkpoint (sinks, the quarantine and dead-letter streams),
//! each stage's state there (schema guard, snapshot progress), the keyed state of
//! stateful enrichers, and the schema versions seen per table.
//!
//! Everything a checkpoint stores is written in one transaction (`commit`), so it
//! always describes the same transaction boundary.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::event::Position;
use crate::files::FileMode;

const CHECKPOINT: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoint");
const SINK_CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("sink_cursors");
const SCHEMAS: TableDefinition<&str, &[u8]> = TableDefinition::new("schema_versions");
/// `<table>\0<version, 10 digits>` -> the columns and key of that version.
const SCHEMA_HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("schema_history");
/// Keyed stage state (enrichment `track`): `<owner>\0<key>` -> bytes, written in the
/// checkpoint's transaction so it always matches the stored position.
const KEYED_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("keyed_state");
/// Stage state by stage id (`schema-guard`, `snapshot`): JSON, as of the checkpoint.
/// Stores written before this table existed kept it among the sink cursors; `open`
/// moves it here.
const STAGE_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("stage_state");

/// The stage ids older stores kept among the sink cursors.
const STAGES_AMONG_CURSORS: [&str; 2] = ["schema-guard", "snapshot"];

/// A change to keyed state: set (Some) or remove (None) `<owner>\0<key>`.
pub type StateUpdate = (String, Option<Vec<u8>>);

/// One thing a checkpoint stores, besides the position.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// A stream's cursor (a sink, the quarantine or a dead-letter stream) by its id.
    Cursor(String, serde_json::Value),
    /// A stage's state by the stage's id.
    Stage(String, serde_json::Value),
    /// A keyed-state update.
    Keyed(StateUpdate),
}
const SOURCE_KEY: &str = "source";

/// One version of a table's schema as the source described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub version: u32,
    pub columns: Vec<crate::event::Column>,
    /// Indexes into `columns`.
    pub primary_key: Vec<usize>,
    /// When this version was first seen, ms since the epoch.
    pub at_ms: u64,
    /// How its type names are spelled (`schema::TYPE_NAMES`; 0 when not recorded).
    #[serde(default)]
    pub type_names: u32,
}

fn history_key(table: &str, version: u32) -> String {
    format!("{table}\0{version:010}")
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("state dir {path}: {message}")]
    Store { path: PathBuf, message: String },
    /// Another process (a running daemon) holds the store.
    #[error("state dir {path}: offsets.redb is in use by another tributary process; each connector needs its own [state] dir")]
    InUse { path: PathBuf },
}

/// The last transaction boundary every sink acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where the source resumes.
    pub position: Position,
    /// Source kind and address it was taken from (`mariadb 127.0.0.1:3306`).
    pub source: String,
    /// When it was written, ms since the epoch.
    pub at_ms: u64,
}

pub struct OffsetStore {
    db: Database,
    path: PathBuf,
    /// Of offsets.redb and the reports beside it; the state dir gets the search bits.
    file_mode: FileMode,
}

/// redb's page cache. Its default, 1 GiB, would let the cache grow with the file (the
/// track enricher's keys make it large) and count against the daemon's memory; the
/// checkpoint and cursors are a few pages, and the keys past the track enricher's
/// in-memory LRU (`max_keys`) are the only large reads.
const STORE_CACHE_BYTES: usize = 32 << 20;

impl OffsetStore {
    /// Opens (or creates) the store in `dir`, which holds row data: the dir and its
    /// files get `file_mode` (0600 files in a 0700 dir by default). Only one process
    /// may hold it.
    pub fn open(dir: &Path, file_mode: FileMode) -> Result<Self, OffsetError> {
        let err = |message: String| OffsetError::Store {
            path: dir.to_path_buf(),
            message,
        };
        file_mode
            .create_dir_all(dir)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
        let path = dir.join("offsets.redb");
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OffsetError::InUse {
                    path: dir.to_path_buf(),
                },
                other => err(format!("cannot open offsets.redb: {other}")),
            })?;
        if let Ok(f) = std::fs::File::open(&path) {
            file_mode
                .apply(&f)
                .map_err(|e| err(format!("cannot set the mode of offsets.redb: {e}")))?;
        }
        let store = OffsetStore {
            db,
            path,
            file_mode,
        };
        // Create the tables so readers never see "table does not exist".
        let tx = store.db.begin_write().map_err(|e| store.err(e))?;
        {
            tx.open_table(CHECKPOINT).map_err(|e| store.err(e))?;
            let mut cursors = tx.open_table(SINK_CURSORS).map_err(|e| store.err(e))?;
            tx.open_table(SCHEMAS).map_err(|e| store.err(e))?;
            let mut stages = tx.open_table(STAGE_STATE).map_err(|e| store.err(e))?;
            // Stores of earlier releases kept stage state among the sink cursors.
            for id in STAGES_AMONG_CURSORS {
                let old = cursors.remove(id).map_err(|e| store.err(e))?;
                if let Some(v) = old {
                    let bytes = v.value().to_vec();
                    drop(v);
                    stages
                        .insert(id, bytes.as_slice())
                        .map_err(|e| store.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn err(&self, e: impl std::fmt::Display) -> OffsetError {
        OffsetError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, OffsetError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(CHECKPOINT).map_err(|e| self.err(e))?;
        match t.get(SOURCE_KEY).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| self.err(format!("corrupt checkpoint: {e}"))),
        }
    }

    /// A stream's cursor as it stored it (sink-specific JSON).
    pub fn sink_cursor(&self, sink_id: &str) -> Result<Option<serde_json::Value>, OffsetError> {
        self.json(SINK_CURSORS, sink_id, "cursor of sink")
    }

    /// A stage's state as of the last checkpoint.
    pub fn stage_state(&self, stage: &str) -> Result<Option<serde_json::Value>, OffsetError> {
        self.json(STAGE_STATE, stage, "state of stage")
    }

    fn json(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        what: &str,
    ) -> Result<Option<serde_json::Value>, OffsetError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| self.err(format!("corrupt {what} {key}: {e}"))),
        }
    }

    /// The keyed state of `owner`, as of the last checkpoint: (key, bytes).
    pub fn keyed_state(&self, owner: &str) -> Result<Vec<(String, Vec<u8>)>, OffsetError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(KEYED_STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let prefix = format!("{owner}\0");
        let mut out = Vec::new();
        for item in t.range(prefix.as_str()..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some(key) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One key of a stateful stage's keyed state (`<owner>\0<key>`), as of the last
    /// checkpoint.
    pub fn keyed_get(&self, owner: &str, key: &str) -> Result<Option<Vec<u8>>, OffsetError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(KEYED_STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = t
            .get(format!("{owner}\0{key}").as_str())
            .map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    pub fn sink_cursors(&self) -> Result<Vec<(String, serde_json::Value)>, OffsetError> {
        self.all_json(SINK_CURSORS)
    }

    /// A stage's state as of the last checkpoint, read as `T`. State that does not read
    /// as `T` stops with what to do and never falls back to a default: a guard that
    /// forgot its quarantined tables would send their changes on.
    pub fn stage_state_as<T: serde::de::DeserializeOwned>(
        &self,
        stage: &str,
    ) -> Result<Option<T>, OffsetError> {
        match self.stage_state(stage)? {
            None => Ok(None),
            Some(v) => serde_json::from_value(v).map(Some).map_err(|e| {
                self.err(format!(
                    "the stored state of stage `{stage}` cannot be read ({e}): the store is damaged \
                     or was written by a newer tributary. Restore the state dir from a backup, or \
                     move it away to start over from [source] start (the tables are sent again)"
                ))
            }),
        }
    }

    /// Every stage's state as of the last checkpoint.
    pub fn stage_states(&self) -> Result<Vec<(String, serde_json::Value)>, OffsetError> {
        self.all_json(STAGE_STATE)
    }

    fn all_json(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, serde_json::Value)>, OffsetError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let v = serde_json::from_slice(v.value())
                .map_err(|e| self.err(format!("corrupt entry {} ({e})", k.value())))?;
            out.push((k.value().to_string(), v));
        }
        Ok(out)
    }

    /// Writes the checkpoint (if any) and what it saves atomically, durably.
    pub fn commit(
        &self,
        checkpoint: Option<&Checkpoint>,
        saved: &[Saved],
    ) -> Result<(), OffsetError> {
        // The open file outlives its name: without this, a deleted state dir would take
        // every later checkpoint with it, and the next start would begin from scratch.
        if !self.path.exists() {
            return Err(self.err(
                "offsets.redb was deleted while tributary ran, so no checkpoint can be stored: \
                 stopping. Restore the state dir from a backup, or start again without it \
                 (from [source] start)",
            ));
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut cursors = tx.open_table(SINK_CURSORS).map_err(|e| self.err(e))?;
            let mut stages = tx.open_table(STAGE_STATE).map_err(|e| self.err(e))?;
            let mut keyed = None;
            for s in saved {
                match s {
                    Saved::Cursor(id, v) => {
                        let bytes = serde_json::to_vec(v).map_err(|e| self.err(e))?;
                        cursors.insert(id.as_str(), bytes.as_slice()).map(|_| ())
                    }
                    Saved::Stage(id, v) => {
                        let bytes = serde_json::to_vec(v).map_err(|e| self.err(e))?;
                        stages.insert(id.as_str(), bytes.as_slice()).map(|_| ())
                    }
                    Saved::Keyed((key, value)) => {
                        let t = match &mut keyed {
                            Some(t) => t,
                            None => {
                                keyed.insert(tx.open_table(KEYED_STATE).map_err(|e| self.err(e))?)
                            }
                        };
                        match value {
                            Some(v) => t.insert(key.as_str(), v.as_slice()).map(|_| ()),
                            None => t.remove(key.as_str()).map(|_| ()),
                        }
                    }
                }
                .map_err(|e| self.err(e))?;
            }
            if let Some(cp) = checkpoint {
                let mut t = tx.open_table(CHECKPOINT).map_err(|e| self.err(e))?;
                let bytes = serde_json::to_vec(cp).map_err(|e| self.err(e))?;
                t.insert(SOURCE_KEY, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        if let Some(cp) = checkpoint {
            self.write_status(cp, saved);
        }
        Ok(())
    }

    /// A readable copy of the latest checkpoint beside the store, for `tributary
    /// status` while the daemon holds the store (redb allows one process). Best effort:
    /// the store is the truth, this file only reports.
    fn write_status(&self, cp: &Checkpoint, saved: &[Saved]) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let mut cursors = serde_json::Map::new();
        let mut stages = serde_json::Map::new();
        for s in saved {
            match s {
                Saved::Cursor(id, v) => cursors.insert(id.clone(), v.clone()),
                Saved::Stage(id, v) => stages.insert(id.clone(), v.clone()),
                Saved::Keyed(_) => None,
            };
        }
        let body = serde_json::json!({ "checkpoint": cp, "cursors": cursors, "stages": stages });
        let _ = self
            .file_mode
            .write_atomically(&dir.join("status.json"), body.to_string().as_bytes());
    }

    /// The checkpoint a running daemon last reported in `status.json`.
    pub fn reported_checkpoint(dir: &Path) -> Option<Checkpoint> {
        let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        serde_json::from_value(v.get("checkpoint")?.clone()).ok()
    }

    /// What a running daemon last reported under `part`: `cursors` (streams) or
    /// `stages` (stage state).
    pub fn reported(dir: &Path, part: &str) -> serde_json::Map<String, serde_json::Value> {
        std::fs::read_to_string(dir.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get(part)?.as_object().cloned())
            .unwrap_or_default()
    }

    /// Forgets the source checkpoint (the next run starts from `[source] start`). Sink
    /// cursors stay, so log streams keep their history and append after it.
    pub fn reset_source(&self) -> Result<bool, OffsetError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let had = {
            let mut t = tx.open_table(CHECKPOINT).map_err(|e| self.err(e))?;
            let had = t.remove(SOURCE_KEY).map_err(|e| self.err(e))?.is_some();
            had
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(had)
    }

    /// The layout fingerprints of `table`'s versions, in version order. Unreadable ones
    /// are an error: starting the versions over would give new layouts old numbers.
    fn fingerprints(&self, table: &str, bytes: &[u8]) -> Result<Vec<u64>, OffsetError> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.err(format!(
                "the schema versions of {table} cannot be read ({e}): restore the state dir from a backup"
            ))
        })
    }

    /// The schema version of `table` with this column-layout fingerprint: the known
    /// version, or the next one (stored at once).
    pub fn schema_version(&self, table: &str, fingerprint: u64) -> Result<u32, OffsetError> {
        {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(SCHEMAS).map_err(|e| self.err(e))?;
            if let Some(v) = t.get(table).map_err(|e| self.err(e))? {
                let known = self.fingerprints(table, v.value())?;
                if let Some(i) = known.iter().position(|f| *f == fingerprint) {
                    return Ok(i as u32 + 1);
                }
            }
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let version = {
            let mut t = tx.open_table(SCHEMAS).map_err(|e| self.err(e))?;
            let mut known: Vec<u64> = match t.get(table).map_err(|e| self.err(e))? {
                Some(v) => self.fingerprints(table, v.value())?,
                None => Vec::new(),
            };
            let version = match known.iter().position(|f| *f == fingerprint) {
                Some(i) => i as u32 + 1,
                None => {
                    known.push(fingerprint);
                    known.len() as u32
                }
            };
            let bytes = serde_json::to_vec(&known).map_err(|e| self.err(e))?;
            t.insert(table, bytes.as_slice()).map_err(|e| self.err(e))?;
            version
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(version)
    }

    /// Records the columns of a table's schema version, the first time it is seen (a
    /// version's layout never changes, so later calls change nothing).
    pub fn record_schema(&self, schema: &crate::event::TableSchema) -> Result<(), OffsetError> {
        let key = history_key(&schema.qualified_name(), schema.schema_version);
        {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = match tx.open_table(SCHEMA_HISTORY) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(self.err(e)),
            };
            if let Some(t) = t {
                if t.get(key.as_str()).map_err(|e| self.err(e))?.is_some() {
                    return Ok(());
                }
            }
        }
        let record = SchemaRecord {
            version: schema.schema_version,
            columns: schema.columns.clone(),
            primary_key: schema.primary_key.clone(),
            at_ms: crate::event::now_ms(),
            type_names: crate::schema::TYPE_NAMES,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| self.err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(SCHEMA_HISTORY).map_err(|e| self.err(e))?;
            if t.get(key.as_str()).map_err(|e| self.err(e))?.is_none() {
                t.insert(key.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        // A readable copy for `policy diff` while the daemon holds the store.
        if let (Ok(history), Some(dir)) = (self.schema_history(), self.path.parent()) {
            if let Ok(body) = serde_json::to_vec(&history) {
                let _ = self
                    .file_mode
                    .write_atomically(&dir.join("schemas.json"), &body);
            }
        }
        Ok(())
    }

    /// The schema history of the state dir `dir`: from the store, or, while a running
    /// daemon holds it, from the copy it keeps in `schemas.json`. Creates nothing.
    pub fn recorded_schemas(
        dir: &Path,
        file_mode: FileMode,
    ) -> Result<std::collections::BTreeMap<String, Vec<SchemaRecord>>, OffsetError> {
        if !dir.join("offsets.redb").exists() {
            return Ok(Default::default());
        }
        match OffsetStore::open(dir, file_mode) {
            Ok(store) => store.schema_history(),
            Err(open_error) => {
                let text =
                    std::fs::read_to_string(dir.join("schemas.json")).map_err(|_| open_error)?;
                serde_json::from_str(&text).map_err(|e| OffsetError::Store {
                    path: dir.to_path_buf(),
                    message: format!("schemas.json: {e}"),
                })
            }
        }
    }

    /// Every recorded version of every table, by table, oldest first.
    pub fn schema_history(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<SchemaRecord>>, OffsetError> {
        let mut out: std::collections::BTreeMap<String, Vec<SchemaRecord>> = Default::default();
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(SCHEMA_HISTORY) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(self.err(e)),
        };
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some((table, _)) = k.value().split_once('\0') else {
                continue;
            };
            let record: SchemaRecord =
                serde_json::from_slice(v.value()).map_err(|e| self.err(e))?;
            out.entry(table.to_string()).or_default().push(record);
        }
        Ok(out)
    }

    /// Tables with their latest schema version.
    pub fn schema_versions(&self) -> Result<Vec<(String, u32)>, OffsetError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(SCHEMAS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let known = self.fingerprints(k.value(), v.value())?;
            out.push((k.value().to_string(), known.len() as u32));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_and_cursors_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            position: Position::Binlog {
                file: "binlog.000002".into(),
                offset: 777,
                gtid: Some("0-1-9".into()),
            },
            source: "mariadb 127.0.0.1:3306".into(),
            at_ms: 1,
        };
        {
            let s = OffsetStore::open(dir.path(), FileMode::default()).unwrap();
            assert!(s.checkpoint().unwrap().is_none());
            s.commit(
                Some(&cp),
                &[
                    Saved::Cursor("log:x".into(), serde_json::json!({"segment":1,"offset":5})),
                    Saved::Stage("schema-guard".into(), serde_json::json!({"tables": {}})),
                    Saved::Keyed(("track\0k".into(), Some(vec![1, 2]))),
                ],
            )
            .unwrap();
            assert!(
                OffsetStore::open(dir.path(), FileMode::default()).is_err(),
                "second open must fail"
            );
        }
        let s = OffsetStore::open(dir.path(), FileMode::default()).unwrap();
        assert_eq!(s.checkpoint().unwrap(), Some(cp));
        assert_eq!(s.sink_cursor("log:x").unwrap().unwrap()["offset"], 5);
        assert_eq!(
            s.stage_state("schema-guard").unwrap(),
            Some(serde_json::json!({"tables": {}}))
        );
        assert_eq!(
            s.keyed_state("track").unwrap(),
            [("k".to_string(), vec![1, 2])]
        );
        assert!(s.reset_source().unwrap());
        assert!(s.checkpoint().unwrap().is_none());
        assert!(s.sink_cursor("log:x").unwrap().is_some());
    }

    /// A store as the releases before the stage-state table wrote it: the guard's and
    /// the snapshot's state among the sink cursors. It opens with both moved to the
    /// stage table, the real cursors and the checkpoint untouched.
    #[test]
    fn a_store_of_the_earlier_layout_opens_with_stage_state_moved() {
        let dir = tempfile::tempdir().unwrap();
        let guard = serde_json::json!({"tables": {"a.b": {"version": 1, "columns": []}}});
        let snapshot = serde_json::json!({"tables": {}});
        let cp = Checkpoint {
            position: Position::Wal { lsn: 42 },
            source: "postgres 127.0.0.1:5432".into(),
            at_ms: 7,
        };
        {
            // Written with redb directly, as the earlier release's commit did.
            let db = Database::create(dir.path().join("offsets.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(CHECKPOINT).unwrap();
                t.insert(SOURCE_KEY, serde_json::to_vec(&cp).unwrap().as_slice())
                    .unwrap();
                let mut t = tx.open_table(SINK_CURSORS).unwrap();
                for (id, v) in [
                    ("schema-guard", &guard),
                    ("snapshot", &snapshot),
                    ("log:0", &serde_json::json!({"segment": 1, "offset": 9})),
                ] {
                    t.insert(id, serde_json::to_vec(v).unwrap().as_slice())
                        .unwrap();
                }
                tx.open_table(SCHEMAS).unwrap();
            }
            tx.commit().unwrap();
        }
        let s = OffsetStore::open(dir.path(), FileMode::default()).unwrap();
        assert_eq!(s.checkpoint().unwrap(), Some(cp));
        assert_eq!(s.stage_state("schema-guard").unwrap(), Some(guard.clone()));
        assert_eq!(s.stage_state("snapshot").unwrap(), Some(snapshot));
        let cursors = s.sink_cursors().unwrap();
        assert_eq!(cursors.len(), 1, "{cursors:?}");
        assert_eq!(cursors[0].0, "log:0");
        drop(s);
        // Opening again finds nothing more to move and keeps what was moved.
        let s = OffsetStore::open(dir.path(), FileMode::default()).unwrap();
        assert_eq!(s.stage_state("schema-guard").unwrap(), Some(guard));
    }

    /// Unreadable stored state is an error, never a default: versions starting over
    /// would give new layouts old numbers, a fresh guard would forget its quarantines.
    #[test]
    fn unreadable_state_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path(), FileMode::default()).unwrap();
        {
            let tx = s.db.begin_write().unwrap();
            tx.open_table(SCHEMAS)
                .unwrap()
                .insert("a.b", b"not json".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let e = s.schema_version("a.b", 7).unwrap_err().to_string();
        assert!(e.contains("schema versions of a.b"), "{e}");
        assert!(s.schema_versions().is_err());
        s.commit(None, &[Saved::Stage("x".into(), serde_json::json!("text"))])
            .unwrap();
        let e = s
            .stage_state_as::<std::collections::BTreeMap<String, u32>>("x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage `x` cannot be read"), "{e}");
    }

    #[test]
    fn schema_versions_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::open(dir.path(), FileMode::default()).unwrap();
        assert_eq!(s.schema_version("a.b", 11).unwrap(), 1);
        assert_eq!(s.schema_version("a.b", 22).unwrap(), 2);
        assert_eq!(s.schema_version("a.b", 11).unwrap(), 1);
        assert_eq!(s.schema_version("a.c", 22).unwrap(), 1);
        let col = |n: &str, t: &str| crate::event::Column {
            name: n.into(),
            type_name: t.into(),
        };
        let schema = |version, columns| {
            crate::event::TableSchema::new(
                std::sync::Arc::from("c"),
                "postgres",
                "a".into(),
                "b".into(),
                columns,
                vec![0],
                version,
            )
        };
        s.record_schema(&schema(1, vec![col("id", "int")])).unwrap();
        s.record_schema(&schema(2, vec![col("id", "int"), col("x", "text")]))
            .unwrap();
        // A version's record is written once.
        s.record_schema(&schema(1, vec![col("other", "int")]))
            .unwrap();
        let h = s.schema_history().unwrap();
        assert_eq!(h["a.b"].len(), 2);
        assert_eq!(h["a.b"][0].columns, [col("id", "int")]);
        assert_eq!(h["a.b"][1].version, 2);
    }
}
