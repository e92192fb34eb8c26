//! Bad input: each mistake a user can make gets one clear message, a non-zero exit,
//! and leaves no partial state behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A server started with the settings tributary refuses.
const BAD_SETTINGS_PORT: u16 = 23072;

fn assert_no_state(dir: &Path) {
    assert!(
        !dir.join("state").exists(),
        "a failed start must not create the state dir"
    );
    assert!(
        !dir.join("log").exists(),
        "a failed start must not create the log dir"
    );
}

#[test]
fn wrong_binlog_settings_are_named_with_the_fix() {
    mariadb(
        BAD_SETTINGS_PORT,
        "--binlog-format=STATEMENT --binlog-row-image=MINIMAL --binlog-row-metadata=MINIMAL",
    );
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), BAD_SETTINGS_PORT, "anydb", "");
    let (code, out, _) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for (var, want) in [
        ("binlog_format", "ROW"),
        ("binlog_row_image", "FULL"),
        ("binlog_row_metadata", "FULL"),
    ] {
        assert!(
            out.contains(&format!("SET GLOBAL {var} = '{want}'")),
            "check output names {var} and its fix:\n{out}"
        );
    }
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("binlog_format is STATEMENT"), "{err}");
    assert!(err.contains("not ready for tributary"), "{err}");
    assert_no_state(dir.path());
}

#[tokio::test]
async fn missing_grants_are_named_with_the_grant_statement() {
    mariadb(SHARED_PORT, "");
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        "CREATE USER IF NOT EXISTS 'weak'@'127.0.0.1' IDENTIFIED BY 'weak'",
    )
    .await;
    exec(&mut conn, "GRANT SELECT ON *.* TO 'weak'@'127.0.0.1'").await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, "anydb", "");
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("user = \"tributary\"", "user = \"weak\"")
        .replace("password = \"tributary\"", "password = \"weak\"");
    std::fs::write(&c, text).unwrap();
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("GRANT REPLICATION SLAVE ON *.* TO 'weak'@'127.0.0.1';"),
        "{err}"
    );
    assert!(
        err.contains("GRANT BINLOG MONITOR ON *.* TO 'weak'@'127.0.0.1';"),
        "{err}"
    );
    assert_no_state(dir.path());
}

#[test]
fn wrong_password_is_named_and_never_printed() {
    mariadb(SHARED_PORT, "");
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, "anydb", "");
    let text = std::fs::read_to_string(&c).unwrap().replace(
        "password = \"tributary\"",
        "password_env = \"TRIBUTARY_TEST_PW\"",
    );
    std::fs::write(&c, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--connector", c.to_str().unwrap()])
        .env("TRIBUTARY_TEST_PW", "sekrit-value-4711")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("access denied for user 'tributary'"), "{err}");
    assert!(
        err.contains("environment variable TRIBUTARY_TEST_PW"),
        "{err}"
    );
    assert!(
        !err.contains("sekrit-value-4711"),
        "the password leaked: {err}"
    );
    assert_no_state(dir.path());

    // An unset variable is named too.
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("TRIBUTARY_TEST_PW, which is not set"), "{err}");
}

#[test]
fn unreachable_host_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), 1, "anydb", "connect_timeout_secs = 3");
    let started = std::time::Instant::now();
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach 127.0.0.1:1"), "{err}");
    assert!(err.contains("is the server running"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_no_state(dir.path());
}

#[test]
fn malformed_connector_files_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(connector(dir.path(), SHARED_PORT, "db", "")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("server_id =", "serverid ="),
            "unknown field `serverid`",
        ),
        (
            good.replace("port = 23071", "port = \"23071\""),
            "expected u16",
        ),
        (
            good.replace("kind = \"log\"", "kind = \"logg\""),
            "unknown sink kind `logg`, expected one of: log, elasticsearch, kafka, stdout, null",
        ),
        (
            good.replace("kind = \"mariadb\"", "kind = \"oracle\""),
            "unknown source kind `oracle`",
        ),
        (
            good.replace("[state]", "[state"),
            "unclosed table, expected `]`",
        ), // TOML syntax
        (
            good.replace("segment_bytes = 1048576", "segment_bytes = 10"),
            "segment_bytes must be at least 4096",
        ),
        (
            good.replace(
                "segment_bytes = 1048576",
                "segment_bytes = 1048576\nfsync = \"sometimes\"",
            ),
            "unknown variant `sometimes`, expected `checkpoint` or `never`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = tributary(&["run", "--connector", path.to_str().unwrap()]);
        assert_eq!(code, 2, "case {i}: {err}");
        let located = format!("{}:", path.display());
        assert!(err.contains(&located), "case {i} names the file: {err}");
        let after = &err[err.find(&located).unwrap() + located.len()..];
        let line_col: Vec<&str> = after.splitn(3, ':').collect();
        assert!(
            line_col.len() == 3 && line_col[0].parse::<u32>().is_ok(),
            "case {i} names line and column: {err}"
        );
        assert!(err.contains(want), "case {i}: expected `{want}` in {err}");
        assert_no_state(dir.path());
    }
}

