//! Snapshots of PostgreSQL tables while writers keep changing them: the log, replayed,
//! and the index equal the source row for row; kill -9 mid-snapshot resumes from the
//! last chunk; snapshot rows carry exactly the values streamed rows do.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;

/// Widens the window between each chunk's snapshot and its marker (see
/// source/postgres/snapshot.rs), so the writer's changes land in it and the merge has
/// to leave them out.
const WIDE_WINDOW: &[(&str, &str)] = &[("TRIBUTARY_TEST_MARKER_DELAY_MS", "40")];

/// `schema.t` with `rows` rows and a publication (named after the schema) for it.
async fn create_table(client: &tokio_postgres::Client, prefix: &str, rows: u64) -> String {
    let (schema, table) = pg_table(
        client,
        prefix,
        "id int PRIMARY KEY, n int NOT NULL, s text, at timestamp(3)",
    )
    .await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT g, g % 997, 'row ' || g, \
             TIMESTAMP '2024-01-01 00:00:00.125' + g * INTERVAL '1 second' \
             FROM generate_series(1, {rows}) g; ANALYZE {table}"
        ))
        .await
        .unwrap();
    schema
}

/// Inserts, updates and deletes spread over ids 1..=max+max/10 until `stop`, some in
/// transactions of two statements 20 ms apart (one row changed twice), pausing
/// `pause_ms` after each; returns the number of transactions.
fn writer(
    table: String,
    max: u64,
    stop: Arc<AtomicBool>,
    pause_ms: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = pg_admin(PG_PORT).await;
        let mut x: u64 = 12345;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = (x >> 33) % (max + max / 10) + 1;
            let sql = match n % 4 {
                0 => format!(
                    "INSERT INTO {table} VALUES ({id}, {n}, 'ins {n}', now()) \
                     ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, s = EXCLUDED.s"
                ),
                1 => format!("UPDATE {table} SET n = n + 1, s = 'upd {n}' WHERE id = {id}"),
                // Open across a snapshot's marker now and then: its changes predate
                // the marker, its commit follows it.
                2 => format!(
                    "BEGIN; UPDATE {table} SET n = n + 1, s = 'txn {n}' WHERE id = {id}; \
                     SELECT pg_sleep(0.02); UPDATE {table} SET n = n + 1 WHERE id = {id}; COMMIT"
                ),
                _ => format!("DELETE FROM {table} WHERE id = {id}"),
            };
            client.batch_execute(&sql).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        n
    })
}

async fn source_rows(table: &str) -> BTreeMap<i64, (i64, String)> {
    let client = pg_admin(PG_PORT).await;
    client
        .query(&format!("SELECT id, n, s FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0) as i64,
                (r.get::<_, i32>(1) as i64, r.get(2)),
            )
        })
        .collect()
}

/// Waits until the log replayed equals the source, then checks no snapshot row came
/// twice; panics with what differs after `secs`.
async fn wait_log_equals_source(
    log: &std::path::Path,
    table: &str,
    secs: u64,
    c: &std::path::Path,
) {
    let want = source_rows(table).await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (state, snapshot_ids) = replay_log(log);
        if state == want {
            let mut unique = snapshot_ids.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), snapshot_ids.len(), "no snapshot row twice");
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want
                .keys()
                .filter(|k| !state.contains_key(k))
                .take(5)
                .collect();
            let extra: Vec<_> = state
                .keys()
                .filter(|k| !want.contains_key(k))
                .take(5)
                .collect();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| state.get(k).is_some_and(|g| g != *v))
                .take(5)
                .collect();
            panic!(
                "log != source ({} vs {} rows): missing {missing:?}, extra {extra:?}, differing {differ:?}\n{}",
                state.len(),
                want.len(),
                daemon_log(c)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// 200,000 rows snapshotted while a writer inserts, updates and deletes across the
/// whole key range: the log, replayed in order, equals the source row for row. A table
/// without a key is read alongside, in one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_200k_rows_under_writes_equals_the_source() {
    let client = pg_admin(PG_PORT).await;
    let rows = 200_000;
    let schema = create_table(&client, "psnap", rows).await;
    let table = format!("{schema}.t");
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.nokey (v int, w text);
             INSERT INTO {schema}.nokey SELECT g % 100, 'x' FROM generate_series(1, 30000) g;
             ALTER PUBLICATION {schema} ADD TABLE {schema}.nokey;"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(
        dir.path(),
        PG_PORT,
        &schema,
        &format!("{schema}.*"),
        "snapshot_chunk_rows = 5000",
    );
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(table.clone(), rows, stop_writer.clone(), 1);
    let mut daemon = spawn_daemon_env(&c, WIDE_WINDOW);
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    let transactions = w.await.unwrap();
    assert!(
        transactions > 20,
        "the writer ran alongside: {transactions}"
    );
    let nokey = format!("{schema}.nokey");
    wait_snapshot(&c, &nokey, |s| s["status"] == "done").await;
    assert_eq!(snapshot_status(&c, &nokey)["rows"], 30_000);
    assert!(daemon_log(&c).contains("read in one pass"));
    wait_log_equals_source(&dir.path().join("log"), &table, 120, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
    let s = snapshot_status(&c, &table);
    assert!(s["rows"].as_u64().unwrap() > 150_000, "{s}");
    assert!(s["chunks"].as_u64().unwrap() >= 40, "{s}");
    assert!(daemon_log(&c).contains("snapshot of table finished"));
}

