//! The enrichment dead-letter stream: events a step failed on, with the reason and the
//! step (`file:line kind`), in the log-stream format under `[enrich] dead_letter_dir`
//! (default `<state dir>/dead-letters/enrich`). Its cursor is stored with every
//! checkpoint like a sink's, so after a crash it holds each failed event once.

use crate::event::ChangeEvent;
use crate::journal::{Flushed, Journal, JournalError, Settings};

pub struct DeadLetters {
    log: Journal,
    scratch: Vec<u8>,
}

impl DeadLetters {
    pub fn open(at: &Settings, cursor: Option<serde_json::Value>) -> Result<Self, JournalError> {
        Ok(DeadLetters {
            log: Journal::open(super::DEAD_LETTERS_ID.to_string(), at, cursor)?,
            scratch: Vec::with_capacity(4096),
        })
    }

    /// `{"reason": .., "step": .., "event": <the event as sinks would see it>}`.
    pub fn append(
        &mut self,
        e: &ChangeEvent,
        step: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        let event: serde_json::Value =
            serde_json::from_str(&e.to_json()).expect("events render valid JSON");
        let record = serde_json::json!({"reason": reason, "step": step, "event": event});
        self.log.append_record(&record, &mut self.scratch)?;
        let kind = step.rsplit(' ').next().unwrap_or(step);
        crate::metrics::enrich_dead_letter(&e.table.qualified_name(), kind);
        tracing::warn!(table = %e.table.qualified_name(), step, reason, "enrichment failed: event sent to the enrichment dead-letter stream");
        Ok(())
    }

    pub fn commit(&mut self) {
        self.log.mark_boundary();
    }

    pub fn rewind(&mut self) -> Result<(), JournalError> {
        self.log.rewind()
    }

    pub async fn flush(&mut self) -> Result<Flushed, JournalError> {
        self.log.flush().await
    }
}
