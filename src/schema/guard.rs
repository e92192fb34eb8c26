//! The guard stage: between the source and the sinks, it compares each table's
//! schema with the one it last let through and applies the policy to the difference.
//!
//! What it let through is part of the checkpoint (stored with the sinks' cursors, as
//! of the last transaction boundary), so after a crash the replayed changes meet the
//! same decisions again, and a halted change is decided anew after a restart (with the
//! policy as edited meanwhile).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::change::{diff_columns, SchemaChange};
use super::policy::{Policy, Ruling, Verdict};
use crate::event::{ChangeEvent, Column};

/// The id the guard's state is stored under, next to the sinks' cursors.
pub const STATE_ID: &str = "schema-guard";

/// A change the policy stops at.
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema change on {table}: {change}; policy verdict `{verdict}` ({rule}: {kind} = \"{verdict}\"). Nothing after it was checkpointed. {advice}", verdict = .ruling.verdict.name(), rule = .ruling.origin, kind = .ruling.kind.key())]
pub struct Halt {
    pub table: String,
    pub change: SchemaChange,
    pub ruling: Ruling,
    pub advice: &'static str,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Accepted {
    version: u32,
    columns: Vec<Column>,
    /// Columns dropped (or renamed away) under a `deprecate` verdict: the index keeps
    /// their fields; `tributary status` lists them.
    #[serde(default)]
    deprecated: Vec<String>,
}

/// For `tributary status`: each table's accepted schema version and deprecated
/// columns, from a stored guard state.
pub fn summary(state: &serde_json::Value) -> serde_json::Value {
    let accepted: HashMap<String, Accepted> =
        serde_json::from_value(state.clone()).unwrap_or_default();
    let mut tables: Vec<_> = accepted.into_iter().collect();
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    serde_json::Value::Object(
        tables
            .into_iter()
            .map(|(t, a)| {
                (
                    t,
                    serde_json::json!({"schema_version": a.version, "deprecated": a.deprecated}),
                )
            })
            .collect(),
    )
}

pub struct Guard {
    policy: Policy,
    accepted: HashMap<String, Accepted>,
    /// `accepted` as of the last transaction boundary (None: unchanged since).
    committed: serde_json::Value,
    dirty: bool,
}

impl Guard {
    /// `state` is what `state()` returned at the last stored checkpoint.
    pub fn new(policy: Policy, state: Option<serde_json::Value>) -> Self {
        let accepted: HashMap<String, Accepted> = state
            .as_ref()
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        let committed = serde_json::to_value(&accepted).expect("a map serializes");
        Guard {
            policy,
            accepted,
            committed,
            dirty: false,
        }
    }

