//! The pipeline loop without servers: a scripted source, recording sinks, a store in
//! a temporary directory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::checkpoint::SnapshotProgress;
use super::route::{route, Stop};
use super::runner::Stages;
use super::{drive, Loop, PipelineError, Reload, RunStats};
use crate::event::{Position, TableSchema};
use crate::offsets::OffsetStore;
use crate::schema::guard::Guard;
use crate::schema::quarantine::{self, QuarantineStream};
use crate::schema::Policy;
use crate::sink::Sink;
use crate::testkit::*;

fn policy(rules: &str) -> Policy {
    Policy::parse(
        std::path::Path::new("test-policy.toml"),
        &format!("[rules]\n{rules}\n"),
    )
    .expect("a valid policy")
}

/// The loop settings of a test run: 1 ms checkpoints, a small queue.
fn test_loop(
    until: Option<Position>,
    reload: Reload,
    hangups: tokio::sync::mpsc::Receiver<()>,
) -> Loop {
    Loop {
        queue_events: 1024,
        queue_bytes: 1 << 20,
        checkpoint_interval: Duration::from_millis(1),
        until,
        reload,
        hangups,
        reindexer: None,
    }
}

struct Run {
    dir: tempfile::TempDir,
    store: Arc<OffsetStore>,
    mode: crate::files::FileMode,
}

impl Run {
    fn new() -> Self {
        Self::with_mode(crate::files::FileMode::default())
    }

    /// A run whose state and streams are written with `mode`.
    fn with_mode(mode: crate::files::FileMode) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OffsetStore::open(&dir.path().join("state"), mode).unwrap());
        Run { dir, store, mode }
    }

    /// Runs the pipeline in a task of its own (the test looks at it meanwhile).
    fn spawn(
        &self,
        source: ScriptedSource,
        stages: Stages,
    ) -> tokio::task::JoinHandle<Result<RunStats, PipelineError>> {
        tokio::spawn(drive(
            Box::new(source),
            "test".into(),
            self.store.clone(),
            stages,
            test_loop(None, no_reload(), no_hangups()),
            CancellationToken::new(),
        ))
    }

    fn quarantine_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("quarantine")
    }

    fn stages(&self, policy: Policy, sinks: Vec<Box<dyn Sink>>) -> Stages {
        Stages {
            guard: Guard::restore(policy, &self.store).unwrap(),
            snapshot: SnapshotProgress::new(None),
            quarantine: QuarantineStream::open(
                &crate::journal::Settings::at(&self.quarantine_dir(), self.mode),
                self.store.sink_cursor(quarantine::STREAM_ID).unwrap(),
            )
            .unwrap(),
            enrich: crate::enrich::Stage::none(),
            documents: crate::document::stage::Documents::none(),
            sinks,
        }
    }

    async fn drive(
        &self,
        source: ScriptedSource,
        stages: Stages,
        until: Option<Position>,
        reload: Reload,
        hangups: tokio::sync::mpsc::Receiver<()>,
    ) -> Result<RunStats, PipelineError> {
        let cfg = test_loop(until, reload, hangups);
        let run = drive(
            Box::new(source),
            "test".into(),
            self.store.clone(),
            stages,
            cfg,
            CancellationToken::new(),
        );
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the run ends")
    }

    fn checkpoint(&self) -> Option<Position> {
        self.store.checkpoint().unwrap().map(|c| c.position)
    }
}

fn no_reload() -> Reload {
    Box::new(|| panic!("no reload expected"))
}

fn no_hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::mem::forget(tx);
    rx
}

fn recording(acks: Acks) -> (Box<dyn Sink>, Arc<Mutex<Recorded>>) {
    let s = RecordingSink::new("rec", acks);
    let seen = s.seen.clone();
    (Box::new(s), seen)
}

/// `db.t` at version 1, `db.t` at version 2 (a column added), and `db.u`.
fn tables() -> (Arc<TableSchema>, Arc<TableSchema>, Arc<TableSchema>) {
    (
        table("db.t", &[("id", "int")], 1),
        table("db.t", &[("id", "int"), ("x", "text")], 2),
        table("db.u", &[("id", "int")], 1),
    )
}

