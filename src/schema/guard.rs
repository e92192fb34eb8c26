//! The guard stage: between the source and the sinks, it compares each table's
//! schema with the one it last let through and applies the policy to the difference.
//!
//! What it let through is part of the checkpoint (stored with the sinks' cursors, as
//! of the last transaction boundary), so after a crash the replayed changes meet the
//! same decisions again, and a halted change is decided anew after a restart (with the
//! policy as edited meanwhile).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::change::{diff_columns, SchemaChange, TYPE_NAMES};
use super::policy::{Policy, Ruling, Verdict};
use crate::event::{ChangeEvent, Column, PerSchema, Stated, TableChange};
use crate::offsets::{OffsetError, OffsetStore};

/// The id the guard's state is stored under, next to the sinks' cursors.
pub const STATE_ID: &str = "schema-guard";

/// A change the policy stops at.
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema change on {table}: {change}; policy verdict `{verdict}` ({rule}: {kind} = \"{verdict}\"). Nothing after it was checkpointed. Edit the policy (or revert the change) and start again: it resumes before this change.", verdict = .ruling.verdict.name(), rule = .ruling.origin, kind = .ruling.kind.key())]
pub struct Halt {
    pub table: String,
    pub change: SchemaChange,
    pub ruling: Ruling,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Accepted {
    version: u32,
    columns: Vec<Column>,
    /// Columns dropped (or renamed away) under a `deprecate` verdict: the index keeps
    /// their fields; `tributary status` lists them.
    #[serde(default)]
    deprecated: Vec<String>,
    /// How `columns` spell their types (`TYPE_NAMES`; 0 when not recorded).
    #[serde(default)]
    type_names: u32,
}

/// What the guard keeps, and stores with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    #[serde(default)]
    tables: HashMap<String, Accepted>,
    /// Tables created under a `table_created = "ignore"` verdict: not captured.
    #[serde(default)]
    ignored: BTreeSet<String>,
    /// Tables dropped under a `deprecate` verdict (their indexes stay): `status` lists
    /// them, and a source that reports a drop again (PostgreSQL's catalog checks after
    /// a restart) is not decided twice.
    #[serde(default)]
    dropped: BTreeSet<String>,
    /// Column renames a DDL statement stated, for the table's next layout.
    #[serde(default)]
    renames: HashMap<String, Vec<(String, String)>>,
    /// Tables whose events go to the quarantine stream until `tributary quarantine
    /// replay` releases them.
    #[serde(default)]
    quarantined: BTreeMap<String, Quarantined>,
    /// The last quarantine epoch handed out.
    #[serde(default)]
    last_epoch: u64,
    /// Tables a `reindex` verdict let a change through for, whose index is still to
    /// be rebuilt (kept until the rebuild finished: a restart starts it again).
    #[serde(default)]
    reindex: BTreeSet<String>,
}

/// Why and since when a table is quarantined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quarantined {
    /// Tags this quarantine's records in the stream: a table quarantined again after a
    /// replay gets a new epoch, so a replay never sends the records of an earlier one.
    pub epoch: u64,
    /// The changes that caused it, as `policy diff` prints them.
    pub changes: Vec<String>,
    /// The rule with the `quarantine` verdict (`file:line` or built-in).
    pub rule: String,
    /// The schema version the changes arrived with.
    pub schema_version: u32,
    /// When, ms since the epoch.
    pub since_ms: u64,
}

/// What becomes of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// On to the sinks.
    Yes,
    /// Its table is not captured (`table_created = "ignore"`).
    Skip,
    /// Its table is quarantined: to the quarantine stream, tagged with this epoch.
    Quarantine(u64),
}

/// For `tributary status`: each table's accepted schema version and deprecated
/// columns, from a stored guard state.
pub fn summary(state: &serde_json::Value) -> serde_json::Value {
    let state: State = serde_json::from_value(state.clone()).unwrap_or_default();
    let mut tables: Vec<_> = state.tables.into_iter().collect();
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: serde_json::Map<String, serde_json::Value> = tables
        .into_iter()
        .map(|(t, a)| {
            (
                t,
                serde_json::json!({"schema_version": a.version, "deprecated": a.deprecated}),
            )
        })
        .collect();
    for t in state.ignored {
        out.insert(t, serde_json::json!({"ignored": true}));
    }
    for t in state.dropped {
        let entry = out.entry(t).or_insert_with(|| serde_json::json!({}));
        entry["dropped"] = true.into();
    }
    for (t, q) in state.quarantined {
        let entry = out.entry(t).or_insert_with(|| serde_json::json!({}));
        entry["quarantined"] = serde_json::to_value(q).expect("serializes");
    }
    serde_json::Value::Object(out)
}

