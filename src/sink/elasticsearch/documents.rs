//! Joined documents (`[[document]]`) in Elasticsearch: each document's alias (its
//! name) and `<name>_v1` behind it, mapped from the document's tree (nests `nested`,
//! embeds `object`, leaf fields by column type). The documents themselves are written
//! like table rows: their events carry the whole document and the version of the
//! newest change in it (see document::stage).

use std::sync::Arc;

use serde_json::json;

use super::bulk::DocId;
use super::{mapping, ElasticsearchSink, Target};
use crate::event::TableSchema;
use crate::sink::SinkError;

impl ElasticsearchSink {
    /// The target of a document's events: its alias, created with the document's
    /// mapping on first sight (an existing alias is adopted as it is).
    pub(super) async fn document_target(
        &mut self,
        schema: &Arc<TableSchema>,
    ) -> Result<Target, SinkError> {
        let name = &schema.table;
        let Some(shape) = crate::document::stage::shape_of(&self.context.documents, name) else {
            return Err(self.err(format!(
                "document `{name}` has no definition in this connector (its events come from another configuration)"
            )));
        };
        let alias = name.to_lowercase();
        if !self.alias_exists(&alias).await? {
            let body = document_index_body(&self.cfg, name, &shape)
                .map_err(|m| self.err(format!("document `{name}`: {m}")))?;
            let concrete = format!("{alias}_v1");
            self.create_index_with(&concrete, &body).await?;
            self.swap_aliases(json!({"actions": [{"add": {"index": concrete, "alias": alias, "is_write_index": true}}]}))
                .await?;
            tracing::info!(sink = %self.id, document = %name, index = %concrete, "created the document's index and alias");
        }
        Ok(Target::Index {
            alias: Arc::from(alias.as_str()),
            id: DocId::Columns(schema.primary_key.clone()),
        })
    }
}

/// The settings and mapping of a document's index (`_meta` names the document and its
/// definition).
pub(super) fn document_index_body(
    cfg: &super::ElasticsearchSinkConfig,
    name: &str,
    shape: &crate::document::stage::Shape,
) -> Result<serde_json::Value, String> {
    let properties =
        mapping::document_properties(&shape.tree, &|t| shape.schema_of(t), cfg.decimal)?;
    Ok(json!({
        "settings": {"index": {"gc_deletes": cfg.gc_deletes}},
        "mappings": {
            "_meta": {
                "document": name,
                "document_definition": shape.tree.definition(),
                "managed_by": "tributary",
            },
            "properties": properties,
        },
    }))
}
