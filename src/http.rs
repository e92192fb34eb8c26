//! The daemon's HTTP endpoints under `[http] listen` (loopback by default):
//!
//! - `/metrics`: the Prometheus text format (metrics.rs names them);
//! - `/health`: 200 while the process runs;
//! - `/ready`: 200 while the source streams, no snapshot runs, no sink retries, nothing
//!   is halted and the changes wait less than `ready_max_lag_secs` for a checkpoint;
//!   503 otherwise, with the reason as JSON (health.rs);
//! - `/status`: the JSON of `tributary status`.
//!
//! `[metrics] listen`, where the Prometheus endpoint lived before, still works and
//! serves all four.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::config::ConnectorConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on (off when absent; a loopback address such as
    /// 127.0.0.1:9187 keeps it on this host).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Serving other hosts on purpose: silences the warning a non-loopback `listen`
    /// gives.
    #[serde(default)]
    pub allow_remote: bool,
    /// `/ready` answers 503 once a change waits longer than this for a checkpoint.
    #[serde(default = "default_ready_max_lag_secs")]
    pub ready_max_lag_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            allow_remote: false,
            ready_max_lag_secs: default_ready_max_lag_secs(),
        }
    }
}

fn default_ready_max_lag_secs() -> u64 {
    60
}

impl HttpConfig {
    /// `[http]`, or the endpoint `[metrics]` configures (the older spelling). Err when
    /// both name an address.
    pub fn of(cfg: &ConnectorConfig) -> Result<HttpConfig, String> {
        match (cfg.http.listen, cfg.metrics.listen) {
            (Some(a), Some(b)) => Err(format!(
                "[http] listen = \"{a}\" and [metrics] listen = \"{b}\": the endpoints moved to [http]; remove [metrics]"
            )),
            (None, Some(b)) => Ok(HttpConfig {
                listen: Some(b),
                allow_remote: cfg.metrics.allow_remote,
                ..cfg.http.clone()
            }),
            _ => Ok(cfg.http.clone()),
        }
    }

    /// The warning a `listen` address other hosts can reach deserves, unless
    /// `allow_remote` says it is meant.
    pub fn remote_warning(&self) -> Option<String> {
        let addr = self.listen?;
        (!addr.ip().is_loopback() && !self.allow_remote).then(|| {
            format!(
                "[http] listen = \"{addr}\" serves table names, change rates and status to other hosts, without authentication: listen on 127.0.0.1 (behind a proxy that authenticates), or set allow_remote = true if that is meant"
            )
        })
    }
}

struct Endpoints {
    metrics: PrometheusHandle,
    connector: ConnectorConfig,
    max_lag: Duration,
}

/// Installs the metrics recorder and serves the endpoints, if `listen` is set. Call
/// inside the tokio runtime; the server runs until the process ends.
pub async fn serve(cfg: &ConnectorConfig) -> Result<(), String> {
    let http = HttpConfig::of(cfg)?;
    let Some(addr) = http.listen else {
        return Ok(());
    };
    if let Some(w) = http.remote_warning() {
        tracing::warn!("{w}");
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("[http] listen = \"{addr}\": {e} (is another process using the port?)")
    })?;
    let metrics = crate::metrics::recorder()?;
    let upkeep = metrics.clone();
    let max_lag = Duration::from_secs(http.ready_max_lag_secs);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
            crate::metrics::readiness(
                crate::health::lag(),
                crate::health::readiness(max_lag).is_ok(),
            );
        }
    });
    let endpoints = Arc::new(Endpoints {
        metrics,
        connector: cfg.clone(),
        max_lag,
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let endpoints = endpoints.clone();
                    async move { Ok::<_, Infallible>(answer(&endpoints, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    tracing::info!(%addr, "serving /metrics, /health, /ready and /status");
    Ok(())
}

async fn answer(
    endpoints: &Endpoints,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            endpoints.metrics.render(),
        ),
        "/health" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/ready" => match crate::health::readiness(endpoints.max_lag) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(v) => json(StatusCode::SERVICE_UNAVAILABLE, &v),
        },
        "/status" => match crate::status::report(&endpoints.connector).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": e}),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not found: /metrics, /health, /ready, /status"}),
        ),
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_other_hosts_reach_is_warned_about_unless_allowed() {
        let cfg = |listen: &str, allow_remote| HttpConfig {
            listen: Some(listen.parse().unwrap()),
            allow_remote,
            ..HttpConfig::default()
        };
        assert_eq!(cfg("127.0.0.1:9187", false).remote_warning(), None);
        assert_eq!(cfg("[::1]:9187", false).remote_warning(), None);
        let w = cfg("0.0.0.0:9187", false).remote_warning().unwrap();
        assert!(
            w.contains("allow_remote") && w.contains("0.0.0.0:9187"),
            "{w}"
        );
        assert!(cfg("10.0.0.5:9187", false).remote_warning().is_some());
        assert_eq!(cfg("0.0.0.0:9187", true).remote_warning(), None);
        assert_eq!(HttpConfig::default().remote_warning(), None);
    }
}
