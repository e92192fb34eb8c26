//! Kafka workers (`[source] kind = "kafka"`) for tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::daemon_log;

/// A worker's connector file in `dir`: group `group` reading `topic` into `sinks`.
pub fn kafka_worker(dir: &Path, brokers: &str, group: &str, topic: &str, sinks: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        "name = \"worker\"\n[source]\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ngroup = \"{group}\"\ntopics = [\"{topic}\"]\nrequest_timeout_secs = 5\nboundary_records = 100\n\n{sinks}\n[state]\ndir = \"{}\"\n",
        dir.join("state").display()
    );
    let path = dir.join("connector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until the worker holds partitions (it joined the group).
pub async fn wait_assigned(c: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = daemon_log(c);
        if text.contains("kafka partitions assigned") {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("worker exited early ({status}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "worker got no partitions:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
