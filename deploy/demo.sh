#!/usr/bin/env bash
# The main job on a fresh Debian machine: a local MariaDB (deploy/mariadb.sh), the
# Elasticsearch stand-in (deploy/osmem.sh), a demo table with a writer changing it, and
# tributary syncing every change into the index demo_orders, a log stream
# (data/demo/log) and this terminal. Ends with a search against the index.
#
#   bash deploy/demo.sh            runs for DEMO_SECONDS (default 30; 0 = until Ctrl-C)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
seconds=${DEMO_SECONDS:-30}
port=23061

bash deploy/mariadb.sh start "$port" >/dev/null
bash deploy/osmem.sh start 19200 >/dev/null
es=http://127.0.0.1:19200
# A fresh playground: the demo drops its own index (tributary itself never drops one).
curl -s -XDELETE "$es/demo_orders_v1" >/dev/null || true
echo "building tributary (release)..." >&2
cargo build --release --quiet
M=(mariadb -h127.0.0.1 -P"$port" -uadmin -padmin)
"${M[@]}" -e "CREATE DATABASE IF NOT EXISTS demo; DROP TABLE IF EXISTS demo.orders;
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
echo >&2
rows=$("${M[@]}" -N -e "SELECT COUNT(*) FROM demo.orders")
docs=$(curl -s "$es/demo_orders/_count" | python3 -c "import sys,json; print(json.load(sys.stdin)['count'])")
echo "demo.orders has $rows rows; the index demo_orders has $docs documents" >&2
echo "search: paid orders, newest first ($es/demo_orders/_search)" >&2
curl -s "$es/demo_orders/_search" -H 'content-type: application/json' \
  -d '{"size": 3, "query": {"term": {"status": "paid"}}, "sort": [{"id": "desc"}]}' \
  | python3 -c "import sys,json; [print(json.dumps(h['_source'])) for h in json.load(sys.stdin)['hits']['hits']]"
