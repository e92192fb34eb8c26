//! Snapshot progress as people and monitors see it: a bar per table on a terminal
//! (rows, estimated total, rows/s, ETA), the same figures as metrics, and a log line
//! per finished table. `tributary status` reads them from the stored progress.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Status, TableProgress};

/// The bars on stderr, once a snapshot drew one.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// stderr for log lines: while bars are drawn, each line is written with the bars
/// cleared and drawn again below it, so neither garbles the other.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub struct Progress {
    /// Bars only when stderr is a terminal (logs stay clean under a service manager).
    bars: Option<(&'static MultiProgress, HashMap<String, ProgressBar>)>,
}

impl Default for Progress {
    fn default() -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            (
                BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
                HashMap::new(),
            )
        });
        Progress { bars }
    }
}

impl Progress {
    /// A table's progress changed (a chunk was emitted).
    pub fn update(&mut self, table: &str, p: &TableProgress) {
        crate::metrics::snapshot_rows(table, p.rows, p.estimate);
        if p.status == Status::Done {
            let secs = match (p.started_ms, p.finished_ms) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0,
                _ => 0.0,
            };
            tracing::info!(
                table,
                rows = p.rows,
                chunks = p.chunks,
                seconds = secs,
                rows_per_s = if secs > 0.0 {
                    (p.rows as f64 / secs) as u64
                } else {
                    0
                },
                "snapshot of table finished"
            );
        }
        let Some((multi, bars)) = self.bars.as_mut() else {
            return;
        };
        let bar = bars.entry(table.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(p.estimate.max(1)));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:30} [{bar:30}] {human_pos}/~{human_len} rows  {rate}  eta {eta}",
                )
                .expect("a valid template")
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} rows/s", state.per_sec());
                    },
                )
                .progress_chars("=> "),
            );
            bar.set_prefix(table.to_string());
            bar
        });
        bar.set_length(p.estimate.max(p.rows).max(1));
        bar.set_position(p.rows);
        if p.status == Status::Done {
            bar.finish();
        }
    }
}
