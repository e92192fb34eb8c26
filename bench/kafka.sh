#!/usr/bin/env bash
# Kafka benchmark (not part of the test run).
#
#   bench/kafka.sh [N [W]]      default N = 1000000, W = 500000
#
# The binlog_throughput workload (N inserts, N updates, N/2 deletes in transactions of
# 1,000) into a fresh Kafka stand-in (deploy/kafka.sh, port 19391), then:
#   - tributary MariaDB binlog -> Kafka sink (6 partitions, exactly-once transactions
#     committed at each checkpoint): changes/s, peak RSS, CPU seconds
#   - the broker's own ingest rate: the same records (key, value, headers) from a log
#     stream of the same changes, produced by a plain producer
#     (examples/kafka_plain_producer.rs: idempotent, acks=all, no transactions,
#     the sink's compression: COMPRESSION, default lz4, pinned for both)
#   - Kafka -> 1, 2 and 3 workers (one consumer group each) -> null sink: wall time
#     until the group's lag is 0, changes/s, and the workers' CPU per change (what
#     the sizing uses: the machine has 2 cores, which the broker shares). The workers
#     read a backlog of the first W records (default 500,000; second argument) that
#     the plain producer writes to a topic of its own: the stand-in answers a fetch
#     with everything after the offset asked, whatever the size limits say, and
#     librdkafka takes at most 2 GiB in one answer (the workers' receive limit is
#     raised to 1 GiB for it; a real broker needs neither).
# Results go to bench/results/kafka.json.
set -euo pipefail
N=${1:-1000000}
W=${2:-500000}
cd "$(dirname "$0")/.."
. bench/lib.sh
KPORT=${TRIBUTARY_BENCH_KAFKA_PORT:-19391}
# The sink's batch compression, pinned (the plain producer sends alike).
COMPRESSION=${COMPRESSION:-lz4}
export KAFKA_COMPRESSION=$COMPRESSION
BROKERS=127.0.0.1:$KPORT
bench_cleanup() {
  for p in "${workers[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # KAFKA_BENCH_KEEP=1 leaves the broker and its data (and log) for a look.
  [ -n "${KAFKA_BENCH_KEEP:-}" ] && return
  bash deploy/kafka.sh stop "$KPORT" >/dev/null 2>&1 || true
  rm -rf "/tmp/tributary-kafka-$KPORT"
}
bash deploy/kafka.sh stop "$KPORT" >/dev/null 2>&1 || true
rm -rf "/tmp/tributary-kafka-$KPORT"
bash deploy/kafka.sh start "$KPORT" >/dev/null
cargo build --release --quiet --example kafka_plain_producer

echo "loading $N rows (inserts, updates, deletes in transactions of 1000)..." >&2
reset_bench_table
mixed_load_sql mariadb "$N" "$N" $((N / 2)) > "$work/load.sql"
"${M[@]}" -D bench < "$work/load.sql"
read -r end_file end_pos < <("${M[@]}" -N -e "SHOW MASTER STATUS" | awk '{print $1, $2}')
expected=$((N + N + N / 2))
echo "loaded: $expected row changes up to $end_file:$end_pos" >&2

