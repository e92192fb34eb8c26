//! Joined documents (`[[document]]`) against a real MariaDB and the Elasticsearch
//! stand-in: `tributary check` checks a definition against the server's tables and
//! names the file and line of what does not match; mistakes the file alone shows stop
//! at load; a random mix of writes on all four tables, with the daemon killed -9 twice,
//! leaves every document equal to the one a SQL query builds, in the index and in the
//! log's document events.

mod common;

use std::collections::BTreeMap;

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::Value as Json;

const TABLES: &[&str] = &[
    "CREATE TABLE `{db}`.regions (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, code CHAR(2) NOT NULL)",
    "CREATE TABLE `{db}`.customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, region_id INT)",
    "CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(10,2) NOT NULL, status VARCHAR(20) NOT NULL, created_at DATETIME(6) NOT NULL)",
    "CREATE TABLE `{db}`.order_items (order_id INT NOT NULL, line INT NOT NULL, sku VARCHAR(20) NOT NULL, qty INT NOT NULL, price DECIMAL(10,2) NOT NULL, PRIMARY KEY (order_id, line))",
];

fn document(db: &str) -> String {
    format!(
        r#"
[[document]]
name = "customers"
root = "{db}.customers"

[[document.embed]]
field = "region"
from = "{db}.regions"
on = {{ region_id = "id" }}
columns = ["name", "code"]

[[document.nest]]
field = "orders"
from = "{db}.orders"
on = {{ id = "customer_id" }}
columns = ["id", "amount", "status", "created_at"]
order_by = ["id"]

[[document.nest.nest]]
field = "items"
from = "{db}.order_items"
on = {{ id = "order_id" }}
columns = ["sku", "qty", "price"]
"#
    )
}

/// The issue's document of `db` under the alias `alias`.
fn document_named(db: &str, alias: &str) -> String {
    document(db).replace("name = \"customers\"", &format!("name = \"{alias}\""))
}

/// A new database (`prefix`) with the four tables seeded by `random_writes` (40
/// customers, 120 orders, 240 items from `seed`) and no transactions after.
async fn seeded_db(prefix: &str, seed: u64) -> String {
    let db = new_db(prefix, TABLES).await;
    let session = Session::MariaDb(admin(SHARED_PORT).await);
    random_writes(session, db.clone(), 0, seed).await;
    db
}

/// The connector with `doc` appended; returns its path.
fn with_document(dir: &std::path::Path, db: &str, doc: &str) -> std::path::PathBuf {
    let c = connector(dir, SHARED_PORT, db, "");
    let text = std::fs::read_to_string(&c).unwrap() + doc;
    std::fs::write(&c, text).unwrap();
    c
}

fn line_of(path: &std::path::Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_matches_a_document_with_its_tables() {
    let db = new_db("documents", TABLES).await;
    let dir = tempfile::tempdir().unwrap();

    // The issue's document over the four tables: check finds every column and join.
    let c = with_document(dir.path(), &db, &document(&db));
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("ok    document customers: 4 tables, every column and join found"),
        "{out}"
    );

    // A column the server's table does not have, and an embed not joined on its key:
    // named at their lines by check.
    for (from, to, at, says) in [
        (
            "\"qty\", \"price\"",
            "\"qty\", \"cost\"",
            "\"cost\"",
            "has no column `cost`",
        ),
        (
            "region_id = \"id\"",
            "region_id = \"code\"",
            "region_id = \"code\"",
            "must join the key or a unique index of",
        ),
    ] {
        let c = with_document(dir.path(), &db, &document(&db).replacen(from, to, 1));
        let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
        assert_eq!(code, 1, "{to}: {out}\n{err}");
        let line = line_of(&c, at);
        assert!(
            out.contains(&format!("{}:{line}:", c.display())) && out.contains(says),
            "{to}: line {line}\n{out}"
        );
    }

    // A table outside `include` stops at load, with its line.
    let c = with_document(
        dir.path(),
        &db,
        &document(&db).replacen(&format!("{db}.regions"), "other.regions", 1),
    );
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}\n{err}");
    let line = line_of(&c, "other.regions");
    assert!(
        err.contains(&format!("{}:{line}:", c.display())) && err.contains("[source] include"),
        "line {line}\n{out}\n{err}"
    );
}

/// A small deterministic random source (xorshift), so a failure can be rerun.
struct Rand(u64);

