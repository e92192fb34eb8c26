//! The tributary command line. Errors end here as one message and a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tributary::source::CommonSettings;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use tributary::config::{ConnectorConfig, SourceConfig};
use tributary::event::format_lsn;
use tributary::journal::read_log;
use tributary::offsets::OffsetStore;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Change-data-capture daemon: MySQL/MariaDB binlog into log streams (and Elasticsearch)"
)]
struct Cli {
    /// Log format: human (default) or json (one object per line, for log shippers).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info`, `debug`, `tributary=debug` (also RUST_LOG).
    #[arg(long, global = true, default_value = "info", env = "TRIBUTARY_LOG")]
    log_level: String,
    /// Let logs and error messages quote row values, statements and servers' reasons
    /// about values (hidden by default: they are often personal data).
    #[arg(long, global = true)]
    log_row_values: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a connector: stream changes into its sinks until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        connector: PathBuf,
        /// Stop after checkpointing at or past this position (`binlog.000003:1234`);
        /// for bounded replays, tests and benchmarks.
        #[arg(long)]
        until: Option<String>,
    },
    /// Check a connector: config, connectivity, server settings and grants.
    Check {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Show where a connector stands: checkpoint, sinks, and (Postgres) the slot's
    /// retained WAL and lag.
    Status {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Manage the Postgres replication slot.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
    /// Show or reset the stored checkpoint.
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
    /// Read log streams.
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
    /// Schema policy files (schema-rules/*.toml).
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Snapshot tables again while streaming keeps running (the running daemon picks
    /// the request up within a second; a stopped one when it starts). Progress shows
    /// in `tributary status`.
    Snapshot {
        #[arg(long, short)]
        connector: PathBuf,
        /// `db.table` (repeatable).
        #[arg(long, required = true)]
        table: Vec<String>,
    },
    /// Tables a `quarantine` verdict set aside (`tributary status` lists them).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// After the policy was edited to let the schema change through: send the
    /// quarantined tables' changes on to the sinks and release the tables. The daemon
    /// must be stopped; when it starts again, the tables' later changes flow straight
    /// on. Nothing is sent when the policy still quarantines or halts the change.
    Replay {
        #[arg(long, short)]
        connector: PathBuf,
        /// Replay only this table (`db.table`); repeatable. Default: every quarantined table.
        #[arg(long)]
        table: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Validate a policy file and print the verdict of each kind of change, with the
    /// rule that gives it (exit 2 with file:line:column when it is invalid).
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the effective rules for each table the connector includes (read from the
    /// server), with the rule each verdict comes from.
    Explain {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Compare the live schema of the included tables with the recorded history and
    /// print each change with the verdict it would get: the dry run for a migration.
    /// Exit 0 when every change would pass, 3 when one would halt or quarantine.
    Diff {
        #[arg(long, short)]
        connector: PathBuf,
    },
}

#[derive(Subcommand)]
enum OffsetsAction {
    /// Print the checkpoint, sink cursors and schema versions.
    Show {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Forget the source checkpoint: the next run starts from `[source] start`.
    Reset {
        #[arg(long, short)]
        connector: PathBuf,
    },
}

#[derive(Subcommand)]
enum SlotAction {
    /// Drop the connector's replication slot on purpose, so the server stops keeping
    /// WAL for it. The daemon must be stopped; changes made after this are not
    /// captured until a new slot (and a new snapshot) exists.
    Drop {
        #[arg(long, short)]
        connector: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Print every record of a log stream as JSON lines, verifying each checksum.
    Cat {
        /// The log sink's directory.
        dir: PathBuf,
    },
}

/// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration.
const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    // One TLS crypto provider for every client that asks rustls for the default
    // (MariaDB/MySQL through mysql_async); more than one is linked in, so say which.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<tributary::config::ConfigError>().is_some() {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_tracing(cli: &Cli) {
    use std::io::IsTerminal;
    tributary::privacy::show_row_values(cli.log_row_values);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    let json = match cli.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Human) => false,
        None => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| tributary::snapshot::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { connector, until } => run(&connector, until.as_deref()).await,
        Command::Check { connector } => check(&connector).await,
        Command::Offsets { action } => offsets(action),
        Command::Status { connector } => status(&connector).await,
        Command::Slot {
            action: SlotAction::Drop { connector },
        } => slot_drop(&connector).await,
        Command::Log {
            action: LogAction::Cat { dir },
        } => log_cat(&dir),
        Command::Policy {
            action: PolicyAction::Check { file },
        } => policy_check(&file),
        Command::Policy {
            action: PolicyAction::Diff { connector },
        } => policy_diff(&connector).await,
        Command::Policy {
            action: PolicyAction::Explain { connector },
        } => policy_explain(&connector).await,
        Command::Quarantine {
            action: QuarantineAction::Replay { connector, table },
        } => quarantine_replay(&connector, &table).await,
        Command::Snapshot { connector, table } => snapshot(&connector, &table),
    }
}

fn snapshot(path: &Path, tables: &[String]) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let filter = cfg.source.filter();
    for t in tables {
        let Some((db, name)) = t.split_once('.') else {
            anyhow::bail!("--table {t}: name it as db.table");
        };
        if !filter.matches(db, name) {
            anyhow::bail!(
                "--table {t}: not included by [source] include/exclude of {}",
                path.display()
            );
        }
    }
    let running = matches!(
        cfg.state.open_store(),
        Err(tributary::offsets::OffsetError::InUse { .. })
    );
    for t in tables {
        tributary::snapshot::requests::request(&cfg.state.dir, t)
            .with_context(|| format!("recording the request in {}", cfg.state.dir.display()))?;
        if running {
            println!("{t}: snapshot requested; the running daemon starts it within a second (progress: tributary status)");
        } else {
            println!("{t}: snapshot requested; it runs when the daemon starts");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn quarantine_replay(path: &Path, tables: &[String]) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let report = tributary::pipeline::replay::replay(&cfg, tables)
        .await
        .with_context(|| format!("connector {}", path.display()))?;
    if report.replayed.is_empty() {
        println!("nothing is quarantined");
    }
    for (table, n) in &report.replayed {
        println!("{table}: {n} change(s) replayed; released");
    }
    for table in &report.remaining {
        println!("{table}: still quarantined");
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy diff` found a change the policy would halt or quarantine.
const EXIT_WOULD_STOP: u8 = 3;

async fn policy_diff(path: &Path) -> anyhow::Result<ExitCode> {
    use tributary::schema::{diff_columns, SchemaChange, Verdict};
    let cfg = load(path)?;
    let policy = cfg.policy()?;
    let recorded = OffsetStore::recorded_schemas(&cfg.state.dir, cfg.state.file_mode)?;
    let live = cfg
        .source
        .source()
        .live_schemas()
        .await
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", path.display()))?;
    let mut stops = 0;
    let mut show = |table: &str, change: &SchemaChange| {
        let r = policy.ruling(table, change);
        if matches!(r.verdict, Verdict::Halt | Verdict::Quarantine) {
            stops += 1;
        }
        println!(
            "  {:<60} {:<11} {}",
            change.to_string(),
            r.verdict.name(),
            r.origin
        );
    };
    for (table, columns) in &live {
        match recorded.get(table).and_then(|h| h.last()) {
            None => {
                println!("{table}: not captured yet");
                show(table, &SchemaChange::TableCreated);
            }
            Some(last) => {
                let changes = diff_columns(&last.columns, columns);
                if changes.is_empty() {
                    println!("{table}: no change since schema version {}", last.version);
                } else {
                    println!("{table}: since schema version {}", last.version);
                    for c in &changes {
                        show(table, c);
                    }
                }
            }
        }
    }
    for table in recorded.keys() {
        if !live.iter().any(|(t, _)| t == table) {
            println!("{table}: gone from the server (or no longer included)");
            show(table, &SchemaChange::TableDropped);
        }
    }
    if stops > 0 {
        println!("\n{stops} change(s) would stop the pipeline (halt or quarantine)");
        Ok(ExitCode::from(EXIT_WOULD_STOP))
    } else {
        println!("\nevery change would pass");
        Ok(ExitCode::SUCCESS)
    }
}

/// Prints the verdict of each kind of change for `table` (None: the [rules] defaults).
fn print_rules(policy: &tributary::schema::Policy, table: Option<&str>, label: &str) {
    use tributary::schema::ChangeKind;
    println!("\n{label}");
    for kind in ChangeKind::ALL {
        let r = match table {
            Some(t) => policy.ruling_for(t, kind),
            None => policy.default_ruling(kind),
        };
        println!("  {:<16}{:<12}{}", kind.key(), r.verdict.name(), r.origin);
    }
    let unindexed = table.map(|t| policy.unindexed(t)).unwrap_or_default();
    if !unindexed.is_empty() {
        println!("  {:<16}{}", "unindexed", unindexed.join(", "));
    }
}

fn policy_check(file: &Path) -> anyhow::Result<ExitCode> {
    let policy = tributary::schema::Policy::load(file)?;
    println!("ok    {} is a valid policy", file.display());
    print_rules(&policy, None, "every table ([rules]):");
    for pattern in policy.table_patterns().collect::<Vec<_>>() {
        print_rules(
            &policy,
            Some(pattern),
            &format!("tables matching {pattern} (first matching section wins):"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn policy_explain(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let policy = cfg.policy()?;
    match &cfg.schema.policy {
        Some(p) => println!("policy {}", p.display()),
        None => println!("no [schema] policy: the built-in add-only rules"),
    }
    let live = cfg
        .source
        .source()
        .live_schemas()
        .await
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", path.display()))?;
    if live.is_empty() {
        println!("\nno table on the server matches the connector's include");
    }
    for (table, _) in &live {
        print_rules(&policy, Some(table), &format!("{table}:"));
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> anyhow::Result<ConnectorConfig> {
    Ok(ConnectorConfig::load(path)?)
}

async fn run(path: &Path, until: Option<&str>) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let until = until
        .map(tributary::event::Position::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until: {e}"))?;
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight changes and checkpointing");
        signal_token.cancel();
    });
    tracing::info!(connector = %cfg.connector_name(), file = %path.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    tributary::metrics::install(&cfg.metrics)
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", path.display()))?;
    let stats = tributary::pipeline::run(&cfg, shutdown, until)
        .await
        .with_context(|| format!("connector {}", path.display()))?;
    tracing::info!(
        changes = stats.changes,
        transactions = stats.transactions,
        checkpoint = ?stats.last_checkpoint.map(|p| p.to_string()),
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    println!("ok    connector file {} parses", path.display());
    let checkpoint = match cfg.state.open_store() {
        Ok(store) => store.checkpoint()?.map(|c| c.position),
        Err(e) => {
            println!("error {e}");
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    let source = cfg.source.source();
    let report = match source.check(checkpoint.as_ref()).await {
        Ok(mut r) => {
            r.info.insert(
                0,
                format!("connected to {} as {}", source.address(), source.user()),
            );
            r
        }
        Err(m) => {
            println!("error {m}");
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    for i in &report.info {
        println!("info  {i}");
    }
    for w in &report.warnings {
        println!("warn  {w}");
    }
    for e in &report.errors {
        println!("error {e}");
    }
    // Sinks that talk to a server: can we reach it?
    let mut sink_errors = 0;
    for sink in &cfg.sinks {
        if let tributary::config::SinkConfig::Elasticsearch(es) = sink {
            let ping = tributary::sink::elasticsearch::ping(es).await;
            match ping {
                Ok(m) => println!("ok    sink {}: {m}", sink.id()),
                Err(m) => {
                    println!("error sink {}: {m}", sink.id());
                    sink_errors += 1;
                }
            }
        }
    }
    // Tables an Elasticsearch sink cannot index under their names.
    if cfg
        .sinks
        .iter()
        .any(|s| matches!(s, tributary::config::SinkConfig::Elasticsearch(_)))
    {
        match source.live_schemas().await {
            Ok(tables) => {
                for sink in &cfg.sinks {
                    if let tributary::config::SinkConfig::Elasticsearch(es) = sink {
                        for p in tributary::sink::elasticsearch::name_problems(es, &tables) {
                            println!("error sink {}: {p}", sink.id());
                            sink_errors += 1;
                        }
                    }
                }
            }
            Err(e) => println!("warn  could not list the included tables: {e}"),
        }
    }
    println!("ok    state dir {} is usable", cfg.state.dir.display());
    if report.ok() && sink_errors == 0 {
        println!("ready");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "not ready: {} problem(s) above",
            report.errors.len() + sink_errors
        );
        Ok(ExitCode::from(EXIT_FAILURE))
    }
}

async fn status(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    // A running daemon holds the store; it reports its checkpoint beside it.
    let (running, checkpoint, sinks, stages) = match cfg.state.open_store() {
        Ok(store) => (
            false,
            store.checkpoint()?,
            store
                .sink_cursors()?
                .into_iter()
                .collect::<serde_json::Map<_, _>>(),
            store
                .stage_states()?
                .into_iter()
                .collect::<serde_json::Map<_, _>>(),
        ),
        Err(_) => (
            true,
            OffsetStore::reported_checkpoint(&cfg.state.dir),
            OffsetStore::reported(&cfg.state.dir, "cursors"),
            OffsetStore::reported(&cfg.state.dir, "stages"),
        ),
    };
    let guard_state = stages.get(tributary::schema::guard::STATE_ID);
    let snapshot_state = stages.get(tributary::snapshot::STATE_ID);
    let mut out = serde_json::json!({
        "connector": cfg.connector_name(),
        "source": cfg.source.kind(),
        "running": running,
        "checkpoint": checkpoint.as_ref().map(|c| serde_json::json!({
            "position": c.position,
            "age_s": tributary::event::now_ms().saturating_sub(c.at_ms) / 1000,
        })),
        "sinks": sinks,
        "tables": guard_state.map(tributary::schema::guard::summary),
        "snapshot": snapshot_state.map(tributary::snapshot::summary),
    });
    if let SourceConfig::Postgres(p) = &cfg.source {
        let client = postgres_client(p).await?;
        let slot = tributary::source::postgres::checks::slot_info(&client, &p.slot)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}", tributary::source::postgres::checks::db_message(&e))
            })?;
        out["slot"] = match slot {
            None => serde_json::json!({"name": p.slot, "exists": false}),
            Some(s) => serde_json::json!({
                "name": p.slot,
                "exists": true,
                "active_pid": s.active_pid,
                "confirmed_flush_lsn": s.confirmed_flush.map(format_lsn),
                "retained_wal_bytes": s.retained_bytes,
                "lag_bytes": s.lag_bytes,
                "retained_wal_warning": s.retained_bytes.is_some_and(|b| (b >> 20) as u64 >= p.retained_wal_warn_mb),
            }),
        };
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

async fn postgres_client(
    p: &tributary::source::postgres::PostgresSourceConfig,
) -> anyhow::Result<tokio_postgres::Client> {
    let password = p.password().map_err(|e| anyhow::anyhow!(e))?;
    tributary::source::postgres::connect::query_client(p, password.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
}

async fn slot_drop(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let SourceConfig::Postgres(p) = &cfg.source else {
        anyhow::bail!(
            "{}: `slot drop` is for [source] kind = \"postgres\" (this one is {})",
            path.display(),
            cfg.source.kind()
        );
    };
    let client = postgres_client(p).await?;
    let slot = tributary::source::postgres::checks::slot_info(&client, &p.slot)
        .await
        .map_err(|e| anyhow::anyhow!("{}", tributary::source::postgres::checks::db_message(&e)))?;
    match slot {
        None => {
            println!("slot `{}` does not exist: nothing to drop", p.slot);
            return Ok(ExitCode::SUCCESS);
        }
        Some(s) if s.active_pid.is_some() => anyhow::bail!(
            "slot `{}` is in use by server process {} (a running tributary?): stop it first",
            p.slot,
            s.active_pid.unwrap_or_default()
        ),
        Some(_) => {}
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&p.slot])
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot drop slot `{}`: {}",
                p.slot,
                tributary::source::postgres::checks::db_message(&e)
            )
        })?;
    println!(
        "dropped slot `{}`: the server no longer keeps WAL for it. The checkpoint in {} now points into a stream that is gone: re-snapshot and run `tributary offsets reset --connector {}` before running this connector again",
        p.slot,
        cfg.state.dir.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn offsets(action: OffsetsAction) -> anyhow::Result<ExitCode> {
    match action {
        OffsetsAction::Show { connector } => {
            let cfg = load(&connector)?;
            let store = cfg.state.open_store()?;
            let out = serde_json::json!({
                "connector": cfg.connector_name(),
                "checkpoint": store.checkpoint()?,
                "sinks": store.sink_cursors()?.into_iter().collect::<serde_json::Map<_, _>>(),
                "stages": store.stage_states()?.into_iter().collect::<serde_json::Map<_, _>>(),
                "schema_versions": store.schema_versions()?.into_iter().map(|(t, v)| (t, serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                "schema_history": store.schema_history()?,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        OffsetsAction::Reset { connector } => {
            let cfg = load(&connector)?;
            let store = cfg.state.open_store()?;
            if store.reset_source()? {
                println!("checkpoint removed: the next run starts from [source] start; log sinks keep their records and append after them");
            } else {
                println!("there was no checkpoint");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn log_cat(dir: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let result = read_log(dir, |r| match writeln!(out, "{}", r.json) {
        Ok(()) => true,
        Err(e) => {
            write_err = Some(e);
            false
        }
    });
    out.flush().ok();
    if let Some(e) = write_err {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e.into());
    }
    let n = result?;
    eprintln!("{n} record(s), all checksums valid");
    Ok(ExitCode::SUCCESS)
}

/// mimalloc: events are allocated on the source thread and freed on the sink thread;
/// glibc malloc serialized that on its arena lock (a quarter of the time in futex
/// calls at 1M rows, measured with perf in bench/binlog_throughput.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
