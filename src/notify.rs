//! The systemd service protocol (`Type=notify`, `WatchdogSec=`): `READY=1` once the
//! source streams for the first time, `STATUS=` lines as the state changes, and
//! `WATCHDOG=1` keep-alives from the pipeline loop, so a daemon whose loop hangs is
//! restarted by systemd. Nothing happens without `$NOTIFY_SOCKET` (not under systemd).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

static READY: AtomicBool = AtomicBool::new(false);

/// `READY=1` (the first time) and the status line.
pub fn streaming() {
    if !READY.swap(true, Ordering::SeqCst) {
        send(&[NotifyState::Ready, NotifyState::Status("streaming")]);
    }
}

/// A status line for `systemctl status`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// A keep-alive, at most every half of `WATCHDOG_USEC` (called on every tick of the
/// pipeline loop).
pub fn keep_alive() {
    static EVERY: OnceLock<Option<Duration>> = OnceLock::new();
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Some(every) = *EVERY.get_or_init(watchdog_interval) else {
        return;
    };
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() >= every) {
        *last = Some(Instant::now());
        send(&[NotifyState::Watchdog]);
    }
}

/// Half of `$WATCHDOG_USEC` when the watchdog is on for this process: like libsystemd's
/// sd_watchdog_enabled, an absent `$WATCHDOG_PID` means this process (the sd-notify
/// crate's own check insists on it).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then(|| Duration::from_micros(usec / 2)),
    }
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}