/// Builds a small log stream by running the daemon on a few changes, the log sink
/// written with `compression`.
async fn small_log(dir: &Path, compression: &str) -> std::path::PathBuf {
    mariadb(SHARED_PORT, "");
    let db = unique_db("corrupt");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, s TEXT)"),
    )
    .await;
    let c = connector(dir, SHARED_PORT, &db, "");
    let text = std::fs::read_to_string(&c).unwrap().replace(
        "segment_bytes = 1048576",
        &format!("segment_bytes = 1048576\ncompression = \"{compression}\""),
    );
    std::fs::write(&c, text).unwrap();
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    for i in 0..20 {
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.t VALUES ({i}, 'row {i}')"),
        )
        .await;
    }
    let log = dir.join("log");
    assert_eq!(wait_for_events(&log, 20, Duration::from_secs(30)).await, 20);
    assert_eq!(stop(&mut daemon), 0);
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_log_segment_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_log(dir.path(), "none").await;
    let seg = log.join("00000000000000000000.log");
    let (code, out, _) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 20);

    // Flip one byte inside the 11th record's JSON.
    let mut bytes = std::fs::read(&seg).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let at = line_starts[10] + 40;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, err) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{}:11: CRC mismatch", seg.display())),
        "{err}"
    );
    assert_eq!(
        out.lines().count(),
        10,
        "records before the corrupt one are printed"
    );

    // A torn last record (a crash mid-write) is named as such.
    bytes[at] ^= 0x01;
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&seg, &bytes).unwrap();
    let (code, _, err) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":20: incomplete record"), "{err}");
}

/// A compressed log: damage inside a block stops `log cat` at that block, naming the
/// segment and the number of the block's first record, after the records before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_compressed_block_is_reported_with_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_log(dir.path(), "zstd").await;
    let seg = log.join("00000000000000000000.log");
    let (code, out, _) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 20);
    let mut bytes = std::fs::read(&seg).unwrap();
    assert!(bytes.starts_with(b"#zstd "), "blocks, not lines");
    // The last block's frame: flip a byte in its middle.
    let header = bytes.windows(6).rposition(|w| w == b"#zstd ").unwrap();
    let frame = header + bytes[header..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let at = frame + (bytes.len() - frame) / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out, err) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let printed = out.lines().count();
    assert!(printed < 20, "{out}");
    assert!(
        err.contains(&format!(
            "{}:{}: block CRC mismatch",
            seg.display(),
            printed + 1
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_shorter_than_its_checkpoint_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_log(dir.path(), "zstd").await;
    let seg = log.join("00000000000000000000.log");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let c = dir.path().join("connector.toml");
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("lost data outside tributary's control"),
        "{err}"
    );
}

#[test]
fn check_names_an_unreachable_elasticsearch_sink() {
    mariadb(SHARED_PORT, "");
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, "anydb", "");
    add_es_sink(
        &c,
        "http://user:secret-pw@127.0.0.1:1",
        "request_timeout_secs = 2",
    );
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("error sink elasticsearch:http://127.0.0.1:1"),
        "{out}"
    );
    assert!(out.contains("cannot reach http://127.0.0.1:1"), "{out}");
    assert!(
        !out.contains("secret-pw") && !err.contains("secret-pw"),
        "credentials leaked: {out}{err}"
    );
    assert!(out.contains("not ready"), "{out}");
}

/// A policy file with a mistake: the connector does not start, and the message names
/// the policy file, line and column and the allowed values; `policy check` says the
/// same with exit code 2, and accepts the shipped default.
#[test]
fn a_bad_policy_file_is_named_with_its_line_and_the_allowed_values() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[rules]\ncolumn_added = \"allow\"\n\n[[table]]\nmatch = \"shop.orders\"\ncolumn_dropped = \"drop\"\n",
    )
    .unwrap();
    let c = connector(dir.path(), SHARED_PORT, "anydb", "");
    set_policy(&c, &policy);
    let want = format!(
        "{}:6:18: `column_dropped` must be one of \"deprecate\", \"quarantine\", \"halt\" (got \"drop\")",
        policy.display()
    );
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&want), "{err}");
    assert_no_state(dir.path());
    let (code, _, err) = tributary(&["policy", "check", policy.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&want), "{err}");
    let default = repo().join("schema-rules/default.toml");
    let (code, out, err) = tributary(&["policy", "check", default.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("column_renamed  halt"), "{out}");
}

/// A session that writes with binlog_format = MIXED logs a plain UPDATE as a statement,
/// so its rows are not in the binlog. Behind a comment it must still stop the daemon
/// with the setting to fix, and a restart must stop at it again (it is never skipped).
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_based_update_behind_a_comment_stops_the_daemon() {
    mariadb(SHARED_PORT, "");
    let db = unique_db("mixed");
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, s TEXT)"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (1, 'a')")).await;
    // DDL the guard cannot read is logged without its literals (a password here).
    exec(
        &mut conn,
        "CREATE USER IF NOT EXISTS 'mixed_reader'@'127.0.0.1' IDENTIFIED BY 'sekrit-pw-42'",
    )
    .await;
    exec(&mut conn, "SET SESSION binlog_format = 'MIXED'").await;
    exec(
        &mut conn,
        &format!("/* app=checkout */ UPDATE `{db}`.t SET s = 'b' WHERE id = 1"),
    )
    .await;
    exec(&mut conn, "SET SESSION binlog_format = 'ROW'").await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (2, 'c')")).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon kept running past a statement-based UPDATE:\n{}",
            daemon_log(&c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = daemon_log(&c);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("statement-based change"), "{log}");
    assert!(log.contains("binlog_format = ROW"), "{log}");
    assert!(log.contains(&format!("touching {db}.t")), "{log}");
    assert!(log.contains("statement=CREATE USER IF ..."), "{log}");
    for hidden in ["sekrit-pw-42", "s = 'b'"] {
        assert!(!log.contains(hidden), "{hidden} in the log:\n{log}");
    }
    let events = read_events(&dir.path().join("log"));
    assert_eq!(events.len(), 1, "only the insert before it: {events:?}");

    // Never skipped: a restart stops at the same statement.
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("(/* app=checkout ..., touching"), "{err}");
    // The operator may ask for the statement.
    let (code, _, err) = tributary(&[
        "run",
        "--log-row-values",
        "--connector",
        c.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("s = 'b'"), "{err}");
    assert_eq!(read_events(&dir.path().join("log")).len(), 1);
}
