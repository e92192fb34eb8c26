//! Index and field names Elasticsearch accepts, made from table and column names.
//!
//! Index names (the alias and the concrete `<alias>_v<n>` behind it) must be lowercase,
//! must not contain `\ / * ? " < > | , # :` or whitespace, must not start with `_`, `-`
//! or `+`, must not be `.` or `..`, and have at most 255 bytes. The `{db}` and `{table}`
//! of the `index` template are encoded so that any table name gives a valid alias:
//! lowercased, and every forbidden character, whitespace, control character and `%`
//! itself written as `%` and the hex of its UTF-8 bytes (`Foo Bar` -> `foo%20bar`,
//! `a#b` -> `a%23b`). A name that would start with `_`, `-`, `+` or `.` gets that character
//! encoded the same way (`_x` -> `%5fx`), and one longer than `MAX_ALIAS_BYTES` is cut
//! and ends in `-` and 16 hex digits of its SHA-256, so it stays unique.
//!
//! Lowercasing (`shop.Orders`, `shop.orders`) and the template itself (`a_b.c` and
//! `a.b_c` under `{db}_{table}`) can still give two tables one name: the sink finds
//! that when the second table arrives (see `ElasticsearchSink::target`), and `check`
//! lists it up front.
//!
//! Field names: a column Elasticsearch cannot map (a metadata field name such as `_id`,
//! an empty name or path segment, `a` next to `a.b`) makes index creation fail. Such a
//! table is found before anything is sent (`unmappable_column`).

use sha2::Digest;

use crate::event::Column;

/// The longest alias: the concrete index adds `_v` and a number within 255 bytes.
pub const MAX_ALIAS_BYTES: usize = 240;

/// Characters Elasticsearch refuses in index names (and `%`, the escape itself).
const FORBIDDEN: &[char] = &['\\', '/', '*', '?', '"', '<', '>', '|', ',', '#', ':', '%'];

/// Field names Elasticsearch 8 and OpenSearch keep for document metadata.
const METADATA_FIELDS: &[&str] = &[
    "_id",
    "_index",
    "_source",
    "_routing",
    "_version",
    "_seq_no",
    "_primary_term",
    "_ignored",
    "_ignored_source",
    "_field_names",
    "_tier",
    "_doc_count",
    "_data_stream_timestamp",
    "_size",
    "_meta",
    "_nested_path",
    "_feature",
    "_type",
    "_uid",
    "_parent",
    "_all",
];

/// A table or database name as part of an index name (see the module docs).
pub fn encode_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if FORBIDDEN.contains(&c) || c.is_whitespace() || c.is_control() {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        out.push_str(&format!("%{b:02x}"));
    }
}

/// The alias of `db.table` under `template` (`{db}` and `{table}` replaced by their
/// encoded names; the template's own text is checked by `invalid_index_name`).
pub fn alias(template: &str, db: &str, table: &str) -> String {
    let name = template
        .replace("{db}", &encode_part(db))
        .replace("{table}", &encode_part(table))
        .to_lowercase();
    fit(name)
}

/// A valid start and length for an encoded name.
fn fit(mut name: String) -> String {
    // A leading `.` would make a hidden index (and `.`, `..` are no names at all).
    if let Some(c) = name
        .chars()
        .next()
        .filter(|c| matches!(c, '_' | '-' | '+' | '.'))
    {
        let mut escaped = String::new();
        push_escaped(&mut escaped, c);
        name.replace_range(..1, &escaped);
    }
    if name.len() > MAX_ALIAS_BYTES {
        let digest = sha2::Sha256::digest(name.as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut cut = MAX_ALIAS_BYTES - 17;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push('-');
        name.push_str(&hash);
    }
    name
}

/// Why `name` cannot be an index or alias name; None when it can.
pub fn invalid_index_name(name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." {
        return Some(format!("`{name}` is not a valid index name"));
    }
    if name.len() > MAX_ALIAS_BYTES {
        return Some(format!(
            "`{name}` is {} bytes long; index names take at most {MAX_ALIAS_BYTES} here (255 with the `_v<n>` suffix)",
            name.len()
        ));
    }
    if name.starts_with(['_', '-', '+', '.']) {
        return Some(format!(
            "`{name}` starts with `_`, `-`, `+` or `.`; Elasticsearch refuses the first three and hides indexes named with a dot"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| (FORBIDDEN.contains(c) && *c != '%') || c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "`{name}` contains `{c}`; index names must not contain \\ / * ? \" < > | , # : or whitespace"
        ));
    }
    if name.chars().any(char::is_uppercase) {
        return Some(format!(
            "`{name}` has uppercase letters; index names are lowercase"
        ));
    }
    None
}

