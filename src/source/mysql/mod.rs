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
pub mod tls;

use crate::source::CommonSettings;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use catalog::live_schemas;
pub use config::MysqlSourceConfig;
pub use stream::{file_sequence, row_version};

use crate::event::{Column, Position};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::queue::QueueSender;
use crate::settings::ConfigError;
use crate::source::{CheckReport, Checkpoints, Lookup, Source, SourceError, SourceKind};

/// Which server a binlog source talks to: they differ in GTIDs, grants and snapshot
/// support, and events name it as the source kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Mariadb,
    Mysql,
}

impl Flavor {
    /// The source kind events and connector files name (`mariadb` or `mysql`).
    pub fn kind(self) -> &'static str {
        match self {
            Flavor::Mariadb => "mariadb",
            Flavor::Mysql => "mysql",
        }
    }

    pub fn is_mariadb(self) -> bool {
        self == Flavor::Mariadb
    }
}

pub struct MysqlSource {
    cfg: MysqlSourceConfig,
    flavor: Flavor,
    connector: Arc<str>,
    store: Arc<OffsetStore>,
    /// The server no longer has the checkpoint's binlog (found by preflight).
    lost: bool,
}

impl MysqlSource {
    pub fn new(
        cfg: MysqlSourceConfig,
        flavor: Flavor,
        connector: &str,
        store: Arc<OffsetStore>,
    ) -> Self {
        MysqlSource {
            cfg,
            flavor,
            connector: Arc::from(connector),
            store,
            lost: false,
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.flavor.kind(), self.cfg.address())
    }
}

/// Connects and runs the server checks (`tributary check` and startup), the
/// checkpoint's binlog file among them; says whether the server lost it.
pub async fn check(
    cfg: &MysqlSourceConfig,
    checkpoint: Option<&Position>,
) -> Result<(CheckReport, bool), Failure> {
    let password = cfg.password().map_err(Failure::Fatal)?;
    let mut conn = connect::connect(cfg, password.as_ref()).await?;
    let mut report = checks::check_server(&mut conn, cfg, cfg.flavor()).await?;
    let lost = checks::checkpoint_file(&mut conn, cfg, checkpoint, &mut report).await?;
    report.encryption(
        connect::cipher(&mut conn).await,
        &cfg.host,
        "set [source] ssl_mode = \"verify_identity\" and ssl_ca, with TLS on the server",
    );
    let _ = conn.disconnect().await;
    Ok((report, lost))
}

#[async_trait]
impl SourceKind for MysqlSourceConfig {
    fn address(&self) -> String {
        MysqlSourceConfig::address(self)
    }

    fn user(&self) -> &str {
        &self.user
    }

    fn validate(&self, path: &std::path::Path, text: &str) -> Result<(), ConfigError> {
        self.validate_section(path, text)
    }

    fn open(&self, connector: &str, store: Arc<OffsetStore>) -> (Box<dyn Source>, String) {
        let s = MysqlSource::new(self.clone(), self.flavor(), connector, store);
        let d = s.describe();
        (Box::new(s), d)
    }

    async fn check(&self, checkpoint: Option<&Position>) -> Result<CheckReport, Failure> {
        Ok(check(self, checkpoint).await?.0)
    }

    async fn live_schemas(&self) -> Result<Vec<(String, Vec<Column>)>, Failure> {
        catalog::live_schemas(self).await
    }

    fn lookup(&self, connector: &str) -> Arc<dyn Lookup> {
        lookup::lookup(self, self.flavor(), connector)
    }

    fn scan(&self, connector: &str) -> Arc<dyn crate::source::scan::TableScan> {
        lookup::scan(self, self.flavor(), connector)
    }
}

#[async_trait]
impl Source for MysqlSource {
    async fn preflight(&mut self) -> Result<(), SourceError> {
        let checkpoint = self
            .store
            .checkpoint()
            .map_err(|e| SourceError::Fatal(e.to_string()))?
            .map(|c| c.position);
        let (report, lost) = check(&self.cfg, checkpoint.as_ref())
            .await
            .map_err(|f| SourceError::Fatal(f.to_string()))?;
        report.require_ready(&self.cfg.address())?;
        self.lost = lost;
        Ok(())
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
        // The server lost the checkpoint's binlog (`when_needed`, preflight): from its
        // current position, every table resynced.
        let resume = if self.lost { None } else { resume };
        let mut cfg = self.cfg.clone();
        if self.lost {
            cfg.start = config::StartFrom::Current;
        }
        let (merger, snapshots) = crate::snapshot::reader::start(
            snapshot::Chunks {
                cfg: self.cfg.clone(),
                flavor: self.flavor,
                connector: self.connector.clone(),
                store: Some(self.store.clone()),
                password: password.clone(),
            },
            self.store.clone(),
            self.cfg.snapshot_settings(resume.is_none(), self.lost),
            snapshot::included_tables(&self.cfg, password.as_ref(), &self.cfg.filter()),
            &mut tx,
            &shutdown,
        )
        .await
        .map_err(SourceError::Fatal)?;
        let streamer = stream::Streamer {
            cfg: &cfg,
            flavor: self.flavor,
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
