//! The bounded queue between a source and the sinks, bounded by events and by bytes.
//!
//! Messages cross in batches (one channel send per batch, not per event). A full queue
//! makes the source wait, so a slow sink slows the source and memory stays flat.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::event::SourceMessage;

/// Most messages in one batch.
const MAX_BATCH: usize = 256;

/// Messages that crossed the queue together. Holding it holds its share of the byte
/// budget; dropping it gives the budget back.
pub struct Batch {
    pub messages: Vec<SourceMessage>,
    _permit: OwnedSemaphorePermit,
}

/// The receiving end, owned by the pipeline.
pub struct QueueReceiver {
    rx: mpsc::Receiver<Batch>,
}

impl QueueReceiver {
    pub async fn recv(&mut self) -> Option<Batch> {
        self.rx.recv().await
    }

    /// No batch waits: the pipeline has caught up with the source.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// The sending end, owned by the source. Buffers up to one batch.
pub struct QueueSender {
    tx: mpsc::Sender<Batch>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    buf: Vec<SourceMessage>,
    buf_bytes: usize,
}

/// The receiver is gone: the pipeline stopped.
#[derive(Debug)]
pub struct Closed;

/// A queue holding at most about `max_events` events and `max_bytes` bytes.
pub fn bounded(max_events: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let batches = max_events.div_ceil(MAX_BATCH).max(1);
    let (tx, rx) = mpsc::channel(batches);
    let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS);
    (
        QueueSender {
            tx,
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
            buf: Vec::with_capacity(MAX_BATCH),
            buf_bytes: 0,
        },
        QueueReceiver { rx },
    )
}

impl QueueSender {
    /// Adds a message; sends the batch when it is full (by count or bytes).
    pub async fn send(&mut self, msg: SourceMessage) -> Result<(), Closed> {
        self.buf_bytes += msg.approx_size();
        self.buf.push(msg);
        if self.buf.len() >= MAX_BATCH || self.buf_bytes >= self.max_bytes / 8 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends whatever is buffered. Sources call it when their input has nothing ready,
    /// so a quiet stream never leaves a change waiting in the buffer.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // One oversized event may take the whole budget, never more.
        let want = self.buf_bytes.clamp(1, self.max_bytes) as u32;
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| Closed)?;
        let messages = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_BATCH));
        self.buf_bytes = 0;
        self.tx
            .send(Batch {
                messages,
                _permit: permit,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Number of messages buffered but not yet sent.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, SourceMessage};

    fn commit() -> SourceMessage {
        SourceMessage::Commit(Position::Wal { lsn: 1 })
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_sender() {
        let (mut tx, mut rx) = bounded(MAX_BATCH, 1 << 20);
        for _ in 0..MAX_BATCH {
            tx.send(commit()).await.unwrap();
        }
        // One batch fits the channel; the next full batch must wait for the receiver.
        for _ in 0..MAX_BATCH - 1 {
            tx.send(commit()).await.unwrap();
        }
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(100), tx.send(commit())).await;
        assert!(blocked.is_err(), "send should wait while the queue is full");
        let b = rx.recv().await.unwrap();
        assert_eq!(b.messages.len(), MAX_BATCH);
    }

    #[tokio::test]
    async fn byte_budget_is_returned_when_a_batch_is_dropped() {
        let (mut tx, mut rx) = bounded(10_000, 4096);
        tx.send(commit()).await.unwrap();
        tx.flush().await.unwrap();
        let b = rx.recv().await.unwrap();
        drop(b);
        tx.send(commit()).await.unwrap();
        tx.flush().await.unwrap();
        assert_eq!(rx.recv().await.unwrap().messages.len(), 1);
    }
}
