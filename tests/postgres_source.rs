//! The Postgres source end to end against a real PostgreSQL 15: exact values through
//! the daemon, TOAST, kill -9 and server restarts mid-stream, slot safety, bad input.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;

/// Every value in an event equals what the server itself renders for it (`to_json` or
/// `::text`), edge values included; enums, domains and arrays resolve through the
/// catalog; an unknown type passes as text with one warning. tributary creates the
/// publication (it owns the table here) and the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_exactly() {
    use base64::Engine;

    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "vals").await;
    client
        .batch_execute(&format!(
            "CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN {schema}.posint AS integer CHECK (VALUE > 0);"
        ))
        .await
        .unwrap();
    // (column, type, how the server renders the expectation, values for two rows)
    let mood = format!("{schema}.mood");
    let posint = format!("{schema}.posint");
    let mood_arr = format!("{schema}.mood[]");
    let cols: Vec<(&str, &str, &str, &str, &str)> = vec![
        ("i2", "smallint", "json", "-32768", "32767"),
        ("i4", "integer", "json", "-2147483648", "2147483647"),
        (
            "i8",
            "bigint",
            "json",
            "-9223372036854775808",
            "9223372036854775807",
        ),
        (
            "n",
            "numeric",
            "text",
            "'NaN'",
            "'-123456789012345678901234567890.000000000000000000001'",
        ),
        ("ni", "numeric(10,2)", "text", "-99999999.99", "0.5"),
        ("nx", "numeric", "text", "'-Infinity'", "'Infinity'"),
        ("f4", "real", "json", "'Infinity'", "3.14"),
        (
            "f8",
            "double precision",
            "json",
            "'NaN'",
            "1.7976931348623157e308",
        ),
        ("b", "boolean", "json", "true", "false"),
        (
            "t",
            "text",
            "json",
            "''",
            "E'multi\\nline \\\"quoted\\\" ünïcode 😀'",
        ),
        ("vc", "varchar(10)", "json", "'short'", "NULL"),
        ("ch", "char(4)", "json", "'ab'", "'abcd'"),
        ("by", "bytea", "hex", "'\\x'", "'\\x00ff10'"),
        ("d", "date", "text", "'2024-02-29'", "'infinity'"),
        ("tm", "time", "text", "'00:00:00'", "'23:59:59.999999'"),
        ("tz", "timetz", "text", "'12:00:00+05:30'", "'00:00:00-08'"),
        (
            "ts",
            "timestamp",
            "json",
            "'2024-02-29 12:34:56.78'",
            "'1970-01-01 00:00:00'",
        ),
        (
            "tstz",
            "timestamptz",
            "tsz",
            "'2024-02-29 12:34:56.789+05:30'",
            "'2038-01-19 03:14:07.999999+00'",
        ),
        (
            "iv",
            "interval",
            "text",
            "'1 year 2 mons 3 days 04:05:06.7'",
            "'-1 day'",
        ),
        (
            "u",
            "uuid",
            "text",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "NULL",
        ),
        ("j", "json", "json", "'{\"a\": [1, 2.50]}'", "'null'"),
        (
            "jb",
            "jsonb",
            "json",
            "'{\"b\": {\"c\": true}, \"a\": 1}'",
            "'[]'",
        ),
        ("ip", "inet", "json", "'192.168.0.1/24'", "'::1'"),
        ("ci", "cidr", "json", "'10.0.0.0/8'", "'2001:db8::/32'"),
        ("mac", "macaddr", "text", "'08:00:2b:01:02:03'", "NULL"),
        ("ai", "integer[]", "json", "'{1,NULL,-3}'", "'{}'"),
        (
            "at",
            "text[]",
            "json",
            "'{a,\"b,c\",NULL,\"NULL\"}'",
            "NULL",
        ),
        ("e", &mood, "json", "'happy'", "'sad'"),
        ("ea", &mood_arr, "json", "'{ok,happy}'", "NULL"),
        ("dm", &posint, "json", "2147483647", "1"),
        ("pt", "point", "text", "'(1.5,-2)'", "NULL"),
    ];
    let ddl: Vec<String> = cols.iter().map(|(n, t, ..)| format!("{n} {t}")).collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.vals (id int PRIMARY KEY, {});
             ALTER TABLE {schema}.vals OWNER TO tributary;",
            ddl.join(", ")
        ))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.vals"), "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    for (id, pick) in [(1, 3usize), (2, 4usize)] {
        let vals: Vec<&str> = cols
            .iter()
            .map(|c| if pick == 3 { c.3 } else { c.4 })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO {schema}.vals VALUES ({id}, {})",
                vals.join(", ")
            ))
            .await
            .unwrap();
    }
    let log = dir.path().join("log");
    assert_eq!(
        wait_for_events(&log, 2, Duration::from_secs(30)).await,
        2,
        "{}",
        daemon_log(&conn)
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));

    // tributary made the publication with exactly the included table.
    let published: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, vec![format!("{schema}.vals")]);

    let events = read_events(&log);
    for e in &events {
        assert_eq!(e["op"], "c");
        let id = e["after"]["id"].as_i64().unwrap() as i32;
        for (name, ty, how, ..) in &cols {
            let got = e["after"][*name].clone();
            let expr = match *how {
                "json" => format!("to_json({name})::text"),
                "text" => format!("to_json({name}::text)::text"),
                "hex" => format!("to_json(encode({name}, 'hex'))::text"),
                "tsz" => format!("to_json(to_char({name} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'))::text"),
                _ => unreachable!(),
            };
            let want: Option<String> = client
                .query_one(
                    &format!("SELECT {expr} FROM {schema}.vals WHERE id = $1"),
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            let want: Json = want
                .map(|w| serde_json::from_str(&w).unwrap())
                .unwrap_or(Json::Null);
            let ctx = format!("row {id} column {name} ({ty}): event {got} vs server {want}");
            match *how {
                _ if got.is_null() || want.is_null() => assert_eq!(got, want, "{ctx}"),
                "hex" => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(got.as_str().unwrap())
                        .unwrap();
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    assert_eq!(Json::String(hex), want, "{ctx}");
                }
                "tsz" => {
                    let g = got.as_str().unwrap();
                    assert!(g.ends_with('Z'), "{ctx}");
                    let g = g.trim_end_matches('Z');
                    let (secs, frac) = g.split_once('.').unwrap_or((g, ""));
                    assert_eq!(
                        format!("{secs}.{frac:0<6}"),
                        want.as_str().unwrap(),
                        "{ctx}"
                    );
                }
                _ if *ty == "real" => match (got.as_f64(), want.as_f64()) {
                    (Some(g), Some(w)) => assert_eq!(g as f32, w as f32, "{ctx}"),
                    _ => assert_eq!(got, want, "{ctx}"),
                },
                _ => assert_eq!(got, want, "{ctx}"),
            }
        }
    }
    let text = daemon_log(&conn);
    assert_eq!(
        text.matches("unknown type: passed as its text form")
            .count(),
        1,
        "one warning for the point column:\n{text}"
    );
    assert!(text.contains("column=pt"), "{text}");
}

