//! Index mappings derived from the source schema (the type table is in README.md).

use serde_json::{json, Map, Value as Json};

use super::config::{DecimalMapping, IdConfig};
use crate::event::{Column, TableSchema};

/// What shapes a table's documents besides its columns, hashed for
/// `_meta.document_fingerprint`: the enrichment entries upstream (as written), the
/// decimal mapping, the columns kept unindexed and the `ids` setting. An index whose
/// fingerprint differs from the connector file's was written under another
/// configuration (`tributary check` says so; `tributary reindex` rewrites it).
pub fn document_fingerprint(
    upstream: &Json,
    decimal: DecimalMapping,
    unindexed: &[String],
    ids: Option<&IdConfig>,
) -> String {
    use sha2::{Digest, Sha256};
    let shape = json!({
        "upstream": upstream,
        "decimal": format!("{decimal:?}"),
        "unindexed": unindexed,
        "ids": ids.map(|i| format!("{i:?}")),
    });
    Sha256::digest(shape.to_string().as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The mapping of one column, from the source type name.
pub fn field(type_name: &str, decimal: DecimalMapping) -> Json {
    // Fields enrichers add declare their Elasticsearch type (enrich::field_type).
    if let Some(es) = type_name.strip_prefix("es:") {
        return match es {
            "date" => {
                json!({"type": "date", "format": "strict_date_optional_time_nanos||epoch_millis", "ignore_malformed": true})
            }
            "text" => {
                json!({"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}})
            }
            other => json!({ "type": other }),
        };
    }
    // Postgres arrays map as their element type (Elasticsearch fields hold arrays).
    if let Some(element) = type_name.strip_suffix("[]") {
        return field(element, decimal);
    }
    // Type modifiers go: `numeric(10,2)`, `timestamp(3) with time zone`.
    let plain = crate::event::plain_type(type_name);
    let base = plain.trim_end_matches(" unsigned");
    let unsigned = plain.ends_with(" unsigned");
    match base {
        "bigint" if unsigned => json!({"type": "unsigned_long"}),
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "oid" => {
            json!({"type": "long"})
        }
        "bit" => json!({"type": "unsigned_long"}),
        "float" | "real" => json!({"type": "float"}),
        "double" | "double precision" => json!({"type": "double"}),
        "boolean" => json!({"type": "boolean"}),
        "decimal" | "numeric" => match decimal {
            DecimalMapping::Keyword => json!({"type": "keyword"}),
            DecimalMapping::ScaledFloat => {
                json!({"type": "scaled_float", "scaling_factor": 1_000_000})
            }
        },
        // Zero dates (0000-00-00) stay in _source but are not indexed as dates.
        "date" => {
            json!({"type": "date", "format": "strict_date||yyyy-MM-dd", "ignore_malformed": true})
        }
        "datetime" | "timestamp" | "timestamp without time zone" | "timestamp with time zone" => {
            json!({"type": "date", "format": "strict_date_optional_time_nanos", "ignore_malformed": true})
        }
        "time" | "enum" | "set" => json!({"type": "keyword"}),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
        | "character varying" | "character" | "name" => {
            json!({"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}})
        }
        "json" | "jsonb" => json!({"type": "object"}),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "bytea" => json!({"type": "binary"}),
        _ => json!({"type": "keyword"}),
    }
}

/// How a table's columns map: the decimal choice, and the columns the schema policy
/// keeps unindexed (stored in `_source`, not searchable: an object field with
/// `enabled: false`, which takes any JSON value).
#[derive(Clone, Copy)]
pub struct FieldOptions<'a> {
    pub decimal: DecimalMapping,
    pub unindexed: &'a [String],
}

impl FieldOptions<'_> {
    pub fn field(&self, c: &Column) -> Json {
        if self.unindexed.contains(&c.name) {
            json!({"type": "object", "enabled": false})
        } else {
            field(&c.type_name, self.decimal)
        }
    }
}

/// The body that creates `<alias>_v1`: settings, mapping and `_meta`.
pub fn create_index_body(
    table: &TableSchema,
    options: FieldOptions<'_>,
    gc_deletes: &str,
    fingerprint: &str,
) -> Json {
    json!({
        "settings": {"index": {"gc_deletes": gc_deletes}},
        "mappings": mappings(table, &table.columns, &[], options, Some(fingerprint)),
    })
}

/// The `_mapping` update for a new schema version: fields for the columns it added,
/// and `_meta` with the version and the deprecated fields.
/// (`_meta` is replaced as a whole, so it carries the fingerprint again.)
pub fn update_body(
    table: &TableSchema,
    added: &[Column],
    deprecated: &[String],
    options: FieldOptions<'_>,
    fingerprint: Option<&str>,
) -> Json {
    mappings(table, added, deprecated, options, fingerprint)
}

/// `ignore_above` of a text key column's `keyword` sub-field: past it a value is not
/// indexed as a keyword, so `verify` could not page the document by its key. 8,191
/// characters of up to 4 bytes stay under Lucene's term limit (32,766 bytes) and above
/// any key the sources allow (InnoDB 3,072 bytes, a PostgreSQL btree about 2,700).
pub const KEY_KEYWORD_IGNORE_ABOVE: u64 = 8191;

/// A key column's text field: its `keyword` sub-field keeps any key (see
/// `KEY_KEYWORD_IGNORE_ABOVE`); other fields are left as they are.
fn keep_long_keywords(field: &mut Json) {
    // (get_mut: indexing a missing key with `[]` would insert a null.)
    if let Some(keyword) = field.get_mut("fields").and_then(|f| f.get_mut("keyword")) {
        keyword["ignore_above"] = json!(KEY_KEYWORD_IGNORE_ABOVE);
    }
}

fn mappings(
    table: &TableSchema,
    columns: &[Column],
    deprecated: &[String],
    options: FieldOptions<'_>,
    fingerprint: Option<&str>,
) -> Json {
    let mut props = Map::new();
    for c in columns {
        let mut field = options.field(c);
        if table
            .primary_key
            .iter()
            .any(|&k| table.columns[k].name == c.name)
        {
            keep_long_keywords(&mut field);
        }
        props.insert(c.name.clone(), field);
    }
    json!({
        "_meta": {
            "source_table": table.qualified_name(),
            "source_kind": table.kind,
            "schema_version": table.schema_version,
            "deprecated_fields": deprecated,
            "document_fingerprint": fingerprint,
            "managed_by": "tributary",
        },
        "properties": props,
    })
}

/// The properties of a joined document (`[[document]]`, see document::tree): each node's
/// columns typed as for tables (the root's key text keeps long keywords, as a table's
/// does), embeds as `object` and nests as `nested`, so a query can match two fields of
/// the same order. `schema_of` finds each node's table.
pub fn document_properties<'s>(
    tree: &crate::document::tree::Tree,
    schema_of: &dyn Fn(&str) -> Option<&'s TableSchema>,
    decimal: DecimalMapping,
) -> Result<Json, String> {
    node_properties(tree, 0, schema_of, decimal)
}

fn node_properties<'s>(
    tree: &crate::document::tree::Tree,
    n: usize,
    schema_of: &dyn Fn(&str) -> Option<&'s TableSchema>,
    decimal: DecimalMapping,
) -> Result<Json, String> {
    let node = &tree.nodes[n];
    let table = schema_of(&node.table).ok_or_else(|| format!("no table `{}`", node.table))?;
    let mut props = Map::new();
    for (name, &i) in node.column_names.iter().zip(&node.columns) {
        let mut f = field(&table.columns[i].type_name, decimal);
        if n == 0 && node.key.contains(&i) {
            keep_long_keywords(&mut f);
        }
        props.insert(name.clone(), f);
    }
    for &c in &node.children {
        let child = &tree.nodes[c];
        let kind = if child.nested { "nested" } else { "object" };
        let inner = node_properties(tree, c, schema_of, decimal)?;
        props.insert(
            child.field.clone(),
            json!({"type": kind, "properties": inner}),
        );
    }
    Ok(Json::Object(props))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table() {
        let k = DecimalMapping::Keyword;
        assert_eq!(field("bigint unsigned", k)["type"], "unsigned_long");
        assert_eq!(field("int unsigned", k)["type"], "long");
        assert_eq!(field("decimal", k)["type"], "keyword");
        assert_eq!(
            field("decimal", DecimalMapping::ScaledFloat)["type"],
            "scaled_float"
        );
        assert_eq!(field("varchar", k)["fields"]["keyword"]["type"], "keyword");
        assert_eq!(field("timestamp", k)["type"], "date");
        assert_eq!(field("json", k)["type"], "object");
        assert_eq!(field("blob", k)["type"], "binary");
        // MariaDB/MySQL names carry lengths and sizes (`source::mysql::table`).
        assert_eq!(field("mediumblob", k)["type"], "binary");
        assert_eq!(field("varbinary(16)", k)["type"], "binary");
        assert_eq!(field("longtext", k)["type"], "text");
        assert_eq!(field("varchar(20)", k)["type"], "text");
        assert_eq!(field("decimal(12,2) unsigned", k)["type"], "keyword");
        assert_eq!(field("datetime(6)", k)["type"], "date");
        assert_eq!(field("bit(8)", k)["type"], "unsigned_long");
        assert_eq!(field("es:geo_point", k)["type"], "geo_point");
        assert_eq!(field("es:long", k)["type"], "long");
        assert_eq!(field("es:date", k)["type"], "date");
    }

    #[test]
    fn a_text_key_keeps_keywords_as_long_as_any_key_and_other_text_the_usual_256() {
        let t = crate::testkit::keyed_table(
            "s.t",
            &[("code", "varchar"), ("n", "int"), ("note", "text")],
            &[0, 1],
        );
        let opts = FieldOptions {
            decimal: DecimalMapping::Keyword,
            unindexed: &[],
        };
        let body = create_index_body(&t, opts, "60s", "f");
        let props = &body["mappings"]["properties"];
        assert_eq!(
            props["code"]["fields"]["keyword"]["ignore_above"],
            KEY_KEYWORD_IGNORE_ABOVE
        );
        assert_eq!(props["note"]["fields"]["keyword"]["ignore_above"], 256);
        assert_eq!(
            props["n"],
            json!({"type": "long"}),
            "no fields added to a non-text key"
        );
    }

    #[test]
    fn a_joined_document_maps_embeds_as_objects_and_nests_as_nested() {
        let text = r#"
[[document]]
name = "customers"
root = "shop.customers"
[[document.embed]]
field = "region"
from = "shop.regions"
on = { region_id = "id" }
columns = ["name"]
[[document.nest]]
field = "orders"
from = "shop.orders"
on = { code = "customer_id" }
columns = ["id", "amount"]
"#;
        let def = &crate::testkit::documents(text).unwrap()[0];
        let keyed =
            |name: &str, cols: &[(&str, &str)]| crate::testkit::keyed_table(name, cols, &[0]);
        let tables = [
            keyed(
                "shop.customers",
                &[("code", "varchar"), ("region_id", "int")],
            ),
            keyed("shop.regions", &[("id", "int"), ("name", "varchar")]),
            keyed(
                "shop.orders",
                &[
                    ("id", "int"),
                    ("customer_id", "varchar"),
                    ("amount", "decimal"),
                ],
            ),
        ];
        let lookup = |n: &str| {
            tables
                .iter()
                .find(|t| t.qualified_name() == n)
                .map(|t| &**t)
        };
        let tree = crate::document::tree::Tree::resolve(def, &lookup).unwrap();
        let props = document_properties(&tree, &lookup, DecimalMapping::Keyword).unwrap();
        assert_eq!(
            props["code"]["fields"]["keyword"]["ignore_above"],
            KEY_KEYWORD_IGNORE_ABOVE
        );
        assert_eq!(props["region_id"], json!({"type": "long"}));
        assert_eq!(props["region"]["type"], "object");
        assert_eq!(
            props["region"]["properties"]["name"]["fields"]["keyword"]["ignore_above"],
            256
        );
        assert_eq!(props["orders"]["type"], "nested");
        assert_eq!(
            props["orders"]["properties"],
            json!({"id": {"type": "long"}, "amount": {"type": "keyword"}}),
            "only the columns the nest shows"
        );
    }

    #[test]
    fn the_fingerprint_follows_everything_that_shapes_documents_and_nothing_else() {
        let step = json!([{"kind": "set", "entry": {"fields": {"region": "eu"}}}]);
        let base = || document_fingerprint(&json!([]), DecimalMapping::Keyword, &[], None);
        assert_eq!(base(), base(), "stable");
        assert_eq!(base().len(), 16);
        let others = [
            document_fingerprint(&step, DecimalMapping::Keyword, &[], None),
            document_fingerprint(&json!([]), DecimalMapping::ScaledFloat, &[], None),
            document_fingerprint(&json!([]), DecimalMapping::Keyword, &["notes".into()], None),
            document_fingerprint(
                &json!([]),
                DecimalMapping::Keyword,
                &[],
                Some(&IdConfig::Named("row_hash".into())),
            ),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(*o, base(), "input {i}");
        }
    }
}

#[cfg(test)]
mod postgres_names {
    use super::*;

    #[test]
    fn postgres_type_names_map_like_their_mysql_peers() {
        let f = |t: &str| {
            field(t, DecimalMapping::Keyword)["type"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(f("integer"), "long");
        assert_eq!(f("bigint[]"), "long");
        assert_eq!(f("numeric(10,2)"), "keyword");
        assert_eq!(f("double precision"), "double");
        assert_eq!(f("boolean"), "boolean");
        assert_eq!(f("character varying(20)"), "text");
        assert_eq!(f("timestamp(3) with time zone"), "date");
        assert_eq!(f("jsonb"), "object");
        assert_eq!(f("bytea"), "binary");
        assert_eq!(f("uuid"), "keyword");
        assert_eq!(f("mood"), "keyword");
    }
}
