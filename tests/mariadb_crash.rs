//! Crashes and restarts: after kill -9 of the daemon (many times) or a server restart
//! mid-stream, the log holds every change exactly once, in commit order.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use mysql_async::prelude::Queryable;

/// Port of the server the restart test restarts (not shared with other tests).
const RESTART_PORT: u16 = 23073;

/// Runs a mixed workload; returns the number of row changes it made.
/// Transactions of 1 to 2,000 rows: inserts, updates, deletes, and mixed ones.
async fn workload(port: u16, db: String, start_id: u64, rows: u64, pause: Duration) -> u64 {
    let mut conn = admin(port).await;
    let sizes = [1u64, 7, 50, 500, 2000, 3, 120];
    let mut changes = 0u64;
    let mut next = start_id;
    let end = start_id + rows;
    let mut k = 0usize;
    while next < end {
        let n = sizes[k % sizes.len()].min(end - next);
        k += 1;
        let mut tx = conn.start_transaction(Default::default()).await.unwrap();
        let values: Vec<String> = (next..next + n)
            .map(|i| format!("({i}, {i}, REPEAT('p', {}))", i % 50))
            .collect();
        tx.query_drop(format!(
            "INSERT INTO `{db}`.w (id, v, pad) VALUES {}",
            values.join(",")
        ))
        .await
        .unwrap();
        changes += n;
        if k % 3 == 0 {
            // update part of what this transaction inserted, and older rows
            tx.query_drop(format!(
                "UPDATE `{db}`.w SET v = v + 1 WHERE id BETWEEN {} AND {}",
                next,
                next + n / 2
            ))
            .await
            .unwrap();
            changes += tx.affected_rows();
            let lo = next.saturating_sub(3000).max(start_id);
            tx.query_drop(format!(
                "UPDATE `{db}`.w SET v = v * 2, pad = 'u' WHERE id BETWEEN {lo} AND {}",
                lo + 40
            ))
            .await
            .unwrap();
            changes += tx.affected_rows();
        }
        if k % 5 == 0 {
            let lo = next.saturating_sub(1500).max(start_id);
            tx.query_drop(format!(
                "DELETE FROM `{db}`.w WHERE id BETWEEN {lo} AND {}",
                lo + 25
            ))
            .await
            .unwrap();
            changes += tx.affected_rows();
        }
        tx.commit().await.unwrap();
        next += n;
        tokio::time::sleep(pause).await;
    }
    changes
}

async fn source_rows(port: u16, db: &str) -> BTreeMap<u64, (i64, String)> {
    let mut conn = admin(port).await;
    let rows: Vec<(u64, i64, String)> = conn
        .query(format!("SELECT id, v, pad FROM `{db}`.w"))
        .await
        .unwrap();
    rows.into_iter().map(|(id, v, p)| (id, (v, p))).collect()
}

/// Checks the log against the source: count, order, no duplicates, final state.
fn verify_log(log: &Path, expected_changes: u64, source: &BTreeMap<u64, (i64, String)>, ctx: &str) {
    let events = read_events(log);
    let mut state: BTreeMap<u64, (i64, String)> = BTreeMap::new();
    let mut last_version = 0u64;
    for (i, e) in events.iter().enumerate() {
        let v = e["version"].as_u64().unwrap();
        assert!(v > last_version, "event {i} repeats or goes back in order (version {v} after {last_version}): {e}\n{ctx}");
        last_version = v;
        let img = |k: &str| -> (u64, (i64, String)) {
            let r = &e[k];
            (
                r["id"].as_u64().unwrap(),
                (
                    r["v"].as_i64().unwrap(),
                    r["pad"].as_str().unwrap().to_string(),
                ),
            )
        };
        match e["op"].as_str().unwrap() {
            "c" | "u" => {
                let (id, row) = img("after");
                state.insert(id, row);
            }
            "d" => {
                let (id, _) = img("before");
                assert!(
                    state.remove(&id).is_some(),
                    "delete of a row never inserted: {e}"
                );
            }
            other => panic!("unexpected op {other}"),
        }
    }
    assert_eq!(
        events.len() as u64,
        expected_changes,
        "every change exactly once\n{ctx}"
    );
    assert_eq!(state.len(), source.len(), "row count after replay\n{ctx}");
    assert!(
        state == *source,
        "replaying the log gives the source table\n{ctx}"
    );
}

