//! The enrichment dead-letter stream: events a step failed on, with the reason and the
//! step (`file:line kind`), in the log-stream format under `[enrich] dead_letter_dir`
//! (default `<state dir>/dead-letters/enrich`). Its cursor is stored with every
//! checkpoint like a sink's, so after a crash it holds each failed event once. Each
//! record also keeps the event as the source gave it, exactly (`replay`), for
//! `tributary dead-letters replay`.

use crate::event::stored::StoredChange;
use crate::event::{write_json_str, ChangeEvent};
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

    /// `{"reason": .., "step": .., "event": <the event as the failing step saw it, as
    /// sinks would see it>, "replay": <the source's event, exactly, with its layout>}`.
    /// The event is written as rendered, never parsed again: its JSON values may nest
    /// deeper than a JSON parser's recursion limit.
    pub fn append(
        &mut self,
        e: &ChangeEvent,
        source: &ChangeEvent,
        step: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        let rec = &mut self.scratch;
        rec.clear();
        rec.extend_from_slice(b"{\"reason\":");
        write_json_str(rec, reason);
        rec.extend_from_slice(b",\"step\":");
        write_json_str(rec, step);
        rec.extend_from_slice(b",\"event\":");
        e.write_json(rec);
        rec.extend_from_slice(b",\"replay\":");
        StoredChange::write(source, rec);
        rec.push(b'}');
        self.log.append_json(rec)?;
        let kind = step.rsplit(' ').next().unwrap_or(step);
        crate::metrics::enrich_dead_letter(&e.table.qualified_name(), kind);
        tracing::warn!(table = %e.table.qualified_name(), step, reason = %crate::privacy::text(reason), "enrichment failed: event sent to the enrichment dead-letter stream");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SourceMessage, Value};
    use crate::testkit::{insert, table};

    /// A value nested deeper than serde_json's recursion limit (128) is written as it
    /// is; it once made this writer panic.
    #[tokio::test]
    async fn deep_json_is_written_as_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let at = Settings::at(dir.path(), crate::files::FileMode::default());
        let mut dl = DeadLetters::open(&at, None).unwrap();
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        let SourceMessage::Change(mut e) =
            insert(&table("s.t", &[("id", "int"), ("j", "jsonb")], 1), 7, 9)
        else {
            unreachable!()
        };
        e.after.as_mut().unwrap()[1] =
            Value::Json(serde_json::value::RawValue::from_string(deep.clone()).unwrap());
        dl.append(&e, &e, "f.toml:3 compute", "a \"quoted\" reason")
            .unwrap();
        dl.commit();
        dl.flush().await.unwrap().await.unwrap();
        let mut records = Vec::new();
        crate::journal::read_log(dir.path(), |r| {
            records.push(r.json.to_string());
            true
        })
        .unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert!(
            r.starts_with(r#"{"reason":"a \"quoted\" reason","step":"f.toml:3 compute","event":{"#),
            "{r}"
        );
        assert!(r.contains(&format!("\"j\":{deep}")), "{r}");
    }
}
