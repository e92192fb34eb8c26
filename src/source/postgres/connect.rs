//! Connections: tokio-postgres for queries (catalog, checks, slot management) and
//! pgwire-replication for the replication stream, both with errors that say what to fix.

use crate::source::CommonSettings;
use std::time::Duration;

use pgwire_replication::{Lsn, PgWireError, ReplicationConfig, TlsConfig};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::config::{PostgresSourceConfig, SslMode};
use crate::failure::Failure;
use crate::settings::Secret;

/// Session settings both connections pin, so values arrive in the forms the value
/// decoder reads (values.rs): ISO dates, UTC timestamps, ISO-8601 intervals, hex bytea,
/// shortest exact floats.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 \
     -c bytea_output=hex -c extra_float_digits=3";

/// Replication messages buffered between the connection task and the source. Each
/// holds one row change (up to a whole TOASTed value), so this bounds memory too.
const REPLICATION_BUFFER: usize = 512;

/// A query connection; its driver task runs until the client is dropped.
pub async fn query_client(
    cfg: &PostgresSourceConfig,
    password: Option<&Secret>,
) -> Result<Client, Failure> {
    let mut pc = tokio_postgres::Config::new();
    pc.host(&cfg.host)
        .port(cfg.port)
        .dbname(&cfg.database)
        .user(&cfg.user)
        .application_name("tributary")
        .options(SESSION_OPTIONS)
        .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs.max(1)));
    if let Some(p) = password {
        super::auth_probe::refuse_cleartext(cfg, false).await?;
        pc.password(p.expose());
    }
    let attempt = async {
        if cfg.sslmode == SslMode::Disable {
            pc.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, conn) = pc.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(conn));
            Ok(client)
        } else {
            pc.ssl_mode(if cfg.sslmode == SslMode::Prefer {
                tokio_postgres::config::SslMode::Prefer
            } else {
                tokio_postgres::config::SslMode::Require
            });
            let tls = super::tls::client_config(cfg).map_err(Setup)?;
            let (client, conn) = pc
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await?;
            tokio::spawn(drive(conn));
            Ok(client)
        }
    };
    let client = attempt.await.map_err(|e: Connecting| match e {
        Connecting::Setup(Setup(m)) => Failure::Fatal(m),
        Connecting::Pg(e) => classify(cfg, &e),
    })?;
    if matches!(cfg.sslmode, SslMode::Disable | SslMode::Prefer)
        && !crate::source::settings::is_loopback(&cfg.host)
        && encryption(&client).await.is_none()
    {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(server = %cfg.address(), sslmode = ?cfg.sslmode, "the connection is not encrypted: rows and the login travel in plain text (sslmode = \"verify-full\" with sslrootcert refuses this)");
        }
    }
    Ok(client)
}

/// The TLS version and cipher of `client`'s session as the server reports it
/// (`TLSv1.3 TLS_AES_256_GCM_SHA384`), or None in plain text.
pub async fn encryption(client: &Client) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await
        .ok()??;
    Some(format!(
        "{} {}",
        row.get::<_, String>(0),
        row.get::<_, String>(1)
    ))
}

struct Setup(String);

/// Why connecting failed, before it is classified.
enum Connecting {
    Setup(Setup),
    Pg(tokio_postgres::Error),
}

impl From<Setup> for Connecting {
    fn from(s: Setup) -> Self {
        Connecting::Setup(s)
    }
}

impl From<tokio_postgres::Error> for Connecting {
    fn from(e: tokio_postgres::Error) -> Self {
        Connecting::Pg(e)
    }
}

async fn drive<C: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: C) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "postgres query connection ended");
    }
}

/// Sorts a query-connection error into "retry" and "tell the operator".
pub fn classify(cfg: &PostgresSourceConfig, e: &tokio_postgres::Error) -> Failure {
    let addr = cfg.address();
    if let Some(tls) = tls_failure(e) {
        // A certificate the settings reject fails the same way on every retry.
        return Failure::Fatal(format!(
            "TLS to {addr} failed: {tls}; check [source] sslmode and sslrootcert"
        ));
    }
    let Some(db) = e.as_db_error() else {
        return Failure::Transient(format!(
            "cannot reach PostgreSQL at {addr}: {e}; is the server running and [source] host/port right?"
        ));
    };
    let code = db.code();
    let msg = db.message();
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        Failure::Fatal(format!(
            "PostgreSQL at {addr} refused user `{}`: {msg}. Check [source] user, the password ({}) and pg_hba.conf",
            cfg.user,
            cfg.password_setting().origin()
        ))
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        Failure::Fatal(format!(
            "PostgreSQL at {addr}: {msg}; check [source] database"
        ))
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        Failure::Fatal(format!(
            "user `{}` lacks a privilege at {addr}: {msg} (see `tributary check`)",
            cfg.user
        ))
    } else if code.code().starts_with("57")
        || code.code().starts_with("08")
        || code.code() == "53300"
    {
        // Shutdown in progress, cannot connect now, connection failures, too many
        // connections: the server may be back in a moment.
        Failure::Transient(format!("PostgreSQL at {addr}: {msg}"))
    } else {
        Failure::Fatal(format!("PostgreSQL at {addr}: {msg} ({})", code.code()))
    }
}

