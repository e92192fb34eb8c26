//! `kind = "track"`: stream state per key (the moving-device example). For each row
//! key it keeps the last `keep` points (latitude, longitude, time) within
//! `window_secs` of the newest, and compares every new point with the previous one:
//!
//! - zero, out-of-range or missing coordinates are skipped (the state stays);
//! - the speed (great-circle distance / time between the points) outside
//!   `speed_range` (m/s) flags the event `track_speed_out_of_range`, and the point is
//!   not kept (a bad reading must not make the next good one look impossible);
//! - the document gets `last_activity` (the newest kept point's time) and the `track`
//!   object: `{"speed_mps": .., "points": [{"lat","lon","at"}, ...]}`.
//!
//! Time is the `time` column when given, else the commit time: both come with the
//! change, so a replay computes the same. The state lives in the offset store and is
//! stored with each checkpoint as of its transaction boundary (an undo log covers the
//! open transaction), so the output after a crash equals an uninterrupted run.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::config::{Kind, Tables};
use super::geo::{number, valid};
use super::{Binding, Enricher, EventMeta, Layout};
use crate::event::{Op, Row, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackConfig {
    #[serde(default)]
    pub kind: String,
    pub table: Tables,
    pub lat: String,
    pub lon: String,
    /// A date/time column with the point's time (default: the commit time).
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default = "default_keep")]
    pub keep: usize,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Valid speeds in m/s, [min, max].
    #[serde(default = "default_speed")]
    pub speed_range: [f64; 2],
    #[serde(default = "default_field")]
    pub field: String,
    #[serde(default = "default_last_activity")]
    pub last_activity_field: String,
}

fn default_keep() -> usize {
    10
}
fn default_window() -> u64 {
    3600
}
fn default_speed() -> [f64; 2] {
    [0.0, 340.0]
}
fn default_field() -> String {
    "track".into()
}
fn default_last_activity() -> String {
    "last_activity".into()
}

/// One kept point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Point {
    lat: f64,
    lon: f64,
    at_ms: i64,
}

type Points = VecDeque<Point>;

pub struct Track {
    cfg: TrackConfig,
    state: HashMap<String, Points>,
    /// Keys changed by committed transactions since the last `take_changes`.
    dirty: HashSet<String>,
    /// The open transaction: each key's value before it (first change wins).
    undo: HashMap<String, Option<Points>>,
}

impl Track {
    pub fn new(c: &TrackConfig) -> Result<Track, String> {
        if c.keep == 0 {
            return Err("`keep` must be at least 1".into());
        }
        let [min, max] = c.speed_range;
        if min.is_nan() || max.is_nan() || min > max {
            return Err("`speed_range` must be [min, max] with min <= max".into());
        }
        Ok(Track {
            cfg: c.clone(),
            state: HashMap::new(),
            dirty: HashSet::new(),
            undo: HashMap::new(),
        })
    }

    fn set(&mut self, key: &str, value: Option<Points>) {
        let old = match &value {
            Some(v) => self.state.insert(key.to_string(), v.clone()),
            None => self.state.remove(key),
        };
        self.undo.entry(key.to_string()).or_insert(old);
    }

    /// The point's time in ms: the `time` column, or the commit time.
    fn time_ms(&self, b: &Binding, row: &Row, commit_ms: u64) -> Option<i64> {
        match self.cfg.time {
            None => Some(commit_ms as i64),
            Some(_) => epoch_ms(&row[b.at[2]]),
        }
    }
}

