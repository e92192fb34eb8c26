//! Elasticsearch sink: one index per table behind an alias, versioned bulk writes,
//! retries that never drop data, dead letters for documents rejected for good.
//!
//! Written against the Elasticsearch REST API through the official crate, so it works
//! unchanged against Elasticsearch 8 and OpenSearch 2/3 (tests use osmem-server).

pub mod bulk;
mod config;
mod documents;
pub mod dual;
pub mod mapping;
mod names;
mod response;
mod resync;
mod sender;
pub mod verify;

pub use bulk::{document_id, DocId};
pub use config::{DecimalMapping, ElasticsearchSinkConfig, IdConfig};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{MultiNodeConnectionPool, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesExistsAliasParts, IndicesGetAliasParts,
    IndicesGetMappingParts, IndicesPutMappingParts, IndicesRefreshParts,
};
use elasticsearch::{Elasticsearch, MgetParts};
use serde_json::json;
use tokio::sync::Mutex;

use self::config::redact;
use self::response::classify;
use self::sender::{Rejected, Retry, Sender};
use super::{Ack, SharedBatch, Sink, SinkContext, SinkError};
use crate::event::{
    ChangeEvent, Column, Op, PerSchema, SchemaChange, SourceMessage, Stated, TableSchema, Value,
};
use crate::failure::Failure;
use crate::journal::{Journal, Settings as JournalSettings};

#[derive(Default)]
struct Mapped {
    fields: Vec<String>,
    /// The schema version `_meta` names.
    version: u32,
    /// Fields whose columns the source dropped, as `_meta.deprecated_fields` says.
    deprecated: Vec<String>,
    /// The configuration the index was written under, as `_meta.document_fingerprint`
    /// says (None: not recorded). Kept through mapping updates: a new column does not
    /// make the documents already there current.
    fingerprint: Option<String>,
}

/// Where a table's documents go and how they are identified.
#[derive(Clone)]
enum Target {
    Index {
        alias: Arc<str>,
        id: DocId,
    },
    /// No primary key and no `ids` setting: skipped (warned once).
    Skip,
    /// Elasticsearch cannot take the table under this name (another table holds the
    /// alias, or a column cannot be mapped): every change goes to the dead letters
    /// with the reason, so nothing is lost and the other tables flow.
    Refuse {
        alias: Arc<str>,
        error_type: &'static str,
        reason: Arc<str>,
    },
}

pub struct ElasticsearchSink {
    id: String,
    cfg: ElasticsearchSinkConfig,
    client: Elasticsearch,
    /// Where each schema's events go.
    targets: PerSchema<Target>,
    /// Aliases known to exist, with the fields their mapping has.
    mapped: HashMap<String, Mapped>,
    /// Which table each alias belongs to (the first to claim it in this run, or the
    /// one the index's `_meta.source_table` names).
    claims: HashMap<String, String>,
    retry: Retry,
    sender: Sender,
    /// Written by the checkpoints' acks, one at a time, in order.
    dead_letters: Arc<Mutex<Journal>>,
    /// The schema policy (its unindexed columns) and what shapes documents upstream.
    context: SinkContext,
    /// New indexes an online reindex fills, written to as well (dual.rs).
    dual: dual::DualWrites,
    /// The tables that get an index of their own (`tables`; None: all).
    tables: Option<globset::GlobSet>,
}

impl crate::sink::SinkKind for ElasticsearchSinkConfig {
    fn id(&self) -> String {
        ElasticsearchSinkConfig::id(self)
    }

    /// `dead_letter_dir` defaults to `<state dir>/dead-letters/<sink name>`.
    fn fill_defaults(&mut self, state_dir: &std::path::Path) {
        if self.dead_letter_dir.as_os_str().is_empty() {
            let name: String = self
                .id()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            self.dead_letter_dir = state_dir.join("dead-letters").join(name);
        }
    }

    fn validate(
        &self,
        path: &std::path::Path,
        text: &str,
    ) -> Result<(), crate::settings::ConfigError> {
        self.validate_section(path, text)
    }

    fn open(
        &self,
        id: String,
        cursor: Option<serde_json::Value>,
        context: &SinkContext,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(ElasticsearchSink::open(
            id,
            self,
            cursor,
            context.clone(),
        )?))
    }

    fn dead_letter_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.dead_letter_dir.clone())
    }
}

