use std::path::Path;

use super::*;

/// The issue's example: customers with their region, orders and each order's items.
pub(crate) const SHOP: &str = r#"
[[document]]
name = "customers"
root = "shop.customers"

[[document.embed]]
field = "region"
from = "shop.regions"
on = { region_id = "id" }
columns = ["name", "code"]

[[document.nest]]
field = "orders"
from = "shop.orders"
on = { id = "customer_id" }
columns = ["id", "amount", "status", "created_at"]
order_by = ["id"]

[[document.nest.nest]]
field = "items"
from = "shop.order_items"
on = { id = "order_id" }
columns = ["sku", "qty", "price"]
"#;

fn parse(text: &str) -> Vec<DocumentConfig> {
    crate::testkit::documents(text).unwrap()
}

/// The error of the file-only checks: (line, message).
fn definition_error(text: &str) -> (usize, String) {
    let e = check_definitions(Path::new("c.toml"), text, &parse(text)).unwrap_err();
    assert_eq!(e.path, Path::new("c.toml"));
    (e.line_col.expect("a line").0, e.message)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn the_example_parses_and_passes_and_lists_its_tables_depth_first() {
    let docs = parse(SHOP);
    check_definitions(Path::new("c.toml"), SHOP, &docs).unwrap();
    assert_eq!(
        docs[0].tables(),
        [
            "shop.customers",
            "shop.regions",
            "shop.orders",
            "shop.order_items"
        ]
    );
    let (shape, orders) = docs[0].children().nth(1).unwrap();
    assert_eq!(
        (shape, orders.field.get_ref().as_str()),
        (Shape::Nest, "orders")
    );
}

#[test]
fn a_table_joined_below_itself_is_a_cycle_named_at_its_line() {
    let text = SHOP.replace("from = \"shop.order_items\"", "from = \"shop.customers\"");
    let (line, msg) = definition_error(&text);
    assert_eq!(line, line_of(&text, "from = \"shop.customers\""));
    assert!(
        msg.contains("shop.customers -> shop.orders -> shop.customers"),
        "{msg}"
    );
    assert!(msg.contains("cycle"), "{msg}");
}

#[test]
fn five_levels_are_refused_four_are_not() {
    let level = |depth: usize, n: usize| {
        format!(
            "\n[[document{}]]\nfield = \"f{n}\"\nfrom = \"s.t{n}\"\non = {{ id = \"p\" }}\n",
            ".nest".repeat(depth)
        )
    };
    let head = "[[document]]\nname = \"deep\"\nroot = \"s.root\"\n".to_string();
    let four: String = head.clone() + &(1..=4).map(|n| level(n, n)).collect::<String>();
    check_definitions(Path::new("c.toml"), &four, &parse(&four)).unwrap();
    let five = four + &level(5, 5);
    let (line, msg) = definition_error(&five);
    assert_eq!(line, line_of(&five, "from = \"s.t5\""));
    assert!(msg.contains("5 levels below the root"), "{msg}");
}

#[test]
fn file_only_mistakes_name_their_line() {
    for (from, to, at, says) in [
        (
            "name = \"customers\"",
            "name = \"Customers\"",
            "name = ",
            "not a valid alias",
        ),
        (
            "root = \"shop.customers\"",
            "root = \"customers\"",
            "root = ",
            "`db.table`",
        ),
        (
            "field = \"region\"",
            "field = \"_region\"",
            "field = \"_region\"",
            "does not start with `_`",
        ),
        (
            "field = \"items\"",
            "field = \"\"",
            "field = \"\"",
            "not empty",
        ),
        (
            "on = { id = \"order_id\" }",
            "on = {}",
            "on = {}",
            "names no columns",
        ),
        (
            "columns = [\"name\", \"code\"]",
            "order_by = [\"name\"]",
            "order_by",
            "an embed is one object",
        ),
        (
            "field = \"orders\"",
            "field = \"region\"",
            "field = \"region\"\nfrom = \"shop.orders\"",
            "two embeds or nests",
        ),
    ] {
        let text = SHOP.replacen(from, to, 1);
        assert_ne!(text, SHOP, "{from}");
        let (line, msg) = definition_error(&text);
        let want = line_of(&text, at.lines().next().unwrap());
        let want = if at.contains('\n') {
            // The second `field = "region"`: the nest's.
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains("field = \"region\""))
                .nth(1)
                .unwrap()
                .0
                + 1
        } else {
            want
        };
        assert_eq!(line, want, "{to}: {msg}");
        assert!(msg.contains(says), "{to}: {msg}");
    }
    let twice = format!("{SHOP}\n[[document]]\nname = \"customers\"\nroot = \"shop.x\"\n");
    let (line, msg) = definition_error(&twice);
    assert_eq!(line, twice.lines().count() - 1);
    assert!(
        msg.contains("two [[document]] entries are named `customers`"),
        "{msg}"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let text = SHOP.replace("order_by = [\"id\"]", "orderby = [\"id\"]");
    let e = crate::testkit::documents(&text).expect_err("an error");
    assert!(e.to_string().contains("orderby"), "{e}");
}

/// The first document of `text` (a connector file's `[[document]]`s) resolved against
/// the shop's tables.
pub(crate) fn shop_tree(text: &str) -> crate::document::tree::Tree {
    let def = &crate::testkit::documents(text).unwrap()[0];
    let schemas = shop_schemas();
    let lookup = |name: &str| {
        schemas
            .iter()
            .find(|t| t.qualified_name() == name)
            .map(|t| &**t)
    };
    crate::document::tree::Tree::resolve(def, &lookup).unwrap()
}

/// The shop's tables (`keys`: each table's key columns).
/// (The state's tests use them too: regions keyed by an unsigned id, which joins the
/// customers' int `region_id`.)
pub(crate) fn shop_schemas() -> Vec<std::sync::Arc<TableSchema>> {
    use crate::testkit::keyed_table as keyed;
    vec![
        keyed(
            "shop.customers",
            &[("id", "int"), ("name", "varchar"), ("region_id", "int")],
            &[0],
        ),
        keyed(
            "shop.regions",
            &[
                ("id", "bigint unsigned"),
                ("name", "varchar"),
                ("code", "char"),
            ],
            &[0],
        ),
        keyed(
            "shop.orders",
            &[
                ("id", "int"),
                ("customer_id", "int"),
                ("amount", "decimal"),
                ("status", "varchar"),
                ("created_at", "datetime"),
            ],
            &[0],
        ),
        keyed(
            "shop.order_items",
            &[
                ("order_id", "int"),
                ("line", "int"),
                ("sku", "varchar"),
                ("qty", "int"),
                ("price", "decimal"),
            ],
            &[0, 1],
        ),
    ]
}

/// The error of the schema checks on `text`, with `schemas`: (line, message).
fn schema_error(text: &str, schemas: &[std::sync::Arc<TableSchema>]) -> Option<(usize, String)> {
    schema_error_unique(text, schemas, &[])
}

/// `schema_error` with unique indexes besides the keys: (table, its columns).
fn schema_error_unique(
    text: &str,
    schemas: &[std::sync::Arc<TableSchema>],
    unique: &[(&str, Vec<Vec<String>>)],
) -> Option<(usize, String)> {
    let docs = parse(text);
    let lookup = |name: &str| {
        let indexes = unique
            .iter()
            .find(|(t, _)| *t == name)
            .map_or(&[][..], |(_, u)| u.as_slice());
        schemas
            .iter()
            .find(|t| t.qualified_name() == name)
            .map(|t| (&**t, indexes))
    };
    check_against_schemas(Path::new("c.toml"), text, &docs[0], &lookup)
        .err()
        .map(|e| (e.line_col.unwrap().0, e.message))
}

#[test]
fn the_example_matches_its_tables() {
    assert_eq!(schema_error(SHOP, &shop_schemas()), None);
}

#[test]
fn schema_mistakes_name_their_line() {
    let schemas = shop_schemas();
    for (from, to, at, says) in [
        (
            "columns = [\"sku\", \"qty\", \"price\"]",
            "columns = [\"sku\", \"qty\", \"cost\"]",
            "columns = [\"sku\"",
            "`shop.order_items` has no column `cost`",
        ),
        (
            "order_by = [\"id\"]",
            "order_by = [\"placed\"]",
            "order_by",
            "`shop.orders` has no column `placed`",
        ),
        (
            "on = { id = \"customer_id\" }",
            "on = { id = \"client_id\" }",
            "client_id",
            "`shop.orders` has no column `client_id`",
        ),
        (
            "on = { region_id = \"id\" }",
            "on = { region = \"id\" }",
            "on = { region = ",
            "`shop.customers` has no column `region`",
        ),
        (
            "on = { region_id = \"id\" }",
            "on = { region_id = \"code\" }",
            "region_id = \"code\"",
            "must join the key or a unique index of `shop.regions` so that at most one row matches: (id)",
        ),
        (
            "from = \"shop.regions\"",
            "from = \"shop.areas\"",
            "shop.areas",
            "`shop.areas`, which the server does not have",
        ),
    ] {
        let text = SHOP.replacen(from, to, 1);
        assert_ne!(text, SHOP, "{from}");
        let (line, msg) = schema_error(&text, &schemas).unwrap_or_else(|| panic!("{to}: no error"));
        assert_eq!(line, line_of(&text, at), "{to}: {msg}");
        assert!(msg.contains(says), "{to}: {msg}");
    }
    // The root gone.
    let (line, msg) = schema_error(SHOP, &schemas[1..]).unwrap();
    assert_eq!(line, line_of(SHOP, "root = "));
    assert!(
        msg.contains("`shop.customers`, which the server does not have"),
        "{msg}"
    );
}

#[test]
fn an_embed_may_join_a_unique_index_instead_of_the_key() {
    let schemas = shop_schemas();
    let text = SHOP.replacen("on = { region_id = \"id\" }", "on = { name = \"name\" }", 1);
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // No unique index on the regions' name: the key is what it must join.
    let (line, msg) = schema_error(&text, &schemas).expect("an error");
    assert_eq!(line, line_of(&text, "on = { name = "));
    assert!(
        msg.contains("so that at most one row matches: (id);"),
        "{msg}"
    );
    // UNIQUE (name): one row at most.
    let by_name = [("shop.regions", vec![cols(&["name"])])];
    assert_eq!(schema_error_unique(&text, &schemas, &by_name), None);
    // UNIQUE (name, code) does not make `name` alone unique; every candidate is named.
    let pair = [("shop.regions", vec![cols(&["name", "code"])])];
    let (_, msg) = schema_error_unique(&text, &schemas, &pair).expect("an error");
    assert!(msg.contains(": (id) or (name, code);"), "{msg}");
    // Joining more columns than a unique index holds still finds one row at most.
    let both = SHOP.replacen(
        "on = { region_id = \"id\" }",
        "on = { name = \"name\", region_id = \"code\" }",
        1,
    );
    let code = [("shop.regions", vec![cols(&["code"])])];
    assert_eq!(schema_error_unique(&both, &schemas, &code), None);
}

#[test]
fn every_table_must_be_captured() {
    let docs = parse(SHOP);
    let check = |captured: &dyn Fn(&str) -> bool| {
        check_captured(Path::new("c.toml"), SHOP, &docs[0], captured).err()
    };
    assert!(check(&|_| true).is_none());
    let e = check(&|t| t != "shop.order_items").unwrap();
    assert_eq!(
        e.line_col.unwrap().0,
        line_of(SHOP, "from = \"shop.order_items\"")
    );
    assert!(
        e.message.contains("add it to [source] include"),
        "{}",
        e.message
    );
}
