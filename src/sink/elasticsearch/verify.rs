//! What `tributary verify` and `tributary reindex` read and write in an index: the
//! document the sink writes for a row (the same alias, id and rendering as the live
//! sink), the stored documents by id and in key order (`search_after`, never deep
//! `from`/`size` paging), writes versioned like every write so a newer change always
//! wins, and the concrete indexes behind an alias (a new one, the atomic swap).

use std::collections::HashMap;

use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesGetAliasParts, IndicesGetMappingParts,
    IndicesRefreshParts,
};
use elasticsearch::{BulkParts, Elasticsearch, MgetParts, SearchParts};
use serde_json::{json, Value as Json};

use super::bulk::Batch;
use super::{
    client, doc_id, fingerprint, mapping, move_alias, next_concrete, versions_in, DocId,
    ElasticsearchSinkConfig,
};
use crate::event::{ChangeEvent, TableSchema};
use crate::sink::SinkContext;

/// A stored document.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    /// The version of the change that wrote it (writes are versioned `external_gte`).
    pub version: u64,
    pub source: Json,
}

/// One write a repair makes.
pub enum Repair {
    /// Index the event's row under `id` with the event's version.
    Index { event: ChangeEvent, id: String },
    /// Delete document `id` with the event's version.
    Delete { event: ChangeEvent, id: String },
}

/// An Elasticsearch sink's indexes, for verify.
pub struct IndexView {
    pub sink: String,
    cfg: ElasticsearchSinkConfig,
    client: Elasticsearch,
    context: SinkContext,
}

/// How a table's index was written, compared with the connector file now.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// No alias yet (the daemon creates it with the table's first change).
    NoIndex,
    /// Under the configuration the file has now.
    Current,
    /// `index` was created before indexes recorded their configuration.
    Unrecorded { index: String },
    /// `index` was written under another enrichment or mapping configuration.
    Other { index: String },
}

fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

async fn body(
    sent: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
    what: &str,
) -> Result<Option<Json>, String> {
    let r = sent.map_err(|e| failed(what, e))?;
    let status = r.status_code().as_u16();
    if status == 404 {
        return Ok(None);
    }
    let text = r.text().await.map_err(|e| failed(what, e))?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "{what}: HTTP {status}: {}",
            crate::privacy::server_error(&text)
        ));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| failed(what, e))
}

impl IndexView {
    pub fn open(
        sink: String,
        cfg: &ElasticsearchSinkConfig,
        context: SinkContext,
    ) -> Result<Self, String> {
        Ok(IndexView {
            sink,
            cfg: cfg.clone(),
            client: client(cfg)?,
            context,
        })
    }

    /// The configuration the sink writes `db`.`table`'s documents with, as the
    /// connector file has it now (`_meta.document_fingerprint`).
    pub fn fingerprint(&self, db: &str, table: &str) -> String {
        fingerprint(&self.cfg, &self.context, db, table)
    }

