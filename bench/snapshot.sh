#!/usr/bin/env bash
# Snapshot benchmark (not part of the test run): a MariaDB bench.orders of N rows,
# snapshotted by a fresh daemon into the null sink, the log sink and the Elasticsearch
# stand-in, each measured from the snapshot's start to its last chunk (as the daemon
# records them) with the daemon's peak RSS.
#
#   bench/snapshot.sh [N] [N_ES]   default N = 1000000 rows; N_ES = 100000 rows for the
#                                  stand-in (it indexes a few thousand documents a
#                                  second at best, and slows as an index grows)
#
# Writes bench/results/snapshot.json.
set -euo pipefail
N=${1:-1000000}
N_ES=${2:-100000}
ES_PORT=${TRIBUTARY_BENCH_ES_PORT:-19282}
cd "$(dirname "$0")/.."
bench_cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
}
. bench/lib.sh
ES=http://127.0.0.1:$ES_PORT

load() { # $1 = rows
  reset_bench_table
  "${M[@]}" -e "SET SESSION sql_log_bin = 0;
    INSERT INTO bench.orders SELECT seq, seq % 5000, ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'done'),
      (seq % 100000) / 100, CONCAT('order note ', seq), TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND,
      NULL FROM bench.seq_1_to_$1;
    ANALYZE TABLE bench.orders" >/dev/null
}

# Runs a daemon until the snapshot of bench.orders is done; prints
# "seconds rows peak_rss_kib".
snapshot_run() { # $1 = sink kind, $2 = expected rows
  local dir="$work/$1"; mkdir -p "$dir"
  write_connector "$1" "$dir" "kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9902
include = [\"bench.*\"]"
  target/release/tributary --log-format json run --connector "$dir/c.toml" 2> "$dir/stderr" &
  daemon=$!
  local status
  for _ in $(seq 1 3600); do
    sleep 0.5
    kill -0 "$daemon" 2>/dev/null || { cat "$dir/stderr" >&2; exit 1; }
    status=$(target/release/tributary status --connector "$dir/c.toml" 2>/dev/null || true)
    echo "$status" | grep -q '"status": "done"' && break
  done
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$daemon/status")
  kill "$daemon"; wait "$daemon" || true; daemon=
  echo "$status" | python3 -c "
import sys, json
s = json.load(sys.stdin)['snapshot']['bench.orders']
assert s['rows'] == $2, f\"snapshot emitted {s['rows']} rows, expected $2\"
print(round((s['finished_ms'] - s['started_ms']) / 1000, 2), s['rows'], $rss)"
}

declare -A secs rows rss
for sink in null log elasticsearch; do
  n=$N
  if [ "$sink" = elasticsearch ]; then
    n=$N_ES
    bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
    bash deploy/osmem.sh start "$ES_PORT" >/dev/null
  fi
  echo "loading $n rows..." >&2
  load "$n"
  read -r secs[$sink] rows[$sink] rss[$sink] < <(snapshot_run "$sink" "$n")
  echo "$sink: ${rows[$sink]} rows in ${secs[$sink]} s = $(python3 -c "print(int(${rows[$sink]} / ${secs[$sink]}))") rows/s, peak RSS $(( ${rss[$sink]} / 1024 )) MiB" >&2
done

mkdir -p bench/results
python3 - "$N" <<PY > bench/results/snapshot.json
import json, sys
runs = {}
for sink, s, r, m in [("null", ${secs[null]}, ${rows[null]}, ${rss[null]}),
                      ("log", ${secs[log]}, ${rows[log]}, ${rss[log]}),
                      ("elasticsearch", ${secs[elasticsearch]}, ${rows[elasticsearch]}, ${rss[elasticsearch]})]:
    runs[sink] = {"rows": r, "seconds": s, "rows_per_s": int(r / s), "peak_rss_mib": round(m / 1024, 1)}
print(json.dumps({"source": "mariadb", "table": "bench.orders", "chunk_rows": 10000, "runs": runs}, indent=2))
PY
cat bench/results/snapshot.json
