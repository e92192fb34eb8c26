//! The Kafka ingest ceiling for bench/kafka.sh: the records a Kafka sink wrote,
//! produced again by a plain producer (idempotent, acks=all, no transactions, the
//! client's default batching) into another topic, as fast as the broker takes them.
//! What tributary's Kafka sink reaches is compared with this: the broker's own rate
//! for the same records.
//!
//!   cargo run --release --example kafka_plain_producer -- BROKERS LOG_DIR SOURCE_TOPIC TARGET_TOPIC [LIMIT]
//!
//! LIMIT: produce only the first LIMIT records (bench/kafka.sh fills the workers'
//! topic so).
//! LOG_DIR is a log stream holding the same changes (its records are the Kafka
//! records' values); SOURCE_TOPIC gives the headers of one record of the sink (the
//! `schema` header is the same for every record of a layout). The log is read into
//! memory first, so reading it is not measured. Prints `records seconds`.
//! KAFKA_COMPRESSION sets the batches' compression (default none), as the sink's
//! `compression` does.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (brokers, log_dir, source_topic, target_topic, limit) = match &args[..] {
        [b, l, s, t] => (b, l, s, t, usize::MAX),
        [b, l, s, t, n] => (b, l, s, t, n.parse().expect("LIMIT: a number")),
        _ => {
            eprintln!(
                "usage: kafka_plain_producer BROKERS LOG_DIR SOURCE_TOPIC TARGET_TOPIC [LIMIT]"
            );
            std::process::exit(2);
        }
    };
    // The schema header of the sink's first record.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("plain-producer-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    // Assigned, not subscribed: no group to join; at the partition's last record (the
    // stand-in answers a fetch with everything after the offset asked, whatever the
    // size limits say).
    let md = consumer
        .fetch_metadata(Some(source_topic), Duration::from_secs(10))
        .expect("the topic's metadata");
    let mut list = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        list.add_partition_offset(source_topic, p.id(), rdkafka::Offset::OffsetTail(2))
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let schema = loop {
        match consumer.poll(Duration::from_secs(1)) {
            Some(Ok(m)) => {
                break m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "schema").and_then(|h| h.value))
                    .expect("a schema header")
                    .to_vec()
            }
            // The stand-in answers some fetches of a large partition with a batch
            // librdkafka cannot parse; a later fetch reads it.
            Some(Err(e)) if Instant::now() < deadline => eprintln!("reading {source_topic}: {e}"),
            Some(Err(e)) => panic!("reading {source_topic}: {e}"),
            None if Instant::now() > deadline => panic!("{source_topic} has no record"),
            None => {}
        }
    };
    drop(consumer);

    // (key, value, op, version, schema_version) of every change.
    let mut records = Vec::new();
    tributary::journal::read_log(std::path::Path::new(log_dir), |r| {
        if records.len() >= limit {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(&r.json).expect("an event");
        // The bench table's key is `id`.
        let row = if v["after"].is_null() {
            &v["before"]
        } else {
            &v["after"]
        };
        let key = serde_json::to_vec(&serde_json::json!({ "id": row["id"] })).unwrap();
        records.push((
            key,
            r.json.into_bytes(),
            v["op"].as_str().unwrap_or("").to_string(),
            v["version"].as_u64().unwrap_or(0).to_string(),
            v["schema_version"].as_u64().unwrap_or(0).to_string(),
        ));
        true
    })
    .expect("reading the log");

    // The sink's compression (bench/kafka.sh pins both): the same records, sent alike.
    let compression = std::env::var("KAFKA_COMPRESSION").unwrap_or_else(|_| "none".into());
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.kbytes", "65536")
        .set("compression.type", &compression)
        .create()
        .expect("producer");
    let started = Instant::now();
    for (key, value, op, version, schema_version) in &records {
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "op",
                value: Some(op),
            })
            .insert(Header {
                key: "version",
                value: Some(version),
            })
            .insert(Header {
                key: "schema_version",
                value: Some(schema_version),
            })
            .insert(Header {
                key: "schema",
                value: Some(&schema),
            });
        let mut record = BaseRecord::to(target_topic)
            .key(key.as_slice())
            .payload(value.as_slice())
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The queue is full: let the broker take some.
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    println!("{} {:.3}", records.len(), started.elapsed().as_secs_f64());
}
