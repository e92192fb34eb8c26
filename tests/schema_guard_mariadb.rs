//! The schema guard on a MariaDB stream: DDL-stated renames, created tables the policy
//! ignores, dropped tables it halts at, lengths, precision and sizes that narrow, each
//! decided with its rule and resumed after the policy is edited.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_changes_get_their_verdicts() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("guard");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, a INT)"),
    )
    .await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.old (id INT PRIMARY KEY)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[rules]\ntable_created = \"ignore\"\ntable_dropped = \"halt\"\n",
    )
    .unwrap();
    set_policy(&c, &policy);
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (1, 1)")).await;
    assert_eq!(wait_for_events(&log, 1, Duration::from_secs(30)).await, 1);

    // A created table the policy ignores: its rows are not captured.
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.fresh (id INT PRIMARY KEY)"),
    )
    .await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.fresh VALUES (1)")).await;
    // A rename the statement states, with a type change: a certain rename, which
    // add-only halts.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.t CHANGE a b BIGINT"),
    )
    .await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (2, 2)")).await;
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {db}.t: column `a` renamed to `b`; policy verdict `halt` (built-in add-only default: column_renamed = \"halt\")")),
        "{text}"
    );
    assert!(text.contains("table ignored"), "{text}");
    let tables: Vec<String> = read_events(&log)
        .iter()
        .map(|e| e["source"]["table"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tables, ["t"], "the ignored table's row is not in the log");

    // Renames deprecate now; the dropped table still halts.
    std::fs::write(
        &policy,
        "[rules]\ntable_created = \"ignore\"\ntable_dropped = \"halt\"\ncolumn_renamed = \"deprecate\"\n",
    )
    .unwrap();
    exec(&mut conn, &format!("DROP TABLE `{db}`.old")).await;
    let mut daemon = spawn_daemon(&c);
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {db}.old: table dropped; policy verdict `halt` ({}:3: table_dropped = \"halt\")", policy.display())),
        "{text}"
    );
    let events = read_events(&log);
    assert_eq!(
        events.len(),
        2,
        "the row after the rename passed: {events:?}"
    );
    assert_eq!(events[1]["after"]["b"], 2);

    // Dropped tables deprecate: it runs on.
    std::fs::write(
        &policy,
        "[rules]\ntable_created = \"ignore\"\ncolumn_renamed = \"deprecate\"\n",
    )
    .unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (3, 3)")).await;
    assert_eq!(wait_for_events(&log, 3, Duration::from_secs(30)).await, 3);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let (code, out, _) = tributary(&["status", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["tables"][format!("{db}.t")]["deprecated"],
        serde_json::json!(["a"]),
        "{out}"
    );
    assert_eq!(
        status["tables"][format!("{db}.fresh")]["ignored"],
        true,
        "{out}"
    );
}

