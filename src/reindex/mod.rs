//! `tributary reindex`: a table's index rebuilt with today's mapping and enrichment,
//! without a moment in which searches see a partial index.
//!
//! The table is read from the source chunk by chunk (each chunk consistent), enriched
//! and rendered as the sink writes it, into a new concrete index `<alias>_v<N+1>`
//! created with the mapping the current schema and enrichment give; then the alias
//! moves from the old index to the new one in one `_aliases` request. Until then every
//! search goes to the old index, whole.
//!
//! Each document is written with the version of the stream position its chunk was
//! read at (MariaDB's consistent snapshot gives it exactly; on PostgreSQL a chunk is
//! read again until no transaction was running at its snapshot), so of a chunk's row
//! and a streamed change of it, the newer wins in the new index.
//!
//! With the daemon stopped, reindex holds the offsets store (the daemon cannot start
//! meanwhile); when the daemon resumes from its checkpoint, the changes it replays
//! that a chunk already holds lose to it and the later ones win. With the daemon
//! running, reindex first asks its sink to write every change of the table to the new
//! index too (sink::elasticsearch::dual) and reads its first chunk only once the sink
//! said it does, so every change is either older than the chunks or written to the new
//! index by the daemon. An interrupted reindex leaves the alias on the old index;
//! running it again starts over (the unfinished new index is deleted first, once no
//! daemon writes to it).
//!
//! `--from log:NAME` fills the new index from a log stream instead (from_log.rs).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ConnectorConfig;
use crate::enrich::Stage;
use crate::offsets::{OffsetError, OffsetStore};
use crate::sink::elasticsearch::dual;
use crate::sink::elasticsearch::verify::{IndexView, Repair};
use crate::verify::{err, index_view, progress, render, wait_for_daemon, VerifyError};

mod documents;
mod from_log;
pub use from_log::ReadFrom;

/// Rows per chunk (one bulk request each).
const CHUNK: u64 = 1000;
/// Reads of a PostgreSQL chunk before giving up on a table too busy to read at a
/// snapshot no transaction was running at.
const EXACT_TRIES: u32 = 100;
/// How long a running daemon may take to answer (its sink looks every 200 ms).
const ANSWER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Options {
    /// `db.table`, or empty with `document`.
    pub table: String,
    /// A `[[document]]` by name instead of a table.
    pub document: Option<String>,
    pub sink: Option<String>,
    /// Delete the previous index after the swap (default: keep it).
    pub delete_previous: bool,
    pub progress: bool,
    /// A table without an index yet is nothing to do rather than an error (the daemon's
    /// rebuilds: the sink creates the index with the current mapping anyway).
    pub if_indexed: bool,
    /// Where the documents come from.
    pub from: ReadFrom,
}

#[derive(Debug, Default)]
pub struct Report {
    pub alias: String,
    pub previous: Vec<String>,
    pub index: String,
    pub documents: u64,
    /// Rows an enrichment step fails on (not indexed, as the live sink would not).
    pub not_enriched: u64,
    pub deleted_previous: bool,
}

