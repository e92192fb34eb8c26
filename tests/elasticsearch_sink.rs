//! The Elasticsearch sink against the stand-in (osmem-server) and a real MariaDB: the
//! index converges exactly to the source across kill -9 and replays; rejected
//! documents go to the dead-letter stream.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value as Json};

/// The source table as the index should hold it: id -> document.
async fn source_docs(db: &str) -> BTreeMap<String, Json> {
    let mut conn = admin(SHARED_PORT).await;
    let rows: Vec<(u64, i64, String, String)> = conn
        .query(format!(
            "SELECT id, v, CAST(amount AS CHAR), note FROM `{db}`.items"
        ))
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, v, amount, note)| {
            (
                id.to_string(),
                json!({"id": id, "v": v, "amount": amount, "note": note}),
            )
        })
        .collect()
}

async fn wait_converged(
    url: &str,
    alias: &str,
    db: &str,
    timeout: Duration,
) -> (BTreeMap<String, Json>, BTreeMap<String, Json>) {
    let deadline = Instant::now() + timeout;
    loop {
        let (want, got) = (source_docs(db).await, es_documents(url, alias).await);
        if want == got || Instant::now() > deadline {
            return (want, got);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn diff(want: &BTreeMap<String, Json>, got: &BTreeMap<String, Json>) -> String {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let stale: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .take(3)
        .collect();
    format!(
        "{} source rows, {} documents; missing {missing:?}, extra {extra:?}, stale {stale:?}",
        want.len(),
        got.len()
    )
}

/// Creates `<db>.items` and starts a daemon streaming it into the index (and a log
/// stream); returns an admin connection, the work dir, the connector and the daemon.
async fn stream_items(
    db: &str,
    url: &str,
) -> (
    mysql_async::Conn,
    tempfile::TempDir,
    std::path::PathBuf,
    std::process::Child,
    u16,
) {
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(&mut conn, &format!("CREATE TABLE `{db}`.items (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL, note VARCHAR(100) NOT NULL)")).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, db, "");
    add_es_sink(&c, url, "");
    let metrics = add_metrics(&c);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    (conn, dir, c, daemon, metrics)
}

async fn workload(db: String, rounds: u64) {
    let mut conn = admin(SHARED_PORT).await;
    for r in 0..rounds {
        let mut tx = conn.start_transaction(Default::default()).await.unwrap();
        let values: Vec<String> = (0..40)
            .map(|i| {
                let id = r * 40 + i + 1;
                format!("({id}, {id}, {}.{:02}, 'note {id}')", id * 3, id % 100)
            })
            .collect();
        tx.query_drop(format!(
            "INSERT INTO `{db}`.items (id, v, amount, note) VALUES {}",
            values.join(",")
        ))
        .await
        .unwrap();
        tx.query_drop(format!("UPDATE `{db}`.items SET v = v + 1000, note = CONCAT(note, ' u') WHERE id % 7 = {} AND id > {}", r % 7, r * 40)).await.unwrap();
        if r > 2 {
            tx.query_drop(format!(
                "DELETE FROM `{db}`.items WHERE id BETWEEN {} AND {}",
                (r - 2) * 40 + 1,
                (r - 2) * 40 + 6
            ))
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_equals_source_after_kill_9_and_a_full_replay() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("es");
    let (_conn, dir, c, mut daemon, _) = stream_items(&db, &url).await;

    let writer = tokio::spawn(workload(db.clone(), 60));
    let mut kills = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if writer.is_finished() {
            break;
        }
        kill9(&mut daemon);
        kills += 1;
        daemon = spawn_daemon(&c);
    }
    writer.await.unwrap();
    assert!(kills >= 1, "the daemon was never killed mid-stream");

    let alias = format!("{db}_items");
    let (want, got) = wait_converged(&url, &alias, &db, Duration::from_secs(120)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert!(
        want == got,
        "index differs from source after {kills} kills: {}\n{}",
        diff(&want, &got),
        daemon_log(&c)
    );
    assert!(want.len() > 1000, "workload too small: {}", want.len());

    // The concrete index carries the mapping derived from the schema.
    let m = mapping_json(&url, &format!("{alias}_v1")).await;
    let props = &m[format!("{alias}_v1")]["mappings"]["properties"];
    assert_eq!(props["id"]["type"], "unsigned_long", "{m}");
    assert_eq!(props["amount"]["type"], "keyword", "{m}");
    assert_eq!(props["note"]["fields"]["keyword"]["type"], "keyword", "{m}");

    // Replaying an old stretch (fresh state, from the oldest binlog up to the middle of
    // the workload) over the newer index changes nothing: without versions it would
    // revert updated rows and bring deleted ones back.
    let events = read_events(&dir.path().join("log"));
    let middle = &events[events.len() / 2]["source"]["pos"];
    let until = format!("{}:{}", middle["file"].as_str().unwrap(), middle["offset"]);
    let replay_dir = tempfile::tempdir().unwrap();
    let rc = connector(replay_dir.path(), SHARED_PORT, &db, "start = \"earliest\"");
    add_es_sink(&rc, &url, "");
    let (code, _, err) = tributary(&[
        "run",
        "--connector",
        rc.to_str().unwrap(),
        "--until",
        &until,
    ]);
    assert_eq!(code, 0, "{err}");
    let replayed = read_events(&replay_dir.path().join("log"));
    assert!(
        replayed.len() >= events.len() / 2,
        "the replay covered {} of {} changes",
        replayed.len(),
        events.len()
    );
    assert!(
        replayed
            .iter()
            .any(|e| e["op"] == "c" && !want.contains_key(&e["after"]["id"].to_string())),
        "the replayed stretch includes rows deleted later"
    );
    let after_replay = es_documents(&url, &alias).await;
    assert!(
        after_replay == want,
        "a replay changed the index: {}",
        diff(&want, &after_replay)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_document_goes_to_dead_letters_and_the_rest_is_indexed() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("esdlq");
    let alias = format!("{db}_items");
    // An existing index (adopted, never dropped) whose mapping says `note` is a number.
    let client = elasticsearch::Elasticsearch::new(
        elasticsearch::http::transport::Transport::single_node(&url).unwrap(),
    );
    let created = client
        .indices()
        .create(elasticsearch::indices::IndicesCreateParts::Index(&format!("{alias}_v7")))
        .body(json!({"mappings": {"properties": {"note": {"type": "long"}}}, "aliases": {&alias: {"is_write_index": true}}}))
        .send()
        .await
        .unwrap();
    assert!(created.status_code().is_success());

    let (mut conn, dir, c, mut daemon, metrics) = stream_items(&db, &url).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.items VALUES (1, 1, 1.00, '10'), (2, 2, 2.00, 'not a number'), (3, 3, 3.00, '30')")).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let docs = loop {
        let docs = es_documents(&url, &alias).await;
        if docs.len() >= 2 || Instant::now() > deadline {
            break docs;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Counted in the metrics too, by sink, index and error type; the changes by table.
    let dead_series = format!("tributary_dead_letters_total{{sink=\"elasticsearch:{url}\",index=\"{alias}\",error_type=\"mapper_parsing_exception\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(metrics, &dead_series).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(metrics, &dead_series), Some(1.0), "{dead_series}");
    assert_eq!(
        metric(
            metrics,
            &format!("tributary_changes_total{{table=\"{db}.items\",op=\"c\"}}")
        ),
        Some(3.0)
    );
    assert!(
        metric(
            metrics,
            "tributary_sink_ack_latency_seconds_count{sink=\"elasticsearch"
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(
        docs.keys().collect::<Vec<_>>(),
        ["1", "3"],
        "{}",
        daemon_log(&c)
    );

    let dead = read_events(&dir.path().join("dead-letters"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d["index"], alias.as_str());
    assert_eq!(d["status"], 400);
    assert_eq!(d["error_type"], "mapper_parsing_exception");
    assert!(d["reason"].as_str().unwrap().contains("note"), "{d}");
    assert_eq!(d["event"]["after"]["id"], 2);
    assert_eq!(d["event"]["op"], "c");
    assert!(daemon_log(&c).contains("dead-letter"));
}

/// Documents of tables without a primary key, by `ids = "row_hash"` and by a column
/// list; a key that changes in an update moves the document; an unlisted keyless table
/// is skipped with a warning naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_tables_and_key_changes_converge() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("esids");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    for ddl in [
        "CREATE TABLE `{db}`.keyed (id INT PRIMARY KEY, v INT NOT NULL)",
        "CREATE TABLE `{db}`.logs (a INT, b VARCHAR(20))",
        "CREATE TABLE `{db}`.events (device INT NOT NULL, seq INT NOT NULL, v INT)",
        "CREATE TABLE `{db}`.skipped (x INT)",
    ] {
        exec(&mut conn, &ddl.replace("{db}", &db)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(
        &c,
        &url,
        &format!(r#"ids = {{ "{db}.logs" = "row_hash", "{db}.events" = ["device", "seq"] }}"#),
    );
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    for sql in [
        "INSERT INTO `{db}`.keyed VALUES (1, 10), (2, 20), (3, 30)",
        "UPDATE `{db}`.keyed SET id = 101 WHERE id = 1",
        "UPDATE `{db}`.keyed SET v = 21 WHERE id = 2",
        "DELETE FROM `{db}`.keyed WHERE id = 3",
        "INSERT INTO `{db}`.logs VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, NULL)",
        "UPDATE `{db}`.logs SET b = 'bb' WHERE a = 2",
        "DELETE FROM `{db}`.logs WHERE a = 3",
        "INSERT INTO `{db}`.events VALUES (1, 1, 5), (1, 2, 6), (2, 1, 7)",
        "UPDATE `{db}`.events SET v = 60 WHERE device = 1 AND seq = 2",
        "UPDATE `{db}`.events SET seq = 9 WHERE device = 2",
        "DELETE FROM `{db}`.events WHERE device = 1 AND seq = 1",
        "INSERT INTO `{db}`.skipped VALUES (1)",
    ] {
        exec(&mut conn, &sql.replace("{db}", &db)).await;
    }

    let want_keyed: BTreeMap<String, Json> = [("101", 10), ("2", 21)]
        .iter()
        .map(|(id, v)| {
            (
                id.to_string(),
                json!({"id": id.parse::<i64>().unwrap(), "v": v}),
            )
        })
        .collect();
    let want_events: BTreeMap<String, Json> = [((1, 2), 60), ((2, 9), 7)]
        .iter()
        .map(|((d, s), v)| (format!("[{d},{s}]"), json!({"device": d, "seq": s, "v": v})))
        .collect();
    let mut want_logs = vec![
        json!({"a": 1, "b": "a"}),
        json!({"a": 2, "b": "bb"}),
        json!({"a": 4, "b": null}),
    ];
    want_logs.sort_by_key(|d| d.to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (keyed, events, logs) = loop {
        let keyed = es_documents(&url, &format!("{db}_keyed")).await;
        let events = es_documents(&url, &format!("{db}_events")).await;
        let mut logs: Vec<Json> = es_documents(&url, &format!("{db}_logs"))
            .await
            .into_values()
            .collect();
        logs.sort_by_key(|d| d.to_string());
        if (keyed == want_keyed && events == want_events && logs == want_logs)
            || Instant::now() > deadline
        {
            break (keyed, events, logs);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(
        keyed, want_keyed,
        "the old document of a changed key is gone"
    );
    assert_eq!(events, want_events);
    assert_eq!(logs, want_logs, "row_hash documents equal the rows");
    let log = daemon_log(&c);
    assert!(
        log.contains(&format!(r#"set ids."{db}.skipped" = "row_hash""#)),
        "{log}"
    );
    assert!(es_documents(&url, &format!("{db}_skipped"))
        .await
        .is_empty());
    assert!(read_events(&dir.path().join("dead-letters")).is_empty());
}

/// Columns added on the source (allowed by the add-only policy) get their fields from
/// the type table, not from dynamic mapping, while the daemon runs and when it adopts
/// the index after a restart; `_meta` follows the schema version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_columns_extend_the_mapping_with_their_types() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("esmap");
    let alias = format!("{db}_items");
    let (mut conn, _dir, c, mut daemon, _) = stream_items(&db, &url).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (1, 1, 1.00, 'a')"),
    )
    .await;
    exec(&mut conn, &format!("ALTER TABLE `{db}`.items ADD COLUMN price DECIMAL(10,2) NULL, ADD COLUMN tag VARCHAR(20) NULL")).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (2, 2, 2.00, 'b', 1.50, 'x')"),
    )
    .await;
    wait_documents(&url, &alias, 2).await;
    let (types, meta) = mapping_of(&url, &alias).await;
    assert_eq!(
        types["price"], "keyword",
        "DECIMAL by the type table: {types:?}"
    );
    assert_eq!(types["tag"], "text", "{types:?}");
    assert_eq!(meta["schema_version"], 2, "{meta}");
    assert_eq!(es_documents(&url, &alias).await["2"]["price"], "1.50");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));

    // Added while the daemon was stopped: mapped when the index is adopted.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.items ADD COLUMN cost DECIMAL(8,2) NULL"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (3, 3, 3.00, 'c', NULL, NULL, 9.99)"),
    )
    .await;
    let mut daemon = spawn_daemon(&c);
    wait_documents(&url, &alias, 3).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let (types, _) = mapping_of(&url, &alias).await;
    assert_eq!(types["cost"], "keyword", "{types:?}");
    assert_eq!(es_documents(&url, &alias).await["3"]["cost"], "9.99");

    // A dropped column is deprecated (add-only): its field and values stay, `_meta`
    // and `tributary status` name it.
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.items DROP COLUMN tag"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (4, 4, 4.00, 'd', NULL, NULL)"),
    )
    .await;
    wait_documents(&url, &alias, 4).await;
    let (types, meta) = mapping_of(&url, &alias).await;
    assert_eq!(meta["deprecated_fields"], json!(["tag"]), "{meta}");
    assert!(types.contains_key("tag"));
    assert_eq!(es_documents(&url, &alias).await["2"]["tag"], "x");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, out, err) = tributary(&["status", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let status: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["tables"][format!("{db}.items")]["deprecated"],
        json!(["tag"]),
        "{out}"
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert!(daemon_log(&c).contains("schema change: deprecated"));
}

/// TRUNCATE on MariaDB writes no rows: the DDL itself becomes a truncate event in the
/// log, and the index is emptied (a new concrete index behind the alias).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_truncate_empties_the_index() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("estrunc");
    let alias = format!("{db}_items");
    let (mut conn, dir, c, mut daemon, _) = stream_items(&db, &url).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.items VALUES (1, 1, 1.00, 'a'), (2, 2, 2.00, 'b'), (3, 3, 3.00, 'c')")).await;
    wait_documents(&url, &alias, 3).await;
    exec(&mut conn, &format!("TRUNCATE TABLE `{db}`.items")).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (4, 4, 4.00, 'd')"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let docs = loop {
        let docs = es_documents(&url, &alias).await;
        if docs.keys().collect::<Vec<_>>() == ["4"] || Instant::now() > deadline {
            break docs;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(docs.keys().collect::<Vec<_>>(), ["4"], "{}", daemon_log(&c));
    let ops: Vec<String> = read_events(&dir.path().join("log"))
        .iter()
        .map(|e| e["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["c", "c", "c", "t", "c"]);
}

/// Columns the policy lists as `unindexed` are kept in the documents but not indexed
/// (an object field with `enabled: false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unindexed_columns_are_stored_not_indexed() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("esunidx");
    let alias = format!("{db}_items");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(&mut conn, &format!("CREATE TABLE `{db}`.items (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL, note VARCHAR(100) NOT NULL)")).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[table]]\nmatch = \"{db}.items\"\nunindexed = [\"note\"]\n"),
    )
    .unwrap();
    set_policy(&c, &policy);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items VALUES (1, 1, 1.00, 'findable words')"),
    )
    .await;
    let docs = wait_documents(&url, &alias, 1).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(docs["1"]["note"], "findable words");
    let (types, _) = mapping_of(&url, &alias).await;
    assert_eq!(types["note"], "object", "{types:?}");
    let client = elasticsearch::Elasticsearch::new(
        elasticsearch::http::transport::Transport::single_node(&url).unwrap(),
    );
    let hits: Json = client
        .search(elasticsearch::SearchParts::Index(&[&alias]))
        .body(json!({"query": {"match": {"note": "findable"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hits["hits"]["total"]["value"], 0, "{hits}");
}

/// A cluster whose `http.max_content_length` is smaller than the batches: a refused
/// (413) bulk request is split until it fits, so every row arrives; a document the
/// cluster refuses even alone, and one larger than `max_document_bytes`, go to the dead
/// letters with their size; the daemon keeps running. Then `dead-letters replay`: with
/// the cause still there they fail again and wait; once it is fixed they are indexed,
/// except that a newer change of the same row already indexed wins; the index equals
/// the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_documents_are_dead_lettered_and_replayed_once_fixed() {
    const LIMIT_PROXY_PORT: u16 = 19274;
    const MAX_BODY: usize = 64 * 1024;
    mariadb(SHARED_PORT, "");
    let es = elasticsearch();
    let largest = limit_body_proxy(LIMIT_PROXY_PORT, ES_PORT, MAX_BODY);
    let url = format!("http://127.0.0.1:{LIMIT_PROXY_PORT}");
    let db = unique_db("es413");
    let alias = format!("{db}_t");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, body LONGTEXT NOT NULL)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    // Batches of up to 500 documents and 4 MiB: far above the 64 KiB the proxy takes.
    add_es_sink(
        &c,
        &url,
        "name = \"es\"\nbatch_bytes = 4194304\nlinger_ms = 2000\nmax_document_bytes = 262144",
    );
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("batch_docs = 500\n", "batch_docs = 400\n");
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;

    // 300 rows of 1 KiB in one transaction, then one of 100 KiB (over the cluster's
    // limit, under max_document_bytes) and one of 300 KiB (over max_document_bytes).
    let values: Vec<String> = (1..=300)
        .map(|i| format!("({i}, REPEAT('{}', 1000))", (b'a' + (i % 26) as u8) as char))
        .collect();
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.t VALUES {}", values.join(",")),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.t VALUES (1001, REPEAT('x', 100000)), (1002, REPEAT('y', 300000)), (1003, 'small')"),
    )
    .await;

    let docs = wait_documents(&es, &alias, 301).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = read_events(&dir.path().join("dead-letters"));
        if dead.len() >= 2 || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(daemon.try_wait().unwrap().is_none(), "{}", daemon_log(&c));
    // A newer change of row 1001 is indexed while its first version waits.
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.t SET body = 'newer' WHERE id = 1001"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !es_documents(&es, &alias).await.contains_key("1001") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let mut want: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    want.push("1003".into());
    want.sort();
    assert_eq!(docs.keys().cloned().collect::<Vec<_>>(), want);
    for (id, doc) in &docs {
        if id != "1003" {
            assert_eq!(doc["body"].as_str().unwrap().len(), 1000, "{id}");
        }
    }
    assert!(largest.load(std::sync::atomic::Ordering::SeqCst) <= MAX_BODY);
    assert!(
        daemon_log(&c).contains("sending it in halves"),
        "{}",
        daemon_log(&c)
    );

    let mut dead: Vec<(i64, String, u64)> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["status"], 413, "{d}");
            assert_eq!(d["index"], alias.as_str());
            (
                d["event"]["after"]["id"].as_i64().unwrap(),
                d["error_type"].as_str().unwrap().to_string(),
                d["error"]["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!((dead[0].0, dead[0].1.as_str()), (1001, "request_too_large"));
    assert!(dead[0].2 > 100_000 && dead[0].2 < 101_000, "{dead:?}");
    assert_eq!(
        (dead[1].0, dead[1].1.as_str()),
        (1002, "document_too_large")
    );
    assert!(dead[1].2 > 300_000 && dead[1].2 < 301_000, "{dead:?}");

    // Listed with table, op and cause.
    let c = c.to_str().unwrap();
    let (code, out, err) = tributary(&["dead-letters", "list", "--connector", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("es: 2 dead letter(s) to replay"), "{out}");
    assert!(out.contains(&format!("{db}.t c v")), "{out}");
    assert!(
        out.contains("request_too_large") && out.contains("document_too_large"),
        "{out}"
    );

    // The limit raised, but the cluster's still too small: both fail again and wait.
    let text = std::fs::read_to_string(c).unwrap().replace(
        "max_document_bytes = 262144",
        "max_document_bytes = 1048576",
    );
    std::fs::write(c, &text).unwrap();
    let (code, out, err) = tributary(&["dead-letters", "replay", "--connector", c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("es: {db}.t: 2 change(s) sent again")),
        "{out}"
    );
    assert!(
        out.contains("2 dead letter(s) failed again and wait"),
        "{out}"
    );
    let (_, out, _) = tributary(&[
        "dead-letters",
        "list",
        "--connector",
        c,
        "--stream",
        "elasticsearch",
    ]);
    assert!(out.contains("es: 2 dead letter(s) to replay"), "{out}");
    assert_eq!(read_events(&dir.path().join("dead-letters")).len(), 4);

    // The cluster takes them now: 1002 is indexed; 1001's old version loses to the newer.
    std::fs::write(c, text.replace(&url, &es)).unwrap();
    let (code, out, err) = tributary(&[
        "dead-letters",
        "replay",
        "--connector",
        c,
        "--table",
        &format!("{db}.t"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("es: {db}.t: 2 change(s) sent again")),
        "{out}"
    );
    assert!(out.contains("no dead letters wait"), "{out}");
    let docs = es_documents(&es, &alias).await;
    assert_eq!(docs["1002"]["body"].as_str().unwrap(), "y".repeat(300_000));
    assert_eq!(docs["1001"]["body"], "newer");
    assert_eq!(docs.len(), 303);
    let rows: Vec<(i64, String)> = conn
        .query(format!("SELECT id, body FROM `{db}`.t"))
        .await
        .unwrap();
    let source: BTreeMap<String, Json> = rows
        .into_iter()
        .map(|(id, body)| (id.to_string(), json!({"id": id, "body": body})))
        .collect();
    assert!(docs == source, "the index differs from the source");
    // Replayed once: a second replay has nothing to send; `--all` still shows them.
    let (code, out, err) = tributary(&["dead-letters", "replay", "--connector", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("es: nothing to replay"), "{out}");
    let (_, out, _) = tributary(&["dead-letters", "list", "--connector", c, "--all"]);
    assert_eq!(out.matches("[replayed]").count(), 4, "{out}");
}

/// Dead letters of the Elasticsearch sink as (table, error_type, op).
fn es_dead_letters(dir: &std::path::Path) -> Vec<(String, String, String)> {
    read_events(&dir.join("dead-letters"))
        .iter()
        .map(|d| {
            (
                d["event"]["source"]["table"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                d["error_type"].as_str().unwrap().to_string(),
                d["event"]["op"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Table names Elasticsearch refuses as index names get a valid encoded alias; two
/// tables meeting in one alias (case) keep their documents apart (the second one's
/// changes, its TRUNCATE too, go to the dead letters with the reason); a column
/// Elasticsearch cannot map sends its table's changes to the dead letters. The daemon
/// keeps running and every other table flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_table_names_elasticsearch_refuses_are_encoded_and_collisions_kept_apart() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("esnames");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    for table in ["Foo Bar", "a#b", "_x", "orders", "Orders"] {
        exec(
            &mut conn,
            &format!("CREATE TABLE `{db}`.`{table}` (id INT PRIMARY KEY, v TEXT)"),
        )
        .await;
    }
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.meta_id (id INT PRIMARY KEY, `_id` TEXT)"),
    )
    .await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.dotted (id INT PRIMARY KEY, a INT, `a.b` INT)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "snapshot = \"never\"");
    add_es_sink(&c, &url, "");
    // `check` names them up front.
    let (code, out, _) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for want in [
        format!("both map to the index alias `{db}_orders`"),
        format!("{db}.meta_id: `_id` is an Elasticsearch metadata field"),
        format!("{db}.dotted: `a.b` is a field inside `a`"),
    ] {
        assert!(out.contains(&want), "{want}:\n{out}");
    }
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    for table in ["Foo Bar", "a#b", "_x", "orders"] {
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.`{table}` VALUES (1, '{table}'), (2, '{table}')"),
        )
        .await;
    }
    // `Orders` meets `orders` in one alias: kept out, its TRUNCATE too.
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.`Orders` VALUES (1, 'Orders'), (3, 'Orders')"),
    )
    .await;
    exec(&mut conn, &format!("TRUNCATE TABLE `{db}`.`Orders`")).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.meta_id VALUES (1, 'x')"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.dotted VALUES (1, 2, 3)"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.orders VALUES (4, 'orders')"),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    while es_dead_letters(dir.path()).len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_documents(&url, &format!("{db}_orders"), 3).await;
    assert!(daemon.try_wait().unwrap().is_none(), "{}", daemon_log(&c));
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));

    for (table, alias) in [
        ("Foo Bar", format!("{db}_foo%20bar")),
        ("a#b", format!("{db}_a%23b")),
        ("_x", format!("{db}__x")),
    ] {
        let docs = es_documents(&url, &alias).await;
        assert_eq!(docs.len(), 2, "{alias}: {docs:?}");
        assert_eq!(docs["1"]["v"], table);
    }
    let orders = es_documents(&url, &format!("{db}_orders")).await;
    assert_eq!(orders.keys().collect::<Vec<_>>(), ["1", "2", "4"]);
    assert!(orders.values().all(|d| d["v"] == "orders"), "{orders:?}");

    let mut dead = es_dead_letters(dir.path());
    dead.sort();
    let want = [
        ("Orders", "index_name_collision", "c"),
        ("Orders", "index_name_collision", "c"),
        ("Orders", "index_name_collision", "t"),
        ("dotted", "unmappable_column", "c"),
        ("meta_id", "unmappable_column", "c"),
    ]
    .map(|(t, e, o)| (t.to_string(), e.to_string(), o.to_string()));
    assert_eq!(dead, want);
    let reasons: Vec<Json> = read_events(&dir.path().join("dead-letters"));
    let collision = reasons
        .iter()
        .find(|d| d["error_type"] == "index_name_collision")
        .unwrap();
    let reason = collision["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{db}.orders")) && reason.contains("indexes"),
        "{reason}"
    );

    // After a restart the index's _meta still says whose it is.
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.`Orders` VALUES (5, 'Orders')"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while es_dead_letters(dir.path()).len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let dead = es_dead_letters(dir.path());
    assert_eq!(dead.len(), 6, "{dead:?}");
    assert_eq!(dead[5].1, "index_name_collision");
    let orders = es_documents(&url, &format!("{db}_orders")).await;
    assert_eq!(orders.keys().collect::<Vec<_>>(), ["1", "2", "4"]);
}