impl Rand {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A session on either source, for the writer.
enum Session {
    MariaDb(mysql_async::Conn),
    Postgres(tokio_postgres::Client),
}

impl Session {
    async fn exec(&mut self, sql: &str) {
        match self {
            Session::MariaDb(c) => c
                .query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Session::Postgres(c) => c
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// The current time with microseconds, in SQL.
    fn now(&self) -> &'static str {
        match self {
            Session::MariaDb(_) => "NOW(6)",
            Session::Postgres(_) => "now()",
        }
    }
}

/// Seeds the tables of schema `db`, then runs `transactions` random transactions of one
/// to three statements over all four tables: inserts, updates, deletes, orders moving
/// between customers, items moving between orders (a key change), customers changing
/// region, region renames, customers deleted with their orders still there.
async fn random_writes(mut s: Session, db: String, transactions: u64, seed: u64) {
    let mut r = Rand(seed);
    let (mut customers, mut orders, mut lines) = (40u64, 120u64, 0u64);
    s.exec(&format!(
        "INSERT INTO {db}.regions VALUES (1,'North','NO'),(2,'South','SO'),(3,'East','EA'),(4,'West','WE')"
    ))
    .await;
    for c in 1..=customers {
        let region = if c % 7 == 0 {
            "NULL".to_string()
        } else {
            (c % 5).to_string()
        };
        s.exec(&format!(
            "INSERT INTO {db}.customers VALUES ({c}, 'c{c}', {region})"
        ))
        .await;
    }
    for o in 1..=orders {
        s.exec(&format!(
            "INSERT INTO {db}.orders VALUES ({o}, {}, {}.{:02}, 'new', '2026-01-02 03:04:05.{:06}')",
            1 + o % customers,
            o * 3,
            o % 100,
            o * 7
        ))
        .await;
        for _ in 0..2 {
            lines += 1;
            s.exec(&format!(
                "INSERT INTO {db}.order_items VALUES ({o}, {lines}, 'sku{lines}', {}, 9.99)",
                lines % 4
            ))
            .await;
        }
    }
    for t in 0..transactions {
        s.exec("BEGIN").await;
        for _ in 0..=r.below(3) {
            let c = 1 + r.below(customers + 5);
            let o = 1 + r.below(orders + 5);
            let q = match r.below(12) {
                0 => {
                    customers += 1;
                    format!(
                        "INSERT INTO {db}.customers VALUES ({customers}, 'n{customers}', {})",
                        r.below(6)
                    )
                }
                1 => format!("UPDATE {db}.customers SET name = 'r{t}' WHERE id = {c}"),
                2 => format!(
                    "UPDATE {db}.customers SET region_id = {} WHERE id = {c}",
                    r.below(6)
                ),
                3 => format!("DELETE FROM {db}.customers WHERE id = {c}"),
                4 => {
                    // An order and its first item, in one transaction.
                    orders += 1;
                    lines += 1;
                    let now = s.now();
                    s.exec(&format!(
                        "INSERT INTO {db}.orders VALUES ({orders}, {c}, {}.50, 'new', {now})",
                        r.below(1000)
                    ))
                    .await;
                    format!("INSERT INTO {db}.order_items VALUES ({orders}, {lines}, 'n{lines}', 1, 0.10)")
                }
                5 => format!(
                    "UPDATE {db}.orders SET amount = amount + 1.25, status = 's{t}' WHERE id = {o}"
                ),
                6 => format!("UPDATE {db}.orders SET customer_id = {c} WHERE id = {o}"),
                7 => format!("DELETE FROM {db}.orders WHERE id = {o}"),
                8 => {
                    lines += 1;
                    format!(
                        "INSERT INTO {db}.order_items VALUES ({o}, {lines}, 'i{lines}', {}, 1.00)",
                        r.below(9)
                    )
                }
                9 => format!(
                    "UPDATE {db}.order_items SET order_id = {o}, qty = qty + 1 WHERE line = {}",
                    1 + r.below(lines)
                ),
                10 => format!(
                    "DELETE FROM {db}.order_items WHERE line = {}",
                    1 + r.below(lines)
                ),
                _ => format!(
                    "UPDATE {db}.regions SET name = 'region{t}' WHERE id = {}",
                    1 + r.below(4)
                ),
            };
            s.exec(&q).await;
        }
        s.exec("COMMIT").await;
        if t % 20 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
    }
}

/// Every customer's document as SQL builds it (JSON_ARRAYAGG), by id; values rendered
/// as tributary renders them (DECIMAL as its text, DATETIME(6) in ISO form).
async fn documents_by_sql(db: &str) -> BTreeMap<String, Json> {
    let mut conn = admin(SHARED_PORT).await;
    let q = format!(
        r#"SELECT c.id, JSON_OBJECT(
            'id', c.id, 'name', c.name, 'region_id', c.region_id,
            'region', (SELECT JSON_OBJECT('name', r.name, 'code', r.code) FROM `{db}`.regions r WHERE r.id = c.region_id),
            'orders', (SELECT JSON_ARRAYAGG(JSON_OBJECT(
                    'id', o.id, 'amount', CAST(o.amount AS CHAR), 'status', o.status,
                    'created_at', DATE_FORMAT(o.created_at, '%Y-%m-%dT%H:%i:%s.%f'),
                    'items', (SELECT JSON_ARRAYAGG(JSON_OBJECT('sku', i.sku, 'qty', i.qty, 'price', CAST(i.price AS CHAR)) ORDER BY i.order_id, i.line)
                              FROM `{db}`.order_items i WHERE i.order_id = o.id)
                ) ORDER BY o.id) FROM `{db}`.orders o WHERE o.customer_id = c.id)
        ) FROM `{db}`.customers c"#
    );
    let rows: Vec<(i64, String)> = conn.query(q).await.unwrap();
    rows.into_iter()
        .map(|(id, doc)| {
            let mut doc: Json = serde_json::from_str(&doc).unwrap();
            // SQL's aggregate over no rows is NULL where the document has [].
            if doc["orders"].is_null() {
                doc["orders"] = Json::Array(Vec::new());
            }
            for o in doc["orders"].as_array_mut().unwrap() {
                if o["items"].is_null() {
                    o["items"] = Json::Array(Vec::new());
                }
            }
            (id.to_string(), doc)
        })
        .collect()
}

/// The documents the log's `doc` / `doc_delete` events give when replayed: per key the
/// event with the highest version (the later of equal ones), deletes removing.
fn documents_by_log(log: &std::path::Path, document: &str) -> BTreeMap<String, Json> {
    let mut newest: BTreeMap<String, (u64, Option<Json>)> = BTreeMap::new();
    for e in read_events(log) {
        let op = e["op"].as_str().unwrap_or("");
        if op != "doc" && op != "doc_delete" {
            continue;
        }
        assert_eq!(e["document"], document, "{e}");
        let key = e["key"]["id"].to_string();
        let version = e["version"].as_u64().unwrap();
        if newest.get(&key).is_none_or(|(v, _)| *v <= version) {
            newest.insert(key, (version, (op == "doc").then(|| e["doc"].clone())));
        }
    }
    newest
        .into_iter()
        .filter_map(|(k, (_, d))| d.map(|d| (k, d)))
        .collect()
}

/// Gives the connector `c` an Elasticsearch sink and the document the alias `alias`,
/// runs the daemon while `writer` writes, killing it with -9 twice, then waits until
/// the index holds exactly the documents `expected()` builds by SQL, and checks that
/// the log's document events replay to the same, and the mapping.
async fn documents_survive_two_kill_9s<F, Fut>(
    c: &std::path::Path,
    alias: &str,
    writer: tokio::task::JoinHandle<()>,
    expected: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = BTreeMap<String, Json>>,
{
    let url = elasticsearch();
    add_es_sink(c, &url, "");
    let text = std::fs::read_to_string(c)
        .unwrap()
        .replace("name = \"customers\"", &format!("name = \"{alias}\""));
    std::fs::write(c, text).unwrap();

    let mut daemon = spawn_daemon(c);
    // DOCUMENTS_KILL_MS moves the kills (a sweep found the lost end of a build at 1,500).
    let kill_ms: u64 = std::env::var("DOCUMENTS_KILL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2500);
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(kill_ms)).await;
        kill9(&mut daemon);
        daemon = spawn_daemon(c);
    }
    writer.await.unwrap();

    let expected = expected().await;
    assert!(expected.len() > 40, "{}", expected.len());
    // Both the index and the log: after a kill the index may already hold every
    // document (sent before the kill) while the log cut what followed its checkpoint
    // and waits for them to be built again (after a snapshot the kill interrupted).
    let log = c.parent().unwrap().join("log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut indexed = es_documents(&url, alias).await;
    while (indexed != expected || documents_by_log(&log, alias) != expected)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        indexed = es_documents(&url, alias).await;
    }
    let differing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| indexed.get(*k) != Some(*v))
        .take(3)
        .map(|(k, v)| format!("{k}: sql {v}\n   es {:?}", indexed.get(k)))
        .collect();
    let extra: Vec<_> = indexed
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        differing.is_empty() && extra.is_empty(),
        "differing: {differing:#?}\nextra: {extra:?}\n{}",
        daemon_log(c)
    );
    // verify agrees: the index holds what the tables build.
    let (code, r) = verify_document(c, alias, &[]);
    assert_eq!(code, 0, "{r}\n{}", daemon_log(c));
    assert_eq!(r["rows"], expected.len(), "{r}");
    stop(&mut daemon);
    let replayed = documents_by_log(&log, alias);
    let wrong: Vec<_> = expected
        .keys()
        .chain(replayed.keys())
        .filter(|k| replayed.get(*k) != expected.get(*k))
        .take(3)
        .collect();
    // A wrong one is shown with every event of its key, for the next one who must
    // find out why.
    let events: Vec<String> = read_events(&log)
        .into_iter()
        .filter(|e| e["document"] == alias)
        .filter(|e| {
            let id = e["key"]["id"].to_string();
            wrong.iter().any(|k| **k == id)
        })
        .map(|e| format!("{} {} v{} {}", e["op"], e["key"], e["version"], e["doc"]))
        .collect();
    assert!(
        wrong.is_empty(),
        "the log replays wrong documents: {wrong:?}\nsql: {:?}\nevents: {events:#?}\n{}",
        wrong.iter().map(|k| expected.get(*k)).collect::<Vec<_>>(),
        daemon_log(c)
    );

    // Nests are `nested` (a query can match two fields of the same order), embeds
    // `object`.
    let mapping: Json = es(&url)
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            alias,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let props = &mapping[format!("{alias}_v1")]["mappings"]["properties"];
    assert_eq!(props["orders"]["type"], "nested", "{mapping}");
    assert_eq!(props["orders"]["properties"]["items"]["type"], "nested");
    // (Elasticsearch leaves `"type": "object"` out of what it answers.)
    assert!(
        props["region"]["type"].is_null() || props["region"]["type"] == "object",
        "{mapping}"
    );
    assert_eq!(
        props["region"]["properties"]["code"]["type"], "text",
        "{mapping}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_random_writes_and_two_kill_9s_leave_every_document_equal_to_sql() {
    let db = new_db("docrand", TABLES).await;
    let dir = tempfile::tempdir().unwrap();
    let c = with_document(dir.path(), &db, &document(&db));
    let session = Session::MariaDb(admin(SHARED_PORT).await);
    let writer = tokio::spawn(random_writes(session, db.clone(), 1500, 0x5eed_1234_abcd));
    let alias = format!("customers_{db}");
    documents_survive_two_kill_9s(&c, &alias, writer, || documents_by_sql(&db)).await;
}

