//! Snapshots of MariaDB tables while a writer keeps changing them: the index (and the
//! log, replayed) equals the source row for row; a kill -9 mid-snapshot resumes from
//! the last chunk.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;

async fn create_table(conn: &mut mysql_async::Conn, db: &str, rows: u64) {
    exec(conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        conn,
        &format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, n INT NOT NULL, s VARCHAR(40), at DATETIME(3))"
        ),
    )
    .await;
    exec(
        conn,
        &format!(
            "INSERT INTO `{db}`.t SELECT seq, seq % 997, CONCAT('row ', seq), \
             TIMESTAMP'2024-01-01 00:00:00.125' + INTERVAL seq SECOND FROM `{db}`.seq_1_to_{rows}"
        ),
    )
    .await;
}

/// Inserts, updates and deletes spread over ids 1..=max+max/10 until `stop`, pausing
/// `pause_ms` after each; returns the number of statements.
fn writer(
    db: String,
    max: u64,
    stop: Arc<AtomicBool>,
    pause_ms: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut conn = admin(SHARED_PORT).await;
        let mut x: u64 = 12345;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = (x >> 33) % (max + max / 10) + 1;
            let sql = match n % 3 {
                0 => format!(
                    "INSERT INTO `{db}`.t VALUES ({id}, {n}, 'ins {n}', NOW(3)) \
                     ON DUPLICATE KEY UPDATE n = VALUES(n), s = VALUES(s)"
                ),
                1 => format!("UPDATE `{db}`.t SET n = n + 1, s = 'upd {n}' WHERE id = {id}"),
                _ => format!("DELETE FROM `{db}`.t WHERE id = {id}"),
            };
            conn.query_drop(sql).await.unwrap();
            n += 1;
            // A steady writer, not a flood: the machine has two cores for the server,
            // the Elasticsearch stand-in, the daemon and this test.
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        n
    })
}

async fn source_rows(db: &str) -> BTreeMap<i64, (i64, String)> {
    let mut conn = admin(SHARED_PORT).await;
    let rows: Vec<(i64, i64, String)> = conn
        .query(format!("SELECT id, n, s FROM `{db}`.t"))
        .await
        .unwrap();
    rows.into_iter().map(|(id, n, s)| (id, (n, s))).collect()
}

/// 200,000 rows snapshotted while a writer inserts, updates and deletes across the
/// whole key range: the log, replayed in order, equals the source row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_200k_rows_under_writes_equals_the_source() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("snap");
    let rows = 200_000;
    let mut conn = admin(SHARED_PORT).await;
    create_table(&mut conn, &db, rows).await;
    // A second table, without a primary key, read alongside (two readers by default).
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.nokey (v INT, w VARCHAR(10))"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.nokey SELECT seq % 100, 'x' FROM `{db}`.seq_1_to_30000"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot_chunk_rows = 5000");
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(db.clone(), rows, stop_writer.clone(), 1);
    let mut daemon = spawn_daemon(&c);
    let table = format!("{db}.t");
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    let statements = w.await.unwrap();
    assert!(statements > 20, "the writer ran alongside: {statements}");
    let nokey = format!("{db}.nokey");
    wait_snapshot(&c, &nokey, |s| s["status"] == "done").await;
    assert_eq!(snapshot_status(&c, &nokey)["rows"], 30_000);
    assert!(daemon_log(&c).contains("read in one pass"));
    let want = source_rows(&db).await;
    let log = dir.path().join("log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (state, snapshot_ids) = replay_log(&log);
        if state == want {
            let mut unique = snapshot_ids.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), snapshot_ids.len(), "no snapshot row twice");
            break;
        }
        if Instant::now() > deadline {
            let all_missing: Vec<i64> = want
                .keys()
                .filter(|k| !state.contains_key(k))
                .cloned()
                .collect();
            let mut ranges: Vec<(i64, i64)> = Vec::new();
            for id in &all_missing {
                match ranges.last_mut() {
                    Some(r) if r.1 + 1 == *id => r.1 = *id,
                    _ => ranges.push((*id, *id)),
                }
            }
            let missing: Vec<i64> = all_missing.iter().take(3).cloned().collect();
            let (_, raw, _) = tributary(&["log", "cat", log.to_str().unwrap()]);
            for id in &missing {
                let needle = format!("\"id\":{id},");
                for l in raw.lines().filter(|l| l.contains(&needle)) {
                    eprintln!("{id}: {}", &l[..l.len().min(400)]);
                }
            }
            panic!(
                "log != source: {} vs {} rows, missing {ranges:?}\n{}",
                state.len(),
                want.len(),
                daemon_log(&c)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let s = snapshot_status(&c, &table);
    assert!(s["rows"].as_u64().unwrap() > 150_000, "{s}");
    assert!(s["chunks"].as_u64().unwrap() >= 40, "{s}");
    assert!(daemon_log(&c).contains("snapshot of table finished"));
}

/// The same into Elasticsearch (a smaller table: the stand-in indexes a few hundred
/// documents a second on the build machines): once the stream caught up, the index
/// equals the source key by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_writes_converges_in_elasticsearch() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("snapes");
    let rows = 20_000;
    let mut conn = admin(SHARED_PORT).await;
    create_table(&mut conn, &db, rows).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot_chunk_rows = 2000");
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon(&c);
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(db.clone(), rows, stop_writer.clone(), 20);
    let table = format!("{db}.t");
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    assert!(w.await.unwrap() > 20, "the writer ran alongside");

    let want = source_rows(&db).await;
    let alias = format!("{db}_t");
    wait_index_equals(&url, &alias, &want, 240, &c).await;

    // Asked again while it runs: the daemon snapshots the table anew (a new run in
    // `status`), and the index still equals the source.
    resnapshot_while_running(&c, &table).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let docs = es_documents_by_id(&url, &alias).await;
    assert_eq!(docs.len(), want.len());
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert!(daemon_log(&c).contains("snapshot requested"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_snapshot_resumes_from_the_last_chunk() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("snapkill");
    let rows = 100_000;
    let mut conn = admin(SHARED_PORT).await;
    create_table(&mut conn, &db, rows).await;
    let dir = tempfile::tempdir().unwrap();
    // Small chunks make the snapshot last long enough to be killed in the middle.
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot_chunk_rows = 100");
    let table = format!("{db}.t");
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(db.clone(), rows, stop_writer.clone(), 5);
    let mut daemon = spawn_daemon(&c);
    wait_snapshot(&c, &table, |s| s["rows"].as_u64().unwrap_or(0) >= 5_000).await;
    kill9(&mut daemon);
    let first = snapshot_status(&c, &table);
    assert_eq!(first["status"], "running", "{first}");

    let mut daemon = spawn_daemon(&c);
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    w.await.unwrap();
    // Let the stream catch up with the writer's last statements.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let text = daemon_log(&c);
    assert!(
        text.contains("resume_after="),
        "the second start resumed after a chunk:\n{text}"
    );

    let (state, snapshot_ids) = replay_log(&dir.path().join("log"));
    let want = source_rows(&db).await;
    assert_eq!(state.len(), want.len());
    assert!(state == want, "the log replayed equals the source");
    // Each row was emitted by the snapshot at most once: the log kept the chunks
    // checkpointed before the kill and cut the rest, and the restart went on after them.
    let mut sorted = snapshot_ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), snapshot_ids.len(), "no snapshot row twice");
    assert!(
        snapshot_ids.len() as u64 > rows / 2,
        "{}",
        snapshot_ids.len()
    );
}

