use std::path::Path;

use super::config::{topic_name, KafkaSinkConfig};

fn section(extra: &str) -> (String, Result<(), String>) {
    let text = format!("kind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\n{extra}\n");
    let cfg: KafkaSinkConfig = toml::from_str(&text).expect("parses");
    let checked = cfg
        .validate_section(Path::new("c.toml"), &text)
        .map_err(|e| e.to_string());
    (text, checked)
}

#[test]
fn topic_names_fill_the_template_and_replace_what_kafka_refuses() {
    let parts = [
        ("connector", "shop"),
        ("db", "sales db"),
        ("table", "orders/2024"),
    ];
    assert_eq!(
        topic_name("{connector}.{db}.{table}", &parts),
        "shop.sales_db.orders_2024"
    );
    assert_eq!(topic_name("all-changes", &parts), "all-changes");
    assert_eq!(topic_name(&"x".repeat(300), &parts).len(), 249);
}

#[test]
fn the_defaults_validate() {
    let (_, checked) = section("");
    assert_eq!(checked, Ok(()));
}

#[test]
fn mistakes_name_their_setting_and_line() {
    for (extra, says) in [
        (
            "topic = \"{schema}.{table}\"",
            "c.toml:3:1: [[sink]] topic: `{schema}` is not one of {connector}, {db}, {table}",
        ),
        (
            "topic = \"a b\"",
            "Kafka topic names take letters, digits, `.`, `_` and `-`, not ` `",
        ),
        (
            "document_topic = \"{connector}.{table}\"",
            "`{table}` is not one of {connector}, {document}",
        ),
        (
            "progress_topic = \"p.{connector}\"",
            "is a fixed name: no `{connector}`",
        ),
        (
            "compression = \"brotli\"",
            "c.toml:3:1: [[sink]] compression must be one of \"lz4\", \"zstd\", \"snappy\", \"gzip\", \"none\" (got \"brotli\")",
        ),
        (
            "partitions = 0",
            "c.toml:3:1: [[sink]] partitions and replication_factor must be at least 1",
        ),
        (
            "security_protocol = \"tls\"",
            "use plaintext, ssl, sasl_plaintext or sasl_ssl",
        ),
        (
            "sasl_mechanism = \"GSSAPI\"\nusername = \"u\"",
            "use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        ),
        (
            "sasl_mechanism = \"PLAIN\"",
            "sasl_mechanism is set but `username` is not",
        ),
        (
            "properties = { \"transactional.id\" = \"x\" }",
            "`transactional.id` is set by tributary itself",
        ),
        (
            "tombstone = true",
            "c.toml:3:1: [[sink]] kind = \"kafka\": unknown setting `tombstone`",
        ),
    ] {
        let (_, checked) = section(extra);
        let e = checked.expect_err(extra);
        assert!(e.contains(says), "{extra}: {e}");
    }
    let text = "kind = \"kafka\"\nbrokers = [\"kafka1\"]\n";
    let cfg: KafkaSinkConfig = toml::from_str(text).unwrap();
    let e = cfg
        .validate_section(Path::new("c.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least one broker as host:port"), "{e}");
}

#[test]
fn the_password_comes_from_its_environment_variable() {
    let text = "kind = \"kafka\"\nbrokers = [\"k:9092\"]\nsasl_mechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword_env = \"TRIBUTARY_TEST_KAFKA_PW_UNSET\"\n";
    let cfg: KafkaSinkConfig = toml::from_str(text).unwrap();
    let e = cfg.client().expect_err("the variable is not set");
    assert!(
        e.contains("TRIBUTARY_TEST_KAFKA_PW_UNSET, which is not set"),
        "{e}"
    );
}
