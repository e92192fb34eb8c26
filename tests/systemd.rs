//! The systemd service protocol, with a test socket as `$NOTIFY_SOCKET`: `READY=1`
//! once the daemon streams (not before), `STATUS=` lines, and `WATCHDOG=1` keep-alives
//! at half the `WATCHDOG_USEC` interval while the pipeline loop runs. And the unit file
//! passes `systemd-analyze verify` where systemd is installed.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// Every datagram the socket got within `wait`.
fn received(socket: &UnixDatagram, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_streaming_and_watchdog_keep_alives() {
    let db = new_db("notify", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let c = connector(dir.path(), SHARED_PORT, &db, "");
    let mut daemon = spawn_daemon_env(
        &c,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    wait_streaming(&c, &mut daemon).await;
    let got = received(&socket, Duration::from_secs(3));
    let ready = got.iter().position(|m| m.lines().any(|l| l == "READY=1"));
    assert!(ready.is_some(), "no READY=1 in {got:?}\n{}", daemon_log(&c));
    assert!(
        got.iter().any(|m| m.contains("STATUS=streaming")),
        "{got:?}"
    );
    // 1 s watchdog: a keep-alive every half second or so while the loop runs.
    let keep_alives = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        (3..=12).contains(&keep_alives),
        "{keep_alives} keep-alives in 3 s: {got:?}"
    );
    assert_eq!(
        got.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{got:?}"
    );
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&c));
}

#[test]
fn the_unit_file_verifies() {
    let unit = repo().join("deploy/tributary@.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for wanted in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=tributary",
    ] {
        assert!(
            text.contains(wanted),
            "{wanted} missing from {}",
            unit.display()
        );
    }
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed: the unit is checked by its contents only");
        return;
    };
    assert!(out.status.success());
    // An instance, with ExecStart pointing at this build (verify checks it exists).
    let dir = tempfile::tempdir().unwrap();
    let instance = dir.path().join("tributary@test.service");
    std::fs::write(
        &instance,
        text.replace("/usr/bin/tributary", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
