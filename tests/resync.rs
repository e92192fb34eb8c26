//! `[source] snapshot = "when_needed"` against real MariaDB and PostgreSQL and the
//! Elasticsearch stand-in: the server loses the stored position while the daemon is
//! stopped (binlogs purged; the slot dropped), with deletes, updates and inserts in the
//! gap. Restarted, the daemon resumes from the server's current position and resyncs
//! every table: the log stream shows a `resync` event of the table before its fresh
//! snapshot rows, the index is rebuilt into `_v2` beside the stream (changes made
//! during the resync included) and swapped in, and it equals the table: the rows
//! deleted in the gap are gone. Without `when_needed` the same start is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;

/// The server whose binlogs this test purges (no other test of this binary streams
/// from it; mariadb_crash's purge test runs in another binary).
const PURGE_PORT: u16 = 23074;

/// The log stream's events of `table`, in order: (op, id of the row if any).
fn logged(log: &Path, table: &str) -> Vec<(String, Option<String>)> {
    read_events(log)
        .into_iter()
        .filter(|e| {
            format!(
                "{}.{}",
                e["source"]["db"].as_str().unwrap_or(""),
                e["source"]["table"].as_str().unwrap_or("")
            ) == table
        })
        .map(|e| {
            let row = if e["after"].is_null() {
                &e["before"]
            } else {
                &e["after"]
            };
            (
                e["op"].as_str().unwrap_or("").to_string(),
                row.get("id").map(|v| v.to_string()),
            )
        })
        .collect()
}

