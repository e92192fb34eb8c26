#!/usr/bin/env bash
# The Elasticsearch sink's own ceiling (not part of the test run): MariaDB and
# PostgreSQL -> Elasticsearch sink into the instant-answer endpoint
# (examples/instant_es.rs), which keeps every document with its version and answers
# each bulk item as a cluster would, as fast as it can parse. The stand-in of
# bench/elasticsearch_sync.sh bounds every figure at a few thousand documents/s; this
# measures what tributary itself can send.
#
#   bench/es_ceiling.sh [N]     default N = 1000000 row changes per source
#   SOURCES="mariadb" LEVELS="1" bench/es_ceiling.sh 500000   a part of it (an A/B)
#
# Loads N changes (half inserts, 40% updates, 10% deletes, transactions of 1000) into
# bench.orders on each source, then streams them (snapshot = "never", up to the end of
# the load) with the sink's `concurrency` at 1, 2 and 4 (batch_docs = 1000,
# batch_bytes = 5 MiB, linger_ms = 50 pinned), each into an emptied endpoint, and
# checks that the index then holds exactly the table's rows. Prints changes/s, peak
# RSS, tributary's CPU seconds, the endpoint's and the source server's (mariadbd's
# whole process; PostgreSQL's walsender serving the run), bulk bytes per change: the
# three share the 2 cores, so their CPU per change bounds the rate. Writes
# bench/results/es_ceiling.json.
set -euo pipefail
N=${1:-1000000}
ES_PORT=${TRIBUTARY_BENCH_INSTANT_PORT:-19283}
PGPORT_BENCH=${TRIBUTARY_BENCH_PG_PORT:-25381}
cd "$(dirname "$0")/.."
bench_cleanup() {
  [ -n "${instant:-}" ] && kill "$instant" 2>/dev/null || true
}
. bench/lib.sh
start_instant_es "$ES_PORT"
start_bench_postgres
inserts=$((N / 2)); updates=$((N * 4 / 10)); deletes=$((N - inserts - updates))
expected=$N
read -r -a levels <<< "${LEVELS:-1 2 4}"
sources=" ${SOURCES:-mariadb postgres} "

stats() { curl -fs "$ES/_instant/stats"; }
# CPU seconds mariadbd has used so far.
mariadbd_cpu() {
  cpu_seconds_of "$(pgrep -f "mariadbd.*--port=$PORT" | head -1)"
}

# One measured run into an emptied endpoint at concurrency $2 for source $1; appends
# a JSON line of its figures to $work/runs.
measure() { # $1 = mariadb | postgres, $2 = concurrency, $3 = rows in the table
  curl -fs -XPOST "$ES/_instant/reset" >/dev/null
  rm -rf "$work/elasticsearch"
  local before after server
  before=$(stats)
  if [ "$1" = postgres ]; then walsender_start tributary; else server=$(mariadbd_cpu); fi
  read -r secs rss cpu < <(sink_toml_extra="concurrency = $2
batch_docs = 1000
batch_bytes = 5242880
linger_ms = 50" run_tributary elasticsearch)
  after=$(stats)
  if [ "$1" = postgres ]; then
    server=$(walsender_stop tributary)
  else
    server=$(python3 -c "print(round($(mariadbd_cpu) - $server, 2))")
  fi
  python3 - "$1" "$2" "$3" "$N" "$secs" "$rss" "$cpu" "$before" "$after" "$server" >> "$work/runs" <<'PY'
import json, sys
source, conc, rows, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
secs, rss, cpu = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
before, after = json.loads(sys.argv[8]), json.loads(sys.argv[9])
server = float(sys.argv[10])
docs = after["indexes"].get("bench_orders_v1", {}).get("documents")
if docs != rows:
    sys.exit(f"{source}, concurrency {conc}: the index holds {docs} documents, the table {rows} rows")
print(json.dumps({"source": source, "concurrency": conc, "seconds": secs,
    "changes_per_s": round(n / secs), "peak_rss_mib": round(rss / 1024, 1),
    "tributary_cpu_s": cpu, "endpoint_cpu_s": round(after["cpu_seconds"] - before["cpu_seconds"], 2),
    "server_cpu_s": server,
    "bulk_requests": after["bulk_requests"], "bulk_items": after["items"],
    "bulk_bytes_per_change": round(after["bulk_bytes"] / n, 1)}))
PY
}

# --- MariaDB ---------------------------------------------------------------------
if [[ $sources == *" mariadb "* ]]; then
echo "MariaDB: loading $N changes ($inserts inserts, $updates updates, $deletes deletes)..." >&2
reset_bench_table
mixed_load_sql mariadb "$inserts" "$updates" "$deletes" | "${M[@]}" -D bench
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
rows=$("${M[@]}" -N -e "SELECT COUNT(*) FROM bench.orders")
for c in "${levels[@]}"; do
  echo "MariaDB -> instant endpoint, concurrency $c..." >&2
  measure mariadb "$c" "$rows"
done
fi

# --- PostgreSQL ------------------------------------------------------------------
if [[ $sources == *" postgres "* ]]; then
echo "PostgreSQL: loading $N changes..." >&2
reset_pg_bench_table bench_ceiling "${levels[@]/#/bench_ceiling_}"
mixed_load_sql postgres "$inserts" "$updates" "$deletes" | "${P[@]}"
until=$("${P[@]}" -tA -c "SELECT pg_current_wal_insert_lsn()")
rows=$("${P[@]}" -tA -c "SELECT count(*) FROM bench.orders")
for c in "${levels[@]}"; do
  echo "PostgreSQL -> instant endpoint, concurrency $c..." >&2
  source_toml=$(pg_source_toml "bench_ceiling_$c" bench_ceiling)
  measure postgres "$c" "$rows"
  "${P[@]}" -c "SELECT pg_drop_replication_slot('bench_ceiling_$c')" >/dev/null
done
fi
source_toml=

python3 - "$N" "$work/runs" <<'PY'
import json, sys, time, os, platform
n = int(sys.argv[1])
runs = [json.loads(l) for l in open(sys.argv[2])]
res = {"benchmark": "es_ceiling", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "machine": f"{os.cpu_count()} cores, {platform.machine()}", "changes": n,
       "workload": "half inserts, 40% updates, 10% deletes, transactions of 1000",
       "settings": {"snapshot": "never", "batch_docs": 1000, "batch_bytes": 5242880, "linger_ms": 50},
       "target": "at least 500,000 changes/s under 64 MiB"}
for r in runs:
    res.setdefault(r["source"], {})[f"concurrency_{r['concurrency']}"] = {k: v for k, v in r.items() if k not in ("source", "concurrency")}
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/es_ceiling.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"{'':26}{'seconds':>9}{'changes/s':>11}{'peak RSS MiB':>14}{'CPU s':>8}{'endpoint CPU s':>16}{'server CPU s':>14}{'bytes/change':>14}")
for r in runs:
    label = f"{r['source']} concurrency {r['concurrency']}"
    print(f"{label:26}{r['seconds']:>9}{r['changes_per_s']:>11}{r['peak_rss_mib']:>14}{r['tributary_cpu_s']:>8}{r['endpoint_cpu_s']:>16}{r['server_cpu_s']:>14}{r['bulk_bytes_per_change']:>14}")
print(f"{n} changes per source into the instant-answer endpoint; every run's index equals its table")
PY
