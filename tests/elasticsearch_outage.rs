//! Elasticsearch outages mid-stream: the stand-in frozen (SIGSTOP: requests time out)
//! and connections refused (through a proxy the test controls), each for 30 s, with a
//! kill -9 of the daemon during the outage. The daemon retries, memory stays bounded,
//! nothing is checkpointed past what the cluster acknowledged, and the index is exact
//! once the cluster answers again.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value as Json};

/// The stand-in these tests freeze (not shared with other tests).
const FROZEN_ES_PORT: u16 = 19272;
/// The proxy in front of the shared stand-in.
const PROXY_PORT: u16 = 19273;
const OUTAGE: Duration = Duration::from_secs(30);

async fn source_docs(db: &str) -> BTreeMap<String, Json> {
    let mut conn = admin(SHARED_PORT).await;
    let rows: Vec<(u64, i64)> = conn
        .query(format!("SELECT id, v FROM `{db}`.t"))
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, v)| (id.to_string(), json!({"id": id, "v": v})))
        .collect()
}

async fn converge(url: &str, db: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if source_docs(db).await == es_documents(url, &format!("{db}_t")).await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn changes(db: &str, from: u64, n: u64) {
    let mut conn = admin(SHARED_PORT).await;
    for k in 0..n / 20 {
        let lo = from + k * 20;
        let values: Vec<String> = (lo..lo + 20).map(|i| format!("({i}, {i})")).collect();
        conn.query_drop(format!("INSERT INTO `{db}`.t VALUES {}", values.join(",")))
            .await
            .unwrap();
        conn.query_drop(format!(
            "UPDATE `{db}`.t SET v = v + 1 WHERE id BETWEEN {} AND {}",
            lo.saturating_sub(30),
            lo
        ))
        .await
        .unwrap();
        conn.query_drop(format!(
            "DELETE FROM `{db}`.t WHERE id = {}",
            lo.saturating_sub(15)
        ))
        .await
        .unwrap();
    }
}

async fn setup(url: &str, prefix: &str) -> (String, tempfile::TempDir, std::path::PathBuf) {
    let db = new_db(
        prefix,
        &["CREATE TABLE `{db}`.t (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL)"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, url, "request_timeout_secs = 2");
    (db, dir, c)
}

/// Changes during the outage, kill -9 and restart during it, memory check; then the
/// cluster comes back and the index must be exact.
async fn outage(c: &Path, db: &str, check_url: &str, begin: impl FnOnce(), end: impl FnOnce()) {
    let mut daemon = spawn_daemon(c);
    wait_streaming(c, &mut daemon).await;
    changes(db, 1, 400).await;
    assert!(
        converge(check_url, db, Duration::from_secs(60)).await,
        "before the outage\n{}",
        daemon_log(c)
    );

    begin();
    let started = Instant::now();
    changes(db, 10_000, 400).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    kill9(&mut daemon);
    daemon = spawn_daemon(c);
    changes(db, 20_000, 200).await;
    let mut peak = 0;
    while started.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon gave up during the outage:\n{}",
            daemon_log(c)
        );
        peak = peak.max(rss_kib(daemon.id()));
    }
    assert!(
        peak < 128 * 1024,
        "daemon RSS reached {peak} KiB during the outage"
    );
    end();

    let ok = converge(check_url, db, Duration::from_secs(90)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(c));
    let log = daemon_log(c);
    assert!(ok, "index not exact after the outage\n{log}");
    assert!(
        log.contains("retrying"),
        "the daemon reported the outage:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_loses_nothing() {
    let url = elasticsearch_on(FROZEN_ES_PORT);
    let (db, _dir, c) = setup(&url, "esfreeze").await;
    let pid = elasticsearch_pid(FROZEN_ES_PORT).to_string();
    let signal = |s: &str| {
        std::process::Command::new("kill")
            .args([s, pid.as_str()])
            .status()
            .unwrap();
    };
    outage(&c, &db, &url, || signal("-STOP"), || signal("-CONT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_lose_nothing() {
    let url = elasticsearch();
    let proxy = Proxy::start(PROXY_PORT, ES_PORT);
    let (db, _dir, c) = setup(&format!("http://127.0.0.1:{PROXY_PORT}"), "esrefuse").await;
    outage(&c, &db, &url, || proxy.refuse(), || proxy.accept()).await;
}
