//! Policy files: which verdict each kind of schema change gets, per table.
//!
//! ```toml
//! [rules]                      # defaults for every table; unset kinds keep add-only
//! column_added = "allow"
//! column_dropped = "deprecate"
//!
//! [[table]]                    # overrides, first match wins
//! match = "shop.orders"        # schema.table glob
//! column_dropped = "halt"
//! unindexed = ["payload"]      # stored, not indexed (an object with enabled: false)
//! ```
//!
//! Parsed from the TOML document tree so that every error and every verdict can name
//! file:line:column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::change::{ChangeKind, SchemaChange};
use crate::settings::{line_col, ConfigError};

/// What happens to a table when its schema changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it; the index mapping follows.
    Allow,
    /// Keep the field in the index and history, marked deprecated; warn and count.
    Deprecate,
    /// Send the table's events to the quarantine stream; other tables keep flowing.
    Quarantine,
    /// Stop before the change; the checkpoint stays before it.
    Halt,
    /// Do nothing (tables created that the connector does not capture).
    Ignore,
    /// Apply it, and rebuild the table's index with the new type beside the running
    /// stream (a field type Elasticsearch cannot change in place: float -> double).
    Reindex,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deprecate => "deprecate",
            Verdict::Quarantine => "quarantine",
            Verdict::Halt => "halt",
            Verdict::Ignore => "ignore",
            Verdict::Reindex => "reindex",
        }
    }

    fn parse(s: &str) -> Option<Verdict> {
        [
            Verdict::Allow,
            Verdict::Deprecate,
            Verdict::Quarantine,
            Verdict::Halt,
            Verdict::Ignore,
            Verdict::Reindex,
        ]
        .into_iter()
        .find(|v| v.name() == s)
    }
}

impl ChangeKind {
    /// The verdicts a policy may give this kind (DESIGN.md, schema guard).
    pub fn allowed(self) -> &'static [Verdict] {
        use Verdict::*;
        match self {
            ChangeKind::ColumnAdded => &[Allow, Quarantine, Halt],
            ChangeKind::ColumnDropped => &[Deprecate, Quarantine, Halt],
            ChangeKind::TypeWidened | ChangeKind::TypeChanged => {
                &[Allow, Reindex, Quarantine, Halt]
            }
            ChangeKind::ColumnRenamed => &[Deprecate, Quarantine, Halt],
            ChangeKind::TableCreated => &[Allow, Ignore, Halt],
            ChangeKind::TableDropped => &[Deprecate, Halt],
        }
    }

    /// Add-only: what a policy file that says nothing gives.
    pub fn built_in(self) -> Verdict {
        match self {
            ChangeKind::ColumnAdded | ChangeKind::TableCreated => Verdict::Allow,
            // Allowed; the index is rebuilt when its field type has to change.
            ChangeKind::TypeWidened => Verdict::Reindex,
            ChangeKind::ColumnDropped | ChangeKind::TableDropped => Verdict::Deprecate,
            ChangeKind::TypeChanged | ChangeKind::ColumnRenamed => Verdict::Halt,
        }
    }
}

/// Where a verdict came from, for messages: `file:line` of the rule, or the built-in
/// add-only default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOrigin {
    File { path: PathBuf, line: usize },
    BuiltIn,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::File { path, line } => write!(f, "{}:{line}", path.display()),
            RuleOrigin::BuiltIn => write!(f, "built-in add-only default"),
        }
    }
}

/// A verdict and the rule that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    pub verdict: Verdict,
    pub kind: ChangeKind,
    pub origin: RuleOrigin,
}

#[derive(Debug, Clone)]
struct Rule {
    verdict: Verdict,
    line: usize,
}

