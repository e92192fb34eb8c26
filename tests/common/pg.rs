//! PostgreSQL 15 test servers started by deploy/postgres.sh, admin sessions and
//! connector files for the Postgres source.

use std::path::{Path, PathBuf};

/// The server most Postgres tests share.
pub const PG_PORT: u16 = 25371;

/// Starts (once per test process) PostgreSQL on `port` with extra server arguments.
pub fn postgres(port: u16, extra_args: &str) {
    super::start_once(port, || pg_deploy(port, "start", extra_args));
}

pub fn pg_deploy(port: u16, action: &str, extra_args: &str) {
    super::run_deploy(
        "postgres.sh",
        "TRIBUTARY_POSTGRES_EXTRA_ARGS",
        port,
        action,
        extra_args,
    );
}

/// A superuser session on database `app`, with the settings the replication session
/// pins and synchronous commits (logical decoding reads flushed WAL only, and the test
/// server commits asynchronously).
pub async fn pg_admin(port: u16) -> tokio_postgres::Client {
    postgres(port, "");
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin password=admin dbname=app"),
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

/// A fresh schema that the `tributary` user may read, named like `prefix_<pid>_<n>`.
pub async fn pg_schema(client: &tokio_postgres::Client, prefix: &str) -> String {
    let schema = super::unique_db(prefix);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO tributary;
             ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO tributary;"
        ))
        .await
        .unwrap();
    schema
}

/// A connector file in `dir` capturing `include` from the server on `port` into
/// `dir/log`; slot and publication are named after `name`.
pub fn pg_connector(dir: &Path, port: u16, name: &str, include: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"name = "pgtest"
[source]
kind = "postgres"
port = {port}
database = "app"
user = "tributary"
password = "tributary"
sslmode = "disable"
slot = "{name}"
publication = "{name}"
include = ["{include}"]
status_interval_secs = 1
max_reconnect_backoff_secs = 2
{extra}

[[sink]]
kind = "log"
dir = "{log}"
segment_bytes = 1048576

[state]
dir = "{state}"
"#,
        log = dir.join("log").display(),
        state = dir.join("state").display(),
    );
    let path = dir.join("connector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The slot's confirmed_flush_lsn, as a number.
pub async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    row.get::<_, Option<String>>(0)
        .and_then(|s| tributary::event::parse_lsn(&s))
}

/// A fresh schema with table `t` (`columns`, SQL) and a publication for it, both named
/// after the schema; returns (schema, `schema.t`).
pub async fn pg_table(
    client: &tokio_postgres::Client,
    prefix: &str,
    columns: &str,
) -> (String, String) {
    let schema = pg_schema(client, prefix).await;
    let table = format!("{schema}.t");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} ({columns}); CREATE PUBLICATION {schema} FOR TABLE {table};"
        ))
        .await
        .unwrap();
    (schema, table)
}

/// Drops `slot` once no session holds it (a stopped daemon's walsender ends a moment
/// later), so finished tests leave the shared server no slot holding WAL.
pub async fn pg_drop_slot(client: &tokio_postgres::Client, slot: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rows = client
            .query(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        match rows.first().map(|r| r.get::<_, bool>(0)) {
            None => return,
            Some(false) => {
                if client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            Some(true) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot {slot} is still in use"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A table `t` (id int key, v bigint, note text) of `rows` rows in a fresh schema,
/// streamed by a running daemon into the Elasticsearch stand-in at `url` until the
/// index holds every row. Returns (schema, `schema.t`, work dir, connector, daemon).
pub async fn pg_items_in_elasticsearch(
    client: &tokio_postgres::Client,
    prefix: &str,
    url: &str,
    rows: u64,
) -> (
    String,
    String,
    tempfile::TempDir,
    PathBuf,
    std::process::Child,
) {
    let (schema, table) = pg_table(
        client,
        prefix,
        "id int PRIMARY KEY, v bigint NOT NULL, note text NOT NULL",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = pg_connector(dir.path(), PG_PORT, &schema, &table, "");
    super::add_es_sink(&c, url, "");
    let mut daemon = super::spawn_daemon(&c);
    super::wait_streaming(&c, &mut daemon).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT i, i * 10, 'note ' || i FROM generate_series(1, {rows}) i"
        ))
        .await
        .unwrap();
    super::wait_documents(url, &format!("{schema}_t"), rows as usize).await;
    (schema, table, dir, c, daemon)
}

/// Until `halt`: updates a row of the first `rows`, inserts one (ids from 100,001) and,
/// with `deletes`, deletes every third inserted one. Returns the rounds written.
pub fn pg_items_writer(
    table: String,
    rows: u64,
    deletes: bool,
    halt: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = pg_admin(PG_PORT).await;
        let mut n = 0u64;
        while !halt.load(std::sync::atomic::Ordering::SeqCst) {
            n += 1;
            let new = 100_000 + n;
            let delete = if deletes && n % 3 == 0 {
                format!("; DELETE FROM {table} WHERE id = {}", new - 2)
            } else {
                String::new()
            };
            client
                .batch_execute(&format!(
                    "UPDATE {table} SET v = v + 1, note = 'w {n}' WHERE id = {}; INSERT INTO {table} VALUES ({new}, {n}, 'new {n}'){delete}",
                    1 + (n * 37) % rows,
                ))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        n
    })
}

/// The `t` of `pg_items_in_elasticsearch` as its index should hold it: id -> document.
pub async fn pg_items_rows(
    client: &tokio_postgres::Client,
    table: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    client
        .query(&format!("SELECT id, v, note FROM {table}"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let (id, v, note): (i32, i64, String) = (r.get(0), r.get(1), r.get(2));
            (
                id.to_string(),
                serde_json::json!({"id": id, "v": v, "note": note}),
            )
        })
        .collect()
}
