//! Snapshot helpers: progress from `tributary status`, and the state a log describes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::{daemon_log, read_events, tributary};

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