/// kill -9 in the middle of a snapshot with a writer running: the restart resumes after
/// the last checkpointed chunk, the log replayed equals the source, no row twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_snapshot_resumes_from_the_last_chunk() {
    let client = pg_admin(PG_PORT).await;
    let rows = 100_000;
    let schema = create_table(&client, "psnapkill", rows).await;
    let table = format!("{schema}.t");
    let dir = tempfile::tempdir().unwrap();
    // Small chunks make the snapshot last long enough to be killed in the middle.
    let c = pg_connector(
        dir.path(),
        PG_PORT,
        &schema,
        &table,
        "snapshot_chunk_rows = 100",
    );
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(table.clone(), rows, stop_writer.clone(), 5);
    let mut daemon = spawn_daemon(&c);
    wait_snapshot(&c, &table, |s| s["rows"].as_u64().unwrap_or(0) >= 5_000).await;
    kill9(&mut daemon);
    let first = snapshot_status(&c, &table);
    assert_eq!(first["status"], "running", "{first}");

    let mut daemon = spawn_daemon(&c);
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    w.await.unwrap();
    wait_log_equals_source(&dir.path().join("log"), &table, 60, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
    let text = daemon_log(&c);
    assert!(
        text.contains("resume_after="),
        "the second start resumed after a chunk:\n{text}"
    );
    let (_, snapshot_ids) = replay_log(&dir.path().join("log"));
    assert!(
        snapshot_ids.len() as u64 > rows / 2,
        "{}",
        snapshot_ids.len()
    );
}

/// Into Elasticsearch under a writer: once the stream caught up, the index equals the
/// source key by key; a snapshot asked for while the daemon runs keeps it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_writes_converges_in_elasticsearch() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let rows = 20_000;
    let schema = create_table(&client, "psnapes", rows).await;
    let table = format!("{schema}.t");
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(
        dir.path(),
        PG_PORT,
        &schema,
        &table,
        "snapshot_chunk_rows = 2000",
    );
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon_env(&c, WIDE_WINDOW);
    let stop_writer = Arc::new(AtomicBool::new(false));
    let w = writer(table.clone(), rows, stop_writer.clone(), 20);
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    stop_writer.store(true, Ordering::Relaxed);
    assert!(w.await.unwrap() > 20, "the writer ran alongside");

    let want = source_rows(&table).await;
    let alias = format!("{schema}_t");
    wait_index_equals(&url, &alias, &want, 240, &c).await;

    resnapshot_while_running(&c, &table).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(es_documents_by_id(&url, &alias).await.len(), want.len());
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// One decoder contract, two paths: a row read by the snapshot and the same values
/// streamed afterwards give equal `after` images (every column but the key), under the
/// same schema version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_carry_the_values_streamed_rows_do() {
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "psnaptypes").await;
    client
        .batch_execute(&format!(
            "CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok');
             CREATE DOMAIN {schema}.posint AS integer CHECK (VALUE > 0);"
        ))
        .await
        .unwrap();
    let columns = [
        ("i2", "smallint", "-32768"),
        ("i8", "bigint", "9223372036854775807"),
        (
            "n",
            "numeric",
            "'-123456789012345678901234567890.000000000000000000001'",
        ),
        ("nn", "numeric", "'NaN'"),
        ("f4", "real", "3.14"),
        ("f8", "double precision", "0.1"),
        ("f8n", "double precision", "'-Infinity'"),
        ("b", "boolean", "true"),
        (
            "t",
            "text",
            "E'quote '' backslash \\\\ tab \\t unicode é 😀'",
        ),
        ("vc", "varchar(5)", "'abc'"),
        ("ch", "char(4)", "'ab'"),
        ("by", "bytea", "'\\x00ff10'"),
        ("d", "date", "'2024-02-29'"),
        ("tm", "time(3)", "'23:59:59.999'"),
        ("ts", "timestamp(6)", "'1999-12-31 23:59:59.123456'"),
        ("tz", "timestamptz", "'2024-06-01 12:00:00.5+02'"),
        ("iv", "interval", "'1 year 2 mons 3 days 04:05:06.7'"),
        ("u", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
        ("j", "json", "'{\"b\": 1, \"a\": [1, 2.50]}'"),
        ("jb", "jsonb", "'{\"b\": 1, \"a\": [1, 2.50]}'"),
        ("ia", "int[]", "'{1,NULL,3}'"),
        ("ta", "text[]", "'{\"a b\",\"c,d\"}'"),
        ("ip", "inet", "'10.0.0.1/8'"),
        ("m", "mood", "'ok'"),
        ("p", "posint", "7"),
        ("nul", "text", "NULL"),
    ];
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, t, _)| {
            let t = match *t {
                "mood" | "posint" => format!("{schema}.{t}"),
                t => t.to_string(),
            };
            format!("{c} {t}")
        })
        .collect();
    let table = format!("{schema}.t");
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let values: Vec<&str> = columns.iter().map(|c| c.2).collect();
    let insert = |id: i32| {
        format!(
            "INSERT INTO {table} (id, {}) VALUES ({id}, {})",
            names.join(", "),
            values.join(", ")
        )
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, {});
             CREATE PUBLICATION {schema} FOR TABLE {table}; {}",
            defs.join(", "),
            insert(1)
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let mut daemon = spawn_daemon(&c);
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    client.batch_execute(&insert(2)).await.unwrap();
    let log = dir.path().join("log");
    wait_for_events(&log, 2, Duration::from_secs(30)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
    let events: Vec<Json> = read_events(&log)
        .into_iter()
        .filter(|e| e["source"]["table"] == "t")
        .collect();
    let snap = events
        .iter()
        .find(|e| e["op"] == "r")
        .expect("a snapshot row");
    let streamed = events
        .iter()
        .find(|e| e["op"] == "c")
        .expect("a streamed row");
    let mut a = snap["after"].clone();
    let mut b = streamed["after"].clone();
    a.as_object_mut().unwrap().remove("id");
    b.as_object_mut().unwrap().remove("id");
    assert_eq!(a, b, "snapshot and streamed values differ");
    assert_eq!(a.as_object().unwrap().len(), columns.len());
    assert_eq!(snap["schema_version"], streamed["schema_version"]);
    // The snapshot row's version precedes the streamed change's.
    assert!(snap["version"].as_u64().unwrap() < streamed["version"].as_u64().unwrap());
}