/// A 1 MB TOASTed column left alone by an update arrives as unchanged: named in
/// `unchanged`, absent from `after`, never null. With REPLICA IDENTITY FULL the before
/// image carries it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_marked_not_nulled() {
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "toast").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE {schema}.docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE PUBLICATION {schema} FOR TABLE {schema}.docs;"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.*"), "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    let big: String = (0..(1 << 20))
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    client
        .execute(
            &format!("INSERT INTO {schema}.docs VALUES (1, 'first', $1)"),
            &[&big],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "UPDATE {schema}.docs SET title = 'second' WHERE id = 1;
             ALTER TABLE {schema}.docs REPLICA IDENTITY FULL;"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "UPDATE {schema}.docs SET title = 'third' WHERE id = 1"
        ))
        .await
        .unwrap();
    let log = dir.path().join("log");
    assert_eq!(
        wait_for_events(&log, 3, Duration::from_secs(30)).await,
        3,
        "{}",
        daemon_log(&conn)
    );
    assert_eq!(stop(&mut daemon), 0);
    let ev = read_events(&log);
    assert_eq!(ev[0]["after"]["body"].as_str().unwrap().len(), 1 << 20);
    for (e, title) in [(&ev[1], "second"), (&ev[2], "third")] {
        assert_eq!(e["op"], "u");
        assert_eq!(e["after"]["title"], title);
        assert!(
            e["after"].get("body").is_none(),
            "no placeholder, no null: {}",
            e["after"]
        );
        assert_eq!(e["unchanged"], serde_json::json!(["body"]));
    }
    // DEFAULT identity: the key only; FULL: the whole old row, body included.
    assert_eq!(ev[1]["before"], serde_json::json!({"id": 1}));
    assert_eq!(ev[2]["before"]["body"].as_str().unwrap(), big);
    assert_eq!(ev[2]["before"]["title"], "second");
}

/// Transactions of 1 to 2,000 rows on one connection: inserts, updates, deletes, and a
/// truncate now and then. Returns the number of row changes (a truncate counts one).
async fn workload(port: u16, table: String, start_id: i64, rows: i64, pause: Duration) -> u64 {
    let mut client = pg_admin(port).await;
    // Commits return once the WAL is flushed, so a restarted server loses none.
    let sizes = [1i64, 7, 50, 500, 2000, 3, 120];
    let (mut changes, mut next, mut k) = (0u64, start_id, 0usize);
    let end = start_id + rows;
    while next < end {
        let n = sizes[k % sizes.len()].min(end - next);
        k += 1;
        while client.simple_query("SELECT 1").await.is_err() {
            // The server restarted under us: a new session.
            tokio::time::sleep(Duration::from_millis(300)).await;
            client = pg_admin(port).await;
        }
        let tx = client.transaction().await.unwrap();
        changes += tx
            .execute(
                &format!("INSERT INTO {table} SELECT i, i, repeat('p', (i % 50)::int) FROM generate_series($1::int8, $2::int8) i"),
                &[&next, &(next + n - 1)],
            )
            .await
            .unwrap();
        if k % 3 == 0 {
            changes += tx
                .execute(
                    &format!("UPDATE {table} SET v = v + 1 WHERE id BETWEEN $1 AND $2"),
                    &[&next, &(next + n / 2)],
                )
                .await
                .unwrap();
            let lo = (next - 3000).max(start_id);
            changes += tx
                .execute(
                    &format!("UPDATE {table} SET v = v * 2, pad = 'u' WHERE id BETWEEN $1 AND $2"),
                    &[&lo, &(lo + 40)],
                )
                .await
                .unwrap();
        }
        if k % 5 == 0 {
            let lo = (next - 1500).max(start_id);
            changes += tx
                .execute(
                    &format!("DELETE FROM {table} WHERE id BETWEEN $1 AND $2"),
                    &[&lo, &(lo + 25)],
                )
                .await
                .unwrap();
        }
        if k % 97 == 0 {
            tx.batch_execute(&format!("TRUNCATE {table}"))
                .await
                .unwrap();
            changes += 1;
        }
        tx.commit().await.unwrap();
        next += n;
        tokio::time::sleep(pause).await;
    }
    changes
}

