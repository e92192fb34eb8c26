//! `tributary reindex --document NAME`: a joined document's index rebuilt into a new
//! concrete index, then the alias moved to it in one request, as for a table.
//!
//! The documents come from the source: the document's tables are read through the
//! snapshot read into a state of reindex's own (as verify reads them), and every
//! document is built from it exactly as the daemon builds it. The tables are read one
//! after the other, so a document may show rows read at different positions; each is
//! written with the version of the first read. Beside a running daemon its sink writes
//! every document it builds to the new index as well, from before the first read on,
//! so a document a change touched after that read gets the change's version, newer,
//! and wins whichever of the two writes comes first; one no change touched is built
//! from rows that stood still throughout the reads. With the daemon stopped, its
//! restart rebuilds what its checkpoint had not delivered, with newer versions.

use std::sync::Arc;

use super::{begin, end, new_index, store, swap, Options, Report};
use crate::config::ConnectorConfig;
use crate::document::stage::{document_schema, event};
use crate::enrich::Stage;
use crate::sink::elasticsearch::dual;
use crate::sink::elasticsearch::verify::Repair;
use crate::sink::elasticsearch::DocId;
use crate::verify::{err, index_view, VerifyError};

/// Documents per bulk request.
const PAGE: usize = 1000;

pub(super) async fn reindex(
    cfg: &ConnectorConfig,
    opts: &Options,
    name: &str,
) -> Result<Report, VerifyError> {
    let store = store(cfg)?;
    let online = store.is_none();
    let def = cfg
        .document
        .iter()
        .find(|d| d.name.get_ref() == name)
        .ok_or_else(|| {
            VerifyError(format!(
                "--document {name}: {} defines no such [[document]]",
                cfg.path.display()
            ))
        })?;
    let view = index_view(cfg, opts.sink.as_deref())?;
    let source = cfg.source.source();
    let scan = source.scan(&cfg.connector_name());
    let lookups = source.lookup(&cfg.connector_name());
    let mut stage = Stage::detached(&cfg.enrich, &cfg.path, || lookups, store.as_ref())
        .await
        .map_err(err)?;
    let shapes = crate::pipeline::document_shapes(cfg, &mut stage)
        .await
        .map_err(err)?;
    let shape = &shapes[name];
    let schema = Arc::new(document_schema(&cfg.connector_name(), shape).map_err(err)?);
    let alias = name.to_lowercase();
    let previous = view.behind(&alias).await.map_err(VerifyError)?;
    if previous.is_empty() && opts.if_indexed {
        return Ok(Report {
            alias,
            ..Report::default()
        });
    }
    if previous.is_empty() {
        return Err(VerifyError(format!(
            "there is no index alias {alias} yet (the daemon creates it with the document's first build): nothing to reindex"
        )));
    }
    let what = format!("document {name}");
    let (index, leftover) = new_index(cfg, &view, &alias, &previous, online, &what).await?;
    view.create_document(&index, name, shape)
        .await
        .map_err(VerifyError)?;
    tracing::info!(document = %name, alias, index, online, "reindexing");
    let mut report = Report {
        alias: alias.clone(),
        previous: previous.clone(),
        index: index.clone(),
        ..Report::default()
    };
    let request = dual::Request {
        sink: view.sink.clone(),
        table: what.clone(),
        index: index.clone(),
        requested_ms: crate::event::now_ms(),
        rows: 0,
        estimate: 0,
        resync: false,
        leftover: None,
    };
    let filled = async {
        begin(cfg, &view, &alias, &request, online).await?;
        let read = crate::verify::documents::read_tables(
            cfg,
            scan.as_ref(),
            &mut stage,
            def,
            shape,
            opts.progress,
            "reindex",
        )
        .await?;
        if let Some(read) = read {
            let ids = DocId::Columns(schema.primary_key.clone());
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = read.state.page(after.as_deref(), PAGE).map_err(err)?;
                let Some((k, _)) = page.last() else { break };
                after = Some(k.clone());
                let writes: Vec<Repair> = page
                    .into_iter()
                    .filter_map(|(_, b)| {
                        let b = crate::document::state::Built {
                            version: read.first,
                            ..b
                        };
                        let e = event(&schema, b, &read.last.after, 0);
                        // (The id only: the bulk body renders the document.)
                        let id = ids.of(&e, e.after.as_ref()?)?;
                        Some(Repair::Index { event: e, id })
                    })
                    .collect();
                view.write(&index, &writes).await.map_err(VerifyError)?;
                report.documents += writes.len() as u64;
                super::record_progress(
                    (cfg.state.dir.as_path(), alias.as_str(), &request),
                    report.documents,
                );
            }
        }
        swap(cfg, &view, &alias, &request, &previous, online, &what).await
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
