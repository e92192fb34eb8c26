//! The command line itself: shell completions that name every subcommand and that the
//! shell accepts.

mod common;

use common::*;

#[test]
fn completions_name_every_subcommand_and_parse() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = tributary(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        for sub in [
            "run",
            "verify",
            "reindex",
            "dead-letters",
            "quarantine",
            "snapshot",
        ] {
            assert!(out.contains(sub), "{shell} completions lack {sub}");
        }
    }
    // bash reads the script without a syntax error.
    let (_, script, _) = tributary(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tributary.bash");
    std::fs::write(&file, script).unwrap();
    let status = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
}