async fn source_rows(port: u16, table: &str) -> BTreeMap<i64, (i64, String)> {
    let client = pg_admin(port).await;
    client
        .query(&format!("SELECT id, v, pad FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// The log against the source: every change once, in commit order, and replaying it
/// gives the table.
fn verify_log(log: &Path, expected: u64, source: &BTreeMap<i64, (i64, String)>, ctx: &str) {
    let events = read_events(log);
    let mut state: BTreeMap<i64, (i64, String)> = BTreeMap::new();
    let mut last = (0u64, 0u64);
    for (i, e) in events.iter().enumerate() {
        // Versions (commit LSNs) follow commit order, and the changes of one
        // transaction share one, in LSN order.
        let v = (
            e["version"].as_u64().unwrap(),
            tributary::event::parse_lsn(e["source"]["pos"]["lsn"].as_str().unwrap()).unwrap(),
        );
        assert!(
            v > last,
            "event {i} repeats or goes back ((version, lsn) {v:?} after {last:?}): {e}\n{ctx}"
        );
        last = v;
        match e["op"].as_str().unwrap() {
            "c" | "u" => {
                let a = &e["after"];
                state.insert(
                    a["id"].as_i64().unwrap(),
                    (
                        a["v"].as_i64().unwrap(),
                        a["pad"].as_str().unwrap().to_string(),
                    ),
                );
            }
            "d" => {
                let id = e["before"]["id"].as_i64().unwrap();
                assert!(
                    state.remove(&id).is_some(),
                    "delete of a row never inserted: {e}"
                );
            }
            "t" => state.clear(),
            other => panic!("unexpected op {other}"),
        }
    }
    assert_eq!(
        events.len() as u64,
        expected,
        "every change exactly once\n{ctx}"
    );
    assert!(
        state == *source,
        "replaying the log gives the source table ({} vs {} rows)\n{ctx}",
        state.len(),
        source.len()
    );
}

async fn work_table(client: &tokio_postgres::Client, prefix: &str) -> (String, String) {
    let schema = pg_schema(client, prefix).await;
    let table = format!("{schema}.w");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, v bigint NOT NULL, pad text NOT NULL);
             CREATE PUBLICATION {schema} FOR TABLE {table};"
        ))
        .await
        .unwrap();
    (schema, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_100k_change_workload_loses_and_repeats_nothing() {
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = work_table(&client, "crash").await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;

    let writer = tokio::spawn(workload(
        PG_PORT,
        table.clone(),
        1,
        88_000,
        Duration::from_millis(20),
    ));
    let (mut daemon, kills) = kill_9_repeatedly(&writer, daemon, &conn, 700).await;
    let changes = writer.await.unwrap();
    assert!(changes >= 100_000, "workload made {changes} changes");
    assert!(kills >= 3, "the daemon was killed only {kills} times");
    let log = dir.path().join("log");
    let got = wait_for_events(&log, changes as usize, Duration::from_secs(180)).await;
    assert_eq!(stop(&mut daemon), 0, "clean stop\n{}", daemon_log(&conn));
    assert_eq!(got as u64, changes, "{}", daemon_log(&conn));
    let ctx = format!("{kills} kills; daemon log:\n{}", daemon_log(&conn));
    verify_log(&log, changes, &source_rows(PG_PORT, &table).await, &ctx);
}

/// The server the restart test restarts.
const RESTART_PORT: u16 = 25372;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_loses_nothing_and_the_slot_never_passes_the_checkpoint() {
    let client = pg_admin(RESTART_PORT).await;
    let (schema, table) = work_table(&client, "restart").await;
    drop(client);
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), RESTART_PORT, &schema, &table, "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;

    // Watch the slot: its confirmed position may never pass the stored checkpoint.
    let state = dir.path().join("state");
    let slot = schema.clone();
    let watcher = tokio::spawn(async move {
        let mut samples = 0u32;
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Ok((c, conn)) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={RESTART_PORT} user=admin password=admin dbname=app"),
                tokio_postgres::NoTls,
            )
            .await
            {
                tokio::spawn(conn);
                while let Ok(Some(row)) = c
                    .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                    .await
                {
                    let confirmed = row.get::<_, Option<String>>(0).and_then(|s| tributary::event::parse_lsn(&s));
                    // Read after the slot: the checkpoint only grows.
                    let checkpoint = checkpoint_lsn(&state);
                    if let (Some(cf), Some(cp)) = (confirmed, checkpoint) {
                        assert!(cf <= cp, "slot confirmed {cf:X} past the checkpoint {cp:X}");
                        samples += 1;
                    }
                    if std::fs::exists(state.join("stop-watch")).unwrap_or(false) {
                        return samples;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples
    });

    let first = workload(RESTART_PORT, table.clone(), 1, 30_000, Duration::ZERO).await;
    pg_deploy(RESTART_PORT, "stop", "");
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg_deploy(RESTART_PORT, "start", "");
    let second = workload(
        RESTART_PORT,
        table.clone(),
        1_000_000,
        20_000,
        Duration::ZERO,
    )
    .await;

    let log = dir.path().join("log");
    let got = wait_for_events(&log, (first + second) as usize, Duration::from_secs(120)).await;
    // Let a few idle checkpoints and status updates pass under the watcher.
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::write(dir.path().join("state/stop-watch"), "").unwrap();
    let samples = watcher.await.expect("the slot never passed the checkpoint");
    assert!(samples > 10, "only {samples} samples of the slot");
    assert_eq!(stop(&mut daemon), 0, "clean stop\n{}", daemon_log(&conn));
    let text = daemon_log(&conn);
    assert!(
        text.contains("reconnecting"),
        "the daemon noticed the restart:\n{text}"
    );
    assert_eq!(got as u64, first + second, "{text}");
    verify_log(
        &log,
        first + second,
        &source_rows(RESTART_PORT, &table).await,
        &text,
    );

    // After a clean stop the slot is confirmed exactly at the final checkpoint, so
    // the server keeps no WAL tributary already has.
    let client = pg_admin(RESTART_PORT).await;
    let confirmed = confirmed_flush(&client, &schema).await.unwrap();
    assert!(confirmed <= checkpoint_lsn(&dir.path().join("state")).unwrap());
}

fn checkpoint_lsn(state: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(state.join("status.json")).ok()?;
    let v: Json = serde_json::from_str(&text).ok()?;
    tributary::event::parse_lsn(v["checkpoint"]["position"]["lsn"].as_str()?)
}

/// `status` shows the slot and `slot drop` removes it; a restart without it is a
/// clear error instead of a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_slot_drop() {
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = work_table(&client, "slot").await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let path = conn.to_str().unwrap();
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1, 1, 'a')"))
        .await
        .unwrap();
    wait_for_events(&dir.path().join("log"), 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out, err) = tributary(&["status", "--connector", path]);
    assert_eq!(code, 0, "{err}");
    let status: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(status["running"], true, "{out}");
    assert_eq!(status["slot"]["exists"], true, "{out}");
    assert!(status["slot"]["active_pid"].is_number(), "{out}");
    assert!(status["slot"]["retained_wal_bytes"].is_number(), "{out}");
    assert!(status["checkpoint"]["position"]["lsn"].is_string(), "{out}");

    // Dropping a slot in use is refused.
    let (code, _, err) = tributary(&["slot", "drop", "--connector", path]);
    assert_ne!(code, 0);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(stop(&mut daemon), 0);
    let (code, out, err) = tributary(&["slot", "drop", "--connector", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dropped slot"), "{out}");
    assert_eq!(confirmed_flush(&client, &schema).await, None);

    // The checkpoint now points into a stream that is gone.
    let mut daemon = spawn_daemon(&conn);
    let status = daemon.wait().unwrap();
    assert!(!status.success());
    let text = daemon_log(&conn);
    assert!(
        text.contains("does not exist but tributary has a checkpoint"),
        "{text}"
    );
}

/// Runs the daemon on a connector that must be refused: non-zero exit, the message,
/// and nothing created (no state dir, no slot, no publication).
async fn refused(client: &tokio_postgres::Client, conn: &Path, name: &str, expect: &str) -> String {
    let (code, _, err) = tributary(&["run", "--connector", conn.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(expect), "expected `{expect}` in:\n{err}");
    assert!(
        !conn.parent().unwrap().join("state").exists(),
        "state dir left behind"
    );
    let publications: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0, "a publication was created");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_clear_message_and_creates_nothing() {
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "bad").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.t (id int PRIMARY KEY);
             ALTER TABLE {schema}.t OWNER TO tributary;
             CREATE ROLE {schema}_r LOGIN PASSWORD 'norepl';
             GRANT USAGE ON SCHEMA {schema} TO {schema}_r;
             GRANT SELECT ON {schema}.t TO {schema}_r;"
        ))
        .await
        .unwrap();
    let table = format!("{schema}.t");

    // A missing table.
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.nope"), "");
    refused(
        &client,
        &conn,
        &schema,
        &format!("included table `{schema}.nope` does not exist"),
    )
    .await;
    assert_eq!(confirmed_flush(&client, &schema).await, None, "no slot");

    // No REPLICATION attribute.
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let text = std::fs::read_to_string(&conn)
        .unwrap()
        .replace("user = \"tributary\"", &format!("user = \"{schema}_r\""))
        .replace("password = \"tributary\"", "password = \"norepl\"");
    std::fs::write(&conn, text).unwrap();
    refused(
        &client,
        &conn,
        &schema,
        &format!("lacks the REPLICATION attribute: run ALTER ROLE \"{schema}_r\" REPLICATION;"),
    )
    .await;

    // The slot exists but belongs to another plugin.
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{schema}', 'test_decoding')"
        ))
        .await
        .unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    refused(&client, &conn, &schema, "uses plugin `test_decoding`").await;
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{schema}')"))
        .await
        .unwrap();

    // Malformed connector files: file:line:column, exit code 2.
    for (bad, expect) in [
        ("slot = \"Bad-Slot\"", "must be 1-63 lower-case letters"),
        ("sslmode = \"sometimes\"", "unknown variant `sometimes`"),
        ("slott = \"x\"", "unknown field `slott`"),
    ] {
        let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
        let mut text = std::fs::read_to_string(&conn).unwrap();
        if bad.starts_with("slot =") {
            text = text.replace(&format!("slot = \"{schema}\""), bad);
        } else if bad.starts_with("sslmode") {
            text = text.replace("sslmode = \"disable\"", bad);
        } else {
            text = text.replace(
                "status_interval_secs = 1",
                &format!("status_interval_secs = 1\n{bad}"),
            );
        }
        std::fs::write(&conn, text).unwrap();
        let (code, _, err) = tributary(&["run", "--connector", conn.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(expect) && err.contains("connector.toml:"),
            "{bad}: {err}"
        );
    }
    assert_eq!(confirmed_flush(&client, &schema).await, None, "no slot");
}

