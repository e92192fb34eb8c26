//! The enrichment stage end to end: a chain of meta, rename, drop, set, compute and
//! geo_point on real MariaDB and PostgreSQL sources into the log stream and the
//! Elasticsearch stand-in; invalid points are null and flagged; a failing step sends
//! the event to the enrichment dead-letter stream and the rest goes on; a step that
//! names a missing column stops the daemon with the entry's file:line.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

/// The chain every test uses on `<db>.<table>` (columns id, name, lat, lng, qty,
/// price, secret).
fn chain(table: &str) -> String {
    format!(
        r#"
[[enrich]]
table = "{table}"
kind = "meta"
fields = {{ op = "_op", table = "_table", schema_version = "_schema" }}

[[enrich]]
table = "{table}"
kind = "rename"
columns = {{ name = "title" }}

[[enrich]]
table = "{table}"
kind = "drop"
columns = ["secret"]

[[enrich]]
table = "{table}"
kind = "set"
fields = {{ region = "eu" }}

[[enrich]]
table = "{table}"
kind = "compute"
field = "unit_price"
expr = "price / qty"
type = "double"

[[enrich]]
table = "{table}"
kind = "geo_point"
lat = "lat"
lon = "lng"
field = "location"
"#
    )
}

fn add_chain(connector: &Path, table: &str) {
    let mut text = std::fs::read_to_string(connector).unwrap();
    text.push_str(&chain(table));
    std::fs::write(connector, text).unwrap();
}

/// The enrichment dead letters: (reason, step, event).
fn dead_letters(dir: &Path) -> Vec<Json> {
    read_events(&dir.join("state").join("dead-letters").join("enrich"))
}

