//! information_schema lookups over an ordinary connection: MariaDB's JSON columns and
//! the included tables' columns as the server has them now.

use crate::source::CommonSettings;
use std::collections::HashSet;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::config::MysqlSourceConfig;
use crate::event::Column;
use crate::source::filter::TableFilter;

/// MariaDB's JSON type is LONGTEXT plus a `json_valid(col)` check constraint: the
/// columns of `db.table` that have one.
pub async fn json_columns(
    conn: &mut Conn,
    db: &str,
    table: &str,
) -> Result<HashSet<String>, mysql_async::Error> {
    let rows: Vec<(String, String)> = conn
        .exec(
            "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await?;
    let mut out = HashSet::new();
    for (_, clause) in rows {
        let c: String = clause.chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(col) = c
            .to_ascii_lowercase()
            .starts_with("json_valid(`")
            .then(|| c.get(12..c.len().saturating_sub(2)))
            .flatten()
            .filter(|_| c.ends_with("`)"))
        {
            out.insert(col.replace("``", "`"));
        }
    }
    Ok(out)
}

/// The type name the binlog stream gives a column (see `table::type_name`), from
/// information_schema's DATA_TYPE and COLUMN_TYPE: lengths, precision and
/// fractional digits as COLUMN_TYPE has them, display widths left out.
pub fn stream_type_name(data_type: &str, column_type: &str, json: bool) -> String {
    let data_type = data_type.to_ascii_lowercase();
    let column_type = column_type.to_ascii_lowercase();
    let base = match data_type.as_str() {
        "tinytext" | "text" | "mediumtext" | "longtext" if json => "json",
        "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" | "geometry" => "geometry",
        "double precision" | "real" => "double",
        "numeric" => "decimal",
        other => other,
    };
    let modifier = match base {
        "varchar" | "char" | "varbinary" | "binary" | "decimal" | "bit" | "time" | "datetime"
        | "timestamp" => column_type
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(inner, _)| format!("({})", inner.replace(' ', ""))),
        _ => None,
    };
    let mut name = format!("{base}{}", modifier.unwrap_or_default());
    if column_type.contains("unsigned") {
        name.push_str(" unsigned");
    }
    name
}

/// A MySQL identifier in backquotes.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The existing base tables `filter` includes, as (db, table), in name order.
pub async fn included_tables(
    conn: &mut Conn,
    filter: &TableFilter,
) -> Result<Vec<(String, String)>, mysql_async::Error> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter(|(db, t)| filter.matches(db, t))
        .collect())
}

/// The included tables' columns, in order.
pub async fn live_schemas(
    cfg: &MysqlSourceConfig,
) -> Result<Vec<(String, Vec<Column>)>, crate::failure::Failure> {
    let password = cfg.password().map_err(crate::failure::Failure::Fatal)?;
    let mut conn = super::connect::connect(cfg, password.as_ref()).await?;
    let fail = |e: mysql_async::Error| {
        super::connect::classify(cfg, &e)
            .reword(|_| format!("reading information_schema at {}: {e}", cfg.address()))
    };
    let rows: Vec<(String, String, String, String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        )
        .await
        .map_err(fail)?;
    let filter = cfg.filter();
    let mut out: Vec<(String, Vec<Column>)> = Vec::new();
    let mut json = HashSet::new();
    for (db, table, column, data_type, column_type) in rows {
        if !filter.matches(&db, &table) {
            continue;
        }
        let name = format!("{db}.{table}");
        if out.last().is_none_or(|(n, _)| *n != name) {
            json = json_columns(&mut conn, &db, &table).await.map_err(fail)?;
            out.push((name, Vec::new()));
        }
        let type_name = stream_type_name(&data_type, &column_type, json.contains(&column));
        out.last_mut().expect("pushed").1.push(Column {
            name: column,
            type_name,
        });
    }
    let _ = conn.disconnect().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_stream() {
        assert_eq!(
            stream_type_name("bigint", "bigint(20) unsigned", false),
            "bigint unsigned"
        );
        assert_eq!(
            stream_type_name("varchar", "varchar(20)", false),
            "varchar(20)"
        );
        assert_eq!(stream_type_name("char", "char(3)", false), "char(3)");
        assert_eq!(stream_type_name("longtext", "longtext", true), "json");
        assert_eq!(
            stream_type_name("mediumtext", "mediumtext", false),
            "mediumtext"
        );
        assert_eq!(stream_type_name("tinyblob", "tinyblob", false), "tinyblob");
        assert_eq!(stream_type_name("point", "point", false), "geometry");
        assert_eq!(
            stream_type_name("decimal", "decimal(10,2)", false),
            "decimal(10,2)"
        );
        assert_eq!(
            stream_type_name("decimal", "decimal(10,2) unsigned", false),
            "decimal(10,2) unsigned"
        );
        assert_eq!(
            stream_type_name("datetime", "datetime(6)", false),
            "datetime(6)"
        );
        assert_eq!(
            stream_type_name("timestamp", "timestamp", false),
            "timestamp"
        );
        assert_eq!(stream_type_name("bit", "bit(1)", false), "bit(1)");
        assert_eq!(stream_type_name("int", "int(11)", false), "int");
        assert_eq!(stream_type_name("double", "double(10,2)", false), "double");
    }
}