/// The server the wal_level test starts with wal_level=replica.
const REPLICA_PORT: u16 = 25373;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical_is_refused() {
    postgres(REPLICA_PORT, "-c wal_level=replica");
    let client = pg_admin(REPLICA_PORT).await;
    let schema = pg_schema(&client, "wal").await;
    client
        .batch_execute(&format!("CREATE TABLE {schema}.t (id int PRIMARY KEY); ALTER TABLE {schema}.t OWNER TO tributary;"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(
        dir.path(),
        REPLICA_PORT,
        &schema,
        &format!("{schema}.t"),
        "",
    );
    let err = refused(
        &client,
        &conn,
        &schema,
        "wal_level is `replica`, logical replication needs `logical`",
    )
    .await;
    assert!(
        err.contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
    // `check` names the same problem and exits non-zero.
    let (code, out, _) = tributary(&["check", "--connector", conn.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("wal_level is `replica`"), "{out}");
}

/// Elasticsearch keeps a 1 MB TOASTed column across updates of another column: merged
/// from the stored document (REPLICA IDENTITY DEFAULT, via _mget) and from the before
/// image (FULL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_keeps_unchanged_toast_columns() {
    let url = elasticsearch();
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "estoast").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE {schema}.docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE TABLE {schema}.full_docs (id int PRIMARY KEY, title text, body text);
             ALTER TABLE {schema}.full_docs ALTER COLUMN body SET STORAGE EXTERNAL;
             ALTER TABLE {schema}.full_docs REPLICA IDENTITY FULL;
             CREATE PUBLICATION {schema} FOR TABLE {schema}.docs, {schema}.full_docs;"
        ))
        .await
        .unwrap();
    // Streaming only: the test counts the streamed events.
    let (dir, conn, mut daemon) = stream_schema_to_elasticsearch(&schema, &url).await;
    let big: String = (0..(1 << 20))
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect();
    for t in ["docs", "full_docs"] {
        client
            .execute(
                &format!("INSERT INTO {schema}.{t} VALUES (1, 'first', $1), (2, 'other', 'small')"),
                &[&big],
            )
            .await
            .unwrap();
        // Separate transactions, and one where insert and update share a bulk request.
        client
            .batch_execute(&format!(
                "UPDATE {schema}.{t} SET title = 'second' WHERE id = 1"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "UPDATE {schema}.{t} SET title = 'third' WHERE id = 1; UPDATE {schema}.{t} SET title = 'x' WHERE id = 2"
            ))
            .await
            .unwrap();
    }
    let log = dir.path().join("log");
    assert_eq!(
        wait_for_events(&log, 10, Duration::from_secs(60)).await,
        10,
        "{}",
        daemon_log(&conn)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
    for t in ["docs", "full_docs"] {
        let docs = es_documents(&url, &format!("{schema}_{t}")).await;
        assert_eq!(docs.len(), 2, "{t}: {docs:?}");
        let d1 = &docs["1"];
        assert_eq!(d1["title"], "third", "{t}");
        assert_eq!(
            d1["body"].as_str().map(str::len),
            Some(1 << 20),
            "{t}: the body survived"
        );
        assert!(
            d1["body"].as_str().unwrap() == big,
            "{t}: the body is exact"
        );
        assert_eq!(
            docs["2"],
            serde_json::json!({"id": 2, "title": "x", "body": "small"}),
            "{t}"
        );
    }
    assert!(
        read_events(&dir.path().join("dead-letters")).is_empty(),
        "no dead letters"
    );
}

/// TRUNCATE empties the index behind the alias (a new concrete index swapped in), and
/// rows written after it are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_follows_truncate() {
    let url = elasticsearch();
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = work_table(&client, "estrunc").await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    add_es_sink(&conn, &url, "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT i, i, 'a' FROM generate_series(1, 50) i;
             TRUNCATE {table};
             INSERT INTO {table} VALUES (7, 70, 'after');"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (8, 80, 'later')"))
        .await
        .unwrap();
    wait_for_events(&dir.path().join("log"), 53, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
    let docs = es_documents(&url, &format!("{schema}_w")).await;
    assert_eq!(
        docs.keys().cloned().collect::<Vec<_>>(),
        vec!["7", "8"],
        "{docs:?}"
    );
    assert_eq!(docs["7"]["pad"], "after");
}

