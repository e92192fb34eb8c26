//! TLS to MariaDB/MySQL (rustls), for every connection the source opens: the binlog
//! stream, catalog queries, snapshots and lookups all connect through
//! `connect::connect`, which takes its options from here.
//!
//! `ssl_mode` has the MySQL client's meanings:
//! - `disabled`: plain text.
//! - `preferred` (default): TLS when the server offers it, else plain text with a
//!   warning; the certificate is not checked (as the MySQL client does).
//! - `required`: TLS or no connection; the certificate is not checked unless `ssl_ca`
//!   is set (then as `verify_ca`).
//! - `verify_ca`: the certificate must chain to `ssl_ca` (else to the bundled Mozilla
//!   roots).
//! - `verify_identity`: as `verify_ca`, and it must name `host` (or `tls_server_name`).
//!
//! One gap, in the driver: mysql_async 0.37.1 cannot skip the name check with the
//! rustls it is built with (its test for a name mismatch looks for text rustls no longer
//! prints; blackbeam/mysql_async#404, fixed upstream, not released). So `verify_ca`
//! (and `required` with `ssl_ca`) check the name too, which refuses more, never less;
//! `tls_server_name` names what the certificate says when `host` is an address it does
//! not name. Drop this paragraph and `Verify::Chain`'s note when the driver moves on.
//!
//! `ssl_cert` + `ssl_key` present a client certificate. MySQL 8's caching_sha2
//! authentication fetches the server's RSA key when the connection is not encrypted,
//! where anyone in between can swap it; the driver cannot be given the key instead, so
//! `kind = "mysql"` over plain text needs `get_server_public_key = true` (the MySQL
//! client's name for that risk).

use std::path::{Path, PathBuf};

use mysql_async::{ClientIdentity, SslOpts};
use serde::Deserialize;

use crate::failure::Failure;
use crate::settings::ConfigError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SslMode {
    Disabled,
    #[default]
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// The `[source]` TLS settings (`MysqlSourceConfig::tls`).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub ssl_mode: SslMode,
    /// PEM file of the CA(s) the server's certificate must chain to.
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate (PEM) and its key, for servers that require one.
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    /// MySQL 8 over plain text: accept fetching the server's RSA key unencrypted.
    pub get_server_public_key: bool,
    /// The name the server's certificate must carry, when not `host`.
    pub tls_server_name: Option<String>,
}

impl TlsSettings {
    /// At load time: pairs that belong together, files that exist.
    pub fn validate(&self, path: &Path, text: &str, mysql: bool) -> Result<(), ConfigError> {
        let at = |key: &str, m: String| ConfigError::at_key(path, text, key, m);
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            let key = if self.ssl_cert.is_some() {
                "ssl_cert"
            } else {
                "ssl_key"
            };
            return Err(at(
                key,
                "[source] ssl_cert and ssl_key go together (the client certificate and its key)"
                    .into(),
            ));
        }
        if self.ssl_mode == SslMode::Disabled {
            for (key, set) in [
                ("ssl_ca", self.ssl_ca.is_some()),
                ("ssl_cert", self.ssl_cert.is_some()),
            ] {
                if set {
                    return Err(at(
                        key,
                        format!("[source] {key} is set but ssl_mode = \"disabled\": remove it or choose another ssl_mode"),
                    ));
                }
            }
            if mysql && !self.get_server_public_key {
                return Err(at(
                    "ssl_mode",
                    "[source] ssl_mode = \"disabled\" with kind = \"mysql\": caching_sha2 authentication would fetch the server's RSA key over plain text. Use TLS, or accept that with get_server_public_key = true".into(),
                ));
            }
        }
        for (key, file) in [
            ("ssl_ca", &self.ssl_ca),
            ("ssl_cert", &self.ssl_cert),
            ("ssl_key", &self.ssl_key),
        ] {
            if let Some(f) = file {
                if let Err(e) = std::fs::metadata(f) {
                    return Err(at(
                        key,
                        format!("[source] {key} = \"{}\": {e}", f.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The driver's TLS options; None for plain text.
    pub fn ssl_opts(&self) -> Option<SslOpts> {
        let verify = match self.ssl_mode {
            SslMode::Disabled => return None,
            SslMode::Preferred => Verify::Nothing,
            SslMode::Required if self.ssl_ca.is_none() => Verify::Nothing,
            SslMode::Required | SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyIdentity => Verify::ChainAndName,
        };
        let mut opts = SslOpts::default();
        if let Some(name) = &self.tls_server_name {
            opts = opts.with_danger_tls_hostname_override(Some(name.clone()));
        }
        if let Some(ca) = &self.ssl_ca {
            opts = opts
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
        }
        if let (Some(cert), Some(key)) = (&self.ssl_cert, &self.ssl_key) {
            opts = opts.with_client_identity(Some(ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        Some(match verify {
            Verify::Nothing => opts
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
            // The driver checks the name anyway (see the module docs).
            Verify::Chain => opts.with_danger_skip_domain_validation(true),
            Verify::ChainAndName => opts,
        })
    }

    /// A TLS failure as the operator should read it: the settings to check. None when
    /// `e` is not about TLS.
    pub fn failure(&self, address: &str, e: &mysql_async::Error) -> Option<Failure> {
        use mysql_async::{DriverError, Error as E, IoError};
        let why = match e {
            E::Driver(DriverError::NoClientSslFlagFromServer) => {
                "the server does not offer TLS (start it with ssl_cert/ssl_key, or choose ssl_mode = \"preferred\" or \"disabled\")".to_string()
            }
            E::Io(IoError::Tls(t)) => t.to_string(),
            E::Io(IoError::Io(io)) => {
                let inner = io.get_ref()?;
                let rustls = inner.downcast_ref::<rustls::Error>()?;
                rustls.to_string()
            }
            _ => return None,
        };
        Some(Failure::Fatal(format!(
            "TLS to {address} (ssl_mode = \"{}\"{}): {why}. Check [source] ssl_mode, ssl_ca and host; a certificate must name host, or set tls_server_name to the name it carries",
            self.mode_name(),
            self.ssl_ca
                .as_ref()
                .map(|c| format!(", ssl_ca = \"{}\"", c.display()))
                .unwrap_or_default(),
        )))
    }

    fn mode_name(&self) -> &'static str {
        match self.ssl_mode {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify_ca",
            SslMode::VerifyIdentity => "verify_identity",
        }
    }
}

enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}