#[test]
fn route_cuts_a_halt_at_the_boundary_before_its_transaction() {
    let (t1, t2, u) = tables();
    let messages = [
        insert(&t1, 1, 10),
        commit(11),
        insert(&u, 2, 12),
        insert(&t2, 3, 13),
        insert(&t2, 4, 14),
        commit(15),
    ];
    let mut guard = Guard::new(policy("column_added = \"halt\""));
    let mut passed = Vec::new();
    let r = route(
        &messages,
        &mut guard,
        &mut SnapshotProgress::default(),
        None,
        |e| passed.push(e.table.qualified_name()),
    );
    assert_eq!(
        r.take, 2,
        "up to the last boundary before the halting change"
    );
    assert_eq!(r.last_commit, Some(at(11)));
    assert_eq!(r.commits, 1);
    assert!(
        matches!(&r.stop, Some(Stop::Halt(h)) if h.table == "db.t"),
        "{r:?}"
    );
    // The guard's state as of the boundary knows version 1 only.
    let state = guard.state();
    assert_eq!(state["tables"]["db.t"]["version"], 1, "{state}");
}

/// Routes `messages` with a fresh guard under `policy`.
fn route_once(
    policy: Policy,
    messages: &[crate::event::SourceMessage],
    until: Option<Position>,
) -> super::route::Routed {
    let mut guard = Guard::new(policy);
    let mut snapshot = SnapshotProgress::default();
    route(messages, &mut guard, &mut snapshot, until.as_ref(), |_| {})
}

#[test]
fn route_stops_at_the_first_boundary_at_or_past_until() {
    let t = table("db.t", &[("id", "int")], 1);
    let messages = [
        insert(&t, 1, 10),
        commit(11),
        insert(&t, 2, 20),
        commit(21),
        insert(&t, 3, 30),
        commit(31),
    ];
    let r = route_once(Policy::add_only(), &messages, Some(at(15)));
    assert_eq!(r.take, 4);
    assert_eq!(r.last_commit, Some(at(21)));
    assert!(matches!(r.stop, Some(Stop::Reached)));
    // Exactly at a boundary stops there too.
    let r = route_once(Policy::add_only(), &messages, Some(at(11)));
    assert_eq!(r.take, 2);
}

#[test]
fn route_sets_quarantined_and_ignored_changes_aside() {
    let (t1, t2, u) = tables();
    let messages = [
        insert(&t1, 1, 10),
        commit(11),
        insert(&t2, 2, 12),
        insert(&u, 3, 13),
        commit(14),
    ];
    let r = route_once(policy("column_added = \"quarantine\""), &messages, None);
    assert_eq!(r.take, messages.len());
    assert_eq!(r.skipped, [2]);
    assert_eq!(r.quarantined.len(), 1);
    assert_eq!(r.quarantined[0].0, 2);
    assert!(r.stop.is_none());
}

#[tokio::test]
async fn halt_checkpoints_everything_before_the_transaction_holding_the_change() {
    let run = Run::new();
    let (t1, t2, u) = tables();
    // One batch: the halt falls inside it.
    let source = ScriptedSource::new([
        Step::Send(insert(&t1, 1, 10)),
        Step::Send(commit(11)),
        Step::Send(insert(&u, 2, 12)),
        Step::Send(insert(&t2, 3, 13)),
        Step::Send(commit(14)),
        Step::Send(insert(&u, 4, 15)),
        Step::Send(commit(16)),
    ]);
    let (sink, seen) = recording(Acks::Now);
    let stages = run.stages(policy("column_added = \"halt\""), vec![sink]);
    let err = run
        .drive(source, stages, None, no_reload(), no_hangups())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::Halt(ref h) if h.table == "db.t"),
        "{err}"
    );
    assert_eq!(run.checkpoint(), Some(at(11)));
    assert_eq!(
        seen.lock().unwrap().accepted,
        ["c db.t 1", "commit lsn 0/B"]
    );
    // The next run resumes at the checkpoint and meets the change again.
    let source = ScriptedSource::batches([insert(&t2, 3, 13), commit(14)]);
    let resumed = source.resumed_from.clone();
    let stages = run.stages(
        policy("column_added = \"halt\""),
        vec![recording(Acks::Now).0],
    );
    let err = run
        .drive(source, stages, None, no_reload(), no_hangups())
        .await;
    assert!(matches!(err, Err(PipelineError::Halt(_))));
    assert_eq!(*resumed.lock().unwrap(), Some(at(11)));
}

