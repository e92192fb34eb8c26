//! Online reindex, the sink's side. While `tributary reindex` fills `<alias>_v<N+1>`
//! from the source beside a running daemon, the daemon writes every change of the
//! table to that index as well, with the same version, so whatever changes during the
//! fill reaches the new index; the fill's rows carry the versions of their chunks' cuts,
//! so of two writes of a row the newer always wins.
//!
//! The two processes talk through files in `<state dir>/reindex/`:
//! - `<alias>.request` (reindex writes it): which sink, table and new index.
//! - `<alias>.dual` (the sink writes it): it writes to both indexes now, and under which
//!   configuration (`_meta.document_fingerprint`), or why it stopped (a TRUNCATE of the
//!   table during the fill). Removed once the request is gone.
//!
//! A watcher task reads the directory every 200 ms, so a quiet table is picked up too
//! (and once as the sink opens, before it takes a batch: a daemon restarted during a
//! reindex replays its changes into the new index too); the sink takes the watcher's
//! map at each batch. Changes the sink accepted before the
//! `.dual` file appeared are not written twice, which is exact: reindex reads its first
//! chunk only after that, so those changes are older than every chunk's cut.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `tributary reindex` asks of a running daemon's sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub sink: String,
    /// `db.table`.
    pub table: String,
    /// The concrete index being filled.
    pub index: String,
    /// When it was asked (tells one run from the next).
    pub requested_ms: u64,
    /// Rows written so far and the table's estimate, for `tributary status`.
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub estimate: u64,
    /// The sink's own: a resync after a lost position (resync.rs), filled by the
    /// daemon's snapshot and swapped in by the sink once it is done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
    /// An unfinished index this one replaced (deleted after the swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leftover: Option<String>,
}

/// The sink's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub requested_ms: u64,
    /// The configuration the daemon writes the table's documents with.
    pub fingerprint: String,
    /// Why the sink stopped writing to the new index (it will not start again for
    /// this request).
    #[serde(default)]
    pub stopped: Option<String>,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("reindex")
}

fn path(state_dir: &Path, alias: &str, ext: &str) -> PathBuf {
    // Index names hold no path separators (names::invalid_index_name).
    dir(state_dir).join(format!("{alias}.{ext}"))
}

fn write_json(to: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value).expect("serializes"))?;
    std::fs::rename(&tmp, to)
}

fn read_json<T: for<'de> Deserialize<'de>>(from: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(from).ok()?).ok()
}

pub fn write_request(state_dir: &Path, alias: &str, r: &Request) -> std::io::Result<()> {
    std::fs::create_dir_all(dir(state_dir))?;
    write_json(&path(state_dir, alias, "request"), r)
}

pub fn read_request(state_dir: &Path, alias: &str) -> Option<Request> {
    read_json(&path(state_dir, alias, "request"))
}

pub fn remove_request(state_dir: &Path, alias: &str) {
    let _ = std::fs::remove_file(path(state_dir, alias, "request"));
}

pub fn read_answer(state_dir: &Path, alias: &str) -> Option<Answer> {
    read_json(&path(state_dir, alias, "dual"))
}

/// Forgets an answer no daemon will take back (the daemon is not running).
pub fn remove_answer(state_dir: &Path, alias: &str) {
    let _ = std::fs::remove_file(path(state_dir, alias, "dual"));
}

