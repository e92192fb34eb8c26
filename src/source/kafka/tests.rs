use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::config::KafkaSourceConfig;
use crate::event::Position;

fn section(extra: &str) -> Result<(), String> {
    let text = format!(
        "kind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\ngroup = \"g\"\ntopics = [\"shop.db.orders\"]\n{extra}\n"
    );
    let cfg: KafkaSourceConfig = toml::from_str(&text).expect("parses");
    cfg.validate_section(Path::new("w.toml"), &text)
        .map_err(|e| e.to_string())
}

#[test]
fn the_defaults_validate() {
    assert_eq!(section(""), Ok(()));
    let text =
        "kind = \"kafka\"\nbrokers = [\"k:9092\"]\ngroup = \"g\"\ntopics = [\"^shop\\\\..*\"]\n";
    let cfg: KafkaSourceConfig = toml::from_str(text).unwrap();
    assert_eq!(
        cfg.validate_section(Path::new("w.toml"), text)
            .map_err(|e| e.to_string()),
        Ok(())
    );
}

#[test]
fn mistakes_name_their_setting_and_line() {
    for (extra, says) in [
        (
            "boundary_records = 0",
            "w.toml:5:1: [source] boundary_records must be at least 1",
        ),
        (
            "grup = \"x\"",
            "w.toml:5:1: [source] kind = \"kafka\": unknown setting `grup`",
        ),
        (
            "properties = { \"group.id\" = \"x\" }",
            "`group.id` is set by tributary itself",
        ),
        ("include = [\"orders\"]", "must have the form db.table"),
        (
            "sasl_mechanism = \"PLAIN\"",
            "[source] sasl_mechanism is set but `username` is not",
        ),
    ] {
        let e = section(extra).expect_err(extra);
        assert!(e.contains(says), "{extra}: {e}");
    }
    for (topics, says) in [
        ("[]", "[source] topics must list topic names"),
        ("[\"^a(\"]", "[source] topics: `^a(`"),
        (
            "[\"^a\", \"b\"]",
            "a regular expression (`^...`) stands alone",
        ),
    ] {
        let text =
            format!("kind = \"kafka\"\nbrokers = [\"k:9092\"]\ngroup = \"g\"\ntopics = {topics}\n");
        let cfg: KafkaSourceConfig = toml::from_str(&text).unwrap();
        let e = cfg
            .validate_section(Path::new("w.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{topics}: {e}");
        assert!(e.starts_with("w.toml:4:"), "{e}");
    }
    let text = "kind = \"kafka\"\nbrokers = [\"k:9092\"]\ngroup = \" \"\ntopics = [\"t\"]\n";
    let cfg: KafkaSourceConfig = toml::from_str(text).unwrap();
    let e = cfg
        .validate_section(Path::new("w.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("w.toml:3:1: [source] group must name the consumer group"),
        "{e}"
    );
}

#[test]
fn a_worker_position_is_past_another_when_every_partition_is() {
    let at = |pairs: &[(&str, i64)]| Position::Kafka {
        offsets: Arc::new(
            pairs
                .iter()
                .map(|(p, o)| (p.to_string(), *o))
                .collect::<BTreeMap<_, _>>(),
        ),
    };
    let stored = at(&[("t/0", 10), ("t/1", 7)]);
    assert_eq!(stored.at_or_after(&at(&[("t/0", 10)])), Some(true));
    assert_eq!(stored.at_or_after(&at(&[("t/0", 11)])), Some(false));
    // A partition the checkpoint does not have is not covered by it.
    assert_eq!(stored.at_or_after(&at(&[("t/2", 1)])), Some(false));
    // It reads back from the checkpoint's JSON as itself.
    let json = serde_json::to_string(&stored).unwrap();
    assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), stored);
    assert_eq!(stored.to_string(), "kafka offsets t/0@10, t/1@7");
}