/// Each table's layout as the guard accepted it (version, columns, `TYPE_NAMES`), from
/// a stored guard state: what a restart decides the live layout against.
pub fn accepted(state: &serde_json::Value) -> BTreeMap<String, (u32, Vec<Column>, u32)> {
    let state: State = serde_json::from_value(state.clone()).unwrap_or_default();
    state
        .tables
        .into_iter()
        .map(|(t, a)| (t, (a.version, a.columns, a.type_names)))
        .collect()
}

pub struct Guard {
    policy: Policy,
    state: State,
    /// What `check` decided per schema `Arc`, so the common case (a schema already
    /// let through) costs one lookup per event. Cleared whenever `state` or the
    /// policy changes.
    decided: PerSchema<Pass>,
    /// `state` as of the last transaction boundary.
    committed: serde_json::Value,
    dirty: bool,
}

impl Guard {
    /// A guard that has let nothing through yet.
    pub fn new(policy: Policy) -> Self {
        Guard::with_state(policy, State::default())
    }

    /// The guard as of the last stored checkpoint; stored state that cannot be read
    /// is an error naming the store (never a fresh guard that forgot its quarantines).
    pub fn restore(policy: Policy, store: &OffsetStore) -> Result<Self, OffsetError> {
        let state = store.stage_state_as::<State>(STATE_ID)?;
        Ok(Guard::with_state(policy, state.unwrap_or_default()))
    }

    fn with_state(policy: Policy, state: State) -> Self {
        let committed = serde_json::to_value(&state).expect("the state serializes");
        Guard {
            policy,
            state,
            decided: PerSchema::default(),
            committed,
            dirty: false,
        }
    }

