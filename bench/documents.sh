#!/usr/bin/env bash
# Joined documents benchmark (not part of the test run): on MariaDB, customers with
# their region (an embed), 10 orders each (a nest) and 3 items per order (a nest in the
# nest), as one [[document]]:
#   1. the initial build: a fresh daemon snapshots the four tables into the document
#      state and builds every document into the null sink (documents/s, from start to
#      the last document built, as `tributary status` shows it);
#   2. child changes into the null sink: order and item updates, each touching one
#      document, in transactions of 1,000, streamed by `run --until` from the stored
#      checkpoint (changes/s, the target: 100,000 on 2 cores);
#   3. the same into the Elasticsearch stand-in (osmem), which indexes a few thousand
#      documents a second at best;
#   4. a region rename that changes every customer's document (seconds);
# with each run's peak RSS (target: 128 MiB) and the state's size on disk.
#
#   bench/documents.sh [CUSTOMERS] [CHANGES] [ES_CHANGES]
#       defaults 100000 customers (1,000,000 orders, 3,000,000 items), 300000 child
#       changes into the null sink, 10000 into the stand-in
#
# DOCUMENTS_BENCH_KEEP=dir keeps the connector (file, state) there afterwards, to
# profile a further run. Pinned: snapshot_chunk_rows 10000, checkpoint_interval_ms 200
# (which the daemon raises to its floor for documents, 1,000 ms), the document page
# (1,000, in the code). Writes bench/results/documents.json.
set -euo pipefail
C=${1:-100000}
CHANGES=${2:-300000}
ES_CHANGES=${3:-10000}
ES_PORT=${TRIBUTARY_BENCH_ES_PORT:-19282}
cd "$(dirname "$0")/.."
bench_cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
}
. bench/lib.sh
O=$((C * 10))
I=$((O * 3))

echo "loading $C customers, $O orders, $I items..." >&2
"${M[@]}" -e "RESET MASTER; DROP DATABASE IF EXISTS bench; CREATE DATABASE bench;
  CREATE TABLE bench.regions (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, code CHAR(2) NOT NULL);
  CREATE TABLE bench.customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, region_id INT);
  CREATE TABLE bench.orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(10,2) NOT NULL,
    status VARCHAR(20) NOT NULL, created_at DATETIME(6) NOT NULL, KEY (customer_id));
  CREATE TABLE bench.order_items (order_id INT NOT NULL, line INT NOT NULL, sku VARCHAR(20) NOT NULL,
    qty INT NOT NULL, price DECIMAL(10,2) NOT NULL, PRIMARY KEY (order_id, line));
  SET SESSION sql_log_bin = 0;
  INSERT INTO bench.regions VALUES (1, 'North', 'NO'), (2, 'South', 'SO');
  INSERT INTO bench.customers SELECT seq, CONCAT('customer ', seq), 1 FROM bench.seq_1_to_$C;
  INSERT INTO bench.orders SELECT seq, 1 + (seq - 1) % $C, (seq % 10000) / 100, 'new',
    TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND FROM bench.seq_1_to_$O;
  INSERT INTO bench.order_items SELECT 1 + (seq - 1) % $O, seq, CONCAT('sku', seq % 5000), 1 + seq % 5, 9.99
    FROM bench.seq_1_to_$I;
  ANALYZE TABLE bench.regions, bench.customers, bench.orders, bench.order_items" >/dev/null

document_toml='
[[document]]
name = "customers"
root = "bench.customers"

[[document.embed]]
field = "region"
from = "bench.regions"
on = { region_id = "id" }
columns = ["name", "code"]

[[document.nest]]
field = "orders"
from = "bench.orders"
on = { id = "customer_id" }
columns = ["id", "amount", "status", "created_at"]
order_by = ["id"]

[[document.nest.nest]]
field = "items"
from = "bench.order_items"
on = { id = "order_id" }
columns = ["sku", "qty", "price"]'

