//! DDL statements from binlog query events, parsed with sqlparser (MySQL dialect):
//! which tables they truncate, drop, rename or create, and which columns they rename.
//!
//! Column layouts themselves come from the table maps (binlog_row_metadata=FULL), so
//! a statement that cannot be parsed loses nothing: the next table map of each table
//! shows its new layout. The parse adds what table maps cannot say: TRUNCATE (which
//! writes no rows), tables dropped or renamed, and renames that are certain.
//!
//! A query event can also carry row changes written statement-based (a session with
//! binlog_format MIXED or STATEMENT): their rows are not in the binlog, so they must
//! stop the pipeline, never pass as DDL. They are recognised by parsing, comments and
//! `WITH` prefixes included ([`Ddl::RowsNotLogged`]); transaction control is read from
//! the leading words ([`control`]) before anything is parsed.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, AlterTableOperation, ObjectName, ObjectType, SetExpr, Statement,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

/// `(database, table)`.
pub type TableName = (String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ddl {
    Truncate(Vec<TableName>),
    DropTables(Vec<TableName>),
    RenameTables(Vec<(TableName, TableName)>),
    CreateTable(TableName),
    /// ALTER TABLE, with the column renames it states (RENAME COLUMN, CHANGE a b).
    AlterTable {
        table: TableName,
        renamed: Vec<(String, String)>,
    },
    /// Not about tables' data or layout (GRANT, CREATE USER, views, ...).
    Other,
    /// A row change written as a statement (INSERT, UPDATE, DELETE, REPLACE, MERGE,
    /// LOAD DATA, also behind comments or a WITH clause): its rows are not logged.
    /// With the tables it names (written or read), when the statement could be read.
    RowsNotLogged(Option<Vec<TableName>>),
    /// sqlparser could not read it; the reason.
    Unparsed(String),
}

/// Reads one statement; `default_db` is the query event's current database.
pub fn parse(sql: &str, default_db: &str) -> Ddl {
    let statements = match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(s) => s,
        // sqlparser does not know every statement MariaDB accepts; a row change it
        // cannot read still starts with a data keyword.
        Err(_) if starts_as_row_change(sql) => return Ddl::RowsNotLogged(None),
        Err(e) => return Ddl::Unparsed(e.to_string()),
    };
    if statements.iter().any(changes_rows) {
        let mut tables = Vec::new();
        let _ = visit_relations(&statements, |name| {
            tables.push(table_name(name, default_db));
            ControlFlow::<()>::Continue(())
        });
        return Ddl::RowsNotLogged(Some(tables));
    }
    let Some(statement) = statements.into_iter().next() else {
        return Ddl::Other;
    };
    let name = |n: &ObjectName| table_name(n, default_db);
    match statement {
        Statement::Truncate(t) => {
            Ddl::Truncate(t.table_names.iter().map(|t| name(&t.name)).collect())
        }
        Statement::Drop {
            object_type: ObjectType::Table,
            names,
            ..
        } => Ddl::DropTables(names.iter().map(name).collect()),
        Statement::RenameTable(renames) => Ddl::RenameTables(
            renames
                .iter()
                .map(|r| (name(&r.old_name), name(&r.new_name)))
                .collect(),
        ),
        Statement::CreateTable(c) => Ddl::CreateTable(name(&c.name)),
        Statement::AlterTable(a) => {
            let mut renamed = Vec::new();
            for op in &a.operations {
                match op {
                    AlterTableOperation::RenameColumn {
                        old_column_name,
                        new_column_name,
                    } => {
                        renamed.push((old_column_name.value.clone(), new_column_name.value.clone()))
                    }
                    AlterTableOperation::ChangeColumn {
                        old_name, new_name, ..
                    } if old_name.value != new_name.value => {
                        renamed.push((old_name.value.clone(), new_name.value.clone()))
                    }
                    AlterTableOperation::RenameTable { table_name } => {
                        let to = match table_name {
                            sqlparser::ast::RenameTableNameKind::As(n)
                            | sqlparser::ast::RenameTableNameKind::To(n) => name(n),
                        };
                        return Ddl::RenameTables(vec![(name(&a.name), to)]);
                    }
                    _ => {}
                }
            }
            Ddl::AlterTable {
                table: name(&a.name),
                renamed,
            }
        }
        _ => Ddl::Other,
    }
}

