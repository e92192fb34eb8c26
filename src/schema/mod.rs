//! The schema guard: schema changes between versions of a table, and the policy that
//! decides what each change does (DESIGN.md, schema evolution guard).

pub mod change;
pub mod guard;
pub mod policy;
pub mod quarantine;

pub use change::{diff, diff_columns, is_widening, ChangeKind, SchemaChange};
pub use guard::{Guard, Halt};
pub use policy::{Policy, RuleOrigin, Ruling, Verdict};

/// A `s.t` schema (key: the first column) for the tests of this module.
#[cfg(test)]
pub(crate) fn test_schema(version: u32, cols: &[(&str, &str)]) -> crate::event::TableSchema {
    crate::event::TableSchema::new(
        std::sync::Arc::from("c"),
        "postgres",
        "s".into(),
        "t".into(),
        cols.iter()
            .map(|(n, t)| crate::event::Column {
                name: n.to_string(),
                type_name: t.to_string(),
            })
            .collect(),
        vec![0],
        version,
    )
}