    /// Decisions from now on follow `policy` (SIGHUP reload); what was let through stays.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        self.decided.clear();
    }

    /// Applies the verdict for one change: Ok(ruling) when it does not halt (logged and
    /// counted), the halt otherwise.
    fn decide(&self, table: &str, change: &SchemaChange) -> Result<Ruling, Box<Halt>> {
        let ruling = self.policy.ruling(table, change);
        match ruling.verdict {
            Verdict::Allow => {
                tracing::info!(table, change = %change, rule = %ruling.origin, "schema change allowed")
            }
            Verdict::Ignore => {
                tracing::warn!(table, change = %change, rule = %ruling.origin, "schema change: table ignored (not captured)")
            }
            Verdict::Deprecate => {
                tracing::warn!(table, change = %change, rule = %ruling.origin, "schema change: deprecated (the index keeps what it has; new events no longer carry it)")
            }
            Verdict::Halt => {
                return Err(Box::new(Halt {
                    table: table.to_string(),
                    change: change.clone(),
                    ruling,
                }))
            }
            Verdict::Quarantine => {
                tracing::warn!(table, change = %change, rule = %ruling.origin, "schema change quarantined: the table's events go to the quarantine stream until `tributary quarantine replay`; other tables keep flowing")
            }
            Verdict::Reindex => {
                tracing::info!(table, change = %change, rule = %ruling.origin, "schema change allowed; the table's index is rebuilt with the new type beside the stream")
            }
        }
        crate::metrics::schema_change(table, change.kind().key(), ruling.verdict.name());
        Ok(ruling)
    }

    /// Lets a change through, skips it (ignored table), or stops at a schema change
    /// its table's policy halts.
    pub fn check(&mut self, e: &ChangeEvent) -> Result<Pass, Box<Halt>> {
        if let Some(pass) = self.decided.get(&e.table) {
            return Ok(*pass);
        }
        let pass = self.decide_schema(e)?;
        self.decided.insert(&e.table, pass);
        Ok(pass)
    }

    fn decide_schema(&mut self, e: &ChangeEvent) -> Result<Pass, Box<Halt>> {
        let schema = &e.table;
        self.decide_layout(
            schema.qualified_name(),
            schema.schema_version,
            &schema.columns,
        )
    }

    /// Decides a table's layout (`version`, `columns`) against the one it accepted.
    fn decide_layout(
        &mut self,
        table: String,
        version: u32,
        columns: &[Column],
    ) -> Result<Pass, Box<Halt>> {
        if self.state.ignored.contains(&table) {
            return Ok(Pass::Skip);
        }
        if let Some(q) = self.state.quarantined.get(&table) {
            return Ok(Pass::Quarantine(q.epoch));
        }
        let previous = match self.state.tables.get(&table) {
            Some(a) if a.version == version && a.columns == columns => return Ok(Pass::Yes),
            Some(a) => Some(a),
            // First sight: the table's schema as it is becomes the baseline.
            None => None,
        };
        let mut deprecated = previous.map(|p| p.deprecated.clone()).unwrap_or_default();
        let mut quarantine: Option<Quarantined> = None;
        let mut rebuild = false;
        if let Some(previous) = previous {
            let hints = self.state.renames.get(&table).cloned().unwrap_or_default();
            for change in with_stated_renames(
                diff_columns(&previous.columns, previous.type_names, columns),
                &hints,
            ) {
                let ruling = self.decide(&table, &change)?;
                match ruling.verdict {
                    Verdict::Deprecate => {
                        if let SchemaChange::ColumnDropped { column }
                        | SchemaChange::ColumnRenamed { from: column, .. } = &change
                        {
                            deprecated.push(column.clone());
                        }
                    }
                    Verdict::Quarantine => {
                        let q = quarantine.get_or_insert_with(|| Quarantined {
                            epoch: 0,
                            changes: Vec::new(),
                            rule: ruling.origin.to_string(),
                            schema_version: version,
                            since_ms: crate::event::now_ms(),
                        });
                        q.changes.push(change.to_string());
                    }
                    Verdict::Reindex => rebuild = true,
                    _ => {}
                }
            }
        }
        if let Some(mut q) = quarantine {
            // Nothing of the new layout is taken in (the previous one stays accepted):
            // the replay decides it again under the policy as edited by then.
            self.state.last_epoch += 1;
            q.epoch = self.state.last_epoch;
            let epoch = q.epoch;
            self.state.quarantined.insert(table, q);
            self.decided.clear();
            self.dirty = true;
            return Ok(Pass::Quarantine(epoch));
        }
        self.state.renames.remove(&table);
        if rebuild {
            self.state.reindex.insert(table.clone());
        }
        // Other schemas of this table were decided against the previous layout.
        self.decided.clear();
        self.state.tables.insert(
            table,
            Accepted {
                version,
                columns: columns.to_vec(),
                deprecated,
                type_names: TYPE_NAMES,
            },
        );
        self.dirty = true;
        Ok(Pass::Yes)
    }

    /// A table-level change a source read from DDL or the catalog (created, dropped,
    /// renamed, found uncaptured; a column rename the statement states, which the next
    /// layout's diff then reports as certain; a type a statement states). Returns the
    /// table to snapshot, when an uncaptured table was let in.
    pub fn table_change(&mut self, tc: &TableChange) -> Result<Option<String>, Box<Halt>> {
        let table = &tc.table;
        let (change, snapshot) = match &tc.change {
            Stated::Change(change) => (change, false),
            Stated::ColumnType { column, type_name } => {
                self.stated_type(table, column, type_name)?;
                return Ok(None);
            }
            Stated::Layout { version, columns } => {
                self.decide_layout(table.clone(), *version, columns)?;
                return Ok(None);
            }
            // A table created that the stream does not carry yet: let in, it wants a
            // snapshot. An ignored one stays ignored, said once (a catalog check finds
            // it again after every restart).
            Stated::Uncaptured if self.state.ignored.contains(table) => return Ok(None),
            Stated::Uncaptured => (&SchemaChange::TableCreated, true),
        };
        if *change == SchemaChange::TableDropped && self.state.dropped.contains(table) {
            return Ok(None);
        }
        self.decided.clear();
        let mut wanted = None;
        match change {
            SchemaChange::ColumnRenamed { from, to, .. } => {
                self.state
                    .renames
                    .entry(table.clone())
                    .or_default()
                    .push((from.clone(), to.clone()));
            }
            change @ SchemaChange::TableCreated => {
                self.state.dropped.remove(table);
                if self.decide(table, change)?.verdict == Verdict::Ignore {
                    self.state.ignored.insert(table.clone());
                } else {
                    self.state.ignored.remove(table);
                    wanted = snapshot.then(|| table.clone());
                }
            }
            change => {
                self.decide(table, change)?;
                if *change == SchemaChange::TableDropped {
                    self.state.ignored.remove(table);
                    self.state.dropped.insert(table.clone());
                }
            }
        }
        self.dirty = true;
        Ok(wanted)
    }

    /// A statement gives `column` of `table` the type `type_name`: a change of the type
    /// the guard accepted that the policy halts stops here, at the statement. Any other
    /// verdict is left to the table's next layout, which shows the same change (so it
    /// is decided, logged and counted once).
    fn stated_type(&self, table: &str, column: &str, type_name: &str) -> Result<(), Box<Halt>> {
        let Some(accepted) = self.state.tables.get(table) else {
            return Ok(());
        };
        let Some(was) = accepted.columns.iter().find(|c| c.name == column) else {
            return Ok(());
        };
        let now = Column {
            name: column.to_string(),
            type_name: type_name.to_string(),
        };
        for change in diff_columns(std::slice::from_ref(was), accepted.type_names, &[now]) {
            let ruling = self.policy.ruling(table, &change);
            if ruling.verdict == Verdict::Halt {
                return Err(Box::new(Halt {
                    table: table.to_string(),
                    change,
                    ruling,
                }));
            }
        }
        Ok(())
    }

    /// Tables whose index a `reindex` verdict asked to rebuild, not rebuilt yet.
    pub fn reindex_wanted(&self) -> &BTreeSet<String> {
        &self.state.reindex
    }

    /// `table`'s index was rebuilt.
    pub fn reindexed(&mut self, table: &str) {
        if self.state.reindex.remove(table) {
            self.dirty = true;
        }
    }

    /// The quarantined tables, by name.
    pub fn quarantined(&self) -> &BTreeMap<String, Quarantined> {
        &self.state.quarantined
    }

    /// Ends a table's quarantine (replay): its next event is decided against the
    /// layout accepted before the quarantine, under the current policy.
    pub fn release(&mut self, table: &str) -> Option<Quarantined> {
        let q = self.state.quarantined.remove(table)?;
        self.decided.clear();
        self.dirty = true;
        Some(q)
    }

    /// A transaction boundary passed: what was let through so far is what a checkpoint
    /// there must store.
    pub fn commit(&mut self) {
        if self.dirty {
            self.committed = serde_json::to_value(&self.state).expect("the state serializes");
            self.dirty = false;
        }
    }

    /// The state as of the last transaction boundary, to store with a checkpoint.
    pub fn state(&self) -> serde_json::Value {
        self.committed.clone()
    }
}

