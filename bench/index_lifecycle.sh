#!/usr/bin/env bash
# Index lifecycle benchmark (not part of the test run): a MariaDB table of N rows
# streamed into a fresh Elasticsearch stand-in, then `tributary verify` (daemon
# stopped, so the figure is verify's own: both passes over table and index, no second
# look needed) and `tributary reindex` into `_v2`, then verify again against the new
# index.
#
#   bench/index_lifecycle.sh [N]      default N = 100000 rows
#
# Prints rows/s and peak RSS of each; writes bench/results/index_lifecycle.json.
# Pinned: verify's and reindex's own chunk sizes (1,000 rows), the sink's defaults for
# the load.
set -euo pipefail
N=${1:-100000}
ES_PORT=${TRIBUTARY_BENCH_ES_PORT:-19281}
cd "$(dirname "$0")/.."
bench_cleanup() { bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true; }
. bench/lib.sh
ES=http://127.0.0.1:$ES_PORT
bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
bash deploy/osmem.sh start "$ES_PORT" >/dev/null

echo "loading $N rows..." >&2
reset_bench_table
python3 - "$N" <<'PY' | "${M[@]}" -D bench
import sys
n = int(sys.argv[1])
for a in range(1, n + 1, 1000):
    b = min(a + 999, n)
    print(f"INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b};")
PY
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
expected=$N
echo "streaming them into the stand-in..." >&2
run_tributary elasticsearch >/dev/null
dir="$work/elasticsearch"

# $1 = name, rest = the command; prints "seconds peak_rss_kib".
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/$name.time" "$@" > "$dir/$name.out" 2> "$dir/$name.stderr" \
    || { cat "$dir/$name.stderr" "$dir/$name.out" >&2; exit 1; }
  cat "$dir/$name.time"
}
echo "verifying..." >&2
read -r v_secs v_rss < <(timed verify target/release/tributary verify --connector "$dir/c.toml" --json)
echo "reindexing..." >&2
read -r r_secs r_rss < <(timed reindex target/release/tributary reindex --connector "$dir/c.toml" --table bench.orders)
grep -q "bench_orders_v2" "$dir/reindex.out" || { cat "$dir/reindex.out" >&2; exit 1; }
echo "verifying the new index..." >&2
read -r v2_secs v2_rss < <(timed verify2 target/release/tributary verify --connector "$dir/c.toml" --json)
python3 - "$dir" "$N" "$v_secs" "$v_rss" "$r_secs" "$r_rss" "$v2_secs" "$v2_rss" <<'PY'
import json, sys, datetime, os
d, n = sys.argv[1], int(sys.argv[2])
figures = dict(zip(["verify", "reindex", "verify_v2"], zip(sys.argv[3::2], sys.argv[4::2])))
for name in ("verify", "verify2"):
    report = json.loads(open(f"{d}/{name}.out").readline())
    assert report["rows"] == n and report["documents"] == n, report
    assert report["missing"] == report["stale"] == report["extra"] == 0, report
out = {
    "benchmark": "index_lifecycle",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": f"{os.cpu_count()} cores",
    "source": "mariadb",
    "rows": n,
}
for name, (secs, rss) in figures.items():
    secs, rss = float(secs), int(rss)
    out[name] = {"seconds": secs, "rows_per_s": round(n / secs), "peak_rss_mib": round(rss / 1024, 1)}
    print(f"{name}: {n} rows in {secs:.2f} s: {out[name]['rows_per_s']} rows/s, peak RSS {out[name]['peak_rss_mib']} MiB")
json.dump(out, open("bench/results/index_lifecycle.json", "w"), indent=2)
open("bench/results/index_lifecycle.json", "a").write("\n")
PY
