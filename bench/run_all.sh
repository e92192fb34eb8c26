#!/usr/bin/env bash
# Every benchmark, one after the other, then a summary: each figure next to its target
# (bench/targets.json) and the previous result, any figure more than 20% worse than
# the previous one flagged.
#
#   bash bench/run_all.sh [--quick] [NAME...]
#
# NAME: run only these (binlog_throughput, pgoutput_throughput, snapshot,
# huge_transaction, enrich_throughput, elasticsearch_sync, es_ceiling, latency,
# index_lifecycle, documents, es_encode, kafka).
# --quick: a tenth of each workload, for a smoke run; its results go to
# bench/results/quick/ and are compared with the previous quick run, never with the
# full figures in bench/results/ (which it leaves as they are).
# The summary (markdown) is printed and written to bench/results/SUMMARY.md (full runs)
# or bench/results/quick/SUMMARY.md. Each benchmark pins the settings it measures
# (snapshot = "never" for streaming runs, and so on), so a new default does not change
# what it measures unnoticed. Takes about 35 minutes in full on 2 cores.
# Before each benchmark a fixed reference workload (gzip -6 of `seq 1 5000000`, code
# that is not ours) is timed and recorded in its results as `machine_pace_seconds`:
# this machine's pace changes by up to 2x from hour to hour, and the summary names the
# benchmarks whose figures were taken at a slower pace than the previous run's.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
names=()
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) names+=("$a") ;;
  esac
done
all=(binlog_throughput pgoutput_throughput snapshot huge_transaction enrich_throughput elasticsearch_sync es_ceiling latency index_lifecycle documents es_encode kafka)
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")

# Workload sizes: full (the scripts' defaults) and quick.
args() { # $1 = name
  if [ "$quick" = 0 ]; then return; fi
  case "$1" in
    binlog_throughput|pgoutput_throughput|enrich_throughput|huge_transaction|es_ceiling|kafka) echo 100000 ;;
    snapshot) echo "100000 10000" ;;
    elasticsearch_sync) echo 10000 ;;
    latency) echo 5 ;;
    index_lifecycle) echo "10000 100000" ;;
    documents) echo "10000 30000 1000" ;;
    es_encode) echo 100000 ;;
  esac
}

results=bench/results
out=$results
[ "$quick" = 1 ] && out=$results/quick
mkdir -p "$out"
previous=$(mktemp -d /tmp/tributary-bench-previous.XXXXXX)
trap 'rm -rf "$previous"' EXIT
cp "$out"/*.json "$previous"/ 2>/dev/null || true

# Seconds of the reference workload: the machine's pace right now.
pace() {
  python3 - <<'PY'
import subprocess, time
t = time.monotonic()
subprocess.run("seq 1 5000000 | gzip -6 > /dev/null", shell=True, check=True)
print(round(time.monotonic() - t, 2))
PY
}

failed=()
for name in "${names[@]}"; do
  pace_s=$(pace)
  echo "== $name $(args "$name")" >&2
  # A full run writes where the scripts write; a quick one keeps the full figures and
  # moves its own aside.
  [ "$quick" = 1 ] && cp "$results/$name.json" "$previous/$name.full" 2>/dev/null || true
  # shellcheck disable=SC2046
  if [ "$name" = es_encode ]; then
    cargo bench --quiet --bench es_encode -- $(args "$name") >&2 || failed+=("$name")
  else
    bash "bench/$name.sh" $(args "$name") >&2 || failed+=("$name")
  fi
  # (Only into results this run wrote: a failed benchmark leaves the old ones.)
  [[ " ${failed[*]-} " != *" $name "* ]] && [ -f "$results/$name.json" ] && python3 - "$results/$name.json" "$pace_s" <<'PY'
import json, sys
path, pace = sys.argv[1], float(sys.argv[2])
with open(path) as f:
    res = json.load(f)
res["machine_pace_seconds"] = pace
with open(path, "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
PY
  if [ "$quick" = 1 ] && [ -f "$results/$name.json" ]; then
    mv "$results/$name.json" "$out/$name.json"
    if [ -f "$previous/$name.full" ]; then cp "$previous/$name.full" "$results/$name.json"; fi
  fi
done

python3 bench/summary.py "$previous" "$out" bench/targets.json "${names[@]}" | tee "$out/SUMMARY.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "benchmarks that failed: ${failed[*]}" >&2
  exit 1
fi
