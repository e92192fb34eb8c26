//! Snapshot helpers: progress from `tributary status`, and the state a log describes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::{daemon_log, es_documents_by_id, read_events, tributary};

/// The table's snapshot entry in `tributary status`.
pub fn snapshot_status(connector: &std::path::Path, table: &str) -> Json {
    let (_, out, _) = tributary(&["status", "--connector", connector.to_str().unwrap()]);
    serde_json::from_str::<Json>(&out)
        .map(|s| s["snapshot"][table].clone())
        .unwrap_or(Json::Null)
}

pub async fn wait_snapshot(
    connector: &std::path::Path,
    table: &str,
    until: impl Fn(&Json) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = snapshot_status(connector, table);
        if until(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot status {s}\n{}",
            daemon_log(connector)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log replayed in order (r/c/u set the row, d removes it): the state it describes.
pub fn replay_log(log: &std::path::Path) -> (BTreeMap<i64, (i64, String)>, Vec<i64>) {
    let mut state = BTreeMap::new();
    let mut snapshot_ids = Vec::new();
    for e in read_events(log) {
        if e["source"]["table"] != "t" {
            continue;
        }
        let row = if e["op"] == "d" {
            &e["before"]
        } else {
            &e["after"]
        };
        let id = row["id"].as_i64().unwrap();
        if e["op"] == "r" {
            snapshot_ids.push(id);
        }
        if e["op"] == "d" {
            state.remove(&id);
        } else {
            state.insert(
                id,
                (
                    row["n"].as_i64().unwrap(),
                    row["s"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    (state, snapshot_ids)
}

/// Waits (up to `secs`) until the index behind `alias` holds exactly `want` (id -> (n,
/// s)), key by key; panics with what differs.
pub async fn wait_index_equals(
    url: &str,
    alias: &str,
    want: &BTreeMap<i64, (i64, String)>,
    secs: u64,
    connector: &std::path::Path,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got: BTreeMap<i64, (i64, String)> = es_documents_by_id(url, alias)
            .await
            .iter()
            .map(|(id, d)| {
                (
                    *id,
                    (
                        d["n"].as_i64().unwrap(),
                        d["s"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect();
        if got == *want {
            return;
        }
        if Instant::now() > deadline {
            let missing = want.keys().filter(|k| !got.contains_key(k)).count();
            let extra = got.keys().filter(|k| !want.contains_key(k)).count();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .take(5)
                .collect();
            panic!(
                "index != source after the stream caught up: {missing} missing, {extra} extra, differing e.g. {differ:?}\n{}",
                daemon_log(connector)
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Asks the running daemon to snapshot `table` again (`tributary snapshot`) and waits
/// until a newer run of it finished.
pub async fn resnapshot_while_running(connector: &std::path::Path, table: &str) {
    let first = snapshot_status(connector, table);
    let (code, out, err) = tributary(&[
        "snapshot",
        "--connector",
        connector.to_str().unwrap(),
        "--table",
        table,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the running daemon starts it"), "{out}");
    wait_snapshot(connector, table, |s| {
        s["status"] == "done" && s["started_ms"].as_u64() > first["started_ms"].as_u64()
    })
    .await;
}

/// Waits (up to 120 s) until the index behind `alias` holds `rows` documents and every
/// one passes `ok(id, document)`; fails with the first ids that do not.
pub async fn wait_every_document(
    url: &str,
    alias: &str,
    rows: u64,
    ok: impl Fn(i64, &Json) -> bool,
    connector: &std::path::Path,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let docs = es_documents_by_id(url, alias).await;
        let failing: Vec<i64> = docs
            .iter()
            .filter(|(id, d)| !ok(**id, d))
            .map(|(id, _)| *id)
            .take(5)
            .collect();
        if docs.len() as u64 == rows && failing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} documents of {rows}; failing: {failing:?}\n{}",
            docs.len(),
            daemon_log(connector)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