impl ElasticsearchSink {
    /// `cursor` is the dead-letter stream's cursor stored with the last checkpoint.
    /// `context.policy` names the columns kept unindexed (read at start: a SIGHUP reload
    /// does not change existing mappings).
    pub fn open(
        id: String,
        cfg: &ElasticsearchSinkConfig,
        cursor: Option<serde_json::Value>,
        context: SinkContext,
    ) -> Result<Self, SinkError> {
        let client = client(cfg).map_err(|m| SinkError::new(&id, m))?;
        let dlq_cfg = JournalSettings {
            segment_bytes: 64 << 20,
            ..JournalSettings::at(&cfg.dead_letter_dir, cfg.file_mode)
        };
        let dead_letters = Journal::open(format!("{id}/dead-letters"), &dlq_cfg, cursor)?;
        let retry = Retry {
            sink: Arc::from(id.as_str()),
            max_backoff: Duration::from_secs(cfg.max_backoff_secs),
        };
        let sender = Sender::new(client.clone(), retry.clone(), cfg);
        let dual = dual::DualWrites::watch(context.state_dir.clone(), id.clone(), {
            let (cfg, context) = (cfg.clone(), context.clone());
            move |name: &str| {
                let (db, table) = name.split_once('.').unwrap_or(("", name));
                fingerprint(&cfg, &context, db, table)
            }
        });
        let tables = cfg.tables.matcher().map_err(|m| SinkError::new(&id, m))?;
        Ok(ElasticsearchSink {
            id,
            cfg: cfg.clone(),
            client,
            targets: PerSchema::default(),
            mapped: HashMap::new(),
            claims: HashMap::new(),
            retry,
            sender,
            dead_letters: Arc::new(Mutex::new(dead_letters)),
            context,
            dual,
            tables,
        })
    }

    fn err(&self, m: impl Into<String>) -> SinkError {
        SinkError::new(&self.id, m)
    }

