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
    visit_relations, AlterTableOperation, BinaryLength, CharacterLength, ColumnOption, DataType,
    ExactNumberInfo, ObjectName, ObjectType, SetExpr, Statement,
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
    /// ALTER TABLE, with the column renames it states (RENAME COLUMN, CHANGE a b) and
    /// the types it gives existing columns (MODIFY, CHANGE: the column's name before
    /// the statement, and the type as `table::type_name` will spell it), where the
    /// statement alone says what the table map will.
    AlterTable {
        table: TableName,
        renamed: Vec<(String, String)>,
        retyped: Vec<(String, String)>,
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
            let mut retyped = Vec::new();
            for op in &a.operations {
                match op {
                    AlterTableOperation::ModifyColumn {
                        col_name,
                        data_type,
                        options,
                        ..
                    } => retyped.extend(
                        stated_type(data_type, options).map(|t| (col_name.value.clone(), t)),
                    ),
                    AlterTableOperation::RenameColumn {
                        old_column_name,
                        new_column_name,
                    } => {
                        renamed.push((old_column_name.value.clone(), new_column_name.value.clone()))
                    }
                    AlterTableOperation::ChangeColumn {
                        old_name,
                        new_name,
                        data_type,
                        options,
                        ..
                    } => {
                        if old_name.value != new_name.value {
                            renamed.push((old_name.value.clone(), new_name.value.clone()));
                        }
                        retyped.extend(
                            stated_type(data_type, options).map(|t| (old_name.value.clone(), t)),
                        );
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
                retyped,
            }
        }
        _ => Ddl::Other,
    }
}

