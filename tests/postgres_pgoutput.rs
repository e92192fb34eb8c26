//! The pgoutput decoder on real PostgreSQL 15 output: the server's own message bytes,
//! taken from a logical slot with pg_logical_slot_peek_binary_changes, include an
//! unchanged TOASTed column, REPLICA IDENTITY FULL, deletes and a truncate.

use std::process::Command;

use tributary::source::postgres::pgoutput::{decode, Datum, Message, OldTuple};

const PORT: u16 = 54371;

/// Starts the server once per test process (tests in this file run in parallel).
fn start_postgres() {
    static STARTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut started = STARTED.lock().unwrap();
    if *started {
        return;
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postgres.sh"))
        .args(["start", &PORT.to_string()])
        .output()
        .expect("run deploy/postgres.sh");
    assert!(
        out.status.success(),
        "deploy/postgres.sh start failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    *started = true;
}

/// An admin session with the settings the replication session pins, committing
/// synchronously: logical decoding reads flushed WAL only and the test server commits
/// asynchronously.
async fn admin_session() -> tokio_postgres::Client {
    start_postgres();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={PORT} user=admin password=admin dbname=app"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect as admin");
    tokio::spawn(conn);
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'iso_8601'; \
             SET bytea_output = 'hex'; SET synchronous_commit = on",
        )
        .await
        .unwrap();
    client
}

/// A pgoutput slot. Its own statement: a slot cannot be created in a transaction that
/// wrote.
async fn create_slot(client: &tokio_postgres::Client, slot: &str) {
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await
        .unwrap();
}

/// The slot's changes for publication `p_<slot>` as the server's raw pgoutput messages;
/// drops the slot.
async fn take_changes(client: &tokio_postgres::Client, slot: &str) -> Vec<Vec<u8>> {
    let rows = client
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'p_{slot}')"
            ),
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect()
}

#[tokio::test]
async fn decodes_what_postgres_15_sends() {
    let client = admin_session().await;
    let slot = format!("t_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS docs, plain;
             CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text);
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE TABLE plain (id int PRIMARY KEY, n numeric);
             ALTER TABLE plain REPLICA IDENTITY FULL;
             DROP PUBLICATION IF EXISTS p_{slot};
             CREATE PUBLICATION p_{slot} FOR TABLE docs, plain;"
        ))
        .await
        .unwrap();
    create_slot(&client, &slot).await;
    let big = "x".repeat(1 << 20);
    client
        .execute("INSERT INTO docs VALUES (1, 'first', $1)", &[&big])
        .await
        .unwrap();
    client
        .batch_execute(
            "UPDATE docs SET title = 'renamed' WHERE id = 1;
         INSERT INTO plain VALUES (7, 1.50);
         UPDATE plain SET n = 'NaN' WHERE id = 7;
         DELETE FROM plain WHERE id = 7;
         DELETE FROM docs WHERE id = 1;
         TRUNCATE plain;",
        )
        .await
        .unwrap();

    let raw = take_changes(&client, &slot).await;
    let msgs: Vec<Message> = raw.iter().map(|b| decode(b).expect("decodes")).collect();

    let kinds: String = msgs
        .iter()
        .map(|m| match m {
            Message::Begin { .. } => 'B',
            Message::Commit { .. } => 'C',
            Message::Relation(_) => 'R',
            Message::Insert { .. } => 'I',
            Message::Update { .. } => 'U',
            Message::Delete { .. } => 'D',
            Message::Truncate { .. } => 'T',
            _ => '?',
        })
        .collect();
    // The second batch is one transaction; the server repeats `plain`'s Relation before
    // the truncate.
    assert_eq!(kinds, "BRICBURIUDDRTC", "{msgs:#?}");

    // The 1 MB body arrives whole on insert, and as "unchanged" on the title update.
    let Message::Insert { new, .. } = &msgs[2] else {
        panic!()
    };
    assert_eq!(new[2], Datum::Text(big.as_bytes()));
    let Message::Update { old, new, .. } = &msgs[5] else {
        panic!()
    };
    assert!(
        old.is_none(),
        "REPLICA IDENTITY DEFAULT and an unchanged key send no old tuple"
    );
    assert_eq!(new[1], Datum::Text(b"renamed"));
    assert_eq!(new[2], Datum::UnchangedToast);

    // REPLICA IDENTITY FULL sends the whole old row.
    let Message::Relation(r) = &msgs[6] else {
        panic!()
    };
    assert_eq!((r.name, r.replica_identity), ("plain", b'f'));
    let Message::Update {
        old: Some(OldTuple::Full(old)),
        new,
        ..
    } = &msgs[8]
    else {
        panic!("{:?}", msgs[8])
    };
    assert_eq!(old[1], Datum::Text(b"1.50"));
    assert_eq!(new[1], Datum::Text(b"NaN"));
    let Message::Delete {
        old: OldTuple::Full(old),
        ..
    } = &msgs[9]
    else {
        panic!()
    };
    assert_eq!(old[0], Datum::Text(b"7"));
    let Message::Delete {
        old: OldTuple::Key(key),
        ..
    } = &msgs[10]
    else {
        panic!()
    };
    assert_eq!((key[0], key[2]), (Datum::Text(b"1"), Datum::Null));
    let Message::Truncate { relations, .. } = &msgs[12] else {
        panic!()
    };
    assert_eq!(relations, &vec![r.oid]);
}