#[derive(Debug, Clone)]
struct TableRules {
    pattern: String,
    matcher: GlobMatcher,
    rules: BTreeMap<ChangeKind, Rule>,
    unindexed: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    path: PathBuf,
    defaults: BTreeMap<ChangeKind, Rule>,
    tables: Vec<TableRules>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read policy file: {e}")))?;
        Policy::parse(path, &text)
    }

    /// Built-in add-only rules, for connectors that name no policy file.
    pub fn add_only() -> Policy {
        Policy {
            path: PathBuf::new(),
            defaults: BTreeMap::new(),
            tables: Vec::new(),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Policy, ConfigError> {
        let at = |span: std::ops::Range<usize>, msg: String| ConfigError {
            path: path.to_path_buf(),
            line_col: Some(line_col(text, span.start)),
            message: msg,
        };
        let doc = DeTable::parse(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line_col: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let mut policy = Policy {
            path: path.to_path_buf(),
            defaults: BTreeMap::new(),
            tables: Vec::new(),
        };
        for (key, value) in doc.get_ref().iter() {
            match (key.get_ref().as_ref(), value.get_ref()) {
                ("rules", DeValue::Table(t)) => {
                    policy.defaults = rules(t, &[], &at, text)?;
                }
                ("table", DeValue::Array(tables)) => {
                    for t in tables.iter() {
                        let DeValue::Table(t) = t.get_ref() else {
                            return Err(at(
                                t.span(),
                                "`table` entries are tables: write [[table]] sections".into(),
                            ));
                        };
                        policy.tables.push(table(t, value.span(), &at, text)?);
                    }
                }
                (k, _) => {
                    return Err(at(
                        key.span(),
                        format!(
                            "unknown section `{k}`: a policy has [rules] and [[table]] sections"
                        ),
                    ))
                }
            }
        }
        Ok(policy)
    }

    /// The verdict for `change` on `table` (`schema.table`): the first matching
    /// [[table]] section that sets the kind, else [rules], else add-only.
    pub fn ruling(&self, table: &str, change: &SchemaChange) -> Ruling {
        self.ruling_for(table, change.kind())
    }

    pub fn ruling_for(&self, table: &str, kind: ChangeKind) -> Ruling {
        let found = self
            .tables
            .iter()
            .filter(|t| t.matcher.is_match(table))
            .find_map(|t| t.rules.get(&kind));
        self.ruling_from(kind, found.or_else(|| self.defaults.get(&kind)))
    }

    /// The verdict [rules] (or add-only) gives, whatever the [[table]] sections say.
    pub fn default_ruling(&self, kind: ChangeKind) -> Ruling {
        self.ruling_from(kind, self.defaults.get(&kind))
    }

    fn ruling_from(&self, kind: ChangeKind, found: Option<&Rule>) -> Ruling {
        match found {
            Some(r) => Ruling {
                verdict: r.verdict,
                kind,
                origin: RuleOrigin::File {
                    path: self.path.clone(),
                    line: r.line,
                },
            },
            None => Ruling {
                verdict: kind.built_in(),
                kind,
                origin: RuleOrigin::BuiltIn,
            },
        }
    }

    /// Columns of `table` stored but not indexed.
    pub fn unindexed(&self, table: &str) -> &[String] {
        self.tables
            .iter()
            .find(|t| t.matcher.is_match(table) && !t.unindexed.is_empty())
            .map(|t| t.unindexed.as_slice())
            .unwrap_or(&[])
    }

    /// The [[table]] patterns, in order.
    pub fn table_patterns(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(|t| t.pattern.as_str())
    }
}

type At<'a> = dyn Fn(std::ops::Range<usize>, String) -> ConfigError + 'a;

/// The rule keys of a table, `extra` keys allowed besides them.
fn rules(
    t: &DeTable<'_>,
    extra: &[&str],
    at: &At<'_>,
    text: &str,
) -> Result<BTreeMap<ChangeKind, Rule>, ConfigError> {
    let mut out = BTreeMap::new();
    for (key, value) in t.iter() {
        let k = key.get_ref().as_ref();
        if extra.contains(&k) {
            continue;
        }
        let Some(kind) = ChangeKind::ALL.into_iter().find(|c| c.key() == k) else {
            let keys: Vec<&str> = ChangeKind::ALL.iter().map(|c| c.key()).collect();
            return Err(at(
                key.span(),
                format!(
                    "unknown rule `{k}`; rules are {}{}",
                    keys.join(", "),
                    if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" (and {})", extra.join(", "))
                    }
                ),
            ));
        };
        let allowed: Vec<&str> = kind.allowed().iter().map(|v| v.name()).collect();
        let verdict = value
            .get_ref()
            .as_str()
            .and_then(Verdict::parse)
            .filter(|v| kind.allowed().contains(v))
            .ok_or_else(|| {
                at(
                    value.span(),
                    format!(
                        "`{k}` must be one of {} (got {})",
                        allowed
                            .iter()
                            .map(|a| format!("\"{a}\""))
                            .collect::<Vec<_>>()
                            .join(", "),
                        shown(value)
                    ),
                )
            })?;
        out.insert(
            kind,
            Rule {
                verdict,
                line: line_col(text, key.span().start).0,
            },
        );
    }
    Ok(out)
}

