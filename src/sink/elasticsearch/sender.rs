//! Bulk requests in flight: up to `concurrency` at once, one per lane.
//!
//! A document always goes to the same lane (by a hash of its index and id) and a lane
//! sends one request at a time, in order, so the writes of one document reach the
//! cluster in commit order even with several requests in flight. (The external
//! versions would make the index converge anyway; keeping the order also keeps the
//! number of 409s and the work of the cluster down.) Requests run as tasks; their
//! outcomes (documents rejected for good) are collected by the checkpoint's ack, in
//! the order the requests were made.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elasticsearch::{BulkParts, Elasticsearch};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::bulk::{Batch, Origin};
use super::config::ElasticsearchSinkConfig;
use super::json_attempt;
use super::response::{outcomes, BulkAnswer, Outcome};
use crate::event::{now_ms, ChangeEvent};
use crate::failure::Failure;
use crate::metrics::AckLatency;
use crate::sink::SinkError;

/// Retries forever with exponential backoff and jitter: an outage must never drop
/// data; the pipeline waits meanwhile. Warns once a minute while it lasts.
#[derive(Clone)]
pub(super) struct Retry {
    pub sink: Arc<str>,
    pub max_backoff: Duration,
}

impl Retry {
    /// `failure::retry` for this sink: fatal failures stop it with `what` and the reason.
    pub async fn run<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        crate::failure::retry(
            &self.sink,
            what,
            self.max_backoff,
            || crate::metrics::sink_retry(&self.sink),
            attempt,
        )
        .await
        .map_err(|m| SinkError::new(&self.sink, format!("{what}: {m}")))
    }
}

/// A document rejected for good, on its way to the dead-letter stream.
pub(super) struct Rejected {
    pub index: Arc<str>,
    pub status: u16,
    pub error: serde_json::Value,
    pub event: ChangeEvent,
}

/// What a checkpoint's ack must settle, in request order.
pub(super) enum Pending {
    Sent(JoinHandle<Result<Vec<Rejected>, SinkError>>),
    Rejected(Rejected),
}

impl Pending {
    /// Waits for a request's outcome.
    pub async fn settle(self, sink: &str) -> Result<Vec<Rejected>, SinkError> {
        match self {
            Pending::Rejected(r) => Ok(vec![r]),
            Pending::Sent(task) => task
                .await
                .map_err(|e| SinkError::new(sink, format!("bulk request task failed: {e}")))?,
        }
    }
}

struct Lane {
    batch: Batch,
    /// When the oldest write in `batch` was queued.
    since: Option<Instant>,
    /// Held by the lane's request in flight.
    busy: Arc<Mutex<()>>,
}

pub(super) struct Sender {
    client: Elasticsearch,
    retry: Retry,
    latency: Arc<AckLatency>,
    lanes: Vec<Lane>,
    pending: Vec<Pending>,
    batch_docs: usize,
    batch_bytes: usize,
    max_document_bytes: usize,
    /// Where the event being written sits in the batch the pipeline shared, if it
    /// shared one (`hold`, `at`).
    origin: Option<Origin>,
}

impl Sender {
    pub fn new(client: Elasticsearch, retry: Retry, cfg: &ElasticsearchSinkConfig) -> Self {
        Sender {
            client,
            latency: Arc::new(AckLatency::new(&retry.sink)),
            retry,
            lanes: (0..cfg.concurrency.max(1))
                .map(|_| Lane {
                    batch: Batch::default(),
                    since: None,
                    busy: Arc::new(Mutex::new(())),
                })
                .collect(),
            pending: Vec::new(),
            batch_docs: cfg.batch_docs,
            batch_bytes: cfg.batch_bytes,
            max_document_bytes: cfg.max_document_bytes,
            origin: None,
        }
    }

    /// The shared batch the events written next come from (None: lent events, copied).
    pub fn hold(&mut self, batch: Option<&crate::sink::SharedBatch>) {
        self.origin = batch.map(|b| (b.clone(), 0));
    }

