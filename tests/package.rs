//! The Debian package: deploy/package.sh builds a .deb (of this build, stripped), dpkg
//! installs it into this machine, and the installed binary runs: `--version`, the
//! shipped default policy checks, the manual page and completions are where Debian
//! looks for them. Removed again afterwards. Needs root and dpkg (skipped otherwise,
//! saying so).

mod common;

use std::process::Command;

use common::*;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_package_installs_and_runs() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0"
        || Command::new("dpkg-deb").arg("--version").output().is_err()
    {
        eprintln!("not root or no dpkg-deb: the package is not built here");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let (ok, text) = run(Command::new("bash")
        .arg(repo().join("deploy/package.sh"))
        .args(["--fast", "--binary"])
        .arg(bin())
        .arg("--out")
        .arg(out.path()));
    assert!(ok, "{text}");
    let deb = text
        .lines()
        .find(|l| l.trim().ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb path in {text}"))
        .trim()
        .to_string();
    // Stripped: far smaller than the build it came from.
    let (ok, listing) = run(Command::new("dpkg-deb").args(["--contents", &deb]));
    assert!(ok, "{listing}");
    for path in [
        "./usr/bin/tributary",
        "./lib/systemd/system/tributary@.service",
        "./usr/share/man/man1/tributary.1.gz",
        "./usr/share/man/man1/tributary-run.1.gz",
        "./usr/share/bash-completion/completions/tributary",
        "./usr/share/tributary/schema-rules/default.toml",
        "./usr/share/doc/tributary/examples/demo-mariadb.toml",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    let (ok, text) = run(Command::new("dpkg").args(["-i", &deb]));
    assert!(ok, "{text}");
    let installed = run(Command::new("/usr/bin/tributary").arg("--version"));
    let policy = run(Command::new("/usr/bin/tributary").args([
        "policy",
        "check",
        "/usr/share/tributary/schema-rules/default.toml",
    ]));
    let user = run(Command::new("getent").args(["passwd", "tributary"]));
    let size = std::fs::metadata("/usr/bin/tributary").unwrap().len();
    let built = std::fs::metadata(bin()).unwrap().len();
    let (ok, text) = run(Command::new("dpkg").args(["-r", "tributary"]));
    assert!(ok, "{text}");
    assert!(
        installed.0 && installed.1.starts_with("tributary "),
        "{installed:?}"
    );
    assert!(policy.0, "{policy:?}");
    assert!(user.0, "the package creates the tributary user");
    assert!(size < built / 2, "stripped {size} bytes of {built}");
    assert!(!std::path::Path::new("/usr/bin/tributary").exists());
}
