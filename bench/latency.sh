#!/usr/bin/env bash
# Commit -> acknowledged latency at about 10,000 changes/s (not part of the test run).
#
#   bench/latency.sh [SECONDS]      default 20 s of writing per run
#
# LINGER_MS (default 50) and CHECKPOINT_MS (default 200) set the sink's linger_ms and
# [pipeline] checkpoint_interval_ms of every run (both pinned, defaults as today).
#
# For MariaDB and PostgreSQL, into the log sink and into the instant-answer endpoint
# (examples/instant_es.rs, the Elasticsearch sink's ceiling without a cluster's own
# time): the daemon runs caught up, a writer commits 100-row inserts, one every 10 ms
# (paced: 10,000 changes/s), for SECONDS, and once every change is acknowledged the daemon's
# tributary_sink_ack_latency_seconds gives p50/p99 from commit (PostgreSQL: exact commit
# times) and from read (both; MariaDB's binlog commit times are whole seconds). For
# MariaDB into the endpoint, the endpoint also measures from the row's own
# `created_at` (NOW(6), the writer's clock) to the document's arrival: commit ->
# arrival, with the binlog's delay included. Pinned: snapshot = "never", the log
# sink's fsync = "checkpoint", the Elasticsearch sink's linger_ms, concurrency = 2,
# batch_docs = 1000, checkpoint_interval_ms. Writes bench/results/latency.json.
set -euo pipefail
SECONDS_WRITING=${1:-20}
PGPORT_BENCH=${TRIBUTARY_BENCH_PG_PORT:-25381}
INSTANT_PORT=${TRIBUTARY_BENCH_INSTANT_PORT:-19283}
METRICS_PORT=${TRIBUTARY_BENCH_METRICS_PORT:-19291}
LINGER_MS=${LINGER_MS:-50}
CHECKPOINT_MS=${CHECKPOINT_MS:-200}
ROWS=100 # per statement (one transaction)
PAUSE=0.01 # between statements
cd "$(dirname "$0")/.."
bench_cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  [ -n "${instant:-}" ] && kill "$instant" 2>/dev/null || true
}
. bench/lib.sh
start_instant_es "$INSTANT_PORT" --latency-field created_at
start_bench_postgres
statements=$(python3 -c "print(int($SECONDS_WRITING / $PAUSE))")
changes=$((statements * ROWS))

# The writer's SQL for $1 = mariadb | postgres.
writer_sql() {
  python3 - "$1" "$statements" "$ROWS" "$PAUSE" <<'PY'
import sys
kind, n, rows, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Paced: statement t sleeps until t0 + (t+1) * pause, so the rate holds at rows/pause
# whatever each insert takes (as long as the server keeps up).
if kind == "postgres":
    print("SET synchronous_commit = on;")
    print("SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset")
else:
    print("SET @t0 = UNIX_TIMESTAMP(NOW(6));")
for t in range(n):
    a = t * rows + 1; b = a + rows - 1
    due = f"{(t + 1) * float(pause):.3f}"
    if kind == "mariadb":
        print(f"INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b}; DO SLEEP(GREATEST(0, @t0 + {due} - UNIX_TIMESTAMP(NOW(6))));")
    else:
        print(f"INSERT INTO bench.orders SELECT i, i % 5000, 'new', i * 1.25, 'order note ' || i, clock_timestamp(), NULL FROM generate_series({a}, {b}) i; SELECT pg_sleep(GREATEST(0, :t0 + {due} - extract(epoch FROM clock_timestamp())));")
PY
}

# The acknowledged changes' latency quantile $2 (0.5 | 0.99) from $1 (commit | read),
# in ms, from the daemon's metrics; and the count.
metric() {
  curl -s "127.0.0.1:$METRICS_PORT/metrics" | python3 -c '
import sys, re
from_, q = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    m = re.match(r"tributary_sink_ack_latency_seconds(_count)?\{(.*)\} (\S+)", line)
    if not m or f"from=\"{from_}\"" not in m.group(2):
        continue
    if q == "count" and m.group(1):
        print(int(float(m.group(3)))); break
    if q != "count" and not m.group(1) and f"quantile=\"{q}\"" in m.group(2):
        print(round(float(m.group(3)) * 1000, 1)); break
else:
    print(0)' "$1" "$2"
}

