//! Catalog lookups over the query connection: the included tables, primary keys,
//! type names, and how user-defined types (enums, domains, their arrays) decode.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::values::{builtin, PgType};
use crate::source::filter::TableFilter;

/// A table the connector captures, as the catalog shows it now.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// pg_class.relreplident: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub has_primary_key: bool,
    pub can_select: bool,
}

impl CatalogTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."name"`, for statements.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Whether a publication may include it: UPDATE and DELETE on a published table
    /// without a key or replica identity fail on the server.
    pub fn capturable(&self) -> bool {
        match self.replica_identity {
            b'f' | b'i' => true,
            b'd' => self.has_primary_key,
            _ => false,
        }
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Ordinary and partitioned tables matching the filter, in name order.
pub async fn included_tables(
    client: &Client,
    filter: &TableFilter,
) -> Result<Vec<CatalogTable>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname, c.relname, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                    has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
             ORDER BY n.nspname, c.relname",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| CatalogTable {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            replica_identity: r.get::<_, String>(3).bytes().next().unwrap_or(b'd'),
            has_primary_key: r.get(4),
            can_select: r.get(5),
        })
        .filter(|t| filter.matches(&t.schema, &t.name))
        .collect())
}

/// The key columns events carry, as the stream takes them from a Relation message:
/// the primary key in key order, else (REPLICA IDENTITY USING INDEX) the identity
/// index's columns in table order; empty without either.
pub async fn event_key(client: &Client, oid: u32) -> Result<Vec<String>, tokio_postgres::Error> {
    let pk = primary_key(client, oid).await?;
    if !pk.is_empty() {
        return Ok(pk);
    }
    let identity: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = $1",
            &[&oid],
        )
        .await?
        .get(0);
    if identity != "i" {
        return Ok(Vec::new());
    }
    let columns = index_columns(client, oid, Index::ReplicaIdentity).await?;
    let order: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 \
             AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .filter(|n: &String| columns.contains(n))
        .collect();
    Ok(order)
}

/// The primary key's column names in key order (empty without one).
pub async fn primary_key(client: &Client, oid: u32) -> Result<Vec<String>, tokio_postgres::Error> {
    index_columns(client, oid, Index::Primary).await
}

/// Which index `index_columns` reads.
pub enum Index {
    Primary,
    /// The one REPLICA IDENTITY USING INDEX names.
    ReplicaIdentity,
}

/// An index's column names in key order (empty without such an index).
pub async fn index_columns(
    client: &Client,
    oid: u32,
    index: Index,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let flag = match index {
        Index::Primary => "indisprimary",
        Index::ReplicaIdentity => "indisreplident",
    };
    let rows = client
        .query(
            &format!(
                "SELECT a.attname FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.{flag} ORDER BY k.ord"
            ),
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The column names of each unique index but the primary key, in index order. Partial
/// indexes (unique only where their predicate holds) and those over an expression are
/// left out: neither says that one value of its columns is in one row at most.
pub async fn unique_indexes(
    client: &Client,
    oid: u32,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT i.indexrelid, a.attname FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND NOT i.indisprimary AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts \
             ORDER BY i.indexrelid, k.ord",
            &[&oid],
        )
        .await?;
    let mut out: Vec<(u32, Vec<String>)> = Vec::new();
    for r in &rows {
        let (index, column): (u32, String) = (r.get(0), r.get(1));
        match out.last_mut() {
            Some((at, cols)) if *at == index => cols.push(column),
            _ => out.push((index, vec![column])),
        }
    }
    Ok(out.into_iter().map(|(_, cols)| cols).collect())
}

/// A table's columns as the catalog has them now, in order, with the type names a
/// Relation message would give (`format_type` of type and modifier), and the key.
pub async fn live_columns(
    client: &Client,
    oid: u32,
) -> Result<(Vec<crate::event::Column>, Vec<String>), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?;
    let columns = rows
        .iter()
        .map(|r| crate::event::Column {
            name: r.get(0),
            type_name: r.get(1),
        })
        .collect();
    Ok((columns, primary_key(client, oid).await?))
}

/// SQL type names (`numeric(10,2)`, `character varying(20)`, `integer[]`) for type
/// oids with their modifiers, as a Relation message carries them.
pub async fn type_names(
    client: &Client,
    types: &[(u32, i32)],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let oids: Vec<u32> = types.iter().map(|t| t.0).collect();
    let mods: Vec<i32> = types.iter().map(|t| t.1).collect();
    let rows = client
        .query(
            "SELECT format_type(t.oid, t.typmod) FROM unnest($1::oid[], $2::int4[]) \
             WITH ORDINALITY AS t(oid, typmod, ord) ORDER BY t.ord",
            &[&oids, &mods],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How each type oid decodes; user-defined types are looked up once and remembered.
#[derive(Default)]
pub struct TypeCache {
    known: HashMap<u32, PgType>,
}

impl TypeCache {
    pub async fn resolve(
        &mut self,
        client: &Client,
        oid: u32,
    ) -> Result<PgType, tokio_postgres::Error> {
        // Domains over domains and arrays of domains: a few steps at most.
        let mut path = Vec::new();
        let mut current = oid;
        let resolved = loop {
            if let Some(t) = self.known.get(&current) {
                break t.clone();
            }
            let b = builtin(current);
            if !matches!(b, PgType::Unknown(_)) {
                break b;
            }
            let row = client
                .query_opt(
                    "SELECT typtype::text, typbasetype, typelem, typcategory::text FROM pg_type WHERE oid = $1",
                    &[&current],
                )
                .await?;
            let Some(row) = row else {
                break PgType::Unknown(current);
            };
            let typtype: String = row.get(0);
            let base: u32 = row.get(1);
            let elem: u32 = row.get(2);
            let category: String = row.get(3);
            match (typtype.as_str(), category.as_str()) {
                ("e", _) => break PgType::Text,
                ("d", _) if path.len() < 16 => {
                    path.push((current, false));
                    current = base;
                }
                (_, "A") if elem != 0 && path.len() < 16 => {
                    path.push((current, true));
                    current = elem;
                }
                _ => break PgType::Unknown(current),
            }
        };
        // Walk back up: every domain on the way is its base, every array wraps.
        let mut t = resolved;
        self.known.insert(current, t.clone());
        while let Some((o, is_array)) = path.pop() {
            if is_array {
                t = PgType::Array(Box::new(t));
            }
            self.known.insert(o, t.clone());
        }
        // An unknown element keeps the outer oid in warnings.
        Ok(match t {
            PgType::Unknown(_) => PgType::Unknown(oid),
            t => t,
        })
    }

    /// Forgets a type the server re-described (a Type message: ALTER TYPE).
    pub fn forget(&mut self, oid: u32) {
        self.known.remove(&oid);
    }
}
