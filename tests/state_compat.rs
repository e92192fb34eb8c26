//! A state dir written by the release before stage state had its own table
//! (tests/fixtures/state-0.1.0: the 0.1.0 daemon snapshotted `fixture.t` from MariaDB,
//! streamed an insert and an update, and was stopped with SIGTERM) opens with this
//! release: the checkpoint it resumes from is intact, and the schema guard's and the
//! snapshot's state, which that release kept among the sink cursors, are stage state.

use std::path::Path;
use std::process::Command;

use tributary::event::Position;
use tributary::offsets::OffsetStore;

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-0.1.0");
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("offsets.redb"), to.join("offsets.redb")).unwrap();
}

#[test]
fn a_state_dir_of_the_earlier_release_opens_with_its_stage_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    copy_fixture(&state);
    let store = OffsetStore::open(&state, tributary::files::FileMode::default()).unwrap();

    let cp = store
        .checkpoint()
        .unwrap()
        .expect("the checkpoint survives");
    assert_eq!(
        cp.position,
        Position::Binlog {
            file: "binlog.000001".into(),
            offset: 186777995,
            gtid: Some("0-1-2509".into()),
        }
    );
    let guard = store
        .stage_state("schema-guard")
        .unwrap()
        .expect("guard state");
    assert_eq!(guard["tables"]["fixture.t"]["version"], 1, "{guard}");
    let snapshot = store
        .stage_state("snapshot")
        .unwrap()
        .expect("snapshot state");
    assert_eq!(
        snapshot["tables"]["fixture.t"]["status"], "done",
        "{snapshot}"
    );
    assert_eq!(snapshot["tables"]["fixture.t"]["rows"], 3, "{snapshot}");
    let mut cursors: Vec<String> = store
        .sink_cursors()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    cursors.sort();
    assert_eq!(cursors, ["log", "quarantine"]);
    assert_eq!(store.sink_cursor("log").unwrap().unwrap()["offset"], 1617);
}

#[test]
fn status_of_a_migrated_state_dir_shows_tables_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    copy_fixture(&state);
    let connector = connector(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["status", "--connector"])
        .arg(&connector)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["tables"]["fixture.t"]["schema_version"], 1,
        "{status}"
    );
    assert_eq!(
        status["snapshot"]["fixture.t"]["status"], "done",
        "{status}"
    );
    assert!(status["sinks"].get("schema-guard").is_none(), "{status}");
    assert!(status["sinks"]["log"].is_object(), "{status}");
}

/// A connector file for the fixture table with its state in `dir/state`.
fn connector(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("fixture.toml");
    std::fs::write(
        &path,
        format!(
            r#"[source]
kind = "mariadb"
port = 1
user = "tributary"
password = "x"
server_id = 9911
include = ["fixture.*"]
[[sink]]
kind = "log"
name = "log"
dir = "{log}"
[state]
dir = "{state}"
"#,
            log = dir.join("log").display(),
            state = dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// Stored guard state that does not read (a damaged store, or one a newer release
/// wrote) stops with the store's path and what to do; before, the guard started over
/// and forgot its quarantined tables.
#[test]
fn unreadable_guard_state_stops_with_the_state_dir_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let store = OffsetStore::open(&state, tributary::files::FileMode::default()).unwrap();
        store
            .commit(
                None,
                &[tributary::offsets::Saved::Stage(
                    "schema-guard".into(),
                    serde_json::json!({"quarantined": "not a map"}),
                )],
            )
            .unwrap();
        let err = match tributary::schema::guard::Guard::restore(
            tributary::schema::Policy::add_only(),
            &store,
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a guard was made from unreadable state"),
        };
        assert!(
            err.contains("schema-guard") && err.contains("cannot be read"),
            "{err}"
        );
        assert!(err.contains(&state.display().to_string()), "{err}");
    }
    // Through the CLI: quarantine replay reads the guard state first.
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["quarantine", "replay", "--connector"])
        .arg(connector(dir.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot be read") && stderr.contains("backup"),
        "{stderr}"
    );
}