/// Whether a statement writes rows (directly, or as the body of a WITH query).
fn changes_rows(statement: &Statement) -> bool {
    match statement {
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::LoadData { .. } => true,
        Statement::Query(q) => matches!(
            q.body.as_ref(),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ),
        _ => false,
    }
}

/// For statements sqlparser cannot read: the first word is a data keyword. `WITH`
/// counts, since in MySQL and MariaDB it only leads queries and row changes, and a
/// plain query never reaches the binlog.
fn starts_as_row_change(sql: &str) -> bool {
    let [first, _] = leading_words(sql);
    matches!(
        first.as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD" | "WITH" | "MERGE"
    )
}

/// Transaction control in a query event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// BEGIN, START TRANSACTION, XA START/BEGIN.
    Begin,
    /// COMMIT, ROLLBACK (the whole transaction), XA COMMIT/ROLLBACK.
    End,
    /// Inside a transaction without ending it: SAVEPOINT, ROLLBACK TO, RELEASE
    /// SAVEPOINT, XA END, XA PREPARE.
    Within,
}

/// Reads transaction control from the leading words (after comments), or None for
/// any other statement.
pub fn control(sql: &str) -> Option<Control> {
    let [first, second] = leading_words(sql);
    match (first.as_str(), second.as_str()) {
        ("BEGIN", _) | ("START", "TRANSACTION") | ("XA", "START" | "BEGIN") => Some(Control::Begin),
        ("ROLLBACK", "TO") | ("SAVEPOINT", _) | ("RELEASE", "SAVEPOINT") => Some(Control::Within),
        ("XA", "END" | "PREPARE") => Some(Control::Within),
        ("COMMIT", _) | ("ROLLBACK", _) | ("XA", "COMMIT" | "ROLLBACK") => Some(Control::End),
        _ => None,
    }
}

