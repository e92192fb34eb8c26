//! Lookups by key for the `lookup` enricher: the snapshot's table descriptions and
//! decoding (source::lookup).

use crate::source::CommonSettings;
use std::sync::Arc;

use async_trait::async_trait;
use mysql_async::Conn;

use super::config::MysqlSourceConfig;
use super::snapshot::{Chunks, SnapTable};
use crate::event::{Row, Value};
use crate::snapshot::reader::Described;
use crate::source::lookup::{KeyReader, Keyed};
use crate::source::Lookup;

#[async_trait]
impl KeyReader for Chunks {
    async fn rows(
        &self,
        conn: &mut Conn,
        t: &Described<SnapTable>,
        key: usize,
        keys: &[Value],
    ) -> Result<Vec<Row>, crate::failure::Failure> {
        self.rows_by_key(conn, t, key, keys).await
    }
}

/// The source's row reader: by key (lookups) and by chunk (verify).
pub fn keyed(
    cfg: &MysqlSourceConfig,
    flavor: super::Flavor,
    connector: &str,
) -> Arc<Keyed<Chunks>> {
    Arc::new(Keyed::new(Chunks {
        cfg: cfg.clone(),
        flavor,
        connector: Arc::from(connector),
        store: None,
        // Read when connecting (a bad password setting fails the lookup with its
        // message then).
        password: cfg.password().ok().flatten(),
    }))
}

pub fn lookup(cfg: &MysqlSourceConfig, flavor: super::Flavor, connector: &str) -> Arc<dyn Lookup> {
    keyed(cfg, flavor, connector)
}

pub fn scan(
    cfg: &MysqlSourceConfig,
    flavor: super::Flavor,
    connector: &str,
) -> Arc<dyn crate::source::scan::TableScan> {
    keyed(cfg, flavor, connector)
}
