//! Every MariaDB column type round-trips: the event values equal what SELECT returns,
//! for edge values, NULLs, empties, multibyte text and zero dates.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use common::*;
use mysql_async::prelude::Queryable;
use serde_json::Value as Json;

/// How an event value is compared with the server's text for it.
#[derive(Clone, Copy, Debug)]
enum Cmp {
    /// JSON number printed exactly as the server prints the integer.
    Int,
    /// JSON number equal to the server's integer text read as a number (YEAR 0000 is 0).
    Num,
    /// JSON string equal to the server's text.
    Str,
    /// f32: equal after rounding both to f32.
    F32,
    /// f64: equal as f64.
    F64,
    /// base64 in the event, HEX() from the server.
    Hex,
    /// Array of labels, server's comma-joined text.
    Set,
    /// Nested JSON, server's JSON text.
    Json,
}

struct Col {
    name: &'static str,
    ddl: &'static str,
    /// SQL yielding the expected text (or NULL); `{}` is the column.
    expr: &'static str,
    cmp: Cmp,
}

const fn col(name: &'static str, ddl: &'static str, expr: &'static str, cmp: Cmp) -> Col {
    Col {
        name,
        ddl,
        expr,
        cmp,
    }
}

const CAST: &str = "CAST({} AS CHAR)";
const DT0: &str = "DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s')";
const DT3: &str = "CONCAT(DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.'), LEFT(DATE_FORMAT({}, '%f'), 3))";
const DT6: &str = "DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.%f')";
const TS0: &str = "CONCAT(DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s'), 'Z')";
const TS2: &str =
    "CONCAT(DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.'), LEFT(DATE_FORMAT({}, '%f'), 2), 'Z')";
const TS6: &str = "CONCAT(DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.%f'), 'Z')";
const TEXT: &str = "CONVERT({} USING utf8mb4)";

fn columns() -> Vec<Col> {
    use Cmp::*;
    vec![
        col("ti", "TINYINT", CAST, Int),
        col("tiu", "TINYINT UNSIGNED", CAST, Int),
        col("si", "SMALLINT", CAST, Int),
        col("siu", "SMALLINT UNSIGNED", CAST, Int),
        col("mi", "MEDIUMINT", CAST, Int),
        col("miu", "MEDIUMINT UNSIGNED", CAST, Int),
        col("i", "INT", CAST, Int),
        col("iu", "INT UNSIGNED", CAST, Int),
        col("bi", "BIGINT", CAST, Int),
        col("biu", "BIGINT UNSIGNED", CAST, Int),
        col("dec65", "DECIMAL(65,30)", CAST, Str),
        col("dec10", "DECIMAL(10,2)", CAST, Str),
        col("dec5u", "DECIMAL(5,0) UNSIGNED", CAST, Str),
        col("f", "FLOAT", "CAST(CAST({} AS DOUBLE) AS CHAR)", F32),
        col("d", "DOUBLE", CAST, F64),
        col("b1", "BIT(1)", "CAST({} + 0 AS CHAR)", Int),
        col("b13", "BIT(13)", "CAST({} + 0 AS CHAR)", Int),
        col("b64", "BIT(64)", "CAST({} + 0 AS CHAR)", Int),
        col("dt", "DATE", "DATE_FORMAT({}, '%Y-%m-%d')", Str),
        col("dtm0", "DATETIME", DT0, Str),
        col("dtm3", "DATETIME(3)", DT3, Str),
        col("dtm6", "DATETIME(6)", DT6, Str),
        col("ts0", "TIMESTAMP NULL", TS0, Str),
        col("ts2", "TIMESTAMP(2) NULL", TS2, Str),
        col("ts6", "TIMESTAMP(6) NULL", TS6, Str),
        col("t0", "TIME", CAST, Str),
        col("t1", "TIME(1)", CAST, Str),
        col("t6", "TIME(6)", CAST, Str),
        col("y", "YEAR", CAST, Num),
        col("c", "CHAR(10) CHARACTER SET utf8mb4", TEXT, Str),
        col("lc", "CHAR(100) CHARACTER SET utf8mb4", TEXT, Str),
        col("vc", "VARCHAR(300) CHARACTER SET utf8mb4", TEXT, Str),
        col("txt", "TEXT CHARACTER SET utf8mb4", TEXT, Str),
        col("mtxt", "MEDIUMTEXT CHARACTER SET utf8mb4", TEXT, Str),
        col("l1", "VARCHAR(20) CHARACTER SET latin1", TEXT, Str),
        col("l1c", "CHAR(5) CHARACTER SET latin1", TEXT, Str),
        col("bin", "BINARY(4)", "HEX({})", Hex),
        col("vb", "VARBINARY(10)", "HEX({})", Hex),
        col("bl", "BLOB", "HEX({})", Hex),
        col("lb", "LONGBLOB", "HEX({})", Hex),
        col("e", "ENUM('small','medium','large')", CAST, Str),
        col("s", "SET('a','b','c','d')", CAST, Set),
        col("j", "JSON", "{}", Json),
        col("jt", "LONGTEXT", TEXT, Str),
        col("g", "GEOMETRY", "HEX(ST_AsBinary({}))", Hex),
    ]
}

