#!/usr/bin/env bash
# End-to-end MariaDB -> Elasticsearch stand-in benchmark (not part of the test run).
#
#   bench/elasticsearch_sync.sh [N]     default N = 100000 row changes
#
# Loads N changes (half inserts, 40% updates, 10% deletes, transactions of 1000), streams
# them with tributary into a fresh stand-in, checks the index equals the table, then
# measures the stand-in's own bulk capacity with a plain loader sending the same number
# of equivalent actions (bodies built before timing, same batch size, one request at a
# time) and prints tributary's rate as a ratio of it. Writes
# bench/results/elasticsearch_sync.json.
set -euo pipefail
N=${1:-100000}
ES_PORT=${TRIBUTARY_BENCH_ES_PORT:-19281}
cd "$(dirname "$0")/.."
bench_cleanup() { bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true; }
. bench/lib.sh
bash deploy/osmem.sh stop "$ES_PORT" >/dev/null 2>&1 || true
bash deploy/osmem.sh start "$ES_PORT" >/dev/null
ES=http://127.0.0.1:$ES_PORT

inserts=$((N / 2)); updates=$((N * 4 / 10)); deletes=$((N - inserts - updates))
echo "loading $N changes ($inserts inserts, $updates updates, $deletes deletes)..." >&2
reset_bench_table
python3 - "$inserts" "$updates" "$deletes" > "$work/load.sql" <<'PY'
import sys
ins, upd, dele = map(int, sys.argv[1:4])
for a in range(1, ins + 1, 1000):
    b = min(a + 999, ins)
    print(f"INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b};")
for a in range(1, upd + 1, 1000):
    b = min(a + 999, upd)
    print(f"UPDATE bench.orders SET status = 'paid', updated_at = NOW(3) WHERE id BETWEEN {a} AND {b};")
for a in range(ins - dele + 1, ins + 1, 1000):
    b = min(a + 999, ins)
    print(f"DELETE FROM bench.orders WHERE id BETWEEN {a} AND {b};")
PY
"${M[@]}" -D bench < "$work/load.sql"
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
expected=$N
rows=$("${M[@]}" -N -e "SELECT COUNT(*) FROM bench.orders")

echo "tributary -> stand-in..." >&2
read -r es_s es_rss _ < <(run_tributary elasticsearch)
docs=$(curl -s "$ES/bench_orders/_count" | python3 -c "import sys,json; print(json.load(sys.stdin)['count'])")
[ "$docs" = "$rows" ] || { echo "index has $docs documents, table has $rows rows" >&2; exit 1; }

echo "plain bulk loader -> stand-in..." >&2
curl -s "$ES/bench_orders_v1/_mapping" > "$work/mapping.json"
python3 - "$ES" "$inserts" "$updates" "$deletes" "$work/mapping.json" > "$work/loader.out" <<'PY'
import json, sys, time, urllib.request
es, ins, upd, dele, mapping_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
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
bodies = []
for a in range(0, len(actions), 1000):
    lines = []
    for op, i, d, v in actions[a:a + 1000]:
        lines.append(json.dumps({op: {"_index": "loader_v1", "_id": str(i), "version": v, "version_type": "external_gte"}}))
        if d is not None:
            lines.append(json.dumps(d))
    bodies.append(("\n".join(lines) + "\n").encode())
t = time.time()
for b in bodies:
    r = req("POST", "/_bulk", b, "application/x-ndjson")
    assert not any(list(it.values())[0].get("status", 200) >= 400 and list(it.values())[0].get("status") != 404 for it in r["items"]), r
print(time.time() - t)
PY
loader_s=$(cat "$work/loader.out")

python3 - "$N" "$es_s" "$es_rss" "$loader_s" "$rows" <<'PY'
import json, sys, time, os
n = int(sys.argv[1]); es_s, es_rss, loader_s = map(float, sys.argv[2:5]); rows = int(sys.argv[5])
res = {"benchmark": "elasticsearch_sync", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "changes": n, "final_rows_equal_documents": rows,
       "tributary": {"seconds": es_s, "changes_per_s": round(n / es_s), "peak_rss_mib": round(es_rss / 1024, 1)},
       "plain_bulk_loader": {"seconds": round(loader_s, 2), "changes_per_s": round(n / loader_s)},
       "ratio_tributary_vs_loader": round(loader_s / es_s, 2)}
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/elasticsearch_sync.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"tributary: {n} changes in {es_s} s = {res['tributary']['changes_per_s']} changes/s, peak RSS {res['tributary']['peak_rss_mib']} MiB")
print(f"plain bulk loader: {res['plain_bulk_loader']['seconds']} s = {res['plain_bulk_loader']['changes_per_s']} changes/s")
print(f"tributary / stand-in capacity: x{res['ratio_tributary_vs_loader']}  (index == table: {rows} documents)")
PY
