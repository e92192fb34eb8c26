//! The schema guard: schema changes between versions of a table, and the policy that
//! decides what each change does (DESIGN.md, schema evolution guard).

pub mod change;
pub mod guard;
pub mod history;
pub mod policy;
pub mod quarantine;

pub use change::{diff, diff_columns, is_widening, ChangeKind, SchemaChange, TYPE_NAMES};
pub use guard::{Guard, Halt};
pub use policy::{Policy, RuleOrigin, Ruling, Verdict};