/// The server the TLS test starts with ssl=on and a certificate from its own test CA.
const TLS_PORT: u16 = 25374;

/// A test CA, a server certificate it signed for 127.0.0.1 and localhost, and an
/// unrelated CA, made once per server (they live as long as it does).
fn tls_certificates() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(format!("/tmp/tributary-postgres-{TLS_PORT}-certs"));
    test_ca(&dir, "IP:127.0.0.1,DNS:localhost", "postgres", "pgcert");
    dir
}

/// Both connections (catalog queries and the replication stream) are encrypted in
/// every sslmode but disable; verify-full accepts the server's certificate through
/// sslrootcert and refuses one from another CA with a message naming the settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_encrypts_both_connections_and_verifies_the_server() {
    let certs = tls_server();
    let client = pg_admin(TLS_PORT).await;
    let (schema, table) = work_table(&client, "tls").await;
    let dir = tempfile::tempdir().unwrap();
    let with_mode = |mode: &str| {
        let conn = pg_connector(dir.path(), TLS_PORT, &schema, &table, "");
        let text = std::fs::read_to_string(&conn)
            .unwrap()
            .replace("sslmode = \"disable\"", mode);
        std::fs::write(&conn, text).unwrap();
        conn
    };

    // Another CA: refused before anything is created.
    let conn = with_mode(&format!(
        "sslmode = \"verify-full\"\nsslrootcert = \"{}/other.pem\"",
        certs.display()
    ));
    let (code, out, err) = tributary(&["check", "--connector", conn.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("sslrootcert"), "{text}");
    assert_eq!(confirmed_flush(&client, &schema).await, None, "no slot");

    // sslmode = require encrypts without a CA.
    let conn = with_mode("sslmode = \"require\"");
    let (code, out, err) = tributary(&["check", "--connector", conn.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // verify-full with the right CA streams, and the server sees both sessions on TLS.
    let conn = with_mode(&format!(
        "sslmode = \"verify-full\"\nsslrootcert = \"{}/ca.pem\"",
        certs.display()
    ));
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT i, i, 'x' FROM generate_series(1, 50) i"
        ))
        .await
        .unwrap();
    assert_eq!(
        wait_for_events(&dir.path().join("log"), 50, Duration::from_secs(30)).await,
        50
    );
    let sessions: Vec<(String, bool)> = client
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = 'tributary'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        sessions.iter().any(|(t, _)| t == "walsender"),
        "{sessions:?}"
    );
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
}

/// The schema guard on a live stream: an added column passes (add-only), a type
/// change halts before the change (non-zero exit naming table, change and rule; nothing
/// of it checkpointed), and after the policy allows it a restart resumes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_guard_allows_additions_and_halts_at_a_type_change() {
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(&client, "guard", "id int PRIMARY KEY, v text").await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, 'one');
             ALTER TABLE {table} ADD COLUMN note text;
             INSERT INTO {table} VALUES (2, 'two', 'added');"
        ))
        .await
        .unwrap();
    assert_eq!(wait_for_events(&log, 2, Duration::from_secs(30)).await, 2);
    let events = read_events(&log);
    assert_eq!(events[1]["after"]["note"], "added", "{:?}", events[1]);

    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN v TYPE integer USING length(v);
             INSERT INTO {table} VALUES (3, 33, 'after the type change');"
        ))
        .await
        .unwrap();
    let text = halted(&conn, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {table}: column `v` changed type from text to integer; policy verdict `halt` (built-in add-only default: type_changed = \"halt\")")),
        "{text}"
    );
    let events = read_events(&log);
    assert_eq!(
        events.len(),
        2,
        "nothing of the halted change reached the sink"
    );
    let halted_at = checkpoint_lsn(&dir.path().join("state")).unwrap();
    let row3_lsn = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(halted_at < tributary::event::parse_lsn(&row3_lsn).unwrap());

    // Still halted on a restart with the same policy.
    let (code, _, err) = tributary(&["run", "--connector", conn.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("changed type from text to integer"), "{err}");

    // The operator allows type changes for this table: it resumes at the change.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[table]]\nmatch = \"{table}\"\ntype_changed = \"allow\"\n"),
    )
    .unwrap();
    set_policy(&conn, &policy);
    let mut daemon = spawn_daemon(&conn);
    assert_eq!(wait_for_events(&log, 3, Duration::from_secs(30)).await, 3);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
    let events = read_events(&log);
    assert_eq!(events[2]["after"]["v"], 33, "{:?}", events[2]);
    assert_eq!(events[2]["after"]["id"], 3);
    // The allowing rule is named by file and line.
    assert!(
        daemon_log(&conn).contains(&format!("{}:3", policy.display())),
        "{}",
        daemon_log(&conn)
    );
}