/// Type names carry lengths, precision, sizes and fractional digits, the same from the
/// snapshot (information_schema) and the stream (table maps): a widening flows on, a
/// narrowing halts at its statement (a row of another table written after it is not
/// sent), `policy diff` shows every narrowing, and an edited policy lets them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowed_lengths_halt_at_their_statement() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("lengths");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    let t = format!("`{db}`.t");
    let o = format!("`{db}`.o");
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(50), amount DECIMAL(12,2), \
             body TEXT) CHARACTER SET utf8mb4"
        ),
    )
    .await;
    // Every kind of modifier, in several character sets: the snapshot reads this
    // table's layout from information_schema, the stream from table maps, and a
    // difference would be a type change.
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE {o} (id INT PRIMARY KEY, v3 VARCHAR(7) CHARACTER SET utf8mb3, \
             l1 CHAR(4) CHARACTER SET latin1, c4 CHAR(9) CHARACTER SET utf8mb4, \
             vb VARBINARY(12), b BINARY(3), d DECIMAL(5,0) UNSIGNED, f DOUBLE, \
             bits BIT(10), t6 DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(2), dt DATETIME, \
             tt TINYTEXT, mb MEDIUMBLOB, lt LONGTEXT, j JSON)"
        ),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO {t} VALUES (1, 'one', 1.5, 'x')"),
    )
    .await;
    exec(&mut conn, &format!("INSERT INTO {o} (id) VALUES (1)")).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    assert_eq!(wait_for_events(&log, 2, Duration::from_secs(30)).await, 2);

    // Widenings flow on.
    exec(
        &mut conn,
        &format!("ALTER TABLE {t} MODIFY name VARCHAR(80), MODIFY body MEDIUMTEXT"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO {t} VALUES (2, 'two', 2.5, 'y')"),
    )
    .await;
    exec(
        &mut conn,
        &format!("INSERT INTO {o} (id, v3, t6) VALUES (2, 'x', NOW(6))"),
    )
    .await;
    assert_eq!(
        wait_for_events(&log, 4, Duration::from_secs(30)).await,
        4,
        "{}",
        daemon_log(&c)
    );

    // Narrowings halt at the statement: the row of `o` after it is not sent.
    exec(
        &mut conn,
        &format!(
            "ALTER TABLE {t} MODIFY name VARCHAR(20), MODIFY amount DECIMAL(10,2), \
             MODIFY body TINYTEXT"
        ),
    )
    .await;
    exec(&mut conn, &format!("INSERT INTO {o} (id) VALUES (3)")).await;
    exec(
        &mut conn,
        &format!("INSERT INTO {t} VALUES (3, 'three', 3.5, 'z')"),
    )
    .await;
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {db}.t: column `name` changed type from varchar(80) to varchar(20); policy verdict `halt` (built-in add-only default: type_changed = \"halt\")")),
        "{text}"
    );
    assert_eq!(read_events(&log).len(), 4, "nothing past the statement");

    let (code, out, err) = tributary(&["policy", "diff", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    for change in [
        "column `name` changed type from varchar(80) to varchar(20)",
        "column `amount` changed type from decimal(12,2) to decimal(10,2)",
        "column `body` changed type from mediumtext to tinytext",
    ] {
        assert!(out.contains(change), "{change}:\n{out}");
    }
    assert!(
        out.contains(&format!("{db}.o: no change since schema version")),
        "information_schema and the table maps spell `o` alike:\n{out}"
    );

    // Allowed now: everything after the statement flows, in order.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[rules]\ntype_changed = \"allow\"\n").unwrap();
    set_policy(&c, &policy);
    let mut daemon = spawn_daemon(&c);
    assert_eq!(
        wait_for_events(&log, 6, Duration::from_secs(30)).await,
        6,
        "{}",
        daemon_log(&c)
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let events = read_events(&log);
    let ids: Vec<(String, i64)> = events[4..]
        .iter()
        .map(|e| {
            (
                e["source"]["table"].as_str().unwrap().to_string(),
                e["after"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids, [("o".to_string(), 3), ("t".to_string(), 3)]);
    assert_eq!(events[5]["after"]["amount"], "3.50");
}

/// kill -9 right after a DDL, before the next row: after the restart the rows before
/// it carry the old schema version, the rows after it the new one, and the history
/// holds both layouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_a_ddl_and_the_next_row_loses_no_schema_version() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("ddlkill");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (1)")).await;
    assert_eq!(wait_for_events(&log, 1, Duration::from_secs(30)).await, 1);
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.t ADD COLUMN note VARCHAR(10)"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut daemon);
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (2, 'x')")).await;
    let mut daemon = spawn_daemon(&c);
    assert_eq!(wait_for_events(&log, 2, Duration::from_secs(30)).await, 2);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let events = read_events(&log);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["schema_version"], 1, "{:?}", events[0]);
    assert_eq!(events[1]["schema_version"], 2, "{:?}", events[1]);
    assert_eq!(events[1]["after"]["note"], "x");
    let (code, out, _) = tributary(&["offsets", "show", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let history = &shown["schema_history"][format!("{db}.t")];
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    assert_eq!(history[1]["columns"][1]["name"], "note", "{history}");
}

/// A quarantined table's changes wait in the quarantine stream exactly once, through a
/// kill -9 in the middle, while the other table keeps flowing; after the policy is
/// edited the replay brings the index to exactly the source's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_survives_kill_9_and_replay_converges_to_the_source() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("quar");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    for t in ["t", "other"] {
        exec(
            &mut conn,
            &format!("CREATE TABLE `{db}`.{t} (id INT PRIMARY KEY, v VARCHAR(20))"),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[rules]\ncolumn_dropped = \"quarantine\"\n").unwrap();
    set_policy(&c, &policy);
    let cs = c.to_str().unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    for t in ["t", "other"] {
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.{t} SELECT seq, 'v' FROM `{db}`.seq_1_to_20"),
        )
        .await;
    }
    wait_documents(&url, &format!("{db}_t"), 20).await;
    exec(&mut conn, &format!("ALTER TABLE `{db}`.t DROP COLUMN v")).await;

    // Changes to both tables, with a kill -9 halfway.
    let mut t_changes = 0;
    for i in 0..60 {
        if i == 30 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            kill9(&mut daemon);
            daemon = spawn_daemon(&c);
            wait_streaming(&c, &mut daemon).await;
        }
        let id = 100 + i;
        exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES ({id})")).await;
        exec(
            &mut conn,
            &format!("DELETE FROM `{db}`.t WHERE id = {}", i % 20 + 1),
        )
        .await;
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.other VALUES ({id}, 'x')"),
        )
        .await;
        t_changes += 2 - (i >= 20) as u64;
    }
    let other = wait_documents(&url, &format!("{db}_other"), 80).await;
    assert_eq!(other.len(), 80, "the other table kept flowing");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    assert_eq!(
        es_documents(&url, &format!("{db}_t")).await.len(),
        20,
        "nothing of the quarantined table went on"
    );
    // Each quarantined change is in the stream once, whatever the kill replayed.
    let (code, records, err) = tributary(&[
        "log",
        "cat",
        dir.path().join("state/quarantine").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let keys: Vec<String> = records
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", r["event"]["op"], r["event"]["pos"])
        })
        .collect();
    let unique: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(keys.len() as u64, t_changes, "{records}");
    assert_eq!(unique.len(), keys.len(), "no change twice: {records}");

    // Deprecating the drop now: the replay converges the index to the source.
    std::fs::write(&policy, "[rules]\ncolumn_dropped = \"deprecate\"\n").unwrap();
    let (code, out, err) = tributary(&["quarantine", "replay", "--connector", cs]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{db}.t: {t_changes} change(s) replayed; released")),
        "{out}"
    );
    let ids: Vec<i32> = {
        use mysql_async::prelude::Queryable;
        conn.query(format!("SELECT id FROM `{db}`.t ORDER BY id"))
            .await
            .unwrap()
    };
    let docs = es_documents(&url, &format!("{db}_t")).await;
    let mut doc_ids: Vec<i32> = docs.keys().map(|k| k.parse().unwrap()).collect();
    doc_ids.sort();
    assert_eq!(doc_ids, ids);
    assert!(docs["100"].get("v").is_none(), "{:?}", docs["100"]);
    let (code, out, _) = tributary(&["status", "--connector", cs]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["tables"][format!("{db}.t")]["deprecated"],
        serde_json::json!(["v"]),
        "{out}"
    );
}

/// The add-only default through a migration's worth of DDL, each followed by a row:
/// columns added with a default, FIRST and AFTER; a widening; a created table (captured
/// when included, not when excluded); a dropped column and a dropped table (deprecated:
/// it runs on); then a narrowing, which halts before its transaction. Checks events,
/// documents, the mapping, `status`, the exit and the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_only_default_through_a_migration() {
    mariadb(SHARED_PORT, "");
    let url = elasticsearch();
    let db = unique_db("matrix");
    let mut conn = admin(SHARED_PORT).await;
    for d in [db.clone(), format!("{db}_out")] {
        exec(&mut conn, &format!("CREATE DATABASE `{d}`")).await;
    }
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, a INT, s VARCHAR(10))"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let t = format!("`{db}`.t");
    let steps: Vec<(String, String)> = vec![
        (String::new(), format!("INSERT INTO {t} (id, a, s) VALUES (1, 1, 'one')")),
        (
            format!("ALTER TABLE {t} ADD COLUMN d INT NOT NULL DEFAULT 7"),
            format!("INSERT INTO {t} (id, a) VALUES (2, 2)"),
        ),
        (
            format!("ALTER TABLE {t} ADD COLUMN head VARCHAR(5) FIRST"),
            format!("INSERT INTO {t} (id, head) VALUES (3, 'h')"),
        ),
        (
            format!("ALTER TABLE {t} ADD COLUMN mid DOUBLE AFTER a"),
            format!("INSERT INTO {t} (id, mid) VALUES (4, 0.5)"),
        ),
        (
            format!("ALTER TABLE {t} MODIFY a BIGINT"),
            format!("INSERT INTO {t} (id, a) VALUES (5, 1099511627776)"),
        ),
        (
            format!("CREATE TABLE `{db}`.fresh (id INT PRIMARY KEY); CREATE TABLE `{db}_out`.ex (id INT PRIMARY KEY)"),
            format!("INSERT INTO `{db}`.fresh VALUES (1); INSERT INTO `{db}_out`.ex VALUES (1)"),
        ),
        (
            format!("ALTER TABLE {t} DROP COLUMN s"),
            format!("INSERT INTO {t} (id) VALUES (6)"),
        ),
        (
            format!("DROP TABLE `{db}`.fresh"),
            format!("INSERT INTO {t} (id) VALUES (7)"),
        ),
    ];
    let mut expect = 0;
    for (ddl, row) in &steps {
        for sql in ddl
            .split("; ")
            .chain(row.split("; "))
            .filter(|s| !s.is_empty())
        {
            exec(&mut conn, sql).await;
        }
        expect += row
            .split("; ")
            .filter(|s| s.contains(&format!("`{db}`.")))
            .count();
        assert_eq!(
            wait_for_events(&log, expect, Duration::from_secs(30)).await,
            expect,
            "after `{ddl}`:\n{}",
            daemon_log(&c)
        );
    }
    let events = read_events(&log);
    let after = |id: i64| {
        events
            .iter()
            .find(|e| e["source"]["table"] == "t" && e["after"]["id"] == id)
            .unwrap_or_else(|| panic!("no row {id}: {events:?}"))["after"]
            .clone()
    };
    assert_eq!(after(2)["d"], 7, "the default reaches the event");
    assert_eq!(after(3)["head"], "h");
    assert_eq!(after(4)["mid"], 0.5);
    assert_eq!(after(5)["a"], 1099511627776i64, "widened");
    assert!(after(6).get("s").is_none(), "the dropped column is gone");
    assert!(
        events.iter().all(|e| e["source"]["db"] == db.as_str()),
        "the excluded table is not captured"
    );
    assert!(events.iter().any(|e| e["source"]["table"] == "fresh"));
    // Column order follows the table: FIRST and AFTER land where they were put.
    let (_, raw, _) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert!(
        raw.contains(r#""after":{"head":null,"id":7,"a":null,"mid":null,"d":7}"#),
        "{raw}"
    );

    let docs = wait_documents(&url, &format!("{db}_t"), 7).await;
    assert_eq!(docs.len(), 7, "{docs:?}");
    assert_eq!(docs["1"]["s"], "one", "deprecated: indexed values stay");
    assert_eq!(docs["5"]["a"], 1099511627776i64);
    assert_eq!(
        wait_documents(&url, &format!("{db}_fresh"), 1).await.len(),
        1
    );
    let (types, meta) = mapping_of(&url, &format!("{db}_t")).await;
    for (field, ty) in [
        ("d", "long"),
        ("head", "text"),
        ("mid", "double"),
        ("s", "text"),
    ] {
        assert_eq!(
            types.get(field).map(String::as_str),
            Some(ty),
            "{field}: {types:?}"
        );
    }
    assert_eq!(
        meta["deprecated_fields"],
        serde_json::json!(["s"]),
        "{meta}"
    );

    // A narrowing halts before its transaction; the checkpoint stays before it.
    exec(
        &mut conn,
        &format!("ALTER TABLE {t} MODIFY d SMALLINT NOT NULL DEFAULT 7"),
    )
    .await;
    exec(&mut conn, &format!("INSERT INTO {t} (id) VALUES (8)")).await;
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {db}.t: column `d` changed type from int to smallint; policy verdict `halt` (built-in add-only default: type_changed = \"halt\")")),
        "{text}"
    );
    assert_eq!(read_events(&log).len(), expect, "nothing past the DDL");
    let (code, out, _) = tributary(&["status", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let table = &status["tables"][format!("{db}.t")];
    assert_eq!(table["deprecated"], serde_json::json!(["s"]), "{out}");
    assert!(table["schema_version"].as_u64().unwrap() >= 5, "{out}");
    // The restart resumes at the narrowing: it halts again, the row is still not sent.
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(read_events(&log).len(), expect);
}
