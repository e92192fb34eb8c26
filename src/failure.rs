//! One classification of what went wrong, for sources, lookups and sinks alike: may it
//! pass by itself (retry with backoff), or does it need the operator (stop with the
//! reason)? And the one way to wait out what passes by itself (`retry`).

use std::time::{Duration, Instant};

/// A failure and its reason. The reason names the server, setting or table and what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// May pass by itself: a lost connection, a server restarting, an overloaded
    /// cluster. Retried with backoff; nothing is dropped meanwhile.
    #[error("{0}")]
    Transient(String),
    /// Needs the operator: settings, grants, credentials, a request the server
    /// refuses. Retrying cannot help.
    #[error("{0}")]
    Fatal(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Fatal(m) => m,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(_))
    }

    /// The same class with the reason rewritten (to add where it happened).
    pub fn reword(self, f: impl FnOnce(&str) -> String) -> Failure {
        match self {
            Failure::Transient(m) => Failure::Transient(f(&m)),
            Failure::Fatal(m) => Failure::Fatal(f(&m)),
        }
    }
}

/// Runs `attempt` until it succeeds or fails for good, retrying transient failures
/// forever with exponential backoff (100 ms doubling up to `max_backoff`, at least 1 s)
/// and jitter: an outage must never drop data; the caller waits meanwhile. Warns once a
/// minute while it lasts, naming `who` and `what`; `on_retry` counts each retry (for
/// a metric). Err: the fatal failure's reason.
pub async fn retry<T, F, Fut>(
    who: &str,
    what: &str,
    max_backoff: Duration,
    mut on_retry: impl FnMut(),
    mut attempt: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let max = max_backoff.max(Duration::from_secs(1));
    let mut backoff = Duration::from_millis(100);
    let started = Instant::now();
    let mut warned = None::<Instant>;
    loop {
        match attempt().await {
            Ok(v) => {
                if warned.is_some() {
                    crate::health::recovered(who);
                    tracing::info!(
                        who,
                        "{what} succeeded after {}s of retries",
                        started.elapsed().as_secs()
                    );
                }
                return Ok(v);
            }
            Err(Failure::Fatal(m)) => return Err(m),
            Err(Failure::Transient(m)) => {
                on_retry();
                crate::health::retrying(who, &m);
                if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(who, error = %m, retrying_for_s = started.elapsed().as_secs(), "{what} failed; retrying (changes wait, none are dropped)");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(backoff.mul_f64(jitter())).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

/// 0.8..1.2, so that many clients retrying at once spread out.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0
}
