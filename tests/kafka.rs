//! The Kafka sink against a real MariaDB and the Kafka stand-in: under a stream of
//! writes, with the daemon killed -9 three times, a `read_committed` consumer sees
//! every change exactly once, per key in commit order; a `read_uncommitted` one also
//! sees the records of the transactions the kills left open (the producer really uses
//! transactions). Bad settings stop the sink with one clear message each.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use serde_json::Value as Json;

/// Appends a Kafka sink (topics `test.{db}.{table}`) to connector `c`.
fn add_kafka_sink(c: &std::path::Path, brokers: &str, extra: &str) {
    add_sink(
        c,
        &format!(
            "kind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"test.{{db}}.{{table}}\"\npartitions = 3\nrequest_timeout_secs = 5\n{extra}"
        ),
    );
}

/// Every record of `topic` from the start, at `isolation`, until none came for `quiet`:
/// (key, value, headers op).
fn consume(
    brokers: &str,
    topic: &str,
    isolation: &str,
    quiet: Duration,
) -> Vec<(String, Json, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-{topic}-{isolation}-{}", std::process::id()),
        )
        .set("isolation.level", isolation)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while last.elapsed() < quiet && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            last = Instant::now();
            use rdkafka::message::Headers;
            let op = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "op"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).to_string())
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                m.payload()
                    .map_or(Json::Null, |p| serde_json::from_slice(p).unwrap()),
                op,
            ));
        }
    }
    out
}

/// Pauses or ends the writer, and counts the changes it committed.
#[derive(Clone, Default)]
struct Gate {
    paused: Arc<AtomicBool>,
    halt: Arc<AtomicBool>,
    changes: Arc<AtomicUsize>,
}

