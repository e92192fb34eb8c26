//! `tributary reindex --from log:NAME`: the new index filled by replaying a log stream
//! instead of reading the source.
//!
//! A log stream holds every change the daemon sent its sinks, in order, with the
//! versions the Elasticsearch sink wrote them with. Replaying a table's records from
//! the start of its history into an empty index, versioned the same way, gives the
//! documents the live index holds (`event::consumer` reads the records back so that
//! documents and ids render byte for byte as the live sink rendered them).
//!
//! The table's history in the log starts at its last `t` (truncate: the table was
//! empty then, so every later row is a change in the log) or `resync` marker, or else
//! at its snapshot. The log holds it whole only when it still has every row that
//! snapshot read: the `r` records read since the snapshot's start must number the rows
//! the snapshot state counted. Retention that deleted some of them, a log sink added
//! after the snapshot, a table never snapshotted (`snapshot = "never"`), all make that
//! check fail and the reindex is refused before anything is created.
//!
//! The records are what the sink got, enrichment included: the replay does not enrich
//! again, and is refused when the index was written under another enrichment or
//! mapping configuration than the connector file has now (reindex from the source
//! applies a new one). Beside a running daemon, the replay starts once the daemon
//! writes the table's changes to the new index too and has checkpointed after that
//! (so the log holds every change it did not write there); later records lose to or
//! equal the daemon's writes by version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{ConnectorConfig, SinkConfig};
use crate::enrich::Stage;
use crate::event::consumer::ConsumerEvent;
use crate::event::{ChangeEvent, Op, TableSchema, Value};
use crate::journal::{read_log, LogRecordError};
use crate::offsets::OffsetStore;
use crate::schema::history::Schemas;
use crate::sink::elasticsearch::verify::{IndexView, Repair};
use crate::sink::elasticsearch::DocId;
use crate::snapshot::{State, Status};
use crate::verify::VerifyError;

/// Changes written per bulk request.
const BATCH: usize = 1000;

/// Where a reindex reads the table from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// A consistent snapshot of the source (default).
    #[default]
    Source,
    /// The log sink of this name (its `name`, its id, or its dir).
    Log(String),
}

impl std::str::FromStr for ReadFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "source" => Ok(ReadFrom::Source),
            _ => match s.strip_prefix("log:") {
                Some(name) if !name.is_empty() => Ok(ReadFrom::Log(name.to_string())),
                _ => Err(format!(
                    "`{s}`: say `source` or `log:NAME` (NAME: a log sink's name or dir)"
                )),
            },
        }
    }
}

/// A log stream checked to hold a table's whole history.
#[derive(Debug)]
pub struct History {
    /// The log sink's id and directory.
    pub id: String,
    pub dir: PathBuf,
    /// The table's history starts after this record (segment, line); at the log's
    /// start when None.
    after: Option<(u64, u64)>,
    /// Records of the table in it (for the progress bar).
    pub records: u64,
    /// The snapshot's `r` records it must hold, and since when (ms).
    reads: Option<(u64, u64)>,
}

/// The snapshot state of the daemon's last checkpoint.
fn snapshot_state(cfg: &ConnectorConfig, store: Option<&OffsetStore>) -> Result<State, String> {
    let value = match store {
        Some(s) => s.stage_state("snapshot").map_err(|e| e.to_string())?,
        None => OffsetStore::reported(&cfg.state.dir, "stages")
            .get("snapshot")
            .cloned(),
    };
    match value {
        Some(v) => serde_json::from_value(v).map_err(|e| format!("snapshot state: {e}")),
        None => Ok(State::default()),
    }
}

