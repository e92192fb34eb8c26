//! Lookups by key for the `lookup` enricher: the snapshot's table descriptions and
//! text decoding (source::lookup).

use crate::source::CommonSettings;
use std::sync::Arc;

use async_trait::async_trait;

use super::config::PostgresSourceConfig;
use super::snapshot::{Chunks, Conns, PgTable};
use crate::event::{Row, Value};
use crate::snapshot::reader::Described;
use crate::source::lookup::{KeyReader, Keyed};
use crate::source::Lookup;

#[async_trait]
impl KeyReader for Chunks {
    async fn rows(
        &self,
        conns: &mut Conns,
        t: &Described<PgTable>,
        key: usize,
        keys: &[Value],
    ) -> Result<Vec<Row>, crate::failure::Failure> {
        self.rows_by_key(conns, t, key, keys).await
    }
}

/// The source's row reader: by key (lookups) and by chunk (verify).
pub fn keyed(cfg: &PostgresSourceConfig, connector: &str) -> Arc<Keyed<Chunks>> {
    Arc::new(Keyed::new(Chunks {
        cfg: cfg.clone(),
        connector: Arc::from(connector),
        store: None,
        password: cfg.password().ok().flatten(),
    }))
}

pub fn lookup(cfg: &PostgresSourceConfig, connector: &str) -> Arc<dyn Lookup> {
    keyed(cfg, connector)
}

pub fn scan(
    cfg: &PostgresSourceConfig,
    connector: &str,
) -> Arc<dyn crate::source::scan::TableScan> {
    keyed(cfg, connector)
}