/// The first column of `columns` Elasticsearch cannot map, with the reason; None when
/// all can be.
pub fn unmappable_column(columns: &[Column]) -> Option<(String, String)> {
    let names: std::collections::HashSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    for c in columns {
        let n = c.name.as_str();
        let why = if METADATA_FIELDS.contains(&n) {
            format!("`{n}` is an Elasticsearch metadata field")
        } else if n.split('.').any(|segment| segment.trim().is_empty()) {
            format!("`{n}` is empty or has an empty part between dots")
        } else if let Some(parent) = n
            .match_indices('.')
            .map(|(i, _)| &n[..i])
            .find(|p| names.contains(p))
        {
            format!("`{n}` is a field inside `{parent}` for Elasticsearch (dots make objects), and `{parent}` is a column too")
        } else {
            continue;
        };
        return Some((n.to_string(), why));
    }
    None
}

/// For `tributary check`: what the sink would refuse among `tables` (`db.table` and
/// columns, as the server has them now): two tables meeting in one alias, and columns
/// Elasticsearch cannot map. `alias` is the sink's naming (`indexes`, then template).
pub fn problems(
    tables: &[(String, Vec<Column>)],
    alias: impl Fn(&str, &str) -> String,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut owners: std::collections::BTreeMap<String, &str> = Default::default();
    for (name, columns) in tables {
        let (db, table) = name.split_once('.').unwrap_or(("", name));
        let a = alias(db, table);
        match owners.get(&a) {
            Some(first) => out.push(format!(
                "{first} and {name} both map to the index alias `{a}`: the changes of the one that comes second go to the dead letters; give one its own alias with indexes = {{ \"{name}\" = \"...\" }}"
            )),
            None => {
                owners.insert(a, name);
            }
        }
        if let Some((column, why)) = unmappable_column(columns) {
            out.push(format!(
                "{name}: {why}, so its changes go to the dead letters; rename column `{column}` with an [[enrich]] step (kind = \"rename\")"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: "int".into(),
        }
    }

    #[test]
    fn any_table_name_gives_a_valid_alias() {
        let t = "{db}_{table}";
        assert_eq!(alias(t, "shop", "order_items"), "shop_order_items");
        assert_eq!(alias(t, "shop", "Orders"), "shop_orders");
        assert_eq!(alias(t, "shop", "Foo Bar"), "shop_foo%20bar");
        assert_eq!(alias(t, "shop", "a#b"), "shop_a%23b");
        assert_eq!(alias(t, "shop", "50%"), "shop_50%25");
        assert_eq!(
            alias(t, "x", "a:b/c*d?e\"f<g>h|i,j\\k"),
            "x_a%3ab%2fc%2ad%3fe%22f%3cg%3eh%7ci%2cj%5ck"
        );
        assert_eq!(alias(t, "shop", "café"), "shop_café");
        assert_eq!(alias("{table}", "shop", "_x"), "%5fx");
        assert_eq!(alias("{table}", "shop", "-x"), "%2dx");
        assert_eq!(alias("{table}", "shop", "."), "%2e");
        assert_eq!(alias("{table}", "shop", ".."), "%2e.");
        let long = "t".repeat(300);
        let a = alias(t, "shop", &long);
        assert_eq!(a.len(), MAX_ALIAS_BYTES);
        assert_ne!(
            a,
            alias(t, "shop", &format!("{long}x")),
            "cut names stay apart"
        );
        for name in [
            "shop_orders",
            "shop_foo%20bar",
            "%5fx",
            a.as_str(),
            &alias(t, "ß", &"é".repeat(200)),
        ] {
            assert_eq!(invalid_index_name(name), None, "{name}");
        }
    }

    #[test]
    fn invalid_names_are_explained() {
        for name in [
            "", ".", "..", ".x", "_x", "-x", "+x", "a b", "a#b", "a:b", "Abc",
        ] {
            assert!(invalid_index_name(name).is_some(), "{name}");
        }
        assert!(invalid_index_name(&"a".repeat(241))
            .unwrap()
            .contains("241 bytes"));
    }

    #[test]
    fn columns_elasticsearch_cannot_map_are_found() {
        let ok = [col("id"), col("_op"), col("a.b"), col("a.c"), col("name")];
        assert_eq!(unmappable_column(&ok), None);
        for (cols, bad) in [
            (vec![col("id"), col("_id")], "_id"),
            (vec![col("_source")], "_source"),
            (vec![col("a"), col("a.b")], "a.b"),
            (vec![col("a.b.c"), col("a.b")], "a.b.c"),
            (vec![col("")], ""),
            (vec![col("a..b")], "a..b"),
            (vec![col("a.")], "a."),
        ] {
            assert_eq!(
                unmappable_column(&cols).map(|(c, _)| c),
                Some(bad.to_string())
            );
        }
    }

    #[test]
    fn check_lists_collisions_and_unmappable_columns() {
        let tables = vec![
            ("shop.orders".to_string(), vec![col("id")]),
            ("shop.Orders".to_string(), vec![col("id")]),
            ("shop.items".to_string(), vec![col("id"), col("_id")]),
            ("shop.fine".to_string(), vec![col("id")]),
        ];
        let found = problems(&tables, |db, t| alias("{db}_{table}", db, t));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with(
                "shop.orders and shop.Orders both map to the index alias `shop_orders`"
            ),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with("shop.items: `_id` is an Elasticsearch metadata field"),
            "{}",
            found[1]
        );
    }
}
