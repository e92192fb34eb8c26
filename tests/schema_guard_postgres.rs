//! The schema guard on a PostgreSQL stream sees tables created, dropped and renamed,
//! although PostgreSQL does not replicate DDL: a look at the catalog finds them
//! (`catalog_poll_secs`), `table_created` decides a new one (let in: added to the
//! publication and snapshotted, so rows written with its CREATE arrive too), a drop
//! gets `table_dropped`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// The PostgreSQL server with the DDL trigger installed (deploy/test.sh stops it).
const TRIGGER_PORT: u16 = 25375;

fn assert_no_insert_twice(inserts: &[i64]) {
    let mut unique = inserts.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        inserts.len(),
        "an insert came twice: {inserts:?}"
    );
}

/// A fresh schema on the server at `port` with table `a` (owned by tributary, which
/// then creates the publication itself) and a connector including `schema.*`.
async fn setup(
    port: u16,
    prefix: &str,
    extra: &str,
) -> (
    tokio_postgres::Client,
    String,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let client = pg_admin(port).await;
    let schema = pg_schema(&client, prefix).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.a (id int PRIMARY KEY, v text);
             ALTER TABLE {schema}.a OWNER TO tributary;"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), port, &schema, &format!("{schema}.*"), extra);
    (client, schema, dir, c)
}

/// Keys and final `after` images from the log, for one table; every insert counted.
fn final_rows(events: &[serde_json::Value], table: &str) -> (BTreeMap<i64, String>, Vec<i64>) {
    let mut rows = BTreeMap::new();
    let mut inserts = Vec::new();
    for e in events.iter().filter(|e| e["source"]["table"] == table) {
        let id = e["after"]["id"]
            .as_i64()
            .or(e["before"]["id"].as_i64())
            .unwrap();
        match e["op"].as_str().unwrap() {
            "d" => {
                rows.remove(&id);
            }
            op => {
                if op == "c" {
                    inserts.push(id);
                }
                rows.insert(id, e["after"]["v"].as_str().unwrap().to_string());
            }
        }
    }
    (rows, inserts)
}

