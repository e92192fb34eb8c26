//! MySQL/MariaDB binlog source.

pub mod catalog;
pub mod charset;
pub mod checks;
pub mod config;
pub mod connect;
pub mod ddl;
pub mod decode;
mod lookup;
pub mod mariadb;
#[cfg(test)]
mod mysql8_tests;
pub mod raw;
mod snapshot;
mod stream;
pub mod table;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use catalog::live_schemas;
pub use config::MysqlSourceConfig;
pub use lookup::lookup;
pub use stream::{file_sequence, row_version};

use crate::event::Position;
use crate::offsets::OffsetStore;
use crate::pipeline::queue::QueueSender;
use crate::source::{CheckReport, Checkpoints, Source, SourceError};

pub struct MysqlSource {
    cfg: MysqlSourceConfig,
    mariadb: bool,
    connector: Arc<str>,
    store: Arc<OffsetStore>,
}

impl MysqlSource {
    pub fn new(
        cfg: MysqlSourceConfig,
        mariadb: bool,
        connector: &str,
        store: Arc<OffsetStore>,
    ) -> Self {
        MysqlSource {
            cfg,
            mariadb,
            connector: Arc::from(connector),
            store,
        }
    }

    /// The source kind events name (`mariadb` or `mysql`).
    fn kind(&self) -> &'static str {
        if self.mariadb {
            "mariadb"
        } else {
            "mysql"
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.kind(), self.cfg.address())
    }
}

/// Connects and runs the server checks (`tributary check` and startup).
pub async fn check(cfg: &MysqlSourceConfig, mariadb: bool) -> Result<CheckReport, String> {
    let password = cfg.password()?;
    let mut conn = connect::connect(cfg, password.as_ref())
        .await
        .map_err(|e| e.message().to_string())?;
    let report = checks::check_server(&mut conn, cfg, mariadb)
        .await
        .map_err(|e| e.message().to_string())?;
    let _ = conn.disconnect().await;
    Ok(report)
}

#[async_trait]
impl Source for MysqlSource {
    async fn preflight(&mut self) -> Result<(), SourceError> {
        check(&self.cfg, self.mariadb)
            .await
            .map_err(SourceError::Fatal)?
            .require_ready(&self.cfg.address())
    }

    async fn run(
        &mut self,
        resume: Option<Position>,
        tx: QueueSender,
        _checkpoints: Checkpoints,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let password = self.cfg.password().map_err(SourceError::Fatal)?;
        let mut tx = tx;
        let (merger, snapshots) = crate::snapshot::reader::start(
            snapshot::Chunks {
                cfg: self.cfg.clone(),
                mariadb: self.mariadb,
                kind: self.kind(),
                connector: self.connector.clone(),
                store: Some(self.store.clone()),
                password: password.clone(),
            },
            self.store.clone(),
            self.cfg.snapshot_settings(resume.is_none()),
            snapshot::included_tables(&self.cfg, password.as_ref(), &self.cfg.filter()),
            &mut tx,
            &shutdown,
        )
        .await
        .map_err(SourceError::Fatal)?;
        let streamer = stream::Streamer {
            cfg: &self.cfg,
            mariadb: self.mariadb,
            kind: self.kind(),
            connector: self.connector.clone(),
            store: self.store.clone(),
            filter: self.cfg.filter(),
            password,
        };
        let result = streamer.run(resume, tx, shutdown, merger).await;
        snapshots.stop().await;
        result
    }
}