/// What every source must show after rows 1 (valid point), 2 (0/0), 3 (qty 0: the
/// compute fails), 4 (out of range), then an update of 1.
async fn check_outcome(dir: &Path, c: &Path, url: &str, alias: &str, kind: &str) {
    let log = dir.join("log");
    wait_for_events(&log, 4, Duration::from_secs(30)).await;
    let docs = wait_documents(url, alias, 3).await;
    let d1 = &docs["1"];
    assert_eq!(d1["title"], "first", "{d1}");
    assert!(
        d1.get("name").is_none() && d1.get("secret").is_none(),
        "{d1}"
    );
    assert_eq!(d1["region"], "eu");
    assert_eq!(d1["_op"], "u", "the update's enrichment: {d1}");
    assert_eq!(d1["_table"], "t");
    assert_eq!(d1["_schema"], 1);
    assert_eq!(d1["unit_price"], 2.5);
    // [lon, lat], GeoJSON order.
    assert_eq!(d1["location"], serde_json::json!([13.405, 52.52]));
    assert!(d1["_flags"].is_null(), "{d1}");
    // 0,0: no point, flagged; never indexed at 0,0.
    let d2 = &docs["2"];
    assert!(d2["location"].is_null(), "{d2}");
    assert_eq!(
        d2["_flags"],
        serde_json::json!(["geo_point_invalid:location"])
    );
    let d4 = &docs["4"];
    assert!(d4["location"].is_null(), "{d4}");
    assert_eq!(
        d4["_flags"],
        serde_json::json!(["geo_point_invalid:location"])
    );
    // Row 3 (qty 0) went to the dead letters, with its reason; the rest went on.
    assert!(!docs.contains_key("3"), "{docs:?}");
    let dl = dead_letters(dir);
    assert_eq!(dl.len(), 1, "{dl:?}\n{}", daemon_log(c));
    assert!(
        dl[0]["step"].as_str().unwrap().ends_with(" compute"),
        "{}",
        dl[0]
    );
    assert!(
        dl[0]["reason"].as_str().unwrap().contains("price / qty"),
        "{}",
        dl[0]
    );
    assert_eq!(dl[0]["event"]["after"]["id"], 3);
    // The mapping types come from the steps.
    let mapping = mapping_json(url, alias).await;
    let props =
        mapping.as_object().unwrap().values().next().unwrap()["mappings"]["properties"].clone();
    assert_eq!(props["location"]["type"], "geo_point", "{props}");
    assert_eq!(props["unit_price"]["type"], "double");
    assert_eq!(props["region"]["type"], "keyword");
    assert_eq!(props["_flags"]["type"], "keyword");
    // The log carries the same enriched images.
    let events = read_events(&log);
    let first = events
        .iter()
        .find(|e| e["after"]["id"] == 1 && e["op"] == "u")
        .expect("row 1's update in the log");
    assert_eq!(first["after"]["title"], "first", "{first}");
    assert_eq!(first["source"]["kind"], kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_chain_into_log_and_elasticsearch() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("enrich");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, name VARCHAR(20), lat DOUBLE, lng DOUBLE, \
             qty INT, price DECIMAL(8,2), secret VARCHAR(20))"
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    add_chain(&c, &format!("{db}.t"));
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!(
            "INSERT INTO `{db}`.t VALUES (1, 'one', 52.52, 13.405, 2, 5.00, 'x'), \
             (2, 'two', 0, 0, 1, 1.00, 'x'), (3, 'three', 1, 1, 0, 1.00, 'x'), \
             (4, 'four', 95, 10, 1, 1.00, 'x')"
        ),
    )
    .await;
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.t SET name = 'first' WHERE id = 1"),
    )
    .await;
    check_outcome(dir.path(), &c, &url, &format!("{db}_t"), "mariadb").await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));

    // Once the expression is fixed, `dead-letters replay` sends row 3 through the
    // chain again and on to every sink.
    let c = c.to_str().unwrap();
    let (code, out, err) = tributary(&["dead-letters", "list", "--connector", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("enrich: 1 dead letter(s) to replay"), "{out}");
    assert!(
        out.contains(&format!("{db}.t c v")) && out.contains(" compute: "),
        "{out}"
    );
    let text = std::fs::read_to_string(c)
        .unwrap()
        .replace("price / qty", "price / max(qty, 1)");
    std::fs::write(c, text).unwrap();
    let (code, out, err) = tributary(&[
        "dead-letters",
        "replay",
        "--connector",
        c,
        "--stream",
        "enrich",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("enrich: {db}.t: 1 change(s) sent again")),
        "{out}"
    );
    assert!(out.contains("no dead letters wait"), "{out}");
    let docs = es_documents(&url, &format!("{db}_t")).await;
    let d3 = &docs["3"];
    assert_eq!(
        (d3["title"].as_str(), d3["unit_price"].as_f64()),
        (Some("three"), Some(1.0)),
        "{d3}"
    );
    assert_eq!(d3["_op"], "c");
    let logged: Vec<Json> = read_events(&dir.path().join("log"))
        .into_iter()
        .filter(|e| e["after"]["id"] == 3)
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["after"]["unit_price"], 1.0);
    let (_, out, _) = tributary(&["dead-letters", "list", "--connector", c]);
    assert!(out.contains("enrich: 0 dead letter(s) to replay"), "{out}");
    // The daemon goes on after the replay's commit: the log keeps the replayed change
    // once, and new changes follow it.
    let c = Path::new(c);
    let mut daemon = spawn_daemon(c);
    wait_streaming(c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.t VALUES (5, 'five', 1, 1, 1, 1.00, 'x')"),
    )
    .await;
    wait_for_events(&dir.path().join("log"), 6, Duration::from_secs(30)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(c));
    let ids: Vec<i64> = read_events(&dir.path().join("log"))
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 4, 1, 3, 5], "{}", daemon_log(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_chain_into_log_and_elasticsearch() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let (schema, table) = pg_table(
        &client,
        "penrich",
        "id int PRIMARY KEY, name text, lat double precision, lng double precision, \
         qty int, price numeric(8,2), secret text",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    add_es_sink(&c, &url, "");
    add_chain(&c, &table);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, 'one', 52.52, 13.405, 2, 5.00, 'x'), \
             (2, 'two', 0, 0, 1, 1.00, 'x'), (3, 'three', 1, 1, 0, 1.00, 'x'), \
             (4, 'four', 95, 10, 1, 1.00, 'x'); \
             UPDATE {table} SET name = 'first' WHERE id = 1"
        ))
        .await
        .unwrap();
    check_outcome(dir.path(), &c, &url, &format!("{schema}_t"), "postgres").await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// A step naming a column the table lacks stops the daemon with the entry's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_on_a_missing_column_names_its_line() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("enrichbad");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, a INT)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let mut text = std::fs::read_to_string(&c).unwrap();
    let line = text.lines().count() + 2;
    text.push_str(&format!(
        "\n[[enrich]]\ntable = \"{db}.t\"\nkind = \"rename\"\ncolumns = {{ nope = \"x\" }}\n"
    ));
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (1, 1)")).await;
    let status = tokio::task::spawn_blocking(move || daemon.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let log = daemon_log(&c);
    assert!(
        log.contains(&format!("connector.toml:{line} rename")) && log.contains("no column `nope`"),
        "{log}"
    );
    // Nothing of the change passed the stage.
    assert!(read_events(&dir.path().join("log")).is_empty());

    // Config errors found without a table stop at load, with file:line.
    let mut text = std::fs::read_to_string(&c).unwrap();
    text = text.replace(
        "kind = \"rename\"\ncolumns = { nope = \"x\" }",
        "kind = \"meta\"\nfields = { nope = \"x\" }",
    );
    std::fs::write(&c, &text).unwrap();
    let (code, _, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("connector.toml:{line}:")) && err.contains("unknown metadata `nope`"),
        "{err}"
    );
}