/// Runs `transactions` transactions on `db`.items (columns id, n, note) in the
/// background (fewer when `gate` halts it), waiting while `gate` is paused; returns
/// what it did.
fn spawn_writer(
    db: String,
    transactions: usize,
    gate: Gate,
) -> tokio::task::JoinHandle<BTreeMap<i64, Vec<(String, i64)>>> {
    // The writer: transactions of one to three statements on 30 keys; every change
    // sets `n` to a sequence number of its own, so each is told apart. What it did,
    // per key: (op, n) in commit order.
    let writer_db = db;
    tokio::spawn(async move {
        let mut conn = admin(SHARED_PORT).await;
        let mut expected: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
        let mut alive = std::collections::BTreeSet::new();
        let mut seq = 0i64;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..transactions {
            if gate.halt.load(Ordering::SeqCst) {
                break;
            }
            while gate.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            conn.query_drop("BEGIN").await.unwrap();
            let mut done = Vec::new();
            for _ in 0..1 + next(3) {
                let id = 1 + next(30) as i64;
                seq += 1;
                let (sql, op) = if !alive.contains(&id) {
                    (
                        format!("INSERT INTO `{writer_db}`.items VALUES ({id}, {seq}, 'x')"),
                        "c",
                    )
                } else if next(4) == 0 {
                    (
                        format!("DELETE FROM `{writer_db}`.items WHERE id = {id}"),
                        "d",
                    )
                } else {
                    (
                        format!("UPDATE `{writer_db}`.items SET n = {seq} WHERE id = {id}"),
                        "u",
                    )
                };
                conn.query_drop(&sql).await.unwrap();
                match op {
                    "c" => {
                        alive.insert(id);
                    }
                    "d" => {
                        alive.remove(&id);
                    }
                    _ => {}
                }
                done.push((id, op, seq));
            }
            conn.query_drop("COMMIT").await.unwrap();
            gate.changes.fetch_add(done.len(), Ordering::SeqCst);
            for (id, op, seq) in done {
                expected.entry(id).or_default().push((op.to_string(), seq));
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        expected
    })
}

/// A `read_committed` consumer of `topic` sees each change `expected` lists once, per
/// key in commit order; returns how many records it read.
async fn assert_exactly_once(
    brokers: &str,
    topic: &str,
    expected: &BTreeMap<i64, Vec<(String, i64)>>,
    c: &std::path::Path,
) -> usize {
    let wanted: usize = expected.values().map(Vec::len).sum();

    // Read committed: each change once, per key in commit order. A delete carries the
    // row before it (its n is the one the key had: the previous change's).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut committed = consume(brokers, topic, "read_committed", Duration::from_secs(3));
    while committed.len() < wanted && Instant::now() < deadline {
        committed = consume(brokers, topic, "read_committed", Duration::from_secs(3));
    }
    let mut seen: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    for (key, value, op) in &committed {
        let key: Json = serde_json::from_str(key).unwrap_or_else(|e| panic!("{e}: {key}"));
        let id = key["id"].as_i64().unwrap();
        let n = if op == "d" {
            -1
        } else {
            value["after"]["n"].as_i64().unwrap()
        };
        assert_eq!(value["op"], op.as_str(), "{value}");
        seen.entry(id).or_default().push((op.clone(), n));
    }
    let expected_seen: BTreeMap<i64, Vec<(String, i64)>> = expected
        .iter()
        .map(|(id, changes)| {
            let changes = changes
                .iter()
                .map(|(op, n)| (op.clone(), if op == "d" { -1 } else { *n }))
                .collect();
            (*id, changes)
        })
        .collect();
    assert_eq!(seen, expected_seen, "{}", daemon_log(c));
    assert_eq!(committed.len(), wanted);
    committed.len()
}

/// A fresh `<prefix>_..`.items (id, n, note) and a daemon streaming it into Kafka on
/// `brokers` (topic `test.<db>.items`, its own transactional id and progress topic),
/// already streaming (so no change is a snapshot read).
async fn items_into_kafka(
    prefix: &str,
    brokers: &str,
) -> (
    String,
    tempfile::TempDir,
    std::path::PathBuf,
    std::process::Child,
) {
    let db = new_db(
        prefix,
        &["CREATE TABLE `{db}`.items (id INT PRIMARY KEY, n BIGINT NOT NULL, note VARCHAR(20))"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_kafka_sink(
        &c,
        brokers,
        &format!("transactional_id = \"test-{db}\"\nprogress_topic = \"test.progress.{db}\""),
    );
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    (db, dir, c, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_kafka_exactly_once_through_three_kill_9s() {
    let brokers = kafka_on(KAFKA_PORT);
    let (db, _dir, c, mut daemon) = items_into_kafka("kafka", &brokers).await;

    let gate = Gate::default();
    let writer = spawn_writer(db.clone(), usize::MAX, gate.clone());
    let topic = format!("test.{db}.items");

    // Three kills at least; more until one landed inside an open Kafka transaction
    // (a caught-up daemon commits within milliseconds of producing, so a kill often
    // finds nothing open): its records are then there for a read_uncommitted reader.
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        kill9(&mut daemon);
        kills += 1;
        daemon = spawn_daemon(&c);
        if kills >= 3 {
            // With the writer paused and the daemon caught up, nothing is open: more
            // records for read_uncommitted are aborted ones.
            gate.paused.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2000)).await;
            let quiet = Duration::from_millis(500);
            let aborted = consume(&brokers, &topic, "read_uncommitted", quiet).len()
                > consume(&brokers, &topic, "read_committed", quiet).len();
            gate.paused.store(false, Ordering::SeqCst);
            if aborted || kills >= 12 {
                break;
            }
        }
    }
    gate.halt.store(true, Ordering::SeqCst);
    let expected = writer.await.unwrap();
    let committed = assert_exactly_once(&brokers, &topic, &expected, &c).await;

    // Read uncommitted: the aborted transactions' records too.
    let everything = consume(&brokers, &topic, "read_uncommitted", Duration::from_secs(3));
    assert!(
        everything.len() > committed,
        "read_uncommitted {} records, read_committed {}: no transaction was aborted by the kills",
        everything.len(),
        committed
    );
    stop(&mut daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kafka_settings_are_named() {
    let brokers = kafka_on(KAFKA_PORT);
    let db = new_db("kafkabad", &["CREATE TABLE `{db}`.t (id INT PRIMARY KEY)"]).await;
    let mut conn = admin(SHARED_PORT).await;
    exec(&mut conn, &format!("INSERT INTO `{db}`.t VALUES (1)")).await;

    // A topic that does not exist with create_topics = false.
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_kafka_sink(&c, &brokers, &format!("create_topics = false\ntransactional_id = \"bad-{db}\"\nprogress_topic = \"test.progress.{db}\""));
    let mut daemon = spawn_daemon(&c);
    let status = wait_exit(&mut daemon, Duration::from_secs(60));
    let log = daemon_log(&c);
    assert_ne!(status, Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "topic test.progress.{db} does not exist and create_topics = false"
        )),
        "{log}"
    );

    // check says the same before a start, and names brokers nobody answers on.
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "topic test.progress.{db} does not exist and create_topics = false"
        )),
        "{out}"
    );
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace(&brokers, "127.0.0.1:1");
    std::fs::write(&c, text).unwrap();
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("error sink kafka:127.0.0.1:1: cannot reach the Kafka brokers 127.0.0.1:1"),
        "{out}"
    );

    // A placeholder the topic template does not know, at its line.
    let c2 = connector(dir.path(), SHARED_PORT, &db, "");
    add_kafka_sink(&c2, &brokers, "");
    let text = std::fs::read_to_string(&c2)
        .unwrap()
        .replace("test.{db}.{table}", "{schema}.{table}");
    std::fs::write(&c2, text).unwrap();
    let (code, out, err) = tributary(&["check", "--connector", c2.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("`{schema}` is not one of {connector}, {db}, {table}"),
        "{out}\n{err}"
    );
}

