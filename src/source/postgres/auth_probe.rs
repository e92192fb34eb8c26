//! A password is never sent in clear text over an unencrypted connection (libpq's
//! `require_auth` idea). Neither driver says which authentication the server asks for
//! before it answers, so when a connection with a password would be plain text
//! (`sslmode = "disable"`, or `prefer` and the server declines TLS), the server is asked
//! first on a connection of its own: a startup message with the same user, database
//! and replication mode, the first authentication request read, the connection closed.
//! A request for the cleartext password (pg_hba.conf method `password`) stops here,
//! before anything is sent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::{PostgresSourceConfig, SslMode};
use crate::failure::Failure;

/// Protocol 3.0.
const PROTOCOL: i32 = 196_608;
/// The SSLRequest code.
const SSL_REQUEST: i32 = 80_877_103;
/// AuthenticationCleartextPassword.
const CLEARTEXT: i32 = 3;

/// Refuses when the login would send the password in clear text. `replication`: the
/// replication connection (its pg_hba.conf lines may differ).
pub async fn refuse_cleartext(
    cfg: &PostgresSourceConfig,
    replication: bool,
) -> Result<(), Failure> {
    let plain = match cfg.sslmode {
        SslMode::Disable => true,
        SslMode::Prefer => !offers_tls(cfg).await?,
        _ => false,
    };
    if !plain || first_auth_request(cfg, replication).await? != Some(CLEARTEXT) {
        return Ok(());
    }
    Err(Failure::Fatal(format!(
        "PostgreSQL at {} asks for the password in clear text (pg_hba.conf method `password`) over an unencrypted connection; tributary did not send it. Set [source] sslmode = \"require\" or stronger, or have the server use scram-sha-256 for user {}",
        cfg.address(),
        cfg.user
    )))
}

async fn connect(cfg: &PostgresSourceConfig) -> Result<TcpStream, Failure> {
    let timeout = Duration::from_secs(cfg.connect_timeout_secs.max(1));
    match tokio::time::timeout(timeout, TcpStream::connect((cfg.host.as_str(), cfg.port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Failure::Transient(format!(
            "cannot reach PostgreSQL at {}: {e}",
            cfg.address()
        ))),
        Err(_) => Err(Failure::Transient(format!(
            "cannot reach PostgreSQL at {}: no answer within {}s",
            cfg.address(),
            cfg.connect_timeout_secs
        ))),
    }
}

/// Whether the server answers an SSLRequest with `S`.
async fn offers_tls(cfg: &PostgresSourceConfig) -> Result<bool, Failure> {
    let mut s = connect(cfg).await?;
    let mut msg = Vec::with_capacity(8);
    msg.extend_from_slice(&8i32.to_be_bytes());
    msg.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    let mut answer = [0u8; 1];
    let io = async {
        s.write_all(&msg).await?;
        s.read_exact(&mut answer).await
    };
    Ok(io.await.is_ok() && answer[0] == b'S')
}

/// The code of the server's first authentication request (None: it answered something
/// else, such as an error the real connection will report).
async fn first_auth_request(
    cfg: &PostgresSourceConfig,
    replication: bool,
) -> Result<Option<i32>, Failure> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&PROTOCOL.to_be_bytes());
    let mut param = |k: &str, v: &str| {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    };
    param("user", &cfg.user);
    param("database", &cfg.database);
    if replication {
        param("replication", "database");
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 4);
    msg.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    msg.extend_from_slice(&body);
    let mut s = connect(cfg).await?;
    let mut head = [0u8; 9];
    let io = async {
        s.write_all(&msg).await?;
        s.read_exact(&mut head).await
    };
    if io.await.is_err() || head[0] != b'R' {
        return Ok(None);
    }
    Ok(Some(i32::from_be_bytes([
        head[5], head[6], head[7], head[8],
    ])))
}