fn table(
    t: &DeTable<'_>,
    section: std::ops::Range<usize>,
    at: &At<'_>,
    text: &str,
) -> Result<TableRules, ConfigError> {
    let get = |k: &str| t.iter().find(|(key, _)| key.get_ref().as_ref() == k);
    let Some((_, pattern)) = get("match") else {
        return Err(at(
            section,
            "a [[table]] section needs `match = \"schema.table\"` (a glob)".into(),
        ));
    };
    let Some(p) = pattern.get_ref().as_str() else {
        return Err(at(
            pattern.span(),
            format!(
                "`match` is a string like \"shop.orders\" or \"shop.*\" (got {})",
                shown(pattern)
            ),
        ));
    };
    if !p.contains('.') {
        return Err(at(
            pattern.span(),
            format!("`match = \"{p}\"` must name schema.table (a glob like \"shop.*\")"),
        ));
    }
    let matcher = Glob::new(p)
        .map_err(|e| at(pattern.span(), format!("`match = \"{p}\"`: {e}")))?
        .compile_matcher();
    let mut unindexed = Vec::new();
    if let Some((_, u)) = get("unindexed") {
        let items: Option<Vec<&str>> = match u.get_ref() {
            DeValue::Array(a) => a.iter().map(|v| v.get_ref().as_str()).collect(),
            _ => None,
        };
        match items {
            Some(names) => unindexed = names.into_iter().map(str::to_string).collect(),
            None => {
                return Err(at(
                    u.span(),
                    format!(
                        "`unindexed` is a list of column names like [\"payload\"] (got {})",
                        shown(u)
                    ),
                ))
            }
        }
    }
    Ok(TableRules {
        pattern: p.to_string(),
        matcher,
        rules: rules(t, &["match", "unindexed"], at, text)?,
        unindexed,
    })
}

/// A value as the file wrote it, for messages.
fn shown(v: &Spanned<DeValue<'_>>) -> String {
    match v.get_ref() {
        DeValue::String(s) => format!("\"{s}\""),
        other => format!("a {}", other.type_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[rules]
column_added = "allow"
column_dropped = "quarantine"

[[table]]
match = "shop.orders"
column_dropped = "halt"
unindexed = ["payload"]

[[table]]
match = "shop.*"
type_changed = "quarantine"
"#;

    fn err(text: &str) -> String {
        Policy::parse(Path::new("p.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn first_matching_table_then_rules_then_add_only() {
        let p = Policy::parse(Path::new("p.toml"), FILE).unwrap();
        let r = p.ruling_for("shop.orders", ChangeKind::ColumnDropped);
        assert_eq!(r.verdict, Verdict::Halt);
        assert_eq!(r.origin.to_string(), "p.toml:8");
        // Not set in the first section: the next matching one.
        assert_eq!(
            p.ruling_for("shop.orders", ChangeKind::TypeChanged).verdict,
            Verdict::Quarantine
        );
        assert_eq!(
            p.ruling_for("shop.items", ChangeKind::ColumnDropped)
                .verdict,
            Verdict::Quarantine
        );
        let r = p.ruling_for("other.t", ChangeKind::ColumnRenamed);
        assert_eq!((r.verdict, r.origin), (Verdict::Halt, RuleOrigin::BuiltIn));
        assert_eq!(
            p.ruling_for("other.t", ChangeKind::TypeWidened).verdict,
            Verdict::Reindex
        );
        assert_eq!(p.unindexed("shop.orders"), ["payload"]);
        assert!(p.unindexed("shop.items").is_empty());
    }

    #[test]
    fn the_shipped_default_is_add_only() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema-rules/default.toml");
        let p = Policy::load(&path).unwrap();
        for kind in ChangeKind::ALL {
            let r = p.ruling_for("any.table", kind);
            assert_eq!(r.verdict, kind.built_in(), "{kind:?}");
            assert!(
                matches!(r.origin, RuleOrigin::File { .. }),
                "{kind:?} is written out"
            );
        }
    }

    #[test]
    fn errors_name_the_place_and_the_allowed_values() {
        let e = err("[rules]\ncolumn_added = \"deprecate\"\n");
        assert_eq!(
            e,
            "p.toml:2:16: `column_added` must be one of \"allow\", \"quarantine\", \"halt\" (got \"deprecate\")"
        );
        let e = err("[rules]\ncolumn_add = \"allow\"\n");
        assert!(
            e.starts_with("p.toml:2:1: unknown rule `column_add`; rules are column_added,"),
            "{e}"
        );
        let e = err("[[table]]\ncolumn_dropped = \"halt\"\n");
        assert!(e.starts_with("p.toml:1:"), "{e}");
        assert!(e.contains("needs `match"), "{e}");
        let e = err("[[table]]\nmatch = \"orders\"\n");
        assert!(
            e.starts_with("p.toml:2:9:") && e.contains("schema.table"),
            "{e}"
        );
        let e = err("[[table]]\nmatch = \"s.t\"\nunindexed = \"payload\"\n");
        assert!(
            e.starts_with("p.toml:3:13:") && e.contains("list of column names"),
            "{e}"
        );
        let e = err("[rule]\n");
        assert!(e.starts_with("p.toml:1:2: unknown section `rule`"), "{e}");
        let e = err("[rules]\ncolumn_added = allow\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
        let e = err("[rules]\ntable_dropped = 3\n");
        assert!(
            e.contains("(got a integer)") || e.contains("(got an integer)"),
            "{e}"
        );
    }
}
