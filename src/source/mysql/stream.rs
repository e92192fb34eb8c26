//! The binlog stream: connect, position, read events, turn rows into change events,
//! mark transaction boundaries, reconnect with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::EventType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::io::ParseBuf;
use tokio_util::sync::CancellationToken;

use super::charset::Collations;
use super::config::{MysqlSourceConfig, ResumeBy, StartFrom};
use super::connect::{classify, connect};
use super::ddl::{self, Control, Ddl};
use super::decode::read_image;
use super::mariadb::{self, GtidState};
use super::table::{ExtraColumnInfo, TableInfo};
use crate::event::{now_ms, ChangeEvent, Op, Position, SourceMessage, TableChange, TableSchema};
use crate::event::{SchemaChange, Stated};
use crate::offsets::OffsetStore;

/// New table ids on one connection before it is renewed at the next transaction
/// boundary (see `StreamState::table_ids_this_session`): the driver's map events cost
/// about 0.4 KiB each (measured with tests/mariadb_crash.rs's churn test), so at most
/// about 4 MiB; a reconnect costs a few milliseconds per 10,000 reopened tables.
const RENEW_AFTER_TABLE_IDS: usize = 10_000;
use crate::queue::QueueSender;
use crate::settings::Secret;
use crate::snapshot::merge::Merger;
use crate::source::filter::TableFilter;
use crate::source::session::{next_or_flush_or, Next, Reconnect, Stop};
use crate::source::SourceError;

enum CachedTable {
    Included { raw: Vec<u8>, info: Arc<TableInfo> },
    Excluded { raw: Vec<u8>, name: String },
}

impl CachedTable {
    fn raw(&self) -> &[u8] {
        match self {
            CachedTable::Included { raw, .. } | CachedTable::Excluded { raw, .. } => raw,
        }
    }

    fn is_table(&self, qualified: &str) -> bool {
        match self {
            CachedTable::Included { info, .. } => info.schema.qualified_name() == qualified,
            CachedTable::Excluded { name, .. } => name == qualified,
        }
    }
}

/// Everything that survives a reconnect.
struct StreamState {
    /// Current binlog file (from rotate events).
    file: Arc<str>,
    /// The last transaction boundary handed to the pipeline: where a reconnect resumes.
    boundary: Option<Position>,
    gtid: GtidState,
    in_txn: bool,
    txn_gtid: Option<mariadb::Gtid>,
    txid: Option<Arc<str>>,
    standalone: bool,
    tables: HashMap<u64, CachedTable>,
    /// Table ids first seen on this connection: the driver's stream reader keeps the
    /// map event of every one until the server rotates its binlog (mysql_common's
    /// EventStreamReader), so a table reopened again and again (FLUSH TABLES, a full
    /// table cache) would grow it for up to a whole binlog file.
    table_ids_this_session: usize,
    extra: HashMap<String, ExtraColumnInfo>,
    collations: Collations,
    /// A start position was just chosen (no checkpoint): hand it to the pipeline first
    /// so a restart before any change resumes there instead of skipping ahead.
    announce_start: bool,
    /// The server checksums events (binlog_checksum != NONE).
    checksums: bool,
    /// A format description arrived on this connection (until then the stream reader
    /// cannot know events carry checksums).
    seen_fde: bool,
    /// Merges snapshot chunks into the stream (snapshot::merge).
    merger: Merger,
    /// The snapshot readers may still send requests.
    snapshot_requests_open: bool,
}

impl StreamState {
    /// Hands a change on, through the snapshot merge (see `Merger::pass`).
    async fn send_change(&mut self, tx: &mut QueueSender, e: ChangeEvent) -> Result<(), Stop> {
        self.merger.pass(tx, e).await.map_err(|_| Stop::Closed)
    }

    /// The position of a row event starting at `offset` in the current file, with the
    /// transaction's GTID on MariaDB.
    fn event_position(&self, offset: u64) -> Position {
        Position::Binlog {
            file: self.file.clone(),
            offset,
            gtid: self.txn_gtid.and(self.txid.clone()),
        }
    }
}

