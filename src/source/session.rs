//! What every streaming source shares: why a session ended, how long to wait before
//! the next one, and how to read the next event without holding changes back.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::event::SourceMessage;
use crate::failure::Failure;
use crate::queue::QueueSender;
use crate::source::SourceError;

/// How long a part-filled batch waits for more events before it is handed over.
const LINGER: Duration = Duration::from_millis(1);
/// Batches at least this full are handed over without waiting.
const LINGER_BELOW: usize = 128;

/// Why one streaming session ended.
#[derive(Debug)]
pub enum Stop {
    Shutdown,
    /// The pipeline went away.
    Closed,
    /// Lost (transient: reconnect) or refused (fatal: stop with the reason).
    Failed(Failure),
    /// Ended on purpose at a transaction boundary (the reason says why): connect again
    /// at once, without a warning or a backoff.
    Renew(String),
}

impl Stop {
    pub fn fatal(reason: impl Into<String>) -> Stop {
        Stop::Failed(Failure::Fatal(reason.into()))
    }

    pub fn transient(reason: impl Into<String>) -> Stop {
        Stop::Failed(Failure::Transient(reason.into()))
    }
}

impl From<Failure> for Stop {
    fn from(e: Failure) -> Self {
        Stop::Failed(e)
    }
}

/// Reconnects with exponential backoff (1 s doubling up to a limit), resetting after a
/// session that made progress.
pub struct Reconnect {
    /// What was lost, for the warning ("binlog connection", "replication connection").
    what: &'static str,
    backoff: Duration,
    max: Duration,
    /// A session got as far as streaming once: later transient errors retry, while
    /// one before that (wrong port, server down at start) is reported and ends the run.
    pub connected_once: bool,
}

impl Reconnect {
    pub fn new(what: &'static str, max_backoff_secs: u64) -> Self {
        Reconnect {
            what,
            backoff: Duration::from_secs(1),
            max: Duration::from_secs(max_backoff_secs.max(1)),
            connected_once: false,
        }
    }

    /// Settles a session that ended with `stop`. `Some(result)` ends the source;
    /// `None` means the backoff passed and the caller should connect again. A
    /// transaction cut short (`in_txn`) is taken back with `Rewind`: the next session
    /// reads it again from its start.
    pub async fn after(
        &mut self,
        stop: Stop,
        in_txn: &mut bool,
        progressed: bool,
        tx: &mut QueueSender,
        shutdown: &CancellationToken,
    ) -> Option<Result<(), SourceError>> {
        let m = match stop {
            Stop::Shutdown => {
                let _ = tx.flush().await;
                return Some(Ok(()));
            }
            Stop::Closed => return Some(Err(SourceError::Closed)),
            Stop::Failed(Failure::Fatal(m)) => {
                let _ = tx.flush().await;
                return Some(Err(SourceError::Fatal(m)));
            }
            Stop::Failed(Failure::Transient(m)) if !self.connected_once => {
                return Some(Err(SourceError::Fatal(m)))
            }
            Stop::Failed(Failure::Transient(m)) => m,
            Stop::Renew(why) => {
                debug_assert!(!*in_txn, "renewed inside a transaction");
                if tx.flush().await.is_err() {
                    return Some(Err(SourceError::Closed));
                }
                tracing::info!(reason = %why, "{} renewed", self.what);
                return None;
            }
        };
        if std::mem::take(in_txn) && tx.send(SourceMessage::Rewind).await.is_err() {
            return Some(Err(SourceError::Closed));
        }
        if tx.flush().await.is_err() {
            return Some(Err(SourceError::Closed));
        }
        if progressed {
            self.backoff = Duration::from_secs(1);
        }
        tracing::warn!(error = %m, retry_in_s = self.backoff.as_secs(), "{} lost; reconnecting", self.what);
        crate::health::source(crate::health::Source::Down(m.clone()));
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = shutdown.cancelled() => return Some(Ok(())),
        }
        self.backoff = (self.backoff * 2).min(self.max);
        None
    }
}

/// The next item of a source's input, handing buffered changes to the pipeline
/// whenever the input has nothing ready, so a quiet stream never holds a change back.
pub enum Next<T, S = ()> {
    Item(T),
    /// The side input (`next_or_flush_or`) was ready first.
    Side(S),
    Shutdown,
    /// Nothing arrived for `silence`.
    Silent,
    Closed,
}

/// Waits for `next`, flushing `tx` before any real wait. More is usually a moment away
/// while a server streams, so a part-filled batch first waits a millisecond (fewer
/// wakeups downstream).
pub async fn next_or_flush<F: Future>(
    tx: &mut QueueSender,
    shutdown: &CancellationToken,
    silence: Duration,
    next: Pin<&mut F>,
) -> Next<F::Output> {
    next_or_flush_or(tx, shutdown, silence, next, std::future::pending::<()>()).await
}

/// `next_or_flush`, also woken by `side` (a cancel-safe future, like a channel's
/// `recv`). `side` only races the final wait, after the flush: a flush cut short
/// would drop the batch it was handing over.
pub async fn next_or_flush_or<F: Future, S: Future>(
    tx: &mut QueueSender,
    shutdown: &CancellationToken,
    silence: Duration,
    mut next: Pin<&mut F>,
    side: S,
) -> Next<F::Output, S::Output> {
    if let Some(item) = next.as_mut().now_or_never() {
        return Next::Item(item);
    }
    if tx.buffered() > 0 && tx.buffered() < LINGER_BELOW {
        if let Ok(item) = tokio::time::timeout(LINGER, next.as_mut()).await {
            return Next::Item(item);
        }
    }
    if tx.flush().await.is_err() {
        return Next::Closed;
    }
    tokio::select! {
        item = tokio::time::timeout(silence, next) => match item {
            Ok(item) => Next::Item(item),
            Err(_) => Next::Silent,
        },
        s = side => Next::Side(s),
        _ = shutdown.cancelled() => Next::Shutdown,
    }
}