/// Creates `schema.b` with 50 rows in its CREATE's transaction, then writes 250 more
/// and updates as fast as they go, and waits until the log and the index `schema_b`
/// equal the table, with no insert in the log twice.
async fn created_while_writing(
    client: &tokio_postgres::Client,
    schema: &str,
    c: &std::path::Path,
    url: &str,
) {
    let log = c.parent().unwrap().join("log");
    // Created with 50 rows in its own transaction, then 250 more as fast as they go.
    client
        .batch_execute(&format!(
            "BEGIN;
             CREATE TABLE {schema}.b (id int PRIMARY KEY, v text);
             ALTER TABLE {schema}.b OWNER TO tributary;
             INSERT INTO {schema}.b SELECT i, 'b' || i FROM generate_series(1, 50) i;
             COMMIT;"
        ))
        .await
        .unwrap();
    for i in 51..=300 {
        client
            .batch_execute(&format!(
                "INSERT INTO {schema}.b VALUES ({i}, 'b{i}'); UPDATE {schema}.b SET v = v || '+' WHERE id = {}",
                i - 50
            ))
            .await
            .unwrap();
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let source: BTreeMap<i64, String> = client
        .query(&format!("SELECT id::bigint, v FROM {schema}.b"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    wait_until(c, 60, "every row of b in the log", || {
        final_rows(&read_events(&log), "b").0 == source
    })
    .await;
    assert_no_insert_twice(&final_rows(&read_events(&log), "b").1);
    let docs = wait_documents(url, &format!("{schema}_b"), 300).await;
    assert_eq!(docs.len(), 300);
    for (id, v) in &source {
        assert_eq!(docs[&id.to_string()]["v"], v.as_str(), "document {id}");
    }
}

/// A table created while streaming, matching `include`, with rows written in the same
/// transaction as its CREATE and right after (a writer that does not wait for
/// tributary): allowed by the default policy, it is added to the publication and
/// snapshotted, and every row reaches the log and a new index; the log never holds an
/// insert twice. A table the user may not add to the publication waits, naming the
/// statement, until its owner runs it. Then a drop: `deprecate` keeps the index, its
/// `_meta` and `status` say the table was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_tables_are_snapshotted_and_streamed() {
    let (client, schema, dir, c) = setup(PG_PORT, "created", "catalog_poll_secs = 1").await;
    let url = elasticsearch();
    add_es_sink(&c, &url, "");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!("INSERT INTO {schema}.a VALUES (1, 'a1')"))
        .await
        .unwrap();
    assert_eq!(wait_for_events(&log, 1, Duration::from_secs(30)).await, 1);

    created_while_writing(&client, &schema, &c, &url).await;
    let text = daemon_log(&c);
    assert!(text.contains("table added to the publication"), "{text}");

    // A table tributary may not add (admin owns it): its snapshot waits, naming the
    // statement, until the owner runs it.
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.c (id int PRIMARY KEY, v text);
             INSERT INTO {schema}.c VALUES (1, 'c1');"
        ))
        .await
        .unwrap();
    let statement = format!("ALTER PUBLICATION \"{schema}\" ADD TABLE \"{schema}\".\"c\";");
    wait_until(&c, 30, "the statement for the owner", || {
        daemon_log(&c).contains(&statement)
    })
    .await;
    client.batch_execute(&statement).await.unwrap();
    wait_until(&c, 60, "c's row, once the owner added it", || {
        final_rows(&read_events(&log), "c").0.len() == 1
    })
    .await;

    // Dropped: deprecated, the index stays, status says so.
    client
        .batch_execute(&format!("DROP TABLE {schema}.b"))
        .await
        .unwrap();
    wait_until(&c, 30, "the drop", || {
        daemon_log(&c).contains("table dropped")
    })
    .await;
    // The guard's state reaches the store with the next checkpoint.
    client
        .batch_execute(&format!("INSERT INTO {schema}.a VALUES (2, 'a2')"))
        .await
        .unwrap();
    wait_for_events(&log, read_events(&log).len() + 1, Duration::from_secs(30)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let (code, out, _) = tributary(&["status", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["tables"][format!("{schema}.b")]["dropped"],
        true,
        "{out}"
    );
    assert_eq!(
        wait_documents(&url, &format!("{schema}_b"), 300)
            .await
            .len(),
        300
    );
    let (_, meta) = mapping_of(&url, &format!("{schema}_b")).await;
    let dropped_at = meta["source_dropped_ms"].as_u64();
    assert!(dropped_at.is_some(), "{meta}");

    // A restart finds the drop again in the history and does not decide it twice.
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(
        daemon_log(&c).matches("table dropped").count(),
        1,
        "{}",
        daemon_log(&c)
    );
    let (_, meta) = mapping_of(&url, &format!("{schema}_b")).await;
    assert_eq!(
        meta["source_dropped_ms"].as_u64(),
        dropped_at,
        "kept from the first time"
    );
    pg_drop_slot(&client, &schema).await;
}

/// `ignore` leaves a created table out (said once); `halt` stops before anything of the
/// table is sent, naming it, and the next start after the policy is edited takes it
/// in from its snapshot; a drop the policy halts stops at the next look, naming the
/// table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_and_dropped_tables_follow_their_rules() {
    let (client, schema, dir, c) = setup(PG_PORT, "rules", "catalog_poll_secs = 1").await;
    let policy = dir.path().join("policy.toml");
    let rules = |d: &str| {
        format!(
            "[rules]\ntable_dropped = \"halt\"\n\n[[table]]\nmatch = \"{schema}.ign\"\ntable_created = \"ignore\"\n\n[[table]]\nmatch = \"{schema}.h\"\ntable_created = \"{d}\"\n"
        )
    };
    std::fs::write(&policy, rules("halt")).unwrap();
    set_policy(&c, &policy);
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;

    for t in ["ign", "h"] {
        client
            .batch_execute(&format!(
                "BEGIN; CREATE TABLE {schema}.{t} (id int PRIMARY KEY, v text);
                 ALTER TABLE {schema}.{t} OWNER TO tributary;
                 INSERT INTO {schema}.{t} VALUES (1, '{t}1'); COMMIT;"
            ))
            .await
            .unwrap();
        if t == "ign" {
            wait_until(&c, 30, "the ignored table", || {
                daemon_log(&c).contains("table ignored")
            })
            .await;
        }
    }
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!(
            "schema change on {schema}.h: table created; policy verdict `halt` ({}:",
            policy.display()
        )),
        "{text}"
    );
    assert_eq!(text.matches("table ignored").count(), 1, "{text}");
    assert!(read_events(&log).is_empty(), "{:?}", read_events(&log));

    // Allowed now: `h` comes in from its snapshot; `ign` stays out.
    std::fs::write(&policy, rules("allow")).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {schema}.h VALUES (2, 'h2'); INSERT INTO {schema}.ign VALUES (2, 'ign2')"
        ))
        .await
        .unwrap();
    wait_until(&c, 60, "both rows of h", || {
        final_rows(&read_events(&log), "h").0.len() == 2
    })
    .await;
    assert!(final_rows(&read_events(&log), "ign").0.is_empty());

    // A drop the policy halts: the daemon stops at its next look, naming the table.
    client
        .batch_execute(&format!("DROP TABLE {schema}.a"))
        .await
        .unwrap();
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {schema}.a: table dropped; policy verdict `halt` ({}:2: table_dropped = \"halt\")", policy.display())),
        "{text}"
    );
    pg_drop_slot(&client, &schema).await;
}