# One run: source $1, sink $2 (log | elasticsearch); appends a JSON line to $work/runs.
run() {
  local dir="$work/$1-$2"; mkdir -p "$dir"
  local source
  if [ "$1" = mariadb ]; then
    reset_bench_table
    source="kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9903
include = [\"bench.*\"]
start = \"current\"
snapshot = \"never\""
  else
    reset_pg_bench_table bench_latency bench_latency
    source=$(pg_source_toml bench_latency bench_latency)
  fi
  local extra=""
  [ "$2" = log ] && extra='fsync = "checkpoint"'
  [ "$2" = elasticsearch ] && extra="linger_ms = $LINGER_MS
concurrency = 2
batch_docs = 1000"
  sink_toml_extra="$extra" write_connector "$2" "$dir" "$source"
  printf '\n[http]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >> "$dir/c.toml"
  curl -fs -XPOST "$ES/_instant/reset" >/dev/null
  "$TRIBUTARY" run --connector "$dir/c.toml" 2> "$dir/stderr" &
  daemon=$!
  until grep -q "streaming" "$dir/stderr"; do
    kill -0 "$daemon" 2>/dev/null || { cat "$dir/stderr" >&2; exit 1; }
    sleep 0.2
  done
  echo "$1 -> $2: writing $changes changes for about ${SECONDS_WRITING}s..." >&2
  local start end
  start=$(date +%s.%N)
  if [ "$1" = mariadb ]; then writer_sql mariadb | "${M[@]}" -D bench >/dev/null
  else writer_sql postgres | "${P[@]}" >/dev/null; fi
  end=$(date +%s.%N)
  local deadline=$((SECONDS + 120)) count=0
  while [ "$count" -lt "$changes" ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.5
    count=$(metric read count)
  done
  [ "$count" -ge "$changes" ] || { echo "$1 -> $2: only $count of $changes changes acknowledged" >&2; exit 1; }
  local stats; stats=$(curl -fs "$ES/_instant/stats")
  python3 - "$1" "$2" "$changes" "$start" "$end" "$(metric commit 0.5)" "$(metric commit 0.99)" \
    "$(metric read 0.5)" "$(metric read 0.99)" "$stats" >> "$work/runs" <<'PY'
import json, sys
source, sink, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
start, end = float(sys.argv[4]), float(sys.argv[5])
c50, c99, r50, r99 = map(float, sys.argv[6:10])
stats = json.loads(sys.argv[10])
r = {"source": source, "sink": sink, "changes": n, "rate_changes_per_s": round(n / (end - start)),
     "read_to_ack_ms": {"p50": r50, "p99": r99}}
if source == "postgres":
    r["commit_to_ack_ms"] = {"p50": c50, "p99": c99}
if sink == "elasticsearch" and source == "mariadb":
    l = stats["latency_ms"]
    r["row_time_to_arrival_ms"] = {"p50": l.get("p50"), "p99": l.get("p99"), "count": l.get("count")}
print(json.dumps(r))
PY
  kill -TERM "$daemon"; wait "$daemon" || true; daemon=
  if [ "$1" = postgres ]; then
    "${P[@]}" -c "SELECT pg_drop_replication_slot('bench_latency')" >/dev/null
  fi
}

ES_URL=$ES
for source in mariadb postgres; do
  for sink in log elasticsearch; do
    ES=$ES_URL run "$source" "$sink"
  done
done

python3 - "$work/runs" "$LINGER_MS" "$CHECKPOINT_MS" <<'PY'
import json, sys, time, os, platform
runs = [json.loads(l) for l in open(sys.argv[1])]
linger, checkpoint = int(sys.argv[2]), int(sys.argv[3])
res = {"benchmark": "latency", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "machine": f"{os.cpu_count()} cores, {platform.machine()}",
       "writer": "100-row inserts paced to one every 10 ms",
       "settings": {"snapshot": "never", "log_fsync": "checkpoint", "linger_ms": linger, "concurrency": 2, "batch_docs": 1000, "checkpoint_interval_ms": checkpoint},
       "target": "p50 under 20 ms, p99 under 50 ms"}
for r in runs:
    res.setdefault(r.pop("source"), {})[r.pop("sink")] = r
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/latency.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"{'':30}{'changes/s':>10}{'commit p50/p99 ms':>20}{'read p50/p99 ms':>18}{'row time p50/p99':>18}")
for source in ("mariadb", "postgres"):
    for sink in ("log", "elasticsearch"):
        r = res[source][sink]
        c = r.get("commit_to_ack_ms"); rd = r["read_to_ack_ms"]; a = r.get("row_time_to_arrival_ms")
        fmt = lambda x: f"{x['p50']}/{x['p99']}" if x else "-"
        label = f"{source} -> {'instant endpoint' if sink == 'elasticsearch' else 'log'}"
        print(f"{label:30}{r['rate_changes_per_s']:>10}{fmt(c):>20}{fmt(rd):>18}{fmt(a):>18}")
PY
