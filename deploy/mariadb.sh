#!/usr/bin/env bash
# Start or stop a throw-away MariaDB 10.11 for tributary's demo, tests and benchmarks.
#
#   deploy/mariadb.sh start [PORT]   install (apt) if missing, initialise a data dir under
#                                    $TRIBUTARY_MARIADB_DIR (default /tmp/tributary-mariadb-PORT),
#                                    start on 127.0.0.1:PORT with the binlog settings tributary
#                                    needs, create the least-privilege user, print how to connect
#   deploy/mariadb.sh stop [PORT]    shut it down cleanly (mariadb-admin shutdown)
#   deploy/mariadb.sh env [PORT]     print the connection settings as shell variables
#
# Users it creates (passwords are for local use only):
#   tributary / tributary   SELECT, REPLICATION SLAVE, BINLOG MONITOR: all the daemon needs
#   admin / admin           everything: tests and benchmarks use it to create tables and load rows
#
# $TRIBUTARY_MARIADB_REDO sets the InnoDB redo log's size (default 256M, what the
# benchmarks load through); the test suite uses a smaller one, as it runs six servers.
set -euo pipefail

cmd=${1:-}
port=${2:-${TRIBUTARY_MARIADB_PORT:-23061}}
dir=${TRIBUTARY_MARIADB_DIR:-/tmp/tributary-mariadb-$port}
sock="$dir/mysqld.sock"

need_install() { ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; }

install() {
  if need_install || ! command -v mariadb-binlog >/dev/null 2>&1; then
    echo "installing MariaDB server from Debian packages..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # policy-rc.d keeps the package from starting its own server on port 3306.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq mariadb-server mariadb-client >&2
  fi
}

print_env() {
  cat <<ENV
TRIBUTARY_MARIADB_HOST=127.0.0.1
TRIBUTARY_MARIADB_PORT=$port
TRIBUTARY_MARIADB_USER=tributary
TRIBUTARY_MARIADB_PASSWORD=tributary
TRIBUTARY_MARIADB_ADMIN_USER=admin
TRIBUTARY_MARIADB_ADMIN_PASSWORD=admin
TRIBUTARY_MARIADB_SOCKET=$sock
ENV
}

start() {
  install
  local mariadbd=/usr/sbin/mariadbd
  if [ -S "$sock" ] && mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then
    echo "MariaDB already running on 127.0.0.1:$port (data in $dir)" >&2
    print_env
    return
  fi
  mkdir -p "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" \
      --auth-root-authentication-method=socket >"$dir/install.log" 2>&1 \
      || { cat "$dir/install.log" >&2; exit 1; }
  fi
  mkdir -p "$dir/binlog"
  # binlog_format/row_image/row_metadata are what tributary requires; the small buffer
  # pool and no performance schema keep the server light on a 2-core test machine.
  "$mariadbd" --no-defaults --datadir="$dir/data" --user="$(id -un)" \
    --bind-address=127.0.0.1 --port="$port" --socket="$sock" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --server-id=1 --log-bin="$dir/binlog/binlog" \
    --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=${TRIBUTARY_MARIADB_REDO:-256M} --innodb-flush-log-at-trx-commit=2 \
    --sync-binlog=0 --max-connections=200 --performance-schema=OFF --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    ${TRIBUTARY_MARIADB_EXTRA_ARGS:-} >/dev/null 2>&1 &
  for _ in $(seq 1 120); do
    if mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then break; fi
    sleep 0.25
  done
  mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1 \
    || { echo "MariaDB did not start; see $dir/error.log:" >&2; tail -20 "$dir/error.log" >&2; exit 1; }
  mariadb --socket="$sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'tributary'@'127.0.0.1' IDENTIFIED BY 'tributary';
GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'tributary'@'127.0.0.1';
CREATE USER IF NOT EXISTS 'admin'@'127.0.0.1' IDENTIFIED BY 'admin';
GRANT ALL PRIVILEGES ON *.* TO 'admin'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  echo "MariaDB $(mariadb --socket="$sock" -uroot -N -e 'SELECT VERSION()') on 127.0.0.1:$port (data in $dir)" >&2
  echo "connect: mariadb -h127.0.0.1 -P$port -uadmin -padmin" >&2
  print_env
}

stop() {
  if [ -S "$sock" ]; then
    mariadb-admin --socket="$sock" -uroot shutdown >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/mysqld.pid" ]; then
    local pid; pid=$(cat "$dir/mysqld.pid" 2>/dev/null || true)
    for _ in $(seq 1 80); do
      [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
  fi
  echo "MariaDB on port $port stopped" >&2
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  install) install ;;
  *) echo "usage: $0 start|stop|env|install [PORT]" >&2; exit 2 ;;
esac
