//! What the daemon's `/ready` answers: one process-wide record that the stages update
//! where their state changes (the source connecting, streaming or lost, snapshots
//! running, a sink retrying, a schema-guard halt, the changes not yet checkpointed).
//!
//! Under systemd the same changes go out as `STATUS=` lines (notify.rs).
//!
//! Process-wide like the metrics: the stages keep no handle to it, and a process runs
//! one connector. Updates take a short lock at state changes only (never per event:
//! `batch` is one per queue batch).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

/// Where the source stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The process started; nothing connected yet.
    Starting,
    Connecting,
    Streaming,
    /// The connection was lost; reconnecting after the reason.
    Down(String),
}

struct State {
    source: Source,
    snapshots: BTreeSet<String>,
    /// Who retries what, and the last error.
    retrying: BTreeMap<String, String>,
    halted: Option<String>,
    /// Since when changes wait for a checkpoint (None: every change received is in a
    /// stored checkpoint).
    pending_since: Option<Instant>,
    /// A checkpoint in flight, begun at, and whether changes arrived since.
    began: Option<Instant>,
    arrived_since_begin: bool,
    /// Per joined document: documents built since the start, and how many wait.
    documents: BTreeMap<String, (u64, u64)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    source: Source::Starting,
    snapshots: BTreeSet::new(),
    retrying: BTreeMap::new(),
    halted: None,
    pending_since: None,
    began: None,
    arrived_since_begin: false,
    documents: BTreeMap::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn source(s: Source) {
    match &s {
        Source::Streaming => crate::notify::streaming(),
        Source::Down(why) => crate::notify::status(&format!("source down, reconnecting: {why}")),
        _ => {}
    }
    state().source = s;
}

pub fn snapshot_started(table: &str) {
    state().snapshots.insert(table.to_string());
}

pub fn snapshot_ended(table: &str) {
    state().snapshots.remove(table);
}

/// `who` (a sink, a lookup) fails transiently and retries.
pub fn retrying(who: &str, error: &str) {
    state().retrying.insert(who.to_string(), error.to_string());
}

pub fn recovered(who: &str) {
    let mut s = state();
    if !s.retrying.is_empty() {
        s.retrying.remove(who);
    }
}

pub fn halted(why: String) {
    crate::notify::status(&format!("halted: {why}"));
    state().halted = Some(why);
}

/// A batch of changes entered the pipeline.
pub fn batch() {
    let mut s = state();
    s.pending_since.get_or_insert_with(Instant::now);
    s.arrived_since_begin = true;
}

pub fn checkpoint_began() {
    let mut s = state();
    s.began = Some(Instant::now());
    s.arrived_since_begin = false;
}

/// The checkpoint begun last is stored: what arrived before it is acknowledged.
pub fn checkpoint_stored() {
    let mut s = state();
    s.pending_since = if s.arrived_since_begin { s.began } else { None };
}

/// `built` more documents of `document` were handed to the sinks; `waiting` are
/// marked and not yet built (a large fan-out counts down here).
pub fn documents_built(document: &str, built: u64, waiting: u64) {
    let mut s = state();
    let entry = s.documents.entry(document.to_string()).or_default();
    entry.0 += built;
    entry.1 = waiting;
}

/// Per joined document: `{"built": .., "waiting": ..}` (empty outside a daemon).
pub fn documents() -> Json {
    let s = state();
    let docs: serde_json::Map<String, Json> = s
        .documents
        .iter()
        .map(|(name, (built, waiting))| (name.clone(), json!({"built": built, "waiting": waiting})))
        .collect();
    Json::Object(docs)
}

/// The lag of the sinks: how long the oldest change not in a stored checkpoint has
/// waited (at most that; zero when everything is).
pub fn lag() -> Duration {
    state()
        .pending_since
        .map(|t| t.elapsed())
        .unwrap_or_default()
}

/// Ok while the source streams, no snapshot runs, no one retries, nothing halted and
/// the lag is under `max_lag`; else the reason as JSON (`state` names it).
pub fn readiness(max_lag: Duration) -> Result<Json, Json> {
    let s = state();
    let lag = s.pending_since.map(|t| t.elapsed()).unwrap_or_default();
    if let Some(why) = &s.halted {
        return Err(json!({"state": "halted", "reason": why}));
    }
    match &s.source {
        Source::Starting => return Err(json!({"state": "starting"})),
        Source::Connecting => return Err(json!({"state": "connecting"})),
        Source::Down(why) => return Err(json!({"state": "source_down", "reason": why})),
        Source::Streaming => {}
    }
    if !s.retrying.is_empty() {
        return Err(json!({"state": "sink_retrying", "retrying": s.retrying}));
    }
    if !s.snapshots.is_empty() {
        return Err(json!({"state": "snapshotting", "tables": s.snapshots}));
    }
    if lag > max_lag {
        return Err(json!({
            "state": "lagging",
            "lag_s": lag.as_secs_f64(),
            "ready_max_lag_secs": max_lag.as_secs(),
        }));
    }
    Ok(json!({"state": "streaming", "lag_s": lag.as_secs_f64()}))
}
