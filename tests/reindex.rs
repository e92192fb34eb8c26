//! `tributary reindex` against real MariaDB and the Elasticsearch stand-in: a table's
//! index rebuilt into `_v2` with a new enrichment step while a writer changes the
//! table and a search loop reads through the alias (never an error, never fewer
//! documents than the table held); the daemon resumes into the new index and it equals
//! the table; a reindex killed with -9 leaves the alias on the old index, and running
//! it again finishes it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value as Json};

const ROWS: u64 = 3000;

/// `_count` through the alias until `stop`: (lowest count, errors, reads).
fn search_loop(
    url: String,
    alias: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, u64)> {
    tokio::spawn(async move {
        let client = es(&url);
        let (mut lowest, mut errors, mut reads) = (u64::MAX, 0, 0);
        while !stop.load(Ordering::SeqCst) {
            let r = client
                .count(elasticsearch::CountParts::Index(&[&alias]))
                .send()
                .await;
            reads += 1;
            match r {
                Ok(r) if r.status_code().is_success() => {
                    let v: Json = r.json().await.unwrap();
                    lowest = lowest.min(v["count"].as_u64().unwrap());
                }
                _ => errors += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (lowest, errors, reads)
    })
}

/// Inserts (ids from `first` on) and updates rows (never deletes: the search loop's
/// floor holds) until `stop`.
fn writer(
    db: String,
    first: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = admin(SHARED_PORT).await;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            conn.query_drop(format!(
                "UPDATE `{db}`.items SET v = v + 1, note = 'w {n}' WHERE id = {}; INSERT INTO `{db}`.items VALUES ({}, {n}, 'new {n}')",
                1 + (n * 37) % ROWS,
                first + n
            ))
            .await
            .unwrap();
            written.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

async fn table(db: &str) -> BTreeMap<String, Json> {
    let mut rows = items_rows(db).await;
    for doc in rows.values_mut() {
        doc["region"] = json!("eu");
    }
    rows
}

/// `tributary reindex` of `table` with `extra` arguments: (exit code, stdout, stderr).
fn reindex(c: &std::path::Path, table: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "reindex",
        "--connector",
        c.to_str().unwrap(),
        "--table",
        table,
    ];
    args.extend_from_slice(extra);
    tributary(&args)
}

/// `tributary reindex` of `<db>.items` with `args` while a writer inserts and updates
/// and a search loop counts through the alias: the alias moves to `_v2`, no search
/// fails and none sees fewer than `floor` documents.
async fn reindex_under_writes(url: &str, c: &std::path::Path, db: &str, args: &[&str], floor: u64) {
    let alias = format!("{db}_items");
    let halt = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let searches = search_loop(url.to_string(), alias.clone(), halt.clone());
    let w = writer(db.to_string(), 100_000, halt.clone(), written.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, out, err) = reindex(c, &format!("{db}.items"), args);
    assert_eq!(code, 0, "{out}\n{err}\n{}", daemon_log(c));
    assert!(out.contains(&format!("{alias}_v2")), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    halt.store(true, Ordering::SeqCst);
    w.await.unwrap();
    let (lowest, errors, reads) = searches.await.unwrap();
    assert!(written.load(Ordering::SeqCst) > 10, "the writer ran");
    assert_eq!(
        errors, 0,
        "searches through the alias failed during the reindex"
    );
    assert!(
        reads > 10 && lowest >= floor,
        "a search saw {lowest} documents ({reads} reads)"
    );
    assert_eq!(behind(url, &alias).await, [format!("{alias}_v2")]);
}

/// A new enrichment step on `table`: old documents get its field only by a reindex.
fn add_region_step(c: &std::path::Path, table: &str) {
    let mut text = std::fs::read_to_string(c).unwrap();
    text.push_str(&format!(
        "\n[[enrich]]\ntable = \"{table}\"\nkind = \"set\"\nfields = {{ region = \"eu\" }}\n"
    ));
    std::fs::write(c, text).unwrap();
}

/// Starts `tributary reindex` of `table` and returns it once `index` exists (in the
/// middle of filling it).
async fn reindex_once_it_created(
    c: &std::path::Path,
    table: &str,
    url: &str,
    index: &str,
) -> std::process::Child {
    let mut r = spawn_reindex(c, table);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exists(url, index).await {
        assert!(
            Instant::now() < deadline && r.try_wait().unwrap().is_none(),
            "no {index} appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r
}

/// `reindex_once_it_created`, killed with -9 there.
async fn kill_reindex_once_it_created(c: &std::path::Path, table: &str, url: &str, index: &str) {
    kill9(&mut reindex_once_it_created(c, table, url, index).await);
}

fn spawn_reindex(c: &std::path::Path, table: &str) -> std::process::Child {
    std::process::Command::new(bin())
        .args([
            "reindex",
            "--connector",
            c.to_str().unwrap(),
            "--table",
            table,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts a reindex beside the running daemon and kills it with -9 once `status` shows
/// it filling `index` while the daemon writes to both: killed mid-fill, never in the
/// moment between creating the index and recording the run (which a kill as soon as
/// the index exists could hit).
async fn kill_reindex_once_filling(c: &std::path::Path, table: &str, alias: &str, index: &str) {
    let mut r = spawn_reindex(c, table);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = tributary(&["status", "--connector", c.to_str().unwrap()]);
        let status: Json = serde_json::from_str(&out).unwrap_or(Json::Null);
        let shown = &status["reindex"][alias];
        if shown["index"] == index
            && shown["phase"]
                .as_str()
                .is_some_and(|p| p.starts_with("filling"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline && r.try_wait().unwrap().is_none(),
            "the reindex into {index} did not start filling: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill9(&mut r);
}

/// The PostgreSQL items table as documents with the `region` step's field.
async fn pg_items_with_region(
    client: &tokio_postgres::Client,
    table: &str,
) -> BTreeMap<String, Json> {
    let mut want = pg_items_rows(client, table).await;
    for doc in want.values_mut() {
        doc["region"] = json!("eu");
    }
    want
}

/// Runs the daemon until the index equals the table, then stops it.
async fn converge(c: &std::path::Path, url: &str, alias: &str, db: &str) {
    let mut daemon = spawn_daemon(c);
    wait_streaming(c, &mut daemon).await;
    until_equal(url, alias, c, || table(db)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_reindex_swaps_to_a_complete_index_under_writes_and_after_kill_9() {
    let url = elasticsearch();
    let (db, _dir, c, mut daemon) = items_in_elasticsearch("reindex", &url, ROWS).await;
    let alias = format!("{db}_items");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v1")]);

    // A new enrichment step: old documents get it only through a reindex.
    add_region_step(&c, &format!("{db}.items"));

    reindex_under_writes(&url, &c, &db, &[], ROWS).await;
    assert!(
        exists(&url, &format!("{alias}_v1")).await,
        "the previous index is kept"
    );
    // The daemon resumes into the new index: it equals the table, the new field on
    // every document, the writer's changes included.
    converge(&c, &url, &alias, &db).await;

    // Killed with -9 in the middle: the alias stays on the complete index.
    kill_reindex_once_it_created(&c, &format!("{db}.items"), &url, &format!("{alias}_v3")).await;
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    // The next run fills _v4 (a name is never used twice) and deletes what the
    // killed one left.
    let (code, out, err) = reindex(&c, &format!("{db}.items"), &["--delete-previous"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v4")]);
    assert!(
        !exists(&url, &format!("{alias}_v2")).await,
        "--delete-previous"
    );
    assert!(!exists(&url, &format!("{alias}_v3")).await, "left over");
    converge(&c, &url, &alias, &db).await;
    // The daemon refuses nothing and the stopped daemon's store was free again.
    let (code, _, err) = reindex(&c, "nope.nothing", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("nope.nothing"), "{err}");
}

/// The same on PostgreSQL, where a chunk counts only when no transaction was running at
/// its snapshot: with a writer committing all along, the reindex still completes and
/// the daemon resumes into an index equal to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reindex_under_writes() {
    postgres_reindex_with_a_writer("preindex", false).await;
}

/// The same beside a running PostgreSQL daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reindex_beside_the_running_daemon() {
    postgres_reindex_with_a_writer("pronline", true).await;
}

/// A PostgreSQL table given a new enrichment step, reindexed while a writer commits
/// and a search loop reads through the alias, with the daemon stopped or (`online`)
/// running; afterwards the (running) daemon makes the index equal the table.
async fn postgres_reindex_with_a_writer(prefix: &str, online: bool) {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let (schema, table, _dir, c, mut daemon) =
        pg_items_in_elasticsearch(&client, prefix, &url, ROWS).await;
    let alias = format!("{schema}_t");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    add_region_step(&c, &table);
    let mut running = online.then(|| spawn_daemon(&c));
    if let Some(d) = running.as_mut() {
        wait_streaming(&c, d).await;
    }

    let halt = Arc::new(AtomicBool::new(false));
    let searches = search_loop(url.clone(), alias.clone(), halt.clone());
    let w = pg_items_writer(table.clone(), ROWS, false, halt.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, out, err) = reindex(&c, &table, &[]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", daemon_log(&c));
    tokio::time::sleep(Duration::from_millis(300)).await;
    halt.store(true, Ordering::SeqCst);
    assert!(w.await.unwrap() > 10, "the writer ran");
    let (lowest, errors, reads) = searches.await.unwrap();
    assert_eq!(errors, 0);
    assert!(
        reads > 10 && lowest >= ROWS,
        "a search saw {lowest} documents ({reads} reads)"
    );
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    let mut daemon = match running {
        Some(d) => d,
        None => {
            let mut d = spawn_daemon(&c);
            wait_streaming(&c, &mut d).await;
            d
        }
    };
    until_equal(&url, &alias, &c, || pg_items_with_region(&client, &table)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// The values of `table` (id int, x double) as documents.
async fn float_rows(client: &tokio_postgres::Client, table: &str) -> BTreeMap<String, Json> {
    client
        .query(&format!("SELECT id, x FROM {table}"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let (id, x): (i32, f64) = (r.get(0), r.get(1));
            (id.to_string(), json!({"id": id, "x": x}))
        })
        .collect()
}

/// A PostgreSQL table (id, x real) of 50 rows in Elasticsearch with `policy` (a policy
/// file's text), then `x` widened to double and row 1 given a value only a double
/// holds. Returns the daemon still running.
async fn float_widened(
    client: &tokio_postgres::Client,
    url: &str,
    prefix: &str,
    policy: &str,
) -> (
    String,
    String,
    tempfile::TempDir,
    std::path::PathBuf,
    std::process::Child,
) {
    let (schema, table) = pg_table(client, prefix, "id int PRIMARY KEY, x real").await;
    let alias = format!("{schema}_t");
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    add_es_sink(&c, url, "");
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, policy).unwrap();
    set_policy(&c, &p);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT i, i / 3.0 FROM generate_series(1, 50) i"
        ))
        .await
        .unwrap();
    wait_documents(url, &alias, 50).await;
    assert_eq!(mapping_of(url, &alias).await.0["x"], "float");
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN x TYPE double precision; \
             UPDATE {table} SET x = 0.1234567890123456789 WHERE id = 1"
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while es_documents(url, &alias).await["1"]["x"] != json!(0.12345678901234568) {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (schema, table, dir, c, daemon)
}

/// A float -> double change the policy allows keeps the index's `float` field (it
/// cannot change in place); a reindex gives `_v2` a `double` field and every value
/// exactly as the table holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_float_to_double_ends_as_a_double_field_after_a_reindex() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let (schema, table, _dir, c, mut daemon) = float_widened(
        &client,
        &url,
        "pwiden",
        "[rules]\ntype_widened = \"allow\"\n",
    )
    .await;
    let alias = format!("{schema}_t");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(
        mapping_of(&url, &alias).await.0["x"],
        "float",
        "kept in place"
    );

    let (code, out, err) = reindex(&c, &table, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    assert_eq!(mapping_of(&url, &alias).await.0["x"], "double");
    assert_eq!(
        es_documents(&url, &alias).await,
        float_rows(&client, &table).await
    );
    pg_drop_slot(&client, &schema).await;
}

/// The schema guard's `reindex` verdict (the shipped default for widenings): the
/// daemon rebuilds the index by itself beside the stream, while a writer keeps
/// changing the table: `_v2` gets a `double` field and equals the table. An int ->
/// bigint widening (`long` either way) rebuilds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_guard_reindex_verdict_rebuilds_the_index_with_the_new_type() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let default = std::fs::read_to_string(repo().join("schema-rules/default.toml")).unwrap();
    let (schema, table, _dir, c, mut daemon) =
        float_widened(&client, &url, "pguardre", &default).await;
    let alias = format!("{schema}_t");
    // Writes go on while the daemon rebuilds.
    for round in 0..20 {
        client
            .batch_execute(&format!(
                "UPDATE {table} SET x = x + 0.000000000001 * {round} WHERE id % 7 = {}; \
                 INSERT INTO {table} VALUES ({}, 1.0 / 7)",
                round % 7,
                1000 + round
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rebuilt = behind(&url, &alias).await == [format!("{alias}_v2")]
            && mapping_of(&url, &alias).await.0["x"] == "double";
        if rebuilt && es_documents(&url, &alias).await == float_rows(&client, &table).await {
            break;
        }
        assert!(Instant::now() < deadline, "not rebuilt\n{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = daemon_log(&c);
    assert!(log.contains("index rebuilt beside the stream"), "{log}");
    // int -> bigint: the field is `long` either way, so nothing is rebuilt.
    client
        .batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN id TYPE bigint; INSERT INTO {table} VALUES (5000, 2.5)"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !es_documents(&url, &alias).await.contains_key("5000") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        behind(&url, &alias).await,
        [format!("{alias}_v2")],
        "long stays long"
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// `tributary check` tells which indexes were written under another enrichment
/// configuration than the connector file has now: not after the daemon merely mapped
/// the new step's field (the documents already there still lack it), but after a
/// reindex rewrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_indexes_written_under_another_configuration() {
    let url = elasticsearch();
    let (db, _dir, c, mut daemon) = items_in_elasticsearch("reindex_check", &url, 20).await;
    let alias = format!("{db}_items");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let check = || {
        let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}\n{err}");
        out
    };
    let behind_line = format!("index {alias}_v1 of {db}.items was written under another");
    let out = check();
    assert!(
        out.contains(&format!(
            "ok    sink elasticsearch:{url}: 1 index(es) written under the current configuration"
        )),
        "{out}"
    );
    assert!(!out.contains("written under another"), "{out}");

    add_region_step(&c, &format!("{db}.items"));
    let out = check();
    assert!(out.contains(&behind_line), "{out}");
    assert!(
        out.contains(&format!("tributary reindex --table {db}.items")),
        "{out}"
    );

    // The daemon maps the step's field for the next change; the index stays behind.
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let mut conn = admin(SHARED_PORT).await;
    conn.query_drop(format!("UPDATE `{db}`.items SET v = v + 1 WHERE id = 1"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while es_documents(&url, &alias).await["1"]["region"] != json!("eu") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let out = check();
    assert!(out.contains(&behind_line), "{out}");

    let (code, out, err) = reindex(&c, &format!("{db}.items"), &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let out = check();
    assert!(!out.contains("written under another"), "{out}");
    assert!(
        out.contains(&format!(
            "ok    sink elasticsearch:{url}: 1 index(es) written under the current configuration"
        )),
        "{out}"
    );
    assert_eq!(es_documents(&url, &alias).await, table(&db).await);
}

/// A reindex beside the running daemon: the daemon writes the table's changes to the
/// new index too while the reindex fills it, so after the swap the index equals the
/// table without a restart; searches through the alias never fail nor see fewer rows.
/// A reindex killed with -9 leaves the alias where it was (the daemon keeps writing the
/// unfinished index until the next run takes it over); a daemon running another
/// configuration than the file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_reindex_beside_the_running_daemon() {
    let url = elasticsearch();
    let (db, _dir, c, mut daemon) = items_in_elasticsearch("reindex_online", &url, ROWS).await;
    let alias = format!("{db}_items");
    let table_name = format!("{db}.items");
    // The new step is in the file the daemon runs with.
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    add_region_step(&c, &table_name);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;

    reindex_under_writes(&url, &c, &db, &[], ROWS).await;
    assert!(exists(&url, &format!("{alias}_v1")).await, "kept");
    until_equal(&url, &alias, &c, || table(&db)).await;
    let log = daemon_log(&c);
    assert!(
        log.contains("writing the table's changes to the new index too")
            && log.contains("reindex finished"),
        "{log}"
    );

    // The daemon killed with -9 while a reindex fills, under writes: restarted, it
    // replays into both indexes; the reindex completes and the index equals the table.
    let halt = Arc::new(AtomicBool::new(false));
    let w = writer(
        db.clone(),
        300_000,
        halt.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let r = reindex_once_it_created(&c, &table_name, &url, &format!("{alias}_v3")).await;
    kill9(&mut daemon);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let out = r.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon_log(&c)
    );
    halt.store(true, Ordering::SeqCst);
    w.await.unwrap();
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v3")]);
    until_equal(&url, &alias, &c, || table(&db)).await;

    // Killed with -9 while filling: the alias stays; the next run takes over.
    kill_reindex_once_filling(&c, &table_name, &alias, &format!("{alias}_v4")).await;
    let halt = Arc::new(AtomicBool::new(false));
    let w = writer(
        db.clone(),
        400_000,
        halt.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v3")]);
    // `status` shows the reindex the daemon still writes for.
    let (code, out, _) = tributary(&["status", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0);
    let status: Json = serde_json::from_str(&out).unwrap();
    let shown = &status["reindex"][&alias];
    assert_eq!(shown["index"], format!("{alias}_v4"), "{status}");
    assert_eq!(shown["table"], table_name.as_str(), "{status}");
    assert!(
        shown["phase"].as_str().unwrap().starts_with("filling"),
        "{status}"
    );
    // The next run never reuses the name (a write the daemon queued for _v4 could
    // land after a delete and recreate it) and deletes _v4 once the alias moved.
    let (code, out, err) = reindex(&c, &table_name, &["--delete-previous"]);
    assert_eq!(code, 0, "{out}\n{err}");
    halt.store(true, Ordering::SeqCst);
    w.await.unwrap();
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v5")]);
    assert!(!exists(&url, &format!("{alias}_v3")).await);
    assert!(!exists(&url, &format!("{alias}_v4")).await, "left over");
    until_equal(&url, &alias, &c, || table(&db)).await;

    // A TRUNCATE while a reindex fills _v6: the truncate's empty index is _v7, never
    // the half-filled _v6 (which holds rows the truncate removed); the reindex fails
    // naming the truncate unless it swapped before the daemon saw it.
    let halt = Arc::new(AtomicBool::new(false));
    let mut r = reindex_once_it_created(&c, &table_name, &url, &format!("{alias}_v6")).await;
    // Once its first chunk is in (the request's progress), while the rest fills.
    let request = c
        .parent()
        .unwrap()
        .join(format!("state/reindex/{alias}.request"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.try_wait().unwrap().is_none() && Instant::now() < deadline {
        let rows = std::fs::read(&request)
            .ok()
            .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
            .and_then(|j| j["rows"].as_u64());
        if rows.is_some_and(|n| n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conn = admin(SHARED_PORT).await;
    conn.query_drop(format!("TRUNCATE TABLE `{db}`.items"))
        .await
        .unwrap();
    let w = writer(
        db.clone(),
        500_000,
        halt.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let out = r.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("truncated"),
        "{err}\n{}",
        daemon_log(&c)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    halt.store(true, Ordering::SeqCst);
    w.await.unwrap();
    until_equal(&url, &alias, &c, || table(&db)).await;

    // The file changed under the running daemon: refused, nothing moved.
    let before = behind(&url, &alias).await;
    let text = std::fs::read_to_string(&c).unwrap();
    std::fs::write(&c, text.replace("region = \"eu\"", "region = \"us\"")).unwrap();
    let (code, out, err) = reindex(&c, &table_name, &[]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("restart it"), "{err}");
    assert_eq!(behind(&url, &alias).await, before);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}

/// `--from log:NAME`: the new index is filled by replaying the connector's log stream
/// (beside the running daemon, under writes, with a search loop through the alias) and
/// equals the table; a log that does not hold the table's whole history is refused
/// before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_reindex_from_a_log_stream() {
    let url = elasticsearch();
    let (db, dir, c, mut daemon) = items_in_elasticsearch("reindex_log", &url, ROWS).await;
    let alias = format!("{db}_items");
    let table_name = format!("{db}.items");
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        &format!("DELETE FROM `{db}`.items WHERE id % 10 = 0; UPDATE `{db}`.items SET v = v + 1, note = CONCAT(note, ' changed') WHERE id % 7 = 0"),
    )
    .await;
    let left = ROWS - ROWS / 10;
    until_equal(&url, &alias, &c, || items_rows(&db)).await;

    let (code, _, err) = reindex(&c, &table_name, &["--from", "log:nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no log sink of that name (log sinks: log:"),
        "{err}"
    );

    let from = format!("log:{}", dir.path().join("log").display());
    reindex_under_writes(&url, &c, &db, &["--from", &from], left).await;
    until_equal(&url, &alias, &c, || items_rows(&db)).await;

    // A log sink added after the table's snapshot lacks the rows from before it.
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let late = dir.path().join("late");
    let text = std::fs::read_to_string(&c).unwrap().replace(
        "[state]",
        &format!(
            // Plain records, so that 100 updates fill several 4 KiB segments (below,
            // retention takes the first).
            "[[sink]]\nkind = \"log\"\nname = \"late\"\ndir = \"{}\"\nsegment_bytes = 4096\ncompression = \"none\"\n\n[state]",
            late.display()
        ),
    );
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.items SET v = v + 1 WHERE id <= 100"),
    )
    .await;
    until_equal(&url, &alias, &c, || items_rows(&db)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let (code, _, err) = reindex(&c, &table_name, &["--from", "log:late"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("does not hold the whole history")
            && err.contains("after the table's snapshot started"),
        "{err}"
    );
    // Retention took its oldest segment.
    std::fs::remove_file(late.join("00000000000000000000.log")).unwrap();
    let (code, _, err) = reindex(&c, &table_name, &["--from", "log:late"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("retention deleted its oldest segments"),
        "{err}"
    );
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    assert!(
        !exists(&url, &format!("{alias}_v3")).await,
        "nothing created"
    );

    // Stopped, from the whole log again: equal.
    let (code, out, err) = reindex(&c, &table_name, &["--from", &from, "--delete-previous"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v3")]);
    assert_eq!(es_documents(&url, &alias).await, items_rows(&db).await);
}

/// `--from log:NAME` on PostgreSQL, with the daemon stopped: a table keyed by a date and
/// a numeric (ids are JSON arrays of their text), with doubles, timestamps, bytea and
/// a NULL, snapshotted and then changed; the index the log replay builds holds exactly
/// the documents the live sink wrote, id for id and byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reindex_from_a_log_gives_the_live_documents() {
    let url = elasticsearch();
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(
        &client,
        "reindexlog",
        "d date, n numeric(10,2), f double precision, at timestamptz, raw bytea, v text, PRIMARY KEY (d, n)",
    )
    .await;
    let rows = "INSERT INTO {T} SELECT DATE '2024-02-01' + i, i / 3.0, i * 0.1, TIMESTAMPTZ '2024-02-29 23:59:59.123456+00' + i * INTERVAL '1 hour', decode('00ff' || lpad(to_hex(i % 256), 2, '0'), 'hex'), 'row ' || i FROM generate_series(1, 300) i";
    client
        .batch_execute(&rows.replace("{T}", &table))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let alias = format!("{schema}_t");
    wait_documents(&url, &alias, 300).await;
    client
        .batch_execute(&format!(
            "UPDATE {table} SET v = 'changed', f = -0.5, raw = NULL WHERE n < 20; DELETE FROM {table} WHERE n > 90;
             INSERT INTO {table} VALUES (DATE '2030-01-01', 1.5, 2.5, NULL, NULL, 'late')"
        ))
        .await
        .unwrap();
    let counts = client
        .query_one(
            &format!("SELECT count(*), count(*) FILTER (WHERE v = 'changed') FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    let (count, changed): (i64, i64) = (counts.get(0), counts.get(1));
    let live = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let docs = es_documents(&url, &alias).await;
            if docs.len() as i64 == count
                && docs.values().filter(|d| d["v"] == "changed").count() as i64 == changed
            {
                break docs;
            }
            assert!(std::time::Instant::now() < deadline, "{}", daemon_log(&c));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let (code, out, err) = reindex(&c, &table, &["--from", "log:log"]);
    assert_ne!(code, 0, "no sink named so");
    assert!(err.contains("no log sink"), "{out}{err}");
    let from = format!("log:{}", dir.path().join("log").display());
    let (code, out, err) = reindex(&c, &table, &["--from", &from]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    assert_eq!(es_documents(&url, &alias).await, live);
    pg_drop_slot(&client, &schema).await;
}
