//! The replication stream: start at the resume point, decode pgoutput into change
//! events, mark transaction boundaries, confirm checkpoints to the slot, reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catalog::{event_key, primary_key, type_names, TypeCache};
use super::config::PostgresSourceConfig;
use super::connect::{classify, classify_stream, query_client, replication_config};
use super::ddl_trigger::{self, DdlMessage};
use super::pgoutput::{decode, Datum, Message, OldTuple, Relation, Tuple};
use super::snapshot::MARKER_PREFIX;
use super::tables::Watch;
use super::values::{decode_text, PgType};
use crate::event::{
    format_lsn, now_ms, ChangeEvent, Column, Op, Position, Row, SchemaChange, SourceMessage,
    Stated, TableChange, TableSchema, Value,
};
use crate::failure::Failure;
use crate::offsets::OffsetStore;
use crate::queue::QueueSender;
use crate::settings::Secret;
use crate::snapshot::merge::Merger;
use crate::source::filter::TableFilter;
use crate::source::session::{next_or_flush_or, Next, Reconnect, Stop};
use crate::source::{Checkpoints, SourceError};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How long a session start waits for a slot still held by a session that just died
/// (the server notices a killed client within moments; wal_sender_timeout at worst).
const SLOT_BUSY_WAIT: Duration = Duration::from_secs(90);

/// A relation as events need it, rebuilt from each Relation message.
struct Rel {
    schema: Arc<TableSchema>,
    types: Vec<PgType>,
    /// Columns of the replica identity key, as the Relation message flags them.
    identity: Vec<bool>,
    included: bool,
}

/// Everything that survives a reconnect.
struct StreamState {
    /// End of the last transaction handed to the pipeline: where a reconnect resumes.
    boundary: u64,
    in_txn: bool,
    xid: Option<Arc<str>>,
    commit_ts_ms: u64,
    relations: HashMap<u32, Rel>,
    types: TypeCache,
    /// `table.column` of unknown types already warned about.
    warned: HashSet<String>,
    /// When an idle position was last handed over (see `keepalive`).
    last_idle_commit: Instant,
    /// The version of the open transaction's changes: its commit LSN (DESIGN.md).
    commit_lsn: u64,
    /// A snapshot chunk's marker in the open transaction: the chunk is emitted at its
    /// commit (snapshot.rs).
    marker: Option<String>,
    /// Merges snapshot chunks into the stream (snapshot::merge).
    merger: Merger,
    /// The snapshot readers may still send requests.
    snapshot_requests_open: bool,
    /// Included tables created, dropped and renamed (tables.rs).
    watch: Watch,
}

impl StreamState {
    /// Hands a change on, through the snapshot merge (see `Merger::pass`).
    async fn send_change(&mut self, tx: &mut QueueSender, e: ChangeEvent) -> Result<(), Stop> {
        self.merger.pass(tx, e).await.map_err(|_| Stop::Closed)
    }
}

pub(super) struct Streamer<'a> {
    pub cfg: &'a PostgresSourceConfig,
    pub connector: Arc<str>,
    pub store: Arc<OffsetStore>,
    pub filter: TableFilter,
    pub password: Option<Secret>,
}