    /// `{"<index>": {"mappings": ...}}` of every index behind `alias` (None: no alias).
    async fn mappings(&self, alias: &str) -> Result<Option<Json>, String> {
        let sent = self
            .client
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[alias]))
            .send()
            .await;
        body(sent, &format!("reading the mapping of {alias}")).await
    }

    /// The columns of `table` (a layout after enrichment) whose field in the indexes
    /// behind `alias` has another type than the sink maps them to now (a type change
    /// Elasticsearch could not apply in place).
    pub async fn differing_fields(
        &self,
        alias: &str,
        table: &TableSchema,
    ) -> Result<Vec<String>, String> {
        let found = self.mappings(alias).await?.unwrap_or_default();
        let options = mapping::FieldOptions {
            decimal: self.cfg.decimal,
            unindexed: self.context.policy.unindexed(&table.qualified_name()),
        };
        let mut out = Vec::new();
        for c in &table.columns {
            let wanted = &options.field(c)["type"];
            let differs = found
                .as_object()
                .into_iter()
                .flatten()
                .any(|(_, m)| &m["mappings"]["properties"][&c.name]["type"] != wanted);
            if differs {
                out.push(c.name.clone());
            }
        }
        Ok(out)
    }

    /// Whether the indexes behind `db`.`table`'s alias were written under the
    /// configuration the connector file has now (`_meta.document_fingerprint`).
    pub async fn written_with(&self, db: &str, table: &str) -> Result<Written, String> {
        let alias = self.cfg.alias(db, table);
        let Some(found) = self.mappings(&alias).await? else {
            return Ok(Written::NoIndex);
        };
        let now = self.fingerprint(db, table);
        let mut indexes: Vec<(&String, &Json)> = found.as_object().into_iter().flatten().collect();
        indexes.sort_by_key(|(name, _)| name.as_str());
        for (index, m) in indexes {
            let index = index.clone();
            match m["mappings"]["_meta"]["document_fingerprint"].as_str() {
                None => return Ok(Written::Unrecorded { index }),
                Some(f) if f != now => return Ok(Written::Other { index }),
                Some(_) => {}
            }
        }
        Ok(Written::Current)
    }

    /// The alias the sink writes `table` to.
    pub fn alias(&self, table: &TableSchema) -> String {
        self.cfg.alias(&table.db, &table.table)
    }

    /// Whether the sink gives table `name` (`db.table`) an index of its own (its
    /// `tables` setting).
    pub fn indexes_table(&self, name: &str) -> bool {
        match self.cfg.tables.matcher() {
            Ok(Some(set)) => set.is_match(name),
            _ => true,
        }
    }

    /// How the sink identifies the table's documents (None: it skips the table).
    pub fn doc_id(&self, table: &TableSchema) -> Result<Option<DocId>, String> {
        doc_id(&self.cfg, table)
    }

    /// The id and document the sink writes for the event's row.
    pub fn expected(&self, e: &ChangeEvent, ids: &DocId) -> Option<(String, Json)> {
        let row = e.after.as_ref()?;
        let id = ids.of(e, row)?;
        let mut doc = Vec::with_capacity(256);
        e.write_row_json(row, &mut doc);
        // A document nested deeper than the parser allows compares as its text.
        let doc = serde_json::from_slice(&doc)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&doc).into_owned()));
        Some((id, doc))
    }

    /// The stored documents of `ids` (absent ones are left out).
    pub async fn get(
        &self,
        alias: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Stored>, String> {
        let mut out = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let sent = self
            .client
            .mget(MgetParts::Index(alias))
            .body(json!({ "ids": ids }))
            .send()
            .await;
        let Some(r) = body(sent, &format!("reading documents of {alias}")).await? else {
            return Ok(out);
        };
        for d in r["docs"].as_array().into_iter().flatten() {
            if d["found"] == true {
                let id = d["_id"].as_str().unwrap_or_default().to_string();
                out.insert(
                    id.clone(),
                    Stored {
                        id,
                        version: d["_version"].as_u64().unwrap_or(0),
                        source: d["_source"].clone(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The fields to page through the index by, in key order: the key columns (a text
    /// field by its `keyword` sub-field).
    pub async fn sort_fields(
        &self,
        alias: &str,
        columns: &[String],
    ) -> Result<Vec<String>, String> {
        let mapping = self.mappings(alias).await?.unwrap_or(Json::Null);
        let props = mapping
            .as_object()
            .and_then(|m| m.values().next())
            .map(|m| m["mappings"]["properties"].clone())
            .unwrap_or(Json::Null);
        Ok(columns
            .iter()
            .map(|c| match props[c]["type"].as_str() {
                Some("text") if props[c]["fields"]["keyword"].is_object() => format!("{c}.keyword"),
                _ => c.clone(),
            })
            .collect())
    }

    /// Makes what was written searchable (paging reads through search).
    pub async fn refresh(&self, alias: &str) -> Result<(), String> {
        let sent = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[alias]))
            .send()
            .await;
        body(sent, &format!("refreshing {alias}")).await.map(|_| ())
    }

    /// The next `size` documents after `after` (a previous page's last sort values),
    /// in `sort` order; with their sort values.
    pub async fn page(
        &self,
        alias: &str,
        sort: &[String],
        after: Option<&Json>,
        size: usize,
    ) -> Result<Vec<(Stored, Json)>, String> {
        let mut q = json!({
            "size": size,
            "version": true,
            "query": { "match_all": {} },
            "sort": sort.iter().map(|f| json!({ f: "asc" })).collect::<Vec<_>>(),
        });
        if let Some(a) = after {
            q["search_after"] = a.clone();
        }
        let sent = self
            .client
            .search(SearchParts::Index(&[alias]))
            .body(q)
            .send()
            .await;
        let Some(r) = body(sent, &format!("paging through {alias}")).await? else {
            return Ok(Vec::new());
        };
        Ok(r["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    Stored {
                        id: h["_id"].as_str().unwrap_or_default().to_string(),
                        version: h["_version"].as_u64().unwrap_or(0),
                        source: h["_source"].clone(),
                    },
                    h["sort"].clone(),
                )
            })
            .collect())
    }

    /// Writes in one bulk request to `alias` (or a concrete index); a write a newer
    /// version already overtook (409) counts as done. Returns how many were applied.
    pub async fn write(&self, alias: &str, repairs: &[Repair]) -> Result<u64, String> {
        if repairs.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for r in repairs {
            match r {
                Repair::Index { event, id } => batch.push(event, alias.into(), id),
                Repair::Delete { event, id } => batch.push_delete(event, alias.into(), id, None),
            }
        }
        let text = batch.body().to_vec();
        let sent = self
            .client
            .bulk(BulkParts::None)
            .body(vec![text])
            .send()
            .await;
        let r = body(sent, &format!("writing to {alias}"))
            .await?
            .unwrap_or(Json::Null);
        let mut applied = 0;
        for item in r["items"].as_array().into_iter().flatten() {
            let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
                continue;
            };
            match result["status"].as_u64().unwrap_or(0) {
                200..=299 => applied += 1,
                // A newer change is there already, or the document is gone.
                409 | 404 => {}
                status => {
                    return Err(format!(
                        "writing to {alias}: document {} refused (HTTP {status}): {}",
                        result["_id"],
                        crate::privacy::text(&result["error"].to_string())
                    ))
                }
            }
        }
        Ok(applied)
    }

    /// The concrete indexes behind `alias` (empty when there is no such alias).
    pub async fn behind(&self, alias: &str) -> Result<Vec<String>, String> {
        let sent = self
            .client
            .indices()
            .get_alias(IndicesGetAliasParts::Name(&[alias]))
            .send()
            .await;
        let r = body(sent, &format!("reading alias {alias}")).await?;
        let mut out: Vec<String> = r
            .and_then(|r| r.as_object().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }

    /// Every concrete index of `alias`'s versions (`<alias>_v<N>`), behind it or not:
    /// kept previous ones and what interrupted reindexes left.
    pub async fn versions(&self, alias: &str) -> Result<Vec<String>, String> {
        let pattern = format!("{alias}_v*");
        let sent = self
            .client
            .indices()
            .get_alias(IndicesGetAliasParts::Index(&[&pattern]))
            .send()
            .await;
        let r = body(sent, &format!("listing indexes {pattern}")).await?;
        Ok(r.map(|r| versions_in(alias, &r)).unwrap_or_default())
    }

    /// The name of the next concrete index of `alias` (`<alias>_v<N+1>`), given every
    /// version there is (`versions`).
    pub fn next_index(&self, alias: &str, existing: &[String]) -> String {
        next_concrete(alias, existing)
    }

    /// Creates concrete index `name` with the mapping the sink derives from `table` (the
    /// layout after enrichment) and `_meta` naming the configuration it is written with.
    pub async fn create(&self, name: &str, table: &TableSchema) -> Result<(), String> {
        let options = mapping::FieldOptions {
            decimal: self.cfg.decimal,
            unindexed: self.context.policy.unindexed(&table.qualified_name()),
        };
        let fingerprint = fingerprint(&self.cfg, &self.context, &table.db, &table.table);
        let sent = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(name))
            .body(mapping::create_index_body(
                table,
                options,
                &self.cfg.gc_deletes,
                &fingerprint,
            ))
            .send()
            .await;
        body(sent, &format!("creating index {name}"))
            .await
            .map(|_| ())
    }

    /// Creates index `name` for joined document `document` (its mapping as the sink
    /// creates it).
    pub async fn create_document(
        &self,
        name: &str,
        document: &str,
        shape: &crate::document::stage::Shape,
    ) -> Result<(), String> {
        let b = super::documents::document_index_body(&self.cfg, document, shape)?;
        let sent = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(name))
            .body(b)
            .send()
            .await;
        body(sent, &format!("creating index {name}"))
            .await
            .map(|_| ())
    }

    /// Deletes concrete index `name` (gone already is fine).
    pub async fn delete(&self, name: &str) -> Result<(), String> {
        let sent = self
            .client
            .indices()
            .delete(IndicesDeleteParts::Index(&[name]))
            .send()
            .await;
        body(sent, &format!("deleting index {name}"))
            .await
            .map(|_| ())
    }

    /// Moves `alias` from `old` to `new` in one `_aliases` request: searches see the
    /// old index or the new one, never neither.
    pub async fn swap(&self, alias: &str, old: &[String], new: &str) -> Result<(), String> {
        let sent = self
            .client
            .indices()
            .update_aliases()
            .body(move_alias(alias, old, new))
            .send()
            .await;
        body(sent, &format!("moving alias {alias} to {new}"))
            .await
            .map(|_| ())
    }
}
