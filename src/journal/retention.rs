//! Retention of a log stream: whole segments go, oldest first, once they are past the
//! limit (the stream's total size above `bytes`, or a segment last written longer
//! than `max_age` ago, whichever comes first) and wholly before the stored checkpoint
//! (never the segment a restart opens, nor any after it).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{list_segments, segment_name};

/// What to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub bytes: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.bytes.is_some() || self.max_age.is_some()
    }

    /// Deletes the segments of `dir` past the limit and below segment `stored` (the
    /// segment of the cursor the last stored checkpoint holds); returns their indexes.
    pub fn apply(&self, dir: &Path, stored: u64) -> std::io::Result<Vec<u64>> {
        if !self.is_set() {
            return Ok(Vec::new());
        }
        let mut sizes = Vec::new();
        for s in list_segments(dir)? {
            let meta = std::fs::metadata(dir.join(segment_name(s)))?;
            sizes.push((s, meta.len(), meta.modified()?));
        }
        let mut total: u64 = sizes.iter().map(|(_, len, _)| len).sum();
        let now = SystemTime::now();
        let mut deleted = Vec::new();
        for (s, len, modified) in sizes {
            if s >= stored {
                break;
            }
            let too_big = self.bytes.is_some_and(|b| total > b);
            let too_old = self
                .max_age
                .is_some_and(|age| now.duration_since(modified).unwrap_or_default() > age);
            if !too_big && !too_old {
                break;
            }
            std::fs::remove_file(dir.join(segment_name(s)))?;
            total -= len;
            deleted.push(s);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(dir: &Path, sizes: &[usize]) {
        for (i, n) in sizes.iter().enumerate() {
            std::fs::write(dir.join(segment_name(i as u64)), vec![b'x'; *n]).unwrap();
        }
    }

    #[test]
    fn oldest_segments_go_past_the_limit_never_at_or_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        segments(dir.path(), &[100, 100, 100, 100, 100]);
        let r = Retention {
            bytes: Some(250),
            max_age: None,
        };
        // 500 bytes, 250 allowed: segments 0-2 would go, but the checkpoint is in 1.
        assert_eq!(r.apply(dir.path(), 1).unwrap(), vec![0]);
        assert_eq!(r.apply(dir.path(), 4).unwrap(), vec![1, 2]);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![3, 4]);
        // Within the limit: nothing more.
        assert!(r.apply(dir.path(), 4).unwrap().is_empty());
        // By age: everything before the checkpoint is old enough.
        let old = Retention {
            bytes: None,
            max_age: Some(Duration::ZERO),
        };
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(old.apply(dir.path(), 4).unwrap(), vec![3]);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![4]);
        assert!(Retention::default()
            .apply(dir.path(), 9)
            .unwrap()
            .is_empty());
    }
}