#[tokio::test]
async fn until_cuts_at_the_first_boundary_at_or_past_the_position() {
    let run = Run::new();
    let t = table("db.t", &[("id", "int")], 1);
    let source = ScriptedSource::batches(
        (1..=5).flat_map(|i| [insert(&t, i, i as u64 * 10), commit(i as u64 * 10 + 1)]),
    );
    let (sink, seen) = recording(Acks::Now);
    let stats = run
        .drive(
            source,
            run.stages(Policy::add_only(), vec![sink]),
            Some(at(25)),
            no_reload(),
            no_hangups(),
        )
        .await
        .unwrap();
    assert_eq!(run.checkpoint(), Some(at(31)));
    assert_eq!(stats.last_checkpoint, Some(at(31)));
    assert_eq!(stats.transactions, 3);
    let accepted = seen.lock().unwrap().accepted.clone();
    assert_eq!(
        accepted.last().map(String::as_str),
        Some("commit lsn 0/1F"),
        "{accepted:?}"
    );
    assert_eq!(accepted.len(), 6);
}

#[tokio::test]
async fn a_quarantined_tables_records_are_rewound_on_a_reconnect() {
    let run = Run::new();
    let (t1, t2, u) = tables();
    let source = ScriptedSource::new([
        Step::Send(insert(&t1, 1, 10)),
        Step::Send(commit(11)),
        Step::Flush,
        // A transaction cut by a lost connection, across two batches ...
        Step::Send(insert(&t2, 2, 12)),
        Step::Flush,
        Step::Send(insert(&t2, 3, 13)),
        Step::Send(crate::event::SourceMessage::Rewind),
        // ... and sent again whole.
        Step::Send(insert(&t2, 2, 12)),
        Step::Send(insert(&t2, 3, 13)),
        Step::Send(insert(&u, 4, 14)),
        Step::Send(commit(15)),
    ]);
    let (sink, seen) = recording(Acks::Now);
    run.drive(
        source,
        run.stages(policy("column_added = \"quarantine\""), vec![sink]),
        None,
        no_reload(),
        no_hangups(),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    quarantine::read_records(&run.quarantine_dir(), |r| {
        ids.push(r.event.qualified_name());
        true
    })
    .unwrap();
    assert_eq!(ids, ["db.t", "db.t"], "each quarantined change once");
    assert_eq!(
        seen.lock().unwrap().accepted,
        [
            "c db.t 1",
            "commit lsn 0/B",
            "rewind",
            "c db.u 4",
            "commit lsn 0/F"
        ]
    );
    assert_eq!(run.checkpoint(), Some(at(15)));
}

#[tokio::test]
async fn one_checkpoint_in_flight_while_batches_keep_flowing() {
    let run = Run::new();
    let t = table("db.t", &[("id", "int")], 1);
    // The start record's flush and the first boundary's (where the source starts) are
    // acknowledged; the next checkpoint's waits.
    let gate = Arc::new(Semaphore::new(2));
    let (sink, seen) = recording(Acks::Gated(gate.clone()));
    let source =
        ScriptedSource::batches(std::iter::once(commit(1)).chain(
            (1..=20).flat_map(|i| [insert(&t, i, i as u64 * 10), commit(i as u64 * 10 + 1)]),
        ));
    let handle = run.spawn(source, run.stages(Policy::add_only(), vec![sink]));
    // Every batch reaches the sink while a checkpoint waits for its ack.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().accepted.len() < 41 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "batches stopped flowing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    {
        let s = seen.lock().unwrap();
        assert_eq!(
            s.flushed_at.len(),
            3,
            "the start record, the first boundary and one checkpoint: {s:?}"
        );
        assert_eq!(s.overlapping_flushes, 0);
    }
    assert_eq!(
        run.store.checkpoint().unwrap().map(|c| c.position),
        Some(at(1)),
        "nothing stored past the first boundary before the ack"
    );
    gate.add_permits(1000);
    let stats = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let s = seen.lock().unwrap();
    assert_eq!(s.overlapping_flushes, 0, "{s:?}");
    assert_eq!(stats.last_checkpoint, Some(at(201)));
    assert_eq!(run.checkpoint(), Some(at(201)));
}