/// The offsets store, or None when a running daemon holds it (the reindex then runs
/// beside the daemon).
fn store(cfg: &ConnectorConfig) -> Result<Option<Arc<OffsetStore>>, VerifyError> {
    match cfg.state.open_store() {
        Ok(s) => Ok(Some(Arc::new(s))),
        Err(OffsetError::InUse { .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

pub async fn reindex(cfg: &ConnectorConfig, opts: &Options) -> Result<Report, VerifyError> {
    if let Some(name) = &opts.document {
        if opts.from != ReadFrom::Source {
            return Err(VerifyError(format!(
                "--document {name}: a document is rebuilt from the source (--from source)"
            )));
        }
        return documents::reindex(cfg, opts, name).await;
    }
    let store = store(cfg)?;
    // A running daemon holds the store: the fill runs beside it.
    let online = store.is_none();
    let view = index_view(cfg, opts.sink.as_deref())?;
    let source = cfg.source.source();
    let scan = source.scan(&cfg.connector_name());
    let name = &opts.table;
    let t = scan.table(name).await.map_err(err)?.ok_or_else(|| {
        VerifyError(format!(
            "table {name} does not exist in the source database"
        ))
    })?;
    let schema = t.schema;
    let ids = view.doc_id(&schema).map_err(VerifyError)?.ok_or_else(|| {
        VerifyError(format!(
            "{name} has no primary key and no ids setting: the sink does not index it"
        ))
    })?;
    let lookups = source.lookup(&cfg.connector_name());
    let mut stage = Stage::detached(&cfg.enrich, &cfg.path, || lookups, store.as_ref())
        .await
        .map_err(err)?;
    let layout = stage.layout(&schema).map_err(err)?;
    let stateful = stage.stateful_fields(&schema).map_err(err)?;
    if online && !stateful.is_empty() && opts.from == ReadFrom::Source {
        return Err(VerifyError(format!(
            "{name}: its [[enrich]] steps keep state ({} come from it), which the running daemon holds: stop the daemon, then reindex",
            stateful.join(", ")
        )));
    }
    let alias = view.alias(&schema);
    let previous = view.behind(&alias).await.map_err(VerifyError)?;
    if previous.is_empty() && opts.if_indexed {
        return Ok(Report {
            alias,
            ..Report::default()
        });
    }
    if previous.is_empty() {
        return Err(VerifyError(format!(
            "there is no index alias {alias} yet (the daemon creates it with the table's first change): nothing to reindex"
        )));
    }
    if opts.if_indexed {
        let differing = view
            .differing_fields(&alias, &layout)
            .await
            .map_err(VerifyError)?;
        if differing.is_empty() {
            // Every field has the type the table maps to now (int -> bigint is `long`
            // either way): nothing to rebuild.
            return Ok(Report {
                alias,
                previous,
                ..Report::default()
            });
        }
        tracing::info!(table = %name, alias, fields = ?differing, "fields whose type changed: rebuilding the index");
    }
    let history = match &opts.from {
        ReadFrom::Source => None,
        ReadFrom::Log(log) => {
            let (db, table) = (&schema.db, &schema.table);
            if view.written_with(db, table).await.map_err(VerifyError)?
                != crate::sink::elasticsearch::verify::Written::Current
            {
                return Err(VerifyError(format!(
                    "{alias} was written under another enrichment or mapping configuration than {} has now, and a log replays documents as they were written: reindex from the source (--from source) to apply the new one",
                    cfg.path.display()
                )));
            }
            Some(from_log::history(cfg, store.as_deref(), name, log)?)
        }
    };
    let (index, leftover) = new_index(cfg, &view, &alias, &previous, online, name).await?;
    view.create(&index, &layout).await.map_err(VerifyError)?;
    tracing::info!(table = %name, alias, index, online, "reindexing");

    let mut report = Report {
        alias: alias.clone(),
        previous: previous.clone(),
        index: index.clone(),
        ..Report::default()
    };
    let request = dual::Request {
        sink: view.sink.clone(),
        table: name.clone(),
        index: index.clone(),
        requested_ms: crate::event::now_ms(),
        rows: 0,
        estimate: history.as_ref().map_or(t.estimate, |h| h.records),
        resync: false,
        leftover: None,
    };
    let state_dir = &cfg.state.dir;
    let filled = async {
        begin(cfg, &view, &alias, &request, online).await?;
        let place = (state_dir.as_path(), alias.as_str(), &request);
        match &history {
            None => {
                let fill = Fill {
                    view: &view,
                    scan: scan.as_ref(),
                    name,
                    index: &index,
                    previous: &previous,
                    request: place,
                };
                fill.run(
                    &mut stage,
                    &schema,
                    &ids,
                    t.estimate,
                    opts.progress,
                    &mut report,
                )
                .await?;
            }
            Some(history) => {
                if online {
                    // Every change the daemon did not write to the new index is in
                    // the log once it checkpointed after it began to.
                    let began = crate::event::now_ms();
                    wait_for_daemon(cfg, |c| c.at_ms > began).await?;
                }
                let bar = progress(
                    opts.progress,
                    &format!("reindex {name} from {}", history.id),
                    history.records,
                );
                let replay = from_log::Replay {
                    cfg,
                    view: &view,
                    table: name,
                    index: &index,
                    history,
                };
                report.documents = replay
                    .run(&mut stage, |done| {
                        bar.set_position(done);
                        record_progress(place, done);
                    })
                    .await?;
                bar.finish_and_clear();
            }
        }
        swap(cfg, &view, &alias, &request, &previous, online, name).await
    }
    .await;
    end(
        cfg,
        &view,
        &request,
        filled,
        leftover,
        opts.delete_previous,
        &mut report,
    )
    .await?;
    drop(store);
    Ok(report)
}

/// The name of the new index behind `alias` (and the index an interrupted run left,
/// to delete after the swap), once no daemon writes to an earlier run's any more.
pub(crate) async fn new_index(
    cfg: &ConnectorConfig,
    view: &IndexView,
    alias: &str,
    previous: &[String],
    online: bool,
    name: &str,
) -> Result<(String, Option<String>), VerifyError> {
    // Never a name used before: a running daemon may still send a write it queued for
    // an interrupted run's index after it saw that run's request go, and Elasticsearch
    // creates a missing index on a write. The interrupted run's index (never behind the
    // alias, so never searched) is deleted once the alias moved.
    let versions = view.versions(alias).await.map_err(VerifyError)?;
    let index = view.next_index(alias, &versions);
    let state_dir = &cfg.state.dir;
    let leftover = dual::read_request(state_dir, alias)
        .map(|r| r.index)
        .filter(|i| !previous.contains(i) && versions.contains(i));
    dual::remove_request(state_dir, alias);
    if !online {
        dual::remove_answer(state_dir, alias);
    } else if wait_for(ANSWER_WAIT, || {
        dual::read_answer(state_dir, alias).is_none().then_some(())
    })
    .await
    .is_none()
    {
        return Err(VerifyError(format!(
            "the running daemon of {} still writes to the index an earlier reindex of {name} left ({}/{alias}.dual stays): is it stuck?",
            cfg.path.display(),
            dual::dir(state_dir).display()
        )));
    }
    Ok((index, leftover))
}

/// Starts a run: a running daemon is asked to write to the new index as well (and
/// answered), a stopped one finds the request as the record of the run (for `status`,
/// and for the next run to delete the index should this one be killed).
pub(crate) async fn begin(
    cfg: &ConnectorConfig,
    view: &IndexView,
    alias: &str,
    request: &dual::Request,
    online: bool,
) -> Result<(), VerifyError> {
    if online {
        ask_the_daemon(cfg, view, alias, request).await
    } else {
        write_request(&cfg.state.dir, alias, request)
    }
}

/// The new index filled: the alias moves to it, if the run is still the alias's (a
/// later run took over otherwise) and the daemon still writes there (a TRUNCATE while
/// filling makes it stop).
pub(crate) async fn swap(
    cfg: &ConnectorConfig,
    view: &IndexView,
    alias: &str,
    request: &dual::Request,
    previous: &[String],
    online: bool,
    name: &str,
) -> Result<(), VerifyError> {
    let index = &request.index;
    view.refresh(index).await.map_err(VerifyError)?;
    let state_dir = &cfg.state.dir;
    if online {
        let ours = |at: Option<u64>| at == Some(request.requested_ms);
        let answer = dual::read_answer(state_dir, alias);
        if !ours(dual::read_request(state_dir, alias).map(|r| r.requested_ms))
            || !ours(answer.as_ref().map(|a| a.requested_ms))
        {
            return Err(VerifyError(format!(
                "{name}: another reindex took over while this one filled {index}; the alias still points at {}",
                previous.join(", ")
            )));
        }
        if let Some(why) = answer.and_then(|a| a.stopped) {
            return Err(VerifyError(format!("{name}: {why}")));
        }
    }
    view.swap(alias, previous, index).await.map_err(VerifyError)
}

/// Ends a run either way: the daemon goes back to writing the alias alone (after the
/// swap its writes to the alias reach the new index; a request another run took over
/// stays); after a swap, the index an interrupted run left and, when asked, the
/// previous ones are deleted.
pub(crate) async fn end(
    cfg: &ConnectorConfig,
    view: &IndexView,
    request: &dual::Request,
    filled: Result<(), VerifyError>,
    leftover: Option<String>,
    delete_previous: bool,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let state_dir = &cfg.state.dir;
    let alias = report.alias.as_str();
    if dual::read_request(state_dir, alias).is_some_and(|r| r.requested_ms == request.requested_ms)
    {
        dual::remove_request(state_dir, alias);
    }
    filled?;
    tracing::info!(of = %request.table, alias, index = %request.index, documents = report.documents, "reindexed: the alias points at the new index");
    if let Some(l) = leftover {
        view.delete(&l).await.map_err(VerifyError)?;
        tracing::info!(
            alias,
            index = l,
            "deleted the index an interrupted reindex left"
        );
    }
    if delete_previous {
        for p in &report.previous {
            view.delete(p).await.map_err(VerifyError)?;
        }
        report.deleted_previous = true;
    }
    Ok(())
}

/// What the daemon runs for a schema-guard `reindex` verdict, and for a joined document
/// whose definition changed (`document NAME`): the index in every Elasticsearch sink
/// rebuilt beside the stream, as `tributary reindex` does beside a running daemon (the
/// previous index is kept).
pub fn for_the_daemon(cfg: &ConnectorConfig) -> crate::pipeline::rebuild::Reindexer {
    let cfg = Arc::new(cfg.clone());
    Arc::new(move |table: String| {
        let cfg = cfg.clone();
        Box::pin(async move {
            for sink in &cfg.sinks {
                if !matches!(sink, crate::config::SinkConfig::Elasticsearch(_)) {
                    continue;
                }
                let opts = Options {
                    document: crate::document::stage::rebuilt_document(&table).map(str::to_string),
                    table: table.clone(),
                    sink: Some(sink.id()),
                    if_indexed: true,
                    ..Options::default()
                };
                let r = reindex(&cfg, &opts).await.map_err(|e| e.to_string())?;
                if !r.index.is_empty() {
                    tracing::info!(index_of = %table, alias = %r.alias, index = %r.index, documents = r.documents, "index rebuilt beside the stream");
                }
            }
            Ok(())
        })
    })
}

/// Waits up to `limit` for `found` to give something; None when it never did.
async fn wait_for<T>(limit: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + limit;
    loop {
        if let Some(t) = found() {
            return Some(t);
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks the running daemon's sink to write the table's changes to the new index too,
/// and waits for its answer; refused when the daemon writes the table's documents under
/// another configuration than the connector file has now (its documents would differ
/// from the chunks').
fn write_request(
    state_dir: &Path,
    alias: &str,
    request: &dual::Request,
) -> Result<(), VerifyError> {
    dual::write_request(state_dir, alias, request).map_err(|e| {
        VerifyError(format!(
            "cannot write the reindex request into {}: {e}",
            dual::dir(state_dir).display()
        ))
    })
}

async fn ask_the_daemon(
    cfg: &ConnectorConfig,
    view: &IndexView,
    alias: &str,
    request: &dual::Request,
) -> Result<(), VerifyError> {
    let state_dir = &cfg.state.dir;
    write_request(state_dir, alias, request)?;
    let answer = wait_for(ANSWER_WAIT, || {
        dual::read_answer(state_dir, alias).filter(|a| a.requested_ms == request.requested_ms)
    })
    .await;
    let Some(answer) = answer else {
        return Err(VerifyError(format!(
            "the daemon of {} holds the state dir but did not take up the reindex request within {}s: is it running this release and streaming? (or stop it and reindex then)",
            cfg.path.display(),
            ANSWER_WAIT.as_secs()
        )));
    };
    let (db, table) = request
        .table
        .split_once('.')
        .unwrap_or(("", &request.table));
    let ours = view.fingerprint(db, table);
    if answer.fingerprint != ours {
        return Err(VerifyError(format!(
            "the running daemon writes {} with another enrichment or mapping configuration than {} has now (it read the file when it started): restart it, then reindex",
            request.table,
            cfg.path.display()
        )));
    }
    Ok(())
}

/// Records `rows` done in the run's request, for `tributary status`: not over a later
/// run's request (that run took over; this one fails before the swap). Progress only:
/// a failed write is not worth stopping for.
fn record_progress((state_dir, alias, request): (&Path, &str, &dual::Request), rows: u64) {
    if dual::read_request(state_dir, alias).is_some_and(|r| r.requested_ms == request.requested_ms)
    {
        let progress = dual::Request {
            rows,
            ..request.clone()
        };
        let _ = dual::write_request(state_dir, alias, &progress);
    }
}

/// Fills the new index from the source, chunk by chunk.
struct Fill<'a> {
    view: &'a IndexView,
    scan: &'a dyn crate::source::scan::TableScan,
    name: &'a str,
    index: &'a str,
    previous: &'a [String],
    /// Where progress goes for `tributary status`: the run's request.
    request: (&'a Path, &'a str, &'a dual::Request),
}

impl Fill<'_> {
    async fn run(
        &self,
        stage: &mut Stage,
        schema: &Arc<crate::event::TableSchema>,
        ids: &crate::sink::elasticsearch::DocId,
        estimate: u64,
        show: bool,
        report: &mut Report,
    ) -> Result<(), VerifyError> {
        let name = self.name;
        let bar = progress(show, &format!("reindex {name}"), estimate);
        let mut after = None;
        let mut rows = 0;
        loop {
            let mut tries = 0;
            let chunk = loop {
                let c = self
                    .scan
                    .chunk(name, after.as_deref(), CHUNK)
                    .await
                    .map_err(err)?;
                if c.window.exact {
                    break c;
                }
                tries += 1;
                if tries >= EXACT_TRIES {
                    return Err(VerifyError(format!(
                        "{name}: transactions kept running at every snapshot of a chunk ({EXACT_TRIES} tries), so no chunk could be versioned exactly; run the reindex when the table is quieter. The alias still points at {}",
                        self.previous.join(", ")
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let n = chunk.rows.len() as u64;
            let looked = render(stage, self.view, schema, chunk.rows, &chunk.window, ids).await?;
            report.not_enriched += n - looked.len() as u64;
            let writes: Vec<Repair> = looked
                .into_iter()
                .map(|l| Repair::Index {
                    event: l.event,
                    id: l.id,
                })
                .collect();
            report.documents += self
                .view
                .write(self.index, &writes)
                .await
                .map_err(VerifyError)?;
            bar.inc(n);
            rows += n;
            record_progress(self.request, rows);
            match chunk.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}