/// The type name a column declared as `dt` gets in the table map (`table::type_name`),
/// when the declaration alone says it: None when a character set option or a
/// type the server sizes by itself (`TEXT(n)`) leaves it to the table map.
fn stated_type(dt: &DataType, options: &[ColumnOption]) -> Option<String> {
    if options
        .iter()
        .any(|o| matches!(o, ColumnOption::CharacterSet(_)))
    {
        return None;
    }
    let chars = |l: &Option<CharacterLength>, default: u64| match l {
        None => Some(default),
        Some(CharacterLength::IntegerLength { length, .. }) => Some(*length),
        Some(CharacterLength::Max) => None,
    };
    let decimal = |info: &ExactNumberInfo, unsigned: bool| {
        let (p, s) = match info {
            ExactNumberInfo::None => (10, 0),
            ExactNumberInfo::Precision(p) => (*p, 0),
            ExactNumberInfo::PrecisionAndScale(p, s) => (*p, u64::try_from(*s).ok()?),
        };
        Some(format!(
            "decimal({p},{s}){}",
            if unsigned { " unsigned" } else { "" }
        ))
    };
    let fsp = |base: &str, f: &Option<u64>| match f {
        Some(n) if *n > 0 => format!("{base}({n})"),
        _ => base.to_string(),
    };
    Some(match dt {
        DataType::TinyInt(_) => "tinyint".into(),
        DataType::TinyIntUnsigned(_) => "tinyint unsigned".into(),
        DataType::SmallInt(_) => "smallint".into(),
        DataType::SmallIntUnsigned(_) => "smallint unsigned".into(),
        DataType::MediumInt(_) => "mediumint".into(),
        DataType::MediumIntUnsigned(_) => "mediumint unsigned".into(),
        DataType::Int(_) | DataType::Integer(_) => "int".into(),
        DataType::IntUnsigned(_) | DataType::IntegerUnsigned(_) => "int unsigned".into(),
        DataType::BigInt(_) => "bigint".into(),
        DataType::BigIntUnsigned(_) => "bigint unsigned".into(),
        DataType::Decimal(i) | DataType::Dec(i) | DataType::Numeric(i) => decimal(i, false)?,
        DataType::DecimalUnsigned(i) | DataType::DecUnsigned(i) => decimal(i, true)?,
        DataType::Varchar(l) | DataType::CharacterVarying(l) | DataType::CharVarying(l) => {
            format!("varchar({})", chars(l, 0).filter(|_| l.is_some())?)
        }
        DataType::Char(l) | DataType::Character(l) => format!("char({})", chars(l, 1)?),
        DataType::Binary(l) => format!("binary({})", l.unwrap_or(1)),
        DataType::Varbinary(Some(BinaryLength::IntegerLength { length })) => {
            format!("varbinary({length})")
        }
        DataType::TinyText => "tinytext".into(),
        DataType::Text => "text".into(),
        DataType::MediumText => "mediumtext".into(),
        DataType::LongText => "longtext".into(),
        DataType::TinyBlob => "tinyblob".into(),
        DataType::Blob(None) => "blob".into(),
        DataType::MediumBlob => "mediumblob".into(),
        DataType::LongBlob => "longblob".into(),
        DataType::Bit(n) => format!("bit({})", n.unwrap_or(1)),
        DataType::Date => "date".into(),
        DataType::Datetime(f) => fsp("datetime", f),
        DataType::Timestamp(f, _) => fsp("timestamp", f),
        DataType::Time(f, _) => fsp("time", f),
        _ => return None,
    })
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
                renamed: vec![("note".into(), "remark".into())],
                retyped: vec![],
            }
        );
        assert_eq!(
            parse(
                "ALTER TABLE orders CHANGE `a` `b` BIGINT NOT NULL, CHANGE c c INT",
                "shop"
            ),
            Ddl::AlterTable {
                table: t("shop", "orders"),
                renamed: vec![("a".into(), "b".into())],
                retyped: vec![("a".into(), "bigint".into()), ("c".into(), "int".into())],
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
    fn stated_types_are_spelled_as_table_maps_spell_them() {
        let retyped = |sql: &str| match parse(sql, "shop") {
            Ddl::AlterTable { retyped, .. } => retyped,
            other => panic!("{sql}: {other:?}"),
        };
        let one = |sql: &str| retyped(sql).into_iter().map(|(_, t)| t).collect::<Vec<_>>();
        for (decl, name) in [
            ("VARCHAR(20) NOT NULL", "varchar(20)"),
            ("CHAR(3)", "char(3)"),
            ("CHAR", "char(1)"),
            ("DECIMAL(10,2)", "decimal(10,2)"),
            ("DECIMAL(10)", "decimal(10,0)"),
            ("DECIMAL", "decimal(10,0)"),
            ("DECIMAL(12,4) UNSIGNED", "decimal(12,4) unsigned"),
            ("INT(11) UNSIGNED", "int unsigned"),
            ("BIGINT", "bigint"),
            ("TINYTEXT", "tinytext"),
            ("TEXT", "text"),
            ("MEDIUMBLOB", "mediumblob"),
            ("VARBINARY(16)", "varbinary(16)"),
            ("BINARY(4)", "binary(4)"),
            ("DATETIME(6)", "datetime(6)"),
            ("DATETIME", "datetime"),
            ("TIMESTAMP(3) NULL", "timestamp(3)"),
            ("BIT(8)", "bit(8)"),
        ] {
            assert_eq!(
                one(&format!("ALTER TABLE t MODIFY COLUMN c {decl}")),
                [name],
                "{decl}"
            );
        }
        // What the table map alone will say: a character set, a sized TEXT, ENUM.
        for decl in [
            "VARCHAR(20) CHARACTER SET binary",
            "TEXT(100)",
            "ENUM('a','b')",
        ] {
            assert!(
                one(&format!("ALTER TABLE t MODIFY c {decl}")).is_empty(),
                "{decl}"
            );
        }
        assert_eq!(
            retyped("ALTER TABLE t CHANGE COLUMN a b VARCHAR(5), ADD COLUMN x INT"),
            [("a".to_string(), "varchar(5)".to_string())]
        );
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
