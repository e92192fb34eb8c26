//! Reads a log stream back, verifying every record's CRC (`tributary log cat`, replay).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{list_segments, segment_name};

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
        let mut reader =
            BufReader::with_capacity(1 << 20, File::open(&path).map_err(|e| io(&path, e))?);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| io(&path, e))?;
            if read == 0 {
                break;
            }
            n += 1;
            let corrupt = |message: &str| LogRecordError::Corrupt {
                path: path.clone(),
                line: n,
                message: message.to_string(),
            };
            if line.last() != Some(&b'\n') {
                return Err(corrupt("incomplete record at the end of the segment (written after the last checkpoint; the daemon cuts it on its next start)"));
            }
            let body = &line[..line.len() - 1];
            if body.len() < 10 || body[8] != b' ' {
                return Err(corrupt(
                    "not a tributary log record (expected `<crc32c hex> <json>`)",
                ));
            }
            let want = std::str::from_utf8(&body[..8])
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or_else(|| corrupt("bad CRC field"))?;
            let json = &body[9..];
            if crc32c::crc32c(json) != want {
                return Err(corrupt("CRC mismatch: the record is corrupt"));
            }
            let json =
                String::from_utf8(json.to_vec()).map_err(|_| corrupt("record is not UTF-8"))?;
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
    Ok(count)
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