/// A drop and an add that a DDL statement named as a rename become a certain rename,
/// whatever the types.
fn with_stated_renames(
    changes: Vec<SchemaChange>,
    stated: &[(String, String)],
) -> Vec<SchemaChange> {
    let mut out = Vec::with_capacity(changes.len());
    let mut rest = changes;
    for (from, to) in stated {
        let dropped = rest.iter().position(|c| {
            matches!(c, SchemaChange::ColumnDropped { column } if column == from)
                || matches!(c, SchemaChange::ColumnRenamed { from: f, .. } if f == from)
        });
        let added = rest.iter().position(|c| {
            matches!(c, SchemaChange::ColumnAdded { column, .. } if column == to)
                || matches!(c, SchemaChange::ColumnRenamed { to: t, .. } if t == to)
        });
        if let (Some(d), Some(a)) = (dropped, added) {
            let (hi, lo) = if d > a { (d, a) } else { (a, d) };
            rest.remove(hi);
            if hi != lo {
                rest.remove(lo);
            }
            out.push(SchemaChange::ColumnRenamed {
                from: from.clone(),
                to: to.clone(),
                certain: true,
            });
        }
    }
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard from a state `state()` returned.
    fn reload(policy: Policy, state: serde_json::Value) -> Guard {
        Guard::with_state(policy, serde_json::from_value(state).unwrap())
    }
    use crate::event::{Op, Position};
    use std::path::Path;
    use std::sync::Arc;

    fn event(version: u32, cols: &[(&str, &str)]) -> ChangeEvent {
        let schema = crate::testkit::test_schema(version, cols);
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
        let mut g = Guard::new(Policy::add_only());
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
        let mut g = Guard::new(Policy::add_only());
        g.check(&event(1, &[("id", "int")])).unwrap();
        g.commit();
        g.check(&event(2, &[("id", "int"), ("x", "text")])).unwrap();
        // Not at a boundary yet: the stored state is still version 1.
        let state = g.state();
        let mut again = reload(Policy::add_only(), state);
        // Replayed from the checkpoint: version 2 is decided again (and allowed).
        again
            .check(&event(2, &[("id", "int"), ("x", "text")]))
            .unwrap();
        // A narrowing after a restored state halts.
        let policy =
            Policy::parse(Path::new("p.toml"), "[rules]\ncolumn_dropped = \"halt\"\n").unwrap();
        let mut strict = reload(policy, again.state());
        let halt = strict.check(&event(2, &[("x", "text")])).unwrap_err();
        assert!(
            halt.to_string()
                .contains("(p.toml:2: column_dropped = \"halt\")"),
            "{halt}"
        );
    }

    /// A widening under `reindex` (the add-only default) passes and leaves the table
    /// wanting a rebuild, kept through a restart until `reindexed`.
    #[test]
    fn reindex_verdicts_pass_and_are_remembered_until_rebuilt() {
        let mut g = Guard::new(Policy::add_only());
        g.check(&event(1, &[("id", "int"), ("x", "real")])).unwrap();
        assert!(g.reindex_wanted().is_empty());
        g.check(&event(2, &[("id", "int"), ("x", "double precision")]))
            .unwrap();
        g.commit();
        assert_eq!(g.reindex_wanted().iter().collect::<Vec<_>>(), ["s.t"]);
        let mut again = reload(Policy::add_only(), g.state());
        assert_eq!(again.reindex_wanted().len(), 1, "a restart starts it again");
        again.reindexed("s.t");
        again.commit();
        assert!(reload(Policy::add_only(), again.state())
            .reindex_wanted()
            .is_empty());
    }

    #[test]
    fn drops_are_deprecated_and_listed() {
        let mut g = Guard::new(Policy::add_only());
        g.check(&event(1, &[("id", "int"), ("x", "text")])).unwrap();
        g.check(&event(2, &[("x", "text")])).unwrap();
        g.commit();
        let s = summary(&g.state());
        assert_eq!(s["s.t"]["schema_version"], 2);
        assert_eq!(s["s.t"]["deprecated"], serde_json::json!(["id"]));
    }

    #[test]
    fn a_stated_type_the_policy_halts_stops_at_the_statement() {
        let mut g = Guard::new(Policy::add_only());
        g.check(&event(1, &[("id", "int"), ("name", "varchar(50)")]))
            .unwrap();
        let stated = |type_name: &str| TableChange {
            table: "s.t".into(),
            change: Stated::ColumnType {
                column: "name".into(),
                type_name: type_name.into(),
            },
        };
        let halt = g.table_change(&stated("varchar(20)")).unwrap_err();
        assert_eq!(
            halt.change,
            SchemaChange::TypeChanged {
                column: "name".into(),
                from: "varchar(50)".into(),
                to: "varchar(20)".into()
            }
        );
        assert_eq!(
            halt.ruling.origin,
            super::super::policy::RuleOrigin::BuiltIn
        );
        // A widening is left to the next layout; so are columns and tables it has not
        // accepted.
        g.table_change(&stated("varchar(80)")).unwrap();
        g.table_change(&stated("varchar(50)")).unwrap();
        let mut other = stated("tinytext");
        other.table = "s.other".into();
        g.table_change(&other).unwrap();
        // A layout recorded before names had lengths: `varchar` was any length.
        g.commit();
        let mut old = g.state();
        old["tables"]["s.t"]["columns"][1]["type_name"] = "varchar".into();
        old["tables"]["s.t"]["type_names"] = 0.into();
        let legacy = reload(Policy::add_only(), old);
        legacy.stated_type("s.t", "name", "varchar(20)").unwrap();
    }

    #[test]
    fn uncaptured_tables_are_let_in_for_a_snapshot_and_drops_decided_once() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            "[[table]]\nmatch = \"s.ign\"\ntable_created = \"ignore\"\n",
        )
        .unwrap();
        let mut g = Guard::new(policy);
        let tc = |table: &str, change| TableChange {
            table: table.into(),
            change,
        };
        assert_eq!(
            g.table_change(&tc("s.new", Stated::Uncaptured)).unwrap(),
            Some("s.new".to_string())
        );
        assert_eq!(
            g.table_change(&tc("s.ign", Stated::Uncaptured)).unwrap(),
            None
        );
        assert_eq!(
            g.table_change(&tc("s.ign", Stated::Uncaptured)).unwrap(),
            None
        );
        let drop = Stated::Change(SchemaChange::TableDropped);
        g.table_change(&tc("s.new", drop.clone())).unwrap();
        g.commit();
        let s = summary(&g.state());
        assert_eq!(s["s.ign"]["ignored"], true);
        assert_eq!(s["s.new"]["dropped"], true);
        // Reported again (a restart's look at the catalog): not decided again, even
        // under a policy that halts drops now.
        let strict =
            Policy::parse(Path::new("p.toml"), "[rules]\ntable_dropped = \"halt\"\n").unwrap();
        let mut again = reload(strict, g.state());
        again.table_change(&tc("s.new", drop.clone())).unwrap();
        assert!(again.table_change(&tc("s.other", drop)).is_err());
        // Created again: no longer dropped.
        again
            .table_change(&tc("s.new", Stated::Uncaptured))
            .unwrap();
        again.commit();
        assert!(summary(&again.state())["s.new"].get("dropped").is_none());
    }

    #[test]
    fn stated_renames_are_certain_and_tables_follow_their_rules() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            "[rules]\ncolumn_renamed = \"deprecate\"\ntable_created = \"ignore\"\ntable_dropped = \"halt\"\n",
        )
        .unwrap();
        let mut g = Guard::new(policy);
        g.check(&event(1, &[("id", "int"), ("a", "int")])).unwrap();
        let tc = |table: &str, change| TableChange {
            table: table.into(),
            change: Stated::Change(change),
        };
        g.table_change(&tc(
            "s.t",
            SchemaChange::ColumnRenamed {
                from: "a".into(),
                to: "b".into(),
                certain: true,
            },
        ))
        .unwrap();
        // Renamed and retyped at once: still the rename the statement said.
        g.check(&event(2, &[("id", "int"), ("b", "bigint")]))
            .unwrap();
        g.commit();
        assert_eq!(
            summary(&g.state())["s.t"]["deprecated"],
            serde_json::json!(["a"])
        );
        // An ignored new table's changes are skipped; a dropped table halts.
        let mut other = event(1, &[("x", "int")]);
        let mut schema = (*other.table).clone();
        schema.table = "new".into();
        other.table = std::sync::Arc::new(schema);
        g.table_change(&tc("s.new", SchemaChange::TableCreated))
            .unwrap();
        assert_eq!(g.check(&other).unwrap(), Pass::Skip);
        let halt = g
            .table_change(&tc("s.t", SchemaChange::TableDropped))
            .unwrap_err();
        assert!(
            halt.to_string()
                .contains("table dropped; policy verdict `halt` (p.toml:4"),
            "{halt}"
        );
    }

    #[test]
    fn quarantine_sets_the_table_aside_until_released() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            "[rules]\ncolumn_added = \"quarantine\"\n",
        )
        .unwrap();
        let mut g = Guard::new(policy);
        g.check(&event(1, &[("id", "int")])).unwrap();
        let wider = event(2, &[("id", "int"), ("x", "text")]);
        assert_eq!(g.check(&wider).unwrap(), Pass::Quarantine(1));
        // Every later event of the table, whatever its schema, goes the same way.
        assert_eq!(
            g.check(&event(1, &[("id", "int")])).unwrap(),
            Pass::Quarantine(1)
        );
        g.commit();
        let s = summary(&g.state());
        assert_eq!(
            s["s.t"]["schema_version"], 1,
            "the new layout is not taken in"
        );
        assert_eq!(s["s.t"]["quarantined"]["rule"], "p.toml:2");
        assert_eq!(
            s["s.t"]["quarantined"]["changes"],
            serde_json::json!(["column `x` added (text)"])
        );
        // The quarantine survives a restart; released under a policy that allows the
        // change, the table's events pass and the new layout is accepted.
        let mut replay = reload(Policy::add_only(), g.state());
        assert_eq!(replay.check(&wider).unwrap(), Pass::Quarantine(1));
        assert_eq!(replay.release("s.t").unwrap().epoch, 1);
        assert_eq!(replay.check(&wider).unwrap(), Pass::Yes);
        replay.commit();
        assert_eq!(summary(&replay.state())["s.t"]["schema_version"], 2);
        assert!(summary(&replay.state())["s.t"].get("quarantined").is_none());
        // Quarantined again later: a new epoch, so a replay never resends the old records.
        let policy = Policy::parse(
            Path::new("p.toml"),
            "[rules]\ncolumn_added = \"quarantine\"\n",
        )
        .unwrap();
        replay.set_policy(policy);
        let third = event(3, &[("id", "int"), ("x", "text"), ("y", "int")]);
        assert_eq!(replay.check(&third).unwrap(), Pass::Quarantine(2));
    }
}