    /// Decisions from now on follow `policy` (SIGHUP reload); what was let through stays.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Lets a change through, or stops at a schema change its table's policy halts.
    pub fn check(&mut self, e: &ChangeEvent) -> Result<(), Box<Halt>> {
        let schema = &e.table;
        let table = schema.qualified_name();
        let previous = match self.accepted.get(&table) {
            Some(a) if a.version == schema.schema_version && a.columns == schema.columns => {
                return Ok(())
            }
            Some(a) => Some(a),
            // First sight: the table's schema as it is becomes the baseline.
            None => None,
        };
        let mut deprecated = previous.map(|p| p.deprecated.clone()).unwrap_or_default();
        if let Some(previous) = previous {
            let changes = diff_columns(&previous.columns, &schema.columns);
            for change in &changes {
                let ruling = self.policy.ruling(&table, change);
                match ruling.verdict {
                    Verdict::Allow | Verdict::Ignore => {
                        tracing::info!(table = %table, change = %change, rule = %ruling.origin, "schema change allowed");
                    }
                    Verdict::Deprecate => {
                        if let SchemaChange::ColumnDropped { column }
                        | SchemaChange::ColumnRenamed { from: column, .. } = change
                        {
                            deprecated.push(column.clone());
                        }
                        tracing::warn!(table = %table, change = %change, rule = %ruling.origin, "schema change: deprecated (the index keeps the field; new events no longer carry it)");
                    }
                    Verdict::Halt => {
                        return Err(Box::new(Halt {
                            table,
                            change: change.clone(),
                            ruling,
                            advice: "Edit the policy (or revert the change) and start again: it resumes before this change.",
                        }))
                    }
                    Verdict::Quarantine => {
                        return Err(Box::new(Halt {
                            table,
                            change: change.clone(),
                            ruling,
                            advice: "Quarantine streams are not built yet, so tributary stops here instead of passing the table's events on: choose allow, deprecate or halt for now.",
                        }))
                    }
                }
                crate::metrics::schema_change(&table, change.kind().key(), ruling.verdict.name());
            }
        }
        self.accepted.insert(
            table,
            Accepted {
                version: schema.schema_version,
                columns: schema.columns.clone(),
                deprecated,
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// A transaction boundary passed: what was let through so far is what a checkpoint
    /// there must store.
    pub fn commit(&mut self) {
        if self.dirty {
            self.committed = serde_json::to_value(&self.accepted).expect("a map serializes");
            self.dirty = false;
        }
    }

    /// The state as of the last transaction boundary, to store with a checkpoint.
    pub fn state(&self) -> serde_json::Value {
        self.committed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Position};
    use std::path::Path;
    use std::sync::Arc;

    fn event(version: u32, cols: &[(&str, &str)]) -> ChangeEvent {
        let schema = crate::schema::test_schema(version, cols);
        ChangeEvent {
            op: Op::Create,
            table: Arc::new(schema),
            pos: Position::Wal { lsn: 1 },
            txid: None,
            source_ts_ms: 0,
            before: None,
            after: None,
            version: 1,
            ts_ms: 0,
        }
    }

    #[test]
    fn add_only_lets_additions_through_and_halts_at_narrowing() {
        let mut g = Guard::new(Policy::add_only(), None);
        g.check(&event(1, &[("id", "int")])).unwrap();
        g.check(&event(2, &[("id", "int"), ("note", "text")]))
            .unwrap();
        g.check(&event(3, &[("id", "bigint"), ("note", "text")]))
            .unwrap();
        let halt = g
            .check(&event(4, &[("id", "bigint"), ("note", "integer")]))
            .unwrap_err();
        let msg = halt.to_string();
        assert!(msg.starts_with("schema change on s.t: column `note` changed type from text to integer; policy verdict `halt` (built-in add-only default: type_changed = \"halt\")"), "{msg}");
        // The halted schema was not taken in: it halts again.
        assert!(g
            .check(&event(4, &[("id", "bigint"), ("note", "integer")]))
            .is_err());
    }

    #[test]
    fn state_is_taken_at_boundaries_and_restores() {
        let mut g = Guard::new(Policy::add_only(), None);
        g.check(&event(1, &[("id", "int")])).unwrap();
        g.commit();
        g.check(&event(2, &[("id", "int"), ("x", "text")])).unwrap();
        // Not at a boundary yet: the stored state is still version 1.
        let state = g.state();
        let mut again = Guard::new(Policy::add_only(), Some(state));
        // Replayed from the checkpoint: version 2 is decided again (and allowed).
        again
            .check(&event(2, &[("id", "int"), ("x", "text")]))
            .unwrap();
        // A narrowing after a restored state halts.
        let policy =
            Policy::parse(Path::new("p.toml"), "[rules]\ncolumn_dropped = \"halt\"\n").unwrap();
        let mut strict = Guard::new(policy, Some(again.state()));
        let halt = strict.check(&event(2, &[("x", "text")])).unwrap_err();
        assert!(
            halt.to_string()
                .contains("(p.toml:2: column_dropped = \"halt\")"),
            "{halt}"
        );
    }
}
