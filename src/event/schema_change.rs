//! What a schema change is: part of the event model because sources report table
//! changes they read from DDL (`SourceMessage::Schema`); the schema guard decides them.

use std::fmt;

/// One difference between a table's recorded schema and its new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    ColumnAdded {
        column: String,
        type_name: String,
    },
    ColumnDropped {
        column: String,
    },
    /// A type change that cannot lose values (see `is_widening`).
    TypeWidened {
        column: String,
        from: String,
        to: String,
    },
    TypeChanged {
        column: String,
        from: String,
        to: String,
    },
    /// A rename the DDL said, or a drop and an add of the same type in one change
    /// (`certain` false: Postgres does not replicate DDL, so it may be a real drop+add).
    ColumnRenamed {
        from: String,
        to: String,
        certain: bool,
    },
    TableCreated,
    TableDropped,
}

/// What a source learned about an included table outside its rows, from a DDL
/// statement or the catalog (`SourceMessage::Schema`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stated {
    /// A change the statement makes that no row shows: a table created, dropped or
    /// renamed, a column renamed.
    Change(SchemaChange),
    /// The type the statement gives an existing column (named as before it), spelled
    /// as the table's next layout will spell it. The guard compares it with the type it
    /// accepted, so that a change its policy halts stops at the statement itself, not
    /// at the table's next row (with the changes of other tables in between passed).
    ColumnType { column: String, type_name: String },
    /// An included table the stream does not carry yet (PostgreSQL: found in the
    /// catalog and not in the publication, or renamed into the include list): decided
    /// as `table_created`; allowed, it is snapshotted, which first puts it in the
    /// publication, so its rows from before (the same transaction as its CREATE
    /// included) come from the snapshot and the later ones from the stream.
    Uncaptured,
    /// The table's layout right after a statement changed it (PostgreSQL, from the DDL
    /// trigger), with the schema version the stream gives that layout: decided here,
    /// at the statement's position, as the table's next row would have been.
    Layout {
        version: u32,
        columns: Vec<crate::event::Column>,
    },
}

/// The kinds a policy gives verdicts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    ColumnAdded,
    ColumnDropped,
    TypeWidened,
    TypeChanged,
    ColumnRenamed,
    TableCreated,
    TableDropped,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 7] = [
        ChangeKind::ColumnAdded,
        ChangeKind::ColumnDropped,
        ChangeKind::TypeWidened,
        ChangeKind::TypeChanged,
        ChangeKind::ColumnRenamed,
        ChangeKind::TableCreated,
        ChangeKind::TableDropped,
    ];

    /// The key in policy files.
    pub fn key(self) -> &'static str {
        match self {
            ChangeKind::ColumnAdded => "column_added",
            ChangeKind::ColumnDropped => "column_dropped",
            ChangeKind::TypeWidened => "type_widened",
            ChangeKind::TypeChanged => "type_changed",
            ChangeKind::ColumnRenamed => "column_renamed",
            ChangeKind::TableCreated => "table_created",
            ChangeKind::TableDropped => "table_dropped",
        }
    }
}

impl SchemaChange {
    pub fn kind(&self) -> ChangeKind {
        match self {
            SchemaChange::ColumnAdded { .. } => ChangeKind::ColumnAdded,
            SchemaChange::ColumnDropped { .. } => ChangeKind::ColumnDropped,
            SchemaChange::TypeWidened { .. } => ChangeKind::TypeWidened,
            SchemaChange::TypeChanged { .. } => ChangeKind::TypeChanged,
            SchemaChange::ColumnRenamed { .. } => ChangeKind::ColumnRenamed,
            SchemaChange::TableCreated => ChangeKind::TableCreated,
            SchemaChange::TableDropped => ChangeKind::TableDropped,
        }
    }
}

impl fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaChange::ColumnAdded { column, type_name } => {
                write!(f, "column `{column}` added ({type_name})")
            }
            SchemaChange::ColumnDropped { column } => write!(f, "column `{column}` dropped"),
            SchemaChange::TypeWidened { column, from, to } => {
                write!(f, "column `{column}` widened from {from} to {to}")
            }
            SchemaChange::TypeChanged { column, from, to } => {
                write!(f, "column `{column}` changed type from {from} to {to}")
            }
            SchemaChange::ColumnRenamed { from, to, certain } => {
                if *certain {
                    write!(f, "column `{from}` renamed to `{to}`")
                } else {
                    write!(
                        f,
                        "column `{from}` dropped and `{to}` added with the same type (possibly a rename)"
                    )
                }
            }
            SchemaChange::TableCreated => write!(f, "table created"),
            SchemaChange::TableDropped => write!(f, "table dropped"),
        }
    }
}
