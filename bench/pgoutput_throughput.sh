#!/usr/bin/env bash
# PostgreSQL logical replication benchmark (not part of the test run).
#
#   bench/pgoutput_throughput.sh [N]      default N = 1000000 rows
#
# The MariaDB benchmark's workload shape on PostgreSQL 15: N inserts in transactions of
# 1,000, updates of every row and deletes of half of them, also in transactions of
# 1,000. One pgoutput slot per reader is created before the load, so each reads the
# same WAL:
#   - tributary streaming it to the null sink (decode + pipeline cost)
#   - tributary streaming it to the log sink (fsync before each checkpoint)
#   - pg_recvlogical (pgoutput, same publication) writing to /dev/null
#   - pg_recvlogical again in pgoutput's binary mode (`binary=true`, PostgreSQL 14+):
#     the walsender's CPU per change in each mode (issue 20's question whether binary
#     mode would relieve the server-side bound)
# Prints events/s, wall time, peak RSS and CPU seconds of each, the CPU seconds of the
# walsender serving each (the server-side bound), and the ratio to pg_recvlogical.
# Results go to bench/results/pgoutput_throughput.json.
set -euo pipefail
N=${1:-1000000}
cd "$(dirname "$0")/.."
PGPORT_BENCH=${TRIBUTARY_BENCH_PG_PORT:-25381}
BENCH_SOURCE=postgres
. bench/lib.sh
start_bench_postgres

echo "loading $N rows (inserts, updates, deletes in transactions of 1000)..." >&2
reset_pg_bench_table bench bench_null bench_log bench_recv bench_recvbin
python3 - "$N" > "$work/load.sql" <<'PY'
import sys
n = int(sys.argv[1]); step = 1000
print("SET synchronous_commit = on;")
for a in range(1, n + 1, step):
    b = min(a + step - 1, n)
    print(f"INSERT INTO bench.orders SELECT i, i % 5000, 'new', i * 1.25, 'order note ' || i, now(), NULL FROM generate_series({a}, {b}) i;")
for a in range(1, n + 1, step):
    b = min(a + step - 1, n)
    print(f"UPDATE bench.orders SET status = 'paid', updated_at = now(), amount = amount + 1 WHERE id BETWEEN {a} AND {b};")
for a in range(1, n + 1, 2 * step):
    b = min(a + step - 1, n)
    print(f"DELETE FROM bench.orders WHERE id BETWEEN {a} AND {b};")
# The end of the last commit record: where every reader stops.
print("SELECT pg_current_wal_insert_lsn();")
PY
load_start=$(date +%s.%N)
until=$("${P[@]}" -tA < "$work/load.sql" | tail -1)
load_s=$(python3 -c "import time;print(round(time.time()-$load_start,1))")
expected=$(python3 -c "n=$N; print(n + n + sum(min(a+999,n)-a+1 for a in range(1,n+1,2000)))")
wal_bytes=$("${P[@]}" -tA -c "SELECT pg_wal_lsn_diff('$until', restart_lsn) FROM pg_replication_slots WHERE slot_name = 'bench_recv'")
# The load leaves hundreds of MB of dirty pages: write them out now, so the first reader
# does not share the machine with the checkpointer and every reader sees the same server.
"${P[@]}" -c "CHECKPOINT" >/dev/null
echo "loaded in ${load_s}s: $expected row changes, $wal_bytes WAL bytes up to $until" >&2

source_toml=$(pg_source_toml "bench_@SINK@" bench)
echo "tributary -> null sink..." >&2
walsender_start tributary
read -r null_s null_rss null_cpu < <(run_tributary null)
null_ws=$(walsender_stop tributary)
echo "tributary -> log sink..." >&2
walsender_start tributary
read -r log_s log_rss log_cpu < <(run_tributary log)
log_ws=$(walsender_stop tributary)
echo "pg_recvlogical..." >&2
walsender_start pg_recvlogical
/usr/bin/time -f "%e %M %U %S" -o "$work/recv.time" pg_recvlogical -h 127.0.0.1 -p "$PGPORT_BENCH" -U admin -d app \
  --slot bench_recv --start --endpos "$until" -o proto_version=1 -o publication_names=bench -f /dev/null
