//! Table schemas rebuilt from the schema history by table and version: what a stream
//! tributary reads back (the quarantine stream, a log stream) needs to turn a record
//! that names only `schema_version` into an event with its columns and key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::event::TableSchema;
use crate::offsets::SchemaRecord;

/// The history of one connector, with each schema built once.
pub struct Schemas {
    connector: Arc<str>,
    kind: &'static str,
    history: BTreeMap<String, Vec<SchemaRecord>>,
    built: HashMap<(String, u32), Arc<TableSchema>>,
}

impl Schemas {
    /// `connector` and `kind` (the source's) go into every schema built.
    pub fn new(
        connector: Arc<str>,
        kind: &'static str,
        history: BTreeMap<String, Vec<SchemaRecord>>,
    ) -> Self {
        Schemas {
            connector,
            kind,
            history,
            built: HashMap::new(),
        }
    }

    /// Version `version` of `db.table`; None when the history does not hold it.
    pub fn get(&mut self, db: &str, table: &str, version: u32) -> Option<Arc<TableSchema>> {
        let name = format!("{db}.{table}");
        if let Some(s) = self.built.get(&(name.clone(), version)) {
            return Some(s.clone());
        }
        let record = self
            .history
            .get(&name)?
            .iter()
            .find(|s| s.version == version)?;
        let schema = Arc::new(TableSchema::new(
            self.connector.clone(),
            self.kind,
            db.to_string(),
            table.to_string(),
            record.columns.clone(),
            record.primary_key.clone(),
            version,
        ));
        self.built.insert((name, version), schema.clone());
        Some(schema)
    }
}