/// `track` keeps state per key: an impossible jump is flagged, a 0/0 reading skipped;
/// and a daemon killed with -9 again and again while devices move writes the same
/// enriched events as one that ran without a break (the state is checkpointed with
/// the position, as of the transaction boundary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_after_kill_9_equals_an_uninterrupted_run() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("track");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.pos (device INT PRIMARY KEY, lat DOUBLE, lng DOUBLE, at DATETIME(3))"),
    )
    .await;
    let track = format!(
        "\n[[enrich]]\ntable = \"{db}.pos\"\nkind = \"track\"\nlat = \"lat\"\nlon = \"lng\"\ntime = \"at\"\nkeep = 3\nspeed_range = [0.0, 100.0]\n"
    );
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let connectors: Vec<_> = dirs
        .iter()
        .map(|d| {
            let c = connector(d.path(), SHARED_PORT, &db, "snapshot = \"never\"");
            let mut text = std::fs::read_to_string(&c).unwrap();
            text.push_str(&track);
            std::fs::write(&c, text).unwrap();
            c
        })
        .collect();
    let mut steady = spawn_daemon(&connectors[0]);
    let mut killed = spawn_daemon(&connectors[1]);
    wait_streaming(&connectors[0], &mut steady).await;
    wait_streaming(&connectors[1], &mut killed).await;

    let (devices, rounds) = (10, 120);
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut conn = admin(SHARED_PORT).await;
            for d in 1..=devices {
                exec(
                    &mut conn,
                    &format!("INSERT INTO `{db}`.pos VALUES ({d}, 50, {d}, '2024-01-01 00:00:00')"),
                )
                .await;
            }
            for r in 1..=rounds {
                // Even rounds move every device in one transaction (a checkpoint can
                // fall inside one), odd rounds one statement at a time.
                if r % 2 == 0 {
                    exec(&mut conn, "BEGIN").await;
                }
                for d in 1..=devices {
                    // ~11 m a second; every 37th reading jumps 5 degrees (impossible),
                    // every 23rd is 0/0 (no fix).
                    let n = r * devices + d;
                    let (lat, lng) = if n % 37 == 0 {
                        (55.0, d as f64)
                    } else if n % 23 == 0 {
                        (0.0, 0.0)
                    } else {
                        (50.0 + r as f64 * 0.0001, d as f64)
                    };
                    exec(
                        &mut conn,
                        &format!(
                            "UPDATE `{db}`.pos SET lat = {lat}, lng = {lng}, \
                             at = TIMESTAMP'2024-01-01 00:00:00' + INTERVAL {r} SECOND WHERE device = {d}"
                        ),
                    )
                    .await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if r % 2 == 0 {
                    exec(&mut conn, "COMMIT").await;
                }
            }
        })
    };
    let (mut killed, kills) = kill_9_repeatedly(&writer, killed, &connectors[1], 400).await;
    writer.await.unwrap();
    assert!(kills >= 2, "killed {kills} times");
    let want = devices + devices * rounds;
    let logs: Vec<_> = dirs.iter().map(|d| d.path().join("log")).collect();
    for log in &logs {
        assert!(
            wait_for_events(log, want as usize, Duration::from_secs(60)).await >= want as usize,
            "{}",
            daemon_log(&connectors[1])
        );
    }
    assert_eq!(stop(&mut steady), 0);
    assert_eq!(stop(&mut killed), 0, "{}", daemon_log(&connectors[1]));
    let enriched = |log: &Path| -> Vec<Json> {
        read_events(log)
            .into_iter()
            .map(|e| {
                serde_json::json!([
                    e["after"]["device"],
                    e["after"]["track"],
                    e["after"]["last_activity"],
                    e["after"]["_flags"]
                ])
            })
            .collect()
    };
    let (a, b) = (enriched(&logs[0]), enriched(&logs[1]));
    assert_eq!(a.len(), want as usize);
    assert!(
        a == b,
        "the killed run's enrichment differs from the steady run's"
    );
    // The flags and skips happened.
    let flagged = a
        .iter()
        .filter(|e| e[3] == serde_json::json!(["track_speed_out_of_range"]))
        .count();
    assert!(flagged >= 20, "{flagged} flagged");
    let last = a.iter().rev().find(|e| e[0] == 1).unwrap();
    assert_eq!(last[1]["points"].as_array().unwrap().len(), 3, "{last}");
    assert!(
        last[1]["points"][0]["lat"].as_f64().unwrap() > 50.0,
        "{last}"
    );
}

