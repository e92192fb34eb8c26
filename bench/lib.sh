# Shared by the bench scripts (sourced from the repository root): a work dir removed on
# exit (and `bench_cleanup` called, when the script defines it), the release build, a
# MariaDB on $PORT (unless BENCH_SOURCE=postgres), and a measured tributary run up to
# $until (default $end_file:$end_pos); TRIBUTARY_BIN runs another build (an A/B of two
# commits) in place of target/release/tributary.
#   run_tributary needs: expected (row changes the run must stream); optional
#   source_toml (the [source] section; default: the MariaDB bench source, streaming
#   only) and at_least=1 (more changes allowed: snapshot reads); the run's change count
#   is left in $work/<sink>/changes

PORT=${TRIBUTARY_BENCH_PORT:-23081}
TRIBUTARY=${TRIBUTARY_BIN:-target/release/tributary}
export TRIBUTARY_MARIADB_DIR=${TRIBUTARY_BENCH_DIR:-/tmp/tributary-bench-$PORT}
work=$(mktemp -d /tmp/tributary-bench-run.XXXXXX)
trap 'rm -rf "$work"; if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi' EXIT

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
echo "building release binary..." >&2
cargo build --release --quiet
if [ "${BENCH_SOURCE:-mariadb}" = mariadb ]; then
  bash deploy/mariadb.sh start "$PORT" >/dev/null
fi
M=(mariadb -h127.0.0.1 -P"$PORT" -uadmin -padmin)

# A fresh binlog and an empty bench.orders.
reset_bench_table() {
  "${M[@]}" -e "RESET MASTER; DROP DATABASE IF EXISTS bench; CREATE DATABASE bench;
    CREATE TABLE bench.orders (id BIGINT UNSIGNED PRIMARY KEY, customer_id INT NOT NULL,
      status VARCHAR(20) NOT NULL, amount DECIMAL(12,2) NOT NULL, note VARCHAR(200),
      created_at DATETIME(6) NOT NULL, updated_at TIMESTAMP(3) NULL) ENGINE=InnoDB"
}

# A mixed load of row changes into bench.orders as SQL, in transactions of 1000:
# $2 inserts, then $3 updates (status, updated_at), then $4 deletes of the last
# inserted rows; for $1 = mariadb | postgres.
mixed_load_sql() {
  python3 - "$@" <<'PY'
import sys
kind = sys.argv[1]; ins, upd, dele = map(int, sys.argv[2:5])
if kind == "mariadb":
    rows = "SELECT seq, seq % 5000, 'new', seq * 1.25, CONCAT('order note ', seq), NOW(6), NULL FROM seq_{a}_to_{b}"
    now3 = "NOW(3)"
else:
    print("SET synchronous_commit = on;")
    rows = "SELECT i, i % 5000, 'new', i * 1.25, 'order note ' || i, now(), NULL FROM generate_series({a}, {b}) i"
    now3 = "now()"
for a in range(1, ins + 1, 1000):
    print(f"INSERT INTO bench.orders {rows.format(a=a, b=min(a + 999, ins))};")
for a in range(1, upd + 1, 1000):
    print(f"UPDATE bench.orders SET status = 'paid', updated_at = {now3} WHERE id BETWEEN {a} AND {min(a + 999, upd)};")
for a in range(ins - dele + 1, ins + 1, 1000):
    print(f"DELETE FROM bench.orders WHERE id BETWEEN {a} AND {min(a + 999, ins)};")
PY
}

# A fresh bench.orders on the PostgreSQL bench server (psql command in $P), its
# publication $1, and a pgoutput slot for each further argument, created before any
# load so that each reader gets all of it.
reset_pg_bench_table() { # $1 = publication, $2... = slots
  local publication=$1; shift
  {
    cat <<SQL
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%';
DROP SCHEMA IF EXISTS bench CASCADE;
DROP PUBLICATION IF EXISTS $publication;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO tributary;
CREATE TABLE bench.orders (id bigint PRIMARY KEY, customer_id int NOT NULL,
  status varchar(20) NOT NULL, amount numeric(12,2) NOT NULL, note varchar(200),
  created_at timestamp(6) NOT NULL, updated_at timestamptz(3));
GRANT SELECT ON bench.orders TO tributary;
CREATE PUBLICATION $publication FOR TABLE bench.orders;
SQL
    for slot in "$@"; do echo "SELECT pg_create_logical_replication_slot('$slot', 'pgoutput');"; done
  } | "${P[@]}" >/dev/null
}