dir=$work/documents
mkdir -p "$dir"
source="kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9905
include = [\"bench.*\"]
snapshot = \"initial\"
snapshot_chunk_rows = 10000"
# The null sink; the document sections follow the sink's keys.
sink_toml_extra=$document_toml write_connector null "$dir" "$source"

# 1. The initial build.
echo "initial build..." >&2
start=$(date +%s.%N)
"$TRIBUTARY" --log-format json run --connector "$dir/c.toml" 2> "$dir/stderr-build" &
daemon=$!
built=0
for _ in $(seq 1 7200); do
  sleep 0.5
  kill -0 "$daemon" 2>/dev/null || { cat "$dir/stderr-build" >&2; exit 1; }
  status=$("$TRIBUTARY" status --connector "$dir/c.toml" 2>/dev/null || true)
  read -r built waiting done < <(echo "$status" | python3 -c "
import sys, json
try:
    s = json.load(sys.stdin)
except Exception:
    print(0, 1, 0); sys.exit()
d = (s.get('documents') or {}).get('customers') or {}
snap = s.get('snapshot') or {}
done = len(snap) == 4 and all(t.get('status') == 'done' for t in snap.values())
print(d.get('built', 0), d.get('waiting', 1), int(done))") || true
  [ "${done:-0}" = 1 ] && [ "${waiting:-1}" = 0 ] && [ "${built:-0}" -ge "$C" ] && break
done
end=$(date +%s.%N)
build_rss=$(awk '/VmHWM/ {print $2}' "/proc/$daemon/status")
kill "$daemon"; wait "$daemon" || true; daemon=
[ "$built" -ge "$C" ] || { echo "the build ended with $built of $C documents" >&2; exit 1; }
build_secs=$(python3 -c "print(round($end - $start, 2))")
state_mib=$(du -sm "$dir/state/documents" | cut -f1)
echo "initial build: $C documents from $((C + O + I)) rows in $build_secs s, peak RSS $((build_rss / 1024)) MiB, state $state_mib MiB" >&2

# Runs the connector from its checkpoint up to the binlog's end; prints
# "seconds peak_rss_kib cpu_seconds changes".
until_end() {
  local pos; pos=$("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1 ":" $2}')
  /usr/bin/time -f "%e %M %U %S" -o "$dir/time" "$TRIBUTARY" --log-format json run \
    --connector "$dir/c.toml" --until "$pos" 2> "$dir/stderr-run" || { cat "$dir/stderr-run" >&2; exit 1; }
  local changes; changes=$(grep '"stopped"' "$dir/stderr-run" | python3 -c "import sys,json; print(json.loads(sys.stdin.readline())['fields']['changes'])")
  read -r secs rss user sys < "$dir/time"
  echo "$secs $rss $(python3 -c "print(round($user + $sys, 2))") $changes"
}

# Child changes: order updates and item updates by turns, 1,000 consecutive ids each
# (each row of another customer), $1 changes in all.
child_changes() {
  python3 - "$1" "$O" "$I" <<'PY' | "${M[@]}"
import sys
n, orders, items = map(int, sys.argv[1:4])
for k, a in enumerate(range(0, n, 1000)):
    if k % 2 == 0:
        lo = 1 + (a // 2) % (orders - 1000)
        print(f"UPDATE bench.orders SET amount = amount + 1 WHERE id BETWEEN {lo} AND {lo + 999};")
    else:
        lo = 1 + (a // 2) % (items - 1000)
        print(f"UPDATE bench.order_items SET qty = qty + 1 WHERE line BETWEEN {lo} AND {lo + 999};")
PY
}

# 2. Child changes into the null sink.
echo "child changes into the null sink..." >&2
child_changes "$CHANGES"
read -r null_secs null_rss null_cpu null_changes < <(until_end)
[ "$null_changes" -eq "$CHANGES" ] || { echo "streamed $null_changes changes, expected $CHANGES" >&2; exit 1; }
echo "null: $CHANGES child changes in $null_secs s = $(python3 -c "print(int($CHANGES / $null_secs))")/s, peak RSS $((null_rss / 1024)) MiB" >&2

# 3. Into the stand-in (the documents only: tables = "none").
echo "child changes into the stand-in..." >&2
bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
bash deploy/osmem.sh start "$ES_PORT" >/dev/null
cp "$dir/c.toml" "$dir/c-null.toml"
python3 - "$dir/c.toml" "$ES_PORT" "$dir" <<'PY'
import sys
path, port, d = sys.argv[1:4]
text = open(path).read().replace('kind = "null"', f'kind = "elasticsearch"\nurls = ["http://127.0.0.1:{port}"]\ndead_letter_dir = "{d}/dead-letters"\ntables = "none"', 1)
open(path, "w").write(text)
PY
child_changes "$ES_CHANGES"
read -r es_secs es_rss es_cpu es_changes < <(until_end)
echo "stand-in: $es_changes child changes in $es_secs s = $(python3 -c "print(int($es_changes / $es_secs))")/s, peak RSS $((es_rss / 1024)) MiB" >&2
cp "$dir/c-null.toml" "$dir/c.toml"

# 4. A region rename: every customer's document.
echo "region rename..." >&2
"${M[@]}" -e "UPDATE bench.regions SET name = 'Nord' WHERE id = 1"
read -r fan_secs fan_rss fan_cpu _ < <(until_end)
echo "rename: $C documents in $fan_secs s, peak RSS $((fan_rss / 1024)) MiB" >&2
state_mib_end=$(du -sm "$dir/state/documents" | cut -f1)

mkdir -p bench/results
python3 - <<PY > bench/results/documents.json
import json
c, o, i = $C, $O, $I
print(json.dumps({
  "document": "customers: region (embed), orders (nest), items (nest in orders)",
  "customers": c, "orders": o, "items": i,
  "initial_build": {"documents": c, "rows": c + o + i, "seconds": $build_secs,
                    "documents_per_s": int(c / $build_secs), "peak_rss_mib": round($build_rss / 1024, 1)},
  "child_changes_null": {"changes": $CHANGES, "seconds": $null_secs, "changes_per_s": int($CHANGES / $null_secs),
                         "cpu_seconds": $null_cpu, "peak_rss_mib": round($null_rss / 1024, 1)},
  "child_changes_stand_in": {"changes": $es_changes, "seconds": $es_secs, "changes_per_s": int($es_changes / $es_secs),
                             "cpu_seconds": $es_cpu, "peak_rss_mib": round($es_rss / 1024, 1)},
  "region_rename": {"documents": c, "seconds": $fan_secs, "peak_rss_mib": round($fan_rss / 1024, 1)},
  "state_mib": {"after_build": $state_mib, "at_end": $state_mib_end},
}, indent=2, sort_keys=True))
PY
cat bench/results/documents.json
if [ -n "${DOCUMENTS_BENCH_KEEP:-}" ]; then
  rm -rf "$DOCUMENTS_BENCH_KEEP"; cp -r "$dir" "$DOCUMENTS_BENCH_KEEP"
  # The kept connector's paths point into the copy, not at the run's directory (which
  # goes with the run): a further run resumes from the kept state.
  for f in "$DOCUMENTS_BENCH_KEEP"/c*.toml; do sed -i "s#$dir#$DOCUMENTS_BENCH_KEEP#g" "$f"; done
fi