#[tokio::test]
async fn a_sink_failure_stores_no_checkpoint_past_the_last_acknowledged_one() {
    let run = Run::new();
    let t = table("db.t", &[("id", "int")], 1);
    // Flush 1 records the start, flush 2 checkpoints 0/B, flush 3 fails.
    let (sink, _) = recording(Acks::FailFrom(3));
    let (good, good_seen) = recording(Acks::Now);
    let source = ScriptedSource::new([
        Step::Send(insert(&t, 1, 10)),
        Step::Send(commit(11)),
        Step::AwaitCheckpoint(at(11)),
        Step::Send(insert(&t, 2, 20)),
        Step::Send(commit(21)),
        Step::Flush,
    ]);
    let err = run
        .drive(
            source,
            run.stages(Policy::add_only(), vec![sink, good]),
            None,
            no_reload(),
            no_hangups(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("flush 3 failed"), "{err}");
    assert_eq!(run.checkpoint(), Some(at(11)));
    // The other sink's cursor is stored as of that checkpoint, not past it.
    assert_eq!(
        run.store.sink_cursor("rec").unwrap(),
        Some(serde_json::json!({"n": 2}))
    );
    assert!(good_seen.lock().unwrap().accepted.len() >= 4);
}

/// A reload that fails keeps the policy in force; one that loads replaces it.
async fn reload_case(
    reloaded: fn() -> Result<Policy, crate::settings::ConfigError>,
) -> (Run, Result<RunStats, PipelineError>) {
    let run = Run::new();
    let (t1, t2, _) = tables();
    let asked = Arc::new(Notify::new());
    let (hangup, hangups) = tokio::sync::mpsc::channel(1);
    hangup.send(()).await.unwrap();
    let notify = asked.clone();
    let reload = Box::new(move || {
        notify.notify_one();
        reloaded()
    });
    let source = ScriptedSource::new([
        Step::Send(insert(&t1, 1, 10)),
        Step::Send(commit(11)),
        Step::Flush,
        Step::Wait(asked),
        Step::Send(insert(&t2, 2, 20)),
        Step::Send(commit(21)),
    ]);
    let stages = run.stages(
        policy("column_added = \"halt\""),
        vec![recording(Acks::Now).0],
    );
    let result = run.drive(source, stages, None, reload, hangups).await;
    (run, result)
}

#[tokio::test]
async fn a_hangup_with_a_broken_policy_keeps_the_old_one() {
    let (run, result) = reload_case(|| {
        Err(crate::settings::ConfigError::new(
            std::path::Path::new("p.toml"),
            "broken",
        ))
    })
    .await;
    assert!(matches!(result, Err(PipelineError::Halt(_))), "{result:?}");
    assert_eq!(run.checkpoint(), Some(at(11)));

    let (run, result) = reload_case(|| Ok(Policy::add_only())).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(run.checkpoint(), Some(at(21)));
}

#[tokio::test]
async fn a_state_dir_deleted_while_running_stops_at_the_next_checkpoint() {
    let run = Run::new();
    let t = table("db.t", &[("id", "int")], 1);
    let deleted = Arc::new(Notify::new());
    let source = ScriptedSource::new([
        Step::Send(insert(&t, 1, 10)),
        Step::Send(commit(11)),
        Step::AwaitCheckpoint(at(11)),
        Step::Wait(deleted.clone()),
        Step::Send(insert(&t, 2, 20)),
        Step::Send(commit(21)),
    ]);
    let stages = run.stages(Policy::add_only(), vec![recording(Acks::Now).0]);
    let state = run.dir.path().join("state");
    let watcher = {
        let store = run.store.clone();
        let state = state.clone();
        tokio::spawn(async move {
            while store.checkpoint().unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            std::fs::remove_dir_all(&state).unwrap();
            deleted.notify_one();
        })
    };
    let err = run
        .drive(source, stages, None, no_reload(), no_hangups())
        .await
        .unwrap_err();
    watcher.await.unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("deleted") && msg.contains(&state.display().to_string()),
        "{msg}"
    );
}