/// A date/time value as ms since the epoch (UTC for zone-less values).
fn epoch_ms(v: &Value) -> Option<i64> {
    match v {
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
            ..
        } => {
            let secs = crate::temporal::epoch_secs(
                *year as i64,
                *month as u32,
                *day as u32,
                *hour as i64,
                *minute as i64,
                *second as i64,
            );
            Some(secs * 1000 + (*micros / 1000) as i64)
        }
        Value::Int(i) => Some(*i),
        // PostgreSQL timestamps arrive as ISO text (`YYYY-MM-DDTHH:MM:SS[.f][Z]`).
        Value::String(s) => iso_ms(s),
        _ => None,
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z]` as ms since the epoch (UTC).
fn iso_ms(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s.get(19..).unwrap_or("");
    let ms = match frac.strip_prefix('.') {
        Some(f) => {
            let digits: String = f.chars().take_while(char::is_ascii_digit).take(3).collect();
            format!("{digits:0<3}").parse::<i64>().ok()?
        }
        None => 0,
    };
    Some(crate::temporal::epoch_secs(y, mo as u32, d as u32, h, mi, sec) * 1000 + ms)
}

/// Great-circle distance in metres (haversine, mean Earth radius).
fn distance_m(a: &Point, b: &Point) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().min(1.0).asin()
}

impl Enricher for Track {
    fn bind(&self, input: &Layout) -> Result<Binding, String> {
        if input.key.is_empty() {
            return Err("the table has no key to keep state by".into());
        }
        let mut at = vec![input.require(&self.cfg.lat)?, input.require(&self.cfg.lon)?];
        if let Some(t) = &self.cfg.time {
            at.push(input.require(t)?);
        }
        at.extend(input.key.iter().copied());
        let mut layout = input.clone();
        layout.add(&self.cfg.last_activity_field, "date")?;
        layout.add(&self.cfg.field, "object")?;
        Ok(Binding { at, layout })
    }

    fn apply(
        &mut self,
        b: &Binding,
        meta: &EventMeta<'_>,
        row: &mut Row,
        flags: &mut Vec<String>,
    ) -> Result<(), String> {
        if !meta.after {
            // The before image: the state describes the row as it is now.
            row.extend([Value::Absent, Value::Absent]);
            return Ok(());
        }
        let e = meta.event;
        let key_from = if self.cfg.time.is_some() { 3 } else { 2 };
        let key: String = b.at[key_from..]
            .iter()
            .map(|&i| row[i].to_json())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        if e.op == Op::Delete {
            self.set(&key, None);
            row.extend([Value::Null, Value::Null]);
            return Ok(());
        }
        let mut points = self.state.get(&key).cloned().unwrap_or_default();
        let mut speed = None;
        let point = match (number(&row[b.at[0]]), number(&row[b.at[1]])) {
            (Some(lat), Some(lon)) if valid(lat, lon) => self
                .time_ms(b, row, e.source_ts_ms)
                .map(|at_ms| Point { lat, lon, at_ms }),
            _ => None,
        };
        if let Some(p) = point {
            let keep = match points.back() {
                Some(prev) if *prev == p => false,
                Some(prev) => {
                    let d = distance_m(prev, &p);
                    let dt = (p.at_ms - prev.at_ms) as f64 / 1000.0;
                    let s = if dt > 0.0 {
                        d / dt
                    } else if d == 0.0 {
                        0.0
                    } else {
                        f64::INFINITY
                    };
                    let [min, max] = self.cfg.speed_range;
                    if s < min || s > max {
                        flags.push("track_speed_out_of_range".into());
                        false
                    } else {
                        speed = Some(s);
                        true
                    }
                }
                None => true,
            };
            if keep {
                points.push_back(p);
                let horizon = p.at_ms - (self.cfg.window_secs as i64) * 1000;
                while points.len() > self.cfg.keep
                    || points.front().is_some_and(|f| f.at_ms < horizon)
                {
                    points.pop_front();
                }
                self.set(&key, Some(points.clone()));
            }
        }
        let last = points.back().map_or(Value::Null, |p| {
            crate::temporal::utc_from_ms(p.at_ms.max(0) as u64)
        });
        let json = serde_json::json!({
            "speed_mps": speed.map(|s| (s * 1000.0).round() / 1000.0),
            "points": points.iter().map(|p| serde_json::json!({
                "lat": p.lat,
                "lon": p.lon,
                "at": crate::temporal::utc_from_ms(p.at_ms.max(0) as u64).to_json().trim_matches('"'),
            })).collect::<Vec<_>>(),
        });
        row.push(last);
        row.push(Value::Json(
            serde_json::value::RawValue::from_string(json.to_string()).expect("valid JSON"),
        ));
        Ok(())
    }

    fn flags(&self) -> bool {
        true
    }

    fn state_owner(&self) -> Option<String> {
        Some(format!(
            "track:{}:{}",
            self.cfg.field,
            self.cfg.table.clone().into_vec().join(",")
        ))
    }

    fn restore(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), String> {
        for (key, bytes) in entries {
            let points: Points =
                serde_json::from_slice(&bytes).map_err(|e| format!("key {key}: {e}"))?;
            self.state.insert(key, points);
        }
        Ok(())
    }

    fn commit(&mut self) {
        self.dirty.extend(self.undo.drain().map(|(k, _)| k));
    }

    fn rewind(&mut self) {
        for (key, old) in self.undo.drain() {
            match old {
                Some(v) => self.state.insert(key, v),
                None => self.state.remove(&key),
            };
        }
    }

    fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for key in std::mem::take(&mut self.dirty) {
            // As of the last boundary: the open transaction's change is not stored yet
            // (it stays dirty through its undo entry).
            let value = match self.undo.get(&key) {
                Some(before) => before.clone(),
                None => self.state.get(&key).cloned(),
            };
            out.push((
                key,
                value.map(|v| serde_json::to_vec(&v).expect("points serialize")),
            ));
        }
        out
    }
}

impl Kind for TrackConfig {
    fn build(&self) -> Result<Box<dyn Enricher>, String> {
        Ok(Box::new(Track::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> (Track, Binding) {
        let c: TrackConfig = toml::from_str(
            "table = \"db.t\"\nlat = \"lat\"\nlon = \"lon\"\nkeep = 2\nspeed_range = [0.0, 50.0]",
        )
        .unwrap();
        let t = Track::new(&c).unwrap();
        let layout = Layout {
            columns: ["id", "lat", "lon"]
                .iter()
                .map(|n| crate::event::Column {
                    name: n.to_string(),
                    type_name: "double".into(),
                })
                .collect(),
            key: vec![0],
        };
        let b = t.bind(&layout).unwrap();
        (t, b)
    }

    /// Applies a point for key 1 at `secs`; returns the flags.
    fn point(t: &mut Track, b: &Binding, lat: f64, lon: f64, secs: u64) -> Vec<String> {
        let mut e = crate::enrich::test_event();
        e.op = Op::Update;
        e.source_ts_ms = secs * 1000;
        let mut row = vec![Value::Int(1), Value::Double(lat), Value::Double(lon)];
        let mut flags = Vec::new();
        t.apply(
            b,
            &EventMeta {
                event: &e,
                after: true,
            },
            &mut row,
            &mut flags,
        )
        .unwrap();
        flags
    }

    fn stored(t: &mut Track) -> Vec<Point> {
        let changes = t.take_changes();
        assert_eq!(changes.len(), 1);
        serde_json::from_slice::<Points>(changes[0].1.as_ref().unwrap())
            .unwrap()
            .into_iter()
            .collect()
    }

    #[test]
    fn state_is_stored_as_of_the_last_boundary() {
        let (mut t, b) = step();
        assert!(point(&mut t, &b, 50.0, 8.0, 0).is_empty());
        t.commit();
        // 11 m in a second: fine. A second transaction stays open.
        assert!(point(&mut t, &b, 50.0001, 8.0, 1).is_empty());
        t.commit();
        assert!(point(&mut t, &b, 50.0002, 8.0, 2).is_empty());
        // The checkpoint stores the committed two points, not the open third.
        let s = stored(&mut t);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].lat, 50.0001);
        // The open transaction is dropped (its events come again): back to two.
        t.rewind();
        assert_eq!(t.state.values().next().unwrap().len(), 2);
        // 0/0 is skipped; a 5-degree jump in a second is flagged and not kept.
        assert!(point(&mut t, &b, 0.0, 0.0, 3).is_empty());
        assert_eq!(
            point(&mut t, &b, 55.0, 8.0, 4),
            vec!["track_speed_out_of_range".to_string()]
        );
        t.commit();
        assert!(t.take_changes().is_empty(), "nothing was kept");
        // keep = 2: the oldest point goes.
        assert!(point(&mut t, &b, 50.0003, 8.0, 5).is_empty());
        t.commit();
        let s = stored(&mut t);
        assert_eq!(
            s.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
            vec![1000, 5000]
        );
    }

    #[test]
    fn iso_times() {
        assert_eq!(iso_ms("1970-01-01T00:00:01.5"), Some(1500));
        assert_eq!(iso_ms("1970-01-02 00:00:00Z"), Some(86_400_000));
        assert_eq!(
            iso_ms("2024-05-01T10:00:04.123456Z"),
            Some(1_714_557_604_123)
        );
        assert_eq!(iso_ms("nope"), None);
    }

    #[test]
    fn distances() {
        let berlin = Point {
            lat: 52.52,
            lon: 13.405,
            at_ms: 0,
        };
        let paris = Point {
            lat: 48.8566,
            lon: 2.3522,
            at_ms: 0,
        };
        let d = distance_m(&berlin, &paris);
        assert!((d - 877_000.0).abs() < 5_000.0, "{d}");
        assert_eq!(distance_m(&berlin, &berlin), 0.0);
    }
}