/// Rows as (id, values in column order, as SQL literals).
fn rows() -> Vec<(u32, Vec<&'static str>)> {
    vec![
        // minimum values
        (
            1,
            vec![
                "-128",
                "0",
                "-32768",
                "0",
                "-8388608",
                "0",
                "-2147483648",
                "0",
                "-9223372036854775808",
                "0",
                "-99999999999999999999999999999999999.999999999999999999999999999999",
                "-99999999.99",
                "0",
                "-3.40282e38",
                "-1.7976931348623157e308",
                "0",
                "0",
                "0",
                "'1000-01-01'",
                "'1000-01-01 00:00:00'",
                "'1000-01-01 00:00:00.000'",
                "'1000-01-01 00:00:00.000000'",
                "'1970-01-01 00:00:01'",
                "'1970-01-01 00:00:01.00'",
                "'1970-01-01 00:00:01.000000'",
                "'-838:59:59'",
                "'-838:59:59.9'",
                "'-838:59:59.999999'",
                "1901",
                "''",
                "''",
                "''",
                "''",
                "''",
                "''",
                "''",
                "''",
                "''",
                "''",
                "''",
                "'small'",
                "''",
                "'[]'",
                "''",
                "ST_GeomFromText('POINT(0 0)')",
            ],
        ),
        // maximum values
        (
            2,
            vec![
                "127",
                "255",
                "32767",
                "65535",
                "8388607",
                "16777215",
                "2147483647",
                "4294967295",
                "9223372036854775807",
                "18446744073709551615",
                "99999999999999999999999999999999999.999999999999999999999999999999",
                "99999999.99",
                "99999",
                "3.40282e38",
                "1.7976931348623157e308",
                "1",
                "8191",
                "18446744073709551615",
                "'9999-12-31'",
                "'9999-12-31 23:59:59'",
                "'9999-12-31 23:59:59.999'",
                "'9999-12-31 23:59:59.999999'",
                "'2038-01-19 03:14:07'",
                "'2038-01-19 03:14:07.99'",
                "'2038-01-19 03:14:07.999999'",
                "'838:59:59'",
                "'838:59:59.9'",
                "'838:59:59.999999'",
                "2155",
                "'日本語テキスト🎉'",
                "REPEAT('é', 100)",
                "REPEAT('ü', 300)",
                "REPEAT('x', 65535)",
                "REPEAT('😀', 100000)",
                "'café €‰'",
                "'ÿÿÿÿÿ'",
                "x'FFFFFFFF'",
                "x'FF00FF00FF00FF00FF00'",
                "REPEAT(x'00FF', 30000)",
                "REPEAT(x'AB', 70000)",
                "'large'",
                "'a,b,c,d'",
                r#"'{"deep": {"list": [1, 2.50, -3e10, 18446744073709551615, "ü\\u00e9", null, true], "empty": {}}}'"#,
                r#"'{"not": "checked"}'"#,
                "ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))', 4326)",
            ],
        ),
        // everything NULL
        (3, vec!["NULL"; 45]),
        // zeros, empties and zero dates
        (
            4,
            vec![
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "-0.50",
                "0",
                "0",
                "-0.0",
                "0",
                "0",
                "0",
                "'0000-00-00'",
                "'0000-00-00 00:00:00'",
                "'2024-00-00 00:00:00.000'",
                "'0000-00-00 00:00:00.000000'",
                "'0000-00-00 00:00:00'",
                "'0000-00-00 00:00:00.00'",
                "'0000-00-00 00:00:00.000000'",
                "'00:00:00'",
                "'-00:00:01.5'",
                "'-00:00:00.000001'",
                "0",
                "'a  '",
                "' '",
                "' trailing  '",
                "'\\n\\t\\\\\"'",
                "''",
                "'x'",
                "'a'",
                "x'01'",
                "x'0000'",
                "x'00'",
                "''",
                "''",
                "''",
                "'{}'",
                "'not json'",
                "ST_GeomFromText('POINT(1.5 -2.25)')",
            ],
        ),
        // ordinary values
        (
            5,
            vec![
                "-7",
                "200",
                "-1234",
                "50000",
                "-100000",
                "10000000",
                "-123456789",
                "3000000000",
                "-1",
                "9223372036854775808",
                "3.141592653589793238462643383279502884197169399375105820974944",
                "0.01",
                "42",
                "3.14",
                "0.1",
                "1",
                "4096",
                "9223372036854775808",
                "'2024-02-29'",
                "'2024-02-29 12:34:56'",
                "'2024-02-29 12:34:56.789'",
                "'2024-02-29 12:34:56.000001'",
                "'2024-02-29 12:34:56'",
                "'2024-02-29 12:34:56.78'",
                "'2024-02-29 12:34:56.123456'",
                "'12:34:56'",
                "'100:00:00.5'",
                "'-01:02:03.040506'",
                "2024",
                "'Grüße'",
                "'Ελληνικά'",
                "'Ünïcödé ✓'",
                "'line1\\nline2'",
                "'🚀'",
                "'naïve'",
                "'Ñ'",
                "x'0102'",
                "x'DEADBEEF'",
                "x'CAFEBABE'",
                "x'00'",
                "'medium'",
                "'b,d'",
                r#"'[1, "two", {"three": 3}]'"#,
                "'plain text'",
                "ST_GeomFromText('LINESTRING(0 0,1 1,2 1)')",
            ],
        ),
    ]
}

