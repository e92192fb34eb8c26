//! Shared test harness: real MariaDB servers started by deploy/mariadb.sh, the real
//! tributary binary, and readers for what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde_json::Value as Json;

mod kafka;
mod pg;
mod snapshot;
#[allow(unused_imports)]
pub use kafka::*;
#[allow(unused_imports)]
pub use pg::*;
#[allow(unused_imports)]
pub use snapshot::*;

/// Port of the MariaDB server shared by most tests.
pub const SHARED_PORT: u16 = 23071;

static STARTED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `start` once per test process for `port` (servers of all kinds share the set:
/// their ports differ).
pub fn start_once(port: u16, start: impl FnOnce()) {
    let mut started = STARTED.lock().unwrap();
    if !started.contains(&port) {
        start();
        started.push(port);
    }
}

/// Runs `deploy/<script> <action> <port>` with `extra_args` in the environment
/// variable the script reads them from; fails the test with its output.
pub fn run_deploy(script: &str, extra_var: &str, port: u16, action: &str, extra_args: &str) {
    deploy_script(script, port, action, &[(extra_var, extra_args)]);
}

/// Runs `deploy/<script> <action> <port>` with `env`; fails the test with its output.
pub fn deploy_script(script: &str, port: u16, action: &str, env: &[(&str, &str)]) {
    let out = Command::new("bash")
        .arg(repo().join("deploy").join(script))
        .args([action, &port.to_string()])
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run deploy/{script}: {e}"));
    assert!(
        out.status.success(),
        "deploy/{script} {action} {port} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test certificates in `dir` through deploy/test-ca.sh: ca.pem, other.pem (an
/// unrelated CA), server.pem/.key for `san`, client.pem/.key; the server's files given
/// to `owner` when running as root; the client certificate's CN is `client_cn`.
pub fn test_ca(dir: &Path, san: &str, owner: &str, client_cn: &str) {
    let out = Command::new("bash")
        .arg(repo().join("deploy/test-ca.sh"))
        .arg(dir)
        .args([san, owner, client_cn])
        .output()
        .expect("run deploy/test-ca.sh");
    assert!(
        out.status.success(),
        "deploy/test-ca.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts (once per test process) a MariaDB on `port` with extra server arguments.
pub fn mariadb(port: u16, extra_args: &str) {
    start_once(port, || deploy(port, "start", extra_args));
}

pub fn deploy(port: u16, action: &str, extra_args: &str) {
    run_deploy(
        "mariadb.sh",
        "TRIBUTARY_MARIADB_EXTRA_ARGS",
        port,
        action,
        extra_args,
    );
}

pub async fn admin(port: u16) -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("admin"))
        .pass(Some("admin"))
        .prefer_socket(false);
    Conn::new(opts).await.expect("admin connection")
}

/// A fresh database name, unique per test run.
pub fn unique_db(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A connector file in `dir` streaming `db.*` from the server on `port` into `dir/log`.
pub fn connector(dir: &Path, port: u16, db: &str, extra_source: &str) -> PathBuf {
    let text = format!(
        r#"name = "test"
[source]
kind = "mariadb"
host = "127.0.0.1"
port = {port}
user = "tributary"
password = "tributary"
server_id = {server_id}
include = ["{db}.*"]
heartbeat_secs = 2
max_reconnect_backoff_secs = 2
{extra_source}

[[sink]]
kind = "log"
dir = "{log}"
segment_bytes = 1048576

[state]
dir = "{state}"
"#,
        server_id = unique_server_id(),
        log = dir.join("log").display(),
        state = dir.join("state").display(),
    );
    let path = dir.join("connector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A binlog client id no other connector of this test process uses: tests run side by
/// side on the shared server, and two clients with one id are refused (MariaDB error
/// 4052). (A random part collided now and then.) The process id keeps test binaries
/// apart as well.
fn unique_server_id() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    1_000_000 + (std::process::id() % 100_000) * 1000 + N.fetch_add(1, Ordering::SeqCst) % 1000
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tributary"))
}

/// Runs the daemon in the background; its stderr goes to `dir/daemon.log`.
pub fn spawn_daemon(connector: &Path) -> Child {
    spawn_daemon_env(connector, &[])
}

/// `spawn_daemon` with extra environment variables.
pub fn spawn_daemon_env(connector: &Path, env: &[(&str, &str)]) -> Child {
    let dir = connector.parent().unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    Command::new(bin())
        .args(["run", "--connector"])
        .arg(connector)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tributary")
}

/// Runs a tributary command to completion: (exit code, stdout, stderr).
pub fn tributary(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run tributary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn daemon_log(connector: &Path) -> String {
    std::fs::read_to_string(connector.parent().unwrap().join("daemon.log")).unwrap_or_default()
}

/// Sends SIGTERM and waits for a clean exit.
pub fn stop(child: &mut Child) -> i32 {
    send_signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    status.code().unwrap_or(-1)
}

/// kill -9.
pub fn kill9(child: &mut Child) {
    send_signal(child.id(), "KILL");
    let _ = child.wait();
}

/// Sends signal `sig` (`TERM`, `KILL`, `STOP`...) to process `pid`; whether it was
/// delivered.
pub fn send_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// While `writer` runs, kill -9 the daemon every `base_ms` + 0-499 ms (varied per kill)
/// and start it again; returns the running daemon and the number of kills.
pub async fn kill_9_repeatedly<T>(
    writer: &tokio::task::JoinHandle<T>,
    mut daemon: Child,
    connector: &Path,
    base_ms: u64,
) -> (Child, u32) {
    let (mut kills, started) = (0u32, Instant::now());
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(base_ms + (kills as u64 * 137) % 500)).await;
        if writer.is_finished() {
            break;
        }
        kill9(&mut daemon);
        kills += 1;
        daemon = spawn_daemon(connector);
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "workload takes too long"
        );
    }
    (daemon, kills)
}

/// Every event in the log stream, parsed (checksums verified by the reader).
pub fn read_events(log_dir: &Path) -> Vec<Json> {
    if !log_dir.exists() {
        return Vec::new();
    }
    // A live log with tight retention can lose a segment under a slow reader (the
    // reader says so): read it again.
    for _ in 0..10 {
        let mut out = Vec::new();
        match tributary::journal::read_log(log_dir, |r| {
            out.push(serde_json::from_str(&r.json).unwrap());
            true
        }) {
            Ok(_) => return out,
            Err(e) if e.to_string().contains("retention deleted") => continue,
            Err(e) => panic!("log stream unreadable: {e}"),
        }
    }
    panic!(
        "log stream {}: retention kept deleting segments under the reader",
        log_dir.display()
    )
}

/// Waits until the daemon checkpointed a position (it is streaming).
pub async fn wait_streaming(connector: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = connector.parent().unwrap().join("daemon.log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("streaming binlog") || text.contains("streaming logical replication") {
            // Give the start checkpoint a moment to land.
            tokio::time::sleep(Duration::from_millis(400)).await;
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("daemon exited early ({status}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not start streaming:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the log holds at least `n` events (best effort reads of a live log
/// stop at a partly written record).
pub async fn wait_for_events(log_dir: &Path, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let mut count = 0;
        let _ = tributary::journal::read_log(log_dir, |_| {
            count += 1;
            true
        });
        if count >= n || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn exec(conn: &mut Conn, sql: &str) {
    conn.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Port of the Elasticsearch stand-in (osmem-server) the tests share.
pub const ES_PORT: u16 = 19271;

static ES_STARTED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Starts (once per test process) the shared stand-in through deploy/osmem.sh; its URL.
pub fn elasticsearch() -> String {
    elasticsearch_on(ES_PORT)
}

/// Starts (once per test process) a stand-in on `port`; its URL.
pub fn elasticsearch_on(port: u16) -> String {
    let mut started = ES_STARTED.lock().unwrap();
    if !started.contains(&port) {
        let out = Command::new("bash")
            .arg(repo().join("deploy/osmem.sh"))
            .args(["start", &port.to_string()])
            .output()
            .expect("run deploy/osmem.sh");
        assert!(
            out.status.success(),
            "deploy/osmem.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.push(port);
    }
    format!("http://127.0.0.1:{port}")
}

/// The Kafka stand-in's test port.
pub const KAFKA_PORT: u16 = 19371;

/// Starts (once per test process) the Kafka stand-in on `port`; its address.
pub fn kafka_on(port: u16) -> String {
    start_once(port, || kafka_deploy(port, "start"));
    format!("127.0.0.1:{port}")
}

/// Runs `deploy/kafka.sh ACTION PORT`.
pub fn kafka_deploy(port: u16, action: &str) {
    deploy_script("kafka.sh", port, action, &[]);
}

/// A Kafka stand-in on `port` of the test's own, with no data (a test that restarts
/// its broker waits for it to load what it holds: only this test's records); its
/// address once it answers.
pub fn kafka_fresh(port: u16) -> String {
    kafka_deploy(port, "stop");
    let _ = std::fs::remove_dir_all(format!("/tmp/tributary-kafka-{port}"));
    kafka_deploy(port, "start");
    kafka_ready(port)
}

/// Waits until the broker on `port` answers a metadata request (it opens its port
/// before it has loaded its data); its address.
pub fn kafka_ready(port: u16) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = format!("127.0.0.1:{port}");
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the Kafka stand-in on {brokers} does not answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    brokers
}

/// The stand-in's process id (deploy/osmem.sh keeps it).
pub fn elasticsearch_pid(port: u16) -> u32 {
    std::fs::read_to_string(format!("/tmp/tributary-osmem-{port}/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of the resident set (the heap and stacks): unlike VmRSS it does
/// not grow as more of the binary's code is paged in.
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A TCP proxy the test controls: forwards `listen` to `target`; while refusing, the
/// port is closed (connections are refused) and open connections are cut.
pub struct Proxy {
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn start(listen: u16, target: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let refuse = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (r, g) = (refuse.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                if r.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let gen_now = g.load(Ordering::SeqCst);
                loop {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    if r.load(Ordering::SeqCst) {
                        break; // drops the listener: the port refuses connections
                    }
                    let Ok(Ok((mut inbound, _))) = accepted else {
                        continue;
                    };
                    let g2 = g.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                        else {
                            return;
                        };
                        let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                        tokio::pin!(copy);
                        loop {
                            tokio::select! {
                                _ = &mut copy => return,
                                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                    if g2.load(Ordering::SeqCst) != gen_now { return; }
                                }
                            }
                        }
                    });
                }
            }
        });
        Proxy { refuse, generation }
    }

    /// Closes the port and cuts open connections.
    pub fn refuse(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn accept(&self) {
        self.refuse.store(false, Ordering::SeqCst);
    }
}

/// An HTTP proxy in front of the stand-in that refuses requests whose body is larger
/// than `max_body` with 413, like Elasticsearch's `http.max_content_length` (the
/// stand-in has no limit). One request per connection (`Connection: close`); returns
/// the largest body it forwarded, for the test to check.
pub fn limit_body_proxy(
    listen: u16,
    target: u16,
    max_body: usize,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let largest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = largest.clone();
    let listener = std::net::TcpListener::bind(("127.0.0.1", listen)).unwrap();
    listener.set_nonblocking(true).unwrap();
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if inbound.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let length: usize = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                if inbound.read_exact(&mut body).await.is_err() {
                    return;
                }
                if length > max_body {
                    let answer = "{\"error\":\"request too large\"}";
                    let _ = inbound
                        .write_all(format!("HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}", answer.len()).as_bytes())
                        .await;
                    return;
                }
                seen.fetch_max(length, Ordering::SeqCst);
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let (line, rest) = text.split_once("\r\n").unwrap();
                let request = format!("{line}\r\nconnection: close\r\n{rest}");
                if outbound.write_all(request.as_bytes()).await.is_err()
                    || outbound.write_all(&body).await.is_err()
                {
                    return;
                }
                let mut answer = Vec::new();
                let _ = outbound.read_to_end(&mut answer).await;
                let _ = inbound.write_all(&answer).await;
            });
        }
    });
    largest
}

/// Appends a `[[sink]]` with settings `body` to a connector file written by
/// `connector` (before its `[state]`).
pub fn add_sink(connector: &Path, body: &str) {
    let text = std::fs::read_to_string(connector)
        .unwrap()
        .replace("[state]", &format!("[[sink]]\n{body}\n\n[state]"));
    std::fs::write(connector, text).unwrap();
}

/// Appends an Elasticsearch sink to a connector file written by `connector`.
pub fn add_es_sink(connector: &Path, url: &str, extra: &str) {
    let dir = connector.parent().unwrap();
    add_sink(
        connector,
        &format!(
            "kind = \"elasticsearch\"\nurls = [\"{url}\"]\ndead_letter_dir = \"{}\"\nbatch_docs = 500\nmax_backoff_secs = 2\n{extra}",
            dir.join("dead-letters").display()
        ),
    );
}

/// The daemon's exit code once it exited (None: still running after `limit`, killed).
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(child);
    None
}

/// Every document behind `alias`: id -> _source.
pub async fn es_documents(url: &str, alias: &str) -> std::collections::BTreeMap<String, Json> {
    use elasticsearch::http::transport::Transport;
    let client = elasticsearch::Elasticsearch::new(Transport::single_node(url).unwrap());
    let r = client
        .search(elasticsearch::SearchParts::Index(&[alias]))
        .body(serde_json::json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
        .unwrap();
    if r.status_code().as_u16() == 404 {
        return Default::default();
    }
    let body: Json = r.json().await.unwrap();
    body["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("search {alias}: {body}"))
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect()
}

/// Serves the daemon's metrics on a free loopback port (`[metrics]`, the older
/// spelling); returns it.
pub fn add_metrics(connector: &Path) -> u16 {
    add_listener(connector, "metrics", "")
}

/// Adds section `[name]` with `listen` on a free loopback port and `extra` lines;
/// returns the port.
pub fn add_listener(connector: &Path, name: &str, extra: &str) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(connector).unwrap().replace(
        "[state]",
        &format!("[{name}]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n\n[state]"),
    );
    std::fs::write(connector, text).unwrap();
    port
}

/// A new database on the shared MariaDB with `tables` created in it (`{db}` in each
/// statement is its name); returns the name.
pub async fn new_db(prefix: &str, tables: &[&str]) -> String {
    mariadb(SHARED_PORT, "");
    let db = unique_db(prefix);
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    for t in tables {
        exec(&mut conn, &t.replace("{db}", &db)).await;
    }
    db
}

/// The value of the Prometheus sample whose line starts with `series` (name and
/// labels as rendered), from the daemon's /metrics.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, text) = http_get(port, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// GET `path` from the daemon's HTTP endpoints on `port`: (status, body); None when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Points the connector at a schema policy file.
pub fn set_policy(connector: &Path, policy: &Path) {
    let text = std::fs::read_to_string(connector).unwrap().replace(
        "[state]",
        &format!("[schema]\npolicy = \"{}\"\n\n[state]", policy.display()),
    );
    std::fs::write(connector, text).unwrap();
}

/// Waits (up to 60 s) until `alias` holds at least `n` documents; returns them.
pub async fn wait_documents(
    url: &str,
    alias: &str,
    n: usize,
) -> std::collections::BTreeMap<String, Json> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let docs = es_documents(url, alias).await;
        if docs.len() >= n || Instant::now() > deadline {
            return docs;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits (up to 30 s) for a daemon that must stop on its own with a failure (a halt);
/// returns its log.
/// Waits (up to `secs`) until `done` holds, checking every 300 ms; else fails with
/// what it waited for and the daemon's log.
pub async fn wait_until(connector: &Path, secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited {secs} s for {what}:\n{}",
            daemon_log(connector)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn halted(connector: &Path, daemon: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            assert!(!status.success(), "{}", daemon_log(connector));
            return daemon_log(connector);
        }
        assert!(
            Instant::now() < deadline,
            "no halt:\n{}",
            daemon_log(connector)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET `<index>/_mapping`: by concrete index name.
pub async fn mapping_json(url: &str, index: &str) -> Json {
    let client = elasticsearch::Elasticsearch::new(
        elasticsearch::http::transport::Transport::single_node(url).unwrap(),
    );
    client
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            index,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The field types of `alias`'s mapping, and its `_meta`.
pub async fn mapping_of(
    url: &str,
    alias: &str,
) -> (std::collections::BTreeMap<String, String>, Json) {
    let body = mapping_json(url, alias).await;
    let mut types = std::collections::BTreeMap::new();
    let mut meta = Json::Null;
    for index in body.as_object().unwrap().values() {
        for (k, v) in index["mappings"]["properties"].as_object().unwrap() {
            types.insert(k.clone(), v["type"].as_str().unwrap_or("").to_string());
        }
        meta = index["mappings"]["_meta"].clone();
    }
    (types, meta)
}

/// Every document behind `alias`, paged in `id` order: id -> _source (for indexes
/// larger than one search page).
pub async fn es_documents_by_id(url: &str, alias: &str) -> std::collections::BTreeMap<i64, Json> {
    use elasticsearch::http::transport::Transport;
    let client = elasticsearch::Elasticsearch::new(Transport::single_node(url).unwrap());
    let mut out = std::collections::BTreeMap::new();
    let mut after: Option<Json> = None;
    loop {
        let mut body =
            serde_json::json!({"size": 10000, "sort": [{"id": "asc"}], "query": {"match_all": {}}});
        if let Some(a) = &after {
            body["search_after"] = a.clone();
        }
        let r = client
            .search(elasticsearch::SearchParts::Index(&[alias]))
            .body(body)
            .send()
            .await
            .unwrap();
        if r.status_code().as_u16() == 404 {
            return out;
        }
        let page: Json = r.json().await.unwrap();
        let hits = page["hits"]["hits"]
            .as_array()
            .unwrap_or_else(|| panic!("search {alias}: {page}"))
            .clone();
        if hits.is_empty() {
            return out;
        }
        for h in &hits {
            out.insert(h["_source"]["id"].as_i64().unwrap(), h["_source"].clone());
        }
        after = Some(hits.last().unwrap()["sort"].clone());
    }
}

/// `<db>.items` (id key, v, note) of `rows` rows in a fresh database, streamed by a
/// running daemon into the Elasticsearch stand-in at `url` until the index holds every
/// row. Returns (db, work dir, connector, daemon).
pub async fn items_in_elasticsearch(
    prefix: &str,
    url: &str,
    rows: u64,
) -> (String, tempfile::TempDir, PathBuf, Child) {
    let db = new_db(
        prefix,
        &["CREATE TABLE `{db}`.items (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, note VARCHAR(100) NOT NULL)"],
    )
    .await;
    let mut conn = admin(SHARED_PORT).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, url, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.items SELECT seq, seq * 10, CONCAT('note ', seq) FROM `{db}`.seq_1_to_{rows}"),
    )
    .await;
    wait_documents(url, &format!("{db}_items"), rows as usize).await;
    (db, dir, c, daemon)
}

/// `<db>.items` as its index should hold it: id -> document.
pub async fn items_rows(db: &str) -> std::collections::BTreeMap<String, Json> {
    items_rows_at(SHARED_PORT, db).await
}

/// `items_rows` on the server at `port`.
pub async fn items_rows_at(port: u16, db: &str) -> std::collections::BTreeMap<String, Json> {
    let mut conn = admin(port).await;
    let rows: Vec<(u64, i64, String)> = conn
        .query(format!("SELECT id, v, note FROM `{db}`.items"))
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, v, note)| {
            (
                id.to_string(),
                serde_json::json!({"id": id, "v": v, "note": note}),
            )
        })
        .collect()
}

/// Rotates the binlog and purges every file before the new one (MariaDB keeps a binlog
/// until its binlog checkpoint is written: retried until gone). Only on a server no
/// other test streams from.
pub async fn purge_binlogs(conn: &mut Conn) {
    exec(conn, "FLUSH BINARY LOGS").await;
    let current: String = conn
        .query_first::<mysql_async::Row, _>("SHOW MASTER STATUS")
        .await
        .unwrap()
        .unwrap()
        .get(0)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        exec(conn, &format!("PURGE BINARY LOGS TO '{current}'")).await;
        let first: String = conn
            .query_first::<mysql_async::Row, _>("SHOW BINARY LOGS")
            .await
            .unwrap()
            .unwrap()
            .get(0)
            .unwrap();
        if first == current {
            return;
        }
        assert!(Instant::now() < deadline, "the server kept {first}");
        exec(conn, "FLUSH BINARY LOGS").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A client of the stand-in at `url`.
pub fn es(url: &str) -> elasticsearch::Elasticsearch {
    elasticsearch::Elasticsearch::new(
        elasticsearch::http::transport::Transport::single_node(url).unwrap(),
    )
}

/// The concrete indexes behind `alias`.
pub async fn behind(url: &str, alias: &str) -> Vec<String> {
    let r = es(url)
        .indices()
        .get_alias(elasticsearch::indices::IndicesGetAliasParts::Name(&[alias]))
        .send()
        .await
        .unwrap();
    let v: Json = r.json().await.unwrap();
    let mut out: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    out.sort();
    out
}

pub async fn exists(url: &str, index: &str) -> bool {
    es(url)
        .indices()
        .exists(elasticsearch::indices::IndicesExistsParts::Index(&[index]))
        .send()
        .await
        .unwrap()
        .status_code()
        .is_success()
}

/// Waits until `alias` holds exactly `want()` (the daemon keeps running).
pub async fn until_equal<F, Fut>(url: &str, alias: &str, c: &Path, want: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::collections::BTreeMap<String, Json>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (w, got) = (want().await, es_documents(url, alias).await);
        if w == got {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the index did not converge: {} rows, {} documents\n{}",
            w.len(),
            got.len(),
            daemon_log(c)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Indexes `doc` as `id` behind tributary's back (no version: a tampered document).
pub async fn es_put(url: &str, alias: &str, id: &str, doc: Json) {
    let r = es(url)
        .index(elasticsearch::IndexParts::IndexId(alias, id))
        .body(doc)
        .send()
        .await
        .unwrap();
    assert!(r.status_code().is_success(), "{:?}", r.text().await);
}

/// Deletes document `id` behind tributary's back.
pub async fn es_delete(url: &str, alias: &str, id: &str) {
    let r = es(url)
        .delete(elasticsearch::DeleteParts::IndexId(alias, id))
        .send()
        .await
        .unwrap();
    assert!(r.status_code().is_success(), "{:?}", r.text().await);
}