    /// The target of an event's table, creating index and alias on first sight.
    async fn target(&mut self, table: &Arc<TableSchema>) -> Result<Target, SinkError> {
        if let Some(t) = self.targets.get(table) {
            return Ok(t.clone());
        }
        if table.kind == crate::event::DOCUMENT_KIND {
            let target = self.document_target(table).await?;
            self.targets.insert(table, target.clone());
            return Ok(target);
        }
        let name = table.qualified_name();
        if self.tables.as_ref().is_some_and(|t| !t.is_match(&name)) {
            // Left out by `tables`: the documents read it, its own index is not wanted.
            self.targets.insert(table, Target::Skip);
            return Ok(Target::Skip);
        }
        let id = doc_id(&self.cfg, table).map_err(|m| self.err(m))?;
        let target = match id {
            None => {
                tracing::warn!(sink = %self.id, table = %name, "table has no primary key: its changes are not indexed (set ids.\"{name}\" = \"row_hash\" or a column list in the sink to index them)");
                Target::Skip
            }
            Some(id) => 'target: {
                let alias = self.cfg.alias(&table.db, &table.table);
                let refused = |error_type, reason: String| {
                    tracing::error!(sink = %self.id, table = %name, alias, error_type, reason, "the table's changes go to the dead-letter stream");
                    Target::Refuse {
                        alias: Arc::from(alias.as_str()),
                        error_type,
                        reason: Arc::from(reason),
                    }
                };
                if let Some((column, why)) = names::unmappable_column(&table.columns) {
                    break 'target refused("unmappable_column", format!(
                        "{why}. Rename column `{column}` of {name} with an [[enrich]] step (kind = \"rename\", columns = {{ \"{column}\" = \"new_name\" }}), then snapshot the table again"
                    ));
                }
                let owner = self.claims.get(&alias).filter(|o| **o != name).cloned();
                let ensured = match (owner, self.mapped.get(&alias)) {
                    (Some(owner), _) => Err(owner),
                    (None, Some(m)) => Ok((m.fields.clone(), m.version, m.fingerprint.clone())),
                    (None, None) => self.ensure_index(&alias, table).await?,
                };
                let (fields, version, fingerprint) = match ensured {
                    Ok(found) => found,
                    Err(owner) => {
                        break 'target refused("index_name_collision", format!(
                            "{name} and {owner} both map to the index alias `{alias}`, and one index cannot hold both (their ids would overwrite each other, a TRUNCATE would empty both). Give {name} its own alias with [[sink]] indexes = {{ \"{name}\" = \"...\" }}, then snapshot it"
                        ));
                    }
                };
                self.claims.insert(alias.clone(), name.clone());
                // Columns new to the index (added on the source, also while the daemon
                // was stopped), and fields whose columns are gone (deprecated: kept).
                let added: Vec<Column> = table
                    .columns
                    .iter()
                    .filter(|c| !fields.contains(&c.name))
                    .cloned()
                    .collect();
                let mut deprecated: Vec<String> = fields
                    .iter()
                    .filter(|f| !table.columns.iter().any(|c| c.name == **f))
                    .cloned()
                    .collect();
                deprecated.sort();
                let known = self.mapped.entry(alias.clone()).or_default();
                let changed = !added.is_empty()
                    || deprecated != known.deprecated
                    || table.schema_version > version;
                if changed {
                    self.extend_mapping(&alias, table, &added, &deprecated, fingerprint.as_deref())
                        .await?;
                }
                let known = self.mapped.entry(alias.clone()).or_default();
                known.fingerprint = fingerprint;
                known.fields = fields;
                known.fields.extend(added.into_iter().map(|c| c.name));
                known.deprecated = deprecated;
                // What `_meta` says now.
                known.version = if changed {
                    table.schema_version
                } else {
                    version
                };
                Target::Index {
                    alias: Arc::from(alias),
                    id,
                }
            }
        };
        self.targets.insert(table, target.clone());
        Ok(target)
    }

    /// A new schema version: fields for added columns go into the mapping with the
    /// types of the type table (not guessed by dynamic mapping); `_meta` gets the new
    /// version and the deprecated fields (columns dropped on the source, whose fields
    /// and values stay in the index).
    async fn extend_mapping(
        &self,
        alias: &str,
        table: &TableSchema,
        added: &[Column],
        deprecated: &[String],
        fingerprint: Option<&str>,
    ) -> Result<(), SinkError> {
        let unindexed = self.context.policy.unindexed(&table.qualified_name());
        let options = mapping::FieldOptions {
            decimal: self.cfg.decimal,
            unindexed,
        };
        let body = mapping::update_body(table, added, deprecated, options, fingerprint);
        // An index an online reindex fills gets the fields too (its documents would
        // otherwise have them mapped by guess).
        let filling = self.dual.targets.get(alias).cloned();
        for target in std::iter::once(alias).chain(filling.as_deref()) {
            self.put_mapping(target, &body, "extending the mapping")
                .await?;
        }
        let names: Vec<&str> = added.iter().map(|c| c.name.as_str()).collect();
        tracing::info!(sink = %self.id, alias, added = ?names, deprecated = ?deprecated, schema_version = table.schema_version, "mapping updated");
        Ok(())
    }

    /// Adopts an existing alias, or creates `<alias>_v1` with the mapping derived from
    /// the schema and points the alias at it. Never drops anything. Returns the fields
    /// the index maps, the schema version its `_meta` names (0 for an adopted index:
    /// unknown, so `_meta` is written again) and the configuration it was written under;
    /// or Err with the other table an adopted index's `_meta.source_table` names.
    #[allow(clippy::type_complexity)]
    async fn ensure_index(
        &self,
        alias: &str,
        table: &TableSchema,
    ) -> Result<Result<(Vec<String>, u32, Option<String>), String>, SinkError> {
        if self.alias_exists(alias).await? {
            tracing::info!(sink = %self.id, alias, table = %table.qualified_name(), "adopting existing index alias");
            let current = self.mapping(alias).await?;
            // Every concrete index behind the alias: {"<index>": {"mappings": {...}}}.
            let mut fields = Vec::new();
            let mut fingerprints = std::collections::BTreeSet::new();
            for index in current.as_object().into_iter().flat_map(|m| m.values()) {
                let mappings = &index["mappings"];
                fingerprints.insert(mappings["_meta"]["document_fingerprint"].as_str());
                if let Some(owner) = mappings["_meta"]["source_table"].as_str() {
                    if owner != table.qualified_name() {
                        return Ok(Err(owner.to_string()));
                    }
                }
                if let Some(p) = mappings["properties"].as_object() {
                    fields.extend(p.keys().cloned());
                }
            }
            // Indexes written under different configurations: not recorded as one.
            let fingerprint = match fingerprints.into_iter().collect::<Vec<_>>()[..] {
                [Some(f)] => Some(f.to_string()),
                _ => None,
            };
            return Ok(Ok((fields, 0, fingerprint)));
        }
        let concrete = format!("{alias}_v1");
        let fingerprint = self.create_index(&concrete, table).await?;
        self.swap_aliases(json!({"actions": [{"add": {"index": concrete, "alias": alias, "is_write_index": true}}]}))
            .await?;
        tracing::info!(sink = %self.id, alias, index = %concrete, table = %table.qualified_name(), "created index and alias");
        Ok(Ok((
            table.columns.iter().map(|c| c.name.clone()).collect(),
            table.schema_version,
            Some(fingerprint),
        )))
    }

    /// A table dropped at the source, under a `deprecate` verdict: its index stays,
    /// and each concrete index behind its alias records since when its source is gone
    /// (`_meta.source_dropped_ms`; kept from the first time when told again).
    async fn mark_dropped(&self, table: &str) -> Result<(), SinkError> {
        let Some((db, name)) = table.split_once('.') else {
            return Ok(());
        };
        let alias = self.cfg.alias(db, name);
        if self.tables.as_ref().is_some_and(|t| !t.is_match(table))
            || !self.alias_exists(&alias).await?
        {
            return Ok(());
        }
        let current = self.mapping(&alias).await?;
        let now = crate::event::now_ms();
        for (index, m) in current.as_object().into_iter().flatten() {
            let mut meta = m["mappings"]["_meta"].clone();
            if meta["source_table"].as_str() != Some(table) || !meta["source_dropped_ms"].is_null()
            {
                continue;
            }
            meta["source_dropped_ms"] = now.into();
            self.put_mapping(
                index,
                &json!({ "_meta": meta }),
                "recording the dropped table",
            )
            .await?;
            tracing::info!(sink = %self.id, alias, index, table, "the source table was dropped: its index is kept, its _meta says so");
        }
        Ok(())
    }

    /// `GET <alias>/_mapping`: `{"<index>": {"mappings": {...}}}` for each concrete
    /// index behind it.
    async fn mapping(&self, alias: &str) -> Result<serde_json::Value, SinkError> {
        let client = &self.client;
        self.read_json("reading the mapping", || async move {
            client
                .indices()
                .get_mapping(IndicesGetMappingParts::Index(&[alias]))
                .send()
                .await
        })
        .await
    }

    /// `PUT <target>/_mapping` with `body`, retried like every request (`what` names
    /// it in messages).
    async fn put_mapping(
        &self,
        target: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> Result<(), SinkError> {
        let client = &self.client;
        self.retry
            .run(what, || async move {
                ok_attempt(
                    client
                        .indices()
                        .put_mapping(IndicesPutMappingParts::Index(&[target]))
                        .body(body.clone())
                        .send()
                        .await,
                    false,
                )
                .await
            })
            .await
    }

    /// Whether `alias` exists.
    async fn alias_exists(&self, alias: &str) -> Result<bool, SinkError> {
        let client = &self.client;
        self.retry
            .run("checking the alias", || async move {
                match client
                    .indices()
                    .exists_alias(IndicesExistsAliasParts::Name(&[alias]))
                    .send()
                    .await
                {
                    Err(e) => Err(Failure::Transient(e.to_string())),
                    Ok(r) if r.status_code().as_u16() == 200 => Ok(true),
                    Ok(r) if r.status_code().as_u16() == 404 => Ok(false),
                    Ok(r) => status_attempt(r).await,
                }
            })
            .await
    }

    /// Creates a concrete index with the mapping derived from the schema (an index that
    /// already exists is fine: an earlier attempt made it).
    /// Returns the configuration's fingerprint the index's `_meta` records.
    async fn create_index(&self, concrete: &str, table: &TableSchema) -> Result<String, SinkError> {
        let unindexed = self.context.policy.unindexed(&table.qualified_name());
        let options = mapping::FieldOptions {
            decimal: self.cfg.decimal,
            unindexed,
        };
        let fingerprint = fingerprint(&self.cfg, &self.context, &table.db, &table.table);
        let body = mapping::create_index_body(table, options, &self.cfg.gc_deletes, &fingerprint);
        self.create_index_with(concrete, &body).await?;
        Ok(fingerprint)
    }

    /// Creates a concrete index with `body` (settings and mappings); one that already
    /// exists is fine (an earlier attempt made it).
    async fn create_index_with(
        &self,
        concrete: &str,
        body: &serde_json::Value,
    ) -> Result<(), SinkError> {
        let client = &self.client;
        let b = body;
        self.retry
            .run("creating the index", || async move {
                match client
                    .indices()
                    .create(IndicesCreateParts::Index(concrete))
                    .body(b.clone())
                    .send()
                    .await
                {
                    Err(e) => Err(Failure::Transient(e.to_string())),
                    Ok(r) if r.status_code().is_success() => Ok(()),
                    Ok(r) => {
                        let status = r.status_code().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        if status == 400 && text.contains("already_exists") {
                            Ok(())
                        } else {
                            Err(match classify(status, &text) {
                                Failure::Fatal(m) => {
                                    Failure::Fatal(format!("creating index {concrete}: {m}"))
                                }
                                transient => transient,
                            })
                        }
                    }
                }
            })
            .await?;
        Ok(())
    }

    /// Applies alias actions atomically (`_aliases`).
    async fn swap_aliases(&self, actions: serde_json::Value) -> Result<(), SinkError> {
        let client = &self.client;
        let a = &actions;
        self.retry
            .run("updating aliases", || async move {
                ok_attempt(
                    client
                        .indices()
                        .update_aliases()
                        .body(a.clone())
                        .send()
                        .await,
                    false,
                )
                .await
            })
            .await
    }

    /// TRUNCATE: a new empty concrete index (`<alias>_v<n+1>`, same mapping) takes the
    /// alias in one atomic swap, then the old one is deleted. Readers never see a half
    /// emptied table, and no delete-by-query is needed (OpenSearch and Elasticsearch
    /// both have the swap). Replays stay safe: a truncate replayed after a crash just
    /// swaps again, and the changes after it are replayed too.
    async fn truncate(&mut self, alias: &str, table: &TableSchema) -> Result<(), SinkError> {
        // Writes queued before the truncate belong to the old index.
        self.sender.drain().await;
        // The rows a resync's snapshot copied are gone now, and the empty index is
        // exact: the resync is over. An online reindex has to start over.
        let resynced = self.end_resync(alias);
        self.dual.stop(
            alias,
            "the table was truncated while the new index was filled; run the reindex again",
        );
        let (old, all) = self.indexes_of(alias).await?;
        // After every version there is, behind the alias or not: the next one may be
        // an index a reindex fills (or an interrupted one left), full of rows.
        let concrete = next_concrete(alias, &all);
        let fingerprint = self.create_index(&concrete, table).await?;
        self.swap_aliases(move_alias(alias, &old, &concrete))
            .await?;
        for i in old.iter().chain(&resynced) {
            self.delete_index(i, "deleting the truncated index").await?;
        }
        // An empty index is written under the configuration of today.
        if let Some(m) = self.mapped.get_mut(alias) {
            m.fingerprint = Some(fingerprint);
        }
        tracing::info!(sink = %self.id, alias, index = %concrete, table = %table.qualified_name(), "truncate: the alias now points at a new empty index");
        Ok(())
    }

    /// The concrete indexes behind `alias`, and every `<alias>_v<N>` there is (those
    /// behind it included).
    async fn indexes_of(&self, alias: &str) -> Result<(Vec<String>, Vec<String>), SinkError> {
        let client = &self.client;
        let current = self
            .read_json("reading the alias", || async move {
                client
                    .indices()
                    .get_alias(IndicesGetAliasParts::Name(&[alias]))
                    .send()
                    .await
            })
            .await?;
        let mut behind: Vec<String> = current
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        behind.sort();
        let pattern = format!("{alias}_v*");
        let pattern = pattern.as_str();
        let listed = self
            .read_json("listing the alias's indexes", || async move {
                client
                    .indices()
                    .get_alias(IndicesGetAliasParts::Index(&[pattern]))
                    .send()
                    .await
            })
            .await?;
        let mut all = versions_in(alias, &listed);
        all.extend(behind.iter().cloned());
        Ok((behind, all))
    }

    /// A JSON answer of the cluster, retried like every request (`what` names it).
    async fn read_json<F, Fut>(&self, what: &str, send: F) -> Result<serde_json::Value, SinkError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
            Output = Result<elasticsearch::http::response::Response, elasticsearch::Error>,
        >,
    {
        let send = &send;
        self.retry
            .run(
                what,
                || async move { json_attempt(send().await, what).await },
            )
            .await
    }

    /// Deletes concrete index `name` (gone already is fine).
    async fn delete_index(&self, name: &str, what: &str) -> Result<(), SinkError> {
        let client = &self.client;
        self.retry
            .run(what, || async move {
                ok_attempt(
                    client
                        .indices()
                        .delete(IndicesDeleteParts::Index(&[name]))
                        .send()
                        .await,
                    true,
                )
                .await
            })
            .await
    }

    /// Makes what was written to concrete index `name` searchable now.
    async fn refresh_index(&self, name: &str) -> Result<(), SinkError> {
        let client = &self.client;
        self.retry
            .run("refreshing the index", || async move {
                ok_attempt(
                    client
                        .indices()
                        .refresh(IndicesRefreshParts::Index(&[name]))
                        .send()
                        .await,
                    false,
                )
                .await
            })
            .await
    }

    /// Queues the writes for one row change: a delete, or an index of the new row
    /// (merged first when columns were left out), plus a delete of the old document
    /// when an update changed the row's id. A change whose id cannot be worked out
    /// goes to the dead letters, never silently nowhere.
    async fn write(
        &mut self,
        e: &ChangeEvent,
        alias: Arc<str>,
        ids: &DocId,
    ) -> Result<(), SinkError> {
        let old_id = e.before.as_ref().and_then(|b| ids.of(e, b));
        if e.op == Op::Delete {
            match old_id {
                Some(id) => self.push_delete(e, &alias, &id).await,
                None => self.reject(e, alias, "row_without_id", "the delete does not carry the values of the document id (for ids = \"row_hash\" the source must send whole old rows: REPLICA IDENTITY FULL on PostgreSQL)"),
            }
            return Ok(());
        }
        let Some(after) = e.after.as_ref() else {
            return Ok(());
        };
        let mut document = None;
        let new_id = if e.is_partial() {
            // Unchanged TOAST columns: the update API takes no external version, so
            // merge here and index the whole document with the event's version.
            let id = match ids {
                DocId::RowHash => None,
                DocId::Columns(_) => ids.of(e, after),
            };
            match self.merged_document(e, &alias, ids, id.as_deref()).await? {
                Some((doc, merged_id)) => {
                    document = Some(doc);
                    merged_id.or(id)
                }
                None => {
                    self.reject(e, alias, "partial_row_without_document", "the change leaves columns unchanged (TOAST) and the index holds no document to take them from; re-snapshot the table or set REPLICA IDENTITY FULL on it");
                    return Ok(());
                }
            }
        } else {
            ids.of(e, after)
        };
        let Some(new_id) = new_id else {
            self.reject(
                e,
                alias,
                "row_without_id",
                "the row does not carry the values of its document id",
            );
            return Ok(());
        };
        if e.op == Op::Update {
            match &old_id {
                Some(old) if *old != new_id => self.push_delete(e, &alias, old).await,
                Some(_) => {}
                // Without the old values the old document cannot be found: say so
                // rather than leave it behind unnoticed.
                None if *ids == DocId::RowHash => {
                    self.reject(e, alias.clone(), "row_without_id", "the update does not carry the whole old row, so the document of the old row cannot be removed (ids = \"row_hash\" needs REPLICA IDENTITY FULL on PostgreSQL); the new row is indexed");
                }
                None => {}
            }
        }
        self.push(e, &alias, &new_id, document.as_deref()).await;
        Ok(())
    }

    /// Queues an index of `e`'s row under `id`, into the alias and into the index an
    /// online reindex fills, if one does.
    async fn push(&mut self, e: &ChangeEvent, alias: &Arc<str>, id: &str, document: Option<&[u8]>) {
        if let Some(filling) = self.dual.targets.get(&**alias).cloned() {
            self.sender.push(e, filling, id, document).await;
        }
        self.sender.push(e, alias.clone(), id, document).await;
    }

    /// `push` for a delete.
    async fn push_delete(&mut self, e: &ChangeEvent, alias: &Arc<str>, id: &str) {
        if let Some(filling) = self.dual.targets.get(&**alias).cloned() {
            self.sender.push_delete(e, filling, id).await;
        }
        self.sender.push_delete(e, alias.clone(), id).await;
    }

    fn reject(&mut self, e: &ChangeEvent, index: Arc<str>, error_type: &str, reason: &str) {
        self.sender.reject(Rejected {
            index,
            status: 0,
            error: json!({ "type": error_type, "reason": reason }),
            event: e.clone(),
        });
    }

    /// The whole document for a partial row: the absent values from the event's
    /// `before` image (REPLICA IDENTITY FULL), else from the document the index holds
    /// (read after sending everything queued, so earlier writes are there). None when
    /// neither has them.
    /// Returns the document and, for `row_hash` ids, the id of the merged row.
    async fn merged_document(
        &mut self,
        e: &ChangeEvent,
        alias: &str,
        ids: &DocId,
        id: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, SinkError> {
        let after = e.after.as_ref().expect("partial rows have an after image");
        let absent: Vec<usize> = (0..after.len())
            .filter(|&i| matches!(after[i], Value::Absent))
            .collect();
        if let Some(before) = &e.before {
            if absent
                .iter()
                .all(|&i| !matches!(before.get(i), None | Some(Value::Absent)))
            {
                let mut row = after.clone();
                for &i in &absent {
                    row[i] = before[i].clone();
                }
                let mut doc = Vec::with_capacity(256);
                e.write_row_json(&row, &mut doc);
                return Ok(Some((doc, ids.of(e, &row))));
            }
        }
        // A row hash needs the whole row; the index cannot be asked for it by id.
        let Some(id) = id else { return Ok(None) };
        self.sender.drain().await;
        let client = &self.client;
        let body = json!({ "ids": [id] });
        let b = &body;
        let response: Mget = self
            .retry
            .run("reading a document to merge", || async move {
                let sent = client
                    .mget(MgetParts::Index(alias))
                    .body(b.clone())
                    .send()
                    .await;
                json_attempt(sent, "_mget").await
            })
            .await?;
        let Some(MgetDoc {
            found: true,
            source: Some(mut stored),
        }) = response.docs.into_iter().next()
        else {
            return Ok(None);
        };
        // The stored values go back in as they are (raw JSON): they are what this
        // sink rendered before, and may nest deeper than a parser's recursion limit.
        let mut row = after.clone();
        for &i in &absent {
            match stored.remove(&e.table.columns[i].name) {
                Some(v) => row[i] = Value::Json(v),
                None => return Ok(None),
            }
        }
        let mut doc = Vec::with_capacity(256);
        e.write_row_json(&row, &mut doc);
        Ok(Some((doc, None)))
    }
}

/// An `_mget` answer, with each stored field kept as raw JSON.
#[derive(serde::Deserialize)]
struct Mget {
    docs: Vec<MgetDoc>,
}

#[derive(serde::Deserialize)]
struct MgetDoc {
    #[serde(default)]
    found: bool,
    #[serde(rename = "_source")]
    source: Option<HashMap<String, Box<serde_json::value::RawValue>>>,
}

/// The client for a sink's nodes, credentials and CA.
/// The next concrete index of `alias`: `<alias>_v<N+1>` after the highest `_vN` among
/// `existing` (truncate and reindex both make one). Callers pass every version there
/// is, not only those behind the alias: a name is never used twice.
fn next_concrete(alias: &str, existing: &[String]) -> String {
    let next = existing
        .iter()
        .filter_map(|i| version_of(alias, i))
        .max()
        .unwrap_or(0)
        + 1;
    format!("{alias}_v{next}")
}

/// N when `index` is `<alias>_v<N>`.
fn version_of(alias: &str, index: &str) -> Option<u64> {
    index
        .strip_prefix(alias)?
        .strip_prefix("_v")?
        .parse::<u64>()
        .ok()
}

/// The versions of `alias` among the indexes of an `_alias` answer for `<alias>_v*`
/// (the pattern also matches another table's `<alias>_vendors_v1`), sorted.
fn versions_in(alias: &str, answer: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = answer
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|i| version_of(alias, i).is_some())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The `_aliases` body that moves `alias` from `old` to `new` (the write index) in one
/// atomic request: searches see the old indexes or the new one, never neither.
fn move_alias(alias: &str, old: &[String], new: &str) -> serde_json::Value {
    let mut actions: Vec<serde_json::Value> = old
        .iter()
        .map(|i| json!({"remove": {"index": i, "alias": alias}}))
        .collect();
    actions.push(json!({"add": {"index": new, "alias": alias, "is_write_index": true}}));
    json!({ "actions": actions })
}

/// `_meta.document_fingerprint` for `table`'s documents as this sink writes them.
fn fingerprint(
    cfg: &ElasticsearchSinkConfig,
    context: &SinkContext,
    db: &str,
    table: &str,
) -> String {
    let name = format!("{db}.{table}");
    mapping::document_fingerprint(
        &(context.upstream)(db, table),
        cfg.decimal,
        context.policy.unindexed(&name),
        cfg.ids.get(&name),
    )
}

/// How a table's documents are identified: the `ids` setting, else the primary key;
/// None without either (the table is skipped).
fn doc_id(cfg: &ElasticsearchSinkConfig, table: &TableSchema) -> Result<Option<DocId>, String> {
    let name = table.qualified_name();
    Ok(match cfg.ids.get(&name) {
        Some(IdConfig::Columns(cols)) => {
            let idx = cols
                .iter()
                .map(|c| table.columns.iter().position(|col| col.name == *c).ok_or(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|c| {
                    format!(
                        "ids.\"{name}\" names column `{c}`, which {name} does not have (columns: {})",
                        table.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })?;
            Some(DocId::Columns(idx))
        }
        Some(IdConfig::Named(_)) => Some(DocId::RowHash),
        None if table.primary_key.is_empty() => None,
        None => Some(DocId::Columns(table.primary_key.clone())),
    })
}

fn client(cfg: &ElasticsearchSinkConfig) -> Result<Elasticsearch, String> {
    let urls = cfg
        .urls
        .iter()
        .map(|u| Url::parse(u).map_err(|e| format!("url {}: {e}", redact(u))))
        .collect::<Result<Vec<_>, _>>()?;
    let pool = MultiNodeConnectionPool::round_robin(urls, None);
    let mut builder =
        TransportBuilder::new(pool).timeout(Duration::from_secs(cfg.request_timeout_secs));
    if let Some(var) = &cfg.api_key_env {
        let key =
            std::env::var(var).map_err(|_| format!("api_key_env names {var}, which is not set"))?;
        let (kid, secret) = key
            .split_once(':')
            .ok_or_else(|| format!("{var} must hold `id:key`"))?;
        builder = builder.auth(Credentials::ApiKey(kid.into(), secret.into()));
    } else if let Some(user) = &cfg.user {
        let pw = cfg
            .password()?
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        builder = builder.auth(Credentials::Basic(user.clone(), pw));
    }
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        let cert =
            Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    let transport = builder.build().map_err(|e| format!("client: {e}"))?;
    Ok(Elasticsearch::new(transport))
}

/// For `tributary check`: the tables (`db.table` and columns, as the server has them)
/// whose changes this sink would send to the dead letters, and why (`names::problems`).
pub fn name_problems(
    cfg: &ElasticsearchSinkConfig,
    tables: &[(String, Vec<Column>)],
) -> Vec<String> {
    names::problems(tables, |db, table| cfg.alias(db, table))
}

/// For `tributary check`: reaches the cluster and reports what answers. Touches no
/// local state (no dead-letter stream is opened).
pub async fn ping(cfg: &ElasticsearchSinkConfig) -> Result<String, String> {
    let urls: Vec<String> = cfg.urls.iter().map(|u| redact(u)).collect();
    match client(cfg)?.info().send().await {
        Err(e) => Err(format!("cannot reach {}: {e}", urls.join(", "))),
        Ok(r) if r.status_code().is_success() => {
            let j: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            Ok(format!(
                "{} answers: {} {}",
                urls.join(", "),
                j["version"]["distribution"]
                    .as_str()
                    .unwrap_or("elasticsearch"),
                j["version"]["number"].as_str().unwrap_or("?")
            ))
        }
        Ok(r) => match status_attempt::<()>(r).await {
            Err(f) => Err(format!("{}: {f}", urls.join(", "))),
            Ok(()) => unreachable!("non-success status"),
        },
    }
}

/// A request whose answer is a JSON body: connection errors and unreadable bodies are
/// retried, HTTP errors sorted by `response::classify`.
async fn json_attempt<T: serde::de::DeserializeOwned>(
    sent: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
    what: &str,
) -> Result<T, Failure> {
    match sent {
        Err(e) => Err(Failure::Transient(e.to_string())),
        Ok(r) if r.status_code().is_success() => r
            .json::<T>()
            .await
            .map_err(|e| Failure::Transient(format!("reading the {what} response: {e}"))),
        Ok(r) => status_attempt(r).await,
    }
}

/// A request that answers nothing but success (`missing_ok`: or 404).
async fn ok_attempt(
    sent: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
    missing_ok: bool,
) -> Result<(), Failure> {
    match sent {
        Err(e) => Err(Failure::Transient(e.to_string())),
        Ok(r) if r.status_code().is_success() => Ok(()),
        Ok(r) if missing_ok && r.status_code().as_u16() == 404 => Ok(()),
        Ok(r) => status_attempt(r).await,
    }
}

/// A non-success response, classified by its status and body (`response::classify`).
async fn status_attempt<T>(r: elasticsearch::http::response::Response) -> Result<T, Failure> {
    let status = r.status_code().as_u16();
    let text = r.text().await.unwrap_or_default();
    Err(classify(status, &text))
}

impl ElasticsearchSink {
    /// Writes a batch's changes (`accept`, `accept_shared`).
    async fn accept_messages(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        self.dual.refresh();
        for (at, m) in batch.iter().enumerate() {
            self.sender.at(at);
            // Commits need nothing here; a rewound transaction's documents are resent
            // with the same versions, which is harmless.
            let e = match m {
                SourceMessage::Change(e) => e,
                SourceMessage::SnapshotProgress(p) => {
                    self.end_resyncs(p).await?;
                    continue;
                }
                // Passed by the guard: deprecated (a halt never reaches a sink).
                SourceMessage::Schema(tc)
                    if tc.change == Stated::Change(SchemaChange::TableDropped) =>
                {
                    self.mark_dropped(&tc.table).await?;
                    continue;
                }
                _ => continue,
            };
            let (alias, ids) = match self.target(&e.table).await? {
                Target::Index { alias, id } => (alias, id),
                Target::Skip => continue,
                Target::Refuse {
                    alias,
                    error_type,
                    reason,
                } => {
                    // A TRUNCATE too: it must not empty the other table's index.
                    self.reject(e, alias, error_type, &reason);
                    continue;
                }
            };
            match e.op {
                Op::Truncate => {
                    self.truncate(&alias, &e.table).await?;
                    continue;
                }
                Op::Resync => {
                    self.begin_resync(&alias, &e.table).await?;
                    continue;
                }
                _ => {}
            }
            self.write(e, alias, &ids).await?;
        }
        self.sender
            .send_lingering(Duration::from_millis(self.cfg.linger_ms));
        Ok(())
    }
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn accept(&mut self, batch: &[SourceMessage]) -> Result<(), SinkError> {
        self.sender.hold(None);
        self.accept_messages(batch).await
    }

    async fn accept_shared(&mut self, batch: &SharedBatch) -> Result<(), SinkError> {
        self.sender.hold(Some(batch));
        let done = self.accept_messages(batch).await;
        self.sender.hold(None);
        done
    }

    /// Sends everything queued; the ack waits for the cluster's answers, writes the
    /// documents it rejected to the dead-letter stream and makes that durable.
    async fn flush(&mut self) -> Result<Ack, SinkError> {
        self.sender.send_all().await;
        let pending = self.sender.take_pending();
        let dead_letters = self.dead_letters.clone();
        let id = self.id.clone();
        Ok(Box::pin(async move {
            let mut rejected = Vec::new();
            for p in pending {
                rejected.extend(p.settle(&id).await?);
            }
            let mut dlq = dead_letters.lock().await;
            for r in &rejected {
                write_dead_letter(&mut dlq, &id, r)?;
            }
            dlq.mark_boundary();
            let durable = dlq.flush().await?;
            drop(dlq);
            Ok(Some(durable.await?))
        }))
    }
}

/// Appends a rejected document to the dead-letter stream: the event, the index, the
/// error type and reason, the whole error the cluster gave, and the event's exact form
/// with its layout (`replay`, what `tributary dead-letters replay` sends again).
fn write_dead_letter(dlq: &mut Journal, sink: &str, r: &Rejected) -> Result<(), SinkError> {
    let error = &r.error;
    crate::metrics::dead_letter(sink, &r.index, error["type"].as_str().unwrap_or(""));
    tracing::warn!(sink, index = %r.index, status = r.status, error_type = %error["type"], reason = %crate::privacy::text(error["reason"].as_str().unwrap_or("")), "document rejected; written to the dead-letter stream");
    let mut rec = Vec::with_capacity(1024);
    rec.extend_from_slice(b"{\"sink\":");
    crate::event::write_json_str(&mut rec, sink);
    rec.extend_from_slice(b",\"index\":");
    crate::event::write_json_str(&mut rec, &r.index);
    rec.extend_from_slice(format!(",\"status\":{},\"error_type\":", r.status).as_bytes());
    crate::event::write_json_str(&mut rec, error["type"].as_str().unwrap_or(""));
    rec.extend_from_slice(b",\"reason\":");
    crate::event::write_json_str(&mut rec, error["reason"].as_str().unwrap_or(""));
    rec.extend_from_slice(b",\"error\":");
    rec.extend_from_slice(error.to_string().as_bytes());
    rec.extend_from_slice(b",\"event\":");
    r.event.write_json(&mut rec);
    rec.extend_from_slice(b",\"replay\":");
    crate::event::stored::StoredChange::write(&r.event, &mut rec);
    rec.push(b'}');
    Ok(dlq.append_json(&rec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_comes_after_every_version_there_is() {
        let answer = json!({
            "shop_items_v1": {"aliases": {}},
            "shop_items_v3": {"aliases": {"shop_items": {}}},
            "shop_items_vendors_v9": {"aliases": {"shop_items_vendors": {}}},
            "shop_items_v2x": {"aliases": {}},
        });
        let all = versions_in("shop_items", &answer);
        assert_eq!(all, ["shop_items_v1", "shop_items_v3"]);
        assert_eq!(next_concrete("shop_items", &all), "shop_items_v4");
        assert_eq!(next_concrete("shop_items", &[]), "shop_items_v1");
        assert_eq!(version_of("shop_items", "shop_items_vendors_v9"), None);
    }
}
