//! Reads a log stream back, verifying every record's CRC (`tributary log cat`, replay).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::{block, list_segments, segment_name};

/// One verified record: the JSON text of a change event.
#[derive(Debug, Clone)]
pub struct Record {
    pub segment: u64,
    pub line: u64,
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogRecordError {
    #[error("{path}:{line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Calls `f` for every record of every segment in order; stops at the first corrupt
/// record with its file and line.
pub fn read_log(dir: &Path, mut f: impl FnMut(Record) -> bool) -> Result<u64, LogRecordError> {
    let io = |path: &Path, e: std::io::Error| LogRecordError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if !dir.is_dir() {
        return Err(LogRecordError::Io {
            path: dir.to_path_buf(),
            message: "not a directory".into(),
        });
    }
    let segments = list_segments(dir).map_err(|e| io(dir, e))?;
    let mut count = 0;
    for s in segments {
        let path = dir.join(segment_name(s));
        let file = match File::open(&path) {
            Ok(f) => f,
            // Retention deleted the oldest segments of a live log after they were
            // listed: the log starts later, as it would have had we listed a moment
            // later. Once records were read, a vanished segment is a gap: an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && count == 0 => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LogRecordError::Io {
                    path,
                    message: "retention deleted this segment while the log was being read (the reader fell behind the daemon's retention settings): read again".into(),
                })
            }
            Err(e) => return Err(io(&path, e)),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut unit = Vec::new();
        let mut n = 0u64;
        loop {
            unit.clear();
            block::read_unit(&mut reader, &mut unit).map_err(|e| io(&path, e))?;
            if unit.is_empty() {
                break;
            }
            for json in records_of(&unit, &path, n)? {
                n += 1;
                count += 1;
                if !f(Record {
                    segment: s,
                    line: n,
                    json,
                }) {
                    return Ok(count);
                }
            }
        }
    }
    Ok(count)
}

/// The records of one unit of segment `path` (a record line or a block) whose first
/// record is number `before + 1`, each verified; an error names the record, or a
/// damaged block by its first record's number.
fn records_of(unit: &[u8], path: &Path, before: u64) -> Result<Vec<String>, LogRecordError> {
    let corrupt = |line: u64, message: &str| LogRecordError::Corrupt {
        path: path.to_path_buf(),
        line,
        message: message.to_string(),
    };
    let lines = block::record_lines(unit).map_err(|m| corrupt(before + 1, m))?;
    let mut out = Vec::new();
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let n = before + 1 + out.len() as u64;
        out.push(verified(line).map_err(|m| corrupt(n, m))?);
    }
    Ok(out)
}