/// SIGHUP reloads the policy file without a restart; a broken edit is refused with its
/// file:line and the previous policy stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(&client, "hup", "id int PRIMARY KEY, v text").await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[rules]\ncolumn_added = \"halt\"\n").unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    set_policy(&conn, &policy);
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1, 'a')"))
        .await
        .unwrap();
    let log = dir.path().join("log");
    assert_eq!(wait_for_events(&log, 1, Duration::from_secs(30)).await, 1);

    let pid = daemon.id().to_string();
    let hup = || {
        let out = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    let wait_log = |needle: String| {
        let conn = conn.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !daemon_log(&conn).contains(&needle) {
                assert!(
                    Instant::now() < deadline,
                    "no `{needle}` in:\n{}",
                    daemon_log(&conn)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // A broken edit: refused, named, the old policy stays.
    std::fs::write(&policy, "[rules]\ncolumn_added = \"maybe\"\n").unwrap();
    hup();
    wait_log(format!("{}:2:16", policy.display())).await;
    assert!(daemon.try_wait().unwrap().is_none(), "still running");
    // The fixed edit allows additions from now on.
    std::fs::write(&policy, "[rules]\ncolumn_added = \"allow\"\n").unwrap();
    hup();
    wait_log("schema policy reloaded".into()).await;
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ADD COLUMN note text; INSERT INTO {table} VALUES (2, 'b', 'new')"
        ))
        .await
        .unwrap();
    assert_eq!(wait_for_events(&log, 2, Duration::from_secs(30)).await, 2);
    assert_eq!(read_events(&log)[1]["after"]["note"], "new");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
}

/// DDL inside a transaction with row changes: a halting change stops before the whole
/// transaction (its rows before the DDL too); a dropped column is deprecated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_guard_cuts_at_the_transaction_of_a_mid_transaction_ddl() {
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(&client, "txddl", "id int PRIMARY KEY, v text, old text").await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    // A dropped column: deprecated under add-only, the stream goes on.
    client
        .batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, 'a', 'x');
             ALTER TABLE {table} DROP COLUMN old;
             INSERT INTO {table} VALUES (2, 'b');"
        ))
        .await
        .unwrap();
    assert_eq!(wait_for_events(&log, 2, Duration::from_secs(30)).await, 2);
    // One transaction: a row, a type change, a row. Nothing of it may pass.
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO {table} VALUES (3, 'c');
             ALTER TABLE {table} ALTER COLUMN v TYPE integer USING length(v);
             INSERT INTO {table} VALUES (4, 4);
             COMMIT;"
        ))
        .await
        .unwrap();
    let text = halted(&conn, &mut daemon).await;
    assert!(
        text.contains("column `v` changed type from text to integer"),
        "{text}"
    );
    assert!(text.contains("column `old` dropped"), "{text}");
    let ids: Vec<i64> = read_events(&log)
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [1, 2],
        "no row of the halted transaction is in the log"
    );
    let (code, out, _) = tributary(&["status", "--connector", conn.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let status: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["tables"][&table]["deprecated"],
        serde_json::json!(["old"]),
        "{out}"
    );
}

