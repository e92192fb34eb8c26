//! Log streams that do not fill the disk and that consumers can follow, against real
//! MariaDB: `retention_bytes` deletes the oldest whole segments under a running writer,
//! never the one a restart opens (the daemon restarts and appends); `tributary log cat
//! --follow` prints every record exactly once, in order, across rotations, and
//! `--from` resumes after a position it printed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A connector whose log sink rotates every 4 KiB, with `extra` sink settings.
fn small_segments(c: &std::path::Path, extra: &str) {
    let text = std::fs::read_to_string(c).unwrap().replace(
        "segment_bytes = 1048576",
        &format!("segment_bytes = 4096\n{extra}"),
    );
    std::fs::write(c, text).unwrap();
}

fn segments(dir: &std::path::Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort();
    out
}

fn bytes(dir: &std::path::Path) -> u64 {
    // A file retention deletes between the listing and its metadata counts as gone.
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

async fn insert_rows(db: &str, from: u64, n: u64) {
    let mut conn = admin(SHARED_PORT).await;
    for i in from..from + n {
        exec(
            &mut conn,
            &format!("INSERT INTO `{db}`.t VALUES ({i}, REPEAT('x', 200))"),
        )
        .await;
    }
}

async fn table(prefix: &str) -> String {
    new_db(
        prefix,
        &["CREATE TABLE `{db}`.t (id INT PRIMARY KEY, pad VARCHAR(300))"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_but_never_what_a_restart_needs() {
    let db = table("retention").await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    // Plain records: the sizes below count them.
    small_segments(&c, "retention_bytes = 16384\ncompression = \"none\"");
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    insert_rows(&db, 1, 400).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // 400 records of some 500 bytes: about 50 segments written, 4-6 kept.
    while !read_events(&log).iter().any(|e| e["after"]["id"] == 400) {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Retention deletes up to the previous checkpoint's segment, so a big last batch
    // stays until the next checkpoint: one more change makes one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 10_000;
    while bytes(&log) > 16384 + 2 * 4096 {
        assert!(
            Instant::now() < deadline,
            "{} bytes in {:?}\n{}",
            bytes(&log),
            segments(&log),
            daemon_log(&c)
        );
        insert_rows(&db, next, 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let kept = segments(&log);
    assert!(kept[0] > 10, "old segments were deleted: {kept:?}");
    // Contiguous up to the newest: only the oldest went.
    assert_eq!(
        kept.last().unwrap() - kept[0] + 1,
        kept.len() as u64,
        "{kept:?}"
    );
    assert!(daemon_log(&c).contains("retention: deleted log segments"));

    // The restart opens the checkpoint's segment (still there) and appends.
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    insert_rows(&db, 401, 5).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_events(&log).iter().any(|e| e["after"]["id"] == 405) {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: Vec<i64> = read_events(&log)
        .iter()
        .filter_map(|e| e["after"]["id"].as_i64())
        .collect();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(ids, sorted, "each record once, in order");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    let (code, _, err) = tributary(&["log", "cat", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_every_record_once_across_rotations_and_resumes() {
    follow("none", 20).await;
}

/// The same over compressed blocks (the default): a follower decompresses each block
/// as it lands and resumes after a record inside one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reads_compressed_blocks_as_they_land() {
    follow("zstd", 1).await;
}

/// Follows a log written with `compression` that rotates past `rotations` segments.
async fn follow(compression: &str, rotations: usize) {
    let db = table(&format!("follow_{compression}")).await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    small_segments(&c, &format!("compression = \"{compression}\""));
    let log = dir.path().join("log");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    let mut follower = Command::new(bin())
        .args(["log", "cat", "--follow", "--positions"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut out = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("\"id\":300,");
            out.push(line);
            if done {
                break;
            }
        }
        out
    });
    insert_rows(&db, 1, 300).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the follower did not see row 300"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = lines.join().unwrap();
    follower.kill().unwrap();
    let _ = follower.wait();
    assert!(
        segments(&log).len() > rotations,
        "rotated: {:?}",
        segments(&log)
    );
    let ids: Vec<i64> = lines
        .iter()
        .filter_map(|l| {
            let json: serde_json::Value = serde_json::from_str(l.split_once('\t')?.1).ok()?;
            json["after"]["id"].as_i64()
        })
        .collect();
    assert_eq!(
        ids,
        (1..=300).collect::<Vec<_>>(),
        "every record once, in order"
    );

    // Resume after the 100th record's position: exactly the rest.
    insert_rows(&db, 301, 10).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_events(&log).iter().any(|e| e["after"]["id"] == 310) {
        assert!(Instant::now() < deadline, "{}", daemon_log(&c));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at = lines
        .iter()
        .find(|l| l.contains("\"id\":100,"))
        .and_then(|l| l.split_once('\t'))
        .map(|(p, _)| p.to_string())
        .unwrap();
    let (code, out, err) = tributary(&["log", "cat", "--from", &at, log.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rest: Vec<i64> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|j| j["after"]["id"].as_i64())
        .collect();
    assert_eq!(rest, (101..=310).collect::<Vec<_>>());
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}
