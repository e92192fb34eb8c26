//! The daemon's HTTP endpoints (`[http] listen`) through every state, with real
//! requests: starting (a server that never greets), streaming, the source down and
//! back (a proxy in front of MariaDB refusing), a sink down and back (a proxy in front
//! of the Elasticsearch stand-in refusing), and halted by the schema guard (the daemon
//! stays up and says why until it is stopped). `/health` answers 200 throughout,
//! `/status` is the JSON of `tributary status`, `/metrics` the Prometheus text.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;

/// Proxy ports of this test (below the ephemeral range; no other test uses them).
const SOURCE_PROXY_PORT: u16 = 23077;
const SINK_PROXY_PORT: u16 = 19275;

/// Adds `[http] listen` on a free port; returns it.
fn add_http(connector: &Path) -> u16 {
    add_listener(connector, "http", "ready_max_lag_secs = 30")
}

/// `/ready` as (status, state), after the daemon answers at all.
fn ready(port: u16) -> Option<(u16, Json)> {
    let (status, body) = http_get(port, "/ready")?;
    Some((status, serde_json::from_str(&body).unwrap()))
}

/// Waits until `/ready` answers `status` with `state`; returns the answer.
async fn until_ready(port: u16, status: u16, state: &str, c: &Path, daemon: &mut Child) -> Json {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((s, v)) = ready(port) {
            if s == status && v["state"] == state {
                return v;
            }
            last = Some((s, v));
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            daemon_log(c)
        );
        assert!(
            Instant::now() < deadline,
            "/ready never answered {status} {state}; last {last:?}\n{}",
            daemon_log(c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn health(port: u16) -> u16 {
    http_get(port, "/health").map(|(s, _)| s).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_daemon_through_every_state() {
    let url = elasticsearch();
    let db = new_db(
        "http",
        &["CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT NOT NULL)"],
    )
    .await;
    let mut conn = admin(SHARED_PORT).await;
    let dir = tempfile::tempdir().unwrap();

    // Starting: a server that accepts TCP but never greets holds the daemon in its
    // start-up checks until the connect timeout.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    let c = connector(dir.path(), mute_port, &db, "connect_timeout_secs = 5");
    let port = add_http(&c);
    let mut daemon = spawn_daemon(&c);
    until_ready(port, 503, "starting", &c, &mut daemon).await;
    assert_eq!(health(port), 200);
    let _ = daemon.wait();
    drop(mute);

    // Streaming, through proxies the test can close.
    let source_proxy = Proxy::start(SOURCE_PROXY_PORT, SHARED_PORT);
    let es_port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let sink_proxy = Proxy::start(SINK_PROXY_PORT, es_port);
    let dir = tempfile::tempdir().unwrap();
    let c = connector(
        dir.path(),
        SOURCE_PROXY_PORT,
        &db,
        "connect_timeout_secs = 2",
    );
    add_es_sink(&c, &format!("http://127.0.0.1:{SINK_PROXY_PORT}"), "");
    let port = add_http(&c);
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    until_ready(port, 200, "streaming", &c, &mut daemon).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (1, 1)")).await;
    wait_documents(&url, &format!("{db}_t"), 1).await;
    let (s, body) = http_get(port, "/status").unwrap();
    assert_eq!(s, 200, "{body}");
    let status: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(status["connector"], "test");
    assert_eq!(status["running"], true, "{status}");
    let (s, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(s, 200);
    assert!(metrics.contains("tributary_changes_total"), "{metrics}");
    assert_eq!(http_get(port, "/nothing").unwrap().0, 404);

    // The source down, then back.
    source_proxy.refuse();
    let v = until_ready(port, 503, "source_down", &c, &mut daemon).await;
    assert!(v["reason"].as_str().is_some(), "{v}");
    assert_eq!(health(port), 200);
    source_proxy.accept();
    until_ready(port, 200, "streaming", &c, &mut daemon).await;

    // The sink down (a change waits for it), then back.
    sink_proxy.refuse();
    // The proxy closes its port and cuts pooled connections within 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (2, 2)")).await;
    let v = until_ready(port, 503, "sink_retrying", &c, &mut daemon).await;
    assert!(
        v["retrying"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.contains("elasticsearch"))),
        "{v}"
    );
    sink_proxy.accept();
    until_ready(port, 200, "streaming", &c, &mut daemon).await;
    wait_documents(&url, &format!("{db}_t"), 2).await;

    // Halted by the schema guard (the default policy halts on a type change): the
    // daemon stays up and says why until it is stopped.
    exec(
        &mut conn,
        &format!("ALTER TABLE `{db}`.t MODIFY v VARCHAR(10) NOT NULL"),
    )
    .await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (3, 'x')")).await;
    let v = until_ready(port, 503, "halted", &c, &mut daemon).await;
    assert!(
        v["reason"].as_str().unwrap().contains(&format!("{db}.t")),
        "{v}"
    );
    assert_eq!(health(port), 200);
    assert_ne!(
        stop(&mut daemon),
        0,
        "a halt still fails the run once stopped"
    );
}
