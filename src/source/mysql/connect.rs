//! Connections to the server, with errors that say what to fix.

use crate::source::CommonSettings;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use super::config::MysqlSourceConfig;
use super::tls::SslMode;
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
    let tls = cfg.tls();
    let plain = opts.clone();
    let opts = match tls.ssl_opts() {
        Some(ssl) => opts.ssl_opts(ssl),
        None => opts,
    };
    match open(cfg, opts).await {
        Err(e)
            if tls.ssl_mode == SslMode::Preferred
                && matches!(
                    e,
                    mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)
                ) =>
        {
            if cfg.flavor() == super::Flavor::Mysql && !tls.get_server_public_key {
                return Err(Failure::Fatal(format!(
                    "{} offers no TLS, and over plain text MySQL's caching_sha2 authentication fetches the server's RSA key where anyone in between can swap it. Enable TLS on the server, or set [source] get_server_public_key = true to accept that",
                    cfg.address()
                )));
            }
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !crate::source::settings::is_loopback(&cfg.host)
                && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(server = %cfg.address(), "the server offers no TLS: rows and the login travel in plain text (ssl_mode = \"preferred\"; \"required\" refuses this)");
            }
            open(cfg, plain).await.map_err(|e| classify(cfg, &e))
        }
        Err(e) => Err(tls
            .failure(&cfg.address(), &e)
            .unwrap_or_else(|| classify(cfg, &e))),
        Ok(conn) => Ok(conn),
    }
}

/// One connection attempt within `connect_timeout_secs`.
async fn open(cfg: &MysqlSourceConfig, opts: OptsBuilder) -> Result<Conn, mysql_async::Error> {
    let timeout = Duration::from_secs(cfg.connect_timeout_secs);
    match tokio::time::timeout(timeout, Conn::new(opts)).await {
        Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {}s (connect_timeout_secs); is [source] host/port right and the port reachable?",
                    cfg.connect_timeout_secs
                ),
            ),
        ))),
        Ok(r) => r,
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
                 Changes in between are lost to the stream: with [source] snapshot = \"when_needed\" a restart resyncs every table; else re-snapshot the tables, and run `tributary offsets reset --connector <file>` to start from the current position",
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

/// The TLS version and cipher of `conn`'s session (`TLSv1.3 TLS_AES_256_GCM_SHA384`),
/// or None in plain text: what the server says, so a test or an operator can see it.
pub async fn cipher(conn: &mut Conn) -> Option<String> {
    let rows: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        .await
        .ok()?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    Some(format!("{} {}", get("Ssl_version")?, get("Ssl_cipher")?))
}

/// Runs a query and collects rows, mapping errors.
pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut Conn,
    cfg: &MysqlSourceConfig,
    sql: &str,
) -> Result<Vec<T>, Failure> {
    conn.query(sql).await.map_err(|e| classify(cfg, &e))
}
