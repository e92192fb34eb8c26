//! Joined documents (`[[document]]`) against a real MariaDB: `tributary check` checks a
//! definition against the server's tables and names the file and line of what does
//! not match; mistakes the file alone shows stop at load; `tributary run` refuses a
//! connector with documents while they are not maintained yet.

mod common;

use common::*;

const TABLES: &[&str] = &[
    "CREATE TABLE `{db}`.regions (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, code CHAR(2) NOT NULL)",
    "CREATE TABLE `{db}`.customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, region_id INT)",
    "CREATE TABLE `{db}`.orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(10,2) NOT NULL, status VARCHAR(20) NOT NULL, created_at DATETIME(6) NOT NULL)",
    "CREATE TABLE `{db}`.order_items (order_id INT NOT NULL, line INT NOT NULL, sku VARCHAR(20) NOT NULL, qty INT NOT NULL, price DECIMAL(10,2) NOT NULL, PRIMARY KEY (order_id, line))",
];

fn document(db: &str) -> String {
    format!(
        r#"
[[document]]
name = "customers"
root = "{db}.customers"

[[document.embed]]
field = "region"
from = "{db}.regions"
on = {{ region_id = "id" }}
columns = ["name", "code"]

[[document.nest]]
field = "orders"
from = "{db}.orders"
on = {{ id = "customer_id" }}
columns = ["id", "amount", "status", "created_at"]
order_by = ["id"]

[[document.nest.nest]]
field = "items"
from = "{db}.order_items"
on = {{ id = "order_id" }}
columns = ["sku", "qty", "price"]
"#
    )
}

/// The connector with `doc` appended; returns its path.
fn with_document(dir: &std::path::Path, db: &str, doc: &str) -> std::path::PathBuf {
    let c = connector(dir, SHARED_PORT, db, "");
    let text = std::fs::read_to_string(&c).unwrap() + doc;
    std::fs::write(&c, text).unwrap();
    c
}

fn line_of(path: &std::path::Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_matches_a_document_with_its_tables_and_run_refuses_it_for_now() {
    let db = new_db("documents", TABLES).await;
    let dir = tempfile::tempdir().unwrap();

    // The issue's document over the four tables: check finds every column and join.
    let c = with_document(dir.path(), &db, &document(&db));
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("ok    document customers: 4 tables, every column and join found"),
        "{out}"
    );
    assert!(
        out.contains("`tributary run` refuses the connector"),
        "{out}"
    );

    // A column the server's table does not have, and an embed not joined on its key:
    // named at their lines by check.
    for (from, to, at, says) in [
        (
            "\"qty\", \"price\"",
            "\"qty\", \"cost\"",
            "\"cost\"",
            "has no column `cost`",
        ),
        (
            "region_id = \"id\"",
            "region_id = \"code\"",
            "region_id = \"code\"",
            "must join the key of",
        ),
    ] {
        let c = with_document(dir.path(), &db, &document(&db).replacen(from, to, 1));
        let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
        assert_eq!(code, 1, "{to}: {out}\n{err}");
        let line = line_of(&c, at);
        assert!(
            out.contains(&format!("{}:{line}:", c.display())) && out.contains(says),
            "{to}: line {line}\n{out}"
        );
    }

    // A table outside `include` stops at load, with its line.
    let c = with_document(
        dir.path(),
        &db,
        &document(&db).replacen(&format!("{db}.regions"), "other.regions", 1),
    );
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}\n{err}");
    let line = line_of(&c, "other.regions");
    assert!(
        err.contains(&format!("{}:{line}:", c.display())) && err.contains("[source] include"),
        "line {line}\n{out}\n{err}"
    );

    // Run refuses rather than leave the index empty.
    let c = with_document(dir.path(), &db, &document(&db));
    let (code, _, err) = tributary(&["run", "--connector", c.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not built by this version yet"), "{err}");
}
