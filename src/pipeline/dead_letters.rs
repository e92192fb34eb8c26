//! `tributary dead-letters list|replay`: the changes a step could not handle, shown and
//! sent again once the operator fixed the cause.
//!
//! Two kinds of stream hold them: the enrichment's (an enrichment step failed; the
//! change reached no sink) and each Elasticsearch sink's (the cluster, or the sink
//! before sending, refused the document; the other sinks have the change). Every
//! record keeps the change exactly, with its table layout (`StoredChange`), so a replay
//! sends what the live stream would have sent: an enrichment dead letter goes through
//! the enrichment chain again and on to every sink, a sink's dead letter to that sink
//! alone. Each change keeps its version, so a replayed write loses to anything newer
//! already in an index (Elasticsearch writes are versioned `external_gte`).
//!
//! Where a stream's replay got to is stored under `<cursor id>#replayed` in the same
//! commit as the cursors of everything the replay wrote, so a replay that fails before
//! it changes nothing stored and running it again sends the same records. A record
//! that fails again is appended to its stream again (after the ones replayed) and waits
//! for the next replay. Like `quarantine replay`, it runs while the daemon is stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::ConnectorConfig;
use crate::event::stored::StoredChange;
use crate::event::SourceMessage;
use crate::journal::{read_log, LogRecordError, Record};
use crate::offsets::{OffsetError, OffsetStore, Saved};

use super::replay::{Onward, BATCH};
use super::PipelineError;

/// The name `--stream` takes for the enrichment's stream.
pub const ENRICH: &str = "enrich";

/// A readable copy of every stream's replay mark, beside the store, for `list` while
/// the daemon holds the store.
const MARKS_COPY: &str = "dead-letters-replayed.json";

/// One dead-letter stream of a connector.
#[derive(Debug, Clone)]
pub struct Stream {
    /// `enrich`, or the sink's id.
    pub name: String,
    pub dir: PathBuf,
    /// The id its write cursor is stored under.
    cursor_id: String,
    /// Where a replay sends its changes: through the enrichment to every sink, or to
    /// this one sink.
    sink: Option<String>,
}

impl Stream {
    fn mark_id(&self) -> String {
        format!("{}#replayed", self.cursor_id)
    }
}

/// The connector's dead-letter streams: `--stream` (None: every one). `elasticsearch`
/// names the only Elasticsearch sink, when there is one.
pub fn streams(cfg: &ConnectorConfig, only: Option<&str>) -> Result<Vec<Stream>, PipelineError> {
    let mut all = Vec::new();
    if !cfg.enrich.is_empty() || cfg.enrich_dead_letter_dir().is_dir() {
        all.push(Stream {
            name: ENRICH.into(),
            dir: cfg.enrich_dead_letter_dir(),
            cursor_id: crate::enrich::DEAD_LETTERS_ID.into(),
            sink: None,
        });
    }
    for s in &cfg.sinks {
        if let Some(dir) = s.sink().dead_letter_dir() {
            all.push(Stream {
                name: s.id(),
                dir,
                cursor_id: s.id(),
                sink: Some(s.id()),
            });
        }
    }
    let Some(only) = only else {
        return Ok(all);
    };
    let sinks: Vec<&Stream> = all.iter().filter(|s| s.sink.is_some()).collect();
    let chosen = match only {
        "elasticsearch" if sinks.len() == 1 => Some(sinks[0].clone()),
        _ => all.iter().find(|s| s.name == only).cloned(),
    };
    chosen.map(|s| vec![s]).ok_or_else(|| {
        PipelineError::DeadLetters(format!(
            "--stream {only}: {} has no such dead-letter stream (it has: {})",
            cfg.path.display(),
            if all.is_empty() {
                "none".to_string()
            } else {
                all.iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    })
}

/// A record's place in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct At {
    pub segment: u64,
    pub line: u64,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment, self.line)
    }
}

/// How far a stream was replayed: every record up to `all`, and a table's records up
/// to its entry (replays with `--table`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Replayed {
    #[serde(default)]
    all: Option<At>,
    #[serde(default)]
    tables: BTreeMap<String, At>,
}

impl Replayed {
    fn covers(&self, table: &str, at: At) -> bool {
        self.all.is_some_and(|a| at <= a) || self.tables.get(table).is_some_and(|t| at <= *t)
    }

