//! On-demand snapshots (`tributary snapshot --table`): one file per requested table in
//! `<state dir>/snapshot-requests/`, holding the request's time. The daemon looks for
//! them every second (and at start), so a request made while it is stopped is served
//! when it starts. A file is removed once its table's snapshot finished.

use std::path::{Path, PathBuf};

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshot-requests")
}

/// A file name for any table name (Postgres names may hold `/`).
fn file_name(table: &str) -> String {
    let mut out = String::with_capacity(table.len());
    for b in table.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn table_name(file: &str) -> Option<String> {
    let mut out = Vec::with_capacity(file.len());
    let b = file.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(file.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Records a request for `table`; returns its time.
pub fn request(state_dir: &Path, table: &str) -> std::io::Result<u64> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d)?;
    let at = crate::event::now_ms();
    let tmp = d.join(format!(".{}.tmp", file_name(table)));
    std::fs::write(&tmp, at.to_string())?;
    std::fs::rename(&tmp, d.join(file_name(table)))?;
    Ok(at)
}

/// The requests waiting: (table, time).
pub fn pending(state_dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let (Some(table), Ok(text)) = (table_name(&name), std::fs::read_to_string(e.path())) else {
            continue;
        };
        if let Ok(at) = text.trim().parse() {
            out.push((table, at));
        }
    }
    out.sort();
    out
}

/// Removes the request for `table` if it is not newer than `served_ms`.
pub fn served(state_dir: &Path, table: &str, served_ms: u64) {
    let path = dir(state_dir).join(file_name(table));
    let newer = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .is_some_and(|at| at > served_ms);
    if !newer {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_any_table_name() {
        let d = tempfile::tempdir().unwrap();
        let at = request(d.path(), "my schema.odd/name").unwrap();
        request(d.path(), "shop.orders").unwrap();
        let p = pending(d.path());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], ("my schema.odd/name".to_string(), at));
        served(d.path(), "my schema.odd/name", at);
        assert_eq!(pending(d.path()).len(), 1);
        // A newer request survives an older one being served.
        let newer = request(d.path(), "shop.orders").unwrap();
        served(d.path(), "shop.orders", newer - 1);
        assert_eq!(pending(d.path()).len(), 1);
    }
}
