//! Elasticsearch sink encoding throughput: change events -> bulk request bytes, no
//! network. Prints events/s and writes bench/results/es_encode.json.
//!
//!   cargo bench --bench es_encode [-- N]      (default N = 1,000,000 update events)

use std::sync::Arc;
use std::time::Instant;

use tributary::event::{ChangeEvent, Column, Op, Position, TableSchema, Value};
use tributary::sink::elasticsearch::bulk::Batch;
use tributary::sink::elasticsearch::document_id;

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a quick smoke run that
    // records nothing.
    let measure = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if measure { 1_000_000 } else { 2_000 });
    let cols = [
        ("id", "bigint unsigned"),
        ("customer_id", "int"),
        ("status", "varchar"),
        ("amount", "decimal"),
        ("note", "varchar"),
        ("created_at", "datetime"),
        ("updated_at", "timestamp"),
    ];
    let table = Arc::new(TableSchema::new(
        "bench".into(),
        "mariadb",
        "bench".into(),
        "orders".into(),
        cols.iter()
            .map(|(n, t)| Column {
                name: n.to_string(),
                type_name: t.to_string(),
            })
            .collect(),
        vec![0],
        1,
    ));
    let file: Arc<str> = Arc::from("binlog.000001");
    let row = |i: u64, status: &str| {
        vec![
            Value::UInt(i),
            Value::Int((i % 5000) as i64),
            Value::String(status.into()),
            Value::Decimal(format!("{}.25", i)),
            Value::String(format!("order note {i}")),
            Value::DateTime {
                year: 2026,
                month: 11,
                day: 23,
                hour: 1,
                minute: 2,
                second: 3,
                micros: 456_789,
                fsp: 6,
                utc: false,
            },
            Value::DateTime {
                year: 2026,
                month: 11,
                day: 23,
                hour: 1,
                minute: 2,
                second: 4,
                micros: 5_000,
                fsp: 3,
                utc: true,
            },
        ]
    };
    // Build events up front: only encoding is timed.
    let events: Vec<ChangeEvent> = (0..n.min(100_000))
        .map(|i| ChangeEvent {
            op: Op::Update,
            table: table.clone(),
            pos: Position::Binlog {
                file: file.clone(),
                offset: 4 + i * 100,
                gtid: None,
            },
            txid: Some(Arc::from("0-1-57")),
            source_ts_ms: 1_795_000_000_000,
            before: Some(row(i, "new")),
            after: Some(row(i, "paid")),
            version: (1 << 32) | (4 + i * 100),
            ts_ms: 1_795_000_000_001,
        })
        .collect();
    let alias: Arc<str> = Arc::from("bench_orders");
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut done = 0u64;
    while done < n {
        let mut batch = Batch::default();
        for e in &events {
            if done == n {
                break;
            }
            let id = document_id(e).expect("keyed");
            batch.push(e, alias.clone(), &id);
            done += 1;
            if batch.items.len() == 1000 {
                bytes += batch.body().len();
                batch = Batch::default();
            }
        }
        bytes += batch.body().len();
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = (n as f64 / secs) as u64;
    println!(
        "elasticsearch encoding: {n} update events -> {bytes} bulk bytes in {secs:.2} s: {rate} events/s, {:.0} MB/s",
        bytes as f64 / secs / 1e6
    );
    if !measure {
        return;
    }
    let json = format!(
        "{{\n  \"benchmark\": \"es_encode\",\n  \"events\": {n},\n  \"bulk_bytes\": {bytes},\n  \"seconds\": {secs:.3},\n  \"events_per_s\": {rate}\n}}\n"
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/es_encode.json");
    std::fs::write(out, json).expect("write bench/results/es_encode.json");
}
