//! The optional DDL event trigger (`tributary pg-ddl-trigger`): PostgreSQL does not
//! replicate DDL, but an event trigger can put a transactional logical message into
//! the WAL in the DDL's own transaction, right after the statement, so the stream sees
//! the DDL at its exact position. Without it, tables created and dropped are found by
//! looking at the catalog (tables.rs) and column changes at the table's next row.
//!
//! One trigger per database serves every connector (each keeps the messages about
//! its included tables). The message (prefix `MESSAGE_PREFIX`) is JSON: the command
//! tag, the table's oid, schema and name; after CREATE and ALTER TABLE also the
//! table's columns as the catalog has them at that point (names and
//! `format_type`, as pgoutput's Relation message gives them) and the statement's
//! text, whose `RENAME COLUMN`s make renames certain.

use serde::Deserialize;
use sqlparser::ast::{AlterTableOperation, ObjectName, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The prefix of the trigger's messages.
pub const MESSAGE_PREFIX: &str = "tributary.ddl";

/// The event triggers' names (`check` looks for them).
pub const TRIGGERS: [&str; 2] = ["tributary_ddl_end", "tributary_ddl_drop"];

/// Installs (or replaces) the function and the two event triggers. Event triggers need
/// a superuser; the function is SECURITY DEFINER so that DDL run by any user may emit
/// the message.
pub const INSTALL: &str = r#"CREATE OR REPLACE FUNCTION public.tributary_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $tributary$
DECLARE
  r record;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' LOOP
      PERFORM pg_logical_emit_message(true, 'tributary.ddl', json_build_object(
        'tag', TG_TAG, 'oid', r.objid::bigint, 'schema', r.schema_name, 'name', r.object_name)::text);
    END LOOP;
  ELSE
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
             WHERE object_type IN ('table', 'table column') LOOP
      PERFORM pg_logical_emit_message(true, 'tributary.ddl', json_build_object(
        'tag', r.command_tag, 'oid', r.objid::bigint, 'schema', n.nspname, 'name', c.relname,
        'columns', (SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod))
                                    ORDER BY a.attnum)
                    FROM pg_attribute a
                    WHERE a.attrelid = r.objid AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attgenerated = ''),
        'query', current_query())::text)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = r.objid;
    END LOOP;
  END IF;
END
$tributary$;
DROP EVENT TRIGGER IF EXISTS tributary_ddl_end;
DROP EVENT TRIGGER IF EXISTS tributary_ddl_drop;
CREATE EVENT TRIGGER tributary_ddl_end ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
  EXECUTE FUNCTION public.tributary_ddl();
CREATE EVENT TRIGGER tributary_ddl_drop ON sql_drop EXECUTE FUNCTION public.tributary_ddl();
"#;

/// Removes what `INSTALL` made.
pub const UNINSTALL: &str = "DROP EVENT TRIGGER IF EXISTS tributary_ddl_end;
DROP EVENT TRIGGER IF EXISTS tributary_ddl_drop;
DROP FUNCTION IF EXISTS public.tributary_ddl();
";

/// One message of the trigger.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DdlMessage {
    pub tag: String,
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// (name, type) after the statement (CREATE and ALTER TABLE).
    #[serde(default)]
    pub columns: Option<Vec<(String, String)>>,
    /// The statement's text (the whole query string the client sent).
    #[serde(default)]
    pub query: Option<String>,
}

impl DdlMessage {
    pub fn parse(content: &[u8]) -> Result<DdlMessage, String> {
        serde_json::from_slice(content).map_err(|e| format!("a DDL trigger message: {e}"))
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether it tells of a table created or dropped (which a look at the catalog
    /// then finds), rather than altered.
    pub fn creates_or_drops(&self) -> bool {
        self.tag != "ALTER TABLE"
    }

    /// The column renames the statement states for this table (`ALTER TABLE ...
    /// RENAME [COLUMN] a TO b`), in order. A query string the parser cannot read
    /// states none: the layout still shows a drop and an add.
    pub fn renamed_columns(&self) -> Vec<(String, String)> {
        let Some(query) = &self.query else {
            return Vec::new();
        };
        let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, query) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in statements {
            let Statement::AlterTable(a) = s else {
                continue;
            };
            if !self.names(&a.name) {
                continue;
            }
            for op in &a.operations {
                if let AlterTableOperation::RenameColumn {
                    old_column_name,
                    new_column_name,
                } = op
                {
                    out.push((old_column_name.value.clone(), new_column_name.value.clone()));
                }
            }
        }
        out
    }

    /// Whether `name` (as written in the statement) is this table: its name, and its
    /// schema when the statement gives one.
    fn names(&self, name: &ObjectName) -> bool {
        let parts: Vec<&str> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.as_str()))
            .collect();
        match parts.as_slice() {
            [table] => *table == self.name,
            [.., schema, table] => *schema == self.schema && *table == self.name,
            [] => false,
        }
    }
}

/// Whether both event triggers are installed and enabled in the connected database.
pub async fn installed(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY($1) AND evtenabled <> 'D'",
            &[&TRIGGERS.to_vec()],
        )
        .await?
        .get(0);
    Ok(n == TRIGGERS.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(query: &str) -> DdlMessage {
        DdlMessage::parse(
            serde_json::json!({
                "tag": "ALTER TABLE", "oid": 16400, "schema": "shop", "name": "orders",
                "columns": [["id", "integer"], ["remark", "text"]],
                "query": query,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn renames_the_statement_states_for_its_table() {
        assert_eq!(
            message("ALTER TABLE shop.orders RENAME COLUMN note TO remark").renamed_columns(),
            [("note".to_string(), "remark".to_string())]
        );
        assert_eq!(
            message("alter table orders rename note to remark; insert into x values (1)")
                .renamed_columns(),
            [("note".to_string(), "remark".to_string())]
        );
        // Another table, another schema, or no rename: none.
        for q in [
            "ALTER TABLE shop.other RENAME COLUMN note TO remark",
            "ALTER TABLE archive.orders RENAME COLUMN note TO remark",
            "ALTER TABLE shop.orders ADD COLUMN x int",
            "not sql at all ((",
        ] {
            assert!(message(q).renamed_columns().is_empty(), "{q}");
        }
        let m = message("");
        assert_eq!(m.qualified(), "shop.orders");
        assert!(!m.creates_or_drops());
        assert_eq!(
            m.columns.unwrap()[1],
            ("remark".to_string(), "text".to_string())
        );
    }
}