    /// Everything up to `end` replayed (of `tables` only, when given).
    fn advance(&mut self, end: At, tables: &[String]) {
        if tables.is_empty() {
            self.all = Some(end);
            self.tables.retain(|_, t| *t > end);
        } else {
            for t in tables {
                self.tables.insert(t.clone(), end);
            }
        }
    }
}

/// The parts of a record `list` and `replay` read: the `event` field (the rendered
/// event, possibly nested deeper than a parser's recursion limit) is skipped.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    reason: String,
    /// Enrichment: `file:line kind`.
    #[serde(default)]
    step: Option<String>,
    /// Elasticsearch: the index (alias) and the error's type.
    #[serde(default)]
    index: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    replay: Option<Box<RawValue>>,
}

/// One dead letter, as `list` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: At,
    /// `db.table`, `op` code and version (empty for a record written before records
    /// kept their change exactly: those cannot be replayed).
    pub table: String,
    pub op: String,
    pub version: u64,
    /// The step that failed, or the index and error type.
    pub cause: String,
    pub reason: String,
    pub replayed: bool,
    /// The record's JSON as stored.
    pub json: String,
}

impl Entry {
    pub fn replayable(&self) -> bool {
        !self.table.is_empty()
    }
}

/// A record read back: the entry and its change.
fn parse(r: &Record) -> Result<(Entry, Option<StoredChange>), String> {
    let head: Head = serde_json::from_str(&r.json).map_err(|e| e.to_string())?;
    let change = match &head.replay {
        Some(raw) => Some(
            serde_json::from_str::<StoredChange>(raw.get()).map_err(|e| format!("replay: {e}"))?,
        ),
        None => None,
    };
    let cause = match (head.step, head.index, head.error_type) {
        (Some(step), _, _) => step,
        (None, Some(index), Some(t)) => format!("{index} {t}"),
        (None, Some(index), None) => index,
        (None, None, _) => String::new(),
    };
    let (table, op, version) = change
        .as_ref()
        .map_or((String::new(), String::new(), 0), |c| {
            (c.name(), c.event.op.clone(), c.event.version)
        });
    Ok((
        Entry {
            at: At {
                segment: r.segment,
                line: r.line,
            },
            table,
            op,
            version,
            cause,
            reason: head.reason,
            replayed: false,
            json: r.json.clone(),
        },
        change,
    ))
}

fn corrupt(stream: &Stream, at: At, why: &str) -> PipelineError {
    PipelineError::DeadLetters(format!(
        "{} (record {at} in {}): cannot be read: {why}",
        stream.name,
        stream.dir.display()
    ))
}

fn read_failed(stream: &Stream, e: LogRecordError) -> PipelineError {
    PipelineError::DeadLetters(format!("{}: {e}", stream.name))
}

