#!/usr/bin/env bash
# End-to-end MariaDB and PostgreSQL -> Elasticsearch stand-in benchmark (not part of
# the test run).
#
#   bench/elasticsearch_sync.sh [N]     default N = 100000 row changes per source
#
# For each source:
#   1. throughput: loads N changes (half inserts, 40% updates, 10% deletes,
#      transactions of 1000) into bench.orders, streams them with tributary into a fresh
#      stand-in up to the end of the load, and checks the index holds the table's rows;
#   2. latency: with the daemon running and caught up, a writer commits 10-row
#      transactions at about 500 changes/s for 20 s; the daemon's metrics give the
#      p50/p99 from commit (PostgreSQL: exact commit times) and from read (MariaDB:
#      binlog commit times are whole seconds) to the acknowledged bulk item.
# Then the stand-in's own capacity: a plain bulk loader sends the same number of
# equivalent actions (bodies built before timing, same batch size, as many requests in
# flight as tributary's default concurrency), and tributary's rate is printed as a
# ratio of it. Writes bench/results/elasticsearch_sync.json.
set -euo pipefail
N=${1:-100000}
ES_PORT=${TRIBUTARY_BENCH_ES_PORT:-19281}
PGPORT_BENCH=${TRIBUTARY_BENCH_PG_PORT:-25381}
METRICS_PORT=${TRIBUTARY_BENCH_METRICS_PORT:-19291}
CONCURRENCY=2 # the sink's default `concurrency`
cd "$(dirname "$0")/.."
bench_cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
}
. bench/lib.sh
start_bench_postgres
ES=http://127.0.0.1:$ES_PORT
inserts=$((N / 2)); updates=$((N * 4 / 10)); deletes=$((N - inserts - updates))

fresh_es() {
  bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
  bash deploy/osmem.sh start "$ES_PORT" >/dev/null
}

# A steady writer for $1 = mariadb | postgres: 1000 transactions of 10 inserts, 20 ms apart.
live_sql() {
  python3 - "$1" "$N" <<'PY'
import sys
kind, base = sys.argv[1], int(sys.argv[2]) * 10
if kind == "postgres":
    # The test server commits asynchronously (WAL flushed every 200 ms, and logical
    # decoding sends flushed WAL only); production servers commit synchronously.
    print("SET synchronous_commit = on;")
for t in range(1000):
    a = base + t * 10 + 1; b = a + 9
    if kind == "mariadb":
        print(f"INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b}; DO SLEEP(0.02);")
    else:
        print(f"INSERT INTO bench.orders SELECT i, i % 5000, 'new', i * 1.25, 'order note ' || i, now(), NULL FROM generate_series({a}, {b}) i; SELECT pg_sleep(0.02);")
PY
}

