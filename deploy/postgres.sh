#!/usr/bin/env bash
# Start or stop a throw-away PostgreSQL 15 for tributary's tests, demo and benchmarks.
#
#   deploy/postgres.sh start [PORT]   install (apt) if missing, initdb under
#                                     $TRIBUTARY_POSTGRES_DIR (default /tmp/tributary-postgres-PORT),
#                                     start on 127.0.0.1:PORT with wal_level=logical, create the
#                                     users and the `app` database, print how to connect
#   deploy/postgres.sh stop [PORT]    fast shutdown (pg_ctl stop -m fast)
#   deploy/postgres.sh env [PORT]     print the connection settings as shell variables
#
# Users (passwords for local use only):
#   tributary / tributary   LOGIN REPLICATION, SELECT on app's tables, CREATE on app
#                           (for its publication); no superuser
#   admin / admin           superuser: tests create tables and load rows with it
set -euo pipefail
cmd=${1:-}
port=${2:-${TRIBUTARY_POSTGRES_PORT:-25321}}
dir=${TRIBUTARY_POSTGRES_DIR:-/tmp/tributary-postgres-$port}
bin=/usr/lib/postgresql/15/bin

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

install() {
  if [ ! -x "$bin/postgres" ]; then
    echo "installing PostgreSQL 15 from Debian packages..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # policy-rc.d keeps the package from starting its own cluster on port 5432.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq postgresql-15 postgresql-client-15 >&2
  fi
}

print_env() {
  cat <<ENV
TRIBUTARY_POSTGRES_HOST=127.0.0.1
TRIBUTARY_POSTGRES_PORT=$port
TRIBUTARY_POSTGRES_DATABASE=app
TRIBUTARY_POSTGRES_USER=tributary
TRIBUTARY_POSTGRES_PASSWORD=tributary
TRIBUTARY_POSTGRES_ADMIN_USER=admin
TRIBUTARY_POSTGRES_ADMIN_PASSWORD=admin
ENV
}

psql_admin() { PGPASSWORD=admin psql -h 127.0.0.1 -p "$port" -U admin -v ON_ERROR_STOP=1 -q "$@"; }

start() {
  install
  # Concurrent starts (parallel tests) would race in initdb: one at a time. The
  # server must not inherit the lock (9>&- below), or the next start waits forever.
  mkdir -p "$(dirname "$dir")"
  exec 9>"$dir.lock"
  flock 9
  if psql_admin -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    echo "PostgreSQL already running on 127.0.0.1:$port (data in $dir)" >&2
    print_env
    return
  fi
  mkdir -p "$dir"
  chown postgres: "$dir" 2>/dev/null || true
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    printf 'admin\n' > "$dir/pwfile" && chown postgres: "$dir/pwfile" 2>/dev/null || true
    as_pg "$bin/initdb" -D "$dir/data" -U admin --pwfile="$dir/pwfile" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/pwfile"
  fi
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-p $port -k $dir -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=64 \
     -c max_wal_senders=32 -c shared_buffers=128MB -c fsync=off -c synchronous_commit=off \
     -c full_page_writes=off ${TRIBUTARY_POSTGRES_EXTRA_ARGS:-}" >/dev/null 9>&- \
    || { echo "PostgreSQL did not start; see $dir/server.log:" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
  psql_admin -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tributary') THEN
    CREATE ROLE tributary LOGIN REPLICATION PASSWORD 'tributary';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE app' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'app') \gexec
GRANT CREATE, CONNECT ON DATABASE app TO tributary;
SQL
  psql_admin -d app <<SQL
GRANT USAGE ON SCHEMA public TO tributary;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tributary;
ALTER DEFAULT PRIVILEGES FOR ROLE admin IN SCHEMA public GRANT SELECT ON TABLES TO tributary;
SQL
  echo "PostgreSQL $(psql_admin -d postgres -tAc 'SHOW server_version') on 127.0.0.1:$port (data in $dir)" >&2
  echo "connect: PGPASSWORD=admin psql -h 127.0.0.1 -p $port -U admin app" >&2
  print_env
}

stop() {
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  echo "PostgreSQL on port $port stopped" >&2
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  install) install ;;
  *) echo "usage: $0 start|stop|env|install [PORT]" >&2; exit 2 ;;
esac