/// The TLS part of a connection error: the rustls error in its chain, or the server
/// declining TLS that sslmode requires.
fn tls_failure(e: &tokio_postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        // tokio-rustls wraps it in an io::Error, whose source() skips it.
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r.to_string());
        }
        cause = c.source();
    }
    let text = e.to_string();
    text.contains("server does not support TLS")
        .then(|| "the server does not accept TLS connections".to_string())
}

/// The replication session: stream from `start`, confirm `confirmed` (the checkpoint)
/// until told otherwise.
pub fn replication_config(
    cfg: &PostgresSourceConfig,
    password: Option<&Secret>,
    start: u64,
    confirmed: u64,
) -> ReplicationConfig {
    let status = Duration::from_secs(cfg.status_interval_secs);
    let mut rc = ReplicationConfig::new(
        cfg.host.clone(),
        cfg.user.clone(),
        password.map(|p| p.expose().to_string()).unwrap_or_default(),
        cfg.database.clone(),
        cfg.slot.clone(),
        cfg.publication.as_str(),
    )
    .with_port(cfg.port)
    .with_start_lsn(Lsn::from_u64(start))
    .with_ack_lsn(Lsn::from_u64(confirmed))
    .with_status_interval(status)
    .with_wakeup_interval(status)
    .with_buffer_size(REPLICATION_BUFFER)
    .with_options(SESSION_OPTIONS)
    .with_tls(TlsConfig {
        mode: match cfg.sslmode {
            SslMode::Disable => pgwire_replication::SslMode::Disable,
            SslMode::Prefer => pgwire_replication::SslMode::Prefer,
            SslMode::Require => pgwire_replication::SslMode::Require,
            SslMode::VerifyCa => pgwire_replication::SslMode::VerifyCa,
            SslMode::VerifyFull => pgwire_replication::SslMode::VerifyFull,
        },
        ca_pem_path: cfg.sslrootcert.clone(),
        client_cert_pem_path: cfg.sslcert.clone(),
        client_key_pem_path: cfg.sslkey.clone(),
        // The replication client refuses verify-full with an IP host unless the name
        // to verify is given; given the IP itself, rustls matches the certificate's IP
        // address entries, which is what libpq's verify-full does.
        sni_hostname: cfg
            .host
            .parse::<std::net::IpAddr>()
            .is_ok()
            .then(|| cfg.host.clone()),
    });
    rc.application_name = Some("tributary".into());
    rc
}

/// Sorts a replication-stream error the same way.
pub fn classify_stream(cfg: &PostgresSourceConfig, e: &PgWireError) -> Failure {
    let addr = cfg.address();
    match e {
        PgWireError::Auth(m) => Failure::Fatal(format!(
            "PostgreSQL at {addr} refused the replication login of `{}`: {m}. Check the password ({}), the REPLICATION attribute and pg_hba.conf",
            cfg.user,
            cfg.password_setting().origin()
        )),
        PgWireError::Tls(m) => Failure::Fatal(format!(
            "TLS to {addr} failed: {m}; check [source] sslmode and sslrootcert"
        )),
        PgWireError::Server(m) if m.contains("does not exist") && m.contains("slot") => {
            Failure::Fatal(format!(
                "PostgreSQL at {addr}: {m}. The slot `{}` was dropped while tributary was stopped: changes since are lost to the stream. With [source] snapshot = \"when_needed\" a restart resyncs every table; else re-snapshot the tables and run `tributary offsets reset --connector <file>`",
                cfg.slot
            ))
        }
        PgWireError::Server(m) if m.contains("is active for PID") => Failure::Transient(format!(
            "PostgreSQL at {addr}: {m} (another session holds slot `{}`; retrying)",
            cfg.slot
        )),
        PgWireError::Server(m)
            if m.contains("shutting down")
                || m.contains("starting up")
                || m.contains("terminating connection")
                || m.contains("57P") =>
        {
            Failure::Transient(format!("PostgreSQL at {addr}: {m}"))
        }
        PgWireError::Server(m) | PgWireError::Protocol(m) => {
            Failure::Fatal(format!("replication stream from {addr}: {m}"))
        }
        PgWireError::MessageTooLarge { .. } => {
            Failure::Fatal(format!("replication stream from {addr}: {e}"))
        }
        other => Failure::Transient(format!(
            "replication connection to {addr}: {other}; is the server running?"
        )),
    }
}
