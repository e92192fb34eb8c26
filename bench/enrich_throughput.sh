#!/usr/bin/env bash
# Enrichment benchmark (not part of the test run): the same binlog streamed to the null
# sink without enrichers and with meta + rename + geo_point + lookup.
#
#   bench/enrich_throughput.sh [N]      default N = 1000000 row changes
#
# Workload: bench.customers (5,000 rows), then N/2 inserts into bench.geo_orders and
# N/2 updates of them (transactions of 1,000; every 50th point is 0/0). The lookup
# takes each order's customer name (5,000 keys: a hit rate near 99.5%). Prints
# changes/s, peak RSS and the lookup hit rate; writes bench/results/enrich_throughput.json.
# Each configuration runs RUNS times (default 5), alternating; medians are reported
# (a run takes about a second, so single runs are noisy).
set -euo pipefail
N=${1:-1000000}
cd "$(dirname "$0")/.."
. bench/lib.sh

HALF=$((N / 2))
RUNS=${RUNS:-5}
echo "loading $N row changes..." >&2
"${M[@]}" -e "RESET MASTER; DROP DATABASE IF EXISTS bench; CREATE DATABASE bench;
  CREATE TABLE bench.customers (id INT PRIMARY KEY, name VARCHAR(40), tier VARCHAR(10));
  CREATE TABLE bench.geo_orders (id BIGINT PRIMARY KEY, customer_id INT NOT NULL,
    amount DECIMAL(12,2) NOT NULL, note VARCHAR(200), lat DOUBLE, lng DOUBLE);
  INSERT INTO bench.customers SELECT seq, CONCAT('customer ', seq), ELT(1 + seq % 3, 'gold', 'silver', 'bronze') FROM bench.seq_1_to_5000;"
python3 - "$HALF" > "$work/load.sql" <<'PY'
import sys
n = int(sys.argv[1]); step = 1000
for a in range(1, n + 1, step):
    b = min(a + step - 1, n)
    print(f"INSERT INTO bench.geo_orders SELECT seq, 1 + seq % 5000, seq * 1.25, CONCAT('order note ', seq), "
          f"IF(seq % 50 = 0, 0, 40 + (seq % 1000) / 100), IF(seq % 50 = 0, 0, (seq % 3000) / 100) FROM seq_{a}_to_{b};")
for a in range(1, n + 1, step):
    b = min(a + step - 1, n)
    print(f"UPDATE bench.geo_orders SET lat = lat + 0.001, amount = amount + 1 WHERE id BETWEEN {a} AND {b};")
PY
"${M[@]}" -D bench < "$work/load.sql"
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
expected=$((5000 + 2 * HALF))
echo "loaded: $expected row changes up to $end_file:$end_pos" >&2

# The source, and the chain for the enriched run (added after [source] by run_tributary's
# connector: TOML keeps [[enrich]] tables wherever they appear).
source_toml="kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9903
include = [\"bench.*\"]
start = \"earliest\"
snapshot = \"never\""
plain_source=$source_toml
chain='
[[enrich]]
table = "bench.geo_orders"
kind = "meta"
fields = { op = "_op", table = "_table", commit_ts = "_at" }

[[enrich]]
table = "bench.geo_orders"
kind = "rename"
columns = { note = "comment" }

[[enrich]]
table = "bench.geo_orders"
kind = "geo_point"
lat = "lat"
lon = "lng"
field = "location"

[[enrich]]
table = "bench.geo_orders"
kind = "lookup"
from = "bench.customers"
on = { customer_id = "id" }
fields = { name = "customer_name" }
cache_size = 10000'
enriched_source="$source_toml
$chain"
plain_runs=(); enr_runs=()
for i in $(seq 1 "$RUNS"); do
  echo "run $i: plain (no enrichers), then enriched (meta + rename + geo_point + lookup)..." >&2
  source_toml=$plain_source; rm -rf "$work/null"
  plain_runs+=("$(run_tributary null)")
  source_toml=$enriched_source; rm -rf "$work/null"
  enr_runs+=("$(run_tributary null)")
done
median() { printf '%s\n' "$@" | sort -n -k1,1 | awk -v n="$#" 'NR == int((n + 1) / 2)'; }
read -r plain_s plain_rss _ < <(median "${plain_runs[@]}")
read -r enr_s enr_rss _ < <(median "${enr_runs[@]}")
echo "plain runs (s): $(printf '%s ' "${plain_runs[@]}" | awk '{for (i = 1; i <= NF; i += 3) printf "%s ", $i}')" >&2
echo "enriched runs (s): $(printf '%s ' "${enr_runs[@]}" | awk '{for (i = 1; i <= NF; i += 3) printf "%s ", $i}')" >&2
hit=$(grep '"enrichment lookups"' "$work/null/stderr" | python3 -c "import sys,json; f=json.loads(sys.stdin.readline())['fields']; print(f['hit_rate'], f['lookups'], f['fetched'])")
read -r hit_rate lookups fetched <<< "$hit"

python3 - "$expected" "$plain_s" "$plain_rss" "$enr_s" "$enr_rss" "$hit_rate" "$lookups" "$fetched" <<'PY'
import json, sys, time, os
ev = int(sys.argv[1])
plain_s, plain_rss, enr_s, enr_rss, hit = map(float, sys.argv[2:7])
lookups, fetched = int(sys.argv[7]), int(sys.argv[8])
res = {
  "benchmark": "enrich_throughput", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  "machine": f"{os.cpu_count()} cores", "row_changes": ev, "runs": int(os.environ.get("RUNS", "5")), "statistic": "median",
  "plain": {"seconds": plain_s, "changes_per_s": round(ev / plain_s), "peak_rss_mib": round(plain_rss / 1024, 1)},
  "enriched": {"seconds": enr_s, "changes_per_s": round(ev / enr_s), "peak_rss_mib": round(enr_rss / 1024, 1),
               "chain": ["meta", "rename", "geo_point", "lookup"],
               "lookups": lookups, "keys_fetched": fetched, "lookup_hit_rate": hit},
}
res["enriched_vs_plain"] = round(plain_s / enr_s, 3)
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/enrich_throughput.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
for k in ["plain", "enriched"]:
    r = res[k]; print(f"{k:10} {r['seconds']:>8} s {r['changes_per_s']:>10} changes/s {r['peak_rss_mib']:>7} MiB")
print(f"enriched keeps {res['enriched_vs_plain'] * 100:.1f}% of the plain throughput; lookup hit rate {hit:.3f} ({fetched} of {lookups} fetched)")
PY