/// The snapshot reader's connection is killed on the server mid-snapshot: the reader
/// retries from the stream's recorded progress, and the log still equals the source
/// with no snapshot row twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reader_connection_is_retried_from_the_last_chunk() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("snapretry");
    let rows = 100_000;
    let mut conn = admin(SHARED_PORT).await;
    create_table(&mut conn, &db, rows).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot_chunk_rows = 500");
    let table = format!("{db}.t");
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(db.clone(), rows, stop_writer.clone(), 5);
    let mut daemon = spawn_daemon(&c);
    // Kill the reader's connection (tributary's one that is not the binlog dump) twice.
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < 2 && Instant::now() < deadline {
        let ids: Vec<u64> = conn
            .query(format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'tributary' \
                 AND COMMAND <> 'Binlog Dump' AND INFO LIKE '%`{db}`.`t`%'"
            ))
            .await
            .unwrap();
        for id in ids {
            if conn
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                kills += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(kills >= 1, "the reader's connection was found and killed");
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    w.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert!(
        daemon_log(&c).contains("snapshot read failed; retrying"),
        "{}",
        daemon_log(&c)
    );
    let (state, snapshot_ids) = replay_log(&dir.path().join("log"));
    assert!(
        state == source_rows(&db).await,
        "the log replayed equals the source"
    );
    let mut unique = snapshot_ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), snapshot_ids.len(), "no snapshot row twice");
}

/// A column added while the table's snapshot runs, then filled for every row: the
/// chunks read after the ALTER carry it too (each chunk checks the columns in its own
/// snapshot), so every document ends with the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_during_the_snapshot_reaches_every_document() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("snapalter");
    let rows = 20_000u64;
    let mut conn = admin(SHARED_PORT).await;
    create_table(&mut conn, &db, rows).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot_chunk_rows = 100");
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon(&c);
    let table = format!("{db}.t");
    wait_snapshot(&c, &table, |s| s["rows"].as_u64().unwrap_or(0) >= 1_000).await;
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.t ADD COLUMN extra INT; UPDATE `{db}`.t SET extra = id"),
    )
    .await;
    let first = snapshot_status(&c, &table);
    assert_eq!(
        first["status"], "running",
        "the ALTER came mid-snapshot: {first}"
    );
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    let alias = format!("{db}_t");
    wait_every_document(&url, &alias, rows, |id, d| d["extra"] == id, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}
