//! Startup and `tributary check` checks, then the slot and publication set-up.
//!
//! Everything is checked before anything is created: a server that is not ready gets
//! one message per problem with the statement that fixes it, and no slot or
//! publication is left half-made.

use crate::source::CommonSettings;
use tokio_postgres::Client;

use super::catalog::{included_tables, CatalogTable};
use super::config::PostgresSourceConfig;
use crate::event::format_lsn;
use crate::source::CheckReport;

/// What the set-up will do, decided by the checks.
#[derive(Debug, Default)]
pub struct Plan {
    /// Tables the publication gets when tributary creates it.
    pub create_publication: Option<Vec<CatalogTable>>,
    pub create_slot: bool,
    /// The slot's confirmed position, when it exists.
    pub confirmed_flush: Option<u64>,
    /// The changes after the checkpoint are gone from the server (the slot was dropped
    /// or moved past it); under `when_needed` the run resyncs every table.
    pub lost: bool,
}

/// The slot as the server reports it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<u64>,
    /// WAL the slot keeps the server from removing (bytes from restart_lsn to now).
    pub retained_bytes: Option<i64>,
    /// Decoded but not yet confirmed (bytes from confirmed_flush_lsn to now).
    pub lag_bytes: Option<i64>,
}

pub async fn slot_info(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, \
                    (pg_current_wal_lsn() - restart_lsn)::int8, \
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        active_pid: r.get(2),
        confirmed_flush: r
            .get::<_, Option<String>>(3)
            .and_then(|s| crate::event::parse_lsn(&s)),
        retained_bytes: r.get(4),
        lag_bytes: r.get(5),
    }))
}

