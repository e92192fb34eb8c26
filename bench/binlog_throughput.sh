#!/usr/bin/env bash
# Binlog streaming benchmark (not part of the test run).
#
#   bench/binlog_throughput.sh [N]      default N = 1000000
#
# Loads N rows into a fresh binlog (inserts in transactions of 1,000, then updates of
# every row and deletes of half of them, also in transactions of 1,000), then measures
# on that same binlog:
#   - tributary streaming it to the null sink (decode + pipeline cost)
#   - tributary streaming it to the log sink (fsync before each checkpoint)
#   - catch-up with an initial snapshot: a new connector (start = "earliest",
#     snapshot = "initial") streaming the whole backlog to the null sink while it
#     snapshots the table (its chunks wait for the stream to pass their cuts)
#   - mariadb-binlog --read-from-remote-server -v > /dev/null (the server's own tool)
# and prints events/s, wall time and peak RSS of each, and the ratio to mariadb-binlog.
# Results go to bench/results/binlog_throughput.json.
set -euo pipefail
N=${1:-1000000}
cd "$(dirname "$0")/.."
. bench/lib.sh

echo "loading $N rows (inserts, updates, deletes in transactions of 1000)..." >&2
reset_bench_table
load_start=$(date +%s.%N)
python3 - "$N" > "$work/load.sql" <<'PY'
import sys
n = int(sys.argv[1]); step = 1000
for a in range(1, n + 1, step):
    b = min(a + step - 1, n)
    print(f"INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b};")
for a in range(1, n + 1, step):
    b = min(a + step - 1, n)
    print(f"UPDATE bench.orders SET status = 'paid', updated_at = NOW(3), amount = amount + 1 WHERE id BETWEEN {a} AND {b};")
for a in range(1, n + 1, 2 * step):
    b = min(a + step - 1, n)
    print(f"DELETE FROM bench.orders WHERE id BETWEEN {a} AND {b};")
PY
"${M[@]}" -D bench < "$work/load.sql"
load_s=$(python3 -c "import time;print(round(time.time()-$load_start,1))")
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
first_file=$("${M[@]}" -N -e "SHOW BINARY LOGS" | head -1 | awk '{print $1}')
binlog_bytes=$("${M[@]}" -N -e "SHOW BINARY LOGS" | awk '{s+=$2} END {print s}')
expected=$(python3 -c "n=$N; print(n + n + sum(min(a+999,n)-a+1 for a in range(1,n+1,2000)))")
echo "loaded in ${load_s}s: $expected row changes, binlog $binlog_bytes bytes up to $end_file:$end_pos" >&2

echo "tributary -> null sink..." >&2
read -r null_s null_rss _ < <(run_tributary null)
echo "tributary -> log sink..." >&2
read -r log_s log_rss _ < <(run_tributary log)
# The disk's share: the log's bytes, and how long the disk takes to write that many
# bytes and sync them (dd, same filesystem, right after). Not a floor: the log sink's
# writes overlap its decoding and the kernel writes back as it goes, so its whole run
# can be shorter (3.0-3.6 s against dd's 3.9-5.0 s on 2026-12-04); a figure of the
# disk's pace beside the log's, shown without a verdict by the summary.
log_bytes=$(du -sb "$work/log/log" | cut -f1)
disk_s=$(python3 - "$work/disk-reference" "$log_bytes" <<'PY'
import subprocess, sys, time
path, size = sys.argv[1], int(sys.argv[2])
t = time.monotonic()
subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={max(1, size >> 20)}",
                "conv=fdatasync", "status=none"], check=True)
print(round(time.monotonic() - t, 2))
PY
)
rm -f "$work/disk-reference"
echo "tributary -> null sink, catching up with an initial snapshot..." >&2
read -r snap_s snap_rss _ < <(source_toml="kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9902
include = [\"bench.*\"]
start = \"earliest\"
snapshot = \"initial\"" at_least=1 run_tributary null_snapshot)
snap_changes=$(cat "$work/null_snapshot/changes")
echo "mariadb-binlog -v..." >&2
/usr/bin/time -f "%e %M" -o "$work/mb.time" mariadb-binlog --read-from-remote-server -h127.0.0.1 -P"$PORT" \
  -uadmin -padmin -v --to-last-log "$first_file" > /dev/null
read -r mb_s mb_rss < "$work/mb.time"

python3 - "$N" "$expected" "$binlog_bytes" "$null_s" "$null_rss" "$log_s" "$log_rss" "$mb_s" "$mb_rss" "$load_s" "$snap_s" "$snap_rss" "$snap_changes" "$log_bytes" "$disk_s" <<'PY'
import json, sys, time, platform, os
n, ev, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
null_s, null_rss, log_s, log_rss, mb_s, mb_rss, load_s, snap_s, snap_rss = map(float, sys.argv[4:13])
snap_changes, log_bytes, disk_s = int(sys.argv[13]), int(sys.argv[14]), float(sys.argv[15])
res = {
  "benchmark": "binlog_throughput", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  "machine": f"{os.cpu_count()} cores, {platform.machine()}", "rows": n, "row_changes": ev,
  "binlog_bytes": size, "load_seconds": load_s,
  "tributary_null": {"seconds": null_s, "events_per_s": round(ev / null_s), "peak_rss_mib": round(null_rss / 1024, 1)},
  "tributary_log": {"seconds": log_s, "events_per_s": round(ev / log_s), "peak_rss_mib": round(log_rss / 1024, 1),
    "compression": os.environ.get("LOG_COMPRESSION", "zstd"), "bytes_per_change": round(log_bytes / ev, 1),
    "disk_write_seconds": disk_s, "disk_note": "dd of the log's bytes with fdatasync, same filesystem, right after: the disk's pace for them (not a floor: the log overlaps writing with decoding)"},
  "tributary_null_initial_snapshot": {"seconds": snap_s, "events_per_s": round(ev / snap_s), "peak_rss_mib": round(snap_rss / 1024, 1),
    "snapshot_rows_emitted": snap_changes - ev, "target": "at least 1,000,000 changes/s, under 64 MiB"},
  "mariadb_binlog_v": {"seconds": mb_s, "events_per_s": round(ev / mb_s), "peak_rss_mib": round(mb_rss / 1024, 1)},
}
res["ratio_null_vs_mariadb_binlog"] = round(mb_s / null_s, 2)
res["ratio_log_vs_mariadb_binlog"] = round(mb_s / log_s, 2)
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/binlog_throughput.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"{'':24}{'seconds':>9}{'events/s':>12}{'peak RSS MiB':>14}")
for k, label in [("tributary_null", "tributary -> null"), ("tributary_log", "tributary -> log"), ("tributary_null_initial_snapshot", "catch-up + snapshot"), ("mariadb_binlog_v", "mariadb-binlog -v")]:
    r = res[k]; print(f"{label:24}{r['seconds']:>9}{r['events_per_s']:>12}{r['peak_rss_mib']:>14}")
print(f"the log: {log_bytes} bytes ({res['tributary_log']['bytes_per_change']} per change); the disk writes and syncs as many in {disk_s} s")
print(f"speed vs mariadb-binlog: null sink x{res['ratio_null_vs_mariadb_binlog']}, log sink x{res['ratio_log_vs_mariadb_binlog']}  ({ev} row changes, {size} binlog bytes)")
PY
