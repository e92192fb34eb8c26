//! Where each message of a batch goes: the routing decision of the pipeline, as a
//! function of the batch, the guard and `--until`, with no I/O.

use crate::event::{ChangeEvent, Position, SourceMessage};
use crate::schema::guard::{Guard, Pass};
use crate::schema::Halt;

use super::checkpoint::{Participant, SnapshotProgress};

/// Why a batch ends the run.
#[derive(Debug)]
pub enum Stop {
    /// A schema change the policy halts at: nothing of its transaction goes on.
    Halt(Box<Halt>),
    /// `--until`: the first boundary at or past it was reached.
    Reached,
}

/// The routing of one batch.
#[derive(Debug, Default)]
pub struct Routed {
    /// `messages[..take]` go on (less `skipped`); the rest is never looked at again.
    pub take: usize,
    /// Changes not passed to the sinks (ignored or quarantined tables), ascending.
    pub skipped: Vec<usize>,
    /// Changes for the quarantine stream, with their table's quarantine epoch.
    pub quarantined: Vec<(usize, u64)>,
    /// Whether `messages[..take]` holds a `Rewind`.
    pub rewinds: bool,
    /// Transaction boundaries in `messages[..take]`.
    pub commits: u64,
    /// The last of them: where a checkpoint may now be taken.
    pub last_commit: Option<Position>,
    /// Tables the guard let in that the stream does not carry yet: each wants a
    /// snapshot (`Stated::Uncaptured`).
    pub snapshots: Vec<String>,
    pub stop: Option<Stop>,
}

/// Routes `messages`: the guard decides each change (`passed` sees those that go on)
/// and each table change; the guard and the snapshot progress commit at each boundary.
/// A halt cuts at the last boundary before the halting message; `until` cuts right
/// after the first boundary at or past it.
pub fn route(
    messages: &[SourceMessage],
    guard: &mut Guard,
    snapshot: &mut SnapshotProgress,
    until: Option<&Position>,
    mut passed: impl FnMut(&ChangeEvent),
) -> Routed {
    let mut r = Routed {
        take: messages.len(),
        ..Routed::default()
    };
    // After the last transaction boundary seen.
    let mut boundary = 0;
    for (i, m) in messages.iter().enumerate() {
        let halt = match m {
            SourceMessage::Change(e) => match guard.check(e) {
                Ok(Pass::Yes) => {
                    passed(e);
                    None
                }
                Ok(Pass::Skip) => {
                    r.skipped.push(i);
                    None
                }
                Ok(Pass::Quarantine(epoch)) => {
                    r.skipped.push(i);
                    r.quarantined.push((i, epoch));
                    None
                }
                Err(h) => Some(h),
            },
            SourceMessage::Schema(tc) => match guard.table_change(tc) {
                Ok(snapshot) => {
                    r.snapshots.extend(snapshot);
                    None
                }
                Err(h) => Some(h),
            },
            SourceMessage::SnapshotProgress(v) => {
                snapshot.update(v.clone());
                None
            }
            SourceMessage::Commit(p) => {
                boundary = i + 1;
                Participant::commit(guard);
                snapshot.commit();
                r.commits += 1;
                r.last_commit = Some(p.clone());
                if until.is_some_and(|u| p.at_or_after(u) == Some(true)) {
                    r.take = i + 1;
                    r.stop = Some(Stop::Reached);
                    return r;
                }
                None
            }
            SourceMessage::Rewind => {
                r.rewinds = true;
                None
            }
        };
        if let Some(h) = halt {
            // Nothing of the transaction with the change goes on.
            // Both lists are in message order.
            r.take = boundary;
            r.skipped
                .truncate(r.skipped.partition_point(|&at| at < boundary));
            r.quarantined
                .truncate(r.quarantined.partition_point(|&(at, _)| at < boundary));
            r.rewinds = messages[..boundary]
                .iter()
                .any(|m| matches!(m, SourceMessage::Rewind));
            r.stop = Some(Stop::Halt(h));
            return r;
        }
    }
    r
}