/// Checks settings, grants, tables, publication and slot. `checkpoint` is the stored
/// position (None on a first run).
pub async fn check_server(
    client: &Client,
    cfg: &PostgresSourceConfig,
    checkpoint: Option<u64>,
) -> Result<(CheckReport, Plan), tokio_postgres::Error> {
    let mut r = CheckReport::default();
    let mut plan = Plan::default();
    let one = |sql: &'static str| async move {
        client
            .query_one(sql, &[])
            .await
            .map(|row| row.get::<_, String>(0))
    };
    r.info.push(format!(
        "server {} runs PostgreSQL {}",
        cfg.address(),
        one("SHOW server_version").await?
    ));
    if cfg.derived_names {
        r.info.push(format!(
            "slot `{}` and publication `{}`: named after the connector (set [source] slot and publication to choose others)",
            cfg.slot, cfg.publication
        ));
    }
    let wal_level = one("SHOW wal_level").await?;
    if wal_level != "logical" {
        r.errors.push(format!(
            "wal_level is `{wal_level}`, logical replication needs `logical`: run ALTER SYSTEM SET wal_level = logical; as a superuser and restart the server"
        ));
    }
    let role = client
        .query_one(
            "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (replication, superuser): (bool, bool) = (role.get(0), role.get(1));
    if !replication && !superuser {
        r.errors.push(format!(
            "user `{}` lacks the REPLICATION attribute: run ALTER ROLE \"{}\" REPLICATION;",
            cfg.user, cfg.user
        ));
    }

    // Snapshots place each chunk in the stream with a logical message (snapshot.rs).
    let can_mark: bool = client
        .query_one(
            "SELECT has_function_privilege('pg_logical_emit_message(boolean,text,text)', 'EXECUTE')",
            &[],
        )
        .await?
        .get(0);
    if !can_mark {
        let msg = format!(
            "user `{}` may not call pg_logical_emit_message, which snapshots use to mark each chunk in the stream: run GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO \"{}\";",
            cfg.user, cfg.user
        );
        if cfg.snapshot == crate::snapshot::SnapshotMode::Never {
            r.warnings
                .push(format!("{msg} (needed by `tributary snapshot`)"));
        } else {
            r.errors.push(msg);
        }
    }

    // Tables.
    let filter = cfg.filter();
    let tables = included_tables(client, &filter).await?;
    for pattern in &cfg.include {
        let literal = !pattern.contains(['*', '?', '[', '{']);
        if literal && !tables.iter().any(|t| t.qualified() == *pattern) {
            r.errors.push(format!(
                "included table `{pattern}` does not exist in database `{}` (or is excluded); fix [source] include or create the table",
                cfg.database
            ));
        }
    }
    if tables.is_empty() && r.errors.is_empty() {
        r.errors.push(format!(
            "no table in database `{}` matches [source] include {:?}",
            cfg.database, cfg.include
        ));
    }
    let mut capturable = Vec::new();
    for t in &tables {
        if !t.can_select {
            r.errors.push(format!(
                "user `{}` cannot read {}: run GRANT SELECT ON {} TO \"{}\";",
                cfg.user,
                t.qualified(),
                t.quoted(),
                cfg.user
            ));
        }
        if t.capturable() {
            capturable.push(t.clone());
        } else {
            r.warnings.push(format!(
                "table {} has no primary key or replica identity: a publication that includes it makes UPDATE and DELETE on it fail on the server, so tributary leaves it out of the publication it creates. To capture it, add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL;",
                t.qualified(),
                t.quoted()
            ));
        }
    }
    r.info.push(format!(
        "{} table(s) included: {}",
        tables.len(),
        tables
            .iter()
            .map(|t| t.qualified())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let polled = if cfg.catalog_poll_secs > 0 {
        format!(
            "a look at the catalog every {} s (catalog_poll_secs)",
            cfg.catalog_poll_secs
        )
    } else {
        "a look at the catalog when a run starts (catalog_poll_secs = 0)".to_string()
    };
    r.info.push(if super::ddl_trigger::installed(client).await? {
        format!(
            "DDL trigger installed: CREATE, ALTER and DROP TABLE reach the stream at their own position, where the schema guard decides them (column renames are certain); {polled} still backs it up"
        )
    } else {
        format!(
            "no DDL trigger (PostgreSQL does not replicate DDL): tables created, dropped or renamed are found by {polled}, column changes at the table's next row, and a column dropped and one added with the same type is only possibly a rename; `tributary pg-ddl-trigger install` (a superuser) puts DDL into the stream at its position"
        )
    });

    // Publication.
    let publication = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete, pubtruncate \
             FROM pg_publication WHERE pubname = $1",
            &[&cfg.publication],
        )
        .await?;
    match publication {
        Some(p) => {
            let (all, dml, truncate): (bool, bool, bool) = (p.get(0), p.get(1), p.get(2));
            if all {
                r.warnings.push(format!(
                    "publication `{}` is FOR ALL TABLES: UPDATE and DELETE fail on the server's tables without a primary key or replica identity; prefer FOR TABLE with the included tables",
                    cfg.publication
                ));
            }
            if !dml {
                r.errors.push(format!(
                    "publication `{}` does not publish every insert, update and delete: run ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                    cfg.publication, cfg.publication
                ));
            } else if !truncate {
                r.warnings.push(format!(
                    "publication `{}` does not publish TRUNCATE: a truncated table would keep its rows in the sinks",
                    cfg.publication
                ));
            }
            let published: Vec<(String, String)> = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&cfg.publication],
                )
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            let missing: Vec<&CatalogTable> = capturable
                .iter()
                .filter(|t| {
                    !published
                        .iter()
                        .any(|(s, n)| *s == t.schema && *n == t.name)
                })
                .collect();
            if !missing.is_empty() {
                let statement = format!(
                    "ALTER PUBLICATION {} ADD TABLE {};",
                    cfg.publication,
                    missing
                        .iter()
                        .map(|t| t.quoted())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let how = if cfg.alter_publication {
                    "tributary adds each it lets in and snapshots it"
                } else {
                    "with [source] alter_publication = false, each one let in waits for its owner to run"
                };
                r.warnings.push(format!(
                    "publication `{}` lacks included table(s) {}: once streaming, the schema policy's `table_created` decides each ({how}: {statement})",
                    cfg.publication,
                    missing.iter().map(|t| t.qualified()).collect::<Vec<_>>().join(", "),
                ));
            }
        }
        None if !capturable.is_empty() => {
            // Creating a publication for tables needs CREATE on the database and
            // ownership of each table.
            let may: bool = client
                .query_one(
                    "SELECT has_database_privilege(current_database(), 'CREATE') AND \
                     bool_and(pg_has_role(c.relowner, 'USAGE')) \
                     FROM pg_class c WHERE c.oid = ANY($1)",
                    &[&capturable.iter().map(|t| t.oid).collect::<Vec<u32>>()],
                )
                .await?
                .get::<_, Option<bool>>(0)
                .unwrap_or(false);
            let statement = format!(
                "CREATE PUBLICATION {} FOR TABLE {};",
                cfg.publication,
                capturable
                    .iter()
                    .map(|t| t.quoted())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if may || superuser {
                r.info.push(format!(
                    "publication `{}` will be created: {statement}",
                    cfg.publication
                ));
                plan.create_publication = Some(capturable.clone());
            } else {
                r.errors.push(format!(
                    "publication `{}` does not exist and user `{}` cannot create it (that needs CREATE on the database and ownership of the tables): run as the tables' owner: {statement}",
                    cfg.publication, cfg.user
                ));
            }
        }
        None => {}
    }

    // Slot.
    match slot_info(client, &cfg.slot).await? {
        Some(s) => {
            if s.plugin.as_deref() != Some("pgoutput") {
                r.errors.push(format!(
                    "replication slot `{}` exists but uses plugin `{}` (tributary needs pgoutput): choose another [source] slot, or drop it with SELECT pg_drop_replication_slot('{}'); if nothing else uses it",
                    cfg.slot,
                    s.plugin.as_deref().unwrap_or("none (a physical slot)"),
                    cfg.slot
                ));
            } else if s.database.as_deref() != Some(cfg.database.as_str()) {
                r.errors.push(format!(
                    "replication slot `{}` belongs to database `{}`, not `{}`: choose another [source] slot",
                    cfg.slot,
                    s.database.as_deref().unwrap_or("?"),
                    cfg.database
                ));
            }
            if let (Some(cp), Some(cf)) = (checkpoint, s.confirmed_flush) {
                if cf > cp {
                    let what = format!(
                        "replication slot `{}` is confirmed up to {} but tributary's checkpoint is {}: something else consumed or advanced the slot",
                        cfg.slot,
                        format_lsn(cf),
                        format_lsn(cp)
                    );
                    plan.lost = true;
                    match crate::snapshot::position_lost(cfg.snapshot, &what) {
                        Ok(warning) => r.warnings.push(warning),
                        Err(error) => r.errors.push(error),
                    }
                }
            }
            if let Some(retained) = s.retained_bytes {
                let mb = retained / (1 << 20);
                if mb as u64 >= cfg.retained_wal_warn_mb {
                    r.warnings.push(format!(
                        "replication slot `{}` holds {mb} MB of WAL on the server (retained_wal_warn_mb = {}); the server's disk fills while the slot is not consumed",
                        cfg.slot, cfg.retained_wal_warn_mb
                    ));
                }
                r.info.push(format!(
                    "slot `{}`: confirmed {}, retaining {} bytes of WAL",
                    cfg.slot,
                    s.confirmed_flush
                        .map(format_lsn)
                        .unwrap_or_else(|| "-".into()),
                    retained
                ));
            }
            plan.confirmed_flush = s.confirmed_flush;
        }
        None => {
            if let Some(cp) = checkpoint {
                let what = format!(
                    "replication slot `{}` does not exist but tributary has a checkpoint ({}): the slot was dropped",
                    cfg.slot,
                    format_lsn(cp)
                );
                plan.lost = true;
                match crate::snapshot::position_lost(cfg.snapshot, &what) {
                    Ok(warning) => r.warnings.push(warning),
                    Err(error) => r
                        .errors
                        .push(format!("{error} (a new slot is then created)")),
                }
            }
            // A new slot: the first start, or a resync after the old one was dropped.
            if checkpoint.is_none()
                || (plan.lost && cfg.snapshot == crate::snapshot::SnapshotMode::WhenNeeded)
            {
                let free: i64 = client
                    .query_one(
                        "SELECT current_setting('max_replication_slots')::int8 - count(*) FROM pg_replication_slots",
                        &[],
                    )
                    .await?
                    .get(0);
                if free <= 0 {
                    r.errors.push(
                        "every replication slot is taken (max_replication_slots): drop an unused slot or raise max_replication_slots and restart the server".into(),
                    );
                } else {
                    r.info.push(format!(
                        "replication slot `{}` will be created (pgoutput)",
                        cfg.slot
                    ));
                    plan.create_slot = true;
                }
            }
        }
    }
    Ok((r, plan))
}

/// Creates what the checks planned: the publication, then the slot. A slot that cannot
/// be created takes back the publication made just before it.
pub async fn set_up(
    client: &Client,
    cfg: &PostgresSourceConfig,
    plan: &Plan,
) -> Result<(), String> {
    let addr = cfg.address();
    if let Some(tables) = &plan.create_publication {
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            cfg.publication,
            tables
                .iter()
                .map(|t| t.quoted())
                .collect::<Vec<_>>()
                .join(", ")
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| format!("PostgreSQL at {addr}: {sql}: {}", db_message(&e)))?;
        tracing::info!(publication = %cfg.publication, tables = tables.len(), "created publication");
    }
    if plan.create_slot {
        let created = client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&cfg.slot],
            )
            .await;
        match created {
            Ok(row) => {
                let lsn: String = row.get(0);
                tracing::info!(slot = %cfg.slot, at = %lsn, "created replication slot");
            }
            Err(e) => {
                if plan.create_publication.is_some() {
                    let _ = client
                        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", cfg.publication))
                        .await;
                }
                return Err(format!(
                    "PostgreSQL at {addr}: cannot create replication slot `{}`: {}",
                    cfg.slot,
                    db_message(&e)
                ));
            }
        }
    }
    Ok(())
}

pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}
