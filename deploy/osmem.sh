#!/usr/bin/env bash
# The Elasticsearch stand-in for tests and the demo: osmem-server, an in-memory
# OpenSearch-compatible server (a registry package; MIT). No Elasticsearch can be
# installed on the build machines; tributary's sink speaks the real Elasticsearch API.
#
#   deploy/osmem.sh start [PORT]   install into a venv if missing, start on 127.0.0.1:PORT
#   deploy/osmem.sh stop [PORT]    stop it (its data is gone: it lives in memory)
#   deploy/osmem.sh env [PORT]     print the URL as a shell variable
set -euo pipefail
cmd=${1:-}
port=${2:-${TRIBUTARY_OSMEM_PORT:-19200}}
venv=${TRIBUTARY_OSMEM_VENV:-/tmp/tributary-osmem-venv}
dir=/tmp/tributary-osmem-$port

binary() { ls "$venv"/lib/python3*/site-packages/osmem_server/bin/osmem-server 2>/dev/null | head -1; }

install() {
  if [ -z "$(binary)" ]; then
    echo "installing osmem-server into $venv..." >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q osmem-server >&2
  fi
  [ -n "$(binary)" ] || { echo "osmem-server did not install" >&2; exit 1; }
}

up() { curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; }

start() {
  install
  mkdir -p "$dir"
  if up; then
    echo "osmem-server already answers on 127.0.0.1:$port" >&2
  else
    nohup "$(binary)" -addr "127.0.0.1:$port" -no-stdin-watch >"$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 100); do up && break; sleep 0.1; done
    up || { echo "osmem-server did not start; see $dir/server.log:" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
    echo "osmem-server on http://127.0.0.1:$port (in memory)" >&2
  fi
  echo "TRIBUTARY_ES_URL=http://127.0.0.1:$port"
}

stop() {
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid"
  fi
  echo "osmem-server on port $port stopped" >&2
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  install) install ;;
  env) echo "TRIBUTARY_ES_URL=http://127.0.0.1:$port" ;;
  *) echo "usage: $0 start|stop|install|env [PORT]" >&2; exit 2 ;;
esac
