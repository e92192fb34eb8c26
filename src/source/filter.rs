//! Include/exclude table patterns (`db.table`, globs), shared by every source.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Decides which tables a connector captures. A table is captured when it matches an
/// include pattern (or there are none) and no exclude pattern. System schemas are never
/// captured.
#[derive(Debug, Clone)]
pub struct TableFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    system: &'static [&'static str],
}

const MYSQL_SYSTEM: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];
const POSTGRES_SYSTEM: &[&str] = &["pg_catalog", "information_schema", "pg_toast"];

impl TableFilter {
    /// `include`/`exclude` are `db.table` globs (`shop.*`, `*.orders`, `shop.order_?`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        Self::with_system(include, exclude, MYSQL_SYSTEM)
    }

    /// The same for PostgreSQL, where the first part is the schema (`public.orders`).
    pub fn postgres(include: &[String], exclude: &[String]) -> Result<Self, String> {
        Self::with_system(include, exclude, POSTGRES_SYSTEM)
    }

    fn with_system(
        include: &[String],
        exclude: &[String],
        system: &'static [&'static str],
    ) -> Result<Self, String> {
        let build = |pats: &[String], what: &str| -> Result<GlobSet, String> {
            let mut b = GlobSetBuilder::new();
            for p in pats {
                if !p.contains('.') {
                    return Err(format!(
                        "{what} pattern `{p}` must have the form db.table (globs allowed, e.g. `{p}.*`)"
                    ));
                }
                b.add(Glob::new(p).map_err(|e| format!("{what} pattern `{p}`: {e}"))?);
            }
            b.build().map_err(|e| e.to_string())
        };
        Ok(TableFilter {
            include: if include.is_empty() {
                None
            } else {
                Some(build(include, "include")?)
            },
            exclude: build(exclude, "exclude")?,
            system,
        })
    }

    pub fn matches(&self, db: &str, table: &str) -> bool {
        if self.system.contains(&db) {
            return false;
        }
        let name = format!("{db}.{table}");
        self.include.as_ref().is_none_or(|i| i.is_match(&name)) && !self.exclude.is_match(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude() {
        let f = TableFilter::new(&["shop.*".into()], &["shop.tmp_*".into()]).unwrap();
        assert!(f.matches("shop", "orders"));
        assert!(!f.matches("shop", "tmp_x"));
        assert!(!f.matches("other", "orders"));
        let all = TableFilter::new(&[], &[]).unwrap();
        assert!(all.matches("a", "b"));
        assert!(!all.matches("mysql", "user"));
        assert!(TableFilter::new(&["shop".into()], &[]).is_err());
    }
}
