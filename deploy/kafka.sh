#!/usr/bin/env bash
# The Kafka stand-in for tests and the demo: noida-db's Kafka port (a registry package
# that speaks the Kafka protocol, transactions and consumer groups included). No Kafka
# can be installed on the build machines; tributary's client is librdkafka, which
# works unchanged against Apache Kafka, Redpanda and managed Kafka.
#
#   deploy/kafka.sh start [PORT]   install into a venv if missing, start on 127.0.0.1:PORT
#   deploy/kafka.sh stop [PORT]    stop it (SIGTERM: it saves its data first)
#   deploy/kafka.sh kill [PORT]    kill -9 it
#   deploy/kafka.sh env [PORT]     print the address as a shell variable
#
# Two faults of the stand-in that tests work around: after SIGTERM it keeps
# acknowledging writes for a few seconds while it saves, and loses them after the
# restart (stop writers first); and it never evicts a group member killed with -9 (a
# test that kills a worker restarts the broker afterwards). Its GLIBC warning at start
# is harmless.
set -euo pipefail
cmd=${1:-}
port=${2:-${TRIBUTARY_KAFKA_PORT:-19392}}
venv=${TRIBUTARY_KAFKA_VENV:-/tmp/tributary-kafka-venv}
dir=/tmp/tributary-kafka-$port

binary() { ls "$venv"/lib/python3*/site-packages/noida_db/noida-db 2>/dev/null | head -1; }

install() {
  if [ -z "$(binary)" ]; then
    echo "installing noida-db into $venv..." >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q noida-db==0.2.3 >&2
  fi
  [ -n "$(binary)" ] || { echo "noida-db did not install" >&2; exit 1; }
}

up() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  install
  mkdir -p "$dir/data"
  if up; then
    echo "a Kafka stand-in already answers on 127.0.0.1:$port" >&2
  else
    nohup "$(binary)" start --data-dir "$dir/data" --host 127.0.0.1 --only kafka \
      --kafka-port "$port" >"$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 100); do up && break; sleep 0.1; done
    up || { echo "noida-db did not start; see $dir/server.log:" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
    echo "Kafka stand-in (noida-db) on 127.0.0.1:$port, data in $dir/data" >&2
  fi
  echo "TRIBUTARY_KAFKA=127.0.0.1:$port"
}

stop() {
  local signal=$1
  if [ -f "$dir/pid" ]; then
    local pid; pid=$(cat "$dir/pid")
    kill "-$signal" "$pid" 2>/dev/null || true
    # Saving its data takes a while on a busy machine: a stop that returned while the
    # old process still answered would make the next start a no-op and leave no broker.
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "the Kafka stand-in (pid $pid) did not stop within 60 s: killed" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$dir/pid"
  fi
  echo "Kafka stand-in on port $port stopped" >&2
}

case "$cmd" in
  start) start ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  install) install ;;
  env) echo "TRIBUTARY_KAFKA=127.0.0.1:$port" ;;
  *) echo "usage: $0 start|stop|kill|install|env [PORT]" >&2; exit 2 ;;
esac