# The [source] of the PostgreSQL bench server on $PGPORT_BENCH: slot $1, publication $2,
# snapshot mode $3 (default never: a streaming benchmark measures streaming only).
pg_source_toml() {
  echo "kind = \"postgres\"
port = $PGPORT_BENCH
database = \"app\"
user = \"tributary\"
password = \"tributary\"
sslmode = \"disable\"
slot = \"$1\"
publication = \"$2\"
include = [\"bench.orders\"]
status_interval_secs = 1
snapshot = \"${3:-never}\""
}

# A connector file $2/c.toml: [source] $3, one sink of kind $1 (null, log or
# elasticsearch at $ES; the log with compression $LOG_COMPRESSION, default zstd) with
# the settings in $sink_toml_extra (optional), state in
# $2/state, and the checkpoint interval pinned: $CHECKPOINT_MS, else 200 ms (what
# every figure before the default's change was measured with).
write_connector() {
  local sink="kind = \"null\""
  # The log's compression pinned (the default since 2026-12-04), so that a later
  # default cannot change what the log figures measure; LOG_COMPRESSION=none for the
  # plain form.
  [ "$1" = log ] && sink="kind = \"log\"
dir = \"$2/log\"
compression = \"${LOG_COMPRESSION:-zstd}\""
  [ "$1" = elasticsearch ] && sink="kind = \"elasticsearch\"
urls = [\"$ES\"]
dead_letter_dir = \"$2/dead-letters\""
  cat > "$2/c.toml" <<TOML
[source]
$3
[[sink]]
$sink
${sink_toml_extra:-}
[state]
dir = "$2/state"
[pipeline]
checkpoint_interval_ms = ${CHECKPOINT_MS:-200}
TOML
}

run_tributary() { # $1 = sink kind
  local dir="$work/$1"; mkdir -p "$dir"
  local source=${source_toml:-"kind = \"mariadb\"
port = $PORT
user = \"tributary\"
password = \"tributary\"
server_id = 9901
include = [\"bench.*\"]
start = \"earliest\"
snapshot = \"never\""}
  source=${source//@SINK@/$1}
  write_connector "$1" "$dir" "$source"
  /usr/bin/time -f "%e %M %U %S" -o "$dir/time" "$TRIBUTARY" --log-format json run \
    --connector "$dir/c.toml" --until "${until:-$end_file:$end_pos}" 2> "$dir/stderr" || { cat "$dir/stderr" >&2; exit 1; }
  local changes; changes=$(grep '"stopped"' "$dir/stderr" | python3 -c "import sys,json; print(json.loads(sys.stdin.readline())['fields']['changes'])")
  if [ -n "${at_least:-}" ]; then # snapshot reads come on top of the streamed changes
    [ "$changes" -ge "$expected" ] || { echo "tributary ($1) streamed $changes changes, expected at least $expected" >&2; exit 1; }
  else
    [ "$changes" = "$expected" ] || { echo "tributary ($1) streamed $changes changes, expected $expected" >&2; exit 1; }
  fi
  echo "$changes" > "$dir/changes"
  # wall seconds, peak RSS KiB, CPU seconds (user + system)
  read -r secs rss user sys < "$dir/time"
  echo "$secs $rss $(python3 -c "print(round($user + $sys, 2))")"
}

# The bench PostgreSQL on $PGPORT_BENCH, and P, the psql command line for it.
start_bench_postgres() {
  bash deploy/postgres.sh start "$PGPORT_BENCH" >/dev/null
  export PGPASSWORD=admin
  P=(psql -h 127.0.0.1 -p "$PGPORT_BENCH" -U admin -d app -v ON_ERROR_STOP=1 -q -X)
}

# CPU seconds (user + system) process $1 has used so far.
cpu_seconds_of() { # $1 = pid
  awk '{print ($14 + $15) / 100}' "/proc/$1/stat"
}

# The server side of a PostgreSQL run: CPU seconds of the walsender serving it, sampled from
# /proc while it lives (the last sample is within 0.2 s of its end).
walsender_start() { # $1 = application_name of the reader
  rm -f "$work/ws.$1"
  ( while :; do
      pid=$("${P[@]}" -tA -c "SELECT pid FROM pg_stat_replication WHERE application_name = '$1'" </dev/null)
      # (written aside, then renamed: a sampler killed mid-write leaves the last sample)
      [ -n "$pid" ] && cpu_seconds_of "$pid" > "$work/ws.$1.new" 2>/dev/null \
        && mv "$work/ws.$1.new" "$work/ws.$1"
      sleep 0.2
    done ) &
  sampler=$!
}
walsender_stop() { # prints the walsender's CPU seconds
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  cat "$work/ws.$1" 2>/dev/null || echo 0
}

# The instant-answer endpoint (examples/instant_es.rs) on port $1, with the endpoint's
# further arguments after it; sets `instant` (its pid, for bench_cleanup) and ES.
start_instant_es() { # $1 = port, then instant_es options
  local port=$1; shift
  cargo build --release --quiet --example instant_es
  target/release/examples/instant_es "$@" "127.0.0.1:$port" 2> "$work/instant.log" &
  instant=$!
  ES=http://127.0.0.1:$port
  until curl -fs "$ES/" >/dev/null; do sleep 0.1; done
}