/// The first two words of a statement, uppercased, skipping whitespace and comments
/// (`/* */`, `-- `, `#`). The body of an executable comment (`/*!50100 ...`,
/// `/*M!100100 ...`) is read as code, as the server does.
fn leading_words(sql: &str) -> [String; 2] {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut words: [String; 2] = Default::default();
    let mut found = 0;
    while i < b.len() && found < 2 {
        let rest = &b[i..];
        if rest[0].is_ascii_whitespace() || rest.starts_with(b"*/") {
            i += if rest[0] == b'*' { 2 } else { 1 };
        } else if rest.starts_with(b"/*!") || rest.starts_with(b"/*M!") {
            i += if rest[2] == b'M' { 4 } else { 3 };
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            i = find(b, i + 2, b"*/").map_or(b.len(), |end| end + 2);
        } else if rest.starts_with(b"--") || rest[0] == b'#' {
            i = find(b, i, b"\n").map_or(b.len(), |end| end + 1);
        } else if rest[0].is_ascii_alphabetic() || rest[0] == b'_' {
            let len = rest
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            words[found] = sql[i..i + len].to_ascii_uppercase();
            found += 1;
            i += len;
        } else {
            break;
        }
    }
    words
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// `db.table` or `table` (in the current database), unquoted.
fn table_name(n: &ObjectName, default_db: &str) -> TableName {
    let parts: Vec<String> =
        n.0.iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
            .collect();
    match parts.as_slice() {
        [db, table] => (db.clone(), table.clone()),
        [table] => (default_db.to_string(), table.clone()),
        _ => (default_db.to_string(), n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: &str, table: &str) -> TableName {
        (db.to_string(), table.to_string())
    }

    #[test]
    fn statements_as_mariadb_writes_them() {
        assert_eq!(
            parse("TRUNCATE TABLE `orders`", "shop"),
            Ddl::Truncate(vec![t("shop", "orders")])
        );
        assert_eq!(
            parse("truncate other.t", "shop"),
            Ddl::Truncate(vec![t("other", "t")])
        );
        assert_eq!(
            parse(
                "DROP TABLE IF EXISTS `a`, `b`.`c` /* generated by server */",
                "shop"
            ),
            Ddl::DropTables(vec![t("shop", "a"), t("b", "c")])
        );
        assert_eq!(
            parse("RENAME TABLE a TO a_old, x.b TO x.c", "shop"),
            Ddl::RenameTables(vec![
                (t("shop", "a"), t("shop", "a_old")),
                (t("x", "b"), t("x", "c"))
            ])
        );
        assert_eq!(
            parse("CREATE TABLE `n` (id INT PRIMARY KEY)", "shop"),
            Ddl::CreateTable(t("shop", "n"))
        );
        assert_eq!(
            parse(
                "ALTER TABLE orders RENAME COLUMN note TO remark, ADD COLUMN x INT",
                "shop"
            ),
            Ddl::AlterTable {
                table: t("shop", "orders"),
                renamed: vec![("note".into(), "remark".into())]
            }
        );
        assert_eq!(
            parse(
                "ALTER TABLE orders CHANGE `a` `b` BIGINT NOT NULL, CHANGE c c INT",
                "shop"
            ),
            Ddl::AlterTable {
                table: t("shop", "orders"),
                renamed: vec![("a".into(), "b".into())]
            }
        );
        assert_eq!(
            parse("ALTER TABLE orders RENAME TO orders_2024", "shop"),
            Ddl::RenameTables(vec![(t("shop", "orders"), t("shop", "orders_2024"))])
        );
        assert_eq!(
            parse("GRANT SELECT ON shop.* TO 'u'@'%'", "shop"),
            Ddl::Other
        );
        assert!(matches!(
            parse("ALTER TABLE t ALGORITHM=INSTANT, ADD COLUMN ((", "shop"),
            Ddl::Unparsed(_)
        ));
    }

    #[test]
    fn row_changes_written_as_statements_are_recognised_behind_comments_and_with() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "/* app=checkout */ UPDATE t SET a = 1",
            "  -- note\n  DELETE FROM t WHERE id = 1",
            "# note\nREPLACE INTO t VALUES (1)",
            "WITH x AS (SELECT 1 AS id) UPDATE t JOIN x USING (id) SET a = 2",
            "WITH x AS (SELECT 1 AS id) DELETE t FROM t JOIN x USING (id)",
            "/*!40000 INSERT INTO t VALUES (1) */",
            "LOAD DATA INFILE '/tmp/x' INTO TABLE t",
            "INSERT INTO t SELECT * FROM u ON DUPLICATE KEY UPDATE a = VALUES(a)",
            // Not readable by sqlparser, still a row change.
            "UPDATE LOW_PRIORITY IGNORE t SET a = 1 ORDER BY id LIMIT 3 RETURNING ((",
        ] {
            assert!(matches!(parse(sql, "shop"), Ddl::RowsNotLogged(_)), "{sql}");
            assert_eq!(control(sql), None, "{sql}");
        }
        // DDL that mentions the keywords is still DDL.
        assert!(matches!(
            parse("/* UPDATE */ ALTER TABLE t ADD COLUMN `update` INT", "shop"),
            Ddl::AlterTable { .. }
        ));
        assert_eq!(
            parse("CREATE TABLE `insert` (id INT)", "shop"),
            Ddl::CreateTable(t("shop", "insert"))
        );
    }

    #[test]
    fn a_row_change_names_the_tables_it_touches() {
        let tables = |sql| match parse(sql, "shop") {
            Ddl::RowsNotLogged(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            tables("UPDATE t JOIN other.u ON t.id = u.id SET t.a = u.a"),
            Some(vec![t("shop", "t"), t("other", "u")])
        );
        assert_eq!(
            tables("/* x */ INSERT INTO log.audit SELECT * FROM shop.orders"),
            Some(vec![t("log", "audit"), t("shop", "orders")])
        );
        assert_eq!(
            tables("DELETE FROM `a b`.`c` WHERE id = 1"),
            Some(vec![t("a b", "c")])
        );
        assert_eq!(
            tables("UPDATE LOW_PRIORITY IGNORE t SET a = 1 ORDER BY id LIMIT 3 RETURNING (("),
            None
        );
    }

    #[test]
    fn transaction_control_is_read_after_comments() {
        for (sql, want) in [
            ("BEGIN", Control::Begin),
            ("/* x */ START TRANSACTION", Control::Begin),
            ("XA START X'31',X'',1", Control::Begin),
            ("COMMIT", Control::End),
            ("ROLLBACK", Control::End),
            ("XA COMMIT X'31',X'',1", Control::End),
            ("ROLLBACK TO `s1`", Control::Within),
            ("SAVEPOINT `s1`", Control::Within),
            ("XA END X'31',X'',1", Control::Within),
            ("XA PREPARE X'31',X'',1", Control::Within),
        ] {
            assert_eq!(control(sql), Some(want), "{sql}");
        }
        assert_eq!(control("BEGINNING_TABLE_DROP"), None);
        assert_eq!(control("CREATE TABLE commit_log (id INT)"), None);
    }
}