/// Table `db.table` with one INT key column `id`.
fn table(name: &str) -> std::sync::Arc<tributary::event::TableSchema> {
    let (db, table) = name.split_once('.').unwrap();
    std::sync::Arc::new(tributary::event::TableSchema::new(
        std::sync::Arc::from("c"),
        "postgres",
        db.into(),
        table.into(),
        vec![tributary::event::Column {
            name: "id".into(),
            type_name: "integer".into(),
        }],
        vec![0],
        1,
    ))
}

/// An insert of row `id` at WAL location `lsn`.
fn insert(
    t: &std::sync::Arc<tributary::event::TableSchema>,
    id: i64,
    lsn: u64,
) -> tributary::event::SourceMessage {
    tributary::event::SourceMessage::Change(tributary::event::ChangeEvent {
        op: tributary::event::Op::Create,
        table: t.clone(),
        pos: tributary::event::Position::Wal { lsn },
        txid: None,
        source_ts_ms: 0,
        before: None,
        after: Some(vec![tributary::event::Value::Int(id)]),
        version: lsn,
        ts_ms: 0,
    })
}

fn commit(lsn: u64) -> tributary::event::SourceMessage {
    tributary::event::SourceMessage::Commit(tributary::event::Position::Wal { lsn })
}

/// A Kafka sink opened directly (as the pipeline opens it), with `cursor`.
fn open_sink(brokers: &str, name: &str, cursor: Option<Json>) -> Box<dyn tributary::sink::Sink> {
    use tributary::sink::SinkKind;
    let cfg: tributary::sink::kafka::KafkaSinkConfig = toml::from_str(&format!(
        "kind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"test.{{db}}.{{table}}\"\ntransactional_id = \"{name}\"\nprogress_topic = \"test.progress.{name}\"\npartitions = 1\nrequest_timeout_secs = 5"
    ))
    .unwrap();
    let context = tributary::sink::SinkContext {
        policy: std::sync::Arc::new(tributary::schema::Policy::add_only()),
        upstream: std::sync::Arc::new(|_, _| Json::Null),
        state_dir: None,
        documents: Default::default(),
        connector: "c".into(),
    };
    cfg.open(cfg.id(), cursor, &context).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_commits_at_a_boundary_and_a_restart_skips_what_kafka_holds() {
    let brokers = kafka_on(KAFKA_PORT);
    let name = unique_db("kskip");
    let t = table(&format!("{name}.t"));
    let topic = format!("test.{name}.t");
    // The ids a read_committed consumer sees, in order.
    let committed_ids = || -> Vec<i64> {
        consume(&brokers, &topic, "read_committed", Duration::from_secs(2))
            .iter()
            .map(|(_, v, _)| v["after"]["id"].as_i64().unwrap())
            .collect()
    };

    // Transaction 1 (ids 1, 2) ends at 100; 3 of transaction 2 is taken when the flush
    // comes: the flush waits for 2's boundary, so Kafka never shows half of it.
    let mut sink = open_sink(&brokers, &name, None);
    sink.accept(&[
        insert(&t, 1, 10),
        insert(&t, 2, 20),
        commit(100),
        insert(&t, 3, 110),
    ])
    .await
    .unwrap();
    let mut ack = sink.flush().await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(1500), &mut ack).await;
    assert!(
        early.is_err(),
        "the flush answered inside a source transaction"
    );
    assert_eq!(committed_ids(), Vec::<i64>::new());
    sink.accept(&[insert(&t, 4, 120), commit(200)])
        .await
        .unwrap();
    let cursor = ack.await.unwrap();
    // The cursor names the checkpoint's boundary: the one before the flush.
    assert_eq!(
        cursor.as_ref().unwrap()["checkpoint"]["lsn"],
        "0/64",
        "{cursor:?}"
    );
    assert_eq!(committed_ids(), vec![1, 2, 3, 4]);
    drop(sink);

    // A restart from the checkpoint at 100 (the process died before storing the one
    // at 200): transaction 2 comes again, and Kafka, which holds it, does not take it
    // twice; transaction 3 goes on.
    let mut sink = open_sink(&brokers, &name, cursor);
    sink.accept(&[insert(&t, 3, 110), insert(&t, 4, 120), commit(200)])
        .await
        .unwrap();
    sink.accept(&[insert(&t, 5, 210), commit(300)])
        .await
        .unwrap();
    sink.flush().await.unwrap().await.unwrap();
    assert_eq!(committed_ids(), vec![1, 2, 3, 4, 5]);

    // A rewind of records already in the open transaction: the transaction is aborted
    // and the connector must start again from its checkpoint.
    sink.accept(&[insert(&t, 6, 310), tributary::event::SourceMessage::Rewind])
        .await
        .unwrap();
    let e = match sink.flush().await {
        Ok(ack) => ack.await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        matches!(e, tributary::sink::SinkError::FromCheckpoint { .. }),
        "{e}"
    );
    assert_eq!(committed_ids(), vec![1, 2, 3, 4, 5]);
}

