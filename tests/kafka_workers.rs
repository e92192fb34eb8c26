//! Kafka source workers against real databases, the Kafka stand-in and the
//! Elasticsearch stand-in: a worker's sinks get the events a direct run's get, and a
//! group of workers that lose and gain members keeps an index equal to the source.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;

/// Appends a Kafka sink writing `topic` (a fixed name) to connector `c`.
fn add_kafka_sink(c: &Path, brokers: &str, topic: &str, partitions: u32) {
    add_sink(
        c,
        &format!(
            "kind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\npartitions = {partitions}\ntransactional_id = \"{topic}\"\nprogress_topic = \"{topic}.progress\"\nrequest_timeout_secs = 5"
        ),
    );
}

/// The events of a log stream by row key (`after` or `before` id), in log order.
fn by_key(events: &[Json]) -> BTreeMap<String, Vec<Json>> {
    let mut out: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for e in events {
        let row = if e["after"].is_null() {
            &e["before"]
        } else {
            &e["after"]
        };
        out.entry(row["id"].to_string())
            .or_default()
            .push(e.clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_kafka_to_a_worker_writes_the_events_a_direct_run_writes() {
    let brokers = kafka_on(KAFKA_PORT);
    let pg = pg_admin(PG_PORT).await;
    let (schema, table) = pg_table(
        &pg,
        "kworker",
        "id INT PRIMARY KEY, v BIGINT NOT NULL, note TEXT, amount NUMERIC(12,3), at TIMESTAMPTZ, tags TEXT[], doc JSONB, raw BYTEA, f DOUBLE PRECISION",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("reader")).unwrap();
    // The reader writes its own log (the direct run) and the topic.
    let reader = pg_connector(&dir.path().join("reader"), PG_PORT, &schema, &table, "");
    let topic = format!("kw.{schema}");
    add_kafka_sink(&reader, &brokers, &topic, 3);
    let mut reader_daemon = spawn_daemon(&reader);
    wait_streaming(&reader, &mut reader_daemon).await;

    let worker_log = dir.path().join("worker").join("log");
    let w = kafka_worker(
        &dir.path().join("worker"),
        &brokers,
        &format!("g-{schema}"),
        &topic,
        &format!(
            "[[sink]]\nkind = \"log\"\ndir = \"{}\"\nsegment_bytes = 1048576\n",
            worker_log.display()
        ),
    );
    // The worker starts before its topic exists (the sink creates it with its first
    // record): it waits for it.
    let mut worker_daemon = spawn_daemon(&w);

    // Inserts, updates, deletes, in transactions of several rows, with every kind of
    // value the topic must carry exactly.
    let write = |from: i32, to: i32| {
        let table = table.clone();
        async move {
            let pg = pg_admin(PG_PORT).await;
            for i in from..to {
                pg.batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO {table} VALUES ({i}, {i}, 'n{i}', {i}.125, '2026-12-04 10:00:00+02', ARRAY['a','b{i}'], '{{\"k\": {i}}}', '\\x00ff', {i}.5);
                     UPDATE {table} SET v = v + 1, note = NULL, f = 'NaN' WHERE id = {i} - 1;
                     DELETE FROM {table} WHERE id = {i} - 3;
                     COMMIT;"
                ))
                .await
                .unwrap();
            }
        }
    };
    write(1, 120).await;
    wait_assigned(&w, &mut worker_daemon).await;
    let reader_log = dir.path().join("reader").join("log");
    let want = wait_for_events(&reader_log, 1, Duration::from_secs(5)).await;
    assert!(want > 0);
    // Wait until the reader's log stops growing and the worker has as many events.
    let settle = |log: PathBuf| async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let n = read_events(&log).len();
            if n == last && n > 0 {
                return n;
            }
            last = n;
        }
    };
    let direct = settle(reader_log.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_events(&worker_log).len() < direct && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A graceful restart of the worker in the middle: it resumes from its group's
    // offsets and takes nothing twice.
    assert_eq!(stop(&mut worker_daemon), 0, "{}", daemon_log(&w));
    write(120, 200).await;
    let mut worker_daemon = spawn_daemon(&w);
    wait_assigned(&w, &mut worker_daemon).await;
    let direct = settle(reader_log.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_events(&worker_log).len() < direct && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let direct = read_events(&reader_log);
    let through_kafka = read_events(&worker_log);
    assert_eq!(
        through_kafka.len(),
        direct.len(),
        "the worker's log holds as many events as the direct run's:\n{}",
        daemon_log(&w)
    );
    // The same events, byte for byte as JSON, in the same order per key (partitions
    // interleave keys freely).
    assert_eq!(by_key(&through_kafka), by_key(&direct));
    assert!(direct.iter().any(|e| e["op"] == "d") && direct.iter().any(|e| e["op"] == "u"));

    assert_eq!(stop(&mut worker_daemon), 0, "{}", daemon_log(&w));
    // status: the group committed every record of the three partitions (a stopped
    // worker commits what its sinks took), and Kafka holds the reader's changes.
    let (code, out, err) = tributary(&["status", "--connector", w.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let status: Json = serde_json::from_str(&out).unwrap();
    let group = &status["kafka_group"];
    assert_eq!(
        group["partitions"].as_object().map(|p| p.len()),
        Some(3),
        "{status}"
    );
    assert_eq!(group["lag"], 0, "{status}");
    let (code, out, err) = tributary(&["status", "--connector", reader.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let status: Json = serde_json::from_str(&out).unwrap();
    let sinks = status["kafka_sinks"].as_object().expect("a kafka sink");
    assert!(
        sinks
            .values()
            .all(|s| s["kafka_holds_through"]["lsn"].is_string()),
        "{status}"
    );
    assert_eq!(stop(&mut reader_daemon), 0, "{}", daemon_log(&reader));
    pg_drop_slot(&pg, &schema).await;
}

/// The Kafka stand-in port of the group test, which restarts its broker.
const GROUP_KAFKA_PORT: u16 = 19372;

/// Restarts the group test's broker (stop: it saves its data; start again, and wait
/// until it has loaded it).
fn restart_broker() {
    kafka_deploy(GROUP_KAFKA_PORT, "stop");
    kafka_deploy(GROUP_KAFKA_PORT, "start");
    kafka_ready(GROUP_KAFKA_PORT);
}

/// One worker's holdings from its log: (partition, from, until) in microseconds since
/// the epoch; a holding without a revocation lasts until `end`.
fn holdings(log: &str, end: i64) -> Vec<(String, i64, i64)> {
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let assigned = line.contains("kafka partitions assigned");
        if !assigned
            && !line.contains("kafka partitions revoked")
            && !line.contains("kafka partitions lost")
        {
            continue;
        }
        let at = line
            .split_whitespace()
            .next()
            .and_then(chrono_micros)
            .unwrap_or_else(|| panic!("no timestamp in `{line}`"));
        let list = &line[line.find("partitions=[").expect("a partition list") + 12..];
        let list = &list[..list.find(']').unwrap()];
        for p in list.split(", ").filter(|p| !p.is_empty()) {
            let p = p.trim_matches('"').to_string();
            if assigned {
                held.insert(p, at);
            } else if let Some(from) = held.remove(&p) {
                out.push((p, from, at));
            }
        }
    }
    out.extend(held.into_iter().map(|(p, from)| (p, from, end)));
    out
}

/// `2026-12-04T05:01:02.123456Z` as microseconds since the epoch.
fn chrono_micros(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2]) * 1_000_000) + micros)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_workers_keeps_the_index_equal_through_a_kill_9_and_a_join() {
    let brokers = kafka_fresh(GROUP_KAFKA_PORT);
    let url = elasticsearch();
    let db = new_db(
        "kgroup",
        &["CREATE TABLE `{db}`.items (id BIGINT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, note VARCHAR(100) NOT NULL)"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("reader")).unwrap();
    let reader = connector(&dir.path().join("reader"), SHARED_PORT, &db, "");
    let topic = format!("kg.{db}");
    add_kafka_sink(&reader, &brokers, &topic, 6);
    let mut reader_daemon = spawn_daemon(&reader);
    wait_streaming(&reader, &mut reader_daemon).await;

    let group = format!("g-{db}");
    let es_sink = format!(
        "[[sink]]\nkind = \"elasticsearch\"\nurls = [\"{url}\"]\nbatch_docs = 200\nmax_backoff_secs = 2\n"
    );
    let workers: Vec<PathBuf> = (1..=4)
        .map(|i| {
            kafka_worker(
                &dir.path().join(format!("w{i}")),
                &brokers,
                &group,
                &topic,
                &es_sink,
            )
        })
        .collect();
    let mut running: Vec<Option<std::process::Child>> = Vec::new();
    for w in &workers[..3] {
        running.push(Some(spawn_daemon(w)));
    }

    // The writer: inserts, updates and deletes on 400 keys until told to stop.
    let halt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, halt) = (db.clone(), halt.clone());
        tokio::spawn(async move {
            let mut conn = admin(SHARED_PORT).await;
            let mut n = 0u64;
            while !halt.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let id = 1 + (n * 7919) % 400;
                exec(
                    &mut conn,
                    &format!(
                        "INSERT INTO `{db}`.items VALUES ({id}, {n}, 'n {n}') ON DUPLICATE KEY UPDATE v = {n}, note = 'u {n}'"
                    ),
                )
                .await;
                if n % 5 == 0 {
                    exec(
                        &mut conn,
                        &format!("DELETE FROM `{db}`.items WHERE id = {}", 1 + (n * 31) % 400),
                    )
                    .await;
                }
            }
            n
        })
    };
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    for (w, child) in workers.iter().zip(running.iter_mut()) {
        wait_assigned(w, child.as_mut().unwrap()).await;
    }
    pause(3000).await;

    // Worker 2 dies on the spot.
    kill9(running[1].as_mut().unwrap());
    running[1] = None;
    let killed_at = now_micros();
    pause(2000).await;

    // The stand-in never evicts a member killed with -9: restart it (its writer, the
    // reader, stopped first, as the stand-in loses writes taken while it stops).
    assert_eq!(stop(&mut reader_daemon), 0, "{}", daemon_log(&reader));
    let restarted_at = now_micros();
    restart_broker();
    let mut reader_daemon = spawn_daemon(&reader);
    wait_streaming(&reader, &mut reader_daemon).await;
    pause(3000).await;

    // Worker 4 joins later.
    let mut fourth = spawn_daemon(&workers[3]);
    wait_assigned(&workers[3], &mut fourth).await;
    running.push(Some(fourth));
    pause(3000).await;
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    let changes = writer.await.unwrap();
    assert!(changes > 200, "the writer made {changes} changes");

    let alias = format!("{db}_items");
    until_equal(&url, &alias, &workers[0], || items_rows(&db)).await;

    let end = now_micros();
    for child in running.iter_mut().flatten() {
        assert_eq!(stop(child), 0);
    }
    assert_eq!(stop(&mut reader_daemon), 0, "{}", daemon_log(&reader));

    // Each partition was held by one worker at a time. The stand-in's restart forgets
    // the group's members (Kafka keeps them): a member learns it when the group has
    // already moved on (its partitions `lost`), so what it held before the restart
    // ends there.
    let mut all: Vec<(String, i64, i64, usize)> = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let until = if i == 1 { killed_at } else { end };
        all.extend(
            holdings(&daemon_log(w), until)
                .into_iter()
                .map(|(p, a, b)| {
                    let b = if a < restarted_at {
                        b.min(restarted_at)
                    } else {
                        b
                    };
                    (p, a, b, i + 1)
                }),
        );
    }
    assert!(all.iter().any(|h| h.3 == 4), "worker 4 held no partition");
    for a in &all {
        for b in &all {
            if a.0 == b.0 && a.3 != b.3 {
                assert!(
                    a.2 <= b.1 || b.2 <= a.1,
                    "partition {} held by workers {} and {} at once: {a:?} {b:?}",
                    a.0,
                    a.3,
                    b.3
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_worker_settings_and_foreign_records_are_named() {
    let brokers = kafka_on(KAFKA_PORT);
    let dir = tempfile::tempdir().unwrap();
    let null = "[[sink]]\nkind = \"null\"\n";
    let group = unique_db("gbad");

    // Brokers nobody answers on.
    let w = kafka_worker(&dir.path().join("a"), "127.0.0.1:1", &group, "t", null);
    let mut child = spawn_daemon(&w);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(60)),
        Some(1),
        "{}",
        daemon_log(&w)
    );
    assert!(
        daemon_log(&w).contains("cannot reach the Kafka brokers 127.0.0.1:1"),
        "{}",
        daemon_log(&w)
    );

    // A login the brokers refuse (the stand-in takes any PLAIN login but no SCRAM one).
    let w = kafka_worker(&dir.path().join("b"), &brokers, &group, "t", null);
    let text = std::fs::read_to_string(&w).unwrap().replace(
        "request_timeout_secs",
        "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword_env = \"TRIBUTARY_TEST_WRONG_KAFKA_PW\"\nrequest_timeout_secs",
    );
    std::fs::write(&w, text).unwrap();
    let mut child = spawn_daemon_env(&w, &[("TRIBUTARY_TEST_WRONG_KAFKA_PW", "wrong")]);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(60)),
        Some(1),
        "{}",
        daemon_log(&w)
    );
    let log = daemon_log(&w);
    assert!(log.contains("SASL authentication error"), "{log}");
    assert!(
        log.contains("check security_protocol, sasl_mechanism, username and the password"),
        "{log}"
    );
    assert!(
        !log.contains("wrong"),
        "the password is never printed: {log}"
    );

    // A record no tributary sink wrote: named with its place, nothing skipped.
    let topic = unique_db("foreign");
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    producer
        .send(rdkafka::producer::BaseRecord::<str, str>::to(&topic).payload("{\"id\":1}"))
        .map_err(|(e, _)| e)
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let w = kafka_worker(&dir.path().join("c"), &brokers, &group, &topic, null);
    let mut child = spawn_daemon(&w);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(60)),
        Some(1),
        "{}",
        daemon_log(&w)
    );
    let log = daemon_log(&w);
    assert!(
        log.contains(&format!(
            "topic {topic} partition 0 offset 0: the record has no `schema` header"
        )),
        "{log}"
    );
}