# Runs the daemon on the connector of the throughput run (resuming where it stopped)
# with metrics on, drives the live writer, waits until every live change was
# acknowledged, and prints "p50 p99" in ms of the ack latency from $2 (commit | read).
latency() { # $1 = source, $2 = from
  local dir="$work/elasticsearch"
  printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >> "$dir/c.toml"
  "$TRIBUTARY" run --connector "$dir/c.toml" 2> "$dir/live.stderr" &
  daemon=$!
  until grep -qs "streaming" "$dir/live.stderr"; do sleep 0.2; done  # (-s: not created yet)
  if [ "$1" = mariadb ]; then live_sql mariadb | "${M[@]}" -D bench >/dev/null
  else live_sql postgres | "${P[@]}" >/dev/null; fi
  local deadline=$((SECONDS + 120)) count=0
  while [ "$count" -lt 10000 ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.5
    count=$(curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk -v f="from=\"$2\"" \
      '/^tributary_sink_ack_latency_seconds_count/ && index($0, f) {print int($2)}')
    count=${count:-0}
  done
  [ "$count" -ge 10000 ] || { echo "only $count live changes acknowledged" >&2; exit 1; }
  curl -s "127.0.0.1:$METRICS_PORT/metrics" | python3 -c '
import sys, re
from_ = sys.argv[1]; q = {}
for line in sys.stdin:
    m = re.match(r"tributary_sink_ack_latency_seconds\{.*from=\"(\w+)\",quantile=\"([0-9.]+)\"\} (\S+)", line)
    if m and m.group(1) == from_:
        q[m.group(2)] = float(m.group(3)) * 1000
print(round(q["0.5"], 1), round(q["0.99"], 1))' "$2"
  kill -TERM "$daemon"; wait "$daemon" || true; daemon=
}

# --- MariaDB ---------------------------------------------------------------------
fresh_es
echo "MariaDB: loading $N changes ($inserts inserts, $updates updates, $deletes deletes)..." >&2
reset_bench_table
mixed_load_sql mariadb "$inserts" "$updates" "$deletes" | "${M[@]}" -D bench
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
expected=$N
rows=$("${M[@]}" -N -e "SELECT COUNT(*) FROM bench.orders")
echo "MariaDB: tributary -> stand-in..." >&2
read -r my_s my_rss _ < <(run_tributary elasticsearch)
docs=$(curl -s "$ES/bench_orders/_count" | python3 -c "import sys,json; print(json.load(sys.stdin)['count'])")
[ "$docs" = "$rows" ] || { echo "MariaDB: index has $docs documents, table has $rows rows" >&2; exit 1; }
curl -s "$ES/bench_orders_v1/_mapping" > "$work/mapping.json"
echo "MariaDB: live latency..." >&2
read -r my_p50 my_p99 < <(latency mariadb read)
rm -rf "$work/elasticsearch"

# --- PostgreSQL ------------------------------------------------------------------
fresh_es
echo "PostgreSQL: loading $N changes..." >&2
reset_pg_bench_table bench_es bench_es
mixed_load_sql postgres "$inserts" "$updates" "$deletes" | "${P[@]}"
until=$("${P[@]}" -tA -c "SELECT pg_current_wal_insert_lsn()")
rows=$("${P[@]}" -tA -c "SELECT count(*) FROM bench.orders")
source_toml=$(pg_source_toml bench_es bench_es)
echo "PostgreSQL: tributary -> stand-in..." >&2
read -r pg_s pg_rss _ < <(run_tributary elasticsearch)
docs=$(curl -s "$ES/bench_orders/_count" | python3 -c "import sys,json; print(json.load(sys.stdin)['count'])")
[ "$docs" = "$rows" ] || { echo "PostgreSQL: index has $docs documents, table has $rows rows" >&2; exit 1; }
echo "PostgreSQL: live latency..." >&2
read -r pg_p50 pg_p99 < <(latency postgres commit)
"${P[@]}" -c "SELECT pg_drop_replication_slot('bench_es')" >/dev/null

# --- the stand-in's own capacity -------------------------------------------------
fresh_es
echo "plain bulk loader ($CONCURRENCY requests in flight) -> stand-in..." >&2
python3 - "$ES" "$inserts" "$updates" "$deletes" "$work/mapping.json" "$CONCURRENCY" > "$work/loader.out" <<'PY'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
es, ins, upd, dele, mapping_file, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
mapping = json.load(open(mapping_file))["bench_orders_v1"]["mappings"]
def req(method, path, body, ctype="application/json"):
    r = urllib.request.Request(es + path, data=body, method=method, headers={"content-type": ctype})
    with urllib.request.urlopen(r) as resp:
        return json.loads(resp.read() or b"{}")
req("PUT", "/loader_v1", json.dumps({"mappings": mapping}).encode())
def doc(i, status):
    return {"id": i, "customer_id": i % 5000, "status": status, "amount": f"{i * 1.25:.2f}",
            "note": f"order note {i}", "created_at": "2026-11-23T01:02:03.456789",
            "updated_at": None if status == "new" else "2026-11-23T01:02:04.005Z"}
actions = [("index", i, doc(i, "new"), 1) for i in range(1, ins + 1)]
actions += [("index", i, doc(i, "paid"), 2) for i in range(1, upd + 1)]
actions += [("delete", i, None, 3) for i in range(ins - dele + 1, ins + 1)]
# Like tributary's lanes: a document always in the same stream of requests, in order.
lanes = [[] for _ in range(conc)]
for a in actions:
    lanes[a[1] % conc].append(a)
def bodies(acts):
    out = []
    for a in range(0, len(acts), 1000):
        lines = []
        for op, i, d, v in acts[a:a + 1000]:
            lines.append(json.dumps({op: {"_index": "loader_v1", "_id": str(i), "version": v, "version_type": "external_gte"}}))
            if d is not None:
                lines.append(json.dumps(d))
        out.append(("\n".join(lines) + "\n").encode())
    return out
lane_bodies = [bodies(l) for l in lanes]
def run(bs):
    for b in bs:
        r = req("POST", "/_bulk", b, "application/x-ndjson")
        assert not any(list(it.values())[0].get("status", 200) >= 400 and list(it.values())[0].get("status") != 404 for it in r["items"]), r
t = time.time()
with ThreadPoolExecutor(conc) as ex:
    list(ex.map(run, lane_bodies))
print(time.time() - t)
PY
loader_s=$(cat "$work/loader.out")

python3 - "$N" "$my_s" "$my_rss" "$pg_s" "$pg_rss" "$loader_s" "$my_p50" "$my_p99" "$pg_p50" "$pg_p99" "$CONCURRENCY" <<'PY'
import json, sys, time, os
n = int(sys.argv[1])
my_s, my_rss, pg_s, pg_rss, loader_s, my_p50, my_p99, pg_p50, pg_p99 = map(float, sys.argv[2:11])
conc = int(sys.argv[11])
def run(s, rss, p50, p99, frm):
    return {"seconds": s, "changes_per_s": round(n / s), "peak_rss_mib": round(rss / 1024, 1),
            "ratio_vs_loader": round(loader_s / s, 2),
            "live_latency_ms": {"from": frm, "p50": p50, "p99": p99, "rate_changes_per_s": 500}}
res = {"benchmark": "elasticsearch_sync", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "changes": n, "concurrency": conc,
       "mariadb": run(my_s, my_rss, my_p50, my_p99, "read (binlog commit times are whole seconds)"),
       "postgres": run(pg_s, pg_rss, pg_p50, pg_p99, "commit"),
       "plain_bulk_loader": {"seconds": round(loader_s, 2), "changes_per_s": round(n / loader_s)}}
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/elasticsearch_sync.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"{'':22}{'seconds':>9}{'changes/s':>11}{'vs loader':>11}{'peak RSS MiB':>14}{'p50 ms':>9}{'p99 ms':>9}")
for k in ("mariadb", "postgres"):
    r = res[k]; l = r["live_latency_ms"]
    print(f"{'tributary ' + k:22}{r['seconds']:>9}{r['changes_per_s']:>11}{r['ratio_vs_loader']:>11}{r['peak_rss_mib']:>14}{l['p50']:>9}{l['p99']:>9}")
print(f"{'plain bulk loader':22}{res['plain_bulk_loader']['seconds']:>9}{res['plain_bulk_loader']['changes_per_s']:>11}")
print(f"latency: MariaDB from read, PostgreSQL from commit, to the acknowledged bulk item, at 500 changes/s")
PY