async fn expected(
    conn: &mut mysql_async::Conn,
    db: &str,
    cols: &[Col],
) -> HashMap<u32, Vec<Option<String>>> {
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| c.expr.replace("{}", &format!("`{}`", c.name)))
        .collect();
    let sql = format!(
        "SELECT id, {} FROM `{db}`.types ORDER BY id",
        exprs.join(", ")
    );
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap();
    rows.into_iter()
        .map(|r| {
            let id: u32 = r.get(0).unwrap();
            let vals = (0..cols.len())
                .map(|i| {
                    let v: mysql_async::Value = r.get(i + 1).unwrap();
                    match v {
                        mysql_async::Value::NULL => None,
                        mysql_async::Value::Bytes(b) => Some(String::from_utf8(b).unwrap()),
                        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                    }
                })
                .collect();
            (id, vals)
        })
        .collect()
}

fn check_row(what: &str, image: &Json, want: &[Option<String>], cols: &[Col]) {
    for (c, w) in cols.iter().zip(want) {
        let got = &image[c.name];
        let ctx = format!(
            "{what} column {} ({}): event {got} vs server {w:?}",
            c.name, c.ddl
        );
        let Some(w) = w else {
            assert!(got.is_null(), "{ctx}");
            continue;
        };
        match c.cmp {
            Cmp::Int => assert_eq!(got.to_string(), *w, "{ctx}"),
            Cmp::Num => assert_eq!(got.as_i64(), Some(w.parse::<i64>().unwrap()), "{ctx}"),
            Cmp::Str => assert_eq!(got.as_str(), Some(w.as_str()), "{ctx}"),
            Cmp::F32 => assert_eq!(
                got.as_f64().map(|f| f as f32),
                Some(w.parse::<f64>().unwrap() as f32),
                "{ctx}"
            ),
            Cmp::F64 => assert_eq!(got.as_f64(), Some(w.parse::<f64>().unwrap()), "{ctx}"),
            Cmp::Hex => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(
                        got.as_str()
                            .unwrap_or_else(|| panic!("{ctx}: not base64 text")),
                    )
                    .unwrap();
                let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
                assert_eq!(hex, *w, "{ctx}");
            }
            Cmp::Set => {
                let labels: Vec<&str> = got
                    .as_array()
                    .unwrap_or_else(|| panic!("{ctx}"))
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(labels.join(","), *w, "{ctx}");
            }
            Cmp::Json => {
                let want: Json = serde_json::from_str(w).unwrap();
                assert_eq!(got, &want, "{ctx}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_exactly() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("types");
    let cols = columns();
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, "SET SESSION sql_mode = '', time_zone = '+00:00'").await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    let ddl: Vec<String> = cols
        .iter()
        .map(|c| format!("`{}` {}", c.name, c.ddl))
        .collect();
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE `{db}`.types (id INT PRIMARY KEY, {}) ENGINE=InnoDB",
            ddl.join(", ")
        ),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let conn_file = connector(dir.path(), SHARED_PORT, &db, "");
    let mut daemon = spawn_daemon(&conn_file);
    wait_streaming(&conn_file, &mut daemon).await;

    let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
    for (id, vals) in rows() {
        assert_eq!(
            vals.len(),
            cols.len(),
            "row {id} has the wrong number of values"
        );
        exec(
            &mut conn,
            &format!(
                "INSERT INTO `{db}`.types (id, {}) VALUES ({id}, {})",
                names.join(", "),
                vals.join(", ")
            ),
        )
        .await;
    }
    let after_insert = expected(&mut conn, &db, &cols).await;
    // Every column changes in one update: before and after images both checked.
    exec(
        &mut conn,
        &format!(
            "UPDATE `{db}`.types t JOIN `{db}`.types s ON s.id = 2 SET {} WHERE t.id = 5",
            names
                .iter()
                .map(|n| format!("t.`{n}` = s.`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await;
    let after_update = expected(&mut conn, &db, &cols).await;
    exec(&mut conn, &format!("DELETE FROM `{db}`.types WHERE id = 4")).await;

    let log = dir.path().join("log");
    let n = wait_for_events(&log, 7, Duration::from_secs(60)).await;
    assert_eq!(
        stop(&mut daemon),
        0,
        "daemon exit\n{}",
        daemon_log(&conn_file)
    );
    let events = read_events(&log);
    assert_eq!(
        n,
        7,
        "expected 5 inserts, 1 update, 1 delete; daemon log:\n{}",
        daemon_log(&conn_file)
    );
    assert_eq!(events.len(), 7);

    for (k, e) in events[..5].iter().enumerate() {
        assert_eq!(e["op"], "c");
        let id = e["after"]["id"].as_u64().unwrap() as u32;
        assert_eq!(id as usize, k + 1);
        assert_eq!(e["key"]["id"], id);
        check_row(
            &format!("insert {id}"),
            &e["after"],
            &after_insert[&id],
            &cols,
        );
    }
    let u = &events[5];
    assert_eq!(u["op"], "u");
    check_row("update before", &u["before"], &after_insert[&5], &cols);
    check_row("update after", &u["after"], &after_update[&5], &cols);
    let d = &events[6];
    assert_eq!(d["op"], "d");
    assert!(d["after"].is_null());
    check_row("delete before", &d["before"], &after_update[&4], &cols);

    // Event envelope.
    assert_eq!(u["source"]["kind"], "mariadb");
    assert_eq!(u["source"]["db"], db.as_str());
    assert_eq!(u["source"]["table"], "types");
    assert!(u["source"]["pos"]["file"]
        .as_str()
        .unwrap()
        .starts_with("binlog."));
    assert!(u["source"]["txid"].as_str().unwrap().starts_with("0-1-"));
    let (_, hist, _) = tributary(&[
        "offsets",
        "show",
        "--connector",
        conn_file.to_str().unwrap(),
    ]);
    assert_eq!(u["schema_version"], 1, "{hist}");
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions grow: {versions:?}"
    );

    // One decoder contract, two paths: a snapshot of the same rows (requested on
    // demand, served at the next start) gives the same after images, byte for byte,
    // and the same schema version as the streamed events.
    let c = conn_file.to_str().unwrap();
    let table = format!("{db}.types");
    let (code, out, err) = tributary(&["snapshot", "--connector", c, "--table", &table]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("runs when the daemon starts"), "{out}");
    let (_, raw_before, _) = tributary(&["log", "cat", log.to_str().unwrap()]);
    let mut daemon = spawn_daemon(&conn_file);
    wait_for_events(&log, 11, Duration::from_secs(60)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&conn_file));
    let (_, raw, _) = tributary(&["log", "cat", log.to_str().unwrap()]);
    let after_of = |line: &str| {
        let start = line.find(r#","after":"#).unwrap() + 9;
        let end = line.find(r#","schema_version":"#).unwrap();
        line[start..end].to_string()
    };
    let mut streamed: HashMap<u64, String> = HashMap::new();
    for line in raw_before.lines() {
        let e: Json = serde_json::from_str(line).unwrap();
        if let Some(id) = e["after"]["id"].as_u64() {
            streamed.insert(id, after_of(line));
        }
    }
    let snap: Vec<&str> = raw.lines().skip(7).collect();
    assert_eq!(snap.len(), 4, "rows 1, 2, 3 and 5: {raw}");
    for line in snap {
        let e: Json = serde_json::from_str(line).unwrap();
        assert_eq!(e["op"], "r", "{line}");
        assert_eq!(e["schema_version"], 1, "{line}");
        let id = e["after"]["id"].as_u64().unwrap();
        assert_eq!(after_of(line), streamed[&id], "row {id}");
    }
    let (_, status, _) = tributary(&["status", "--connector", c]);
    let status: Json = serde_json::from_str(&status).unwrap();
    assert_eq!(status["snapshot"][&table]["status"], "done", "{status}");
    assert_eq!(status["snapshot"][&table]["rows"], 4, "{status}");
}
