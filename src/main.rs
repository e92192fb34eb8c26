//! The tributary command line. Errors end here as one message and a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tributary::source::CommonSettings;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use tributary::config::{ConnectorConfig, SourceConfig};
use tributary::journal::read_log;
use tributary::offsets::OffsetStore;

/// What `tributary --help` ends with: the workflow, with examples.
const MANUAL: &str = "\
Getting started:
  tributary check --connector shop.toml       server settings, grants, sinks: fix what it says
  tributary run --connector shop.toml         snapshot the tables, then stream (SIGTERM drains and checkpoints)
  tributary status --connector shop.toml      checkpoint, sinks, snapshots, reindexes (also while running)

Schema changes:
  tributary policy check schema-rules/default.toml
  tributary policy diff --connector shop.toml        exit 3 if a pending change would halt or quarantine
  tributary quarantine replay --connector shop.toml  after editing the policy (daemon stopped)

Elasticsearch indexes:
  tributary verify --connector shop.toml --table shop.orders [--repair]
  tributary reindex --connector shop.toml --table shop.orders      zero-downtime rebuild, alias swapped

Exit codes: 0 success, 1 runtime failure, 2 bad connector or policy file, 3 policy diff
would stop the pipeline, 4 verify found a difference.
Documentation: README.md (connector file reference, delivery guarantees, operating).";

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Change-data-capture daemon: MySQL/MariaDB binlog and PostgreSQL logical replication into Elasticsearch and log streams",
    after_long_help = MANUAL
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
    #[command(
        after_long_help = "Examples:\n  tributary run --connector /etc/tributary/shop.toml\n  tributary --log-format json run -c shop.toml          JSON logs for a log shipper\n  tributary run -c shop.toml --until binlog.000042:1234  stop after checkpointing there\n\nFirst start: snapshot every included table while streaming ([source] snapshot). SIGTERM or\nSIGINT drains what is in flight and checkpoints; SIGHUP reloads the schema policy. With\n[http] listen: /metrics, /health, /ready, /status."
    )]
    Run {
        #[arg(long, short)]
        connector: PathBuf,
        /// Stop after checkpointing at or past this position (`binlog.000003:1234`);
        /// for bounded replays, tests and benchmarks.
        #[arg(long)]
        until: Option<String>,
    },
    /// Write a connector file from a connection URL: connects, lists the tables with
    /// their keys and sizes, runs the checks of `tributary check`, and writes a
    /// commented connector file; the check's messages say what an administrator must
    /// run (grants, settings, the publication). Exit 1 when the check found errors
    /// (the file is written anyway).
    #[command(
        after_long_help = "Examples:\n  export TRIBUTARY_PASSWORD=...\n  tributary init --source mariadb://tributary@db1:3306/shop --elasticsearch https://es1:9200 --out /etc/tributary/shop.toml\n  tributary init --source postgres://tributary@db2/app --schema sales > sales.toml"
    )]
    Init {
        /// `mariadb://user@host:port/db`, `mysql://...` or `postgres://user@host:port/db`
        /// (no password in it: see --password-env).
        #[arg(long)]
        source: String,
        /// Where to write the file (default: stdout). An existing file is kept unless
        /// --force.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        force: bool,
        /// The connector's name (default: the database's).
        #[arg(long)]
        name: Option<String>,
        /// The environment variable holding the password; the file names it too.
        #[arg(long, default_value = "TRIBUTARY_PASSWORD")]
        password_env: String,
        /// Elasticsearch URL for the sink (repeatable; none: written commented out).
        #[arg(long)]
        elasticsearch: Vec<String>,
        /// The state dir (default /var/lib/tributary/<name>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// PostgreSQL: the schema whose tables are included.
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// Check a connector: config, connectivity, server settings and grants.
    #[command(
        after_long_help = "Examples:\n  tributary check --connector shop.toml\n\nEach line is ok, info, warn or error; an error names the setting, grant or statement that\nfixes it. Exit 1 when there is an error."
    )]
    Check {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Show where a connector stands: checkpoint, sinks, and (Postgres) the slot's
    /// retained WAL and lag.
    #[command(
        after_long_help = "Examples:\n  tributary status -c shop.toml\n  tributary status -c shop.toml | jq .checkpoint.age_s\n\nWhile the daemon runs it reports what the daemon last checkpointed; with [http] listen the\nsame JSON is at /status."
    )]
    Status {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Manage the Postgres replication slot.
    #[command(
        after_long_help = "Examples:\n  tributary slot drop -c app.toml        the daemon stopped, on purpose"
    )]
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
    /// The PostgreSQL DDL event trigger: with it, the stream sees CREATE, ALTER and
    /// DROP TABLE at their exact position (the schema guard decides them there, and a
    /// column rename is certain); without it, tables created and dropped are found by
    /// a look at the catalog every `catalog_poll_secs` and column changes at the
    /// table's next row. One per database serves every connector. Event triggers need
    /// a superuser.
    #[command(
        name = "pg-ddl-trigger",
        after_long_help = "Examples:
  tributary pg-ddl-trigger sql -c app.toml | psql -U postgres app   as a superuser
  tributary pg-ddl-trigger install -c app.toml                      the connector's user is one
  tributary pg-ddl-trigger uninstall -c app.toml"
    )]
    PgDdlTrigger {
        #[command(subcommand)]
        action: TriggerAction,
    },
    /// Show or reset the stored checkpoint.
    #[command(
        after_long_help = "Examples:\n  tributary offsets show -c shop.toml\n  tributary offsets reset -c shop.toml   the next run starts from [source] start (daemon stopped)"
    )]
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
    /// Read log streams.
    #[command(
        after_long_help = "Examples:\n  tributary log cat /var/lib/tributary/shop/log --follow --positions"
    )]
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
    /// Schema policy files (schema-rules/*.toml).
    #[command(
        after_long_help = "Examples:\n  tributary policy check schema-rules/default.toml\n  tributary policy explain -c shop.toml\n  tributary policy diff -c shop.toml      before a migration: exit 3 if a change would halt"
    )]
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Snapshot tables again while streaming keeps running (the running daemon picks
    /// the request up within a second; a stopped one when it starts). Progress shows
    /// in `tributary status`.
    #[command(
        after_long_help = "Examples:\n  tributary snapshot -c shop.toml --table shop.orders --table shop.customers"
    )]
    Snapshot {
        #[arg(long, short)]
        connector: PathBuf,
        /// `db.table` (repeatable).
        #[arg(long, required = true)]
        table: Vec<String>,
    },
    /// Tables a `quarantine` verdict set aside (`tributary status` lists them).
    #[command(
        after_long_help = "Examples:\n  tributary quarantine replay -c shop.toml --table shop.orders   after editing the policy, daemon stopped"
    )]
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Compare each table with its Elasticsearch index, key by key, the documents as
    /// the sink would write them now (also while the daemon runs: keys changing
    /// meanwhile are not judged). Exit 0: equal; 4: a difference was found (or is left
    /// after --repair).
    #[command(
        after_long_help = "Examples:\n  tributary verify -c shop.toml                        every included table\n  tributary verify -c shop.toml --table shop.orders --json\n  tributary verify -c shop.toml --table shop.orders --repair\n  tributary verify -c shop.toml --document customers"
    )]
    Verify {
        #[arg(long, short)]
        connector: PathBuf,
        /// `db.table` (repeatable). Default: every included table the sink indexes,
        /// and every [[document]].
        #[arg(long)]
        table: Vec<String>,
        /// A [[document]] by name (repeatable): its index against the documents its
        /// tables build.
        #[arg(long)]
        document: Vec<String>,
        /// The Elasticsearch sink's name (when there are several).
        #[arg(long)]
        sink: Option<String>,
        /// Write the source's row (or document) for missing and stale documents and
        /// delete extra ones, versioned so that a newer change always wins.
        #[arg(long)]
        repair: bool,
        /// One JSON object per table on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a table's index into a new concrete index (`<alias>_v<N+1>`) with
    /// today's mapping and enrichment, read from the source (or replayed from a log
    /// stream holding the table's whole history), then move the alias to it in one
    /// atomic request (searches never see a partial index). Beside a running daemon,
    /// which writes the table's changes to the new index too meanwhile; or with it
    /// stopped, which then resumes into the new index.
    #[command(
        after_long_help = "Examples:\n  tributary reindex -c shop.toml --table shop.orders\n  tributary reindex -c shop.toml --table shop.orders --delete-previous\n  tributary reindex -c shop.toml --table shop.orders --from log:events   no load on the source\n  tributary reindex -c shop.toml --document customers\n\n`tributary status` shows the reindex while it runs; a reindex killed midway leaves the\nalias where it was."
    )]
    Reindex {
        #[arg(long, short)]
        connector: PathBuf,
        /// `db.table`.
        #[arg(
            long,
            required_unless_present = "document",
            conflicts_with = "document"
        )]
        table: Option<String>,
        /// A [[document]] by name: its index rebuilt from the documents its tables
        /// build now.
        #[arg(long)]
        document: Option<String>,
        /// The Elasticsearch sink's name (when there are several).
        #[arg(long)]
        sink: Option<String>,
        /// Delete the previous index after the swap (default: keep it).
        #[arg(long)]
        delete_previous: bool,
        /// `source` (a consistent snapshot, default) or `log:NAME`: replay the log
        /// sink NAME (its name or dir), refused unless it holds the table's whole
        /// history since its snapshot or last truncate.
        #[arg(long, default_value = "source")]
        from: tributary::reindex::ReadFrom,
    },
    /// Print a shell completion script, e.g.
    /// `tributary completions bash > /etc/bash_completion.d/tributary`.
    #[command(
        after_long_help = "Examples:\n  tributary completions bash > /etc/bash_completion.d/tributary\n  tributary completions zsh > /usr/local/share/zsh/site-functions/_tributary"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (roff): `tributary.1` and one `tributary-<command>.1` per
    /// command into DIR, or `tributary.1` to stdout without it. The package installs
    /// them; `man tributary` then reads them.
    #[command(
        after_long_help = "Examples:\n  tributary man --dir /usr/local/share/man/man1 && man tributary-run"
    )]
    Man {
        /// Directory to write the pages into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Changes an enrichment step or an Elasticsearch sink could not handle.
    #[command(
        after_long_help = "Examples:\n  tributary dead-letters list -c shop.toml --table shop.orders\n  tributary dead-letters replay -c shop.toml --stream enrich   after fixing the cause, daemon stopped"
    )]
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Print the dead letters not replayed yet: place (segment:line), table, op,
    /// version, the step or index that refused it, and why. Works while the daemon runs.
    List {
        #[arg(long, short)]
        connector: PathBuf,
        /// `enrich`, an Elasticsearch sink's name (or `elasticsearch` when there is
        /// one). Default: every stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only this table (`db.table`).
        #[arg(long)]
        table: Option<String>,
        /// Replayed ones too.
        #[arg(long)]
        all: bool,
        /// Print each record's JSON as stored, one per line.
        #[arg(long)]
        json: bool,
    },
    /// After the cause was fixed: send the dead letters again (an enrichment one
    /// through the enrichment to every sink, a sink's one to that sink), each with its
    /// version so a newer change already indexed wins, and record them as replayed in
    /// the same commit. Ones that fail again wait for the next replay. The daemon must
    /// be stopped.
    Replay {
        #[arg(long, short)]
        connector: PathBuf,
        /// As for `list`. Default: every stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only this table (`db.table`); repeatable.
        #[arg(long)]
        table: Vec<String>,
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
enum TriggerAction {
    /// Print the SQL that installs it (for a superuser to run).
    Sql {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Install (or replace) it, connected as the connector's user.
    Install {
        #[arg(long, short)]
        connector: PathBuf,
    },
    /// Remove it.
    Uninstall {
        #[arg(long, short)]
        connector: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Print every record of a log stream as JSON lines, verifying each checksum.
    #[command(
        after_long_help = "Examples:\n  tributary log cat /var/lib/tributary/shop/log\n  tributary log cat DIR --follow --positions          print new records as they are written\n  tributary log cat DIR --follow --from 3:1207        resume after a position printed before\n  tributary log cat DIR --from-time 2026-12-01T00:00:00Z\n\nA daemon restarted after a crash writes the records past its last checkpoint again, so\na follower can print those twice."
    )]
    Cat {
        /// The log sink's directory.
        dir: PathBuf,
        /// Keep printing records as they are written (across rotations and retention),
        /// until interrupted.
        #[arg(long)]
        follow: bool,
        /// Start after this record: `SEGMENT:RECORD`, as `--positions` prints them.
        #[arg(long)]
        from: Option<String>,
        /// Only records tributary read at or after this time: RFC 3339 UTC
        /// (`2026-12-01T00:00:00Z`) or milliseconds since the epoch.
        #[arg(long)]
        from_time: Option<String>,
        /// Print each record's position (`SEGMENT:RECORD`: the segment and the record's
        /// number in it, its line in an uncompressed segment) and a tab before it.
        #[arg(long)]
        positions: bool,
    },
}

/// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration.
const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    lazy_arena_commit();
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
        Command::PgDdlTrigger { action } => pg_ddl_trigger(action).await,
        Command::Log {
            action:
                LogAction::Cat {
                    dir,
                    follow,
                    from,
                    from_time,
                    positions,
                },
        } => {
            if follow || from.is_some() || from_time.is_some() || positions {
                log_tail(
                    &dir,
                    follow,
                    from.as_deref(),
                    from_time.as_deref(),
                    positions,
                )
            } else {
                log_cat(&dir)
            }
        }
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
        Command::Man { dir } => man_pages(dir.as_deref()),
        Command::Init {
            source,
            out,
            force,
            name,
            password_env,
            elasticsearch,
            state_dir,
            schema,
        } => {
            let opts = tributary::init::Options {
                source,
                name,
                password_env,
                elasticsearch,
                state_dir,
                schema,
            };
            init(&opts, out.as_deref(), force).await
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tributary",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            connector,
            table,
            document,
            sink,
            repair,
            json,
        } => verify(&connector, table, document, sink, repair, json).await,
        Command::Reindex {
            connector,
            table,
            document,
            sink,
            delete_previous,
            from,
        } => reindex(&connector, table, document, sink, delete_previous, from).await,
        Command::DeadLetters {
            action:
                DeadLetterAction::List {
                    connector,
                    stream,
                    table,
                    all,
                    json,
                },
        } => dead_letters_list(&connector, stream.as_deref(), table.as_deref(), all, json),
        Command::DeadLetters {
            action:
                DeadLetterAction::Replay {
                    connector,
                    stream,
                    table,
                },
        } => dead_letters_replay(&connector, stream.as_deref(), &table).await,
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

/// `verify` found a difference (or one is left after `--repair`).
const EXIT_DIFFERENT: u8 = 4;

async fn verify(
    path: &Path,
    tables: Vec<String>,
    documents: Vec<String>,
    sink: Option<String>,
    repair: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let cfg = load(path)?;
    let opts = tributary::verify::Options {
        tables,
        documents,
        sink,
        repair,
        progress: !json && std::io::stderr().is_terminal(),
    };
    let reports = tributary::verify::verify(&cfg, &opts)
        .await
        .with_context(|| format!("connector {}", path.display()))?;
    let mut different = false;
    for r in &reports {
        different |= r.differences() > 0;
        if json {
            println!("{}", serde_json::to_string(r)?);
            continue;
        }
        if let Some(why) = &r.skipped {
            println!("{}: not verified: {why}", r.table);
            continue;
        }
        println!(
            "{} -> {}: {} rows, {} documents: {} missing, {} stale, {} extra{}{}{}",
            r.table,
            r.index,
            r.rows,
            r.documents,
            r.missing,
            r.stale,
            r.extra,
            if r.changing > 0 {
                format!(" ({} changing meanwhile, not judged)", r.changing)
            } else {
                String::new()
            },
            if r.not_enriched > 0 {
                format!(" ({} rows an enrichment step fails on)", r.not_enriched)
            } else {
                String::new()
            },
            if repair {
                format!("; {} repaired", r.repaired)
            } else {
                String::new()
            },
        );
        for (kind, keys) in [
            ("missing", &r.first_missing),
            ("stale", &r.first_stale),
            ("extra", &r.first_extra),
        ] {
            if !keys.is_empty() {
                println!("  {kind}: {}", keys.join(" "));
            }
        }
    }
    Ok(if different {
        ExitCode::from(EXIT_DIFFERENT)
    } else {
        ExitCode::SUCCESS
    })
}

async fn reindex(
    path: &Path,
    table: Option<String>,
    document: Option<String>,
    sink: Option<String>,
    delete_previous: bool,
    from: tributary::reindex::ReadFrom,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let cfg = load(path)?;
    let opts = tributary::reindex::Options {
        table: table.unwrap_or_default(),
        document,
        sink,
        delete_previous,
        progress: std::io::stderr().is_terminal(),
        if_indexed: false,
        from,
    };
    let r = tributary::reindex::reindex(&cfg, &opts)
        .await
        .with_context(|| format!("connector {}", path.display()))?;
    println!(
        "{}: {} documents in {}; the alias now points at it (was: {}){}{}",
        r.alias,
        r.documents,
        r.index,
        r.previous.join(", "),
        if r.deleted_previous {
            "; previous deleted"
        } else {
            "; previous kept"
        },
        if r.not_enriched > 0 {
            format!("; {} rows an enrichment step fails on", r.not_enriched)
        } else {
            String::new()
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn dead_letters_list(
    path: &Path,
    stream: Option<&str>,
    table: Option<&str>,
    all: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let streams = tributary::pipeline::dead_letters::list(&cfg, stream, table, all)
        .with_context(|| format!("connector {}", path.display()))?;
    for (name, entries) in &streams {
        if json {
            for e in entries {
                println!("{}", e.json);
            }
            continue;
        }
        println!(
            "{name}: {} dead letter(s){}",
            entries.len(),
            if all { "" } else { " to replay" }
        );
        for e in entries {
            let what = if e.replayable() {
                format!("{} {} v{}", e.table, e.op, e.version)
            } else {
                "(written by an older release: cannot be replayed)".to_string()
            };
            let done = if e.replayed { " [replayed]" } else { "" };
            println!("  {}  {what}  {}: {}{done}", e.at, e.cause, e.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn dead_letters_replay(
    path: &Path,
    stream: Option<&str>,
    tables: &[String],
) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let report = tributary::pipeline::dead_letters::replay(&cfg, stream, tables)
        .await
        .with_context(|| format!("connector {}", path.display()))?;
    for (name, counts) in &report.replayed {
        if counts.is_empty() {
            println!("{name}: nothing to replay");
        }
        for (table, n) in counts {
            println!("{name}: {table}: {n} change(s) sent again");
        }
    }
    for (name, n) in &report.not_replayable {
        println!("{name}: {n} record(s) written by an older release hold no exact change and were passed over (`dead-letters list --all` shows them)");
    }
    // What failed again was appended to its stream and waits for the next replay.
    let waiting: usize = tributary::pipeline::dead_letters::list(&cfg, stream, None, false)?
        .iter()
        .flat_map(|(_, entries)| entries)
        .filter(|e| tables.is_empty() || tables.contains(&e.table))
        .count();
    match waiting {
        0 => println!("no dead letters wait"),
        n => println!("{n} dead letter(s) failed again and wait (`tributary dead-letters list`)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy diff` found a change the policy would halt or quarantine.
const EXIT_WOULD_STOP: u8 = 3;

async fn policy_diff(path: &Path) -> anyhow::Result<ExitCode> {
    use tributary::schema::{diff_columns, SchemaChange, Verdict};
    let cfg = load(path)?;
    let policy = cfg.policy()?;
    // What the guard accepted as of the last checkpoint is what a restart decides the
    // live layout against; the history can be ahead of it (the source records a layout
    // when it reads it, and a halt stops the guard after that). Beside a running
    // daemon (the store is held) the history's last layout stands in.
    let store = if cfg.state.dir.join("offsets.redb").exists() {
        OffsetStore::open(&cfg.state.dir, cfg.state.file_mode).ok()
    } else {
        None
    };
    let recorded = match &store {
        Some(s) => s.schema_history()?,
        None => OffsetStore::recorded_schemas(&cfg.state.dir, cfg.state.file_mode)?,
    };
    let accepted = store
        .and_then(|s| s.stage_state(tributary::schema::guard::STATE_ID).ok())
        .flatten()
        .map(|g| tributary::schema::guard::accepted(&g))
        .unwrap_or_default();
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
        let last = match accepted.get(table) {
            Some((version, columns, names)) => Some((*version, columns, *names)),
            None => recorded
                .get(table)
                .and_then(|h| h.last())
                .map(|r| (r.version, &r.columns, r.type_names)),
        };
        match last {
            None => {
                println!("{table}: not captured yet");
                show(table, &SchemaChange::TableCreated);
            }
            Some((version, last, names)) => {
                let changes = diff_columns(last, names, columns);
                if changes.is_empty() {
                    println!("{table}: no change since schema version {version}");
                } else {
                    println!("{table}: since schema version {version}");
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
    let serving = tributary::http::HttpConfig::of(&cfg)
        .map(|h| h.listen.is_some())
        .unwrap_or(false);
    tracing::info!(connector = %cfg.connector_name(), file = %path.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    tributary::http::serve(&cfg)
        .await
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", path.display()))?;
    let mut pause = std::time::Duration::from_secs(1);
    let result = loop {
        let reindexer = tributary::reindex::for_the_daemon(&cfg);
        let result =
            tributary::pipeline::run(&cfg, shutdown.clone(), until.clone(), Some(reindexer)).await;
        // A sink that lost what it took since the checkpoint (an aborted Kafka
        // transaction) gets it again: the connector starts over from the checkpoint.
        match &result {
            Err(tributary::pipeline::PipelineError::Sink(
                e @ tributary::sink::SinkError::FromCheckpoint { .. },
            )) if !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, pause_s = pause.as_secs(), "starting again from the checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break result,
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
            _ => break result,
        }
    };
    if let (Err(tributary::pipeline::PipelineError::Halt(h)), true) = (&result, serving) {
        // A service manager would restart a daemon that exits into the same halt, over
        // and over; so it stays up, answering /ready with the reason, until stopped.
        tracing::error!(table = %h.table, "halted by the schema guard: /ready answers 503 with the reason until the daemon is stopped; change the policy (or the table), then start it again");
        shutdown.cancelled().await;
    }
    let stats = result.with_context(|| format!("connector {}", path.display()))?;
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
    let mut sink_errors = documents_match_their_tables(&cfg, source).await;
    // Sinks that talk to a server: can we reach it?
    for sink in &cfg.sinks {
        let ping = match sink {
            tributary::config::SinkConfig::Elasticsearch(es) => {
                Some(tributary::sink::elasticsearch::ping(es).await)
            }
            tributary::config::SinkConfig::Kafka(k) => Some(tributary::sink::kafka::ping(k).await),
            _ => None,
        };
        if let Some(ping) = ping {
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
                        written_with(&cfg, &sink.id(), es, &tables).await;
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

/// For `check`: each `[[document]]` against its tables as the server has them now
/// (columns, keys); the number of errors printed.
async fn documents_match_their_tables(
    cfg: &tributary::config::ConnectorConfig,
    source: &dyn tributary::source::SourceKind,
) -> usize {
    if cfg.document.is_empty() {
        return 0;
    }
    let text = std::fs::read_to_string(&cfg.path).unwrap_or_default();
    let scan = source.scan(&cfg.connector_name());
    let mut schemas = std::collections::HashMap::new();
    let mut errors = 0;
    for d in &cfg.document {
        for t in d.tables() {
            if schemas.contains_key(t) {
                continue;
            }
            match scan.table(t).await {
                Ok(found) => {
                    schemas.insert(t.to_string(), found);
                }
                Err(e) => {
                    println!(
                        "error document {}: cannot read table {t}: {e}",
                        d.name.get_ref()
                    );
                    errors += 1;
                }
            }
        }
        let schema_of = |t: &str| {
            schemas
                .get(t)
                .and_then(Option::as_ref)
                .map(|f| (&*f.schema, f.unique.as_slice()))
        };
        match tributary::document::check_against_schemas(&cfg.path, &text, d, &schema_of) {
            Ok(()) => {
                println!(
                    "ok    document {}: {} tables, every column and join found",
                    d.name.get_ref(),
                    d.tables().len()
                );
            }
            Err(e) => {
                println!("error {e}");
                errors += 1;
            }
        }
    }
    errors
}

/// For `check`: the indexes written under another enrichment or mapping configuration
/// than the connector file has now (warnings: they are whole, only not current).
async fn written_with(
    cfg: &tributary::config::ConnectorConfig,
    sink: &str,
    es: &tributary::sink::elasticsearch::ElasticsearchSinkConfig,
    tables: &[(String, Vec<tributary::event::Column>)],
) {
    use tributary::sink::elasticsearch::verify::{IndexView, Written};
    let view = cfg.policy().map_err(|e| e.to_string()).and_then(|p| {
        IndexView::open(
            sink.into(),
            es,
            tributary::registry::sink_context(cfg, p, Default::default()),
        )
    });
    let view = match view {
        Ok(v) => v,
        Err(e) => return println!("warn  sink {sink}: cannot read its indexes: {e}"),
    };
    let (mut current, mut none) = (0, 0);
    for (name, _) in tables {
        let (db, table) = name.split_once('.').unwrap_or(("", name));
        match view.written_with(db, table).await {
            Ok(Written::Current) => current += 1,
            Ok(Written::NoIndex) => none += 1,
            Ok(Written::Other { index }) => println!(
                "warn  sink {sink}: index {index} of {name} was written under another enrichment or mapping configuration than {} has now; `tributary reindex --table {name}` rewrites every document with it",
                cfg.path.display()
            ),
            Ok(Written::Unrecorded { index }) => println!(
                "warn  sink {sink}: index {index} of {name} was created before indexes recorded their configuration, so whether it is current is unknown; `tributary reindex --table {name}` makes it so"
            ),
            Err(e) => return println!("warn  sink {sink}: cannot read its indexes: {e}"),
        }
    }
    println!(
        "ok    sink {sink}: {current} index(es) written under the current configuration{}",
        if none > 0 {
            format!(", {none} table(s) without an index yet")
        } else {
            String::new()
        }
    );
}

async fn status(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let out = tributary::status::report(&cfg)
        .await
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

async fn init(
    opts: &tributary::init::Options,
    out: Option<&Path>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(out) = out.filter(|o| o.exists() && !force) {
        anyhow::bail!("{} exists: choose another --out, or --force", out.display());
    }
    let path = out.unwrap_or(Path::new("connector.toml"));
    let s = tributary::init::init(opts, path)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The findings go to stderr, so `init > file` writes the file alone.
    eprintln!("{} table(s):", s.tables.len());
    for t in &s.tables {
        let key = if t.key.is_empty() {
            "no primary key".to_string()
        } else {
            format!("key ({})", t.key.join(", "))
        };
        eprintln!("  {}  {key}  ~{} rows", t.name, t.rows);
    }
    for (level, lines) in [
        ("info ", &s.report.info),
        ("warn ", &s.report.warnings),
        ("error", &s.report.errors),
    ] {
        for l in lines {
            eprintln!("{level} {l}");
        }
    }
    match out {
        Some(out) => {
            std::fs::write(out, &s.text).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote {}; then: tributary check --connector {}",
                out.display(),
                out.display()
            );
        }
        None => print!("{}", s.text),
    }
    Ok(if s.report.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("the server is not ready yet: an administrator runs what the errors above say");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// The manual pages, from the same definitions as `--help` (clap_mangen).
fn man_pages(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cli).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    let mut page = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
        let mut out = Vec::new();
        // Pages name the command as typed (`tributary-run`); clap wants a static name.
        let named: &'static str = Box::leak(name.clone().into_boxed_str());
        clap_mangen::Man::new(cmd.name(named)).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        written += 1;
        Ok(())
    };
    for sub in cli.get_subcommands() {
        if sub.get_name() != "help" {
            page(sub.clone(), format!("tributary-{}", sub.get_name()))?;
        }
    }
    page(cli, "tributary".into())?;
    eprintln!("{written} page(s) in {}", dir.display());
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

async fn pg_ddl_trigger(action: TriggerAction) -> anyhow::Result<ExitCode> {
    use tributary::source::postgres::ddl_trigger::{INSTALL, UNINSTALL};
    let (path, sql, done) = match &action {
        TriggerAction::Sql { connector } => (connector, INSTALL, None),
        TriggerAction::Install { connector } => (connector, INSTALL, Some("installed")),
        TriggerAction::Uninstall { connector } => (connector, UNINSTALL, Some("removed")),
    };
    let cfg = load(path)?;
    let SourceConfig::Postgres(p) = &cfg.source else {
        anyhow::bail!(
            "{}: `pg-ddl-trigger` is for [source] kind = \"postgres\" (this one is {})",
            path.display(),
            cfg.source.kind()
        );
    };
    let Some(done) = done else {
        print!("{sql}");
        return Ok(ExitCode::SUCCESS);
    };
    let client = postgres_client(p).await?;
    client.batch_execute(sql).await.map_err(|e| {
        anyhow::anyhow!(
            "{} as user `{}` on {}: {} (event triggers need a superuser: run `tributary pg-ddl-trigger sql --connector {}` and give its output to one)",
            if done == "installed" { "installing the DDL trigger" } else { "removing the DDL trigger" },
            p.user,
            p.address(),
            tributary::source::postgres::checks::db_message(&e),
            path.display()
        )
    })?;
    println!(
        "DDL trigger {done} in database `{}` on {}: it serves every connector of that database",
        p.database,
        p.address()
    );
    Ok(ExitCode::SUCCESS)
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

/// `log cat` with `--follow`, `--from`, `--from-time` or `--positions`.
fn log_tail(
    dir: &Path,
    follow: bool,
    from: Option<&str>,
    from_time: Option<&str>,
    positions: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let after = from
        .map(|p| {
            let (s, l) = p
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--from {p}: expected SEGMENT:RECORD"))?;
            Ok::<_, anyhow::Error>((
                s.parse().with_context(|| format!("--from {p}: segment"))?,
                l.parse().with_context(|| format!("--from {p}: line"))?,
            ))
        })
        .transpose()?;
    let since_ms = from_time.map(parse_time).transpose()?;
    if !dir.is_dir() {
        anyhow::bail!("{}: not a directory", dir.display());
    }
    let mut tail = tributary::journal::Tail::new(dir, after);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        match tail.poll()? {
            Some(r) => {
                if let Some(since) = since_ms {
                    let ts = serde_json::from_str::<serde_json::Value>(&r.json)
                        .ok()
                        .and_then(|v| v["ts_ms"].as_u64());
                    if ts.is_some_and(|t| t < since) {
                        continue;
                    }
                }
                let written = if positions {
                    writeln!(out, "{}:{}\t{}", r.segment, r.line, r.json)
                } else {
                    writeln!(out, "{}", r.json)
                };
                if let Err(e) = written {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
            }
            None if follow => {
                if out.flush().is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            None => break,
        }
    }
    out.flush().ok();
    Ok(ExitCode::SUCCESS)
}

/// `--from-time`: milliseconds since the epoch, or RFC 3339 UTC.
fn parse_time(t: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || anyhow::anyhow!("--from-time {t}: expected 2026-12-01T00:00:00Z or milliseconds");
    let t = t.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let h: Vec<&str> = hms.split(':').collect();
    if d.len() != 3 || h.len() != 3 {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let secs = tributary::temporal::epoch_secs(
        num(d[0])?,
        num(d[1])? as u32,
        num(d[2])? as u32,
        num(h[0])?,
        num(h[1])?,
        num(h[2])?,
    );
    let ms = format!("{frac:0<3}")[..3]
        .parse::<u64>()
        .map_err(|_| bad())?;
    u64::try_from(secs)
        .map(|s| s * 1000 + ms)
        .map_err(|_| bad())
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

/// The variable that makes mimalloc commit its arenas' memory as it is used instead of
/// all at once.
const ARENA_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// Runs the process again with `MIMALLOC_ARENA_EAGER_COMMIT=0`, unless the environment
/// says otherwise already. mimalloc reads the option once, when it reserves its first
/// arena while the program loads, before `main` (setting it from code then is too
/// late, and its compiled-in default is a C define cargo cannot pass to that crate
/// alone); eager commit kept 15-30 MiB of arena pages resident that were never used:
/// the catch-up with a snapshot peaked at 65-86 MiB with it and 50-54 MiB without, at
/// the same speed (bench/binlog_throughput.sh's run, docs/DESIGN.md). An `exec` keeps
/// the pid (systemd's notify and watchdog follow it); if it fails, this run goes on.
fn lazy_arena_commit() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ARENA_EAGER_COMMIT).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(ARENA_EAGER_COMMIT, "0")
        .exec();
    tracing::debug!(error = %err, "running on with mimalloc's eager arena commit");
}

/// mimalloc: events are allocated on the source thread and freed on the sink thread;
/// glibc malloc serialized that on its arena lock (a quarter of the time in futex
/// calls at 1M rows, measured with perf in bench/binlog_throughput.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
