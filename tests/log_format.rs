//! docs/log-format.md describes the log stream well enough to read it without
//! tributary: its Python reader, run on segments tributary's journal wrote (several
//! rotations, strings that need escaping; plain record lines and compressed blocks),
//! gives every record `read_log` gives, in the same order and at the same positions,
//! and stops where `read_log` stops on a corrupt record or block. No servers: the
//! journal is written directly. The reader runs with `TRIBUTARY_READER_PYTHON`
//! (deploy/test.sh sets it to an interpreter with the zstandard package), else python3.

use std::path::Path;
use std::process::Command;

use tributary::files::FileMode;
use tributary::journal::{read_log, Compression, Journal, Settings};

/// The ```python block of docs/log-format.md.
fn documented_reader() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/log-format.md"))
            .unwrap();
    let block = doc
        .split("```python\n")
        .nth(1)
        .expect("docs/log-format.md has a python block");
    block.split("```").next().unwrap().to_string()
}

/// Runs the documented reader on `dir`: (its output lines, whether it succeeded, stderr).
fn run_reader(dir: &Path) -> (Vec<String>, bool, String) {
    let script = dir.parent().unwrap().join("reader.py");
    std::fs::write(&script, documented_reader()).unwrap();
    let python = std::env::var("TRIBUTARY_READER_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs");
    (
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect(),
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the documented reader prints for each record, from tributary's own reader.
fn expected(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let _ = read_log(dir, |r| {
        let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        out.push(format!(
            "{}:{} {} {}",
            r.segment,
            r.line,
            v["op"].as_str().unwrap(),
            // Python's json.dumps spacing for a one-key object.
            v["key"].to_string().replace(':', ": ")
        ));
        true
    });
    out
}

#[tokio::test]
async fn the_documented_reader_reads_what_the_journal_writes() {
    documented_reader_reads(Compression::None, 2_000, "2: CRC mismatch").await;
}

#[tokio::test]
async fn the_documented_reader_reads_compressed_blocks() {
    // A block per ten records (each flush writes one), a segment per few blocks.
    documented_reader_reads(Compression::Zstd, 600, "1: block CRC mismatch").await;
}

/// Writes 100 records with `compression`, rotating at `segment_bytes`, and checks the
/// documented reader against `read_log`, then with a byte flipped early in the third
/// segment, where the reader must report `<segment>:<broken>`.
async fn documented_reader_reads(compression: Compression, segment_bytes: u64, broken: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let settings = Settings {
        segment_bytes,
        compression,
        ..Settings::at(&dir, FileMode::default())
    };
    let mut journal = Journal::open("log-format".into(), &settings, None).unwrap();
    let mut scratch = Vec::new();
    for i in 0..100u64 {
        let op = ["c", "u", "d"][(i % 3) as usize];
        let record = serde_json::json!({
            "op": op,
            "key": {"id": i},
            "after": {"note": format!("line {i}\nbreak \"quoted\" \\ ü 😀 \u{1}")},
            "version": 1000 + i,
        });
        journal.append_record(&record, &mut scratch).unwrap();
        if i % 10 == 9 {
            journal.mark_boundary();
            journal.flush().await.unwrap().await.unwrap();
        }
    }
    drop(journal);

    let want = expected(&dir);
    assert_eq!(want.len(), 100);
    assert!(
        want.last().unwrap().starts_with(|c: char| c != '0'),
        "the records span several segments: {want:?}"
    );
    let (got, ok, stderr) = run_reader(&dir);
    assert!(
        ok,
        "the documented reader failed (for compressed logs it needs the zstandard package: \
         set TRIBUTARY_READER_PYTHON to a python3 that has it, as deploy/test.sh does): {stderr}"
    );
    assert_eq!(got, want);

    if compression == Compression::Zstd {
        let first = std::fs::read(dir.join(tributary::journal::segment_name(0))).unwrap();
        assert!(first.starts_with(b"#zstd "), "blocks were written");
    }
    // A flipped byte in a later segment: both readers stop at that record (block).
    let segments = tributary::journal::list_segments(&dir).unwrap();
    let victim = dir.join(tributary::journal::segment_name(segments[2]));
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.iter().position(|&b| b == b'\n').unwrap() + 30;
    bytes[at] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let want = expected(&dir);
    let (got, ok, stderr) = run_reader(&dir);
    assert!(!ok, "the documented reader read past a corrupt record");
    assert!(
        stderr.contains(&format!(
            "{}:{broken}",
            tributary::journal::segment_name(segments[2])
        )),
        "{stderr}"
    );
    assert_eq!(got, want);
    assert!(want.len() < 100);
}
