//! Startup and `tributary check` checks: server settings and grants, each problem with
//! the exact statement that fixes it.

use crate::source::CommonSettings;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::catalog::quote_ident;
use super::config::MysqlSourceConfig;
use super::connect::classify;
use crate::failure::Failure;

pub use crate::source::CheckReport;

fn setting_fix(var: &str, want: &str) -> String {
    format!(
        "run SET GLOBAL {var} = '{want}' and put {var} = {want} under [mysqld] in the server's config so it survives a restart"
    )
}

/// Checks server settings, privileges and included tables.
pub async fn check_server(
    conn: &mut Conn,
    cfg: &MysqlSourceConfig,
    flavor: super::Flavor,
) -> Result<CheckReport, Failure> {
    let mut r = CheckReport::default();
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| classify(cfg, &e))?;
    let version = version.unwrap_or_default();
    let is_mariadb = version.to_ascii_lowercase().contains("mariadb");
    r.info
        .push(format!("server {} runs {version}", cfg.address()));
    if flavor.is_mariadb() != is_mariadb {
        r.warnings.push(format!(
            "[source] kind is \"{}\" but the server reports {version}; set kind = \"{}\"",
            flavor.kind(),
            if is_mariadb { "mariadb" } else { "mysql" }
        ));
    }

    let vars: Vec<(String, String)> = conn
        .query(
            "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES \
             WHERE VARIABLE_NAME IN ('LOG_BIN','BINLOG_FORMAT','BINLOG_ROW_IMAGE','BINLOG_ROW_METADATA',\
             'SERVER_ID','LOG_BIN_COMPRESS','BINLOG_ROW_VALUE_OPTIONS','GTID_MODE','BINLOG_CHECKSUM')",
        )
        .await
        .unwrap_or_default();
    let vars = if vars.is_empty() {
        // MySQL 8 moved global variables to performance_schema; ask directly.
        let mut v = Vec::new();
        for name in [
            "log_bin",
            "binlog_format",
            "binlog_row_image",
            "binlog_row_metadata",
            "server_id",
            "binlog_row_value_options",
        ] {
            let val: Option<Option<String>> = conn
                .query_first(format!("SELECT CAST(@@GLOBAL.{name} AS CHAR)"))
                .await
                .unwrap_or(None);
            if let Some(Some(val)) = val {
                v.push((name.to_uppercase(), val));
            }
        }
        v
    } else {
        vars
    };
    let var = |name: &str| {
        vars.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_uppercase())
    };
    match var("LOG_BIN").as_deref() {
        Some("ON") | Some("1") => {}
        other => r.errors.push(format!(
            "the binary log is off (log_bin = {}): start the server with log_bin (e.g. log_bin = mysql-bin and server_id = 1 under [mysqld]); it cannot be turned on at run time",
            other.unwrap_or("unknown")
        )),
    }
    for (name, want) in [
        ("BINLOG_FORMAT", "ROW"),
        ("BINLOG_ROW_IMAGE", "FULL"),
        ("BINLOG_ROW_METADATA", "FULL"),
    ] {
        match var(name) {
            Some(v) if v == want => {}
            Some(v) => r.errors.push(format!(
                "{} is {v}; tributary needs {want}: {}",
                name.to_lowercase(),
                setting_fix(&name.to_lowercase(), want)
            )),
            None => r.errors.push(format!(
                "the server has no {} setting (MariaDB 10.5+ or MySQL 8.0.1+ is needed for column names in the binlog)",
                name.to_lowercase()
            )),
        }
    }
    if var("LOG_BIN_COMPRESS").as_deref() == Some("ON") {
        r.errors.push(format!(
            "log_bin_compress is ON: compressed row events cannot be decoded; {}",
            setting_fix("log_bin_compress", "OFF")
        ));
    }
    if let Some(v) = var("BINLOG_ROW_VALUE_OPTIONS") {
        if v.contains("PARTIAL_JSON") {
            r.errors.push(format!(
                "binlog_row_value_options is {v}: partial JSON updates leave out the full document; {}",
                setting_fix("binlog_row_value_options", "")
            ));
        }
    }
    if let Some(id) = var("SERVER_ID") {
        if id == cfg.server_id.to_string() {
            r.errors.push(format!(
                "[source] server_id = {} is the server's own server_id: pick a number no server or replica uses",
                cfg.server_id
            ));
        }
    }

    // Privileges: try what the daemon does, so the answer is exact.
    // MariaDB's default install grants PUBLIC everything on the `test` databases; that is
    // not this user's doing, so it is left out of the excess-privilege warning.
    let grants: Vec<String> = conn.query("SHOW GRANTS").await.unwrap_or_default();
    let grants: Vec<String> = grants
        .into_iter()
        .filter(|g| !g.trim_end().ends_with("TO PUBLIC"))
        .collect();
    let all = grants.join("\n").to_ascii_uppercase();
    let account: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap_or(None);
    let account = account
        .map(|a| match a.split_once('@') {
            Some((u, h)) => format!("'{u}'@'{h}'"),
            None => a,
        })
        .unwrap_or_else(|| format!("'{}'", cfg.user));
    let global_has = |p: &str| {
        grants.iter().any(|g| {
            let g = g.to_ascii_uppercase();
            g.contains(" ON *.* ") && (g.contains(p) || g.contains("ALL PRIVILEGES"))
        })
    };
    if !global_has("REPLICATION SLAVE") {
        r.errors.push(format!(
            "{account} lacks REPLICATION SLAVE, needed to read the binlog: GRANT REPLICATION SLAVE ON *.* TO {account};"
        ));
    }
    let monitor = if flavor.is_mariadb() {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    };
    if conn.query_drop("SHOW BINARY LOGS").await.is_err() {
        r.errors.push(format!(
            "{account} cannot run SHOW BINARY LOGS, needed to find positions: GRANT {monitor} ON *.* TO {account};"
        ));
    }
    for p in [
        "SUPER",
        "ALL PRIVILEGES",
        "INSERT",
        "UPDATE",
        "DELETE",
        "DROP",
        "CREATE",
        "ALTER",
    ] {
        if all.contains(p) {
            r.warnings.push(format!(
                "{account} holds more privilege than tributary needs ({p}); it only needs SELECT, REPLICATION SLAVE and {monitor}"
            ));
            break;
        }
    }

    // SELECT on every included table that exists.
    let included = super::catalog::included_tables(conn, &cfg.filter())
        .await
        .map_err(|e| classify(cfg, &e))?;
    if included.is_empty() {
        r.warnings.push(format!(
            "no existing table visible to {account} matches [source] include {:?}: tables created later are captured; \
             a user sees only tables it has privileges on (GRANT SELECT ON db.* TO {account};)",
            cfg.include
        ));
    }
    for (db, t) in &included {
        let sql = format!(
            "SELECT * FROM {}.{} LIMIT 0",
            quote_ident(db),
            quote_ident(t)
        );
        if let Err(e) = conn.query_drop(sql).await {
            r.errors.push(format!("{account} cannot SELECT from {db}.{t}: {e}; GRANT SELECT ON `{db}`.* TO {account};"));
        }
    }
    r.info
        .push(format!("{} included table(s) visible", included.len()));
    Ok(r)
}

/// Whether the server still has the checkpoint's binlog file (`SHOW BINARY LOGS`): a
/// purge while tributary was stopped loses the changes in between. Reported by
/// `snapshot::position_lost` (an error, or under `when_needed` a warning and a resync);
/// returns true when lost.
pub async fn checkpoint_file(
    conn: &mut Conn,
    cfg: &MysqlSourceConfig,
    checkpoint: Option<&crate::event::Position>,
    r: &mut CheckReport,
) -> Result<bool, Failure> {
    let Some(crate::event::Position::Binlog { file, .. }) = checkpoint else {
        return Ok(false);
    };
    let files: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| classify(cfg, &e))?;
    if files
        .iter()
        .any(|row| row.get::<String, _>(0).as_deref() == Some(&**file))
    {
        return Ok(false);
    }
    let what = format!(
        "the server no longer has binlog file {file} of tributary's checkpoint (purged: expire_logs_days / binlog_expire_logs_seconds)"
    );
    match crate::snapshot::position_lost(cfg.snapshot, &what) {
        Ok(warning) => r.warnings.push(warning),
        Err(error) => r.errors.push(error),
    }
    Ok(true)
}
