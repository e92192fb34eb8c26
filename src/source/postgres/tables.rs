//! Tables created, dropped and renamed while streaming. PostgreSQL does not replicate
//! DDL, and a publication lists its tables by name (by oid, in fact), so a table
//! created later that `include` matches never reaches the stream by itself, and a
//! dropped one simply goes quiet. The stream looks at the catalog every
//! `catalog_poll_secs` (and at a Relation message of a table it does not know) and
//! tells the schema guard what changed:
//!
//! - an included table the stream does not carry (not in the publication, or renamed
//!   into the include list): `Stated::Uncaptured`, decided as `table_created`; let in,
//!   it is snapshotted, which first adds it to the publication (snapshot.rs);
//! - a table it carried whose oid is gone, or renamed: `table_dropped` for the old
//!   name (a rename also finds the new name, when included, as above);
//! - at the first look of a run, tables the schema history knows that no longer
//!   exist: dropped while the daemon was stopped (the guard decides each drop once).
//!
//! Tables without a key or replica identity are never added (UPDATE and DELETE on
//! them would fail on the server once published); each is warned about once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::catalog::included_tables;
use crate::event::{SchemaChange, Stated, TableChange};
use crate::source::filter::TableFilter;

/// What the stream knows of the included tables between two looks.
pub struct Watch {
    every: Option<Duration>,
    last: Option<Instant>,
    /// Included tables the stream carries (or the guard was told about), by oid.
    known: HashMap<u32, String>,
    /// Tables without a key already warned about.
    warned: HashSet<u32>,
}

impl Watch {
    /// Looks every `secs` seconds (0: only at the start of a run and at unknown
    /// relations).
    pub fn new(secs: u64) -> Self {
        Watch {
            every: (secs > 0).then(|| Duration::from_secs(secs)),
            last: None,
            known: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// When the next look is due (now, before the first).
    pub fn due_at(&self) -> Option<Instant> {
        match (self.last, self.every) {
            (None, _) => Some(Instant::now()),
            (Some(last), Some(every)) => Some(last + every),
            (Some(_), None) => None,
        }
    }

    /// Whether a Relation message of `oid` names a table the last look did not see.
    pub fn unknown(&self, oid: u32) -> bool {
        self.last.is_some() && !self.known.contains_key(&oid)
    }

    /// The name the stream carries table `oid` under, if it does.
    pub fn name_of(&self, oid: u32) -> Option<&str> {
        self.known.get(&oid).map(String::as_str)
    }

    /// Reads the catalog and returns what changed since the last look.
    /// `history` lists the tables the schema history knows (read at the first look).
    pub async fn look(
        &mut self,
        client: &Client,
        publication: &str,
        filter: &TableFilter,
        history: impl FnOnce() -> Vec<String>,
    ) -> Result<Vec<TableChange>, tokio_postgres::Error> {
        let live = included_tables(client, filter).await?;
        let mut out = Vec::new();
        let change = |table: &str, change: Stated| TableChange {
            table: table.to_string(),
            change,
        };
        if self.last.is_none() {
            let published = published(client, publication).await?;
            for t in live.iter().filter(|t| published.contains(&t.oid)) {
                self.known.insert(t.oid, t.qualified());
            }
            for table in history() {
                if !live.iter().any(|t| t.qualified() == table) {
                    out.push(change(&table, Stated::Change(SchemaChange::TableDropped)));
                }
            }
        } else {
            let ids: Vec<u32> = self.known.keys().copied().collect();
            let now = names(client, &ids).await?;
            self.known.retain(|oid, name| {
                if now.get(oid) == Some(name) {
                    return true;
                }
                out.push(change(name, Stated::Change(SchemaChange::TableDropped)));
                false
            });
        }
        for t in &live {
            if self.known.contains_key(&t.oid) {
                continue;
            }
            if !t.capturable() {
                if self.warned.insert(t.oid) {
                    tracing::warn!(table = %t.qualified(), "included table has no primary key or replica identity: not added to the publication (UPDATE and DELETE on it would fail on the server). To capture it, add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL;", t.quoted());
                }
                continue;
            }
            out.push(change(&t.qualified(), Stated::Uncaptured));
            self.known.insert(t.oid, t.qualified());
        }
        self.last = Some(Instant::now());
        Ok(out)
    }
}

/// The oids of the tables `publication` publishes (FOR ALL TABLES and FOR TABLES IN
/// SCHEMA included: the view resolves them).
pub async fn published(
    client: &Client,
    publication: &str,
) -> Result<HashSet<u32>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether `publication` publishes table `oid` (one row, not the whole list: every
/// snapshot asks).
pub async fn publishes(
    client: &Client,
    publication: &str,
    oid: u32,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 AND c.oid = $2)",
            &[&publication, &oid],
        )
        .await?;
    Ok(row.get(0))
}

/// `schema.table` of each of `oids` that still exists.
async fn names(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1)",
            &[&oids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (schema, name): (String, String) = (r.get(1), r.get(2));
            (r.get(0), format!("{schema}.{name}"))
        })
        .collect())
}
