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
//!
//! Memory holds at most `max_keys` keys (default 100,000), the least recently used
//! going first; an evicted key is read back from the store on its next change, so the
//! output is the same as with every key in memory. Only keys whose value the store
//! holds can go: those changed since the last checkpoint stay until it is stored.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::config::{Kind, Tables};
use super::geo::{number, valid};
use super::{Binding, Enricher, EventMeta, Layout, StoredKeys};
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
    /// Keys kept in memory; the rest are read back from the state store when they
    /// change.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
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

/// A key's points in memory, with when it was last used (for eviction).
struct Kept {
    points: Points,
    used: u64,
}

pub struct Track {
    cfg: TrackConfig,
    state: HashMap<String, Kept>,
    /// Where evicted keys are read back from (None in tests without a store: nothing
    /// is evicted then).
    stored: Option<StoredKeys>,
    /// Counts key uses, for least-recently-used eviction.
    clock: u64,
    /// Keys in memory at which the next eviction runs (evicting is a sort, so it runs
    /// once per tenth of `max_keys` new keys, not for each).
    evict_at: usize,
    /// Keys changed by committed transactions since the last `take_changes`.
    dirty: HashSet<String>,
    /// The open transaction: each key's value before it (first change wins).
    undo: HashMap<String, Option<Points>>,
    /// Keys handed out by the last `take_changes`: the store holds them once that
    /// checkpoint commits, which is before the next `take_changes` (one checkpoint is
    /// in flight at most), so they stay in memory until then.
    flushing: HashSet<String>,
}

impl Track {
    pub fn new(c: &TrackConfig) -> Result<Track, String> {
        if c.keep == 0 {
            return Err("`keep` must be at least 1".into());
        }
        if c.max_keys == 0 {
            return Err("`max_keys` must be at least 1".into());
        }
        let [min, max] = c.speed_range;
        if min.is_nan() || max.is_nan() || min > max {
            return Err("`speed_range` must be [min, max] with min <= max".into());
        }
        Ok(Track {
            cfg: c.clone(),
            state: HashMap::new(),
            stored: None,
            clock: 0,
            evict_at: c.max_keys + 1,
            dirty: HashSet::new(),
            undo: HashMap::new(),
            flushing: HashSet::new(),
        })
    }

    /// The key's points: from memory, else read back from the store.
    fn points(&mut self, key: &str) -> Result<Points, String> {
        self.clock += 1;
        if let Some(k) = self.state.get_mut(key) {
            k.used = self.clock;
            return Ok(k.points.clone());
        }
        let Some(stored) = &self.stored else {
            return Ok(Points::new());
        };
        let Some(bytes) = stored.get(key)? else {
            return Ok(Points::new());
        };
        let points: Points = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the stored state of key {key} is corrupt: {e}"))?;
        self.keep(key, points.clone());
        Ok(points)
    }

    /// Puts a key's points in memory, evicting when over `max_keys`.
    fn keep(&mut self, key: &str, points: Points) {
        let used = self.clock;
        if self
            .state
            .insert(key.to_string(), Kept { points, used })
            .is_none()
            && self.state.len() >= self.evict_at
        {
            self.evict();
        }
    }

    /// Drops the least recently used keys the store holds as they are, down to 90% of
    /// `max_keys` (fewer when more are changed since the last checkpoint).
    fn evict(&mut self) {
        let cap = self.cfg.max_keys;
        if self.stored.is_some() {
            let mut clean: Vec<(u64, String)> = self
                .state
                .iter()
                .filter(|(k, v)| {
                    // The key in use now stays, like changed ones.
                    v.used != self.clock
                        && !self.undo.contains_key(*k)
                        && !self.dirty.contains(*k)
                        && !self.flushing.contains(*k)
                })
                .map(|(k, v)| (v.used, k.clone()))
                .collect();
            let excess = self.state.len().saturating_sub(cap - cap / 10);
            if clean.len() > excess {
                clean.select_nth_unstable(excess);
            }
            for (_, k) in clean.into_iter().take(excess) {
                self.state.remove(&k);
            }
        }
        self.evict_at = self.state.len().max(cap) + cap / 10 + 1;
    }