/// A `quarantine` verdict sets one table aside while the others keep flowing; replay
/// refuses while the daemon runs and while the policy still quarantines, then sends the
/// table's changes on after the policy is edited. The replayed documents equal those a
/// twin table got live (same ids, same values, types included), and after a restart
/// the released table flows straight on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_sets_a_table_aside_and_replay_sends_it_on() {
    let url = elasticsearch();
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "quar").await;
    let cols = "d date, n numeric(10,2), f double precision, at timestamptz, raw bytea, v text, PRIMARY KEY (d, n)";
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.a ({cols}); CREATE TABLE {schema}.b ({cols});
             CREATE PUBLICATION {schema} FOR TABLE {schema}.a, {schema}.b;"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &format!("{schema}.*"), "");
    add_es_sink(&conn, &url, "");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[table]]\nmatch = \"{schema}.a\"\ncolumn_added = \"quarantine\"\n"),
    )
    .unwrap();
    set_policy(&conn, &policy);
    let c = conn.to_str().unwrap();
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    // The same statements on both tables.
    let both = |sql: &str| {
        format!(
            "{};{}",
            sql.replace("$T", &format!("{schema}.a")),
            sql.replace("$T", &format!("{schema}.b"))
        )
    };
    let rows = "INSERT INTO $T SELECT DATE '2024-02-01' + i, i / 3.0, i * 0.1, TIMESTAMPTZ '2024-02-29 23:59:59.123456+00' + i * INTERVAL '1 hour', decode('00ff' || lpad(to_hex(i), 2, '0'), 'hex'), 'row ' || i FROM generate_series(1, 3) i";
    client.batch_execute(&both(rows)).await.unwrap();
    wait_documents(&url, &format!("{schema}_a"), 3).await;
    wait_documents(&url, &format!("{schema}_b"), 3).await;

    // The migration: `a` is quarantined, `b` allows it; later changes on both.
    client
        .batch_execute(&both("ALTER TABLE $T ADD COLUMN extra int"))
        .await
        .unwrap();
    client
        .batch_execute(&both(
            "INSERT INTO $T SELECT DATE '2024-03-01' + i, i, i * 1.5, NULL, NULL, 'later', i * 10 FROM generate_series(4, 6) i;
             UPDATE $T SET v = 'changed', extra = -1 WHERE v = 'row 1';
             DELETE FROM $T WHERE v = 'row 2'",
        ))
        .await
        .unwrap();
    let b = wait_documents(&url, &format!("{schema}_b"), 5).await;
    assert_eq!(b.len(), 5, "{b:?}");
    assert!(
        b.values().any(|d| d["v"] == "changed" && d["extra"] == -1),
        "{b:?}\n{}",
        daemon_log(&conn)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = es_documents(&url, &format!("{schema}_a")).await;
    assert_eq!(
        a.len(),
        3,
        "nothing of the quarantined table went on: {a:?}"
    );
    assert!(a.values().all(|d| d.get("extra").is_none()), "{a:?}");

    let (code, out, _) = tributary(&["status", "--connector", c]);
    assert_eq!(code, 0);
    let status: Json = serde_json::from_str(&out).unwrap();
    let q = &status["tables"][format!("{schema}.a")]["quarantined"];
    assert_eq!(
        q["changes"],
        serde_json::json!(["column `extra` added (integer)"]),
        "{status}"
    );
    assert_eq!(q["rule"], format!("{}:3", policy.display()), "{status}");
    assert!(status["tables"][format!("{schema}.b")]
        .get("quarantined")
        .is_none());

    // Replay needs the daemon stopped.
    let (code, _, err) = tributary(&["quarantine", "replay", "--connector", c]);
    assert_ne!(code, 0);
    assert!(
        err.contains("is running") && err.contains("stop it first"),
        "{err}"
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));

    // The policy still quarantines: nothing is sent.
    let (code, _, err) = tributary(&["quarantine", "replay", "--connector", c]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "the policy still quarantines {schema}.a: column `extra` added (integer)"
        )) && err.contains("nothing was sent"),
        "{err}"
    );
    assert_eq!(es_documents(&url, &format!("{schema}_a")).await.len(), 3);

    // Allowed now: the replay sends the quarantined changes on.
    std::fs::write(&policy, "[rules]\ncolumn_added = \"allow\"\n").unwrap();
    let (code, out, err) = tributary(&["quarantine", "replay", "--connector", c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{schema}.a: 5 change(s) replayed; released")),
        "{out}"
    );
    let a = es_documents(&url, &format!("{schema}_a")).await;
    let b = es_documents(&url, &format!("{schema}_b")).await;
    assert_eq!(a, b, "replayed documents equal the live ones");
    let (a_types, _) = mapping_of(&url, &format!("{schema}_a")).await;
    let (b_types, _) = mapping_of(&url, &format!("{schema}_b")).await;
    assert!(a_types.contains_key("extra"), "{a_types:?}");
    assert_eq!(a_types, b_types, "the mapping gained the field as live");
    let (code, out, _) = tributary(&["quarantine", "replay", "--connector", c]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing is quarantined"), "{out}");
    let (_, records, _) = tributary(&[
        "log",
        "cat",
        dir.path().join("state/quarantine").to_str().unwrap(),
    ]);
    assert_eq!(
        records.trim(),
        "",
        "the stream is emptied once nothing waits"
    );

    // Restarted, the released table flows straight on.
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    client
        .batch_execute(&both("UPDATE $T SET extra = 7 WHERE v = 'row 3'"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = es_documents(&url, &format!("{schema}_a")).await;
        if a.values().any(|d| d["extra"] == 7) {
            break;
        }
        assert!(Instant::now() < deadline, "{a:?}\n{}", daemon_log(&conn));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
    let (_, out, _) = tributary(&["status", "--connector", c]);
    assert!(!out.contains("quarantined"), "{out}");
}

/// The add-only default on Postgres through a migration: a column added with a
/// default, two widenings, a dropped column (deprecated: it runs on), then a rename,
/// which Postgres shows as a drop and an add of the same type (a possible rename) and
/// add-only halts; after `column_renamed = "deprecate"` it resumes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_only_default_through_a_migration() {
    let url = elasticsearch();
    let client = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(
        &client,
        "matrix",
        "id int PRIMARY KEY, a int, f real, s text",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    add_es_sink(&conn, &url, "");
    let c = conn.to_str().unwrap();
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    let steps = [
        ("", "INSERT INTO $T (id, a, f, s) VALUES (1, 1, 0.5, 'one')"),
        (
            "ALTER TABLE $T ADD COLUMN d int NOT NULL DEFAULT 7",
            "INSERT INTO $T (id) VALUES (2)",
        ),
        (
            "ALTER TABLE $T ALTER COLUMN a TYPE bigint",
            "INSERT INTO $T (id, a) VALUES (3, 1099511627776)",
        ),
        (
            "ALTER TABLE $T ALTER COLUMN f TYPE double precision",
            "INSERT INTO $T (id, f) VALUES (4, 0.1)",
        ),
        (
            "ALTER TABLE $T DROP COLUMN s",
            "INSERT INTO $T (id) VALUES (5)",
        ),
    ];
    for (n, (ddl, row)) in steps.iter().enumerate() {
        client
            .batch_execute(&format!("{ddl};{row}").replace("$T", &table))
            .await
            .unwrap();
        assert_eq!(
            wait_for_events(&log, n + 1, Duration::from_secs(30)).await,
            n + 1,
            "after `{ddl}`:\n{}",
            daemon_log(&conn)
        );
    }
    let events = read_events(&log);
    assert_eq!(events[1]["after"]["d"], 7, "the default reaches the event");
    assert_eq!(events[2]["after"]["a"], 1099511627776i64, "widened");
    assert_eq!(events[3]["after"]["f"], 0.1, "double now, exactly");
    assert!(events[4]["after"].get("s").is_none());
    let docs = wait_documents(&url, &format!("{schema}_t"), 5).await;
    assert_eq!(docs.len(), 5);
    assert_eq!(docs["1"]["s"], "one", "deprecated: indexed values stay");
    let (types, meta) = mapping_of(&url, &format!("{schema}_t")).await;
    assert_eq!(
        types.get("d").map(String::as_str),
        Some("long"),
        "{types:?}"
    );
    assert_eq!(
        meta["deprecated_fields"],
        serde_json::json!(["s"]),
        "{meta}"
    );

    // A rename looks like a drop and an add of the same type: halted by default.
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} RENAME COLUMN d TO e; INSERT INTO {table} (id) VALUES (6)"
        ))
        .await
        .unwrap();
    let text = halted(&conn, &mut daemon).await;
    assert!(
        text.contains(&format!("schema change on {table}: column `d` dropped and `e` added with the same type (possibly a rename); policy verdict `halt` (built-in add-only default: column_renamed = \"halt\")")),
        "{text}"
    );
    assert_eq!(read_events(&log).len(), 5, "nothing past the DDL");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[rules]\ncolumn_renamed = \"deprecate\"\n").unwrap();
    set_policy(&conn, &policy);
    let mut daemon = spawn_daemon(&conn);
    assert_eq!(wait_for_events(&log, 6, Duration::from_secs(30)).await, 6);
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
    assert_eq!(read_events(&log)[5]["after"]["e"], 7);
    let (_, out, _) = tributary(&["status", "--connector", c]);
    let status: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["tables"][&table]["deprecated"],
        serde_json::json!(["s", "d"]),
        "{out}"
    );
}