/// The JSON of one line (`<crc32c hex> <json>\n`) once its checksum matches.
fn verified(line: &[u8]) -> Result<String, &'static str> {
    if line.last() != Some(&b'\n') {
        return Err("incomplete record at the end of the segment (written after the last checkpoint; the daemon cuts it on its next start)");
    }
    let body = &line[..line.len() - 1];
    if body.len() < 10 || body[8] != b' ' {
        return Err("not a tributary log record (expected `<crc32c hex> <json>`)");
    }
    let want = std::str::from_utf8(&body[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("bad CRC field")?;
    let json = &body[9..];
    if crc32c::crc32c(json) != want {
        return Err("CRC mismatch: the record is corrupt");
    }
    String::from_utf8(json.to_vec()).map_err(|_| "record is not UTF-8")
}

/// Follows a log stream as it is written (`tributary log cat --follow`): every record
/// once, in order, across rotations; a segment retention deleted before it was read
/// is skipped with a warning. `poll` returns None when nothing new is there yet.
pub struct Tail {
    dir: PathBuf,
    segment: u64,
    /// Records of `segment` read so far (the last one's line number).
    line: u64,
    /// Records up to this place are skipped (`--from`: resume after it).
    after: Option<(u64, u64)>,
    reader: Option<(BufReader<File>, u64)>,
    /// The unit (record line or block) being read, until it is complete.
    partial: Vec<u8>,
    /// Records of the last block read, not handed out yet.
    ready: std::collections::VecDeque<Record>,
}

impl Tail {
    /// From the first record, or after record `line` of `segment`.
    pub fn new(dir: &Path, after: Option<(u64, u64)>) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            segment: after.map(|(s, _)| s).unwrap_or(0),
            line: 0,
            after,
            reader: None,
            partial: Vec::new(),
            ready: Default::default(),
        }
    }

    pub fn poll(&mut self) -> Result<Option<Record>, LogRecordError> {
        let io = |path: &Path, e: std::io::Error| LogRecordError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        loop {
            if let Some(r) = self.ready.pop_front() {
                if self
                    .after
                    .is_some_and(|(s, l)| (r.segment, r.line) <= (s, l))
                {
                    continue;
                }
                return Ok(Some(r));
            }
            if self.reader.is_none() {
                let path = self.dir.join(segment_name(self.segment));
                match File::open(&path) {
                    Ok(f) => self.reader = Some((BufReader::with_capacity(1 << 16, f), 0)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Gone (retention) or not there yet.
                        let later = list_segments(&self.dir)
                            .map_err(|e| io(&self.dir, e))?
                            .into_iter()
                            .find(|s| *s > self.segment);
                        match later {
                            Some(s) => {
                                if self.line > 0 || self.segment > 0 {
                                    eprintln!("warning: segments {}..{} of {} were deleted before they were read (retention)", self.segment, s - 1, self.dir.display());
                                }
                                self.segment = s;
                                self.line = 0;
                                continue;
                            }
                            None => return Ok(None),
                        }
                    }
                    Err(e) => return Err(io(&path, e)),
                }
            }
            let path = self.dir.join(segment_name(self.segment));
            let (reader, offset) = self.reader.as_mut().expect("opened");
            // A daemon restarted after a crash cuts what it wrote past its checkpoint
            // and writes it again: read on from the new end.
            let len = reader.get_ref().metadata().map_err(|e| io(&path, e))?.len();
            if len < *offset {
                use std::io::Seek;
                reader
                    .seek(std::io::SeekFrom::Start(len))
                    .map_err(|e| io(&path, e))?;
                *offset = len;
                self.partial.clear();
            }
            let had = self.partial.len();
            let complete = block::read_unit(reader, &mut self.partial).map_err(|e| io(&path, e))?;
            *offset += (self.partial.len() - had) as u64;
            if complete {
                let unit = std::mem::take(&mut self.partial);
                for json in records_of(&unit, &path, self.line)? {
                    self.line += 1;
                    self.ready.push_back(Record {
                        segment: self.segment,
                        line: self.line,
                        json,
                    });
                }
                continue;
            }
            // At the end: the next segment, once the writer rotated to it.
            let rotated = list_segments(&self.dir)
                .map_err(|e| io(&self.dir, e))?
                .into_iter()
                .any(|s| s > self.segment);
            if rotated && self.partial.is_empty() {
                // Read once more: the last records may have landed after the check.
                let complete =
                    block::read_unit(reader, &mut self.partial).map_err(|e| io(&path, e))?;
                *offset += self.partial.len() as u64;
                // A complete unit is taken at the top of the loop; a partial one is
                // waited for.
                if complete {
                    continue;
                }
                if !self.partial.is_empty() {
                    return Ok(None);
                }
                self.segment += 1;
                self.line = 0;
                self.reader = None;
                continue;
            }
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testkit::fuzz_cases(300)))]

        /// A segment of any bytes (valid records, then damage): records up to the damage
        /// or an error naming it, never a panic.
        #[test]
        fn segments_of_any_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), at in proptest::prelude::any::<usize>(), byte in proptest::prelude::any::<u8>()) {
            let dir = tempfile::tempdir().unwrap();
            let good = "{\"a\":1}";
            let mut seg = format!("{:08x} {good}\n", crc32c::crc32c(good.as_bytes())).into_bytes();
            seg.extend_from_slice(&seg.clone());
            let i = at % seg.len();
            seg[i] = byte;
            seg.extend(tail);
            std::fs::write(dir.path().join(segment_name(0)), &seg).unwrap();
            let mut n = 0;
            let _ = read_log(dir.path(), |r| {
                n += 1;
                r.json.len() < 1 << 20
            });
            proptest::prop_assert!(n <= 2 + seg.len() / 11);
        }
    }
}