    /// The place in the held batch of the event written next.
    pub fn at(&mut self, message: usize) {
        if let Some(o) = &mut self.origin {
            o.1 = message;
        }
    }

    /// Queues the write of `e` as document `id` (with `document` instead of the event's
    /// row when given); sends the lane's batch when it is full.
    pub async fn push(
        &mut self,
        e: &ChangeEvent,
        index: Arc<str>,
        id: &str,
        document: Option<&[u8]>,
    ) {
        // Taken for the call (queue borrows the sender), without a reference count.
        let origin = self.origin.take();
        self.queue(&index.clone(), id, |b| {
            b.push_with(e, index, id, document, origin.as_ref())
        })
        .await;
        self.origin = origin;
    }

    /// Queues a delete of document `id` with `e`'s version.
    pub async fn push_delete(&mut self, e: &ChangeEvent, index: Arc<str>, id: &str) {
        let origin = self.origin.take();
        self.queue(&index.clone(), id, |b| {
            b.push_delete(e, index, id, origin.as_ref())
        })
        .await;
        self.origin = origin;
    }

    async fn queue(&mut self, index: &str, id: &str, add: impl FnOnce(&mut Batch)) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (index, id).hash(&mut h);
        let lane = (h.finish() % self.lanes.len() as u64) as usize;
        let l = &mut self.lanes[lane];
        l.since.get_or_insert_with(Instant::now);
        add(&mut l.batch);
        let size = l.batch.last_item_bytes();
        if size > self.max_document_bytes {
            if let Some((index, event)) = l.batch.pop() {
                self.reject(too_large(index, event, size, "document_too_large", format!(
                    "the document's bulk lines are {size} bytes, more than max_document_bytes = {}; raise it (below the cluster's http.max_content_length) and send the dead letter again, or make the row smaller",
                    self.max_document_bytes
                )));
            }
            return;
        }
        if l.batch.items.len() >= self.batch_docs || l.batch.bytes() >= self.batch_bytes {
            self.send_lane(lane).await;
        }
    }

    /// When the cluster has nothing in flight, sends the batches that waited `linger`
    /// or longer. Under a backlog some request is nearly always in flight, so batches
    /// fill up to `batch_docs` (fewer, larger requests: throughput); a trickle finds the
    /// lanes idle and goes out after `linger` instead of waiting for the checkpoint
    /// (latency).
    pub fn send_lingering(&mut self, linger: Duration) {
        if !self
            .lanes
            .iter()
            .any(|l| l.since.is_some_and(|t| t.elapsed() >= linger))
        {
            return;
        }
        let Ok(guards) = self
            .lanes
            .iter()
            .map(|l| l.busy.clone().try_lock_owned())
            .collect::<Result<Vec<_>, _>>()
        else {
            return;
        };
        for (lane, guard) in guards.into_iter().enumerate() {
            if let Some(batch) = self.take_batch(lane) {
                self.dispatch(guard, batch);
            }
        }
    }

    /// A rejection found before sending, settled in order with the requests.
    pub fn reject(&mut self, r: Rejected) {
        self.pending.push(Pending::Rejected(r));
    }

    /// Starts the lane's request once its previous one finished.
    async fn send_lane(&mut self, lane: usize) {
        let Some(batch) = self.take_batch(lane) else {
            return;
        };
        // Taken in request order (the mutex is fair): the lane's requests run one
        // after another, in order.
        let guard = self.lanes[lane].busy.clone().lock_owned().await;
        self.dispatch(guard, batch);
    }

    /// The lane's queued writes, if any, leaving it empty.
    fn take_batch(&mut self, lane: usize) -> Option<Batch> {
        let l = &mut self.lanes[lane];
        if l.batch.is_empty() {
            return None;
        }
        l.since = None;
        Some(std::mem::take(&mut l.batch))
    }

    /// Runs a lane's request as a task that holds the lane until the cluster answered.
    fn dispatch(&mut self, lane: tokio::sync::OwnedMutexGuard<()>, batch: Batch) {
        let (client, retry, latency) = (
            self.client.clone(),
            self.retry.clone(),
            self.latency.clone(),
        );
        self.pending.push(Pending::Sent(tokio::spawn(async move {
            let _busy = lane;
            send(&client, &retry, &latency, batch).await
        })));
    }

    /// Starts requests for everything queued.
    pub async fn send_all(&mut self) {
        for lane in 0..self.lanes.len() {
            self.send_lane(lane).await;
        }
    }

    /// Sends everything queued and waits until the cluster answered it all (reads and
    /// index swaps must see every earlier write).
    pub async fn drain(&mut self) {
        self.send_all().await;
        for l in &self.lanes {
            drop(l.busy.lock().await);
        }
    }

    /// The outcomes a checkpoint's ack must wait for.
    pub fn take_pending(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.pending)
    }
}