/// The lookup chain every lookup test uses: orders get the customer's name and tier.
fn lookup_chain(orders: &str, customers: &str) -> String {
    format!(
        "\n[[enrich]]\ntable = \"{orders}\"\nkind = \"lookup\"\nfrom = \"{customers}\"\n\
         on = {{ customer_id = \"id\" }}\nfields = {{ name = \"customer_name\", tier = \"customer_tier\" }}\n"
    )
}

/// Lookups by key: values fetched per batch; right after the looked-up row changes, a
/// new row gets the new values (the captured change updates the cache); a key without
/// a row gives nulls; when the looked-up table is gone the event is dead-lettered with
/// the reason and the rest goes on.
async fn lookup_outcome(
    dir: &Path,
    c: &Path,
    url: &str,
    alias: &str,
    run: impl Fn(&'static str) -> tokio::task::JoinHandle<()>,
) {
    run("INSERT INTO {c} VALUES (1, 'Ada', 'gold'), (2, 'Bob', 'silver')")
        .await
        .unwrap();
    run("INSERT INTO {o} VALUES (1, 1, 10), (2, 2, 20), (3, 99, 30)")
        .await
        .unwrap();
    let docs = wait_documents(url, alias, 3).await;
    assert_eq!(docs["1"]["customer_name"], "Ada", "{docs:?}");
    assert_eq!(docs["1"]["customer_tier"], "gold");
    assert_eq!(docs["2"]["customer_name"], "Bob");
    assert!(
        docs["3"]["customer_name"].is_null(),
        "no customer 99: {}",
        docs["3"]
    );
    // Bob is renamed; the next order, a moment later, names him so.
    run("UPDATE {c} SET name = 'Robert' WHERE id = 2")
        .await
        .unwrap();
    run("INSERT INTO {o} VALUES (4, 2, 40)").await.unwrap();
    let docs = wait_documents(url, alias, 4).await;
    assert_eq!(docs["4"]["customer_name"], "Robert", "{}", docs["4"]);
    // Older orders keep what they were enriched with.
    assert_eq!(docs["2"]["customer_name"], "Bob");
    let mapping = mapping_json(url, alias).await;
    let props =
        mapping.as_object().unwrap().values().next().unwrap()["mappings"]["properties"].clone();
    assert_eq!(props["customer_name"]["type"], "text", "{props}");
    assert!(dead_letters(dir).is_empty(), "{}", daemon_log(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_lookup_follows_the_looked_up_table() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("lookup");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(&mut conn, &format!("CREATE TABLE `{db}`.customers (id INT PRIMARY KEY, name VARCHAR(40), tier VARCHAR(10))")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, customer_id INT, amount INT)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    let mut text = std::fs::read_to_string(&c).unwrap();
    text.push_str(&lookup_chain(
        &format!("{db}.orders"),
        &format!("{db}.customers"),
    ));
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let run = |sql: &'static str| {
        let sql = sql
            .replace("{c}", &format!("`{db}`.customers"))
            .replace("{o}", &format!("`{db}`.orders"));
        tokio::spawn(async move {
            let mut conn = admin(SHARED_PORT).await;
            exec(&mut conn, &sql).await;
        })
    };
    lookup_outcome(dir.path(), &c, &url, &format!("{db}_orders"), run).await;
    // The looked-up table is gone: an order for a customer not cached cannot be
    // enriched; it is dead-lettered with the reason, and later orders still flow.
    exec(&mut conn, &format!("DROP TABLE `{db}`.customers")).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.orders VALUES (5, 7, 50), (6, 1, 60)"),
    )
    .await;
    let docs = wait_documents(&url, &format!("{db}_orders"), 5).await;
    assert_eq!(docs["6"]["customer_name"], "Ada", "cached: {}", docs["6"]);
    assert!(!docs.contains_key("5"));
    let dl = dead_letters(dir.path());
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert!(
        dl[0]["step"].as_str().unwrap().ends_with(" lookup"),
        "{}",
        dl[0]
    );
    // Retrying cannot bring the table back: dead-lettered at once, with the server's
    // reason.
    assert!(
        dl[0]["reason"].as_str().unwrap().contains("doesn't exist"),
        "{}",
        dl[0]
    );
    assert_eq!(dl[0]["event"]["after"]["id"], 5);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lookup_follows_the_looked_up_table() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let schema = pg_schema(&client, "plookup").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.customers (id int PRIMARY KEY, name text, tier text);
             CREATE TABLE {schema}.orders (id int PRIMARY KEY, customer_id int, amount int);
             CREATE PUBLICATION {schema} FOR TABLE {schema}.customers, {schema}.orders;"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.*"), "");
    add_es_sink(&c, &url, "");
    let mut text = std::fs::read_to_string(&c).unwrap();
    text.push_str(&lookup_chain(
        &format!("{schema}.orders"),
        &format!("{schema}.customers"),
    ));
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let run = |sql: &'static str| {
        let sql = sql
            .replace("{c}", &format!("{schema}.customers"))
            .replace("{o}", &format!("{schema}.orders"));
        tokio::spawn(async move {
            pg_admin(PG_PORT).await.batch_execute(&sql).await.unwrap();
        })
    };
    lookup_outcome(dir.path(), &c, &url, &format!("{schema}_orders"), run).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// `track` on PostgreSQL into the stand-in: the document carries the window and the
