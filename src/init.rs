//! `tributary init`: a connector file written from a connection URL. It connects, lists
//! the tables with their keys and sizes, runs the same checks as `tributary check`,
//! and writes a commented connector file (include list, sinks, state dir, the password
//! from an environment variable); what an administrator must run (grants, settings,
//! the publication) is in the check's messages, printed beside it.

use std::path::{Path, PathBuf};

use crate::config::ConnectorConfig;
use crate::source::CheckReport;

/// What `init` is given.
#[derive(Debug, Clone)]
pub struct Options {
    /// `mariadb://user@host:port/db`, `mysql://...` or `postgres://user@host:port/db`.
    pub source: String,
    /// The connector's name (default: the database's).
    pub name: Option<String>,
    /// The environment variable the password comes from.
    pub password_env: String,
    /// Elasticsearch URLs for the sink (none: the sink is written commented out).
    pub elasticsearch: Vec<String>,
    /// Default `/var/lib/tributary/<name>`.
    pub state_dir: Option<PathBuf>,
    /// PostgreSQL: the schema whose tables are included (default `public`).
    pub schema: String,
}

/// A source as the URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub kind: &'static str,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        // The URL itself is not repeated: it may hold a password.
        let bad = |why: &str| {
            format!("--source: {why} (expected mariadb://user@host:port/db, mysql://... or postgres://...)")
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (kind, default_port) = match scheme {
            "mariadb" => ("mariadb", 3306),
            "mysql" => ("mysql", 3306),
            "postgres" | "postgresql" => ("postgres", 5432),
            _ => return Err(bad("unknown scheme")),
        };
        let (auth, rest) = rest.split_once('@').ok_or_else(|| bad("no user@"))?;
        if auth.contains(':') {
            return Err(bad(
                "a password in the URL lands in shell history and process lists: put it in the environment variable --password-env names",
            ));
        }
        let (hostport, database) = rest.split_once('/').ok_or_else(|| bad("no /database"))?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (hostport, default_port),
        };
        if auth.is_empty() || host.is_empty() || database.is_empty() {
            return Err(bad("user, host and database are all needed"));
        }
        Ok(Url {
            kind,
            user: auth.to_string(),
            host: host.to_string(),
            port,
            database: database.to_string(),
        })
    }
}

/// A table the source has: its key columns (empty: none) and the server's estimate.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub key: Vec<String>,
    pub rows: u64,
}

/// What `init` found and wrote.
pub struct Scaffold {
    pub text: String,
    pub tables: Vec<Table>,
    pub report: CheckReport,
}

/// Connects, lists, checks and composes the connector file for `out`.
pub async fn init(opts: &Options, out: &Path) -> Result<Scaffold, String> {
    let url = Url::parse(&opts.source)?;
    let name = opts.name.clone().unwrap_or_else(|| url.database.clone());
    if std::env::var_os(&opts.password_env).is_none() {
        return Err(format!(
            "the environment variable {} holds no password: export it (or name another with --password-env)",
            opts.password_env
        ));
    }
    let include = match url.kind {
        "postgres" => format!("{}.*", opts.schema),
        _ => format!("{}.*", url.database),
    };
    // The file as it will be written, minus the table list: parsed by the real parser,
    // so what is checked here is what the daemon will read.
    let compose = |tables: &[Table]| compose(opts, &url, &name, &include, tables);
    let cfg = ConnectorConfig::parse(out, &compose(&[])).map_err(|e| e.to_string())?;
    let source = cfg.source.source();
    let report = source.check(None).await.map_err(|e| e.to_string())?;
    let scan = source.scan(&name);
    let mut tables = Vec::new();
    for (t, _) in source.live_schemas().await.map_err(|e| e.to_string())? {
        let Some(s) = scan.table(&t).await.map_err(|e| e.to_string())? else {
            continue;
        };
        tables.push(Table {
            key: s
                .schema
                .primary_key
                .iter()
                .map(|&i| s.schema.columns[i].name.clone())
                .collect(),
            rows: s.estimate,
            name: t,
        });
    }
    Ok(Scaffold {
        text: compose(&tables),
        tables,
        report,
    })
}