/// The replay marks: from the store, or from the copy a replay leaves beside it while
/// a running daemon holds the store.
fn marks(cfg: &ConnectorConfig) -> Result<HashMap<String, Replayed>, PipelineError> {
    let mut out = HashMap::new();
    match cfg.state.open_store() {
        Ok(store) => {
            for (id, v) in store.sink_cursors()? {
                if id.ends_with("#replayed") {
                    out.insert(id, serde_json::from_value(v).unwrap_or_default());
                }
            }
        }
        Err(OffsetError::InUse { .. }) => {
            if let Ok(text) = std::fs::read_to_string(cfg.state.dir.join(MARKS_COPY)) {
                out = serde_json::from_str(&text).unwrap_or_default();
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(out)
}

/// The dead letters of the chosen streams (of `table` only, when given), in stream
/// order; replayed ones only with `all`. Works while the daemon runs.
pub fn list(
    cfg: &ConnectorConfig,
    stream: Option<&str>,
    table: Option<&str>,
    all: bool,
) -> Result<Vec<(String, Vec<Entry>)>, PipelineError> {
    let marks = marks(cfg)?;
    let mut out = Vec::new();
    for s in streams(cfg, stream)? {
        let mark = marks.get(&s.mark_id()).cloned().unwrap_or_default();
        let mut entries = Vec::new();
        if s.dir.is_dir() {
            let mut failed = None;
            read_log(&s.dir, |r| match parse(&r) {
                Ok((mut e, _)) => {
                    e.replayed = mark.covers(&e.table, e.at);
                    if (all || !e.replayed) && table.is_none_or(|t| t == e.table) {
                        entries.push(e);
                    }
                    true
                }
                Err(why) => {
                    failed = Some(corrupt(
                        &s,
                        At {
                            segment: r.segment,
                            line: r.line,
                        },
                        &why,
                    ));
                    false
                }
            })
            .map_err(|e| read_failed(&s, e))?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        out.push((s.name.clone(), entries));
    }
    Ok(out)
}

/// What a replay did, per stream.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Stream -> table -> changes sent again.
    pub replayed: BTreeMap<String, BTreeMap<String, u64>>,
    /// Stream -> records written before records kept their change (passed over).
    pub not_replayable: BTreeMap<String, u64>,
}

/// Sends the chosen streams' dead letters again (of `tables` only, when given) and
/// moves each stream's replay mark past them in the same commit.
pub async fn replay(
    cfg: &ConnectorConfig,
    stream: Option<&str>,
    tables: &[String],
) -> Result<ReplayReport, PipelineError> {
    let chosen = streams(cfg, stream)?;
    let store = super::replay::open_store(cfg, "dead-letters replay")?;
    let mut report = ReplayReport::default();
    for s in chosen {
        if s.dir.is_dir() {
            replay_stream(cfg, &store, &s, tables, &mut report).await?;
        }
    }
    let mut copy = HashMap::new();
    for (id, v) in store.sink_cursors()? {
        if id.ends_with("#replayed") {
            copy.insert(id, v);
        }
    }
    let body = serde_json::to_vec(&copy).expect("JSON values serialize");
    let _ = cfg
        .state
        .file_mode
        .write_atomically(&cfg.state.dir.join(MARKS_COPY), &body);
    Ok(report)
}

async fn replay_stream(
    cfg: &ConnectorConfig,
    store: &Arc<OffsetStore>,
    s: &Stream,
    tables: &[String],
    report: &mut ReplayReport,
) -> Result<(), PipelineError> {
    // Opening what the replay writes to cuts each stream (this one included) back to
    // its last checkpoint, before it is read.
    let policy = cfg.policy()?;
    let mut onward = match &s.sink {
        Some(id) => Onward::one_sink(cfg, store, policy, id).await?,
        None => Onward::every_stage(cfg, store, policy).await?,
    };
    let mark_id = s.mark_id();
    let mut mark: Replayed = match store.sink_cursor(&mark_id)? {
        Some(v) => serde_json::from_value(v)
            .map_err(|e| PipelineError::DeadLetters(format!("{mark_id}: stored mark: {e}")))?,
        None => Replayed::default(),
    };
    // First pass, sending nothing: every pending record must read back, or none is
    // sent; and the end as of now (what the replay itself appends comes after it).
    let mut end = None;
    let mut failed = None;
    let mut old = 0u64;
    read_log(&s.dir, |r| {
        let at = At {
            segment: r.segment,
            line: r.line,
        };
        end = Some(at);
        match parse(&r) {
            // Written before records kept their change: passed over by a full replay.
            Ok((_, None)) if tables.is_empty() && !mark.covers("", at) => old += 1,
            Ok(_) => {}
            Err(why) => failed = Some(corrupt(s, at, &why)),
        }
        failed.is_none()
    })
    .map_err(|e| read_failed(s, e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let Some(end) = end else {
        return Ok(());
    };
    if old > 0 {
        report.not_replayable.insert(s.name.clone(), old);
    }

    // Second pass: send them again, in stream order, up to that end.
    let counts = report.replayed.entry(s.name.clone()).or_default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StoredChange>(BATCH);
    let dir = s.dir.clone();
    let (stream, pending) = (s.clone(), mark.clone());
    let only: Vec<String> = tables.to_vec();
    let reader = tokio::task::spawn_blocking(move || {
        let mut failed = None;
        let read = read_log(&dir, |r| {
            let at = At {
                segment: r.segment,
                line: r.line,
            };
            match parse(&r) {
                Ok((e, Some(c))) => {
                    let table = e.table;
                    let wanted =
                        !pending.covers(&table, at) && (only.is_empty() || only.contains(&table));
                    if wanted && tx.blocking_send(c).is_err() {
                        return false;
                    }
                }
                Ok((_, None)) => {}
                Err(why) => failed = Some(corrupt(&stream, at, &why)),
            }
            failed.is_none() && at < end
        });
        match failed {
            Some(e) => Err(e),
            None => read.map(|_| ()).map_err(|e| read_failed(&stream, e)),
        }
    });
    let mut batch: Vec<SourceMessage> = Vec::with_capacity(BATCH + 1);
    while let Some(c) = rx.recv().await {
        *counts.entry(c.name()).or_default() += 1;
        let e = c
            .into_event(cfg.connector_name().into(), cfg.source.kind())
            .map_err(|why| PipelineError::DeadLetters(format!("{}: {why}", s.name)))?;
        batch.push(SourceMessage::Change(e));
        if batch.len() >= BATCH {
            onward.send(&mut batch).await?;
        }
    }
    reader.await.map_err(|e| {
        PipelineError::DeadLetters(format!("the reader of {} failed: {e}", s.name))
    })??;
    onward.send(&mut batch).await?;

    // One commit: the cursors of everything the replay wrote (the enrichment's state
    // and its dead letters, the documents' states) and the mark past the replayed
    // records.
    let mut saved = onward.flush(Vec::new()).await?;
    mark.advance(end, tables);
    saved.push(Saved::Cursor(
        mark_id,
        serde_json::to_value(&mark).expect("a mark serializes"),
    ));
    store.commit(None, &saved)?;
    onward.stored()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change rebuilt from a dead letter, for tests.
    fn rebuilt(json: &str) -> crate::event::ChangeEvent {
        let (_, c) = parse(&Record {
            segment: 0,
            line: 1,
            json: json.into(),
        })
        .unwrap();
        c.unwrap().into_event("c".into(), "postgres").unwrap()
    }

    #[test]
    fn marks_cover_what_was_replayed() {
        let at = |segment, line| At { segment, line };
        let mut m = Replayed::default();
        assert!(!m.covers("s.t", at(0, 1)));
        m.advance(at(0, 5), &["s.t".into()]);
        assert!(m.covers("s.t", at(0, 5)));
        assert!(!m.covers("s.t", at(0, 6)));
        assert!(!m.covers("s.u", at(0, 1)));
        m.advance(at(1, 2), &[]);
        assert!(m.covers("s.u", at(0, 9)) && m.covers("s.u", at(1, 2)));
        assert!(!m.covers("s.u", at(1, 3)));
        assert!(
            m.tables.is_empty(),
            "a full replay makes table marks behind it moot"
        );
        // Segments order before lines.
        assert!(at(1, 1) > at(0, 100));
    }

    #[test]
    fn a_record_without_a_replay_form_is_listed_as_not_replayable() {
        let r = Record {
            segment: 0,
            line: 3,
            json: r#"{"sink":"es","index":"s_t","status":400,"error_type":"mapper_parsing_exception","reason":"bad","error":{},"event":{"op":"c"}}"#.into(),
        };
        let (e, c) = parse(&r).unwrap();
        assert!(c.is_none() && !e.replayable());
        assert_eq!(e.cause, "s_t mapper_parsing_exception");
        assert_eq!(e.at.to_string(), "0:3");
    }

    /// An enrichment dead letter holds the source's event, exactly.
    #[tokio::test]
    async fn an_enrichment_dead_letter_rebuilds_the_source_event() {
        let dir = tempfile::tempdir().unwrap();
        let at = crate::journal::Settings::at(dir.path(), crate::files::FileMode::default());
        let mut dl = crate::enrich::DeadLetters::open(&at, None).unwrap();
        let mut e = crate::enrich::test_event();
        // A JSON value nested deeper than a parser's recursion limit reads back too.
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        e.table = Arc::new(crate::testkit::test_schema(
            1,
            &[("id", "int"), ("j", "json")],
        ));
        e.after = Some(vec![
            crate::event::Value::Int(1),
            crate::event::Value::Json(RawValue::from_string(deep).unwrap()),
        ]);
        dl.append(&e, &e, "f.toml:3 compute", "why").unwrap();
        dl.commit();
        dl.flush().await.unwrap().await.unwrap();
        let mut json = String::new();
        read_log(dir.path(), |r| {
            json = r.json;
            true
        })
        .unwrap();
        let back = rebuilt(&json);
        assert_eq!(back.after, e.after);
        assert_eq!(back.table.columns, e.table.columns);
        assert_eq!((back.version, back.op), (e.version, e.op));
    }
}