/// Row data is private: the state dir, offsets store, reports, log stream and
/// quarantine stream are 0700 directories of 0600 files, unless a file_mode widens them.
#[cfg(unix)]
#[tokio::test]
async fn state_and_streams_are_private_unless_widened() {
    use std::os::unix::fs::PermissionsExt;
    let bits = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for (mode, file, dir) in [(None, 0o600, 0o700), (Some("0640"), 0o640, 0o750)] {
        let mode = mode
            .map(|m| crate::files::FileMode::parse(m).unwrap())
            .unwrap_or_default();
        let run = Run::with_mode(mode);
        let (t1, t2, _) = tables();
        let log_dir = run.dir.path().join("log");
        let log: crate::sink::log::LogSinkConfig = serde_json::from_value(serde_json::json!({
            "kind": "log",
            "dir": log_dir,
            "file_mode": format!("{:o}", mode.bits()),
        }))
        .unwrap();
        let sink = crate::sink::log::LogSink::open("log".into(), &log, None).unwrap();
        let source = ScriptedSource::batches([
            insert(&t1, 1, 10),
            commit(11),
            insert(&t2, 2, 12),
            commit(13),
        ]);
        let stages = run.stages(
            policy("column_added = \"quarantine\""),
            vec![Box::new(sink)],
        );
        run.drive(source, stages, None, no_reload(), no_hangups())
            .await
            .unwrap();
        let state = run.dir.path().join("state");
        let quarantine = run.quarantine_dir();
        for d in [&state, &log_dir, &quarantine] {
            assert_eq!(bits(d), dir, "{}", d.display());
        }
        for f in [
            state.join("offsets.redb"),
            state.join("status.json"),
            log_dir.join(crate::journal::segment_name(0)),
            quarantine.join(crate::journal::segment_name(0)),
        ] {
            assert_eq!(bits(&f), file, "{}", f.display());
        }
    }
}

/// The joined document over the shop tables, maintained in `run`'s dir.
fn shop_documents(run: &Run) -> crate::document::stage::Documents {
    use crate::document::stage::{Documents, Shape};
    let defs = documents(crate::document::tests::SHOP).unwrap();
    let schemas = crate::document::tests::shop_schemas();
    let lookup = |t: &str| {
        schemas
            .iter()
            .find(|s| s.qualified_name() == t)
            .map(|s| &**s)
    };
    let shape = Shape {
        tree: crate::document::tree::Tree::resolve(&defs[0], &lookup).unwrap(),
        schemas: schemas
            .iter()
            .map(|s| (s.qualified_name(), s.clone()))
            .collect(),
    };
    let shapes = [("customers".to_string(), shape)].into_iter().collect();
    let (docs, fill) = Documents::open(
        "test",
        &defs,
        &shapes,
        &run.dir.path().join("documents"),
        crate::files::FileMode::default(),
    )
    .unwrap();
    assert!(!fill.is_empty() || docs.waiting());
    docs.built()
}