/// Sends a batch until every item is written, a 409, or rejected for good. A batch
/// the cluster refuses as too large (413, its `http.max_content_length`) is split in
/// halves, in order; a single document it refuses is rejected with its size.
async fn send(
    client: &Elasticsearch,
    retry: &Retry,
    latency: &AckLatency,
    batch: Batch,
) -> Result<Vec<Rejected>, SinkError> {
    let mut rejected = Vec::new();
    let mut work = std::collections::VecDeque::from([batch]);
    while let Some(mut batch) = work.pop_front() {
        loop {
            let b = &batch;
            let response = retry
                .run("bulk request", || async move {
                    // Borrowed: the client copies it into its request buffer once.
                    let body = b.body();
                    let started = Instant::now();
                    let sent = client.bulk(BulkParts::None).body(vec![body]).send().await;
                    crate::metrics::sink_request(&retry.sink, started.elapsed());
                    match sent {
                        Ok(r) if r.status_code().as_u16() == 413 => Ok(None),
                        sent => json_attempt::<BulkAnswer>(sent, "bulk").await.map(Some),
                    }
                })
                .await?;
            let Some(response) = response else {
                let n = batch.items.len();
                if n == 1 {
                    let size = batch.last_item_bytes();
                    let (index, event) = batch.pop().expect("one item");
                    rejected.push(too_large(index, event, size, "request_too_large", format!(
                        "the cluster refused a bulk request of this one document ({size} bytes) as too large (HTTP 413): lower max_document_bytes below the cluster's http.max_content_length, or raise that"
                    )));
                } else {
                    tracing::warn!(sink = %retry.sink, items = n, bytes = batch.bytes(), "bulk request too large for the cluster (HTTP 413); sending it in halves (lower batch_bytes to avoid this)");
                    let (first, second) = (0..n).partition::<Vec<_>, _>(|i| *i < n / 2);
                    work.push_front(batch.subset(&second));
                    work.push_front(batch.subset(&first));
                }
                break;
            };
            let now = now_ms();
            let results = outcomes(response, batch.items.len())
                .map_err(|m| SinkError::new(&retry.sink, m))?;
            let mut again = Vec::new();
            for (i, o) in results.into_iter().enumerate() {
                let item = &batch.items[i];
                match o {
                    Outcome::Done => latency.record(now, item.commit_ms, item.read_ms),
                    Outcome::Retry => again.push(i),
                    Outcome::Reject { status, error } => rejected.push(Rejected {
                        index: batch.items[i].alias.clone(),
                        status,
                        error,
                        event: batch.event(i).clone(),
                    }),
                }
            }
            if again.is_empty() {
                break;
            }
            tracing::warn!(sink = %retry.sink, items = again.len(), "bulk items throttled or failed on the server; sending them again");
            tokio::time::sleep(Duration::from_millis(200)).await;
            batch = batch.subset(&again);
        }
    }
    Ok(rejected)
}

/// A document too large to send, for the dead-letter stream (status 413).
fn too_large(
    index: Arc<str>,
    event: ChangeEvent,
    size: usize,
    error_type: &str,
    reason: String,
) -> Rejected {
    Rejected {
        index,
        status: 413,
        error: serde_json::json!({ "type": error_type, "reason": reason, "bytes": size }),
        event,
    }
}
