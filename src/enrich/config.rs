//! `[[enrich]]` entries: `table` (a `db.table` glob, like `[source] include`), `kind`,
//! and the kind's own keys. Deserialized by kind (config::kinds) so errors keep their
//! file:line:column; each entry also remembers its line for errors found later (a
//! column a step needs is missing from a table).

use serde::Deserialize;

use super::{compute, fields, geo, lookup, track, EnrichError, Enricher};
use crate::source::filter::TableFilter;

/// What a kind's config type (in the kind's own file) provides.
pub trait Kind {
    /// The step, as far as the entry alone builds it.
    fn build(&self) -> Result<Box<dyn Enricher>, String>;

    /// What can be checked without a table (names, expressions).
    fn check(&self) -> Result<(), String> {
        self.build().map(|_| ())
    }
}

/// The enricher kinds: the name in connector files, the variant, the config type. A new
/// kind is its file (config type with `table`, `impl Kind`, the `Enricher`) plus its
/// line here.
macro_rules! kinds {
    ($($name:literal => $variant:ident($cfg:ty)),* $(,)?) => {
        pub const KINDS: &[&str] = &[$($name),*];

        #[derive(Debug, Clone)]
        pub enum Spec {
            $($variant($cfg)),*
        }

        impl Spec {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Spec::$variant(_) => $name),*
                }
            }

            fn as_kind(&self) -> &dyn Kind {
                match self {
                    $(Spec::$variant(c) => c),*
                }
            }
        }

        /// The entry of `kind`, None for an unknown kind.
        fn entry_of<'de, D: serde::Deserializer<'de>>(
            kind: &str,
            d: D,
        ) -> Result<Option<EnrichConfig>, D::Error> {
            Ok(Some(match kind {
                $($name => {
                    let c = <$cfg>::deserialize(d)?;
                    EnrichConfig {
                        table: c.table.clone().into_vec(),
                        spec: Spec::$variant(c),
                        line: 0,
                        written: serde_json::Value::Null,
                    }
                })*
                _ => return Ok(None),
            }))
        }
    };
}

kinds! {
    "meta" => Meta(fields::MetaConfig),
    "rename" => Rename(fields::RenameConfig),
    "drop" => Drop(fields::DropConfig),
    "set" => Set(fields::SetConfig),
    "compute" => Compute(compute::ComputeConfig),
    "geo_point" => GeoPoint(geo::GeoPointConfig),
    "track" => Track(track::TrackConfig),
    "lookup" => Lookup(lookup::LookupConfig),
}

/// One `[[enrich]]` entry.
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    /// `db.table` globs the entry applies to.
    pub table: Vec<String>,
    pub spec: Spec,
    /// The entry's line in the connector file (set after parsing).
    pub line: usize,
    /// The entry's keys and values as written, but `table` (set after parsing): what
    /// it does to a table's documents, for the fingerprint sinks store beside them.
    pub written: serde_json::Value,
}

/// `table = "db.t"` or `table = ["db.a", "db.b*"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tables {
    One(String),
    Many(Vec<String>),
}

impl Tables {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Tables::One(t) => vec![t],
            Tables::Many(t) => t,
        }
    }
}

impl EnrichConfig {
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    pub fn tables(&self) -> TableFilter {
        TableFilter::new(&self.table, &[]).expect("validated when loaded")
    }

    /// Checks what can be checked without a table (names, expressions): the message
    /// and the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.table.is_empty() {
            return Err((
                "table",
                "[[enrich]] needs `table` (a \"db.table\" glob)".into(),
            ));
        }
        if let Err(e) = TableFilter::new(&self.table, &[]) {
            return Err(("table", format!("[[enrich]] {e}")));
        }
        self.spec
            .as_kind()
            .check()
            .map_err(|m| ("kind", format!("[[enrich]] {}: {m}", self.kind())))
    }

    /// The enricher.
    pub fn build(&self) -> Result<Box<dyn Enricher>, EnrichError> {
        self.spec
            .as_kind()
            .build()
            .map_err(|m| EnrichError::Config(format!("[[enrich]] {}: {m}", self.kind())))
    }
}

/// Deserializes the entry of `kind` (called by config::kinds).
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    kind: &str,
    d: D,
) -> Result<EnrichConfig, D::Error> {
    use serde::de::Error;
    match entry_of(kind, d)? {
        Some(entry) => Ok(entry),
        None => Err(D::Error::custom(format!(
            "[[enrich]] needs `kind`, one of: {}",
            KINDS.join(", ")
        ))),
    }
}