/// The churn test measures memory: the 100k-change workload on the same server must
/// not run beside it (its binlog, read and filtered by the churn daemon too, moved the
/// measured RSS by several MiB in a CI run).
static SHARED_SERVER_ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_100k_change_workload_loses_and_repeats_nothing() {
    let _alone = SHARED_SERVER_ALONE.lock().await;
    mariadb(SHARED_PORT, "");
    let db = unique_db("crash");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(&mut conn, &format!("CREATE TABLE `{db}`.w (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, pad VARCHAR(100) NOT NULL)")).await;

    let dir = tempfile::tempdir().unwrap();
    let conn_file = connector(dir.path(), SHARED_PORT, &db, "");
    let mut daemon = spawn_daemon(&conn_file);
    wait_streaming(&conn_file, &mut daemon).await;

    let writer = tokio::spawn(workload(
        SHARED_PORT,
        db.clone(),
        1,
        86_000,
        Duration::from_millis(15),
    ));
    let (mut daemon, kills) = kill_9_repeatedly(&writer, daemon, &conn_file, 600).await;
    let changes = writer.await.unwrap();
    assert!(changes >= 100_000, "workload made {changes} changes");
    assert!(kills >= 3, "the daemon was killed only {kills} times");

    let log = dir.path().join("log");
    let got = wait_for_events(&log, changes as usize, Duration::from_secs(180)).await;
    assert_eq!(
        stop(&mut daemon),
        0,
        "clean stop\n{}",
        daemon_log(&conn_file)
    );
    assert_eq!(
        got as u64,
        changes,
        "daemon log:\n{}",
        daemon_log(&conn_file)
    );
    let ctx = format!("{kills} kills; daemon log:\n{}", daemon_log(&conn_file));
    verify_log(&log, changes, &source_rows(SHARED_PORT, &db).await, &ctx);

    // The CLI reads the same stream and verifies every checksum.
    let (code, out, err) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count() as u64, changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_loses_nothing() {
    mariadb(RESTART_PORT, "");
    let db = unique_db("restart");
    let mut conn = admin(RESTART_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(&mut conn, &format!("CREATE TABLE `{db}`.w (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, pad VARCHAR(100) NOT NULL)")).await;
    drop(conn);

    let dir = tempfile::tempdir().unwrap();
    let conn_file = connector(dir.path(), RESTART_PORT, &db, "");
    let mut daemon = spawn_daemon(&conn_file);
    wait_streaming(&conn_file, &mut daemon).await;

    let first = workload(RESTART_PORT, db.clone(), 1, 30_000, Duration::ZERO).await;
    // Restart while the daemon is still catching up.
    deploy(RESTART_PORT, "stop", "");
    tokio::time::sleep(Duration::from_secs(1)).await;
    deploy(RESTART_PORT, "start", "");
    let second = workload(RESTART_PORT, db.clone(), 1_000_000, 20_000, Duration::ZERO).await;

    let log = dir.path().join("log");
    let got = wait_for_events(&log, (first + second) as usize, Duration::from_secs(120)).await;
    assert_eq!(
        stop(&mut daemon),
        0,
        "clean stop\n{}",
        daemon_log(&conn_file)
    );
    let text = daemon_log(&conn_file);
    assert!(
        text.contains("reconnecting"),
        "the daemon noticed the restart:\n{text}"
    );
    assert_eq!(got as u64, first + second, "daemon log:\n{text}");
    verify_log(
        &log,
        first + second,
        &source_rows(RESTART_PORT, &db).await,
        &text,
    );
}

/// Port of the server whose binlogs the purge test purges.
const PURGE_PORT: u16 = 23074;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_checkpoint_is_a_clear_error_not_a_silent_gap() {
    mariadb(PURGE_PORT, "");
    let db = unique_db("purge");
    let mut conn = admin(PURGE_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.w (id INT PRIMARY KEY)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let conn_file = connector(dir.path(), PURGE_PORT, &db, "");
    let mut daemon = spawn_daemon(&conn_file);
    wait_streaming(&conn_file, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.w VALUES (1)")).await;
    assert_eq!(
        wait_for_events(&dir.path().join("log"), 1, Duration::from_secs(30)).await,
        1
    );
    assert_eq!(stop(&mut daemon), 0);

    // While the daemon is down: more changes, then the binlogs holding them are purged.
    exec(&mut conn, &format!("INSERT INTO `{db}`.w VALUES (2)")).await;
    purge_binlogs(&mut conn).await;

    let (code, _, err) = tributary(&["run", "--connector", conn_file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("purged"), "{err}");
    assert!(err.contains("re-snapshot"), "{err}");
    assert!(err.contains("tributary offsets reset"), "{err}");
    // Nothing was written past the checkpoint.
    assert_eq!(read_events(&dir.path().join("log")).len(), 1);
}

/// Memory stays flat while a table changes its binlog table id 20,000 times (FLUSH
/// TABLES reopens it; every 100th cycle an ALTER TABLE changes its layout): the
/// table-map cache holds one entry per table, the per-schema caches downstream let go
/// of layouts nothing uses, and the binlog connection is renewed every 10,000 new table
/// ids (the driver keeps a map event per id until the binlog rotates).
///
/// The anonymous resident set (the heap; the binary's code pages are not memory the
/// daemon can leak) is read after every 1,000 cycles, and the median of the first five
/// readings is compared with the median of the last five: a leak grows with every cycle
/// (the cache that kept every table id: about 1.4 KiB a cycle, 20 MiB over these
/// 15,000 cycles), while the allocator moves single readings up and down by several
/// MiB (up to +8 MiB in CI runs), which the medians absorb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_id_churn_keeps_memory_flat() {
    let _alone = SHARED_SERVER_ALONE.lock().await;
    mariadb(SHARED_PORT, "");
    let db = unique_db("churn");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot = \"never\"");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let mut extra = false;
    let mut heap_at = Vec::new();
    for cycle in 1..=20_000u32 {
        exec(&mut conn, &format!("FLUSH TABLES `{db}`.t")).await;
        if cycle % 100 == 0 {
            let alter = if extra {
                "DROP COLUMN extra"
            } else {
                "ADD COLUMN extra INT"
            };
            extra = !extra;
            exec(&mut conn, &format!("ALTER TABLE `{db}`.t {alter}")).await;
        }
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.t (v) VALUES ({cycle})"),
        )
        .await;
        if cycle % 1000 == 0 {
            let log = dir.path().join("log");
            let got = wait_for_events(&log, cycle as usize, Duration::from_secs(60)).await;
            assert_eq!(got, cycle as usize, "{}", daemon_log(&c));
            heap_at.push(rss_anon_kib(daemon.id()));
        }
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    eprintln!("anonymous RSS after every 1,000 cycles: {heap_at:?} KiB");
    let log = daemon_log(&c);
    assert!(
        log.contains("binlog connection renewed"),
        "20,000 new table ids and the connection was never renewed:\n{log}"
    );
    let median = |readings: &[u64]| {
        let mut r = readings.to_vec();
        r.sort();
        r[r.len() / 2] as i64
    };
    let growth_kib = median(&heap_at[heap_at.len() - 5..]) - median(&heap_at[..5]);
    assert!(
        growth_kib < 10 * 1024,
        "the heap grew {growth_kib} KiB between the first and the last 5,000 of 20,000 \
         table-id cycles (anonymous RSS after every 1,000 cycles: {heap_at:?} KiB)"
    );
}
