#!/usr/bin/env bash
# One transaction of N rows (default 1,000,000) streamed to the log sink: shows that a
# huge transaction flows through in bounded memory (peak RSS) and at what rate.
# Results go to bench/results/huge_transaction.json.
set -euo pipefail
N=${1:-1000000}
cd "$(dirname "$0")/.."
. bench/lib.sh

echo "loading one transaction of $N rows..." >&2
reset_bench_table
"${M[@]}" -D bench -e "INSERT INTO bench.orders SELECT seq, seq % 5000, 'new', seq * 1.25,
  CONCAT('order note ', seq), NOW(6), NULL FROM seq_1_to_$N"
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
expected=$N

echo "tributary -> log sink..." >&2
read -r log_s log_rss _ < <(run_tributary log)
python3 - "$N" "$log_s" "$log_rss" <<'PY'
import json, sys, time, os
n, s, rss = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
res = {"benchmark": "huge_transaction", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "rows_in_one_transaction": n, "seconds": s, "events_per_s": round(n / s),
       "peak_rss_mib": round(rss / 1024, 1), "compression": os.environ.get("LOG_COMPRESSION", "zstd")}
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/huge_transaction.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
print(f"one transaction of {n} rows -> log sink: {s} s, {res['events_per_s']} events/s, peak RSS {res['peak_rss_mib']} MiB")
PY
