//! deploy/grafana/tributary.json queries only metrics the daemon exports: every
//! `tributary_*` name in a panel's expression is registered in src/metrics.rs (the one
//! home of metric names), and every panel has a query.

use std::collections::BTreeSet;

fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tributary_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/tributary.json")).unwrap(),
    )
    .unwrap();
    let exported: BTreeSet<String> = names(
        &std::fs::read_to_string(root.join("src/metrics.rs"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("!(\"tributary_"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(exported.len() > 10, "{exported:?}");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut queried = BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            queried.extend(names(t["expr"].as_str().unwrap()));
        }
    }
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
    // What the operations issue asks the dashboard to show.
    for wanted in [
        "tributary_lag_seconds",
        "tributary_changes_total",
        "tributary_last_checkpoint_timestamp_seconds",
        "tributary_sink_retries_total",
        "tributary_dead_letters_total",
        "tributary_schema_changes_total",
        "tributary_snapshot_rows",
    ] {
        assert!(queried.contains(wanted), "{wanted} is not on the dashboard");
    }
}
