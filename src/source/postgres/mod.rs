//! PostgreSQL source: logical replication with pgoutput.
//!
//! Rooms: `config` (the `[source]` section), `connect` (query and replication
//! connections, error sorting), `tls`, `checks` (server checks, slot and publication
//! set-up), `catalog` (tables, keys, type resolution), `pgoutput` (the message
//! decoder), `values` (text values -> event values), `stream` (the session loop),
//! `snapshot` (chunks read in MVCC snapshots, placed in the stream by markers),
//! `tables` (tables created, dropped and renamed while streaming, from the catalog),
//! `ddl_trigger` (the optional event trigger that puts DDL into the stream).

mod auth_probe;
pub mod catalog;
pub mod checks;
pub mod config;
pub mod connect;
pub mod ddl_trigger;
mod lookup;
pub mod pgoutput;
mod snapshot;
mod stream;
mod tables;
mod tls;
pub mod values;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use config::PostgresSourceConfig;

use crate::event::{Column, Position};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::queue::QueueSender;
use crate::settings::ConfigError;
use crate::source::{
    CheckReport, Checkpoints, CommonSettings, Lookup, Source, SourceError, SourceKind,
};

pub struct PostgresSource {
    cfg: PostgresSourceConfig,
    connector: Arc<str>,
    store: Arc<OffsetStore>,
    /// The server lost the changes after the checkpoint (found by preflight).
    lost: bool,
}

impl PostgresSource {
    pub fn new(cfg: PostgresSourceConfig, connector: &str, store: Arc<OffsetStore>) -> Self {
        PostgresSource {
            cfg,
            connector: Arc::from(connector),
            store,
            lost: false,
        }
    }

    pub fn describe(&self) -> String {
        format!("postgres {} slot {}", self.cfg.address(), self.cfg.slot)
    }
}

/// Connects and runs every check (for `tributary check` and startup); returns the
/// report, the plan, and the connection for the set-up.
pub async fn check(
    cfg: &PostgresSourceConfig,
    checkpoint: Option<&Position>,
) -> Result<(CheckReport, checks::Plan, tokio_postgres::Client), Failure> {
    let password = cfg.password().map_err(Failure::Fatal)?;
    let client = connect::query_client(cfg, password.as_ref()).await?;
    let checkpoint = match checkpoint {
        Some(Position::Wal { lsn }) => Some(*lsn),
        _ => None,
    };
    let (mut report, plan) = checks::check_server(&client, cfg, checkpoint)
        .await
        .map_err(|e| connect::classify(cfg, &e))?;
    report.encryption(
        connect::encryption(&client).await,
        &cfg.host,
        "set [source] sslmode = \"verify-full\" and sslrootcert",
    );
    Ok((report, plan, client))
}

/// The included tables' columns as the server has them now (for `policy diff`).
pub async fn live_schemas(
    cfg: &PostgresSourceConfig,
) -> Result<Vec<(String, Vec<Column>)>, Failure> {
    let password = cfg.password().map_err(Failure::Fatal)?;
    let client = connect::query_client(cfg, password.as_ref()).await?;
    let fail = |e: tokio_postgres::Error| connect::classify(cfg, &e);
    let mut out = Vec::new();
    for t in catalog::included_tables(&client, &cfg.filter())
        .await
        .map_err(fail)?
    {
        let (columns, _) = catalog::live_columns(&client, t.oid).await.map_err(fail)?;
        out.push((t.qualified(), columns));
    }
    Ok(out)
}

#[async_trait]
impl SourceKind for PostgresSourceConfig {
    fn address(&self) -> String {
        PostgresSourceConfig::address(self)
    }

    fn fill_defaults(&mut self, connector: &str) {
        for name in [&mut self.slot, &mut self.publication] {
            if name.is_empty() {
                *name = config::default_name(connector);
                self.derived_names = true;
            }
        }
    }

    fn user(&self) -> &str {
        &self.user
    }

    fn validate(&self, path: &std::path::Path, text: &str) -> Result<(), ConfigError> {
        self.validate_section(path, text)
    }

    fn open(&self, connector: &str, store: Arc<OffsetStore>) -> (Box<dyn Source>, String) {
        let s = PostgresSource::new(self.clone(), connector, store);
        let d = s.describe();
        (Box::new(s), d)
    }

    async fn check(&self, checkpoint: Option<&Position>) -> Result<CheckReport, Failure> {
        check(self, checkpoint).await.map(|(report, _, _)| report)
    }

    async fn live_schemas(&self) -> Result<Vec<(String, Vec<Column>)>, Failure> {
        live_schemas(self).await
    }

    fn lookup(&self, connector: &str) -> Arc<dyn Lookup> {
        lookup::lookup(self, connector)
    }

    fn scan(&self, connector: &str) -> Arc<dyn crate::source::scan::TableScan> {
        lookup::scan(self, connector)
    }
}

/// The tables the initial snapshot reads (`schema.table`): the included ones the
/// publication covers, so the stream carries their changes too (the set-up leaves out
/// tables whose updates the server could not publish).
async fn included_names(
    cfg: &PostgresSourceConfig,
    password: Option<&crate::settings::Secret>,
) -> Result<Vec<String>, String> {
    let client = connect::query_client(cfg, password)
        .await
        .map_err(|e| e.message().to_string())?;
    let fail = |e: tokio_postgres::Error| {
        format!("listing tables: {}", connect::classify(cfg, &e).message())
    };
    let published: std::collections::HashSet<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&cfg.publication],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(catalog::included_tables(&client, &cfg.filter())
        .await
        .map_err(fail)?
        .into_iter()
        .filter(|t| published.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| t.qualified())
        .collect())
}

#[async_trait]
impl Source for PostgresSource {
    async fn preflight(&mut self) -> Result<(), SourceError> {
        let checkpoint = self
            .store
            .checkpoint()
            .map_err(|e| SourceError::Fatal(e.to_string()))?
            .map(|c| c.position);
        let (report, plan, client) = check(&self.cfg, checkpoint.as_ref())
            .await
            .map_err(|f| SourceError::Fatal(f.to_string()))?;
        report.require_ready(&self.cfg.address())?;
        self.lost = plan.lost;
        checks::set_up(&client, &self.cfg, &plan)
            .await
            .map_err(SourceError::Fatal)
    }

    async fn run(
        &mut self,
        resume: Option<Position>,
        tx: QueueSender,
        checkpoints: Checkpoints,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let password = self.cfg.password().map_err(SourceError::Fatal)?;
        let mut tx = tx;
        // The server lost the changes after the checkpoint (`when_needed`, preflight):
        // from where the slot stands, every table resynced.
        let resume = if self.lost { None } else { resume };
        let (merger, snapshots) = crate::snapshot::reader::start(
            snapshot::Chunks {
                cfg: self.cfg.clone(),
                connector: self.connector.clone(),
                store: Some(self.store.clone()),
                password: password.clone(),
            },
            self.store.clone(),
            self.cfg.snapshot_settings(resume.is_none(), self.lost),
            included_names(&self.cfg, password.as_ref()),
            &mut tx,
            &shutdown,
        )
        .await
        .map_err(SourceError::Fatal)?;
        let streamer = stream::Streamer {
            cfg: &self.cfg,
            connector: self.connector.clone(),
            store: self.store.clone(),
            filter: self.cfg.filter(),
            password,
        };
        let result = streamer
            .run(resume, tx, checkpoints, shutdown, merger)
            .await;
        snapshots.stop().await;
        result
    }
}