    /// Changes a key in the open transaction (its points were read first, so memory
    /// holds its value).
    fn set(&mut self, key: &str, value: Option<Points>) {
        let old = self.state.get(key).map(|k| k.points.clone());
        // In the undo log before anything is evicted: it pins the key in memory.
        self.undo.entry(key.to_string()).or_insert(old);
        // A removed key stays in memory as empty until the store has it removed too:
        // it must not be read back from the store before then.
        self.keep(key, value.unwrap_or_default());
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
    fn append_only(&self) -> bool {
        true
    }

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
        let e = meta.event;
        if !meta.after && e.op != Op::Delete {
            // The before image: the state describes the row as it is now.
            row.extend([Value::Absent, Value::Absent]);
            return Ok(());
        }
        let key_from = if self.cfg.time.is_some() { 3 } else { 2 };
        let key: String = b.at[key_from..]
            .iter()
            .map(|&i| row[i].to_json())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        let mut points = self.points(&key)?;
        if e.op == Op::Delete {
            // The row is gone (a delete has only its before image): so is its track.
            if !points.is_empty() {
                self.set(&key, None);
            }
            row.extend([Value::Absent, Value::Absent]);
            return Ok(());
        }
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

    fn restore(&mut self, stored: StoredKeys) {
        self.stored = Some(stored);
    }

    fn commit(&mut self) {
        self.dirty.extend(self.undo.drain().map(|(k, _)| k));
    }

    fn rewind(&mut self) {
        for (key, old) in self.undo.drain() {
            match old {
                Some(points) => {
                    let used = self.clock;
                    self.state.insert(key, Kept { points, used });
                }
                None => {
                    self.state.remove(&key);
                }
            }
        }
    }

    fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::with_capacity(self.dirty.len());
        // The previous checkpoint is stored by now: its keys may be evicted again.
        self.flushing.clear();
        for key in std::mem::take(&mut self.dirty) {
            // As of the last boundary: the open transaction's change is not stored yet
            // (it stays dirty through its undo entry).
            let value = match self.undo.get(&key) {
                Some(before) => before.clone(),
                None => self.state.get(&key).map(|k| k.points.clone()),
            }
            .filter(|points| !points.is_empty());
            out.push((
                key.clone(),
                value.map(|v| serde_json::to_vec(&v).expect("points serialize")),
            ));
            self.flushing.insert(key);
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
        assert_eq!(t.state.values().next().unwrap().points.len(), 2);
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

    /// With `max_keys` (10) far below the keys in play (500), memory stays near the cap and the
    /// output equals a run with every key in memory: evicted keys come back from the
    /// store (checkpoints, rewinds of an open transaction and deletes included).
    #[test]
    fn bounded_memory_gives_the_output_of_unbounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            crate::offsets::OffsetStore::open(dir.path(), crate::files::FileMode::default())
                .unwrap(),
        );
        let (mut big, b) = step();
        let (mut small, _) = step();
        small.cfg.max_keys = 10;
        small.evict_at = 11;
        let owner = small.state_owner().unwrap();
        small.restore(StoredKeys::new(store.clone(), owner.clone()));
        let apply = |t: &mut Track, id: i64, op: Op, n: u64| -> Row {
            let mut e = crate::enrich::test_event();
            e.op = op;
            e.source_ts_ms = n * 1000;
            // Small moves (valid speeds), and now and then a jump (flagged).
            let lat = 50.0 + (n % 7) as f64 * 0.0001 + if n % 13 == 0 { 3.0 } else { 0.0 };
            let mut row = vec![Value::Int(id), Value::Double(lat), Value::Double(8.0)];
            let mut flags = Vec::new();
            t.apply(
                &b,
                &EventMeta {
                    event: &e,
                    after: op != Op::Delete,
                },
                &mut row,
                &mut flags,
            )
            .unwrap();
            row.push(Value::Array(flags.into_iter().map(Value::String).collect()));
            row
        };
        let mut peak = 0;
        let mut in_flight: Vec<crate::offsets::Saved> = Vec::new();
        for n in 0..6_000u64 {
            // 500 keys, visited in an order that keeps revisiting evicted ones; every
            // other event revisits the key of 31 events before (a checkpoint or two
            // later: while the store may not hold its change yet).
            let base = |n: u64| ((n / 2 * 7919) % 500) as i64;
            let id = if n % 2 == 1 && n > 31 {
                base(n - 31)
            } else {
                base(n)
            };
            let op = if n % 97 == 0 { Op::Delete } else { Op::Update };
            assert_eq!(
                apply(&mut big, id, op, n),
                apply(&mut small, id, op, n),
                "event {n}"
            );
            if n % 11 == 5 {
                // The source takes the open transaction back and sends it again.
                big.rewind();
                small.rewind();
                assert_eq!(apply(&mut big, id, op, n), apply(&mut small, id, op, n));
            }
            if n % 3 == 0 {
                big.commit();
                small.commit();
            }
            if n % 20 == 0 {
                // A checkpoint: the changes as of the boundary go to the store, which
                // holds them some time later (before the next checkpoint begins).
                store.commit(None, &in_flight).unwrap();
                big.take_changes();
                in_flight = small
                    .take_changes()
                    .into_iter()
                    .map(|(k, v)| crate::offsets::Saved::Keyed((format!("{owner}\0{k}"), v)))
                    .collect();
            }
            peak = peak.max(small.state.len());
        }
        assert!(big.state.len() > 400, "{}", big.state.len());
        // The cap, plus keys changed in the last two checkpoint intervals.
        assert!(peak <= 10 + 2 * 20 + 1, "{peak}");
    }
}
