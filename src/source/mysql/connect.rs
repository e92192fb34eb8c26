//! Connections to the server, with errors that say what to fix.

use crate::source::CommonSettings;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use super::config::MysqlSourceConfig;
use crate::settings::Secret;

use crate::failure::Failure;

pub async fn connect(cfg: &MysqlSourceConfig, password: Option<&Secret>) -> Result<Conn, Failure> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(cfg.host.clone())
        .tcp_port(cfg.port)
        .user(Some(cfg.user.clone()))
        .pass(password.map(|p| p.expose().to_string()))
        .prefer_socket(false)
        .stmt_cache_size(0);
    let timeout = Duration::from_secs(cfg.connect_timeout_secs);
    match tokio::time::timeout(timeout, Conn::new(opts)).await {
        Err(_) => Err(Failure::Transient(format!(
            "cannot connect to {}: no answer within {}s (connect_timeout_secs); is [source] host/port right and the port reachable?",
            cfg.address(),
            cfg.connect_timeout_secs
        ))),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(cfg, &e)),
    }
}

/// Turns a driver error into an operator-facing message.
pub fn classify(cfg: &MysqlSourceConfig, e: &mysql_async::Error) -> Failure {
    use mysql_async::Error as E;
    let addr = cfg.address();
    match e {
        E::Server(se) => match se.code {
            1045 => Failure::Fatal(format!(
                "access denied for user '{}' at {addr}: check [source] user and the password ({})",
                cfg.user,
                cfg.password_setting().origin()
            )),
            1236 => Failure::Fatal(format!(
                "the server cannot send the binlog from the checkpointed position: {}. \
                 The binlog was probably purged (expire_logs_days / binlog_expire_logs_seconds) while tributary was stopped. \
                 Changes in between are lost to the stream: re-snapshot the tables, and run `tributary offsets reset --connector <file>` to start from the current position",
                se.message
            )),
            1227 | 1142 | 1044 => Failure::Fatal(format!(
                "user '{}' lacks a privilege at {addr}: {} (see `tributary check`)",
                cfg.user, se.message
            )),
            1040 | 1053 | 1152 | 1153 | 1158..=1161 | 1927 | 2013 | 4031 => {
                Failure::Transient(format!("server {addr}: {} (code {})", se.message, se.code))
            }
            _ => Failure::Fatal(format!("server {addr} refused: {} (code {})", se.message, se.code)),
        },
        E::Io(io) => Failure::Transient(format!(
            "cannot reach {addr}: {io}; is the server running and [source] host/port right?"
        )),
        E::Driver(d) => Failure::Transient(format!("connection to {addr}: {d}")),
        other => Failure::Fatal(format!("connection to {addr}: {other}")),
    }
}

/// Runs a query and collects rows, mapping errors.
pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut Conn,
    cfg: &MysqlSourceConfig,
    sql: &str,
) -> Result<Vec<T>, Failure> {
    conn.query(sql).await.map_err(|e| classify(cfg, &e))
}