/// Every request waiting or running: (alias, request).
pub fn requests(state_dir: &Path) -> Vec<(String, Request)> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Request)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let alias = name.strip_suffix(".request")?.to_string();
            Some((alias, read_json(&e.path())?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The new indexes a sink writes to besides the aliases: alias -> index.
pub type Targets = HashMap<String, Arc<str>>;

/// Shared between the watcher task and the sink.
#[derive(Default)]
struct Shared {
    targets: Mutex<Targets>,
    /// Bumped on every change of `targets`, so the sink copies the map only then.
    generation: AtomicU64,
    /// Requests the sink stopped for (by request time): never taken up again.
    stopped: Mutex<Vec<u64>>,
}

/// The sink's handle.
pub struct DualWrites {
    shared: Arc<Shared>,
    state_dir: Option<PathBuf>,
    seen: u64,
    /// The sink's copy, taken at a batch's start.
    pub targets: Targets,
}

impl DualWrites {
    /// Watches `<state_dir>/reindex/` for `sink`'s requests; `fingerprint` gives the
    /// configuration the daemon writes a `db.table` with. Without a state dir or a
    /// runtime (unit tests) nothing is watched.
    pub fn watch(
        state_dir: Option<PathBuf>,
        sink: String,
        fingerprint: impl Fn(&str) -> String + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        // The first look before the sink takes any batch: a daemon restarted in the
        // middle of a reindex replays from its checkpoint, and those changes must reach
        // the new index as they did before.
        if let Some(dir) = &state_dir {
            look(dir, &sink, &shared, &fingerprint);
        }
        if let (Some(dir), Ok(rt)) = (&state_dir, tokio::runtime::Handle::try_current()) {
            let (dir, shared) = (dir.clone(), shared.clone());
            rt.spawn(async move {
                // Ends with the sink (the last other holder of `shared`).
                while Arc::strong_count(&shared) > 1 {
                    look(&dir, &sink, &shared, &fingerprint);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        DualWrites {
            shared,
            state_dir,
            seen: 0,
            targets: Targets::new(),
        }
    }

    /// Takes the watcher's map if it changed (once per batch: one atomic load).
    pub fn refresh(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.seen {
            self.targets = self.shared.targets.lock().expect("not poisoned").clone();
            self.seen = generation;
        }
    }

    /// Starts writing `alias`'s changes to `r.index` at once (the sink's own request:
    /// a resync), answered under `fingerprint`; replaces a request the alias had.
    pub fn begin(&mut self, alias: &str, r: &Request, fingerprint: String) -> std::io::Result<()> {
        let Some(dir) = &self.state_dir else {
            self.targets
                .insert(alias.to_string(), Arc::from(r.index.as_str()));
            return Ok(());
        };
        write_request(dir, alias, r)?;
        let answer = Answer {
            requested_ms: r.requested_ms,
            fingerprint,
            stopped: None,
        };
        write_json(&path(dir, alias, "dual"), &answer)?;
        let mut targets = self.shared.targets.lock().expect("not poisoned");
        targets.insert(alias.to_string(), Arc::from(r.index.as_str()));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.targets = targets.clone();
        self.seen = self.shared.generation.load(Ordering::Acquire);
        Ok(())
    }

    /// Ends writing `alias`'s changes to a second index: the request and the answer
    /// go too.
    pub fn end(&mut self, alias: &str) {
        self.targets.remove(alias);
        let mut targets = self.shared.targets.lock().expect("not poisoned");
        targets.remove(alias);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.seen = self.shared.generation.load(Ordering::Acquire);
        if let Some(dir) = &self.state_dir {
            remove_request(dir, alias);
            remove_answer(dir, alias);
        }
    }

    /// The resync of `alias` this sink runs, if it does.
    pub fn resync(&self, alias: &str) -> Option<Request> {
        self.targets.get(alias)?;
        let r = read_request(self.state_dir.as_deref()?, alias)?;
        r.resync.then_some(r)
    }

    /// Every resync this sink runs: (alias, request).
    pub fn resyncs(&self) -> Vec<(String, Request)> {
        self.targets
            .keys()
            .filter_map(|a| Some((a.clone(), self.resync(a)?)))
            .collect()
    }

    /// Stops writing `alias`'s changes to its new index, for the reason given (which
    /// `tributary reindex` reports).
    pub fn stop(&mut self, alias: &str, why: &str) {
        if self.targets.remove(alias).is_none() {
            return;
        }
        let Some(dir) = &self.state_dir else { return };
        let mut targets = self.shared.targets.lock().expect("not poisoned");
        targets.remove(alias);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.seen = self.shared.generation.load(Ordering::Acquire);
        if let Some(mut a) = read_answer(dir, alias) {
            self.shared
                .stopped
                .lock()
                .expect("not poisoned")
                .push(a.requested_ms);
            a.stopped = Some(why.to_string());
            if let Err(e) = write_json(&path(dir, alias, "dual"), &a) {
                tracing::warn!(alias, error = %e, "cannot write the reindex answer");
            }
        }
        tracing::warn!(
            alias,
            reason = why,
            "stopped writing to the index being reindexed"
        );
    }
}

/// One look at the directory: take up new requests (answering each), drop the ones
/// gone (removing their answers).
fn look(dir: &Path, sink: &str, shared: &Shared, fingerprint: &impl Fn(&str) -> String) {
    let all = requests(dir);
    let wanted: HashMap<String, Request> = all
        .iter()
        .filter(|(_, r)| r.sink == sink)
        .cloned()
        .collect();
    let stopped = shared.stopped.lock().expect("not poisoned").clone();
    let mut targets = shared.targets.lock().expect("not poisoned");
    let mut changed = false;
    for (alias, r) in &wanted {
        if stopped.contains(&r.requested_ms) {
            continue;
        }
        let answered = read_answer(dir, alias).is_some_and(|a| a.requested_ms == r.requested_ms);
        if targets.get(alias).map(|i| &**i) == Some(r.index.as_str()) && answered {
            continue;
        }
        targets.insert(alias.clone(), Arc::from(r.index.as_str()));
        changed = true;
        let answer = Answer {
            requested_ms: r.requested_ms,
            fingerprint: fingerprint(&r.table),
            stopped: None,
        };
        // The map is updated before the answer is written: every batch the sink takes
        // after reindex sees the answer writes to both.
        shared.generation.fetch_add(1, Ordering::AcqRel);
        match write_json(&path(dir, alias, "dual"), &answer) {
            Ok(()) => {
                tracing::info!(alias, index = %r.index, table = %r.table, "reindex: writing the table's changes to the new index too")
            }
            Err(e) => tracing::warn!(alias, error = %e, "cannot answer the reindex request"),
        }
    }
    let gone: Vec<String> = targets
        .keys()
        .filter(|a| !wanted.contains_key(*a))
        .cloned()
        .collect();
    for alias in gone {
        targets.remove(&alias);
        changed = true;
        remove_answer(dir, &alias);
        tracing::info!(alias, "reindex finished: writing to the alias alone");
    }
    // Answers of requests that are gone (a daemon stopped before it removed them).
    for alias in answered_aliases(dir) {
        if !all.iter().any(|(a, _)| *a == alias) {
            remove_answer(dir, &alias);
        }
    }
    if changed {
        shared.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The aliases that have an answer file.
fn answered_aliases(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(name.strip_suffix(".dual")?.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sink: &str, index: &str, at: u64) -> Request {
        Request {
            sink: sink.into(),
            table: "shop.orders".into(),
            index: index.into(),
            requested_ms: at,
            rows: 0,
            estimate: 10,
            resync: false,
            leftover: None,
        }
    }

    fn targets(shared: &Shared) -> Targets {
        shared.targets.lock().unwrap().clone()
    }

    #[test]
    fn requests_are_answered_followed_and_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let shared = Shared::default();
        let fp = |t: &str| format!("fp of {t}");
        write_request(state, "shop_orders", &request("es", "shop_orders_v2", 7)).unwrap();
        write_request(state, "other", &request("another sink", "other_v2", 8)).unwrap();
        look(state, "es", &shared, &fp);
        assert_eq!(
            targets(&shared),
            Targets::from([("shop_orders".to_string(), Arc::from("shop_orders_v2"))])
        );
        let a = read_answer(state, "shop_orders").unwrap();
        assert_eq!(
            (a.requested_ms, a.fingerprint.as_str()),
            (7, "fp of shop.orders")
        );
        assert!(read_answer(state, "other").is_none(), "not this sink's");
        let generation = shared.generation.load(Ordering::Acquire);
        look(state, "es", &shared, &fp);
        assert_eq!(
            shared.generation.load(Ordering::Acquire),
            generation,
            "nothing changed"
        );

        // The sink stops for this request (a TRUNCATE): not taken up again.
        let shared = Arc::new(shared);
        let mut handle = DualWrites {
            shared: shared.clone(),
            state_dir: Some(state.to_path_buf()),
            seen: 0,
            targets: Targets::new(),
        };
        handle.refresh();
        assert!(handle.targets.contains_key("shop_orders"));
        handle.stop("shop_orders", "truncated");
        assert!(handle.targets.is_empty());
        look(state, "es", &shared, &fp);
        assert!(targets(&shared).is_empty());
        assert_eq!(
            read_answer(state, "shop_orders")
                .unwrap()
                .stopped
                .as_deref(),
            Some("truncated")
        );

        // A new run is taken up; once its request is gone, so is the answer.
        write_request(state, "shop_orders", &request("es", "shop_orders_v3", 9)).unwrap();
        look(state, "es", &shared, &fp);
        assert_eq!(&*targets(&shared)["shop_orders"], "shop_orders_v3");
        assert_eq!(read_answer(state, "shop_orders").unwrap().stopped, None);
        remove_request(state, "shop_orders");
        look(state, "es", &shared, &fp);
        assert!(targets(&shared).is_empty());
        assert!(read_answer(state, "shop_orders").is_none());
        assert_eq!(requests(state).len(), 1, "the other sink's request stays");
    }
}