/// last activity; an impossible jump is flagged and not kept; a 0/0 reading is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_track_into_elasticsearch() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let (schema, table) = pg_table(
        &client,
        "ptrack",
        "device int PRIMARY KEY, lat double precision, lng double precision, at timestamp(3)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    add_es_sink(&c, &url, "");
    let mut text = std::fs::read_to_string(&c).unwrap();
    text.push_str(&format!(
        "\n[[enrich]]\ntable = \"{table}\"\nkind = \"track\"\nlat = \"lat\"\nlon = \"lng\"\ntime = \"at\"\nkeep = 3\nspeed_range = [0.0, 50.0]\n"
    ));
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let step = |lat: f64, lng: f64, secs: u32| {
        format!("UPDATE {table} SET lat = {lat}, lng = {lng}, at = TIMESTAMP '2024-05-01 10:00:00' + INTERVAL '{secs} seconds' WHERE device = 1;")
    };
    client
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, 48.1, 11.5, TIMESTAMP '2024-05-01 10:00:00'); {} {} {} {}",
            step(48.1001, 11.5, 1),  // 11 m in 1 s: kept
            step(0.0, 0.0, 2),       // no fix: skipped
            step(49.5, 11.5, 3),     // 155 km in 2 s: flagged, not kept
            step(48.1002, 11.5, 4),  // kept
        ))
        .await
        .unwrap();
    let alias = format!("{schema}_t");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = read_events(&dir.path().join("log"));
        if events.len() >= 5 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 5, "{}", daemon_log(&c));
    assert_eq!(
        events[3]["after"]["_flags"],
        serde_json::json!(["track_speed_out_of_range"])
    );
    assert!(
        events[2]["after"]["_flags"].is_null(),
        "0/0 is skipped, not flagged"
    );
    let doc = loop {
        let docs = es_documents(&url, &alias).await;
        if docs.get("1").is_some_and(|d| d["lat"] == 48.1002) {
            break docs["1"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{docs:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let points: Vec<f64> = doc["track"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lat"].as_f64().unwrap())
        .collect();
    assert_eq!(points, vec![48.1, 48.1001, 48.1002], "{doc}");
    assert_eq!(doc["last_activity"], "2024-05-01T10:00:04.000Z");
    assert!(doc["track"]["speed_mps"].as_f64().unwrap() > 1.0, "{doc}");
    let mapping = mapping_json(&url, &alias).await;
    let props =
        mapping.as_object().unwrap().values().next().unwrap()["mappings"]["properties"].clone();
    assert_eq!(props["last_activity"]["type"], "date", "{props}");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// Records of a log stream as raw JSON text (a JSON parser's recursion limit would
/// refuse the deep values this file's tests write), whitespace removed.
fn raw_records(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    tributary::journal::read_log(dir, |r| {
        out.push(r.json.split_whitespace().collect());
        true
    })
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    out
}

/// JSON nested 200 levels deep (deeper than a JSON parser's default recursion limit of
/// 128; PostgreSQL jsonb takes it) is never a poison pill: it flows into the log and
/// the index, through a failing step into the enrichment dead letters, and through the
/// merge of an unchanged TOAST column, which reads the stored document back. (The
/// column is `unindexed` by the policy: Elasticsearch maps objects at most
/// `index.mapping.depth.limit` = 20 deep and rejects deeper documents, as the
/// stand-in does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deep_json_flows_everywhere() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let (schema, table) = pg_table(
        &client,
        "pdeep",
        "id int PRIMARY KEY, j jsonb, qty int, body text",
    )
    .await;
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN body SET STORAGE EXTERNAL"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "snapshot = \"never\"");
    add_es_sink(&c, &url, "");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[table]]\nmatch = \"{table}\"\nunindexed = [\"j\"]\n"),
    )
    .unwrap();
    set_policy(&c, &policy);
    let mut text = std::fs::read_to_string(&c).unwrap();
    text.push_str(&format!(
        "\n[[enrich]]\ntable = \"{table}\"\nkind = \"compute\"\nfield = \"per\"\nexpr = \"100 / qty\"\ntype = \"long\"\n"
    ));
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;

    let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let big: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect();
    client
        .execute(
            &format!("INSERT INTO {table} VALUES (1, $1::text::jsonb, 1, $2), (2, $1::text::jsonb, 0, 'small')"),
            &[&deep, &big],
        )
        .await
        .unwrap();
    // body is TOASTed and left alone: the index's copy is merged back in.
    client
        .batch_execute(&format!("UPDATE {table} SET qty = 2 WHERE id = 1"))
        .await
        .unwrap();

    let log = dir.path().join("log");
    assert_eq!(
        wait_for_events(&log, 2, Duration::from_secs(30)).await,
        2,
        "{}",
        daemon_log(&c)
    );
    let es = elasticsearch::Elasticsearch::new(
        elasticsearch::http::transport::Transport::single_node(&url).unwrap(),
    );
    let alias = format!("{schema}_t");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let doc = loop {
        let answer = es
            .get(elasticsearch::GetParts::IndexId(&alias, "1"))
            .send()
            .await
            .unwrap();
        let text: String = answer.text().await.unwrap().split_whitespace().collect();
        if text.contains("\"qty\":2") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(daemon.try_wait().unwrap().is_none(), "{}", daemon_log(&c));
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert!(
        doc.contains("\"qty\":2"),
        "the update merged and indexed: {}\n{}",
        &doc[..doc.len().min(300)],
        daemon_log(&c)
    );
    assert!(
        doc.contains(&format!("\"j\":{deep}")),
        "{}",
        &doc[..doc.len().min(300)]
    );
    assert!(
        doc.contains(&format!("\"body\":\"{big}\"")),
        "the TOAST column kept"
    );
    assert!(doc.contains("\"per\":50"), "{}", &doc[..doc.len().min(300)]);

    let events = raw_records(&log);
    assert!(
        events.iter().all(|e| e.contains(&format!("\"j\":{deep}"))),
        "{events:?}"
    );
    assert!(events[1].contains("\"op\":\"u\""));
    let dead = raw_records(&dir.path().join("state").join("dead-letters").join("enrich"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("100/qty"), "{}", dead[0]);
    assert!(dead[0].contains(&format!("\"j\":{deep}")), "{}", dead[0]);
    assert!(dead[0].contains("\"id\":2"), "{}", dead[0]);
    assert!(read_events(&dir.path().join("dead-letters")).is_empty());
    pg_drop_slot(&client, &schema).await;
}

/// A lookup whose query fails because the source database restarts is retried until
/// the server is back: the event is enriched, nothing goes to the dead letters. (The
/// looked-up rows come from a view that sleeps, so the query is in flight when the
/// server goes down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_rides_out_a_source_restart() {
    const LOOKUP_RESTART_PORT: u16 = 23075;
    mariadb(LOOKUP_RESTART_PORT, "");
    let db = unique_db("lkrestart");
    let mut conn = admin(LOOKUP_RESTART_PORT).await;
    for sql in [
        format!("CREATE DATABASE `{db}`"),
        format!("CREATE TABLE `{db}`.customers_base (id INT PRIMARY KEY, name TEXT)"),
        format!("INSERT INTO `{db}`.customers_base VALUES (1, 'Ada'), (2, 'Bob')"),
        format!("CREATE VIEW `{db}`.customers AS SELECT id, name, SLEEP(2) AS pause FROM `{db}`.customers_base"),
        format!("CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, customer_id INT)"),
    ] {
        exec(&mut conn, &sql).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), LOOKUP_RESTART_PORT, &db, "snapshot = \"never\"");
    let text = std::fs::read_to_string(&c).unwrap().replace(
        &format!("include = [\"{db}.*\"]"),
        &format!("include = [\"{db}.orders\"]"),
    );
    std::fs::write(
        &c,
        format!(
            "{text}\n[[enrich]]\ntable = \"{db}.orders\"\nkind = \"lookup\"\nfrom = \"{db}.customers\"\n\
             on = {{ customer_id = \"id\" }}\nfields = {{ name = \"customer_name\" }}\n"
        ),
    )
    .unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.orders VALUES (1, 1)"),
    )
    .await;
    drop(conn);
    // The lookup's query sleeps 2 s; the server goes down under it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    deploy(LOOKUP_RESTART_PORT, "stop", "");
    tokio::time::sleep(Duration::from_secs(3)).await;
    deploy(LOOKUP_RESTART_PORT, "start", "");
    let mut conn = admin(LOOKUP_RESTART_PORT).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.orders VALUES (2, 2)"),
    )
    .await;

    let log = dir.path().join("log");
    let n = wait_for_events(&log, 2, Duration::from_secs(60)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(n, 2, "{}", daemon_log(&c));
    let events = read_events(&log);
    assert_eq!(events[0]["after"]["customer_name"], "Ada", "{}", events[0]);
    assert_eq!(events[1]["after"]["customer_name"], "Bob", "{}", events[1]);
    assert!(dead_letters(dir.path()).is_empty(), "{}", daemon_log(&c));
    assert!(
        daemon_log(&c).contains("failed; retrying"),
        "{}",
        daemon_log(&c)
    );
}
