//! `tributary policy diff`: the live schema against the recorded history, each change
//! with the verdict it would get, exit 3 when one would stop the pipeline; read while
//! the daemon runs (it holds the state store) and without touching it.

mod common;

use std::time::Duration;

use common::*;

fn diff(conn: &std::path::Path) -> (i32, String) {
    let (code, out, err) = tributary(&["policy", "diff", "--connector", conn.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pending_migration_gets_its_verdicts() {
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(&client, "pdiff", "id int PRIMARY KEY, v text").await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1, 'a')"))
        .await
        .unwrap();
    wait_for_events(&dir.path().join("log"), 1, Duration::from_secs(30)).await;

    let (code, out) = diff(&conn);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{table}: no change since schema version 1")),
        "{out}"
    );

    // A migration that only adds a column passes.
    client
        .batch_execute(&format!("ALTER TABLE {table} ADD COLUMN note varchar(40)"))
        .await
        .unwrap();
    let (code, out) = diff(&conn);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("column `note` added (character varying(40))"),
        "{out}"
    );
    assert!(out.contains("allow"), "{out}");

    // One that changes a type would halt: exit 3, with the rule.
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN v TYPE integer USING length(v)"
        ))
        .await
        .unwrap();
    let (code, out) = diff(&conn);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("column `v` changed type from text to integer"),
        "{out}"
    );
    assert!(
        out.contains("halt        built-in add-only default"),
        "{out}"
    );

    // The dry run touched nothing: the daemon still streams.
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (2, 5, 'b')"))
        .await
        .unwrap();
    let _ = wait_for_events(&dir.path().join("log"), 2, Duration::from_secs(10)).await;
    assert!(
        daemon.try_wait().unwrap().is_some(),
        "the daemon halts at the type change itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_pending_migration_gets_its_verdicts() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("pdiff");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.t (id BIGINT UNSIGNED PRIMARY KEY, n INT, price DECIMAL(10,2), \
             body MEDIUMTEXT, doc JSON, name VARCHAR(20), created DATETIME(3))"
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.t (id, n) VALUES (1, 1)"),
    )
    .await;
    wait_for_events(&dir.path().join("log"), 1, Duration::from_secs(30)).await;

    // The catalog's names equal the stream's: no change.
    let (code, out) = diff(&c);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{db}.t: no change since schema version 1")),
        "{out}"
    );

    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.t ADD COLUMN extra INT, MODIFY n BIGINT"),
    )
    .await;
    let (code, out) = diff(&c);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("column `n` widened from int to bigint"),
        "{out}"
    );
    assert!(out.contains("column `extra` added (int)"), "{out}");

    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.t DROP COLUMN name, MODIFY price VARCHAR(10)"),
    )
    .await;
    let (code, out) = diff(&c);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("column `price` changed type from decimal(10,2) to varchar(10)"),
        "{out}"
    );
    assert!(out.contains("column `name` dropped"), "{out}");
    assert!(out.contains("deprecate"), "{out}");
    // The daemon halts at the statement itself: it states the new type.
    let text = halted(&c, &mut daemon).await;
    assert!(
        text.contains("column `price` changed type from decimal(10,2) to varchar(10)"),
        "{text}"
    );

    // `policy explain`: the effective rules per included table, with their origin.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[table]]\nmatch = \"{db}.*\"\ncolumn_dropped = \"halt\"\n"),
    )
    .unwrap();
    set_policy(&c, &policy);
    let (code, out, err) = tributary(&["policy", "explain", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{db}.t:")), "{out}");
    assert!(
        out.contains(&format!(
            "column_dropped  halt        {}:3",
            policy.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("column_added    allow       built-in add-only default"),
        "{out}"
    );
    // And the diff now says the drop would halt.
    let (code, out) = diff(&c);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!("halt        {}:3", policy.display())),
        "{out}"
    );
}