impl Streamer<'_> {
    pub async fn run(
        &self,
        resume: Option<Position>,
        mut tx: QueueSender,
        mut checkpoints: Checkpoints,
        shutdown: CancellationToken,
        merger: Merger,
    ) -> Result<(), SourceError> {
        let resume_lsn = match resume {
            Some(Position::Wal { lsn }) => lsn,
            Some(other) => {
                return Err(SourceError::Fatal(format!(
                    "the stored checkpoint ({other}) is not a PostgreSQL position: this state dir belongs to another source; use another [state] dir or run `tributary offsets reset`"
                )))
            }
            // No checkpoint: the slot's confirmed position (0 asks the server for it).
            None => 0,
        };
        let mut st = StreamState {
            boundary: resume_lsn,
            in_txn: false,
            xid: None,
            commit_ts_ms: 0,
            relations: HashMap::new(),
            types: TypeCache::default(),
            warned: HashSet::new(),
            last_idle_commit: Instant::now(),
            commit_lsn: 0,
            marker: None,
            merger,
            snapshot_requests_open: true,
            watch: Watch::new(self.cfg.catalog_poll_secs),
        };
        let mut reconnect = Reconnect::new(
            "replication connection",
            self.cfg.max_reconnect_backoff_secs,
        );
        loop {
            let mut progressed = false;
            let stop = self
                .stream_once(
                    &mut st,
                    &mut tx,
                    &mut checkpoints,
                    &shutdown,
                    &mut progressed,
                    &mut reconnect.connected_once,
                )
                .await;
            if let Some(done) = reconnect
                .after(stop, &mut st.in_txn, progressed, &mut tx, &shutdown)
                .await
            {
                return done;
            }
        }
    }

    async fn stream_once(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        checkpoints: &mut Checkpoints,
        shutdown: &CancellationToken,
        progressed: &mut bool,
        connected_once: &mut bool,
    ) -> Stop {
        let cfg = self.cfg;
        let catalog = match query_client(cfg, self.password.as_ref()).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let confirmed = confirmed_lsn(&checkpoints.borrow_and_update());
        let mut client = match self.start(st.boundary, confirmed, shutdown).await {
            Ok(c) => c,
            Err(stop) => return stop,
        };
        tracing::info!(
            slot = %cfg.slot,
            from = %format_lsn(st.boundary),
            confirmed = %format_lsn(confirmed),
            "streaming logical replication"
        );
        crate::health::source(crate::health::Source::Streaming);
        *connected_once = true;
        // Relations are described again on every new session.
        st.relations.clear();
        // The server sends a keepalive at least every wal_sender_timeout / 2.
        let silence = Duration::from_secs(cfg.status_interval_secs.max(30) * 4);
        loop {
            let input = {
                // The catalog is looked at between transactions.
                let look = match st.watch.due_at().filter(|_| !st.in_txn) {
                    Some(at) => tokio::time::Instant::from_std(at),
                    None => tokio::time::Instant::now() + Duration::from_secs(86_400 * 365),
                };
                let next = async {
                    tokio::select! {
                        biased;
                        changed = checkpoints.changed() => Input::Checkpoint(changed.is_ok()),
                        _ = tokio::time::sleep_until(look) => Input::Look,
                        ev = client.recv() => Input::Event(ev),
                    }
                };
                tokio::pin!(next);
                // Snapshot requests are taken between events (never while a batch is
                // being handed over).
                let open = st.snapshot_requests_open;
                let merger = &mut st.merger;
                let side = async move {
                    if open {
                        merger.recv().await
                    } else {
                        std::future::pending().await
                    }
                };
                next_or_flush_or(tx, shutdown, silence, next, side).await
            };
            let input = match input {
                Next::Item(i) => i,
                Next::Side(Some(request)) => {
                    st.merger.take(request);
                    // A resync starts at once between transactions (else at the next
                    // commit or keepalive).
                    if !st.in_txn && st.boundary > 0 && st.merger.has_resyncs() {
                        let at = Position::Wal { lsn: st.boundary };
                        if st.merger.at_boundary(&at, tx).await.is_err() {
                            return Stop::Closed;
                        }
                    }
                    continue;
                }
                Next::Side(None) => {
                    st.snapshot_requests_open = false;
                    continue;
                }
                Next::Shutdown => return Stop::Shutdown,
                Next::Closed => return Stop::Closed,
                Next::Silent => {
                    return Stop::transient(format!(
                        "nothing from {} for {}s, not even a keepalive",
                        cfg.address(),
                        silence.as_secs()
                    ))
                }
            };
            let event = match input {
                Input::Checkpoint(true) => {
                    // Stored by the pipeline after every sink acknowledged it: now the
                    // server may release the WAL before it.
                    let lsn = confirmed_lsn(&checkpoints.borrow_and_update());
                    client.update_applied_lsn(Lsn::from_u64(lsn));
                    continue;
                }
                Input::Checkpoint(false) => return Stop::Closed,
                Input::Look => {
                    if let Err(stop) = self.look(st, tx, &catalog).await {
                        return stop;
                    }
                    continue;
                }
                Input::Event(Ok(Some(ev))) => ev,
                Input::Event(Ok(None)) => {
                    return Stop::transient(format!(
                        "{} ended the replication stream",
                        cfg.address()
                    ))
                }
                Input::Event(Err(e)) => return classify_stream(cfg, &e).into(),
            };
            *progressed = true;
            if let Err(stop) = self.handle(st, tx, &catalog, event).await {
                return stop;
            }
        }
    }

    /// Opens the replication session at `start`, confirming `confirmed`.
    async fn start(
        &self,
        start: u64,
        confirmed: u64,
        shutdown: &CancellationToken,
    ) -> Result<ReplicationClient, Stop> {
        let cfg = self.cfg;
        let began = Instant::now();
        loop {
            if self.password.is_some() {
                super::auth_probe::refuse_cleartext(cfg, true)
                    .await
                    .map_err(Stop::from)?;
            }
            let rc = replication_config(cfg, self.password.as_ref(), start, confirmed);
            let mut client = ReplicationClient::connect(rc)
                .await
                .map_err(|e| Stop::from(classify_stream(cfg, &e)))?;
            let e = match client.wait_started().await {
                Ok(()) => return Ok(client),
                Err(e) => e,
            };
            let text = e.to_string();
            // A session killed a moment ago may still hold the slot on the server.
            if text.contains("is active for PID") && began.elapsed() < SLOT_BUSY_WAIT {
                tracing::info!(slot = %cfg.slot, "slot still held by an ended session; waiting for the server to release it");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                }
            }
            return Err(classify_stream(cfg, &e).into());
        }
    }

    async fn handle(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        catalog: &Client,
        event: ReplicationEvent,
    ) -> Result<(), Stop> {
        match event {
            ReplicationEvent::Begin {
                xid,
                commit_time_micros,
                final_lsn,
            } => self.begin(st, xid, commit_time_micros, final_lsn.as_u64()),
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.commit(st, tx, end_lsn.as_u64()).await?
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let msg = decode(&data).map_err(|e| {
                    Stop::fatal(format!("at {}: {e}", format_lsn(wal_start.as_u64())))
                })?;
                self.message(st, tx, catalog, wal_start.as_u64(), msg)
                    .await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.keepalive(st, tx, wal_end.as_u64()).await?
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                self.logical_message(st, tx, catalog, transactional, &prefix, &content)
                    .await?
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    fn begin(&self, st: &mut StreamState, xid: u32, commit_micros: i64, final_lsn: u64) {
        st.in_txn = true;
        st.commit_lsn = final_lsn;
        st.marker = None;
        st.xid = Some(Arc::from(xid.to_string()));
        st.commit_ts_ms = ((commit_micros + PG_EPOCH_MICROS) / 1000).max(0) as u64;
    }

    async fn commit(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        end: u64,
    ) -> Result<(), Stop> {
        st.in_txn = false;
        st.boundary = st.boundary.max(end);
        let at = Position::Wal { lsn: end };
        let mut emitted = false;
        if let Some(marker) = st.marker.take() {
            // The chunk's rows, then its progress and this boundary.
            let version = st.commit_lsn;
            emitted = st
                .merger
                .emit_marked(&marker, &at, version, tx)
                .await
                .map_err(|_| Stop::Closed)?;
        }
        if !emitted {
            tx.send(SourceMessage::Commit(at.clone()))
                .await
                .map_err(|_| Stop::Closed)?;
        }
        if st.merger.has_resyncs() {
            st.merger
                .at_boundary(&at, tx)
                .await
                .map_err(|_| Stop::Closed)?;
        }
        Ok(())
    }

    /// Between transactions, the server's keepalive position is past every change the
    /// publication will ever send before it (PostgreSQL 15 skips transactions that
    /// touch no published table). Handing it over as a boundary lets the checkpoint,
    /// and so the slot, advance while the included tables are quiet, so the slot does
    /// not hold the server's WAL because of unrelated writes.
    async fn keepalive(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        wal_end: u64,
    ) -> Result<(), Stop> {
        let due =
            st.last_idle_commit.elapsed() >= Duration::from_secs(self.cfg.status_interval_secs);
        if st.in_txn || wal_end <= st.boundary || !due {
            return Ok(());
        }
        st.last_idle_commit = Instant::now();
        self.commit(st, tx, wal_end).await
    }

    async fn message(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        catalog: &Client,
        lsn: u64,
        msg: Message<'_>,
    ) -> Result<(), Stop> {
        let (op, relation, before, after) = match msg {
            Message::Begin {
                xid,
                commit_ts,
                final_lsn,
            } => {
                self.begin(st, xid, commit_ts, final_lsn);
                return Ok(());
            }
            Message::Commit { end_lsn, .. } => return self.commit(st, tx, end_lsn).await,
            Message::Relation(rel) => {
                // A table the stream did not carry (a FOR ALL TABLES publication, or
                // added by hand): the guard decides it before its first row.
                if st.watch.unknown(rel.oid) && self.filter.matches(rel.namespace, rel.name) {
                    self.look(st, tx, catalog).await?;
                }
                return self.relation(st, catalog, rel).await;
            }
            Message::Type { oid, .. } => {
                st.types.forget(oid);
                return Ok(());
            }
            Message::Origin { .. } => return Ok(()),
            Message::LogicalMessage {
                transactional,
                prefix,
                content,
                ..
            } => {
                return self
                    .logical_message(st, tx, catalog, transactional, prefix, content)
                    .await
            }
            Message::Insert { relation, new } => (Op::Create, relation, None, Some(new)),
            Message::Update { relation, old, new } => (Op::Update, relation, old, Some(new)),
            Message::Delete { relation, old } => (Op::Delete, relation, Some(old), None),
            Message::Truncate { relations, .. } => {
                for oid in relations {
                    let Some(rel) = st.relations.get(&oid).filter(|r| r.included) else {
                        continue;
                    };
                    let e = self.event(st, rel, Op::Truncate, lsn, None, None);
                    st.send_change(tx, e).await?;
                }
                return Ok(());
            }
        };
        let Some(rel) = st.relations.get(&relation) else {
            return Err(Stop::fatal(format!(
                "at {}: a change for relation {relation} arrived before its description",
                format_lsn(lsn)
            )));
        };
        if !rel.included {
            return Ok(());
        }
        let after = match after {
            Some(t) => Some(row(rel, &t, lsn, |_| false)?),
            None => None,
        };
        let before = match before {
            Some(OldTuple::Full(t)) => Some(row(rel, &t, lsn, |_| false)?),
            // Only the identity columns were sent; the others are unknown, not null.
            Some(OldTuple::Key(t)) => Some(row(rel, &t, lsn, |i| !rel.identity[i])?),
            None if op == Op::Create => None,
            // The key did not change: `before` is the key, taken from `after`.
            None => after.as_ref().map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if rel.identity[i] {
                            v.clone()
                        } else {
                            Value::Absent
                        }
                    })
                    .collect()
            }),
        };
        let e = self.event(st, rel, op, lsn, before, after);
        st.send_change(tx, e).await
    }

    /// A `pg_logical_emit_message`: a snapshot chunk's marker (transactional: its
    /// chunk is emitted at the commit), or the DDL trigger's (ddl_trigger.rs); other
    /// messages are not row changes.
    async fn logical_message(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        catalog: &Client,
        transactional: bool,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), Stop> {
        if !transactional || !st.in_txn {
            return Ok(());
        }
        if prefix == MARKER_PREFIX {
            if let Ok(marker) = std::str::from_utf8(content) {
                st.marker = Some(marker.to_string());
            }
        } else if prefix == ddl_trigger::MESSAGE_PREFIX {
            match DdlMessage::parse(content) {
                Ok(m) => self.ddl(st, tx, catalog, m).await?,
                Err(e) => {
                    tracing::warn!(error = %e, "ignored: not a message of this release's DDL trigger (run `tributary pg-ddl-trigger install` again)")
                }
            }
        }
        Ok(())
    }

    /// A DDL statement at its position (the DDL trigger): a table created, dropped or
    /// renamed is found by a look at the catalog now, so the guard decides it here; an
    /// ALTER TABLE of a table the stream carries has its layout decided here, its
    /// stated column renames first (they make the layout's renames certain).
    async fn ddl(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        catalog: &Client,
        m: DdlMessage,
    ) -> Result<(), Stop> {
        let carried = st.watch.name_of(m.oid).map(str::to_string);
        if carried.is_none() && !self.filter.matches(&m.schema, &m.name) {
            return Ok(());
        }
        let qualified = m.qualified();
        if m.creates_or_drops() || carried.as_deref() != Some(qualified.as_str()) {
            return self.look(st, tx, catalog).await;
        }
        let Some(columns) = &m.columns else {
            return Ok(());
        };
        let send = |change: Stated| {
            SourceMessage::Schema(TableChange {
                table: qualified.clone(),
                change,
            })
        };
        for (from, to) in m.renamed_columns() {
            let change = SchemaChange::ColumnRenamed {
                from,
                to,
                certain: true,
            };
            tx.send(send(Stated::Change(change)))
                .await
                .map_err(|_| Stop::Closed)?;
        }
        let columns: Vec<Column> = columns
            .iter()
            .map(|(name, type_name)| Column {
                name: name.clone(),
                type_name: type_name.clone(),
            })
            .collect();
        let lookup = |e: tokio_postgres::Error| Stop::from(lookup_error(self.cfg, &qualified, e));
        let key = positions(&event_key(catalog, m.oid).await.map_err(lookup)?, &columns);
        let schema = self.versioned(&m.schema, &m.name, columns, key, true)?;
        let layout = Stated::Layout {
            version: schema.schema_version,
            columns: schema.columns.clone(),
        };
        tx.send(send(layout)).await.map_err(|_| Stop::Closed)
    }

    fn event(
        &self,
        st: &StreamState,
        rel: &Rel,
        op: Op,
        lsn: u64,
        before: Option<Row>,
        after: Option<Row>,
    ) -> ChangeEvent {
        ChangeEvent {
            op,
            table: rel.schema.clone(),
            pos: Position::Wal { lsn },
            txid: st.xid.clone(),
            source_ts_ms: st.commit_ts_ms,
            before,
            after,
            // DESIGN.md: the transaction's commit LSN. Changes of one row in two
            // transactions commit in order (row locks); within one transaction they
            // share it and arrive in order (`external_gte`). A snapshot chunk's marker
            // lies between the commits its snapshot saw and those it did not.
            version: st.commit_lsn,
            ts_ms: now_ms(),
        }
    }

    /// Looks at the catalog (tables.rs) and tells the guard what changed.
    async fn look(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        catalog: &Client,
    ) -> Result<(), Stop> {
        let history = || {
            self.store
                .schema_history()
                .map(|h| h.into_keys().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    t.split_once('.')
                        .is_some_and(|(schema, name)| self.filter.matches(schema, name))
                })
                .collect()
        };
        let changes = st
            .watch
            .look(catalog, &self.cfg.publication, &self.filter, history)
            .await
            .map_err(|e| Stop::from(classify(self.cfg, &e)))?;
        for change in changes {
            tx.send(SourceMessage::Schema(change))
                .await
                .map_err(|_| Stop::Closed)?;
        }
        Ok(())
    }

    async fn relation(
        &self,
        st: &mut StreamState,
        catalog: &Client,
        rel: Relation<'_>,
    ) -> Result<(), Stop> {
        let cfg = self.cfg;
        let included = self.filter.matches(rel.namespace, rel.name);
        let qualified = format!("{}.{}", rel.namespace, rel.name);
        let lookup = |e: tokio_postgres::Error| Stop::from(lookup_error(cfg, &qualified, e));
        let mut types = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            types.push(
                st.types
                    .resolve(catalog, c.type_oid)
                    .await
                    .map_err(lookup)?,
            );
        }
        let type_names = type_names(
            catalog,
            &rel.columns
                .iter()
                .map(|c| (c.type_oid, c.type_modifier))
                .collect::<Vec<_>>(),
        )
        .await
        .map_err(lookup)?;
        let columns: Vec<Column> = rel
            .columns
            .iter()
            .zip(&type_names)
            .map(|(c, t)| Column {
                name: c.name.to_string(),
                type_name: t.clone(),
            })
            .collect();
        let mut pk = positions(
            &primary_key(catalog, rel.oid).await.map_err(lookup)?,
            &columns,
        );
        if pk.is_empty() && rel.replica_identity == b'i' {
            pk = (0..rel.columns.len())
                .filter(|&i| rel.columns[i].key)
                .collect();
        }
        if included {
            for (c, t) in columns.iter().zip(&types) {
                if let PgType::Unknown(oid) = t {
                    let key = format!("{qualified}.{}", c.name);
                    if st.warned.insert(key) {
                        tracing::warn!(table = %qualified, column = %c.name, r#type = %c.type_name, oid, "unknown type: passed as its text form");
                    }
                }
            }
            if pk.is_empty() && st.warned.insert(qualified.clone()) {
                tracing::warn!(table = %qualified, "table has no primary key: events carry a null key");
            }
        }
        let schema = self.versioned(rel.namespace, rel.name, columns, pk, included)?;
        st.relations.insert(
            rel.oid,
            Rel {
                schema: Arc::new(schema),
                types,
                identity: rel.columns.iter().map(|c| c.key).collect(),
                included,
            },
        );
        Ok(())
    }
}

