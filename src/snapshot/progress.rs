//! Snapshot progress as people and monitors see it: a bar per table on a terminal
//! (rows, estimated total, rows/s, ETA), the same figures as metrics, and a log line
//! per finished table. `tributary status` reads them from the stored progress.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{State, Status, TableProgress};

pub struct Progress {
    /// Bars only when stderr is a terminal (logs stay clean under a service manager).
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
}

impl Progress {
    pub fn new(_state: &State) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                HashMap::new(),
            )
        });
        Progress { bars }
    }

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
                    "{prefix:30} [{bar:30}] {human_pos}/~{human_len} rows  {per_sec}  eta {eta}",
                )
                .expect("a valid template")
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
