#!/usr/bin/env bash
# Index lifecycle benchmark (not part of the test run): a MariaDB table of N rows
# streamed into a fresh Elasticsearch stand-in, then `tributary verify` (daemon
# stopped, so the figure is verify's own: both passes over table and index, no second
# look needed) and `tributary reindex` into `_v2`, then verify again against the new
# index. Then the same with N_INSTANT rows against the instant-answer endpoint
# (examples/instant_es.rs), which the stand-in's few thousand documents/s and its
# sorting of the whole index for every page would otherwise bound.
#
#   bench/index_lifecycle.sh [N] [N_INSTANT]   default N = 100000, N_INSTANT = 1000000
#
# Prints rows/s and peak RSS of each; writes bench/results/index_lifecycle.json.
# Pinned: verify's and reindex's own chunk sizes (1,000 rows), the sink's defaults for
# the load.
set -euo pipefail
N=${1:-100000}
N_INSTANT=${2:-1000000}
ES_PORT=${TRIBUTARY_BENCH_ES_PORT:-19281}
INSTANT_PORT=${TRIBUTARY_BENCH_INSTANT_PORT:-19283}
cd "$(dirname "$0")/.."
bench_cleanup() {
  bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
  [ -n "${instant:-}" ] && kill "$instant" 2>/dev/null || true
}
. bench/lib.sh
bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
bash deploy/osmem.sh start "$ES_PORT" >/dev/null

# $1 = rows: a fresh bench.orders of that many rows (one binlog of inserts).
load() {
  echo "loading $1 rows..." >&2
  reset_bench_table
  python3 - "$1" <<'PY' | "${M[@]}" -D bench
import sys
n = int(sys.argv[1])
for a in range(1, n + 1, 1000):
    b = min(a + 999, n)
    print(f"INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b};")
PY
  read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
  expected=$1
}

# $1 = name, rest = the command; prints "seconds peak_rss_kib".
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/$name.time" "$@" > "$dir/$name.out" 2> "$dir/$name.stderr" \
    || { cat "$dir/$name.stderr" "$dir/$name.out" >&2; exit 1; }
  cat "$dir/$name.time"
}

# Streams the loaded table into $ES, then verify, reindex, verify; leaves
# "rows verify_s verify_kib reindex_s reindex_kib verify2_s verify2_kib" in $work/$1.
lifecycle() { # $1 = name
  echo "streaming them into $1..." >&2
  rm -rf "$work/elasticsearch"
  run_tributary elasticsearch >/dev/null
  dir="$work/elasticsearch"
  echo "verifying..." >&2
  read -r v_secs v_rss < <(timed verify "$TRIBUTARY" verify --connector "$dir/c.toml" --json)
  echo "reindexing..." >&2
  read -r r_secs r_rss < <(timed reindex "$TRIBUTARY" reindex --connector "$dir/c.toml" --table bench.orders)
  grep -q "bench_orders_v2" "$dir/reindex.out" || { cat "$dir/reindex.out" >&2; exit 1; }
  echo "verifying the new index..." >&2
  read -r v2_secs v2_rss < <(timed verify2 "$TRIBUTARY" verify --connector "$dir/c.toml" --json)
  python3 - "$dir" "$expected" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
for name in ("verify", "verify2"):
    report = json.loads(open(f"{d}/{name}.out").readline())
    assert report["rows"] == n and report["documents"] == n, report
    assert report["missing"] == report["stale"] == report["extra"] == 0, report
PY
  echo "$expected $v_secs $v_rss $r_secs $r_rss $v2_secs $v2_rss" > "$work/$1"
}

ES=http://127.0.0.1:$ES_PORT
load "$N"
lifecycle stand-in

start_instant_es "$INSTANT_PORT"
load "$N_INSTANT"
lifecycle instant

python3 - "$work/stand-in" "$work/instant" <<'PY'
import json, sys, datetime, os
out = {
    "benchmark": "index_lifecycle",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": f"{os.cpu_count()} cores",
    "source": "mariadb",
}
def figures(path):
    f = open(path).read().split()
    n = int(f[0])
    res = {"rows": n}
    for name, secs, rss in zip(["verify", "reindex", "verify_v2"], f[1::2], f[2::2]):
        secs, rss = float(secs), int(rss)
        res[name] = {"seconds": secs, "rows_per_s": round(n / secs), "peak_rss_mib": round(rss / 1024, 1)}
    return res
out.update(figures(sys.argv[1]))
out["instant_endpoint"] = figures(sys.argv[2])
for label, r in (("stand-in", out), ("instant endpoint", out["instant_endpoint"])):
    for name in ("verify", "reindex", "verify_v2"):
        x = r[name]
        print(f"{label}: {name}: {r['rows']} rows in {x['seconds']:.2f} s: {x['rows_per_s']} rows/s, peak RSS {x['peak_rss_mib']} MiB")
json.dump(out, open("bench/results/index_lifecycle.json", "w"), indent=2)
open("bench/results/index_lifecycle.json", "a").write("\n")
PY