/// kill -9 right after a CREATE TABLE, before and while its first rows are written:
/// after the restart every row is there once (as the table's final state), none
/// missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_a_create_table_and_its_rows_loses_nothing() {
    let (client, schema, dir, c) = setup(PG_PORT, "ckill", "catalog_poll_secs = 1").await;
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.n (id int PRIMARY KEY, v text);
             ALTER TABLE {schema}.n OWNER TO tributary;"
        ))
        .await
        .unwrap();
    send_signal(daemon.id(), "KILL");
    daemon.wait().unwrap();
    for i in 1..=100 {
        client
            .batch_execute(&format!("INSERT INTO {schema}.n VALUES ({i}, 'n{i}')"))
            .await
            .unwrap();
        if i == 50 {
            daemon = spawn_daemon(&c);
        }
    }
    wait_until(&c, 60, "the 100 rows of n", || {
        final_rows(&read_events(&log), "n").0.len() == 100
    })
    .await;
    let (rows, inserts) = final_rows(&read_events(&log), "n");
    assert_no_insert_twice(&inserts);
    assert!(rows.iter().all(|(id, v)| *v == format!("n{id}")));
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// With the DDL event trigger (and no catalog polls, so nothing else could find them):
/// a CREATE TABLE is decided and snapshotted from its statement, a RENAME COLUMN is a
/// certain rename decided at the statement itself (no row needed), and a DROP TABLE the
/// policy halts stops at its statement. Installing it takes a superuser: the
/// connector's user is told so, with the command that prints the SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ddl_trigger_puts_ddl_at_its_position() {
    const PORT: u16 = TRIGGER_PORT;
    let (client, schema, dir, c) = setup(PORT, "trig", "catalog_poll_secs = 0").await;
    let conn = c.to_str().unwrap();
    let (code, _, err) = tributary(&["pg-ddl-trigger", "install", "--connector", conn]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("event triggers need a superuser"), "{err}");
    let (code, sql, err) = tributary(&["pg-ddl-trigger", "sql", "--connector", conn]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sql, tributary::source::postgres::ddl_trigger::INSTALL);
    install_trigger(&client).await;
    let (_, out, _) = tributary(&["check", "--connector", conn]);
    assert!(out.contains("DDL trigger installed"), "{out}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[rules]\ntable_dropped = \"halt\"\n").unwrap();
    set_policy(&c, &policy);
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!("INSERT INTO {schema}.a VALUES (1, 'a1')"))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "BEGIN; CREATE TABLE {schema}.b (id int PRIMARY KEY, v text);
             ALTER TABLE {schema}.b OWNER TO tributary;
             INSERT INTO {schema}.b VALUES (1, 'b1'), (2, 'b2'); COMMIT;"
        ))
        .await
        .unwrap();
    wait_until(&c, 60, "both rows of b", || {
        final_rows(&read_events(&log), "b").0.len() == 2
    })
    .await;

    // A rename, with no row after it: decided at the statement, and certain.
    client
        .batch_execute(&format!("ALTER TABLE {schema}.a RENAME COLUMN v TO w"))
        .await
        .unwrap();
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {schema}.a: column `v` renamed to `w`; policy verdict `halt` (built-in add-only default: column_renamed = \"halt\")")),
        "{text}"
    );

    // Deprecated now; a drop halts at its statement.
    std::fs::write(
        &policy,
        "[rules]\ntable_dropped = \"halt\"\ncolumn_renamed = \"deprecate\"\n",
    )
    .unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    // (Two statements, two transactions: a halt cuts the whole transaction.)
    client
        .batch_execute(&format!("INSERT INTO {schema}.a VALUES (2, 'a2')"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("DROP TABLE {schema}.b"))
        .await
        .unwrap();
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {schema}.b: table dropped; policy verdict `halt` ({}:2: table_dropped = \"halt\")", policy.display())),
        "{text}"
    );
    let a: Vec<_> = read_events(&log)
        .into_iter()
        .filter(|e| e["source"]["table"] == "a")
        .collect();
    assert_eq!(a.last().unwrap()["after"]["w"], "a2", "{a:?}");
    let (code, _, err) = tributary(&["pg-ddl-trigger", "uninstall", "--connector", conn]);
    assert_eq!(code, 1, "{err}");
    let (code, sql, _) = tributary(&["pg-ddl-trigger", "sql", "--connector", conn]);
    assert_eq!(code, 0);
    assert!(sql.contains("CREATE EVENT TRIGGER tributary_ddl_drop"));
    pg_drop_slot(&client, &schema).await;
}

/// Installs the DDL trigger on the server of `client` once per test process (tests of
/// this file run at once).
async fn install_trigger(client: &tokio_postgres::Client) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        client
            .batch_execute(tributary::source::postgres::ddl_trigger::INSTALL)
            .await
            .unwrap();
    })
    .await;
}

/// The writer of `created_tables_are_snapshotted_and_streamed`, with the DDL trigger
/// and no catalog looks: the table is found at its CREATE statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_while_writing_with_the_ddl_trigger() {
    let client = pg_admin(TRIGGER_PORT).await;
    install_trigger(&client).await;
    let (client, schema, _dir, c) = setup(TRIGGER_PORT, "trigw", "catalog_poll_secs = 0").await;
    let url = elasticsearch();
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    created_while_writing(&client, &schema, &c, &url).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}
