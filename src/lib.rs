//! tributary: change-data-capture from MySQL/MariaDB binlogs and PostgreSQL logical
//! replication into log streams and search indexes. See DESIGN.md.

pub mod config;
pub mod document;
pub mod enrich;
pub mod event;
pub mod failure;
pub mod files;
pub mod health;
pub mod http;
pub mod init;
pub mod journal;
pub mod kafka;
pub mod metrics;
pub mod notify;
pub mod offsets;
pub mod pipeline;
pub mod privacy;
pub mod queue;
pub mod registry;
pub mod reindex;
pub mod schema;
pub mod settings;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod temporal;
#[cfg(test)]
pub mod testkit;
pub mod verify;