/// PostgreSQL table names Elasticsearch refuses are encoded into valid aliases;
/// `"Orders"` meeting `orders` in one alias, and a column named `_id`, send those
/// tables' changes to the dead letters while the rest flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_names_from_postgres_tables() {
    let url = elasticsearch();
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "esnames").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.\"Foo Bar\" (id int PRIMARY KEY, v text);
             CREATE TABLE {schema}.orders (id int PRIMARY KEY, v text);
             CREATE TABLE {schema}.\"Orders\" (id int PRIMARY KEY, v text);
             CREATE TABLE {schema}.meta_id (id int PRIMARY KEY, \"_id\" text);
             CREATE PUBLICATION {schema} FOR TABLES IN SCHEMA {schema};"
        ))
        .await
        .unwrap();
    let (dir, conn, mut daemon) = stream_schema_to_elasticsearch(&schema, &url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {schema}.\"Foo Bar\" VALUES (1, 'foo');
             INSERT INTO {schema}.orders VALUES (1, 'orders');
             INSERT INTO {schema}.\"Orders\" VALUES (1, 'Orders'), (2, 'Orders');
             INSERT INTO {schema}.meta_id VALUES (1, 'x');
             INSERT INTO {schema}.orders VALUES (3, 'orders');"
        ))
        .await
        .unwrap();
    let dead_dir = dir.path().join("dead-letters");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read_events(&dead_dir).len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let orders = wait_documents(&url, &format!("{schema}_orders"), 2).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn));
    pg_drop_slot(&client, &schema).await;

    assert_eq!(orders.keys().collect::<Vec<_>>(), ["1", "3"]);
    assert!(orders.values().all(|d| d["v"] == "orders"), "{orders:?}");
    let foo = es_documents(&url, &format!("{schema}_foo%20bar")).await;
    assert_eq!(foo["1"]["v"], "foo");
    let mut dead: Vec<(String, String)> = read_events(&dead_dir)
        .iter()
        .map(|d| {
            (
                d["event"]["source"]["table"].as_str().unwrap().to_string(),
                d["error_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("Orders", "index_name_collision"),
            ("Orders", "index_name_collision"),
            ("meta_id", "unmappable_column"),
        ]
        .map(|(t, e)| (t.to_string(), e.to_string()))
    );
}

/// The TLS server, started once for the tests that use it.
fn tls_server() -> std::path::PathBuf {
    let certs = tls_certificates();
    postgres(
        TLS_PORT,
        &format!(
            "-c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key -c ssl_ca_file={0}/ca.pem",
            certs.display()
        ),
    );
    certs
}

/// A password the server asks for in clear text (pg_hba.conf `password`) is never sent
/// over plain text; over TLS it is. A user with `cert` authentication logs in with the
/// client certificate (sslcert/sslkey), and check says the session is encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_passwords_need_tls_and_client_certificates_log_in() {
    let certs = tls_server();
    let client = pg_admin(TLS_PORT).await;
    let hba = format!("/tmp/tributary-postgres-{TLS_PORT}/data/pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    if !text.contains("plainpw") {
        std::fs::write(
            &hba,
            format!(
                "host all plainpw 127.0.0.1/32 password\nhost replication plainpw 127.0.0.1/32 password\n\
                 hostssl all pgcert 127.0.0.1/32 cert\nhostssl replication pgcert 127.0.0.1/32 cert\n{text}"
            ),
        )
        .unwrap();
    }
    client
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'plainpw') THEN
                 CREATE ROLE plainpw LOGIN REPLICATION PASSWORD 'plainpw';
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgcert') THEN
                 CREATE ROLE pgcert LOGIN REPLICATION;
               END IF;
             END $$;
             SELECT pg_reload_conf();",
        )
        .await
        .unwrap();
    let (schema, table) = work_table(&client, "authtls").await;
    let dir = tempfile::tempdir().unwrap();
    let file = |user: &str, password: &str, tls: &str| {
        let conn = pg_connector(dir.path(), TLS_PORT, &schema, &table, "");
        let text = std::fs::read_to_string(&conn)
            .unwrap()
            .replace("user = \"tributary\"", &format!("user = \"{user}\""))
            .replace("password = \"tributary\"", password)
            .replace("sslmode = \"disable\"", tls);
        std::fs::write(&conn, text).unwrap();
        conn
    };
    let check = |conn: std::path::PathBuf| {
        let (code, out, err) = tributary(&["check", "--connector", conn.to_str().unwrap()]);
        (code, format!("{out}{err}"))
    };

    // Plain text: refused before the password is sent, naming sslmode.
    let (code, out) = check(file(
        "plainpw",
        "password = \"plainpw\"",
        "sslmode = \"disable\"",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("asks for the password in clear text")
            && out.contains("sslmode = \"require\""),
        "{out}"
    );
    // Over TLS the same login goes through.
    let (_, out) = check(file(
        "plainpw",
        "password = \"plainpw\"",
        "sslmode = \"require\"",
    ));
    assert!(
        !out.contains("clear text") && out.contains("connection encrypted (TLSv1."),
        "{out}"
    );

    // cert authentication: the client certificate is the login.
    let c = certs.display();
    let verified = format!("sslmode = \"verify-full\"\nsslrootcert = \"{c}/ca.pem\"");
    let (code, out) = check(file("pgcert", "", &verified));
    assert_eq!(code, 1, "without a client certificate: {out}");
    let (_, out) = check(file(
        "pgcert",
        "",
        &format!("{verified}\nsslcert = \"{c}/client.pem\"\nsslkey = \"{c}/client.key\""),
    ));
    assert!(out.contains("connection encrypted (TLSv1."), "{out}");
    assert!(!out.contains("authentication failed"), "{out}");
}

/// A daemon streaming every table of `schema` (publication and slot named after it)
/// into a log and the Elasticsearch at `url`, without a snapshot.
async fn stream_schema_to_elasticsearch(
    schema: &str,
    url: &str,
) -> (tempfile::TempDir, std::path::PathBuf, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let conn = pg_connector(
        dir.path(),
        PG_PORT,
        schema,
        &format!("{schema}.*"),
        "snapshot = \"never\"",
    );
    add_es_sink(&conn, url, "");
    let mut daemon = spawn_daemon(&conn);
    wait_streaming(&conn, &mut daemon).await;
    (dir, conn, daemon)
}