#[tokio::test]
async fn joined_documents_reach_the_sinks_once_per_transaction_before_its_boundary() {
    use crate::event::Value::{Int, Null, String as Text, UInt};
    let run = Run::new();
    let schemas = crate::document::tests::shop_schemas();
    let (customers, regions, orders) = (&schemas[0], &schemas[1], &schemas[2]);
    let customer = |id: i64, region: i64| vec![Int(id), Text(format!("c{id}")), Int(region)];
    let region = |name: &str| vec![UInt(7), Text(name.into()), Text("NO".into())];
    let order = |id: i64, c: i64| {
        vec![
            Int(id),
            Int(c),
            crate::event::Value::Decimal("1.00".into()),
            Text("new".into()),
            Null,
        ]
    };
    let mut script = vec![
        // One transaction touching customer 1 three times: one document.
        row_change(regions, None, Some(region("North")), 1),
        row_change(customers, None, Some(customer(1, 7)), 2),
        row_change(orders, None, Some(order(10, 1)), 3),
        commit(4),
    ];
    // 2,500 more customers of the region in one transaction, then a rename that
    // fans out to all 2,501 documents (three pages).
    script.extend(
        (2..=2501).map(|c| row_change(customers, None, Some(customer(c, 7)), 10 + c as u64)),
    );
    script.push(commit(3000));
    script.push(row_change(
        regions,
        Some(region("North")),
        Some(region("Nord")),
        3001,
    ));
    script.push(commit(3002));
    // An order moving from customer 1 to 2, with a transaction still open at the end
    // of its batch: the documents show the move, not the open transaction.
    script.push(row_change(
        orders,
        Some(order(10, 1)),
        Some(order(10, 2)),
        3003,
    ));
    script.push(commit(3004));
    script.push(row_change(customers, Some(customer(2, 7)), None, 3005));
    // A batch per transaction (documents are built at a batch's last boundary).
    let mut steps = Vec::new();
    for m in script {
        let boundary = matches!(m, crate::event::SourceMessage::Commit(_));
        steps.push(Step::Send(m));
        if boundary {
            steps.push(Step::Flush);
        }
    }
    steps.push(Step::Flush);
    steps.push(Step::Send(commit(3006)));
    let (sink, seen) = recording(Acks::Now);
    let mut stages = run.stages(policy("column_added = \"halt\""), vec![sink]);
    stages.documents = shop_documents(&run);
    run.drive(
        ScriptedSource::new(steps),
        stages,
        None,
        no_reload(),
        no_hangups(),
    )
    .await
    .unwrap();

    let accepted = seen.lock().unwrap().accepted.clone();
    let docs_between = |from: &str, to: &str| -> Vec<String> {
        let a = accepted.iter().position(|l| l == from).expect(from);
        let b = accepted.iter().position(|l| l == to).expect(to);
        accepted[a..b]
            .iter()
            .filter(|l| l.contains(".customers") && l.starts_with("c .") || l.starts_with("d ."))
            .cloned()
            .collect()
    };
    let first = accepted.iter().position(|l| l == "commit lsn 0/4").unwrap();
    assert_eq!(
        accepted[..first]
            .iter()
            .filter(|l| l.starts_with("c .customers"))
            .collect::<Vec<_>>(),
        ["c .customers 1"],
        "{accepted:?}"
    );
    assert_eq!(
        docs_between("commit lsn 0/4", "commit lsn 0/BB8").len(),
        2500
    );
    assert_eq!(
        docs_between("commit lsn 0/BB8", "commit lsn 0/BBA").len(),
        2501
    );
    assert_eq!(
        docs_between("commit lsn 0/BBA", "commit lsn 0/BBC"),
        ["c .customers 1", "c .customers 2"]
    );
    // Customer 2's delete came in the next transaction, with its own boundary.
    assert_eq!(
        docs_between("commit lsn 0/BBC", "commit lsn 0/BBE"),
        ["d .customers 2"]
    );
    assert_eq!(run.checkpoint(), Some(at(3006)));
}

