//! `tributary init` against real MariaDB and PostgreSQL: it lists the tables with
//! their keys and sizes, runs the checks, and writes a connector file that
//! `tributary check` accepts as it is (and, on MariaDB, that a daemon streams with into
//! the Elasticsearch stand-in); a password in the URL, a missing password variable and
//! an existing file are refused.

mod common;

use std::process::Command;

use common::*;

/// `tributary init ARGS` with the password in TRIBUTARY_PASSWORD: (code, stdout, stderr).
fn init(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("init")
        .args(args)
        .env("TRIBUTARY_PASSWORD", "tributary")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["check", "--connector"])
        .arg(file)
        .env("TRIBUTARY_PASSWORD", "tributary")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_init_writes_a_connector_that_checks_and_streams() {
    let url = elasticsearch();
    let db = new_db(
        "init",
        &[
            "CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, total DECIMAL(10,2))",
            "CREATE TABLE `{db}`.audit (at DATETIME, what TEXT)",
            "INSERT INTO `{db}`.orders SELECT seq, seq * 1.5 FROM `{db}`.seq_1_to_50",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.toml");
    let source = format!("mariadb://tributary@127.0.0.1:{SHARED_PORT}/{db}");
    let state = dir.path().join("state");
    let (code, _, err) = init(&[
        "--source",
        &source,
        "--elasticsearch",
        &url,
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{db}.orders  key (id)")), "{err}");
    assert!(
        err.contains(&format!("{db}.audit  no primary key")),
        "{err}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("password_env = \"TRIBUTARY_PASSWORD\"") && !text.contains("password ="),
        "{text}"
    );
    assert!(text.contains(&format!("include = [\"{db}.*\"]")), "{text}");
    let (ok, out) = check(&file);
    assert!(ok, "{out}");

    // Streams as written (its [http] port moved off the default for the test).
    let text = text.replace("127.0.0.1:9187", "127.0.0.1:0");
    std::fs::write(&file, text).unwrap();
    let mut daemon = Command::new(bin())
        .args(["run", "--connector"])
        .arg(&file)
        .env("TRIBUTARY_PASSWORD", "tributary")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let docs = wait_documents(&url, &format!("{db}_orders"), 50).await;
    assert_eq!(docs.len(), 50);
    assert_eq!(stop(&mut daemon), 0);

    // Refusals.
    let (code, _, err) = init(&["--source", &source, "--out", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");
    let (code, _, err) = init(&[
        "--source",
        &format!("mariadb://tributary:secret@127.0.0.1:{SHARED_PORT}/{db}"),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--password-env") && !err.contains("secret"),
        "{err}"
    );
    let (code, _, err) = init(&["--source", &source, "--password-env", "NO_SUCH_VAR_X"]);
    assert_ne!(code, 0);
    assert!(err.contains("NO_SUCH_VAR_X"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_init_writes_a_connector_that_checks() {
    postgres(PG_PORT, "");
    let client = pg_admin(PG_PORT).await;
    let schema = pg_schema(&client, "init").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.items (id int PRIMARY KEY, v text); \
             INSERT INTO {schema}.items SELECT i, 'v' FROM generate_series(1, 20) i; ANALYZE {schema}.items"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = [
        "--source",
        &format!("postgres://tributary@127.0.0.1:{PG_PORT}/app"),
        "--schema",
        &schema,
        "--name",
        &schema,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    // The tables are not tributary's: the statement their owner runs is printed, and
    // init exits 1 (the file is written all the same).
    let (code, _, err) = init(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{schema}.items  key (id)  ~20 rows")),
        "{err}"
    );
    let statement = err
        .lines()
        .find_map(|l| Some(l.split_once("run as the tables' owner: ")?.1.to_string()))
        .unwrap_or_else(|| panic!("no statement for the owner: {err}"));
    assert!(
        err.contains("will be created"),
        "the set-up it plans: {err}"
    );
    client.batch_execute(&statement).await.unwrap();
    let (code, text, err) = init(&args);
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("app.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, out) = check(&file);
    assert!(ok, "{out}\n{text}");
}
