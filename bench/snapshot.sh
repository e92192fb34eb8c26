#!/usr/bin/env bash
# Snapshot benchmark (not part of the test run): bench.orders of N rows on MariaDB and
# on PostgreSQL, snapshotted by a fresh daemon into the null sink, the log sink and the
# Elasticsearch stand-in, each measured from the snapshot's start to its last chunk (as
# the daemon records them) with the daemon's peak RSS.
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
PGPORT_BENCH=${TRIBUTARY_BENCH_PG_PORT:-25381}
cd "$(dirname "$0")/.."
bench_cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
}
. bench/lib.sh
ES=http://127.0.0.1:$ES_PORT
start_bench_postgres

load_postgres() { # $1 = rows
  reset_pg_bench_table bench_snap
  "${P[@]}" -c "INSERT INTO bench.orders SELECT g, g % 5000, (ARRAY['new','paid','shipped','done'])[1 + g % 4],
      (g % 100000) / 100.0, 'order note ' || g, TIMESTAMP '2024-01-01 00:00:00' + g * INTERVAL '1 second',
      NULL FROM generate_series(1, $1) g" -c "ANALYZE bench.orders" >/dev/null
}

source_toml_postgres() { # $1 = sink kind
  pg_source_toml "bench_snap_$1" bench_snap initial
}

source_toml_mariadb() {
  echo "kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9902
include = [\"bench.*\"]
snapshot = \"initial\""
}

load_mariadb() { # $1 = rows
  reset_bench_table
  "${M[@]}" -e "SET SESSION sql_log_bin = 0;
    INSERT INTO bench.orders SELECT seq, seq % 5000, ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'done'),
      (seq % 100000) / 100, CONCAT('order note ', seq), TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND,
      NULL FROM bench.seq_1_to_$1;
    ANALYZE TABLE bench.orders" >/dev/null
}

# Runs a daemon until the snapshot of bench.orders is done; prints
# "seconds rows peak_rss_kib".
snapshot_run() { # $1 = source, $2 = sink kind, $3 = expected rows
  local dir="$work/$1-$2"; mkdir -p "$dir"
  write_connector "$2" "$dir" "$("source_toml_$1" "$2")"
  "$TRIBUTARY" --log-format json run --connector "$dir/c.toml" 2> "$dir/stderr" &
  daemon=$!
  local status
  for _ in $(seq 1 3600); do
    sleep 0.5
    kill -0 "$daemon" 2>/dev/null || { cat "$dir/stderr" >&2; exit 1; }
    status=$("$TRIBUTARY" status --connector "$dir/c.toml" 2>/dev/null || true)
    echo "$status" | grep -q '"status": "done"' && break
  done
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$daemon/status")
  kill "$daemon"; wait "$daemon" || true; daemon=
  echo "$status" | python3 -c "
import sys, json
s = json.load(sys.stdin)['snapshot']['bench.orders']
assert s['rows'] == $3, f\"snapshot emitted {s['rows']} rows, expected $3\"
print(round((s['finished_ms'] - s['started_ms']) / 1000, 2), s['rows'], $rss)"
}

declare -A secs rows rss
for source in mariadb postgres; do
  for sink in null log elasticsearch; do
    n=$N
    if [ "$sink" = elasticsearch ]; then
      n=$N_ES
      bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
      bash deploy/osmem.sh start "$ES_PORT" >/dev/null
    fi
    echo "loading $n rows into $source..." >&2
    "load_$source" "$n"
    k=$source-$sink
    read -r secs[$k] rows[$k] rss[$k] < <(snapshot_run "$source" "$sink" "$n")
    echo "$source -> $sink: ${rows[$k]} rows in ${secs[$k]} s = $(python3 -c "print(int(${rows[$k]} / ${secs[$k]}))") rows/s, peak RSS $(( ${rss[$k]} / 1024 )) MiB" >&2
  done
done

mkdir -p bench/results
{
  for k in "${!secs[@]}"; do echo "$k ${secs[$k]} ${rows[$k]} ${rss[$k]}"; done
} | python3 -c "
import json, sys
sources = {}
for line in sys.stdin:
    k, s, r, m = line.split()
    source, sink = k.split('-', 1)
    s, r, m = float(s), int(r), int(m)
    sources.setdefault(source, {})[sink] = {'rows': r, 'seconds': s, 'rows_per_s': int(r / s), 'peak_rss_mib': round(m / 1024, 1)}
print(json.dumps({'table': 'bench.orders', 'chunk_rows': 10000, 'sources': sources}, indent=2, sort_keys=True))
" > bench/results/snapshot.json
cat bench/results/snapshot.json
