//! `tributary verify` against real MariaDB and PostgreSQL and the Elasticsearch
//! stand-in: an exact index verifies clean; documents deleted, changed and added
//! behind tributary's back are found exactly (and their keys listed), `--repair`
//! fixes them, and a writer running beside verify gives no false differences.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value as Json};

const ROWS: u64 = 500;

fn verify(c: &std::path::Path, extra: &[&str]) -> (i32, Vec<Json>, String) {
    let mut args = vec!["verify", "--connector", c.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = tributary(&args);
    let reports = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}")))
        .collect();
    (code, reports, err)
}

/// Behind tributary's back: documents deleted, changed and added.
async fn tamper(
    url: &str,
    alias: &str,
    deleted: std::ops::RangeInclusive<u64>,
    changed: std::ops::RangeInclusive<u64>,
    added: std::ops::RangeInclusive<u64>,
) {
    for id in deleted {
        es_delete(url, alias, &id.to_string()).await;
    }
    for (ids, v, note) in [(changed, -1, "changed"), (added, 0, "extra")] {
        for id in ids {
            es_put(
                url,
                alias,
                &id.to_string(),
                json!({"id": id, "v": v, "note": note}),
            )
            .await;
        }
    }
}

/// (missing, stale, extra) of a report.
fn differences(r: &Json) -> (Option<u64>, Option<u64>, Option<u64>) {
    (
        r["missing"].as_u64(),
        r["stale"].as_u64(),
        r["extra"].as_u64(),
    )
}

/// Verify, twice, while a writer changes the table: no difference either time.
fn clean_under_writes(c: &std::path::Path) {
    for _ in 0..2 {
        let (code, reports, err) = verify(c, &[]);
        assert_eq!(code, 0, "{reports:?}\n{err}\n{}", daemon_log(c));
    }
}