/// After the restart: a `resync` event, then the table's fresh snapshot (every row
/// of `rows` as an `r` event). The log reaches the disk at checkpoints: waited for.
async fn assert_resync_logged(log: &Path, table: &str, rows: &BTreeMap<String, Json>, c: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while unexplained(log, table, rows) != Some(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = logged(log, table);
    let at = events
        .iter()
        .rposition(|(op, _)| op == "resync")
        .unwrap_or_else(|| panic!("no resync event of {table}\n{}", daemon_log(c)));
    let read: std::collections::HashSet<&str> = events[at..]
        .iter()
        .filter(|(op, _)| op == "r")
        .filter_map(|(_, id)| id.as_deref())
        .collect();
    let missing = rows.keys().filter(|k| !read.contains(k.as_str())).count();
    // Rows the stream changed after the resync began come as changes instead.
    let changed_after: std::collections::HashSet<&str> = events[at..]
        .iter()
        .filter(|(op, _)| op != "r")
        .filter_map(|(_, id)| id.as_deref())
        .collect();
    let unexplained = rows
        .keys()
        .filter(|k| !read.contains(k.as_str()) && !changed_after.contains(k.as_str()))
        .count();
    assert_eq!(
        unexplained, 0,
        "{missing} rows missing from the snapshot after the resync event"
    );
}

/// Rows neither in the fresh snapshot after the last `resync` event nor changed after
/// it (None: no resync event yet).
fn unexplained(log: &Path, table: &str, rows: &BTreeMap<String, Json>) -> Option<usize> {
    let events = logged(log, table);
    let at = events.iter().rposition(|(op, _)| op == "resync")?;
    let seen: std::collections::HashSet<&str> = events[at..]
        .iter()
        .filter_map(|(_, id)| id.as_deref())
        .collect();
    Some(rows.keys().filter(|k| !seen.contains(k.as_str())).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_purged_binlog_resyncs_every_table_and_drops_rows_deleted_in_the_gap() {
    let url = elasticsearch();
    mariadb(PURGE_PORT, "");
    let db = unique_db("resync");
    let mut conn = admin(PURGE_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.items (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, note VARCHAR(100) NOT NULL)"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items SELECT seq, seq * 10, CONCAT('note ', seq) FROM `{db}`.seq_1_to_500"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(
        dir.path(),
        PURGE_PORT,
        &db,
        "snapshot = \"when_needed\"\nsnapshot_chunk_rows = 100",
    );
    add_es_sink(&c, &url, "");
    let alias = format!("{db}_items");
    let rows = || items_rows_at(PURGE_PORT, &db);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    until_equal(&url, &alias, &c, rows).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v1")]);

    // While the daemon is down: deletes, updates and inserts, then their binlogs go.
    exec(
        &mut conn,
        &format!("DELETE FROM `{db}`.items WHERE id % 13 = 0"),
    )
    .await;
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.items SET v = -v, note = 'gap' WHERE id % 21 = 0"),
    )
    .await;
    exec(
        &mut conn,
        &format!(
            "INSERT INTO `{db}`.items SELECT seq, seq, 'gap insert' FROM `{db}`.seq_1001_to_1011"
        ),
    )
    .await;
    purge_binlogs(&mut conn).await;

    // Without when_needed: refused, naming the way out.
    let text = std::fs::read_to_string(&c).unwrap();
    std::fs::write(&c, text.replace("snapshot = \"when_needed\"", "")).unwrap();
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("purged") && err.contains("when_needed"),
        "{err}"
    );
    std::fs::write(&c, text).unwrap();

    // With it: resynced, while changes go on.
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    for n in 0..20u64 {
        exec(
            &mut conn,
            &format!(
                "UPDATE `{db}`.items SET v = v + 1 WHERE id = {}; DELETE FROM `{db}`.items WHERE id = {}; INSERT INTO `{db}`.items VALUES ({}, 1, 'during')",
                1 + n * 7,
                2 + n * 11,
                2000 + n
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_equal(&url, &alias, &c, rows).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while behind(&url, &alias).await != [format!("{alias}_v2")] {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_equal(&url, &alias, &c, rows).await;
    assert!(
        !exists(&url, &format!("{alias}_v1")).await,
        "the old index holds the rows deleted in the gap: deleted"
    );
    let log = daemon_log(&c);
    assert!(log.contains("resync finished"), "{log}");
    assert_resync_logged(
        &dir.path().join("log"),
        &format!("{db}.items"),
        &rows().await,
        &c,
    )
    .await;
    // A restart afterwards resumes normally: no second resync.
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (3000, 3, 'after')"),
    )
    .await;
    until_equal(&url, &alias, &c, rows).await;
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_slot_resyncs_every_table_and_drops_rows_deleted_in_the_gap() {
    let url = elasticsearch();
    postgres(PG_PORT, "");
    let client = pg_admin(PG_PORT).await;
    let (schema, table, dir, c, mut daemon) =
        pg_items_in_elasticsearch(&client, "resync", &url, 500).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let text = std::fs::read_to_string(&c).unwrap();
    std::fs::write(
        &c,
        text.replace(
            "status_interval_secs = 1",
            "status_interval_secs = 1\nsnapshot = \"when_needed\"\nsnapshot_chunk_rows = 100",
        ),
    )
    .unwrap();
    let alias = format!("{schema}_t");
    let rows = || pg_items_rows(&client, &table);

    // While the daemon is down: deletes, updates and inserts, then the slot goes.
    client
        .batch_execute(&format!(
            "DELETE FROM {table} WHERE id % 13 = 0; \
             UPDATE {table} SET v = -v, note = 'gap' WHERE id % 21 = 0; \
             INSERT INTO {table} SELECT i, i, 'gap insert' FROM generate_series(1001, 1011) i; \
             SELECT pg_drop_replication_slot('{schema}')"
        ))
        .await
        .unwrap();

    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    for n in 0..20 {
        client
            .batch_execute(&format!(
                "UPDATE {table} SET v = v + 1 WHERE id = {}; DELETE FROM {table} WHERE id = {}; INSERT INTO {table} VALUES ({}, 1, 'during')",
                1 + n * 7,
                2 + n * 11,
                2000 + n
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while behind(&url, &alias).await != [format!("{alias}_v2")] {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_equal(&url, &alias, &c, rows).await;
    assert!(daemon_log(&c).contains("resync finished"));
    assert_resync_logged(&dir.path().join("log"), &table, &rows().await, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}