/// Every customer's document as PostgreSQL builds it (json_agg), by id; values
/// rendered as tributary renders them (numeric as its text, timestamptz in UTC).
async fn documents_by_pg_sql(schema: &str) -> BTreeMap<String, Json> {
    let client = pg_admin(PG_PORT).await;
    let q = format!(
        r#"SELECT c.id, json_build_object(
            'id', c.id, 'name', c.name, 'region_id', c.region_id,
            'region', (SELECT json_build_object('name', r.name, 'code', r.code) FROM {schema}.regions r WHERE r.id = c.region_id),
            'orders', COALESCE((SELECT json_agg(json_build_object(
                    'id', o.id, 'amount', o.amount::text, 'status', o.status,
                    'created_at', (to_json(o.created_at AT TIME ZONE 'UTC') #>> '{{}}') || 'Z',
                    'items', COALESCE((SELECT json_agg(json_build_object('sku', i.sku, 'qty', i.qty, 'price', i.price::text) ORDER BY i.order_id, i.line)
                              FROM {schema}.order_items i WHERE i.order_id = o.id), '[]'::json)
                ) ORDER BY o.id) FROM {schema}.orders o WHERE o.customer_id = c.id), '[]'::json)
        )::text FROM {schema}.customers c"#
    );
    client
        .query(&q, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let id: i32 = row.get(0);
            let doc: String = row.get(1);
            (id.to_string(), serde_json::from_str(&doc).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_random_writes_and_two_kill_9s_leave_every_document_equal_to_sql() {
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "docrand").await;
    let tables = [
        "CREATE TABLE {db}.regions (id int PRIMARY KEY, name varchar(50) NOT NULL, code char(2) NOT NULL)",
        "CREATE TABLE {db}.customers (id int PRIMARY KEY, name varchar(50) NOT NULL, region_id int)",
        "CREATE TABLE {db}.orders (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(10,2) NOT NULL, status varchar(20) NOT NULL, created_at timestamptz NOT NULL)",
        "CREATE TABLE {db}.order_items (order_id int NOT NULL, line int NOT NULL, sku varchar(20) NOT NULL, qty int NOT NULL, price numeric(10,2) NOT NULL, PRIMARY KEY (order_id, line))",
        "CREATE PUBLICATION {db} FOR TABLES IN SCHEMA {db}",
    ];
    for t in tables {
        client
            .batch_execute(&t.replace("{db}", &schema))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.*"), "");
    let text = std::fs::read_to_string(&c).unwrap() + &document(&schema);
    std::fs::write(&c, text).unwrap();
    let writer = tokio::spawn(random_writes(
        Session::Postgres(pg_admin(PG_PORT).await),
        schema.clone(),
        1500,
        0x5eed_1234_abcd,
    ));
    let alias = format!("customers_{schema}");
    documents_survive_two_kill_9s(&c, &alias, writer, || documents_by_pg_sql(&schema)).await;
    pg_drop_slot(&client, &schema).await;
}

/// `_count` of the documents behind `alias` matching `query` (all: None).
async fn count(url: &str, alias: &str, query: Option<Json>) -> u64 {
    let client = es(url);
    let parts = elasticsearch::CountParts::Index(&[alias]);
    let sent = match query {
        Some(q) => {
            client
                .count(parts)
                .body(serde_json::json!({ "query": q }))
                .send()
                .await
        }
        None => client.count(parts).send().await,
    };
    match sent {
        Ok(r) if r.status_code().is_success() => {
            r.json::<Json>().await.unwrap()["count"].as_u64().unwrap()
        }
        _ => 0,
    }
}

/// The daemon's resident memory in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_rename_rewrites_all_20000_documents_of_its_customers_in_bounded_memory() {
    const CUSTOMERS: u64 = 20_000;
    let url = elasticsearch();
    let db = new_db("docfan", TABLES).await;
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.regions VALUES (1, 'North', 'NO'), (2, 'South', 'SO')"),
    )
    .await;
    for chunk in (1..=CUSTOMERS).collect::<Vec<_>>().chunks(2000) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|c| format!("({c}, 'c{c}', {})", if *c == CUSTOMERS { 2 } else { 1 }))
            .collect();
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.customers VALUES {}", rows.join(",")),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("fan_{db}");
    let c = with_document(dir.path(), &db, &document_named(&db, &alias));
    // Documents only: the tables get no index of their own.
    add_es_sink(&c, &url, "tables = \"none\"");
    let http = add_listener(&c, "http", "");
    let mut daemon = spawn_daemon(&c);

    // The initial build: every customer once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while count(&url, &alias, None).await < CUSTOMERS && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        count(&url, &alias, None).await,
        CUSTOMERS,
        "{}",
        daemon_log(&c)
    );
    assert!(
        count(&url, &format!("{db}_customers"), None).await == 0,
        "tables = \"none\" leaves the tables without an index"
    );
    let before = rss_kib(daemon.id());

    // The rename: one change, 19,999 documents.
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.regions SET name = 'Nord' WHERE id = 1"),
    )
    .await;
    let renamed = serde_json::json!({"match": {"region.name": "Nord"}});
    let (mut peak, mut waiting_seen) = (before, 0u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        peak = peak.max(rss_kib(daemon.id()));
        if let Some((200, body)) = http_get(http, "/status") {
            let status: Json = serde_json::from_str(&body).unwrap();
            let waiting = status["documents"][&alias]["waiting"].as_u64().unwrap_or(0);
            waiting_seen = waiting_seen.max(waiting);
        }
        if count(&url, &alias, Some(renamed.clone())).await >= CUSTOMERS - 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count(&url, &alias, Some(renamed)).await, CUSTOMERS - 1);
    let south = serde_json::json!({"match": {"region.name": "South"}});
    assert_eq!(count(&url, &alias, Some(south)).await, 1);
    assert_eq!(count(&url, &alias, None).await, CUSTOMERS);
    // The fan-out is a metric, and the documents built count up in /status.
    let fanout = metric(http, "tributary_document_fanout_sum").unwrap_or(0.0);
    assert!(fanout >= (CUSTOMERS - 1) as f64, "fan-out sum {fanout}");
    let (_, body) = http_get(http, "/status").unwrap();
    let status: Json = serde_json::from_str(&body).unwrap();
    assert!(
        status["documents"][&alias]["built"].as_u64().unwrap() >= 2 * CUSTOMERS - 1,
        "{status}"
    );
    eprintln!(
        "rss before the rename {} MiB, peak during it {} MiB; most waiting seen {waiting_seen}",
        before / 1024,
        peak / 1024
    );
    // Bounded: the 20,000 documents are built and sent a page at a time.
    assert!(
        peak < before + 48 * 1024,
        "RSS grew from {before} to {peak} KiB during the fan-out"
    );
    stop(&mut daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_added_to_a_running_connector_is_built_from_requested_snapshots() {
    let url = elasticsearch();
    let db = seeded_db("docadd", 7).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    // The connector runs without the document first: its tables' snapshot is done.
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    wait_documents(&url, &format!("{db}_customers"), 40).await;
    stop(&mut daemon);

    let alias = format!("added_{db}");
    let doc = document_named(&db, &alias);
    let text = std::fs::read_to_string(&c).unwrap() + &doc;
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    // Changes while the state is built count too.
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.regions SET name = 'Renamed' WHERE id = 1"),
    )
    .await;
    let expected = documents_by_sql(&db).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut indexed = es_documents(&url, &alias).await;
    while indexed != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        indexed = es_documents(&url, &alias).await;
    }
    assert_eq!(indexed, expected, "{}", daemon_log(&c));
    let log = daemon_log(&c);
    assert!(log.contains("snapshots of their tables requested"), "{log}");
    stop(&mut daemon);
}

