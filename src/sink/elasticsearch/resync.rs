//! Resync after a lost position (`[source] snapshot = "when_needed"`), the sink's side.
//!
//! When the server no longer has the stored position, the source resumes from its
//! current one and snapshots every table again, a `resync` event of the table first.
//! Rows deleted while the position was lost are in no event, so writing the fresh
//! snapshot over the index would keep them. Instead the `resync` event starts a new
//! concrete index (the next `<alias>_v<N>`) that gets the fresh snapshot's rows and,
//! through the online reindex's dual writes (dual.rs), every change from the event
//! on; the alias keeps serving the old index meanwhile. Once the snapshot progress
//! says the table is done, everything queued is sent, the alias moves to the new index
//! in one `_aliases` request and the old one is deleted (it holds the deleted rows).
//!
//! Exact for the same reasons as the snapshot merge: tracking of the table's keys
//! starts where the `resync` event stands, so a change before it is in the chunks and
//! a change after it reaches the new index itself. The request file makes it survive a
//! restart: the sink takes it up as it opens and the snapshot resumes from its
//! checkpointed progress; a `resync` event replayed after a crash starts over with a
//! new index (the snapshot replays from its start then too).

use std::sync::Arc;

use super::dual::Request;
use super::{fingerprint, move_alias, next_concrete, ElasticsearchSink};
use crate::event::{now_ms, TableSchema};
use crate::sink::SinkError;

impl ElasticsearchSink {
    /// `table`'s `resync` event: a new index takes the fresh snapshot and every change
    /// from here on, beside the alias.
    pub(super) async fn begin_resync(
        &mut self,
        alias: &str,
        table: &Arc<TableSchema>,
    ) -> Result<(), SinkError> {
        let (behind, all) = self.indexes_of(alias).await?;
        if behind.is_empty() {
            // Nothing indexed yet: the snapshot's rows create the index as usual.
            return Ok(());
        }
        let index = next_concrete(alias, &all);
        let fingerprint = self.create_index(&index, table).await?;
        // A reindex or resync the alias had unfinished: its index goes after the swap
        // (a reindex process still filling it fails before its own swap).
        let leftover = self.dual.targets.get(alias).map(|i| i.to_string());
        let request = Request {
            sink: self.id.clone(),
            table: table.qualified_name(),
            index: index.clone(),
            requested_ms: now_ms(),
            rows: 0,
            estimate: 0,
            resync: true,
            leftover,
        };
        self.dual
            .begin(alias, &request, fingerprint)
            .map_err(|e| self.err(format!("recording the resync of {alias}: {e}")))?;
        tracing::warn!(sink = %self.id, alias, index, table = %request.table, "resync: the table's fresh snapshot and its changes go to a new index; the alias keeps the old one until the snapshot is done");
        Ok(())
    }

    /// A snapshot progress: each resync whose table is done takes the alias.
    pub(super) async fn end_resyncs(
        &mut self,
        progress: &serde_json::Value,
    ) -> Result<(), SinkError> {
        if self.dual.targets.is_empty() {
            return Ok(());
        }
        for (alias, r) in self.dual.resyncs() {
            if progress["tables"][&r.table]["status"] != "done" {
                continue;
            }
            // The snapshot's last rows are queued: in the new index before the swap.
            self.sender.drain().await;
            self.refresh_index(&r.index).await?;
            let (behind, _) = self.indexes_of(&alias).await?;
            self.swap_aliases(move_alias(&alias, &behind, &r.index))
                .await?;
            self.dual.end(&alias);
            for old in behind.iter().chain(&r.leftover) {
                if *old != r.index {
                    self.delete_index(old, "deleting the index a resync replaced")
                        .await?;
                }
            }
            if let Some(m) = self.mapped.get_mut(&alias) {
                let (db, table) = r.table.split_once('.').unwrap_or(("", &r.table));
                m.fingerprint = Some(fingerprint(&self.cfg, &self.context, db, table));
            }
            tracing::info!(sink = %self.id, alias, index = %r.index, table = %r.table, "resync finished: the alias points at the new index");
        }
        Ok(())
    }

    /// Ends `alias`'s resync (a TRUNCATE made its index moot); returns the index to
    /// delete.
    pub(super) fn end_resync(&mut self, alias: &str) -> Option<String> {
        let r = self.dual.resync(alias)?;
        self.dual.end(alias);
        tracing::info!(sink = %self.id, alias, "resync ended by a truncate: the new empty index is exact");
        Some(r.index)
    }
}