/// A transaction that changed a row before a chunk's snapshot and commits after the
/// chunk was emitted: its change must win in the index. (Its changes' own LSNs predate
/// the chunk's marker; versions by commit LSN order it after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_across_a_chunk_wins_in_elasticsearch() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let schema = create_table(&client, "psnapopen", 10).await;
    let table = format!("{schema}.t");
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "snapshot = \"never\"");
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;

    // T changes row 5 and stays open.
    let (open, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={PG_PORT} user=admin password=admin dbname=app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    open.batch_execute(&format!(
        "SET synchronous_commit = on; BEGIN; UPDATE {table} SET s = 'from T' WHERE id = 5"
    ))
    .await
    .unwrap();
    let (code, _, err) = tributary(&[
        "snapshot",
        "--connector",
        c.to_str().unwrap(),
        "--table",
        &table,
    ]);
    assert_eq!(code, 0, "{err}");
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    let alias = format!("{schema}_t");
    let docs = wait_documents(&url, &alias, 10).await;
    assert_eq!(docs["5"]["s"], "row 5", "the snapshot did not see T");
    open.batch_execute("COMMIT").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let docs = es_documents(&url, &alias).await;
        if docs["5"]["s"] == "from T" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "T's change lost against the older snapshot row: {}\n{}",
            docs["5"],
            daemon_log(&c)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// A column added while the table's snapshot runs, then filled for every row: the
/// chunks read after the ALTER carry it too (each chunk is read with the columns its
/// own snapshot sees), so every document ends with the value, none with a chunk's
/// older image that lacks the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_during_the_snapshot_reaches_every_document() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let rows = 20_000u64;
    let schema = create_table(&client, "psnapalter", rows).await;
    let table = format!("{schema}.t");
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(
        dir.path(),
        PG_PORT,
        &schema,
        &table,
        "snapshot_chunk_rows = 500",
    );
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon_env(&c, WIDE_WINDOW);
    wait_snapshot(&c, &table, |s| s["rows"].as_u64().unwrap_or(0) >= 2_000).await;
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ADD COLUMN extra int; UPDATE {table} SET extra = id"
        ))
        .await
        .unwrap();
    let first = snapshot_status(&c, &table);
    assert_eq!(
        first["status"], "running",
        "the ALTER came mid-snapshot: {first}"
    );
    wait_snapshot(&c, &table, |s| s["status"] == "done").await;
    let alias = format!("{schema}_t");
    wait_every_document(&url, &alias, rows, |id, d| d["extra"] == id, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}
