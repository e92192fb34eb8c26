//! The progress topic: each Kafka transaction of the sink ends with a record, keyed by
//! its transactional id, of the source boundary it ends at. Kafka's transaction and
//! tributary's checkpoint cannot be one write: the checkpoint is stored after the
//! commit, and a crash between the two leaves Kafka ahead. Read at start (committed
//! records only), the progress tells the writer what to skip of the resent changes.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::config::KafkaSinkConfig;
use crate::event::Position;

/// The progress record's value.
pub fn record(pos: &Position) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "position": pos,
        "at_ms": crate::event::now_ms(),
    }))
    .expect("a position serializes")
}

/// The last committed progress of `transactional_id`: None when it has none. Reads
/// the end of the topic, further back until a record of it is found.
pub fn read(
    cfg: &KafkaSinkConfig,
    transactional_id: &str,
    timeout: Duration,
) -> Result<Option<Position>, String> {
    let topic = cfg.progress_topic.as_str();
    let consumer: BaseConsumer = cfg
        .client()?
        .set("group.id", format!("{transactional_id}.progress"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| format!("reading {topic}: {e}"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| format!("reading the offsets of {topic}: {e}"))?;
    let mut window = 256i64;
    let mut to = high;
    loop {
        let from = (to - window).max(low);
        if let Some(p) = last_in(&consumer, topic, transactional_id, from, to, timeout)? {
            return Ok(Some(p));
        }
        if from <= low {
            return Ok(None);
        }
        to = from;
        window *= 8;
    }
}

/// The last progress of `key` among offsets `from..to` of the topic's partition.
fn last_in(
    consumer: &BaseConsumer,
    topic: &str,
    key: &str,
    from: i64,
    to: i64,
    timeout: Duration,
) -> Result<Option<Position>, String> {
    if from >= to {
        return Ok(None);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(from))
        .map_err(|e| e.to_string())?;
    consumer
        .assign(&list)
        .map_err(|e| format!("reading {topic}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut idle_since: Option<Instant> = None;
    let mut seen = false;
    loop {
        // Read committed: the consumer stops at the last stable offset, which may be
        // below `to` (transaction markers and aborted records are never delivered).
        let at = consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, 0).and_then(|p| p.offset().to_raw()))
            .unwrap_or(from);
        if at >= to {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                seen = true;
                idle_since = None;
                if m.key() == Some(key.as_bytes()) {
                    if let Some(v) = m.payload() {
                        let parsed: serde_json::Value = serde_json::from_slice(v)
                            .map_err(|e| format!("{topic} offset {}: {e}", m.offset()))?;
                        last = Some(
                            serde_json::from_value(parsed["position"].clone())
                                .map_err(|e| format!("{topic} offset {}: {e}", m.offset()))?,
                        );
                    }
                }
                if m.offset() + 1 >= to {
                    break;
                }
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {
                // Nothing more is readable once the records stop coming: the offsets
                // left are transaction markers or aborted records.
                let idle = *idle_since.get_or_insert_with(Instant::now);
                if Instant::now() > deadline || (seen && idle.elapsed() > Duration::from_secs(1)) {
                    break;
                }
            }
        }
    }
    Ok(last)
}