topic=bench.orders
echo "tributary -> Kafka sink..." >&2
sink_toml_extra="" run_tributary log >/dev/null # the same changes as a log, for the plain producer
kafka_sink="kind = \"kafka\"
brokers = [\"$BROKERS\"]
topic = \"$topic\"
partitions = 6
transactional_id = \"bench.kafka\"
progress_topic = \"bench.progress\"
transaction_interval_ms = ${TRANSACTION_MS:-1000}
compression = \"$COMPRESSION\""
mkdir -p "$work/kafka"
cat > "$work/kafka/c.toml" <<TOML
name = "bench"
[source]
kind = "mariadb"
port = $PORT
user = "tributary"
password = "tributary"
server_id = 9903
include = ["bench.*"]
start = "earliest"
snapshot = "never"
[[sink]]
$kafka_sink
[state]
dir = "$work/kafka/state"
[pipeline]
checkpoint_interval_ms = ${CHECKPOINT_MS:-200}
TOML
/usr/bin/time -f "%e %M %U %S" -o "$work/kafka/time" "$TRIBUTARY" --log-format json run \
  --connector "$work/kafka/c.toml" --until "$end_file:$end_pos" 2> "$work/kafka/stderr" || { tail -20 "$work/kafka/stderr" >&2; exit 1; }
changes=$(grep '"stopped"' "$work/kafka/stderr" | python3 -c "import sys,json; print(json.loads(sys.stdin.readline())['fields']['changes'])")
[ "$changes" = "$expected" ] || { echo "tributary -> kafka streamed $changes changes, expected $expected" >&2; exit 1; }
read -r sink_s sink_rss sink_user sink_sys < "$work/kafka/time"

echo "plain producer of the same records..." >&2
read -r plain_n plain_s < <(target/release/examples/kafka_plain_producer "$BROKERS" "$work/log/log" "$topic" bench.plain)
[ "$plain_n" = "$expected" ] || { echo "the plain producer sent $plain_n records, expected $expected" >&2; exit 1; }
[ "$W" -le "$expected" ] || W=$expected
read -r _ _ < <(target/release/examples/kafka_plain_producer "$BROKERS" "$work/log/log" "$topic" bench.workers "$W")

# N workers of a new group, reading $topic into the null sink until the group's lag is
# 0; sets w<N>_s (seconds) and w<N>_cpu (the workers' CPU seconds).
run_workers() { # $1 = number of workers
  local n=$1 group=bench-$1-$RANDOM dir="$work/workers$1"
  mkdir -p "$dir"
  workers=()
  local start; start=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    mkdir -p "$dir/w$i"
    cat > "$dir/w$i/c.toml" <<TOML
name = "bench-worker"
[source]
kind = "kafka"
brokers = ["$BROKERS"]
group = "$group"
topics = ["bench.workers"]
properties = { "receive.message.max.bytes" = "1073741824" }
[[sink]]
kind = "null"
[state]
dir = "$dir/w$i/state"
[pipeline]
checkpoint_interval_ms = ${CHECKPOINT_MS:-200}
TOML
    /usr/bin/time -f "%e %M %U %S" -o "$dir/w$i/time" "$TRIBUTARY" --log-format json run \
      --connector "$dir/w$i/c.toml" > /dev/null 2> "$dir/w$i/stderr" &
    workers+=($!)
  done
  # Done when the group committed every partition's end.
  local lag=-1 end
  while [ "$lag" != 0 ]; do
    sleep 0.5
    lag=$("$TRIBUTARY" status --connector "$dir/w1/c.toml" 2>/dev/null | python3 -c "import sys,json; s=json.load(sys.stdin)['kafka_group']; print(s['lag'] if all(p['committed'] is not None for p in s['partitions'].values()) else -1)" 2>/dev/null || echo -1)
  done
  end=$(date +%s.%N)
  # SIGTERM to each worker (the child of its /usr/bin/time, which then writes its
  # figures): a worker leaves its group after committing.
  for p in "${workers[@]}"; do pkill -TERM -P "$p"; done
  for p in "${workers[@]}"; do wait "$p" || true; done
  workers=()
  local cpu=0
  for i in $(seq 1 "$n"); do
    read -r _ _ u s < "$dir/w$i/time"
    cpu=$(python3 -c "print($cpu + $u + $s)")
  done
  printf -v "w${n}_s" '%s' "$(python3 -c "print(round($end - $start, 2))")"
  printf -v "w${n}_cpu" '%s' "$(python3 -c "print(round($cpu, 2))")"
}
for n in 1 2 3; do
  echo "Kafka -> $n worker(s) -> null sink..." >&2
  run_workers "$n"
done

python3 - "$N" "$expected" "$W" "$sink_s" "$sink_rss" "$sink_user" "$sink_sys" "$plain_s" "$w1_s" "$w1_cpu" "$w2_s" "$w2_cpu" "$w3_s" "$w3_cpu" <<'PY'
import json, sys, time, platform, os
n, ev, wn = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sink_s, sink_rss, su, ss, plain_s = map(float, sys.argv[4:9])
w = [tuple(map(float, sys.argv[9 + 2 * i: 11 + 2 * i])) for i in range(3)]
sink_rate, plain_rate = round(ev / sink_s), round(ev / plain_s)
res = {
  "benchmark": "kafka", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  "machine": f"{os.cpu_count()} cores, {platform.machine()}", "rows": n, "row_changes": ev,
  "broker": "noida-db 0.2.3 (deploy/kafka.sh), on the same 2 cores",
  "tributary_to_kafka": {"seconds": sink_s, "changes_per_s": sink_rate, "peak_rss_mib": round(sink_rss / 1024, 1),
    "cpu_seconds": round(su + ss, 2), "cpu_us_per_change": round((su + ss) * 1e6 / ev, 2),
    "settings": "6 partitions, exactly-once transactions, checkpoint_interval_ms 200, transaction_interval_ms " + os.environ.get("TRANSACTION_MS", "1000") + ", compression " + os.environ["KAFKA_COMPRESSION"]},
  "plain_producer": {"seconds": plain_s, "changes_per_s": plain_rate, "compression": os.environ["KAFKA_COMPRESSION"]},
  "ratio_tributary_vs_plain_producer": round(sink_rate / plain_rate, 2),
  "target": "at least min(200,000 changes/s, the plain producer's rate)",
  "of_target": round(sink_rate / min(200000, plain_rate), 2),
  "worker_backlog_records": wn,
  "workers": {str(i + 1): {"seconds": s, "changes_per_s": round(wn / s), "cpu_seconds": c,
      "cpu_us_per_change": round(c * 1e6 / wn, 2)} for i, (s, c) in enumerate(w)},
}
os.makedirs("bench/results", exist_ok=True)
with open("bench/results/kafka.json", "w") as f:
    json.dump(res, f, indent=2); f.write("\n")
r = res["tributary_to_kafka"]
print(f"tributary -> Kafka: {r['changes_per_s']} changes/s ({r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB, {r['cpu_us_per_change']} us CPU/change)")
print(f"plain producer:     {plain_rate} changes/s ({plain_s} s); tributary at x{res['ratio_tributary_vs_plain_producer']} of it, x{res['of_target']} of the target")
for k, v in res["workers"].items():
    print(f"{k} worker(s) -> null: {v['changes_per_s']} changes/s ({v['seconds']} s), {v['cpu_us_per_change']} us CPU/change")
PY