/// Updates, inserts and deletes rows until `stop` is set.
async fn writer(db: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut conn = admin(SHARED_PORT).await;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let id = 1 + (n * 37) % ROWS;
        conn.query_drop(format!(
            "UPDATE `{db}`.items SET v = v + 1, note = 'w {n}' WHERE id = {id}"
        ))
        .await
        .unwrap();
        let new = 100_000 + n;
        conn.query_drop(format!(
            "INSERT INTO `{db}`.items VALUES ({new}, {n}, 'new {n}')"
        ))
        .await
        .unwrap();
        if n % 3 == 0 {
            conn.query_drop(format!("DELETE FROM `{db}`.items WHERE id = {}", new - 2))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_verify_finds_exactly_what_differs_and_repairs_it() {
    let url = elasticsearch();
    let (db, _dir, c, mut daemon) = items_in_elasticsearch("verify", &url, ROWS).await;
    let alias = format!("{db}_items");

    // An exact index: nothing differs.
    let (code, reports, err) = verify(&c, &[]);
    assert_eq!(code, 0, "{reports:?}\n{err}\n{}", daemon_log(&c));
    let r = &reports[0];
    assert_eq!(r["table"], format!("{db}.items"));
    assert_eq!(
        (r["rows"].as_u64(), r["documents"].as_u64()),
        (Some(ROWS), Some(ROWS)),
        "{r}"
    );
    assert_eq!(differences(r), (Some(0), Some(0), Some(0)), "{r}");

    // Behind tributary's back: 37 documents deleted, 23 changed, 11 added.
    tamper(&url, &alias, 1..=37, 101..=123, 9001..=9011).await;
    let (code, reports, err) = verify(&c, &[]);
    let r = &reports[0];
    assert_eq!(code, 4, "{r}\n{err}");
    assert_eq!(differences(r), (Some(37), Some(23), Some(11)), "{r}");
    let listed = |k: &str| -> Vec<u64> {
        let mut v: Vec<u64> = r[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().parse().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed("first_missing").len(), 10);
    assert!(
        listed("first_missing").iter().all(|k| (1..=37).contains(k)),
        "{r}"
    );
    assert!(
        listed("first_stale")
            .iter()
            .all(|k| (101..=123).contains(k)),
        "{r}"
    );
    assert_eq!(
        listed("first_extra"),
        (9001..=9010).collect::<Vec<u64>>(),
        "{r}"
    );
    // Human output names them too.
    let (code, out, _) = tributary(&["verify", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 4);
    assert!(out.contains("37 missing, 23 stale, 11 extra"), "{out}");

    // Repaired: every difference written back, and verify finds none.
    let (code, reports, err) = verify(&c, &["--repair"]);
    assert_eq!(code, 0, "{reports:?}\n{err}");
    assert_eq!(reports[0]["repaired"].as_u64(), Some(71), "{}", reports[0]);
    let (code, reports, err) = verify(&c, &[]);
    assert_eq!(code, 0, "{reports:?}\n{err}");
    assert_eq!(es_documents(&url, &alias).await, items_rows(&db).await);

    // A writer changing the table all along: no false differences.
    let halt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(db.clone(), halt.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    clean_under_writes(&c);
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = w.await.unwrap();
    assert!(writes > 20, "the writer ran ({writes} rounds)");
    // Once the daemon caught up, the index equals the table.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, got) = (items_rows(&db).await, es_documents(&url, &alias).await);
        if want == got {
            break;
        }
        assert!(Instant::now() < deadline, "the index did not converge");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}

/// The same on PostgreSQL (MVCC snapshots, LSN versions), with a writer beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_finds_exactly_what_differs_and_repairs_it() {
    let client = pg_admin(PG_PORT).await;
    let url = elasticsearch();
    let (schema, table, _dir, c, mut daemon) =
        pg_items_in_elasticsearch(&client, "pverify", &url, 300).await;
    let alias = format!("{schema}_t");
    let (code, reports, err) = verify(&c, &[]);
    assert_eq!(code, 0, "{reports:?}\n{err}\n{}", daemon_log(&c));

    tamper(&url, &alias, 1..=5, 51..=54, 901..=903).await;
    let (code, reports, err) = verify(&c, &[]);
    let r = &reports[0];
    assert_eq!(code, 4, "{r}\n{err}");
    assert_eq!(differences(r), (Some(5), Some(4), Some(3)), "{r}");
    assert_eq!(r["first_extra"], json!(["901", "902", "903"]), "{r}");
    let (code, reports, err) = verify(&c, &["--repair"]);
    assert_eq!(code, 0, "{reports:?}\n{err}");
    assert_eq!(reports[0]["repaired"].as_u64(), Some(12), "{}", reports[0]);
    assert_eq!(
        es_documents(&url, &alias).await,
        pg_items_rows(&client, &table).await
    );

    // A writer beside verify: no false differences.
    let halt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = pg_items_writer(table.clone(), 300, true, halt.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    clean_under_writes(&c);
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(w.await.unwrap() > 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    while es_documents(&url, &alias).await != pg_items_rows(&client, &table).await {
        assert!(Instant::now() < deadline, "the index did not converge");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
    pg_drop_slot(&client, &schema).await;
}

/// Text keys longer than the 256 characters other text fields keep as keywords: verify
/// pages the index by them all the same (a key's `keyword` sub-field keeps any key
/// the sources allow), so a missing or extra long-key document is found. (The
/// stand-in sorts by `_source` and ignores `ignore_above`, so the mapping itself is
/// checked by the unit test `mapping::a_text_key_keeps_keywords_...`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_verify_pages_text_keys_longer_than_256_characters() {
    let url = elasticsearch();
    let db = new_db(
        "verifylong",
        &["CREATE TABLE `{db}`.codes (code VARCHAR(600) PRIMARY KEY, v INT NOT NULL)"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    add_es_sink(&c, &url, "");
    let mut daemon = spawn_daemon(&c);
    wait_streaming(&c, &mut daemon).await;
    // 40 keys of 10 to 400 characters, in key order by their first three digits.
    let key = |n: u64| format!("{n:03}{}", "k".repeat(n as usize * 10 - 3));
    let mut conn = admin(SHARED_PORT).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.codes SELECT CONCAT(LPAD(seq, 3, '0'), REPEAT('k', seq * 10 - 3)), seq FROM `{db}`.seq_1_to_40"),
    )
    .await;
    let alias = format!("{db}_codes");
    wait_documents(&url, &alias, 40).await;

    let (code, reports, err) = verify(&c, &[]);
    let r = &reports[0];
    assert_eq!(code, 0, "{reports:?}\n{err}\n{}", daemon_log(&c));
    assert_eq!(
        (r["rows"].as_u64(), r["documents"].as_u64()),
        (Some(40), Some(40)),
        "{r}"
    );

    // Behind tributary's back: a 300-character key's document gone, a 403-character
    // extra one added.
    es_delete(&url, &alias, &key(30)).await;
    let extra = format!("999{}", "x".repeat(400));
    es_put(&url, &alias, &extra, json!({"code": extra, "v": 0})).await;
    let (code, reports, err) = verify(&c, &[]);
    let r = &reports[0];
    assert_eq!(code, 4, "{r}\n{err}");
    assert_eq!(differences(r), (Some(1), Some(0), Some(1)), "{r}");
    assert_eq!(r["documents"].as_u64(), Some(40), "{r}");
    // (Keys are listed as JSON: a string key in quotes.)
    assert_eq!(
        r["first_missing"],
        json!([json!(key(30)).to_string()]),
        "{r}"
    );
    assert_eq!(r["first_extra"], json!([json!(extra).to_string()]), "{r}");
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}