/// The Kafka stand-in port of the outage test, which stops its broker.
const OUTAGE_KAFKA_PORT: u16 = 19373;

fn signal_broker(port: u16, signal: &str) {
    let pid = std::fs::read_to_string(format!("/tmp/tributary-kafka-{port}/pid")).unwrap();
    assert!(send_signal(pid.trim().parse().unwrap(), signal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_away_for_20_s_twice_loses_and_doubles_nothing() {
    let brokers = kafka_fresh(OUTAGE_KAFKA_PORT);
    let (db, _dir, c, mut daemon) = items_into_kafka("kafkaout", &brokers).await;
    let gate = Gate::default();
    let writer = spawn_writer(db.clone(), usize::MAX, gate.clone());
    let topic = format!("test.{db}.items");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. The broker freezes for 20 s under writes (a long pause or a partition: its
    //    connections stay open and answer nothing).
    signal_broker(OUTAGE_KAFKA_PORT, "STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal_broker(OUTAGE_KAFKA_PORT, "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. The broker stops for 20 s and starts again. The stand-in loses writes it takes
    //    while it stops, so the stop comes while nothing writes: the writer pauses and
    //    Kafka holds everything committed so far; then the writer goes on while the
    //    broker is away.
    gate.paused.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = gate.changes.load(Ordering::SeqCst);
        let have = consume(&brokers, &topic, "read_committed", Duration::from_secs(1)).len();
        if have >= done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka holds {have} of {done} changes:\n{}",
            daemon_log(&c)
        );
    }
    kafka_deploy(OUTAGE_KAFKA_PORT, "stop");
    let before = gate.changes.load(Ordering::SeqCst);
    gate.paused.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        gate.changes.load(Ordering::SeqCst) > before,
        "the writer wrote while the broker was away"
    );
    kafka_deploy(OUTAGE_KAFKA_PORT, "start");
    let during = gate.changes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    gate.halt.store(true, Ordering::SeqCst);

    let expected = writer.await.unwrap();
    assert!(
        gate.changes.load(Ordering::SeqCst) > during,
        "the writer went on after the outages"
    );
    assert_exactly_once(&brokers, &topic, &expected, &c).await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon rode out both outages:\n{}",
        daemon_log(&c)
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}
