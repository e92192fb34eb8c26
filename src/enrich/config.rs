//! `[[enrich]]` entries: `table` (a `db.table` glob, like `[source] include`), `kind`,
//! and the kind's own keys. Deserialized by kind (config::kinds) so errors keep their
//! file:line:column; each entry also remembers its line for errors found later (a
//! column a step needs is missing from a table).

use serde::Deserialize;

use super::{compute, fields, geo, lookup, track, EnrichError, Enricher};
use crate::source::filter::TableFilter;

pub const KINDS: &[&str] = &[
    "meta",
    "rename",
    "drop",
    "set",
    "compute",
    "geo_point",
    "track",
    "lookup",
];

/// One `[[enrich]]` entry.
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    /// `db.table` globs the entry applies to.
    pub table: Vec<String>,
    pub spec: Spec,
    /// The entry's line in the connector file (set after parsing).
    pub line: usize,
}

#[derive(Debug, Clone)]
pub enum Spec {
    Meta(fields::MetaConfig),
    Rename(fields::RenameConfig),
    Drop(fields::DropConfig),
    Set(fields::SetConfig),
    Compute(compute::ComputeConfig),
    GeoPoint(geo::GeoPointConfig),
    Track(track::TrackConfig),
    Lookup(lookup::LookupConfig),
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
        match self.spec {
            Spec::Meta(_) => "meta",
            Spec::Rename(_) => "rename",
            Spec::Drop(_) => "drop",
            Spec::Set(_) => "set",
            Spec::Compute(_) => "compute",
            Spec::GeoPoint(_) => "geo_point",
            Spec::Track(_) => "track",
            Spec::Lookup(_) => "lookup",
        }
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
        match &self.spec {
            Spec::Lookup(c) => {
                lookup::check(c).map_err(|m| ("kind", format!("[[enrich]] lookup: {m}")))
            }
            _ => self
                .build()
                .map(|_| ())
                .map_err(|e| ("kind", e.to_string())),
        }
    }

    /// The enricher.
    pub fn build(&self) -> Result<Box<dyn Enricher>, EnrichError> {
        let fail = |m: String| EnrichError::Config(format!("[[enrich]] {}: {m}", self.kind()));
        Ok(match &self.spec {
            Spec::Meta(c) => Box::new(fields::Meta::new(c).map_err(fail)?),
            Spec::Rename(c) => Box::new(fields::Rename::new(c).map_err(fail)?),
            Spec::Drop(c) => Box::new(fields::Drop::new(c)),
            Spec::Set(c) => Box::new(fields::Set::new(c).map_err(fail)?),
            Spec::Compute(c) => Box::new(compute::Compute::new(c).map_err(fail)?),
            Spec::GeoPoint(c) => Box::new(geo::GeoPoint::new(c)),
            Spec::Track(c) => Box::new(track::Track::new(c).map_err(fail)?),
            // Built by the stage, which asks the source for the looked-up table.
            Spec::Lookup(_) => return Err(fail("built by the stage".into())),
        })
    }
}

/// Deserializes the entry of `kind` (called by config::kinds).
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    kind: &str,
    d: D,
) -> Result<EnrichConfig, D::Error> {
    use serde::de::Error;
    macro_rules! entry {
        ($t:ty, $v:ident) => {{
            let c = <$t>::deserialize(d)?;
            EnrichConfig {
                table: c.table.clone().into_vec(),
                spec: Spec::$v(c),
                line: 0,
            }
        }};
    }
    Ok(match kind {
        "meta" => entry!(fields::MetaConfig, Meta),
        "rename" => entry!(fields::RenameConfig, Rename),
        "drop" => entry!(fields::DropConfig, Drop),
        "set" => entry!(fields::SetConfig, Set),
        "compute" => entry!(compute::ComputeConfig, Compute),
        "geo_point" => entry!(geo::GeoPointConfig, GeoPoint),
        "track" => entry!(track::TrackConfig, Track),
        "lookup" => entry!(lookup::LookupConfig, Lookup),
        _ => {
            return Err(D::Error::custom(format!(
                "[[enrich]] needs `kind`, one of: {}",
                KINDS.join(", ")
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::config::ConnectorConfig;

    /// The documented example uses every kind and stays valid.
    #[test]
    fn the_example_connector_uses_every_kind() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("connectors")
            .join("enrich-example.toml");
        let cfg = ConnectorConfig::load(&path).unwrap();
        let mut kinds: Vec<&str> = cfg.enrich.iter().map(|e| e.kind()).collect();
        kinds.sort();
        kinds.dedup();
        let mut all = super::KINDS.to_vec();
        all.sort();
        assert_eq!(kinds, all);
        assert!(cfg.enrich.iter().all(|e| e.line > 0));
    }
}