/// Waits (up to a minute) until the index behind `alias` holds `expected`, which it
/// must then (connector `c`'s daemon log shown otherwise).
async fn wait_for_documents(
    url: &str,
    alias: &str,
    expected: &BTreeMap<String, Json>,
    c: &std::path::Path,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while es_documents(url, alias).await != *expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        es_documents(url, alias).await,
        *expected,
        "{}",
        daemon_log(c)
    );
}

/// `tributary verify --document` (JSON reports): exit code, the document's report.
fn verify_document(c: &std::path::Path, alias: &str, extra: &[&str]) -> (i32, Json) {
    let mut args = vec![
        "verify",
        "--connector",
        c.to_str().unwrap(),
        "--document",
        alias,
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = tributary(&args);
    let report = out
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}")))
        .find(|r| r["table"] == format!("document {alias}"))
        .unwrap_or_else(|| panic!("no report of {alias}: {out}\n{err}"));
    (code, report)
}

/// Order and item updates, new orders (from id `first_order` on) and deleted items on
/// `db`'s tables until `stop`.
async fn order_writer(
    db: String,
    first_order: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut conn = admin(SHARED_PORT).await;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let o = 1 + n % 120;
        for q in [
            format!("UPDATE `{db}`.orders SET amount = amount + 1.25 WHERE id = {o}"),
            format!("UPDATE `{db}`.order_items SET qty = qty + 1 WHERE order_id = {o}"),
            format!(
                "INSERT INTO `{db}`.orders VALUES ({}, {}, 1.00, 'w', NOW(6))",
                first_order + n,
                1 + n % 40
            ),
            format!(
                "DELETE FROM `{db}`.order_items WHERE line = {}",
                1 + n % 240
            ),
        ] {
            conn.query_drop(q).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_reindex_of_a_document_beside_a_writer() {
    let url = elasticsearch();
    let db = seeded_db("docverify", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("verify_{db}");
    let c = with_document(dir.path(), &db, &document_named(&db, &alias));
    add_es_sink(&c, &url, "tables = \"none\"");
    let mut daemon = spawn_daemon(&c);
    let expected = documents_by_sql(&db).await;
    wait_for_documents(&url, &alias, &expected, &c).await;

    // Exact: clean, also while a writer changes orders and items beside verify (and
    // the daemon writes the documents they change).
    let (code, r) = verify_document(&c, &alias, &[]);
    assert_eq!(
        (code, &r["missing"], &r["stale"], &r["extra"]),
        (0, &0.into(), &0.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["rows"], 40, "{r}");
    let halt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(order_writer(db.clone(), 10_000, halt.clone()));
    for _ in 0..2 {
        let (code, r) = verify_document(&c, &alias, &[]);
        assert_eq!(
            code,
            0,
            "a false difference under writes: {r}\n{}",
            daemon_log(&c)
        );
    }
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    // The daemon caught up (else it could write over the tampering below).
    let expected = documents_by_sql(&db).await;
    wait_for_documents(&url, &alias, &expected, &c).await;

    // Behind tributary's back: customer 3's document deleted, 4's changed, an extra.
    es_delete(&url, &alias, "3").await;
    es_put(
        &url,
        &alias,
        "4",
        serde_json::json!({"id": 4, "name": "tampered"}),
    )
    .await;
    es_put(
        &url,
        &alias,
        "999",
        serde_json::json!({"id": 999, "name": "extra"}),
    )
    .await;
    let (code, r) = verify_document(&c, &alias, &[]);
    assert_eq!(code, 4, "{r}");
    assert_eq!(
        (&r["missing"], &r["stale"], &r["extra"]),
        (&1.into(), &1.into(), &1.into()),
        "{r}"
    );
    assert_eq!(
        (&r["first_missing"], &r["first_stale"], &r["first_extra"]),
        (
            &serde_json::json!(["3"]),
            &serde_json::json!(["4"]),
            &serde_json::json!(["999"])
        ),
        "{r}"
    );

    // --repair writes what the tables build, deletes the extra, and verify is clean.
    let (code, r) = verify_document(&c, &alias, &["--repair"]);
    assert_eq!(r["repaired"], 3, "{r}");
    assert_eq!(code, 0, "{r}");
    let (code, r) = verify_document(&c, &alias, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        es_documents(&url, &alias).await,
        documents_by_sql(&db).await
    );

    // reindex --document beside the daemon while the writer runs: a new index behind
    // the alias, the tampered document gone, every document equal to SQL's.
    es_put(
        &url,
        &alias,
        "5",
        serde_json::json!({"id": 5, "name": "tampered"}),
    )
    .await;
    halt.store(false, std::sync::atomic::Ordering::SeqCst);
    let writer = tokio::spawn(order_writer(db.clone(), 20_000, halt.clone()));
    let (code, out, err) = tributary(&[
        "reindex",
        "--connector",
        c.to_str().unwrap(),
        "--document",
        &alias,
    ]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", daemon_log(&c));
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
    // The daemon wrote the documents it built meanwhile to the new index as well.
    assert!(
        daemon_log(&c).contains(&format!("index={alias}_v2 table=document {alias}")),
        "{}",
        daemon_log(&c)
    );
    let expected = documents_by_sql(&db).await;
    wait_for_documents(&url, &alias, &expected, &c).await;
    let (code, r) = verify_document(&c, &alias, &[]);
    assert_eq!(code, 0, "{r}");
    stop(&mut daemon);
}

/// A city with its country, joined on the country's unique ISO code (not its key).
fn cities_document(db: &str, alias: &str) -> String {
    format!(
        r#"
[[document]]
name = "{alias}"
root = "{db}.cities"

[[document.embed]]
field = "country"
from = "{db}.countries"
on = {{ country_iso = "iso" }}
columns = ["iso", "name"]
"#
    )
}

/// The seed, then changes that move cities between countries by the unique column:
/// a rename, a country that arrives after its city, an ISO code changed (its city
/// loses the country), a NULL made a code, and two codes swapped in one transaction.
const CITY_WRITES: &[&str] = &[
    "INSERT INTO {db}.countries VALUES (1, 'FR', 'France'), (2, 'DE', 'Germany')",
    "INSERT INTO {db}.cities VALUES (1, 'Paris', 'FR'), (2, 'Berlin', 'DE'), (3, 'Nowhere', NULL), (4, 'Vaduz', 'LI')",
];
const CITY_CHANGES: &[&str] = &[
    "UPDATE {db}.countries SET name = 'French Republic' WHERE id = 1",
    "INSERT INTO {db}.countries VALUES (3, 'LI', 'Liechtenstein')",
    "UPDATE {db}.countries SET iso = 'DD' WHERE id = 2",
    "UPDATE {db}.cities SET country_iso = 'FR' WHERE id = 3",
    "BEGIN; UPDATE {db}.countries SET iso = 'XX' WHERE id = 1; UPDATE {db}.countries SET iso = 'FR' WHERE id = 3; UPDATE {db}.countries SET iso = 'LI' WHERE id = 1; COMMIT",
];

/// A row of `CITY_SQL`: id, name, country_iso, the country's iso and name.
type CityRow = (i64, String, Option<String>, Option<String>, Option<String>);

/// The cities' documents from the rows of `CITY_SQL` on the source.
fn city_documents(rows: Vec<CityRow>) -> BTreeMap<String, Json> {
    rows.into_iter()
        .map(|(id, name, country_iso, iso, country)| {
            let country = match (iso, country) {
                (Some(iso), Some(name)) => serde_json::json!({"iso": iso, "name": name}),
                _ => Json::Null,
            };
            let doc = serde_json::json!({"id": id, "name": name, "country_iso": country_iso, "country": country});
            (id.to_string(), doc)
        })
        .collect()
}

const CITY_SQL: &str = "SELECT c.id, c.name, c.country_iso, k.iso, k.name FROM {db}.cities c LEFT JOIN {db}.countries k ON k.iso = c.country_iso ORDER BY c.id";

/// Runs the cities document of connector `c` through the seed and the changes
/// (`exec` runs one statement list, `expected` reads the documents by SQL): the index
/// equals the SQL join after each step.
async fn embed_on_a_unique_index<E, EF, X, XF>(
    c: &std::path::Path,
    alias: &str,
    exec: E,
    expected: X,
) where
    E: Fn(String) -> EF,
    EF: std::future::Future<Output = ()>,
    X: Fn() -> XF,
    XF: std::future::Future<Output = BTreeMap<String, Json>>,
{
    let url = elasticsearch();
    add_es_sink(c, &url, "tables = \"none\"");
    let mut daemon = spawn_daemon(c);
    wait_streaming(c, &mut daemon).await;
    let first = expected().await;
    assert_eq!(first["4"]["country"], Json::Null, "{first:?}");
    wait_for_documents(&url, alias, &first, c).await;
    for change in CITY_CHANGES {
        exec(change.to_string()).await;
        wait_for_documents(&url, alias, &expected().await, c).await;
    }
    let end = expected().await;
    assert_eq!(end["1"]["country"]["name"], "Liechtenstein", "{end:?}");
    assert_eq!(end["2"]["country"], Json::Null, "{end:?}");
    stop(&mut daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_an_embed_joined_on_a_unique_index_follows_its_changes() {
    let db = new_db(
        "docunique",
        &[
            "CREATE TABLE `{db}`.countries (id INT PRIMARY KEY, iso CHAR(2) NOT NULL, name VARCHAR(50) NOT NULL, UNIQUE KEY (iso))",
            "CREATE TABLE `{db}`.cities (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, country_iso CHAR(2))",
        ],
    )
    .await;
    let mut conn = admin(SHARED_PORT).await;
    for w in CITY_WRITES {
        exec(&mut conn, &w.replace("{db}", &db)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("cities_{db}");
    let c = with_document(dir.path(), &db, &cities_document(&db, &alias));
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let run = |sql: String| {
        let db = db.clone();
        async move {
            let mut conn = admin(SHARED_PORT).await;
            conn.query_drop(sql.replace("{db}", &db)).await.unwrap();
        }
    };
    let by_sql = || {
        let db = db.clone();
        async move {
            let mut conn = admin(SHARED_PORT).await;
            city_documents(conn.query(CITY_SQL.replace("{db}", &db)).await.unwrap())
        }
    };
    embed_on_a_unique_index(&c, &alias, run, by_sql).await;

    // Without the unique index the embed could match two rows: the daemon refuses to
    // start, naming the line, as check does.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.countries DROP INDEX iso"),
    )
    .await;
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    let line = line_of(&c, "country_iso = \"iso\"");
    assert!(
        out.contains(&format!("{}:{line}:", c.display()))
            && out.contains("at most one row matches: (id)"),
        "line {line}\n{out}"
    );
    let (code, out, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains(&format!("{}:{line}:", c.display())) && err.contains("a unique index"),
        "line {line}\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_embed_joined_on_a_unique_index_follows_its_changes() {
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "docunique").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.countries (id int PRIMARY KEY, iso char(2) NOT NULL UNIQUE, name varchar(50) NOT NULL);
             CREATE TABLE {schema}.cities (id int PRIMARY KEY, name varchar(50) NOT NULL, country_iso char(2));
             CREATE PUBLICATION {schema} FOR TABLES IN SCHEMA {schema};"
        ))
        .await
        .unwrap();
    for w in CITY_WRITES {
        client
            .batch_execute(&w.replace("{db}", &schema))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("cities_{schema}");
    let c = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.*"), "");
    let text = std::fs::read_to_string(&c).unwrap() + &cities_document(&schema, &alias);
    std::fs::write(&c, text).unwrap();
    let run = |sql: String| {
        let schema = schema.clone();
        async move {
            let client = pg_admin(PG_PORT).await;
            client
                .batch_execute(&sql.replace("{db}", &schema))
                .await
                .unwrap();
        }
    };
    let by_sql = || {
        let schema = schema.clone();
        async move {
            let client = pg_admin(PG_PORT).await;
            let rows = client
                .query(&CITY_SQL.replace("{db}", &schema), &[])
                .await
                .unwrap();
            city_documents(
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, i32>(0) as i64,
                            r.get(1),
                            r.get(2),
                            r.get(3),
                            r.get(4),
                        )
                    })
                    .collect(),
            )
        }
    };
    embed_on_a_unique_index(&c, &alias, run, by_sql).await;
    pg_drop_slot(&client, &schema).await;
}

/// A table a document reads is quarantined by the policy; its changes wait while the
/// other tables' changes keep rewriting the documents (at newer versions than the
/// waiting ones). Once the policy lets the change through, `quarantine replay` puts
/// the waiting changes into the documents' state and writes the documents they
/// affect, so the index equals SQL without a resync, and stays so after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_table_reaches_its_documents_once_replayed() {
    let url = elasticsearch();
    let db = seeded_db("docquar", 11).await;
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.orders ADD COLUMN scratch INT"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("quar_{db}");
    let doc = document_named(&db, &alias);
    let c = with_document(dir.path(), &db, &doc);
    add_es_sink(&c, &url, "tables = \"none\"");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[rules]\ncolumn_dropped = \"quarantine\"\n").unwrap();
    set_policy(&c, &policy);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    wait_for_documents(&url, &alias, &documents_by_sql(&db).await, &c).await;

    // A column no document shows is dropped: orders is quarantined.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.orders DROP COLUMN scratch"),
    )
    .await;
    for q in [
        "UPDATE `{db}`.orders SET amount = amount + 100 WHERE id <= 10",
        "UPDATE `{db}`.orders SET customer_id = 2 WHERE id = 11",
        "DELETE FROM `{db}`.orders WHERE id = 12",
        "INSERT INTO `{db}`.orders VALUES (500, 3, 7.77, 'late', '2026-05-06 07:08:09.5')",
        // Later changes of the other tables rewrite the same documents meanwhile.
        "UPDATE `{db}`.customers SET name = CONCAT(name, '+') WHERE id <= 12",
        "UPDATE `{db}`.order_items SET qty = qty + 5 WHERE order_id <= 10",
    ] {
        exec(&mut conn, &q.replace("{db}", &db)).await;
    }
    let renamed = |docs: &BTreeMap<String, Json>| {
        docs.values()
            .filter(|d| d["name"].as_str().unwrap_or("").ends_with('+'))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while renamed(&es_documents(&url, &alias).await) < 12 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let log = daemon_log(&c);
    assert!(log.contains("quarantine"), "{log}");
    let expected = documents_by_sql(&db).await;
    let indexed = es_documents(&url, &alias).await;
    assert_eq!(renamed(&indexed), 12);
    assert_ne!(
        indexed, expected,
        "the quarantined changes are not in the documents yet"
    );

    std::fs::write(&policy, "[rules]\ncolumn_dropped = \"deprecate\"\n").unwrap();
    let (code, out, err) = tributary(&["quarantine", "replay", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The documents are written by the replay itself, with versions the index takes.
    assert_eq!(es_documents(&url, &alias).await, expected, "{out}\n{err}");

    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.orders SET status = 'after' WHERE id = 500"),
    )
    .await;
    wait_for_documents(&url, &alias, &documents_by_sql(&db).await, &c).await;
    let (code, report) = verify_document(&c, &alias, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}

/// A document the Elasticsearch sink refuses (larger than `max_document_bytes`) goes
/// to its dead-letter stream as a document; `dead-letters list` names it, and once the
/// limit is raised `dead-letters replay` indexes it into the document's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_the_sink_refused_is_replayed_once_fixed() {
    let url = elasticsearch();
    let db = seeded_db("docdead", 13).await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("dead_{db}");
    let doc = document_named(&db, &alias);
    let c = with_document(dir.path(), &db, &doc);
    add_es_sink(&c, &url, "tables = \"none\"\nmax_document_bytes = 4096");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    wait_for_documents(&url, &alias, &documents_by_sql(&db).await, &c).await;

    // Customer 5 gets 60 orders: its document grows past the limit.
    let mut conn = admin(SHARED_PORT).await;
    let values: Vec<String> = (1000..1060)
        .map(|o| format!("({o}, 5, 1.00, 'bulk', '2026-01-01 00:00:00')"))
        .collect();
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.orders VALUES {}", values.join(",")),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let dead = loop {
        let dead = read_events(&dir.path().join("dead-letters"));
        if !dead.is_empty() || std::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    assert_eq!(dead.len(), 1, "{}", daemon_log(&c));
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let expected = documents_by_sql(&db).await;
    assert_ne!(es_documents(&url, &alias).await["5"], expected["5"]);

    let cs = c.to_str().unwrap();
    let (code, out, err) = tributary(&["dead-letters", "list", "--connector", cs]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("document {alias}")), "{out}");
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("max_document_bytes = 4096", "max_document_bytes = 1048576");
    std::fs::write(&c, text).unwrap();
    let (code, out, err) = tributary(&["dead-letters", "replay", "--connector", cs]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(es_documents(&url, &alias).await, expected, "{out}\n{err}");
    assert!(out.contains(&format!("document {alias}")), "{out}");
}

/// The root's columns in a document are the root table's after its own `[[enrich]]`
/// steps. A root change an enrichment step refused reaches no document until
/// `dead-letters replay --stream enrich` sends it through the fixed step, into the
/// documents' state, and writes its document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriched_root_columns_and_enrichment_dead_letters_reach_the_documents() {
    let url = elasticsearch();
    let db = seeded_db("docenrich", 17).await;
    let mut conn = admin(SHARED_PORT).await;
    // Region 0 (no such region) fails the step below; NULLs would too, so none.
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.customers SET region_id = 1 WHERE region_id IS NULL"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("enr_{db}");
    let step = format!(
        "\n[[enrich]]\ntable = \"{db}.customers\"\nkind = \"compute\"\nfield = \"per_region\"\nexpr = \"100 / region_id\"\ntype = \"long\"\n"
    );
    let doc = document_named(&db, &alias);
    let c = with_document(dir.path(), &db, &(step + &doc));
    add_es_sink(&c, &url, "tables = \"none\"");
    let expected = |mut docs: BTreeMap<String, Json>| {
        for d in docs.values_mut() {
            let r = d["region_id"].as_i64().unwrap();
            d["per_region"] = Json::from(100 / r.max(1));
        }
        docs
    };
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let all = expected(documents_by_sql(&db).await);
    let passed: BTreeMap<String, Json> = all
        .iter()
        .filter(|(_, d)| d["region_id"] != 0)
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    assert!(passed.len() < all.len());
    wait_for_documents(&url, &alias, &passed, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));

    let text = std::fs::read_to_string(&c).unwrap().replace(
        "expr = \"100 / region_id\"",
        "expr = \"100 / max(region_id, 1)\"",
    );
    std::fs::write(&c, text).unwrap();
    let cs = c.to_str().unwrap();
    let (code, out, err) = tributary(&[
        "dead-letters",
        "replay",
        "--connector",
        cs,
        "--stream",
        "enrich",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no dead letters wait"), "{out}\n{err}");
    assert_eq!(es_documents(&url, &alias).await, all, "{out}\n{err}");
}

/// A document whose definition changes between two runs (a nest added) gets a new
/// index with the new mapping, filled beside the stream, and the alias moves to it:
/// the documents equal SQL with the new shape, and a customer deleted while the daemon
/// was stopped has no document left behind. The next start rebuilds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_definition_gets_a_new_index_swapped_in_by_the_daemon() {
    let url = elasticsearch();
    let db = seeded_db("docredef", 19).await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("redef_{db}");
    let full = document_named(&db, &alias);
    let items_at = full.find("\n[[document.nest.nest]]").unwrap();
    let without_items = full[..items_at].to_string() + "\n";
    let c = with_document(dir.path(), &db, &without_items);
    add_es_sink(&c, &url, "tables = \"none\"");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let mut first = documents_by_sql(&db).await;
    for d in first.values_mut() {
        for o in d["orders"].as_array_mut().unwrap() {
            o.as_object_mut().unwrap().remove("items");
        }
    }
    wait_for_documents(&url, &alias, &first, &c).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));

    // While it is stopped: a customer goes, and the definition gains the items.
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        &format!("DELETE FROM `{db}`.customers WHERE id = 3"),
    )
    .await;
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace(&without_items, &full);
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("UPDATE `{db}`.order_items SET qty = qty + 1 WHERE order_id <= 5"),
    )
    .await;
    let expected = documents_by_sql(&db).await;
    assert!(!expected.contains_key("3"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while (behind(&url, &alias).await != [format!("{alias}_v2")]
        || es_documents(&url, &alias).await != expected)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        behind(&url, &alias).await,
        [format!("{alias}_v2")],
        "{}",
        daemon_log(&c)
    );
    assert_eq!(
        es_documents(&url, &alias).await,
        expected,
        "{}",
        daemon_log(&c)
    );
    let mapping: Json = es(&url)
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            &alias,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orders = &mapping[format!("{alias}_v2")]["mappings"]["properties"]["orders"];
    assert_eq!(orders["properties"]["items"]["type"], "nested", "{mapping}");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let log = daemon_log(&c);
    assert!(log.contains("the document's definition changed"), "{log}");

    // Rebuilt once: the next start keeps the index (the log is appended to).
    let before = log.matches("the document's definition changed").count();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let log = daemon_log(&c);
    assert_eq!(
        log.matches("the document's definition changed").count(),
        before,
        "{log}"
    );
    assert_eq!(behind(&url, &alias).await, [format!("{alias}_v2")]);
}