impl Streamer<'_> {
    /// A table layout with its schema version, recorded in the history when the table
    /// is included. Versions follow what events show (names, type names with
    /// modifiers, key), so a table read from the catalog for a snapshot, or from the
    /// DDL trigger's message, gets the same one as from a Relation message.
    fn versioned(
        &self,
        schema: &str,
        table: &str,
        columns: Vec<Column>,
        key: Vec<usize>,
        record: bool,
    ) -> Result<TableSchema, Stop> {
        let layout = TableSchema::new(
            self.connector.clone(),
            "postgres",
            schema.to_string(),
            table.to_string(),
            columns,
            key,
            0,
        );
        let version = self
            .store
            .schema_version(&layout.qualified_name(), layout.layout_fingerprint())
            .map_err(|e| Stop::fatal(e.to_string()))?;
        let layout = layout.with_version(version);
        if record {
            self.store
                .record_schema(&layout)
                .map_err(|e| Stop::fatal(e.to_string()))?;
        }
        Ok(layout)
    }
}

/// Where key columns `names` (read from the catalog now) stand in `columns`; none when
/// one is missing (the catalog moved on since the change was written: the message's
/// own layout is trusted, without a key from the catalog).
fn positions(names: &[String], columns: &[Column]) -> Vec<usize> {
    let at: Vec<usize> = names
        .iter()
        .filter_map(|n| columns.iter().position(|c| c.name == *n))
        .collect();
    if at.len() == names.len() {
        at
    } else {
        Vec::new()
    }
}

