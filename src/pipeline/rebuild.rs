//! Index rebuilds the daemon runs itself: of a table a schema-guard `reindex` verdict
//! names (the guard keeps it in its state, stored with each checkpoint), and of a
//! joined document whose definition changed (`document NAME`; its state keeps the
//! want). Either way a restart starts an unfinished rebuild again. The loop runs them
//! one at a time beside the stream through `Reindexer` (the daemon's: `tributary
//! reindex`'s fill beside the running daemon, whose sinks write the changes to the new
//! index meanwhile), and tells the guard or the documents when one finished. A rebuild
//! that fails is logged and tried again a minute later.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// Rebuilds the index of `db.table` or `document NAME` (every sink that keeps one).
pub type Reindexer = Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

const RETRY_AFTER: Duration = Duration::from_secs(60);

pub struct Rebuilds {
    reindexer: Option<Reindexer>,
    running: Option<String>,
    /// Tables whose last try failed, with when to try again.
    retry_at: HashMap<String, Instant>,
    done_tx: mpsc::UnboundedSender<(String, Result<(), String>)>,
    done_rx: mpsc::UnboundedReceiver<(String, Result<(), String>)>,
}

impl Rebuilds {
    /// Without a reindexer (tests of the loop) wanted rebuilds stay wanted.
    pub fn new(reindexer: Option<Reindexer>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Rebuilds {
            reindexer,
            running: None,
            retry_at: HashMap::new(),
            done_tx,
            done_rx,
        }
    }

    /// Starts the next wanted rebuild if none runs.
    pub fn start(&mut self, wanted: &BTreeSet<String>) {
        if wanted.is_empty() || self.running.is_some() {
            return;
        }
        let Some(reindexer) = &self.reindexer else {
            return;
        };
        let now = Instant::now();
        let Some(table) = wanted
            .iter()
            .find(|t| self.retry_at.get(*t).is_none_or(|at| *at <= now))
        else {
            return;
        };
        tracing::info!(index_of = %table, "rebuilding the index beside the stream");
        let (table, run, done) = (
            table.clone(),
            reindexer(table.clone()),
            self.done_tx.clone(),
        );
        self.running = Some(table.clone());
        tokio::spawn(async move {
            let _ = done.send((table, run.await));
        });
    }

    /// The next rebuild that ended (pending forever while none runs).
    pub async fn ended(&mut self) -> (String, Result<(), String>) {
        self.done_rx.recv().await.expect("the sender lives in self")
    }

    /// Settles an ended rebuild: whether the guard may forget the table.
    pub fn settle(&mut self, table: &str, result: Result<(), String>) -> bool {
        self.running = None;
        match result {
            Ok(()) => {
                self.retry_at.remove(table);
                tracing::info!(index_of = table, "the index was rebuilt");
                true
            }
            Err(e) => {
                let by_hand = match crate::document::stage::rebuilt_document(table) {
                    Some(d) => format!("--document {d}"),
                    None => format!("--table {table}"),
                };
                tracing::error!(index_of = table, error = %e, retry_in_s = RETRY_AFTER.as_secs(), "rebuilding the index failed (it keeps being written; `tributary reindex {by_hand}` runs it by hand)");
                self.retry_at
                    .insert(table.to_string(), Instant::now() + RETRY_AFTER);
                false
            }
        }
    }
}