fn compose(opts: &Options, url: &Url, name: &str, include: &str, tables: &[Table]) -> String {
    let mut listed = String::new();
    for t in tables {
        let key = if t.key.is_empty() {
            "no primary key: Elasticsearch skips it unless the sink sets ids = \"row_hash\""
                .to_string()
        } else {
            format!("key ({})", t.key.join(", "))
        };
        listed.push_str(&format!("#   {}  {key}  ~{} rows\n", t.name, t.rows));
    }
    if tables.is_empty() {
        listed.push_str("#   (none yet)\n");
    }
    let source = match url.kind {
        "postgres" => format!(
            "kind = \"postgres\"\nhost = \"{}\"\nport = {}\ndatabase = \"{}\"\nuser = \"{}\"\npassword_env = \"{}\"   # the password comes from this environment variable\nsslmode = \"prefer\"                # verify-full with sslrootcert across networks\n# slot and publication default to tributary_{name}\n",
            url.host, url.port, url.database, url.user, opts.password_env
        ),
        kind => format!(
            "kind = \"{kind}\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword_env = \"{}\"   # the password comes from this environment variable\nserver_id = {}            # unique among the server's replicas\nssl_mode = \"preferred\"            # verify_identity with ssl_ca across networks\n",
            url.host,
            url.port,
            url.user,
            opts.password_env,
            server_id(name)
        ),
    };
    let state = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/lib/tributary/{name}")));
    let elasticsearch = if opts.elasticsearch.is_empty() {
        "# [[sink]]\n# kind = \"elasticsearch\"\n# urls = [\"https://es1:9200\"]\n# index = \"{db}_{table}\"            # an alias per table; the concrete index is <alias>_v1\n".to_string()
    } else {
        format!(
            "[[sink]]\nkind = \"elasticsearch\"\nurls = [{}]\nindex = \"{{db}}_{{table}}\"            # an alias per table; the concrete index is <alias>_v1\n",
            opts.elasticsearch
                .iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    // Without an Elasticsearch URL the log stream is the sink (a connector needs one).
    let log_on = if opts.elasticsearch.is_empty() {
        ""
    } else {
        "# "
    };
    format!(
        "# Written by `tributary init` for {}://{}@{}:{}/{}.\n# Check it with: tributary check --connector <this file>\nname = \"{name}\"\n\n[source]\n{source}include = [\"{include}\"]\n# The tables it includes now:\n{listed}exclude = []\nsnapshot = \"initial\"   # first start: the rows already there arrive as op \"r\" while streaming\n\n{elasticsearch}\n# A log stream of every change (JSON lines):\n{log_on}[[sink]]\n{log_on}kind = \"log\"\n{log_on}dir = \"{}/log\"\n{log_on}retention_bytes = 10737418240   # delete the oldest segments past 10 GiB\n\n[http]\nlisten = \"127.0.0.1:9187\"   # /metrics, /health, /ready, /status\n\n[schema]\n# policy = \"/usr/share/tributary/schema-rules/default.toml\"   # the built-in add-only rules without it\n\n[state]\ndir = \"{}\"\n",
        url.kind,
        url.user,
        url.host,
        url.port,
        url.database,
        state.display(),
        state.display()
    )
}

/// A replica id derived from the connector's name (stable across runs of `init`),
/// away from the small numbers servers and other tools take.
fn server_id(name: &str) -> u32 {
    let h = name
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    100_000 + h % 900_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_source_and_never_carry_a_password() {
        let u = Url::parse("mariadb://app@db.example:3307/shop").unwrap();
        assert_eq!(
            (
                u.kind,
                u.user.as_str(),
                u.host.as_str(),
                u.port,
                u.database.as_str()
            ),
            ("mariadb", "app", "db.example", 3307, "shop")
        );
        assert_eq!(Url::parse("postgresql://a@h/app").unwrap().port, 5432);
        let e = Url::parse("mysql://app:secret@h/shop").unwrap_err();
        assert!(e.contains("--password-env") && !e.contains("secret"), "{e}");
        assert!(Url::parse("oracle://a@h/x").is_err());
        assert!(Url::parse("mariadb://h/x").is_err());
    }
}