enum Input {
    /// The pipeline stored a checkpoint (false: the pipeline is gone).
    Checkpoint(bool),
    /// Time to look at the catalog (tables.rs).
    Look,
    Event(pgwire_replication::Result<Option<ReplicationEvent>>),
}

fn confirmed_lsn(p: &Option<Position>) -> u64 {
    match p {
        Some(Position::Wal { lsn }) => *lsn,
        _ => 0,
    }
}

/// Decodes a tuple into a row; columns for which `absent` holds were not sent.
fn row(rel: &Rel, t: &Tuple<'_>, lsn: u64, absent: impl Fn(usize) -> bool) -> Result<Row, Stop> {
    let schema = &rel.schema;
    if t.len() != rel.types.len() {
        return Err(Stop::fatal(format!(
            "at {}: {} has {} columns but the change carries {}",
            format_lsn(lsn),
            schema.qualified_name(),
            rel.types.len(),
            t.len()
        )));
    }
    let mut out = Vec::with_capacity(t.len());
    for (i, d) in t.iter().enumerate() {
        out.push(match d {
            _ if absent(i) => Value::Absent,
            Datum::Null => Value::Null,
            Datum::UnchangedToast => Value::Absent,
            Datum::Text(b) => decode_text(&rel.types[i], b).map_err(|e| {
                Stop::fatal(format!(
                    "at {}: cannot decode {}.{} ({}): {e}",
                    format_lsn(lsn),
                    schema.qualified_name(),
                    schema.columns[i].name,
                    schema.columns[i].type_name
                ))
            })?,
            Datum::Binary(_) => {
                return Err(Stop::fatal(format!(
                    "at {}: {}.{} arrived in binary format, which tributary does not request",
                    format_lsn(lsn),
                    schema.qualified_name(),
                    schema.columns[i].name
                )))
            }
        });
    }
    Ok(out)
}

fn lookup_error(cfg: &PostgresSourceConfig, table: &str, e: tokio_postgres::Error) -> Failure {
    match classify(cfg, &e) {
        Failure::Fatal(m) => Failure::Fatal(format!("catalog lookup for {table}: {m}")),
        t => t,
    }
}