/// A reader's joined documents go through Kafka (their own topic) to a worker that
/// never defined them: the records carry the document's shape, so the worker's
/// Elasticsearch sink maps nests as `nested`, and its index equals SQL through
/// changes of every table and a deleted customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_through_kafka_reach_a_worker_that_maps_them() {
    let url = elasticsearch();
    let brokers = kafka_on(KAFKA_PORT);
    let db = seeded_db("dockafka", 23).await;
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("kdoc_{db}");
    let doc = document_named(&db, &alias);
    let reader_dir = dir.path().join("reader");
    std::fs::create_dir_all(&reader_dir).unwrap();
    let reader = with_document(&reader_dir, &db, &doc);
    let topic = format!("docs.{alias}");
    add_sink(
        &reader,
        &format!(
            "kind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"tables.{db}.{{table}}\"\ndocument_topic = \"{topic}\"\npartitions = 2\ntransactional_id = \"{topic}\"\nprogress_topic = \"{topic}.progress\"\nrequest_timeout_secs = 5"
        ),
    );
    let mut reader_daemon = spawn_daemon(&reader);
    wait_streaming(&reader, &mut reader_daemon).await;
    let w = kafka_worker(
        &dir.path().join("worker"),
        &brokers,
        &format!("g-{alias}"),
        &topic,
        "",
    );
    add_es_sink(&w, &url, "");
    let mut worker_daemon = spawn_daemon(&w);
    wait_for_documents(&url, &alias, &documents_by_sql(&db).await, &w).await;

    let mut conn = admin(SHARED_PORT).await;
    for q in [
        "UPDATE `{db}`.regions SET name = 'Renamed' WHERE id = 2",
        "UPDATE `{db}`.order_items SET qty = qty + 3 WHERE order_id <= 6",
        "UPDATE `{db}`.orders SET customer_id = 4 WHERE id = 7",
        "DELETE FROM `{db}`.customers WHERE id = 9",
    ] {
        exec(&mut conn, &q.replace("{db}", &db)).await;
    }
    let expected = documents_by_sql(&db).await;
    assert!(!expected.contains_key("9"));
    wait_for_documents(&url, &alias, &expected, &w).await;
    let mapping: Json = es(&url)
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            &alias,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let props = &mapping[format!("{alias}_v1")]["mappings"]["properties"];
    assert_eq!(props["orders"]["type"], "nested", "{mapping}");
    assert_eq!(props["orders"]["properties"]["items"]["type"], "nested");
    assert_eq!(stop(&mut worker_daemon), 0, "{}", daemon_log(&w));
    assert_eq!(stop(&mut reader_daemon), 0, "{}", daemon_log(&reader));
}
