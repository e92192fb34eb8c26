//! Index mappings derived from the source schema (the type table is in README.md).

use serde_json::{json, Map, Value as Json};

use super::config::DecimalMapping;
use crate::event::TableSchema;

/// The mapping of one column, from the source type name.
pub fn field(type_name: &str, decimal: DecimalMapping) -> Json {
    let base = type_name.trim_end_matches(" unsigned");
    let unsigned = type_name.ends_with(" unsigned");
    match base {
        "bigint" if unsigned => json!({"type": "unsigned_long"}),
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" => json!({"type": "long"}),
        "bit" => json!({"type": "unsigned_long"}),
        "float" => json!({"type": "float"}),
        "double" => json!({"type": "double"}),
        "decimal" => match decimal {
            DecimalMapping::Keyword => json!({"type": "keyword"}),
            DecimalMapping::ScaledFloat => {
                json!({"type": "scaled_float", "scaling_factor": 1_000_000})
            }
        },
        // Zero dates (0000-00-00) stay in _source but are not indexed as dates.
        "date" => {
            json!({"type": "date", "format": "strict_date||yyyy-MM-dd", "ignore_malformed": true})
        }
        "datetime" | "timestamp" => {
            json!({"type": "date", "format": "strict_date_optional_time_nanos", "ignore_malformed": true})
        }
        "time" | "enum" | "set" => json!({"type": "keyword"}),
        "char" | "varchar" | "text" => {
            json!({"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}})
        }
        "json" => json!({"type": "object"}),
        "binary" | "varbinary" | "blob" | "geometry" => json!({"type": "binary"}),
        _ => json!({"type": "keyword"}),
    }
}

/// The body that creates `<alias>_v1`: settings, mapping and `_meta`.
pub fn create_index_body(table: &TableSchema, decimal: DecimalMapping, gc_deletes: &str) -> Json {
    let mut props = Map::new();
    for c in &table.columns {
        props.insert(c.name.clone(), field(&c.type_name, decimal));
    }
    json!({
        "settings": {"index": {"gc_deletes": gc_deletes}},
        "mappings": {
            "_meta": {
                "source_table": table.qualified_name(),
                "source_kind": table.kind,
                "schema_version": table.schema_version,
                "managed_by": "tributary",
            },
            "properties": props,
        }
    })
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
    }
}