pub(super) struct Streamer<'a> {
    pub cfg: &'a MysqlSourceConfig,
    pub flavor: super::Flavor,
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
        shutdown: CancellationToken,
        merger: Merger,
    ) -> Result<(), SourceError> {
        let mut st = StreamState {
            file: Arc::from(""),
            gtid: match &resume {
                Some(Position::Binlog { gtid: Some(g), .. }) => {
                    GtidState::parse(g).map_err(SourceError::Fatal)?
                }
                _ => GtidState::default(),
            },
            boundary: resume,
            in_txn: false,
            txn_gtid: None,
            txid: None,
            standalone: false,
            tables: HashMap::new(),
            table_ids_this_session: 0,
            extra: HashMap::new(),
            collations: Collations::default(),
            announce_start: false,
            checksums: true,
            seen_fde: false,
            merger,
            snapshot_requests_open: true,
        };
        let mut reconnect =
            Reconnect::new("binlog connection", self.cfg.max_reconnect_backoff_secs);
        loop {
            let mut progressed = false;
            let stop = self
                .stream_once(
                    &mut st,
                    &mut tx,
                    &shutdown,
                    &mut progressed,
                    &mut reconnect.connected_once,
                )
                .await;
            let in_txn = st.in_txn;
            if let Some(done) = reconnect
                .after(stop, &mut st.in_txn, progressed, &mut tx, &shutdown)
                .await
            {
                return done;
            }
            if in_txn {
                st.txn_gtid = None;
            }
        }
    }

    async fn stream_once(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        shutdown: &CancellationToken,
        progressed: &mut bool,
        connected_once: &mut bool,
    ) -> Stop {
        let cfg = self.cfg;
        let mut meta = match connect(cfg, self.password.as_ref()).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let collations: Vec<(Option<u16>, Option<String>, Option<u8>)> = match meta
            .query(
                "SELECT co.ID, co.CHARACTER_SET_NAME, cs.MAXLEN \
                 FROM information_schema.COLLATIONS co \
                 LEFT JOIN information_schema.CHARACTER_SETS cs \
                 ON cs.CHARACTER_SET_NAME = co.CHARACTER_SET_NAME",
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return classify(cfg, &e).into(),
        };
        st.collations = Collations::from_server(
            collations
                .into_iter()
                .filter_map(|(id, cs, max)| Some((id?, cs?, max))),
        );

        let checksum: Option<String> =
            match meta.query_first("SELECT @@GLOBAL.binlog_checksum").await {
                Ok(v) => v,
                Err(e) => return classify(cfg, &e).into(),
            };
        st.checksums = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        st.seen_fde = false;
        st.table_ids_this_session = 0;

        // Where to start.
        let (file, pos, gtid_connect) = match self.start_point(&mut meta, st).await {
            Ok(x) => x,
            Err(e) => return e,
        };
        let mut conn = match connect(cfg, self.password.as_ref()).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let heartbeat_ns = cfg.heartbeat_secs * 1_000_000_000;
        let mut setup = vec![format!("SET @master_heartbeat_period = {heartbeat_ns}")];
        if self.flavor.is_mariadb() {
            // 4 = MARIA_SLAVE_CAPABILITY_GTID: the server sends GTID events as they are.
            setup.push("SET @mariadb_slave_capability = 4".into());
            if let Some(g) = &gtid_connect {
                setup.push(format!("SET @slave_connect_state = '{g}'"));
            }
        }
        for sql in setup {
            if let Err(e) = conn.query_drop(sql).await {
                return classify(cfg, &e).into();
            }
        }
        let tls = super::connect::cipher(&mut conn)
            .await
            .unwrap_or_else(|| "none".into());
        let mut request = BinlogStreamRequest::new(self.cfg.server_id);
        if gtid_connect.is_none() {
            request = request.with_filename(file.as_bytes()).with_pos(pos);
        } else {
            request = request.with_filename(b"").with_pos(4);
        }
        let mut stream = match conn.get_binlog_stream(request).await {
            Ok(s) => s,
            Err(e) => return classify(cfg, &e).into(),
        };
        match &gtid_connect {
            Some(g) => tracing::info!(gtid = %g, tls, "streaming binlog from GTID position"),
            None => tracing::info!(file = %file, pos, tls, "streaming binlog"),
        }
        crate::health::source(crate::health::Source::Streaming);
        *connected_once = true;
        st.file = Arc::from(file.as_str());
        if std::mem::take(&mut st.announce_start) {
            let start = st.boundary.clone().expect("start point sets the boundary");
            // A batch of its own: without a checkpoint the pipeline stores this one
            // before it takes anything after it (Runner::on_batch).
            if tx.send(SourceMessage::Commit(start)).await.is_err() || tx.flush().await.is_err() {
                return Stop::Closed;
            }
        }

        let silence = Duration::from_secs(cfg.heartbeat_secs * 3 + 5);
        loop {
            let next = stream.next();
            tokio::pin!(next);
            // A snapshot request is taken between events (never while a batch is being
            // handed over); a chunk is emitted at once when the stream already stands at
            // a boundary at or past its cut.
            let open = st.snapshot_requests_open;
            let merger = &mut st.merger;
            let side = async move {
                if open {
                    merger.recv().await
                } else {
                    std::future::pending().await
                }
            };
            let next = match next_or_flush_or(tx, shutdown, silence, next, side).await {
                Next::Item(n) => n,
                Next::Side(None) => {
                    st.snapshot_requests_open = false;
                    continue;
                }
                Next::Side(Some(request)) => {
                    st.merger.take(request);
                    if !st.in_txn {
                        if let Some(at) = st.boundary.clone() {
                            if st.merger.at_boundary(&at, tx).await.is_err()
                                || st.merger.emit_due(&at, tx).await.is_err()
                            {
                                return Stop::Closed;
                            }
                        }
                    }
                    continue;
                }
                Next::Shutdown => return Stop::Shutdown,
                Next::Closed => return Stop::Closed,
                Next::Silent => {
                    return Stop::transient(format!(
                        "no event or heartbeat from {} for {}s",
                        cfg.address(),
                        silence.as_secs()
                    ))
                }
            };
            let event = match next {
                None => {
                    return Stop::transient(format!("{} closed the binlog stream", cfg.address()))
                }
                Some(Err(e)) => return classify(cfg, &e).into(),
                Some(Ok(ev)) => ev,
            };
            *progressed = true;
            if let Err(stop) = self.handle_event(st, tx, &mut meta, &event).await {
                return stop;
            }
            if !st.in_txn && st.table_ids_this_session >= RENEW_AFTER_TABLE_IDS {
                return Stop::Renew(format!(
                    "{} table ids since connecting (the driver keeps a map event per id)",
                    st.table_ids_this_session
                ));
            }
        }
    }

    /// Returns (file, pos, gtid state to connect with).
    async fn start_point(
        &self,
        meta: &mut Conn,
        st: &mut StreamState,
    ) -> Result<(String, u64, Option<String>), Stop> {
        let cfg = self.cfg;
        if let Some(Position::Binlog { file, offset, gtid }) = &st.boundary {
            let by_gtid = self.flavor.is_mariadb()
                && cfg.resume == ResumeBy::Gtid
                && gtid.as_deref().is_some_and(|g| !g.is_empty());
            return Ok((
                file.to_string(),
                *offset,
                if by_gtid {
                    gtid.as_deref().map(str::to_string)
                } else {
                    None
                },
            ));
        }
        if st.boundary.is_some() {
            return Err(Stop::fatal(
                "the checkpoint is not a binlog position (was the state dir used by another source kind?): \
                 run `tributary offsets reset --connector <file>`",
            ));
        }
        let (file, pos) = match cfg.start {
            StartFrom::Current => {
                let row: Option<mysql_async::Row> = meta
                    .query_first("SHOW MASTER STATUS")
                    .await
                    .map_err(|e| Stop::from(classify(cfg, &e)))?;
                let row = row.ok_or_else(|| {
                    Stop::fatal("SHOW MASTER STATUS returned nothing: the binlog is off")
                })?;
                let file: String = row.get(0).unwrap_or_default();
                let pos: u64 = row.get(1).unwrap_or(4);
                (file, pos)
            }
            StartFrom::Earliest => {
                let row: Option<mysql_async::Row> = meta
                    .query_first("SHOW BINARY LOGS")
                    .await
                    .map_err(|e| Stop::from(classify(cfg, &e)))?;
                let row = row.ok_or_else(|| {
                    Stop::fatal("SHOW BINARY LOGS returned nothing: the binlog is off")
                })?;
                (row.get::<String, _>(0).unwrap_or_default(), 4)
            }
        };
        let gtid = if self.flavor.is_mariadb() && cfg.start == StartFrom::Current {
            let g: Option<Option<String>> = meta
                .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file.clone(), pos))
                .await
                .map_err(|e| Stop::from(classify(cfg, &e)))?;
            g.flatten().filter(|g| !g.is_empty())
        } else {
            None
        };
        if let Some(g) = &gtid {
            st.gtid = GtidState::parse(g).map_err(Stop::fatal)?;
        }
        let start = Position::Binlog {
            file: Arc::from(file.as_str()),
            offset: pos,
            gtid: gtid.as_deref().map(Arc::from),
        };
        st.boundary = Some(start);
        st.announce_start = true;
        Ok((file, pos, None))
    }

    async fn handle_event(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        meta: &mut Conn,
        event: &mysql_async::binlog::events::Event,
    ) -> Result<(), Stop> {
        let header = event.header();
        let ty = header.event_type_raw();
        let log_pos = header.log_pos() as u64;
        let at = || {
            format!(
                "{}:{}",
                st.file,
                log_pos.saturating_sub(header.event_size() as u64)
            )
        };

        // Checksums: the stream reader strips them; verify here so a corrupted event
        // stops the pipeline instead of decoding garbage.
        if let (Ok(Some(alg)), Some(sum)) = (event.footer().get_checksum_alg(), event.checksum()) {
            if ty != EventType::FORMAT_DESCRIPTION_EVENT as u8
                && event.footer().get_checksum_enabled()
                && u32::from_le_bytes(sum) != event.calc_checksum(alg)
            {
                return Err(Stop::fatal(format!(
                    "binlog event at {} fails its checksum",
                    at()
                )));
            }
        }

        match ty {
            t if t == EventType::ROTATE_EVENT as u8 => {
                if let Ok(Some(EventData::RotateEvent(r))) = event.read_data() {
                    let mut name = r.name_raw();
                    // The artificial rotate that opens a stream comes before the format
                    // description, so the reader left its checksum on the name.
                    if !st.seen_fde && st.checksums && name.len() > 4 {
                        name = &name[..name.len() - 4];
                    }
                    st.file = Arc::from(String::from_utf8_lossy(name).as_ref());
                    if st.boundary.is_none() {
                        st.boundary = Some(self.position(st, r.position()));
                    } else if !st.in_txn && st.merger.has_waiting() {
                        // A new file starts at a boundary: a chunk cut there (a quiet
                        // server after a rotation) must not wait for the next change.
                        let at = self.position(st, r.position());
                        st.merger.emit_due(&at, tx).await.map_err(|_| Stop::Closed)?;
                    }
                }
            }
            mariadb::GTID_EVENT => {
                let g = mariadb::parse_gtid_event(event.data(), header.server_id())
                    .ok_or_else(|| Stop::fatal(format!("malformed GTID event at {}", at())))?;
                st.in_txn = true;
                st.standalone = g.standalone();
                st.txn_gtid = Some(g.gtid);
                st.txid = Some(Arc::from(g.gtid.to_string()));
            }
            mariadb::GTID_LIST_EVENT => {
                if let Some(list) = mariadb::parse_gtid_list(event.data()) {
                    st.gtid.seed(&list);
                }
            }
            mariadb::ANNOTATE_ROWS_EVENT
            | mariadb::BINLOG_CHECKPOINT_EVENT
            | mariadb::START_ENCRYPTION_EVENT => {}
            mariadb::QUERY_COMPRESSED_EVENT | mariadb::FIRST_COMPRESSED_ROWS_EVENT..=mariadb::LAST_COMPRESSED_ROWS_EVENT => {
                return Err(Stop::fatal(format!(
                    "compressed binlog event (type {ty}) at {}: tributary cannot decode compressed events and never skips one. \
                     Set log_bin_compress = OFF on the server; changes already written compressed must be re-snapshotted",
                    at()
                )));
            }
            t if t == EventType::GTID_EVENT as u8 => {
                if let Ok(Some(EventData::GtidEvent(g))) = event.read_data() {
                    st.txid = Some(Arc::from(format!("{}:{}", uuid_text(&g.sid()), g.gno())));
                }
                st.in_txn = true;
            }
            t if t == EventType::QUERY_EVENT as u8 => {
                let q = match event.read_data() {
                    Ok(Some(EventData::QueryEvent(q))) => q,
                    _ => return Err(Stop::fatal(format!("malformed query event at {}", at()))),
                };
                let sql = q.query();
                match ddl::control(&sql) {
                    Some(Control::Begin) => st.in_txn = true,
                    Some(Control::End) => self.commit(st, tx, log_pos).await?,
                    Some(Control::Within) => {}
                    None => {
                        let statement = ddl::parse(&sql, &q.schema());
                        match &statement {
                            // Rows of tables tributary does not capture are not missed.
                            Ddl::RowsNotLogged(Some(tables))
                                if tables
                                    .iter()
                                    .all(|(db, table)| !self.filter.matches(db, table)) =>
                            {
                                tracing::debug!(statement = %crate::privacy::statement(&sql, 3), "statement-based change of tables not captured");
                            }
                            Ddl::RowsNotLogged(tables) => {
                                let of = match tables {
                                    Some(t) if !t.is_empty() => t
                                        .iter()
                                        .map(|(db, table)| format!("{db}.{table}"))
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                    _ => "tables it does not say".into(),
                                };
                                return Err(Stop::fatal(format!(
                                    "statement-based change at {} ({}, touching {of}): a session wrote with binlog_format other than ROW, \
                                     so its rows are not in the binlog. Set binlog_format = ROW globally and re-snapshot the affected tables",
                                    at(),
                                    crate::privacy::statement(&sql, 2),
                                )));
                            }
                            _ => {
                                // DDL: table maps after it describe the new layout; extra
                                // column info (JSON checks) must be read again.
                                st.extra.clear();
                                let start = log_pos.saturating_sub(header.event_size() as u64);
                                self.ddl(st, tx, statement, &sql, start, header.timestamp() as u64 * 1000)
                                    .await?;
                            }
                        }
                        if st.standalone || !st.in_txn {
                            self.commit(st, tx, log_pos).await?;
                        }
                    }
                }
            }
            t if t == EventType::XID_EVENT as u8 => self.commit(st, tx, log_pos).await?,
            t if t == EventType::TABLE_MAP_EVENT as u8 => self.table_map(st, meta, event).await?,
            t if t == EventType::WRITE_ROWS_EVENT as u8
                || t == EventType::UPDATE_ROWS_EVENT as u8
                || t == EventType::DELETE_ROWS_EVENT as u8
                || t == EventType::WRITE_ROWS_EVENT_V1 as u8
                || t == EventType::UPDATE_ROWS_EVENT_V1 as u8
                || t == EventType::DELETE_ROWS_EVENT_V1 as u8 =>
            {
                let rows = match event.read_data() {
                    Ok(Some(EventData::RowsEvent(r))) => r,
                    Ok(_) => return Err(Stop::fatal(format!("malformed rows event at {}", at()))),
                    Err(e) => return Err(Stop::fatal(format!("malformed rows event at {}: {e}", at()))),
                };
                let info = match st.tables.get(&rows.table_id()) {
                    Some(CachedTable::Included { info, .. }) => info.clone(),
                    Some(CachedTable::Excluded { .. }) => return Ok(()),
                    None => {
                        return Err(Stop::fatal(format!(
                            "rows event at {} refers to table id {} with no table map before it",
                            at(),
                            rows.table_id()
                        )))
                    }
                };
                let start = log_pos.saturating_sub(header.event_size() as u64);
                let ts = header.timestamp() as u64 * 1000;
                let changes = self.decode_rows(st, &info, &rows, start, ts).map_err(|m| {
                    Stop::fatal(format!("cannot decode a row of {} at {}: {m}", info.schema.qualified_name(), at()))
                })?;
                for e in changes {
                    st.send_change(tx, e).await?;
                }
            }
            t if t == EventType::PARTIAL_UPDATE_ROWS_EVENT as u8 => {
                return Err(Stop::fatal(format!(
                    "partial JSON update event at {}: set binlog_row_value_options = '' on the server",
                    at()
                )))
            }
            t if t == EventType::INCIDENT_EVENT as u8 => {
                return Err(Stop::fatal(format!(
                    "incident event at {}: the server reports that changes may be missing from the binlog; re-snapshot the tables",
                    at()
                )))
            }
            t if t == EventType::XA_PREPARE_LOG_EVENT as u8 => {
                return Err(Stop::fatal(format!("XA PREPARE at {}: XA transactions are not supported yet", at())))
            }
            t if t == EventType::FORMAT_DESCRIPTION_EVENT as u8 => st.seen_fde = true,
            t if t == EventType::HEARTBEAT_EVENT as u8
                || t == EventType::STOP_EVENT as u8
                || t == EventType::PREVIOUS_GTIDS_EVENT as u8
                || t == EventType::ANONYMOUS_GTID_EVENT as u8
                || t == EventType::ROWS_QUERY_EVENT as u8
                || t == EventType::TRANSACTION_PAYLOAD_EVENT as u8
                || t == EventType::TRANSACTION_CONTEXT_EVENT as u8
                || t == EventType::VIEW_CHANGE_EVENT as u8
                || t == EventType::IGNORABLE_EVENT as u8
                || t == EventType::INTVAR_EVENT as u8
                || t == EventType::RAND_EVENT as u8
                || t == EventType::USER_VAR_EVENT as u8 => {}
            _ => {
                // LOG_EVENT_IGNORABLE_F: the server says a reader may skip it.
                if header.flags_raw() & 0x80 == 0 {
                    return Err(Stop::fatal(format!(
                        "unknown binlog event type {ty} at {}: tributary never skips an event it does not understand",
                        at()
                    )));
                }
            }
        }
        Ok(())
    }

    fn position(&self, st: &StreamState, offset: u64) -> Position {
        Position::Binlog {
            file: st.file.clone(),
            offset,
            gtid: if st.gtid.is_empty() {
                None
            } else {
                Some(Arc::from(st.gtid.to_string()))
            },
        }
    }

    async fn commit(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        log_pos: u64,
    ) -> Result<(), Stop> {
        if let Some(g) = st.txn_gtid.take() {
            st.gtid.update(g);
        }
        st.in_txn = false;
        st.standalone = false;
        st.txid = None;
        if log_pos == 0 {
            return Ok(());
        }
        let p = self.position(st, log_pos);
        st.boundary = Some(p.clone());
        tx.send(SourceMessage::Commit(p.clone()))
            .await
            .map_err(|_| Stop::Closed)?;
        if st.merger.has_resyncs() {
            st.merger
                .at_boundary(&p, tx)
                .await
                .map_err(|_| Stop::Closed)?;
        }
        if st.merger.has_waiting() {
            st.merger.emit_due(&p, tx).await.map_err(|_| Stop::Closed)?;
        }
        Ok(())
    }

    async fn table_map(
        &self,
        st: &mut StreamState,
        meta: &mut Conn,
        event: &mysql_async::binlog::events::Event,
    ) -> Result<(), Stop> {
        let tme = match event.read_data() {
            Ok(Some(EventData::TableMapEvent(t))) => t,
            _ => return Err(Stop::fatal("malformed table map event")),
        };
        let id = tme.table_id();
        let raw = event.data();
        match st.tables.get(&id) {
            Some(c) if c.raw() == raw => return Ok(()),
            Some(_) => {}
            None => st.table_ids_this_session += 1,
        }
        let (db, table) = (
            tme.database_name().into_owned(),
            tme.table_name().into_owned(),
        );
        let qualified = format!("{db}.{table}");
        // A table gets a new id whenever the server reopens it (FLUSH TABLES, ALTER, a
        // full table cache): its older ids are never referenced again, so the cache
        // holds one entry per table, not per id. An unchanged layout (the same map but
        // for the id, its first 6 bytes) keeps its parsed info and schema, which the
        // caches downstream key on.
        let previous = st
            .tables
            .iter()
            .find(|(_, c)| c.is_table(&qualified))
            .map(|(old, _)| *old);
        if let Some(old) = previous {
            let cached = st.tables.remove(&old).expect("found");
            if cached.raw().get(6..) == raw.get(6..) {
                let cached = match cached {
                    CachedTable::Included { info, .. } => CachedTable::Included {
                        raw: raw.to_vec(),
                        info,
                    },
                    CachedTable::Excluded { name, .. } => CachedTable::Excluded {
                        raw: raw.to_vec(),
                        name,
                    },
                };
                st.tables.insert(id, cached);
                return Ok(());
            }
        }
        if !self.filter.matches(&db, &table) {
            st.tables.insert(
                id,
                CachedTable::Excluded {
                    raw: raw.to_vec(),
                    name: qualified,
                },
            );
            return Ok(());
        }
        if !st.extra.contains_key(&qualified) {
            let extra = if self.flavor.is_mariadb() {
                self.json_columns(meta, &db, &table).await?
            } else {
                ExtraColumnInfo::default()
            };
            st.extra.insert(qualified.clone(), extra);
        }
        let extra = &st.extra[&qualified];
        let mut info = TableInfo::from_table_map(
            &tme,
            &st.collations,
            extra,
            self.connector.clone(),
            self.flavor.kind(),
            0,
        )
        .map_err(|e| Stop::fatal(e.to_string()))?;
        let version = self
            .store
            .schema_version(&qualified, info.schema.layout_fingerprint())
            .map_err(|e| Stop::fatal(e.to_string()))?;
        info.schema = Arc::new(info.schema.with_version(version));
        self.store
            .record_schema(&info.schema)
            .map_err(|e| Stop::fatal(e.to_string()))?;
        if info.schema.primary_key.is_empty() {
            tracing::warn!(table = %qualified, "table has no primary key: events carry a null key");
        }
        st.tables.insert(
            id,
            CachedTable::Included {
                raw: raw.to_vec(),
                info: Arc::new(info),
            },
        );
        Ok(())
    }

    /// What a DDL statement means downstream. TRUNCATE writes no rows, so it becomes a
    /// truncate event per included table; the rest only needs telling (layouts come
    /// from the next table maps, and the schema guard decides on them).
    async fn ddl(
        &self,
        st: &mut StreamState,
        tx: &mut QueueSender,
        statement: Ddl,
        sql: &str,
        start: u64,
        source_ts_ms: u64,
    ) -> Result<(), Stop> {
        match statement {
            Ddl::Truncate(tables) => {
                for (i, (db, table)) in tables.iter().enumerate() {
                    if !self.filter.matches(db, table) {
                        continue;
                    }
                    let Some(schema) = self.known_schema(st, db, table)? else {
                        tracing::info!(table = %format!("{db}.{table}"), "TRUNCATE of a table tributary has not seen yet: nothing to empty downstream");
                        continue;
                    };
                    let e = ChangeEvent {
                        op: Op::Truncate,
                        table: schema,
                        pos: st.event_position(start),
                        txid: st.txid.clone(),
                        source_ts_ms,
                        before: None,
                        after: None,
                        version: row_version(file_sequence(&st.file), start, i as u64),
                        ts_ms: now_ms(),
                    };
                    st.send_change(tx, e).await?;
                }
            }
            Ddl::Unparsed(reason) => {
                tracing::warn!(statement = %crate::privacy::statement(sql, 3), %reason, "DDL statement not understood; the included tables it changes are compared through their next table map");
            }
            Ddl::DropTables(tables) => {
                for (db, table) in tables {
                    self.table_change(tx, &db, &table, SchemaChange::TableDropped)
                        .await?;
                }
            }
            Ddl::RenameTables(renames) => {
                for ((db, table), (to_db, to_table)) in renames {
                    self.table_change(tx, &db, &table, SchemaChange::TableDropped)
                        .await?;
                    self.table_change(tx, &to_db, &to_table, SchemaChange::TableCreated)
                        .await?;
                }
            }
            Ddl::CreateTable((db, table)) => {
                self.table_change(tx, &db, &table, SchemaChange::TableCreated)
                    .await?;
            }
            Ddl::AlterTable {
                table: (db, table),
                renamed,
                retyped,
            } => {
                // Types first: they name the columns as they were before the statement.
                for (column, type_name) in retyped {
                    let stated = Stated::ColumnType { column, type_name };
                    self.stated(tx, &db, &table, stated).await?;
                }
                for (from, to) in renamed {
                    let change = SchemaChange::ColumnRenamed {
                        from,
                        to,
                        certain: true,
                    };
                    self.table_change(tx, &db, &table, change).await?;
                }
            }
            Ddl::Other | Ddl::RowsNotLogged(_) => {}
        }
        Ok(())
    }

    /// Hands a table-level change of an included table to the schema guard.
    async fn table_change(
        &self,
        tx: &mut QueueSender,
        db: &str,
        table: &str,
        change: SchemaChange,
    ) -> Result<(), Stop> {
        self.stated(tx, db, table, Stated::Change(change)).await
    }

    /// Hands what a statement says about an included table to the schema guard.
    async fn stated(
        &self,
        tx: &mut QueueSender,
        db: &str,
        table: &str,
        change: Stated,
    ) -> Result<(), Stop> {
        if !self.filter.matches(db, table) {
            return Ok(());
        }
        tx.send(SourceMessage::Schema(TableChange {
            table: format!("{db}.{table}"),
            change,
        }))
        .await
        .map_err(|_| Stop::Closed)
    }

    /// The schema of `db.table` as last seen: in this session's table maps, else the
    /// latest recorded version (a table can be truncated before any row of it passes).
    fn known_schema(
        &self,
        st: &StreamState,
        db: &str,
        table: &str,
    ) -> Result<Option<Arc<TableSchema>>, Stop> {
        let cached = st
            .tables
            .values()
            .filter_map(|t| match t {
                CachedTable::Included { info, .. }
                    if info.schema.db == db && info.schema.table == table =>
                {
                    Some(info.schema.clone())
                }
                _ => None,
            })
            .max_by_key(|s| s.schema_version);
        if cached.is_some() {
            return Ok(cached);
        }
        let qualified = format!("{db}.{table}");
        let history = self
            .store
            .schema_history()
            .map_err(|e| Stop::fatal(e.to_string()))?;
        Ok(history.get(&qualified).and_then(|h| h.last()).map(|r| {
            Arc::new(TableSchema::new(
                self.connector.clone(),
                self.flavor.kind(),
                db.to_string(),
                table.to_string(),
                r.columns.clone(),
                r.primary_key.clone(),
                r.version,
            ))
        }))
    }

    /// MariaDB's JSON type is LONGTEXT plus a `json_valid(col)` check constraint.
    async fn json_columns(
        &self,
        meta: &mut Conn,
        db: &str,
        table: &str,
    ) -> Result<ExtraColumnInfo, Stop> {
        let json_columns = super::catalog::json_columns(meta, db, table)
            .await
            .map_err(|e| Stop::from(classify(self.cfg, &e)))?;
        Ok(ExtraColumnInfo { json_columns })
    }

    fn decode_rows(
        &self,
        st: &StreamState,
        info: &Arc<TableInfo>,
        rows: &RowsEventData<'_>,
        start: u64,
        source_ts_ms: u64,
    ) -> Result<Vec<ChangeEvent>, String> {
        let n = info.columns.len();
        if rows.num_columns() as usize != n {
            return Err(format!(
                "rows event has {} columns, its table map {n}",
                rows.num_columns()
            ));
        }
        let before_cols: Option<Vec<bool>> = rows.columns_before_image().map(|b| {
            (0..n)
                .map(|i| b.get(i).map(|x| *x).unwrap_or(false))
                .collect()
        });
        let after_cols: Option<Vec<bool>> = rows.columns_after_image().map(|b| {
            (0..n)
                .map(|i| b.get(i).map(|x| *x).unwrap_or(false))
                .collect()
        });
        let op = match rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Op::Create,
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => Op::Update,
            _ => Op::Delete,
        };
        let seq = file_sequence(&st.file);
        let ts_ms = now_ms();
        let mut out = Vec::new();
        let mut buf = ParseBuf(rows.rows_data());
        let mut idx = 0u64;
        while !buf.is_empty() {
            let before = match &before_cols {
                Some(p) => Some(read_image(&mut buf, info, p).map_err(|e| e.to_string())?),
                None => None,
            };
            let after = match &after_cols {
                Some(p) => Some(read_image(&mut buf, info, p).map_err(|e| e.to_string())?),
                None => None,
            };
            out.push(ChangeEvent {
                op,
                table: info.schema.clone(),
                pos: st.event_position(start),
                txid: st.txid.clone(),
                source_ts_ms,
                before,
                after,
                version: row_version(seq, start, idx),
                ts_ms,
            });
            idx += 1;
        }
        Ok(out)
    }
}

/// `binlog.000042` -> 42.
pub fn file_sequence(file: &str) -> u64 {
    file.rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The event version (DESIGN.md): binlog file sequence in the high bits, the rows
/// event's offset plus the row's index in the low 32 bits. Every rows event is longer
/// than its row count, so versions never collide and grow in commit order. The top 8
/// bits are left for the epoch.
pub fn row_version(file_seq: u64, event_offset: u64, row_index: u64) -> u64 {
    ((file_seq & 0xff_ffff) << 32) | ((event_offset + row_index) & 0xffff_ffff)
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_across_files_and_rows() {
        assert_eq!(file_sequence("binlog.000042"), 42);
        let a = row_version(1, 4000, 0);
        let b = row_version(1, 4000, 1);
        let c = row_version(2, 4, 0);
        assert!(a < b && b < c);
    }
}