#[tokio::test]
async fn documents_a_crash_left_undelivered_are_built_again_at_the_next_start() {
    use crate::event::Value::{Int, Null, String as Text};
    let run = Run::new();
    let customers = crate::document::tests::shop_schemas()[0].clone();
    let customer = |id: i64| vec![Int(id), Text("c".into()), Null];
    let docs_in = |seen: &Arc<Mutex<Recorded>>| -> Vec<String> {
        let seen = seen.lock().unwrap();
        let docs = seen
            .accepted
            .iter()
            .filter(|l| l.starts_with("c .customers"));
        docs.cloned().collect()
    };
    // The first transaction is checkpointed; the sink fails the ack of the second
    // (flush 1 is the run's start, 2 the first checkpoint).
    let source = ScriptedSource::new([
        Step::Send(row_change(&customers, None, Some(customer(1)), 1)),
        Step::Send(commit(2)),
        Step::AwaitCheckpoint(at(2)),
        Step::Send(row_change(&customers, None, Some(customer(2)), 3)),
        Step::Send(commit(4)),
    ]);
    let (sink, seen) = recording(Acks::FailFrom(3));
    let mut stages = run.stages(policy("column_added = \"halt\""), vec![sink]);
    stages.documents = shop_documents(&run);
    assert!(run
        .drive(source, stages, None, no_reload(), no_hangups())
        .await
        .is_err());
    assert_eq!(docs_in(&seen), ["c .customers 1", "c .customers 2"]);
    assert_eq!(run.checkpoint(), Some(at(2)));

    // The restart finds customer 2's document undelivered. No transaction comes (the
    // source is idle): it is built again at the checkpoint's boundary.
    let go_on = Arc::new(Notify::new());
    let source = ScriptedSource::new([Step::Wait(go_on.clone())]);
    let (sink, seen) = recording(Acks::Now);
    let mut stages = run.stages(policy("column_added = \"halt\""), vec![sink]);
    stages.documents = shop_documents(&run);
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            for _ in 0..500 {
                if !docs_in(&seen).is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            go_on.notify_one();
        })
    };
    run.drive(source, stages, None, no_reload(), no_hangups())
        .await
        .unwrap();
    watch.await.unwrap();
    assert_eq!(docs_in(&seen), ["c .customers 2"]);
    assert_eq!(run.checkpoint(), Some(at(2)));

    // Delivered now: the next start builds nothing.
    let (sink, seen) = recording(Acks::Now);
    let mut stages = run.stages(policy("column_added = \"halt\""), vec![sink]);
    stages.documents = shop_documents(&run);
    // (Idle for 100 ms: a hundred ticks of the test's 1 ms interval.)
    let go_on = Arc::new(Notify::new());
    let source = ScriptedSource::new([Step::Wait(go_on.clone())]);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        go_on.notify_one();
    });
    run.drive(source, stages, None, no_reload(), no_hangups())
        .await
        .unwrap();
    assert!(docs_in(&seen).is_empty());
}

#[tokio::test]
async fn without_a_checkpoint_the_first_boundary_is_stored_before_anything_after_it_is_taken() {
    let run = Run::new();
    let t = table("db.t", &[("id", "int")], 1);
    // The start record's flush is acknowledged; the first boundary's waits.
    let gate = Arc::new(Semaphore::new(1));
    let (sink, seen) = recording(Acks::Gated(gate.clone()));
    // A source announces where it starts, then streams.
    let source = ScriptedSource::batches([commit(1), insert(&t, 2, 2), commit(3)]);
    let handle = run.spawn(source, run.stages(Policy::add_only(), vec![sink]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.lock().unwrap().accepted,
        ["commit lsn 0/1"],
        "nothing after the start before it is stored: a crash now must resume there"
    );
    assert_eq!(run.checkpoint(), None);
    gate.add_permits(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().accepted.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rest never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(run.checkpoint(), Some(at(1)));
    gate.add_permits(1000);
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(run.checkpoint(), Some(at(3)));
}