recv_ws=$(walsender_stop pg_recvlogical)
read -r recv_s recv_rss recv_user recv_sys < "$work/recv.time"
recv_cpu=$(python3 -c "print(round($recv_user + $recv_sys, 2))")
echo "pg_recvlogical, binary mode..." >&2
walsender_start pg_recvlogical
/usr/bin/time -f "%e %M %U %S" -o "$work/recvbin.time" pg_recvlogical -h 127.0.0.1 -p "$PGPORT_BENCH" -U admin -d app \
  --slot bench_recvbin --start --endpos "$until" -o proto_version=1 -o publication_names=bench -o binary=true -f /dev/null
bin_ws=$(walsender_stop pg_recvlogical)
read -r bin_s _ _ _ < "$work/recvbin.time"
"${P[@]}" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%'" >/dev/null

python3 - "$N" "$expected" "$wal_bytes" "$null_s" "$null_rss" "$log_s" "$log_rss" "$recv_s" "$recv_rss" "$load_s" "$null_cpu" "$log_cpu" "$recv_cpu" "$null_ws" "$log_ws" "$recv_ws" "$bin_s" "$bin_ws" <<'PY'
import json, sys, time, platform, os
n, ev, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
null_s, null_rss, log_s, log_rss, rv_s, rv_rss, load_s, null_cpu, log_cpu, rv_cpu, null_ws, log_ws, rv_ws, bin_s, bin_ws = map(float, sys.argv[4:19])
res = {
  "benchmark": "pgoutput_throughput", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  "machine": f"{os.cpu_count()} cores, {platform.machine()}", "rows": n, "row_changes": ev,
  "wal_bytes": size, "load_seconds": load_s,
  "tributary_null": {"seconds": null_s, "events_per_s": round(ev / null_s), "peak_rss_mib": round(null_rss / 1024, 1), "cpu_seconds": null_cpu, "walsender_cpu_seconds": null_ws},
  "tributary_log": {"seconds": log_s, "events_per_s": round(ev / log_s), "peak_rss_mib": round(log_rss / 1024, 1), "cpu_seconds": log_cpu, "walsender_cpu_seconds": log_ws},
  "pg_recvlogical": {"seconds": rv_s, "events_per_s": round(ev / rv_s), "peak_rss_mib": round(rv_rss / 1024, 1), "cpu_seconds": rv_cpu, "walsender_cpu_seconds": rv_ws},
}
res["pg_recvlogical_binary"] = {"seconds": bin_s, "events_per_s": round(ev / bin_s), "walsender_cpu_seconds": bin_ws}
res["walsender_us_per_change"] = {"text": round(rv_ws * 1e6 / ev, 2), "binary": round(bin_ws * 1e6 / ev, 2)}
res["ratio_null_vs_pg_recvlogical"] = round(rv_s / null_s, 2)
res["ratio_log_vs_pg_recvlogical"] = round(rv_s / log_s, 2)
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/pgoutput_throughput.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"{'':24}{'seconds':>9}{'events/s':>12}{'peak RSS MiB':>14}{'CPU s':>8}{'walsender CPU s':>17}")
for k, label in [("tributary_null", "tributary -> null"), ("tributary_log", "tributary -> log"), ("pg_recvlogical", "pg_recvlogical")]:
    r = res[k]; print(f"{label:24}{r['seconds']:>9}{r['events_per_s']:>12}{r['peak_rss_mib']:>14}{r['cpu_seconds']:>8}{r['walsender_cpu_seconds']:>17}")
w = res["walsender_us_per_change"]
print(f"walsender CPU per change read by pg_recvlogical: text {w['text']} us, binary mode {w['binary']} us ({res['pg_recvlogical_binary']['events_per_s']} events/s)")
print(f"speed vs pg_recvlogical: null sink x{res['ratio_null_vs_pg_recvlogical']}, log sink x{res['ratio_log_vs_pg_recvlogical']}  ({ev} row changes, {size} WAL bytes)")
PY
