//! `kind = "geo_point"`: a geo_point field (`[lon, lat]`, GeoJSON order) from latitude
//! and longitude columns. Zeros,
//! out-of-range and non-numeric values are invalid: the field is null (never indexed
//! at 0,0) and the event is flagged `geo_point_invalid:<field>`.

use serde::Deserialize;

use super::config::{Kind, Tables};
use super::{Binding, Enricher, EventMeta, Layout};
use crate::event::{Row, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoPointConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    pub lat: String,
    pub lon: String,
    /// The geo_point field.
    pub field: String,
}

pub struct GeoPoint {
    cfg: GeoPointConfig,
}

impl GeoPoint {
    pub fn new(c: &GeoPointConfig) -> GeoPoint {
        GeoPoint { cfg: c.clone() }
    }
}

/// A coordinate as a number, when the value is one.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f as f64),
        Value::Double(d) => Some(*d),
        Value::Decimal(s) | Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Latitude and longitude that make a point: finite, in range, not the 0,0 of an
/// unset device.
pub fn valid(lat: f64, lon: f64) -> bool {
    lat.is_finite()
        && lon.is_finite()
        && lat.abs() <= 90.0
        && lon.abs() <= 180.0
        && !(lat == 0.0 && lon == 0.0)
}

impl Enricher for GeoPoint {
    fn append_only(&self) -> bool {
        true
    }

    fn may_fail(&self) -> bool {
        false
    }

    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        let at = vec![input.require(&self.cfg.lat)?, input.require(&self.cfg.lon)?];
        let mut layout = input.clone();
        layout.add(&self.cfg.field, "geo_point")?;
        Ok(Binding { at, layout })
    }

    fn apply(
        &mut self,
        b: &Binding,
        _meta: &EventMeta<'_>,
        row: &mut Row,
        flags: &mut Vec<String>,
    ) -> Result<(), String> {
        let (lat, lon) = (&row[b.at[0]], &row[b.at[1]]);
        if matches!(lat, Value::Absent) || matches!(lon, Value::Absent) {
            // A key-only image: the coordinates are not known here.
            row.push(Value::Absent);
            return Ok(());
        }
        let point = match (number(lat), number(lon)) {
            // GeoJSON order, [lon, lat]: a geo_point form every Elasticsearch and
            // OpenSearch version reads.
            (Some(lat), Some(lon)) if valid(lat, lon) => {
                Value::Array(vec![Value::Double(lon), Value::Double(lat)])
            }
            _ => {
                flags.push(format!("geo_point_invalid:{}", self.cfg.field));
                Value::Null
            }
        };
        row.push(point);
        Ok(())
    }

    fn flags(&self) -> bool {
        true
    }
}

impl Kind for GeoPointConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(GeoPoint::new(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_out_of_range_points_are_invalid() {
        assert!(valid(52.5, 13.4));
        assert!(valid(0.0, 13.4));
        assert!(!valid(0.0, 0.0));
        assert!(!valid(91.0, 0.5));
        assert!(!valid(45.0, -180.5));
        assert!(!valid(f64::NAN, 1.0));
        assert_eq!(number(&Value::Decimal("-33.8688".into())), Some(-33.8688));
        assert_eq!(number(&Value::Null), None);
    }
}