/// Every value decoded from pgoutput text equals what the server itself renders for it
/// (`to_json` or `::text`), edge values included.
#[tokio::test]
async fn values_round_trip_exactly() {
    use base64::Engine;
    use serde_json::Value as Json;
    use tributary::source::postgres::values::{builtin, decode_text};

    let client = admin_session().await;
    let slot = format!("v_{}", std::process::id());
    // (column, type, how the server renders the expectation, values for two rows)
    let cols: &[(&str, &str, &str, &str, &str)] = &[
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
    ];
    let ddl: Vec<String> = cols.iter().map(|(n, t, ..)| format!("{n} {t}")).collect();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS vals; CREATE TABLE vals (id int PRIMARY KEY, {});
             DROP PUBLICATION IF EXISTS p_{slot}; CREATE PUBLICATION p_{slot} FOR TABLE vals;",
            ddl.join(", ")
        ))
        .await
        .unwrap();
    create_slot(&client, &slot).await;
    for (id, pick) in [(1, 3usize), (2, 4usize)] {
        let vals: Vec<&str> = cols
            .iter()
            .map(|c| if pick == 3 { c.3 } else { c.4 })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO vals VALUES ({id}, {})",
                vals.join(", ")
            ))
            .await
            .unwrap();
    }
    let raw = take_changes(&client, &slot).await;
    let msgs: Vec<Message> = raw.iter().map(|b| decode(b).unwrap()).collect();
    let rel = msgs
        .iter()
        .find_map(|m| {
            if let Message::Relation(r) = m {
                Some(r.clone())
            } else {
                None
            }
        })
        .unwrap();
    let inserts: Vec<&Vec<Datum>> = msgs
        .iter()
        .filter_map(|m| {
            if let Message::Insert { new, .. } = m {
                Some(new)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(inserts.len(), 2);

    for (row, tuple) in inserts.iter().enumerate() {
        let id = row as i32 + 1;
        for (k, (name, ty, how, ..)) in cols.iter().enumerate() {
            let col = &rel.columns[k + 1];
            assert_eq!(col.name, *name);
            let got = match tuple[k + 1] {
                Datum::Null => Json::Null,
                Datum::Text(t) => serde_json::from_str(
                    &decode_text(&builtin(col.type_oid), t)
                        .unwrap_or_else(|e| panic!("{name}: {e}"))
                        .to_json(),
                )
                .unwrap(),
                other => panic!("{name}: {other:?}"),
            };
            let expr = match *how {
                "json" => format!("to_json({name})::text"),
                "text" => format!("to_json({name}::text)::text"),
                "hex" => format!("to_json(encode({name}, 'hex'))::text"),
                "tsz" => format!("to_json(to_char({name} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'))::text"),
                _ => unreachable!(),
            };
            let want: Option<String> = client
                .query_one(&format!("SELECT {expr} FROM vals WHERE id = $1"), &[&id])
                .await
                .unwrap()
                .get(0);
            let want: Json = want
                .map(|w| serde_json::from_str(&w).unwrap())
                .unwrap_or(Json::Null);
            let ctx = format!("row {id} column {name} ({ty}): event {got} vs server {want}");
            match *how {
                "hex" => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(got.as_str().unwrap())
                        .unwrap();
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    assert_eq!(Json::String(hex), want, "{ctx}");
                }
                "tsz" => {
                    // The event keeps the server's fraction digits; compare at microseconds.
                    let g = got.as_str().unwrap().trim_end_matches('Z');
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
}
