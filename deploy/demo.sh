#!/usr/bin/env bash
# The main job on a fresh Debian machine: a local MariaDB (deploy/mariadb.sh), a demo
# table with a writer changing it, and tributary streaming every change into a log
# stream (data/demo/log) and to this terminal.
#
#   bash deploy/demo.sh            runs for DEMO_SECONDS (default 30; 0 = until Ctrl-C)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
seconds=${DEMO_SECONDS:-30}
port=33061

bash deploy/mariadb.sh start "$port" >/dev/null
echo "building tributary (release)..." >&2
cargo build --release --quiet
M=(mariadb -h127.0.0.1 -P"$port" -uadmin -padmin)
"${M[@]}" -e "CREATE DATABASE IF NOT EXISTS demo;
  CREATE TABLE IF NOT EXISTS demo.orders (
    id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
    customer VARCHAR(100) NOT NULL,
    status ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new',
    amount DECIMAL(12,2) NOT NULL,
    items JSON,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))"

rm -rf data/demo
mkdir -p data/demo
# The demo connector plus a stdout sink so the events show up here.
sed 's|^\[state\]|[[sink]]\nkind = "stdout"\n\n[state]|' connectors/demo-mariadb.toml > data/demo/connector.toml
target/release/tributary run --connector data/demo/connector.toml 2> data/demo/daemon.log &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q "streaming binlog" data/demo/daemon.log 2>/dev/null && break; sleep 0.2; done
grep -q "streaming binlog" data/demo/daemon.log || { cat data/demo/daemon.log >&2; exit 1; }
echo "tributary is streaming demo.orders; changes follow (daemon log: data/demo/daemon.log)" >&2

names=(Ada Grace Linus Margaret Ken Barbara)
i=0
while [ "$seconds" = 0 ] || [ "$i" -lt "$seconds" ]; do
  c=${names[$((i % ${#names[@]}))]}
  "${M[@]}" -e "INSERT INTO demo.orders (customer, amount, items) VALUES ('$c', $((i * 7 % 500)).$((i % 100)), '{\"sku\": \"A-$i\", \"qty\": $((i % 5 + 1))}');
    UPDATE demo.orders SET status = 'paid' WHERE status = 'new' AND id % 2 = 0;
    DELETE FROM demo.orders WHERE status = 'paid' AND id % 5 = 0;"
  i=$((i + 1))
  sleep 1
done
sleep 1
kill -TERM $daemon; wait $daemon || true
trap - EXIT
echo >&2
target/release/tributary log cat data/demo/log > /dev/null
echo "the log stream in data/demo/log holds every change; read it with: target/release/tributary log cat data/demo/log" >&2
