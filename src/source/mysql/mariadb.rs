//! MariaDB binlog events that mysql_common does not know: GTID (162) and GTID list (163).
//! Layouts from MariaDB's sql/log_event.h.

use std::collections::BTreeMap;
use std::fmt;

pub const ANNOTATE_ROWS_EVENT: u8 = 160;
pub const BINLOG_CHECKPOINT_EVENT: u8 = 161;
pub const GTID_EVENT: u8 = 162;
pub const GTID_LIST_EVENT: u8 = 163;
pub const START_ENCRYPTION_EVENT: u8 = 164;
pub const QUERY_COMPRESSED_EVENT: u8 = 165;
/// WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT(_V1): 166..=171.
pub const FIRST_COMPRESSED_ROWS_EVENT: u8 = 166;
pub const LAST_COMPRESSED_ROWS_EVENT: u8 = 171;

/// GTID event flag: a transaction with no terminating COMMIT/XID (DDL, non-transactional).
pub const FL_STANDALONE: u8 = 1;

/// One MariaDB GTID: `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A parsed GTID event (the start of a MariaDB event group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GtidEvent {
    pub gtid: Gtid,
    pub flags: u8,
}

impl GtidEvent {
    pub fn standalone(&self) -> bool {
        self.flags & FL_STANDALONE != 0
    }
}

/// Parses a GTID event body. `server_id` comes from the event header.
pub fn parse_gtid_event(data: &[u8], server_id: u32) -> Option<GtidEvent> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some(GtidEvent {
        gtid: Gtid {
            domain,
            server: server_id,
            seq,
        },
        flags,
    })
}

/// Parses a GTID list event: the GTID state at the start of a binlog file.
pub fn parse_gtid_list(data: &[u8]) -> Option<Vec<Gtid>> {
    let count = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) & 0x0fff_ffff;
    // The count comes from the wire: allocate for what the data can hold.
    let mut out = Vec::with_capacity((count as usize).min(data.len() / 16));
    for i in 0..count as usize {
        let at = 4 + i * 16;
        let e = data.get(at..at + 16)?;
        out.push(Gtid {
            domain: u32::from_le_bytes(e[0..4].try_into().ok()?),
            server: u32::from_le_bytes(e[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(e[8..16].try_into().ok()?),
        });
    }
    Some(out)
}

/// The replication position as MariaDB tracks it: the last GTID of each domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState {
    by_domain: BTreeMap<u32, Gtid>,
}

impl GtidState {
    /// Parses `0-1-57,1-2-10` (the @@gtid_binlog_pos / @slave_connect_state form).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut st = GtidState::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (d, sv, sq) = (it.next(), it.next(), it.next());
            let bad = || format!("bad GTID `{part}` (expected domain-server-seq)");
            let g = Gtid {
                domain: d.ok_or_else(bad)?.parse().map_err(|_| bad())?,
                server: sv.ok_or_else(bad)?.parse().map_err(|_| bad())?,
                seq: sq.ok_or_else(bad)?.parse().map_err(|_| bad())?,
            };
            if it.next().is_some() {
                return Err(bad());
            }
            st.by_domain.insert(g.domain, g);
        }
        Ok(st)
    }

    pub fn update(&mut self, g: Gtid) {
        self.by_domain.insert(g.domain, g);
    }

    /// Adds domains the state does not know yet (from a GTID list event).
    pub fn seed(&mut self, list: &[Gtid]) {
        for g in list {
            self.by_domain.entry(g.domain).or_insert(*g);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.by_domain.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_event_body() {
        // seq 57, domain 0, flags 0x0d (standalone | transactional | allow parallel)
        let mut body = 57u64.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.push(0x0d);
        let e = parse_gtid_event(&body, 1).unwrap();
        assert_eq!(e.gtid.to_string(), "0-1-57");
        assert!(e.standalone());
        assert!(parse_gtid_event(&body[..10], 1).is_none());
    }

    #[test]
    fn gtid_list_and_state() {
        let mut body = 2u32.to_le_bytes().to_vec();
        for (d, s, q) in [(0u32, 1u32, 5u64), (3, 2, 9)] {
            body.extend_from_slice(&d.to_le_bytes());
            body.extend_from_slice(&s.to_le_bytes());
            body.extend_from_slice(&q.to_le_bytes());
        }
        let list = parse_gtid_list(&body).unwrap();
        let mut st = GtidState::parse("0-1-7").unwrap();
        st.seed(&list);
        assert_eq!(st.to_string(), "0-1-7,3-2-9");
        assert!(GtidState::parse("0-1").is_err());
        assert_eq!(GtidState::parse("").unwrap().to_string(), "");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testkit::fuzz_cases(3000)))]

        /// GTID events and lists from any bytes: parsed or None, never a panic or an
        /// allocation the bytes cannot back (a count of 2^28 once asked for 4 GiB).
        #[test]
        fn gtid_parsers_take_any_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), server in proptest::prelude::any::<u32>()) {
            let _ = parse_gtid_event(&data, server);
            if let Some(list) = parse_gtid_list(&data) {
                proptest::prop_assert!(list.len() * 16 <= data.len());
            }
        }
    }
}