/// The log sink `name` names.
fn log_sink(cfg: &ConnectorConfig, name: &str) -> Result<(String, PathBuf), String> {
    let logs: Vec<_> = cfg
        .sinks
        .iter()
        .filter_map(|s| match s {
            SinkConfig::Log(l) => Some((s.id(), l)),
            _ => None,
        })
        .collect();
    logs.iter()
        .find(|(id, l)| {
            id == name
                || id.strip_prefix("log:") == Some(name)
                || l.name.as_deref() == Some(name)
                || l.dir == Path::new(name)
        })
        .map(|(id, l)| (id.clone(), l.dir.clone()))
        .ok_or_else(|| {
            format!(
                "--from log:{name}: {} has no log sink of that name (log sinks: {})",
                cfg.path.display(),
                if logs.is_empty() {
                    "none".to_string()
                } else {
                    logs.iter()
                        .map(|(id, _)| id.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })
}

/// What the replay needs of a record before parsing it whole.
#[derive(Deserialize)]
struct Head {
    op: String,
    source: HeadSource,
    ts_ms: u64,
}

#[derive(Deserialize)]
struct HeadSource {
    db: String,
    table: String,
}

impl Head {
    fn parse(json: &str) -> Option<Head> {
        serde_json::from_str(json).ok()
    }

    fn is(&self, db: &str, table: &str) -> bool {
        self.source.db == db && self.source.table == table
    }
}

fn split(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("", table))
}

/// The table's history in log `name`, or why the log does not hold it whole.
pub fn history(
    cfg: &ConnectorConfig,
    store: Option<&OffsetStore>,
    table: &str,
    name: &str,
) -> Result<History, VerifyError> {
    let (id, dir) = log_sink(cfg, name).map_err(VerifyError)?;
    let state = snapshot_state(cfg, store).map_err(VerifyError)?;
    let (db, t) = split(table);
    // One pass: the last reset of the table, and the snapshot rows after it.
    let snapshot = state.tables.get(table);
    let since = snapshot.and_then(|p| p.started_ms);
    let mut after = None;
    let mut reset: Option<String> = None;
    let mut records = 0u64;
    let mut reads = 0u64;
    read_log(&dir, |r| {
        let Some(head) = Head::parse(&r.json) else {
            return true;
        };
        if !head.is(db, t) {
            return true;
        }
        match head.op.as_str() {
            "t" | "resync" => {
                after = Some((r.segment, r.line));
                reset = Some(head.op);
                records = 0;
                reads = 0;
            }
            op => {
                records += 1;
                if op == "r" && since.is_some_and(|s| head.ts_ms >= s) {
                    reads += 1;
                }
            }
        }
        true
    })
    .map_err(|e| log_error(&id, e))?;
    let refuse = |why: String| {
        VerifyError(format!(
            "log {id} ({}) does not hold the whole history of {table}: {why}; reindex from the source instead (--from source)",
            dir.display()
        ))
    };
    // After a truncate every row of the table is a change in the log.
    if reset.as_deref() == Some("t") {
        return Ok(History {
            id,
            dir,
            after,
            records,
            reads: None,
        });
    }
    let Some(p) = snapshot else {
        return Err(refuse(format!(
            "no snapshot of the table is recorded in {} (rows it held before the stream began may be in no record)",
            cfg.state.dir.display()
        )));
    };
    if p.status != Status::Done {
        return Err(refuse(
            "its snapshot has not finished (run the reindex once `tributary status` shows it done)"
                .to_string(),
        ));
    }
    let since = p.started_ms.unwrap_or(0);
    if reads != p.rows {
        return Err(refuse(format!(
            "its last snapshot read {} rows, of which {reads} are in the log (retention deleted the oldest records, the log sink was added after the snapshot, or rows failed enrichment)",
            p.rows
        )));
    }
    // After a resync marker the snapshot's rows (counted above) and every later change
    // follow it. Without one, the history starts at the snapshot: the log must have
    // begun before it and kept everything since.
    if reset.is_none() {
        let first = crate::journal::list_segments(&dir)
            .map_err(|e| VerifyError(format!("log {id}: {e}")))?
            .first()
            .copied();
        if first.is_some_and(|s| s > 0) {
            return Err(refuse(format!(
                "retention deleted its oldest segments (it starts at segment {})",
                first.unwrap_or(0)
            )));
        }
        match crate::journal::created_ms(&dir) {
            Some(created) if created > since => {
                return Err(refuse(format!(
                    "the log began at {}, after the table's snapshot started ({})",
                    crate::temporal::utc_from_ms(created).to_text(),
                    crate::temporal::utc_from_ms(since).to_text()
                )))
            }
            Some(_) => {}
            // A log an earlier release began: its snapshot rows (counted above) tell.
            None if p.rows > 0 => {}
            None => {
                return Err(refuse(
                    "the log does not record when it began, and the table's snapshot read no rows to tell by"
                        .to_string(),
                ))
            }
        }
    }
    Ok(History {
        id,
        dir,
        after,
        records,
        reads: Some((p.rows, since)),
    })
}

fn log_error(id: &str, e: LogRecordError) -> VerifyError {
    VerifyError(format!("log {id}: {e}"))
}

/// Replays the table's history into `index`.
pub struct Replay<'a> {
    pub cfg: &'a ConnectorConfig,
    pub view: &'a IndexView,
    pub table: &'a str,
    pub index: &'a str,
    pub history: &'a History,
}

impl Replay<'_> {
    /// Sends every record of the table after the history's start, in order; calls
    /// `progress` with the records done after each batch. Returns the documents
    /// written and deleted.
    pub async fn run(
        &self,
        stage: &mut Stage,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, VerifyError> {
        let (db, t) = split(self.table);
        let history = OffsetStore::recorded_schemas(&self.cfg.state.dir, self.cfg.state.file_mode)
            .map_err(|e| VerifyError(e.to_string()))?;
        let mut schemas = Schemas::new(
            self.cfg.connector_name().into(),
            self.cfg.source.kind(),
            history,
        );
        // The layout each schema version's records were written with, and its ids.
        let mut layouts: HashMap<u32, (Arc<TableSchema>, DocId)> = HashMap::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u64, String)>(BATCH);
        let (dir, after) = (self.history.dir.clone(), self.history.after);
        let (want_db, want_table) = (db.to_string(), t.to_string());
        let reader = tokio::task::spawn_blocking(move || {
            // The record the history starts after must still be there: retention
            // deleting its segment meanwhile would cut the start off unseen.
            let mut saw_start = after.is_none();
            read_log(&dir, |r| {
                if after.is_some_and(|a| (r.segment, r.line) <= a) {
                    saw_start |= after == Some((r.segment, r.line));
                    return true;
                }
                if !Head::parse(&r.json).is_some_and(|h| h.is(&want_db, &want_table)) {
                    return true;
                }
                saw_start && tx.blocking_send((r.segment, r.line, r.json)).is_ok()
            })
            .map(|_| saw_start)
        });
        let mut pending: Vec<Repair> = Vec::with_capacity(BATCH);
        let (mut done, mut written, mut reads) = (0u64, 0u64, 0u64);
        while let Some((segment, line, json)) = rx.recv().await {
            let at = || format!("log {} segment {segment} line {line}", self.history.id);
            let record =
                ConsumerEvent::parse(&json).map_err(|m| VerifyError(format!("{}: {m}", at())))?;
            let version = record.schema_version;
            if let std::collections::hash_map::Entry::Vacant(slot) = layouts.entry(version) {
                let schema = schemas.get(db, t, version).ok_or_else(|| {
                    VerifyError(format!(
                        "{}: version {version} of {} is not in the schema history of {}",
                        at(),
                        self.table,
                        self.cfg.state.dir.display()
                    ))
                })?;
                let layout = stage
                    .layout(&schema)
                    .map_err(|e| VerifyError(e.to_string()))?;
                let ids = self
                    .view
                    .doc_id(&layout)
                    .map_err(VerifyError)?
                    .ok_or_else(|| {
                        VerifyError(format!(
                            "{}: version {version} of {} has no key and no ids setting",
                            at(),
                            self.table
                        ))
                    })?;
                slot.insert((layout, ids));
            }
            let (layout, ids) = &layouts[&version];
            if record.op == "r"
                && self
                    .history
                    .reads
                    .is_some_and(|(_, since)| record.ts_ms >= since)
            {
                reads += 1;
            }
            let e = record.into_event(layout.clone()).map_err(|m| {
                VerifyError(format!(
                    "{}: {m} (the log was written under another enrichment configuration than {} has now: reindex from the source)",
                    at(),
                    self.cfg.path.display()
                ))
            })?;
            match e.op {
                Op::Truncate | Op::Resync => {
                    return Err(VerifyError(format!(
                        "{}: {} was {} while the log was replayed; run the reindex again",
                        at(),
                        self.table,
                        if e.op == Op::Truncate {
                            "truncated"
                        } else {
                            "resynced"
                        }
                    )))
                }
                Op::Delete => {
                    if let Some(id) = e.before.as_ref().and_then(|row| ids.of(&e, row)) {
                        pending.push(Repair::Delete { event: e, id });
                    }
                }
                _ if e.is_partial() => {
                    // Its absent values are in the document written before it.
                    written += self.send(&mut pending).await?;
                    if let Some(r) = self.merged(e, ids).await? {
                        pending.push(r);
                    }
                }
                _ => {
                    if let Some(id) = e.after.as_ref().and_then(|row| ids.of(&e, row)) {
                        pending.push(Repair::Index { event: e, id });
                    }
                }
            }
            done += 1;
            if pending.len() >= BATCH {
                written += self.send(&mut pending).await?;
                progress(done);
            }
        }
        written += self.send(&mut pending).await?;
        progress(done);
        let saw_start = reader
            .await
            .map_err(|e| VerifyError(format!("the log reader failed: {e}")))?
            .map_err(|e| log_error(&self.history.id, e))?;
        if !saw_start {
            return Err(VerifyError(format!(
                "log {}: retention deleted the start of {}'s history while it was replayed; the alias still points at the previous index: reindex from the source",
                self.history.id, self.table
            )));
        }
        // Retention may have deleted records since they were counted.
        if let Some((rows, _)) = self.history.reads {
            if reads != rows {
                return Err(VerifyError(format!(
                    "log {}: {reads} of the snapshot's {rows} rows of {} were left when it was replayed (retention deleted the rest meanwhile); the alias still points at the previous index: reindex from the source",
                    self.history.id, self.table
                )));
            }
        }
        Ok(written)
    }

    async fn send(&self, pending: &mut Vec<Repair>) -> Result<u64, VerifyError> {
        let n = self
            .view
            .write(self.index, pending)
            .await
            .map_err(VerifyError)?;
        pending.clear();
        Ok(n)
    }

    /// A partial row made whole: the absent values from its `before` image or from
    /// the document the new index holds. None when neither has them (the live sink
    /// could not write it either).
    async fn merged(&self, e: ChangeEvent, ids: &DocId) -> Result<Option<Repair>, VerifyError> {
        let after = e.after.as_ref().expect("partial rows have an after image");
        let mut row = after.clone();
        let mut missing = Vec::new();
        for (i, v) in after.iter().enumerate() {
            if matches!(v, Value::Absent) {
                match e.before.as_ref().and_then(|b| b.get(i)) {
                    Some(b) if !matches!(b, Value::Absent) => row[i] = b.clone(),
                    _ => missing.push(i),
                }
            }
        }
        if !missing.is_empty() {
            let Some(id) = ids.of(&e, after) else {
                return Ok(None);
            };
            let stored = self
                .view
                .get(self.index, std::slice::from_ref(&id))
                .await
                .map_err(VerifyError)?;
            let Some(doc) = stored.get(&id) else {
                return Ok(None);
            };
            for i in missing {
                let Some(v) = doc.source.get(&e.table.columns[i].name) else {
                    return Ok(None);
                };
                let raw = serde_json::value::RawValue::from_string(v.to_string())
                    .expect("a parsed value is JSON");
                row[i] = Value::Json(raw);
            }
        }
        let Some(id) = ids.of(&e, &row) else {
            return Ok(None);
        };
        Ok(Some(Repair::Index {
            event: ChangeEvent {
                after: Some(row),
                ..e
            },
            id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_says_source_or_a_log() {
        assert_eq!("source".parse::<ReadFrom>().unwrap(), ReadFrom::Source);
        assert_eq!(
            "log:events".parse::<ReadFrom>().unwrap(),
            ReadFrom::Log("events".into())
        );
        assert!("log:".parse::<ReadFrom>().is_err());
        assert!("kafka"
            .parse::<ReadFrom>()
            .unwrap_err()
            .contains("log:NAME"));
    }
}
